//! The import formats' parsing: each format, the defaults, errors per line
//! that never show a password.

use super::*;

fn http() -> ImportDefaults {
    ImportDefaults {
        protocol: Some(ProxyProtocol::Http),
        ..ImportDefaults::default()
    }
}

fn parse(input: &str, format: ProxyListFormat) -> ParsedList {
    parse_proxy_list(input, format, &http()).unwrap()
}

/// The single entry of a one-line input.
fn one(input: &str, format: ProxyListFormat) -> ProxyEntry {
    let list = parse(input, format);
    assert!(list.invalid.is_empty(), "{:?}", list.invalid);
    assert_eq!(list.entries.len(), 1);
    list.entries.into_iter().next().unwrap().entry
}

/// The (line, field) of each invalid line.
fn errors(input: &str, format: ProxyListFormat) -> Vec<(usize, String)> {
    parse(input, format)
        .invalid
        .into_iter()
        .map(|i| (i.line, i.error.field.into_owned()))
        .collect()
}

fn password(entry: &ProxyEntry) -> &str {
    &entry.credentials.as_ref().unwrap().password
}

#[test]
fn formats_parse_and_print() {
    for format in ProxyListFormat::ALL {
        assert_eq!(format.as_str().parse::<ProxyListFormat>().unwrap(), format);
        assert_eq!(format.to_string(), format.as_str());
    }
    assert_eq!(
        " CSV ".parse::<ProxyListFormat>().unwrap(),
        ProxyListFormat::Csv
    );
    assert_eq!(
        "ndjson".parse::<ProxyListFormat>().unwrap(),
        ProxyListFormat::Jsonl
    );
    assert_eq!(
        "xml".parse::<ProxyListFormat>().unwrap_err().field,
        "format"
    );
}

#[test]
fn max_concurrency_and_asn_parse() {
    assert_eq!(
        "unlimited".parse::<MaxConcurrency>().unwrap(),
        MaxConcurrency::Unlimited
    );
    assert_eq!("UNLIMITED".parse::<MaxConcurrency>().unwrap().limit(), None);
    assert_eq!("4".parse::<MaxConcurrency>().unwrap().limit(), Some(4));
    assert_eq!("4".parse::<MaxConcurrency>().unwrap().to_string(), "4");
    for bad in ["0", "-1", "many", "1.5", ""] {
        assert_eq!(
            bad.parse::<MaxConcurrency>().unwrap_err().field,
            "max_concurrency",
            "{bad}"
        );
    }
    assert_eq!(parse_asn("13335").unwrap(), 13335);
    assert_eq!(parse_asn("AS13335").unwrap(), 13335);
    assert_eq!(parse_asn("as7").unwrap(), 7);
    for bad in ["-1", "AS", "4294967296", "12a"] {
        assert_eq!(parse_asn(bad).unwrap_err().field, "asn", "{bad}");
    }
}

#[test]
fn text_urls_with_ipv6_and_encoded_credentials() {
    let e = one(
        "socks5://us%3Aer:p%40ss%3Aw@[2001:db8::1]:1080\n",
        ProxyListFormat::Text,
    );
    assert_eq!(e.protocol, ProxyProtocol::Socks5);
    assert_eq!(e.host, "2001:db8::1");
    assert_eq!(e.port, 1080);
    assert_eq!(e.credentials.as_ref().unwrap().username, "us:er");
    assert_eq!(password(&e), "p@ss:w");
    // The scheme of a line wins over the default protocol.
    let e = one("https://10.0.0.1:443/", ProxyListFormat::Text);
    assert_eq!(e.protocol, ProxyProtocol::Https);
    assert!(e.credentials.is_none());
}

#[test]
fn text_bare_and_provider_forms_take_the_default_protocol() {
    let e = one("10.0.0.1:8080", ProxyListFormat::Text);
    assert_eq!(
        (e.protocol, e.host.as_str(), e.port),
        (ProxyProtocol::Http, "10.0.0.1", 8080)
    );
    // host:port:user:pass takes credentials as they are (a ':' may
    // follow in the password; '%' is not decoded).
    let e = one(
        "proxy.example.com:3128:alice:s%40:cr@t",
        ProxyListFormat::Text,
    );
    assert_eq!(e.host, "proxy.example.com");
    assert_eq!(e.credentials.as_ref().unwrap().username, "alice");
    assert_eq!(password(&e), "s%40:cr@t");
    let e = one("[2001:db8::2]:3128:bob:pw", ProxyListFormat::Text);
    assert_eq!((e.host.as_str(), e.port), ("2001:db8::2", 3128));
    assert_eq!(password(&e), "pw");
    let e = one("[::1]:1080", ProxyListFormat::Text);
    assert_eq!(e.host, "::1");
    // user:pass@host:port is a URL without its scheme: decoded.
    let e = one("bob:p%40ss@10.0.0.3:8000", ProxyListFormat::Text);
    assert_eq!(password(&e), "p@ss");
}

#[test]
fn text_ignores_blank_lines_and_comments_and_numbers_lines() {
    let list = parse(
        "# header comment\n\n   \nhttp://10.0.0.1:80\r\n  # indented comment\n10.0.0.2:81\n",
        ProxyListFormat::Text,
    );
    assert!(list.invalid.is_empty());
    let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
    assert_eq!(lines, [4, 6]);
    assert!(parse("", ProxyListFormat::Text).entries.is_empty());
    // A byte-order mark is not part of the first line.
    assert_eq!(
        one("\u{feff}10.0.0.1:80", ProxyListFormat::Text).host,
        "10.0.0.1"
    );
}

#[test]
fn text_errors_name_the_field_and_the_line() {
    let input = "ftp://10.0.0.1:21\n\
                 http://10.0.0.1:0\n\
                 10.0.0.1:99999\n\
                 http://:8080\n\
                 :8080\n\
                 10.0.0.1\n\
                 10.0.0.1:80:useronly\n\
                 2001:db8::1:8080\n\
                 [2001:db8::1:8080\n\
                 [zz]:80\n\
                 http://10.0.0.1:80/path\n\
                 bad host:80\n\
                 10.0.0.1:80::pw\n\
                 10.0.0.1:80:user:\n\
                 10.0.0.1:http\n";
    assert_eq!(
        errors(input, ProxyListFormat::Text),
        [
            (1, "url.protocol".to_owned()),
            (2, "url.port".to_owned()),
            (3, "port".to_owned()),
            (4, "host".to_owned()),
            (5, "host".to_owned()),
            (6, "port".to_owned()),
            (7, "credentials".to_owned()),
            (8, "host".to_owned()),
            (9, "host".to_owned()),
            (10, "host".to_owned()),
            (11, "url".to_owned()),
            (12, "host".to_owned()),
            (13, "credentials.user".to_owned()),
            (14, "credentials.password".to_owned()),
            (15, "port".to_owned()),
        ]
    );
}

#[test]
fn bare_lines_without_a_protocol_are_invalid_not_guessed() {
    let list = parse_proxy_list(
        "10.0.0.1:80\nu:p@10.0.0.1:80\nsocks5://10.0.0.1:1080",
        ProxyListFormat::Text,
        &ImportDefaults::default(),
    )
    .unwrap();
    let fields: Vec<_> = list
        .invalid
        .iter()
        .map(|i| (i.line, &*i.error.field))
        .collect();
    assert_eq!(fields, [(1, "protocol"), (2, "protocol")]);
    assert_eq!(list.entries.len(), 1);
}

#[test]
fn errors_never_echo_a_password() {
    let secret = "hunter2-SECRET";
    let inputs = [
        (
            format!("http://user:{secret}@bad host:80"),
            ProxyListFormat::Text,
        ),
        (format!("10.0.0.1:0:user:{secret}"), ProxyListFormat::Text),
        (
            format!("http://user:{secret}%FF@10.0.0.1:80"),
            ProxyListFormat::Text,
        ),
        (
            format!("host,port,password\n10.0.0.1,80,{secret}"),
            ProxyListFormat::Csv,
        ),
        (
            format!("host,port,username,password\n10.0.0.1,x,u,{secret}"),
            ProxyListFormat::Csv,
        ),
        (
            format!("url\nhttp://u:{secret}@10.0.0.1"),
            ProxyListFormat::Csv,
        ),
        (
            format!("{{\"url\": \"http://u:{secret}@10.0.0.1:0\"}}"),
            ProxyListFormat::Jsonl,
        ),
        (
            format!("{{\"host\": \"h\", \"port\": 1, \"password\": \"{secret}\"}}"),
            ProxyListFormat::Jsonl,
        ),
        (
            format!("{{\"url\": \"http://u:{secret}@10.0.0.1:1\", \"colour\": 1}}"),
            ProxyListFormat::Jsonl,
        ),
        (
            format!("{{\"password\": \"{secret}\" oops"),
            ProxyListFormat::Jsonl,
        ),
    ];
    // A CSV list without its header row: the whole input is rejected,
    // without naming the "columns" it found.
    let e = parse_proxy_list(
        &format!("10.0.0.1,80,u,{secret}\n"),
        ProxyListFormat::Csv,
        &http(),
    )
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    for (input, format) in inputs {
        let list = parse(&input, format);
        assert_eq!(list.invalid.len(), 1, "{input}");
        for invalid in &list.invalid {
            let shown = format!(
                "{} {:?} {}",
                invalid.error,
                invalid,
                serde_json::to_string(invalid).unwrap()
            );
            assert!(!shown.contains("hunter2"), "{input}: {shown}");
        }
    }
    let e = one(&format!("10.0.0.1:80:u:{secret}"), ProxyListFormat::Text);
    assert!(!format!("{e:?}").contains(secret));
    assert!(!format!("{:?}", e.key()).contains("\"u\""));
}

#[test]
fn defaults_apply_and_lines_override_them() {
    let defaults = ImportDefaults {
        protocol: Some(ProxyProtocol::Socks5),
        country: Some("AR".into()),
        city: Some("Rosario".into()),
        source: Some("feed".into()),
        isp: Some("NetA".into()),
        asn: Some(7),
        max_concurrency: Some(MaxConcurrency::Limited(NonZeroU32::new(3).unwrap())),
        status: Some(ProxyStatus::Inactive),
    };
    let list = parse_proxy_list(
        "host,port,country,asn,max_concurrency\n10.0.0.1,1080,,,\n10.0.0.2,1080,BR,9,unlimited\n",
        ProxyListFormat::Csv,
        &defaults,
    )
    .unwrap();
    assert!(list.invalid.is_empty(), "{:?}", list.invalid);
    let [a, b] = [&list.entries[0].entry, &list.entries[1].entry];
    assert_eq!(a.protocol, ProxyProtocol::Socks5);
    assert_eq!(a.country.as_deref(), Some("AR"));
    assert_eq!(a.city.as_deref(), Some("Rosario"));
    assert_eq!(a.source.as_deref(), Some("feed"));
    assert_eq!(a.isp.as_deref(), Some("NetA"));
    assert_eq!(a.asn, Some(7));
    assert_eq!(a.max_concurrency.and_then(MaxConcurrency::limit), Some(3));
    assert_eq!(a.status, Some(ProxyStatus::Inactive));
    assert_eq!(b.country.as_deref(), Some("BR"));
    assert_eq!(b.asn, Some(9));
    assert_eq!(b.max_concurrency, Some(MaxConcurrency::Unlimited));
    // Text lines take every default too.
    let list = parse_proxy_list("10.0.0.9:1", ProxyListFormat::Text, &defaults).unwrap();
    let proxy = list.entries[0].entry.to_new_proxy(PoolId::new()).unwrap();
    assert_eq!(proxy.max_concurrency, Some(3));
    assert_eq!(proxy.status, ProxyStatus::Inactive);
    assert_eq!(proxy.country.as_deref(), Some("AR"));
}

#[test]
fn bad_defaults_reject_the_whole_input() {
    let bad = |d: ImportDefaults| {
        parse_proxy_list("10.0.0.1:80", ProxyListFormat::Text, &d)
            .unwrap_err()
            .field
            .into_owned()
    };
    assert_eq!(
        bad(ImportDefaults {
            country: Some(" ".into()),
            ..http()
        }),
        "country"
    );
    assert_eq!(
        bad(ImportDefaults {
            isp: Some(String::new()),
            ..http()
        }),
        "isp"
    );
    assert_eq!(
        bad(ImportDefaults {
            status: Some(ProxyStatus::Banned),
            ..http()
        }),
        "status"
    );
    assert_eq!(
        parse_proxy_json(
            "[]",
            &ImportDefaults {
                status: Some(ProxyStatus::Slow),
                ..http()
            }
        )
        .unwrap_err()
        .field,
        "status"
    );
}

#[test]
fn csv_with_every_column_quotes_and_comments() {
    let input = "URL, Host ,port,protocol,username,password,country,city,source,isp,asn,latitude,longitude,max_concurrency\n\
                 # a comment row\n\
                 \n\
                 ,10.0.0.1,8080,socks5,alice,\" p,w \",AR,\"Buenos Aires\",feed,NetA,AS13335,-34.6,-58.4,5\n\
                 http://bob:p%40ss@[2001:db8::1]:3128,,,,,,,,,,,,,\n\
                 ,2001:db8::5,80,,,,,,,,,,,\n";
    let list = parse(input, ProxyListFormat::Csv);
    assert!(list.invalid.is_empty(), "{:?}", list.invalid);
    let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
    assert_eq!(lines, [4, 5, 6]);
    let a = &list.entries[0].entry;
    assert_eq!(
        (a.protocol, a.host.as_str(), a.port),
        (ProxyProtocol::Socks5, "10.0.0.1", 8080)
    );
    assert_eq!(a.credentials.as_ref().unwrap().username, "alice");
    // Passwords are taken as they are: not trimmed, not decoded.
    assert_eq!(password(a), " p,w ");
    assert_eq!(a.city.as_deref(), Some("Buenos Aires"));
    assert_eq!(a.asn, Some(13335));
    assert_eq!(a.location, Some((-34.6, -58.4)));
    assert_eq!(a.max_concurrency.and_then(MaxConcurrency::limit), Some(5));
    let b = &list.entries[1].entry;
    assert_eq!((b.host.as_str(), password(b)), ("2001:db8::1", "p@ss"));
    // An IPv6 host column needs no brackets; the default protocol applies.
    let c = &list.entries[2].entry;
    assert_eq!(
        (c.host.as_str(), c.protocol),
        ("2001:db8::5", ProxyProtocol::Http)
    );
}

#[test]
fn csv_line_numbers_survive_comments_blank_lines_and_quoted_newlines() {
    let input = "host,port,source\n\
                 \n\
                 # comment\n\
                 10.0.0.1,80,\"two\nlines\"\n\
                 \x20\x20\n\
                 \x20\x20# indented comment\n\
                 10.0.0.2,x,\n\
                 # another\n\
                 10.0.0.3,80,";
    let list = parse(input, ProxyListFormat::Csv);
    let good: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
    let bad: Vec<usize> = list.invalid.iter().map(|p| p.line).collect();
    assert_eq!((good, bad), (vec![4, 10], vec![8]));
    assert_eq!(list.entries[0].entry.source.as_deref(), Some("two\nlines"));
}

#[test]
fn csv_header_errors_reject_the_whole_input() {
    for (input, reason_part) in [
        (
            "host,port,colour\n10.0.0.1,80,red\n",
            "column 3 is not one of url",
        ),
        ("host,port,HOST\n", "twice"),
        ("port,country\n80,AR\n", "url or a host"),
    ] {
        let e = parse_proxy_list(input, ProxyListFormat::Csv, &http()).unwrap_err();
        assert_eq!(e.field, "csv.header", "{input}");
        assert!(e.reason.contains(reason_part), "{input}: {e}");
    }
    // An empty file is an empty list.
    assert!(parse("", ProxyListFormat::Csv).entries.is_empty());
}

#[test]
fn csv_row_errors_name_the_field_and_the_line() {
    let input = "url,host,port,protocol,username,password,asn,latitude,longitude,max_concurrency\n\
                 ,10.0.0.1,80,gopher,,,,,,\n\
                 ,10.0.0.1,,,,,,,,\n\
                 ,,80,,,,,,,\n\
                 ,10.0.0.1,80,,,,big,,,\n\
                 ,10.0.0.1,80,,,,,91,0,\n\
                 ,10.0.0.1,80,,,,,1,,\n\
                 ,10.0.0.1,80,,,,,,x,\n\
                 ,10.0.0.1,80,,,,,,,0\n\
                 ,10.0.0.1,80,,u,,,,,\n\
                 ,10.0.0.1,80,,,p,,,,\n\
                 http://10.0.0.1:80,10.0.0.1,,,,,,,,\n\
                 ,10.0.0.1,80\n\
                 ,10.0.0.1,99999,,,,,,,\n\
                 ftp://10.0.0.1:80,,,,,,,,,\n";
    assert_eq!(
        errors(input, ProxyListFormat::Csv),
        [
            (2, "protocol".to_owned()),
            (3, "port".to_owned()),
            (4, "host".to_owned()),
            (5, "asn".to_owned()),
            (6, "latitude".to_owned()),
            (7, "latitude".to_owned()),
            (8, "longitude".to_owned()),
            (9, "max_concurrency".to_owned()),
            (10, "password".to_owned()),
            (11, "username".to_owned()),
            (12, "host".to_owned()),
            (13, "csv".to_owned()),
            (14, "port".to_owned()),
            (15, "url.protocol".to_owned()),
        ]
    );
}

#[test]
fn jsonl_lines_with_numbers_strings_and_nulls() {
    let input = "{\"url\": \"socks5://u:p%40ss@[::1]:1080\", \"country\": \"AR\", \"asn\": 13335, \"max_concurrency\": \"unlimited\"}\n\
                 \n\
                 {\"host\": \"10.0.0.1\", \"port\": 8080, \"protocol\": \"https\", \"username\": \"u\", \"password\": \"p%40\", \"latitude\": 1.5, \"longitude\": -2, \"max_concurrency\": 2, \"city\": null}\n\
                 {\"host\": \"10.0.0.2\", \"port\": \"81\", \"asn\": \"AS9\"}\n";
    let list = parse(input, ProxyListFormat::Jsonl);
    assert!(list.invalid.is_empty(), "{:?}", list.invalid);
    let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 3, 4]);
    let [a, b, c] = [
        &list.entries[0].entry,
        &list.entries[1].entry,
        &list.entries[2].entry,
    ];
    assert_eq!((a.host.as_str(), password(a)), ("::1", "p@ss"));
    assert_eq!(a.max_concurrency, Some(MaxConcurrency::Unlimited));
    assert_eq!(a.asn, Some(13335));
    assert_eq!(b.protocol, ProxyProtocol::Https);
    assert_eq!(password(b), "p%40");
    assert_eq!(b.location, Some((1.5, -2.0)));
    assert_eq!(b.city, None);
    assert_eq!(
        (c.port, c.asn, c.protocol),
        (81, Some(9), ProxyProtocol::Http)
    );
}

#[test]
fn jsonl_errors_name_the_field_and_the_line() {
    let input = "{\"host\": \"10.0.0.1\", \"port\": 80, \"colour\": \"red\"}\n\
                 {\"host\": \"10.0.0.1\", \"port\": 80\n\
                 [1, 2]\n\
                 {\"host\": \"10.0.0.1\", \"port\": true}\n\
                 {\"host\": \"10.0.0.1\", \"port\": 80, \"asn\": -5}\n\
                 {\"host\": \"10.0.0.1\", \"port\": 80, \"max_concurrency\": 1.5}\n\
                 {\"host\": \"10.0.0.1\", \"port\": 80.5}\n\
                 {\"url\": \"http://10.0.0.1\"}\n\
                 # not JSON\n";
    assert_eq!(
        errors(input, ProxyListFormat::Jsonl),
        [
            (1, "colour".to_owned()),
            (2, "json".to_owned()),
            (3, "json".to_owned()),
            (4, "port".to_owned()),
            (5, "asn".to_owned()),
            (6, "max_concurrency".to_owned()),
            (7, "port".to_owned()),
            (8, "url.port".to_owned()),
            (9, "json".to_owned()),
        ]
    );
}

#[test]
fn json_array_numbers_elements_from_one() {
    let list = parse_proxy_json(
        r#"[{"url": "http://10.0.0.1:80"}, {"host": "10.0.0.2"}, "x", {"host": "10.0.0.3", "port": 3}]"#,
        &http(),
    )
    .unwrap();
    assert_eq!(
        list.entries.iter().map(|p| p.line).collect::<Vec<_>>(),
        [1, 4]
    );
    let bad: Vec<_> = list
        .invalid
        .iter()
        .map(|i| (i.line, &*i.error.field))
        .collect();
    assert_eq!(bad, [(2, "port"), (3, "json")]);
    for body in [r#"{"url": "http://10.0.0.1:80"}"#, "[", "not json"] {
        assert_eq!(
            parse_proxy_json(body, &http()).unwrap_err().field,
            "json",
            "{body}"
        );
    }
}

#[test]
fn invalid_line_serialises_as_line_and_error() {
    let list = parse("10.0.0.1:0", ProxyListFormat::Text);
    assert_eq!(
        serde_json::to_value(&list.invalid[0]).unwrap(),
        serde_json::json!({"line": 1, "error": "invalid port: must be a number between 1 and 65535"})
    );
    let report = ImportReport {
        added: 1,
        updated: 2,
        skipped: 3,
        invalid: list.invalid,
        dry_run: true,
    };
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        serde_json::json!({
            "added": 1, "updated": 2, "skipped": 3, "dry_run": true,
            "invalid": [{"line": 1, "error": "invalid port: must be a number between 1 and 65535"}],
        })
    );
}

#[test]
fn keys_compare_hosts_by_value_and_usernames_exactly() {
    let k = |host: &str, user: Option<&str>| ProxyKey::new(ProxyProtocol::Http, host, 80, user);
    assert_eq!(k("Proxy.Example.COM", None), k("proxy.example.com", None));
    assert_eq!(k("proxy.example.com.", None), k("proxy.example.com", None));
    assert_eq!(k("2001:DB8:0::1", None), k("2001:db8::1", None));
    assert_eq!(k("[2001:db8::1]", None), k("2001:db8::1", None));
    assert_ne!(k("h", Some("Alice")), k("h", Some("alice")));
    assert_ne!(k("h", Some("alice")), k("h", None));
    assert_ne!(
        ProxyKey::new(ProxyProtocol::Http, "h", 80, None),
        ProxyKey::new(ProxyProtocol::Socks5, "h", 80, None)
    );
    assert_ne!(
        k("h", None),
        ProxyKey::new(ProxyProtocol::Http, "h", 81, None)
    );
}

#[test]
fn plan_adds_updates_keeps_ids_and_skips_earlier_duplicates() {
    let pool = PoolId::new();
    let mut banned = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
        .credentials("u", "old")
        .country("AR")
        .max_concurrency(2)
        .build()
        .unwrap();
    banned.status = ProxyStatus::Banned;
    let other_user = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
        .credentials("v", "x")
        .build()
        .unwrap();
    let list = parse(
        "http://u:first@10.0.0.1:80\n\
         10.0.0.2:80\n\
         http://u:new@10.0.0.1:80\n\
         10.0.0.3:80\n\
         HTTP://10.0.0.2:80\n",
        ProxyListFormat::Text,
    );
    let plan = plan_import(pool, &[banned.clone(), other_user], &list.entries);
    assert!(plan.invalid.is_empty());
    assert_eq!((plan.added, plan.updated, plan.skipped), (2, 1, 2));
    assert_eq!(plan.proxies.len(), 3);
    // Winners in input order: line 3 (update), line 4, line 5.
    let updated = &plan.proxies[0];
    assert_eq!(updated.id, banned.id);
    assert_eq!(updated.credentials.as_ref().unwrap().password, "new");
    // Fields the line does not give are kept; no status given: the ban stays.
    assert_eq!(updated.country.as_deref(), Some("AR"));
    assert_eq!(updated.max_concurrency, Some(2));
    assert_eq!(updated.status, ProxyStatus::Banned);
    assert_eq!(updated.created_at, banned.created_at);
    assert!(
        plan.proxies[1..]
            .iter()
            .all(|p| p.pool_id == pool && p.status == ProxyStatus::Active)
    );
    assert_eq!(plan.proxies[1].host, "10.0.0.3");
    assert_eq!(plan.proxies[2].host, "10.0.0.2");
}

#[test]
fn a_line_that_changes_nothing_is_skipped_not_rewritten() {
    let pool = PoolId::new();
    let list = parse("10.0.0.1:80:u:pw\n10.0.0.2:80\n", ProxyListFormat::Text);
    let first = plan_import(pool, &[], &list.entries);
    assert_eq!((first.added, first.updated, first.skipped), (2, 0, 0));
    let again = plan_import(pool, &first.proxies, &list.entries);
    assert_eq!((again.added, again.updated, again.skipped), (0, 0, 2));
    assert!(again.proxies.is_empty());
    let changed = parse("10.0.0.1:80:u:new\n10.0.0.2:80\n", ProxyListFormat::Text);
    let plan = plan_import(pool, &first.proxies, &changed.entries);
    assert_eq!((plan.added, plan.updated, plan.skipped), (0, 1, 1));
    assert_eq!(plan.proxies[0].id, first.proxies[0].id);
}

#[test]
fn an_explicit_status_and_limit_apply_to_updated_proxies() {
    let pool = PoolId::new();
    let existing = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
        .max_concurrency(2)
        .build()
        .unwrap();
    let defaults = ImportDefaults {
        status: Some(ProxyStatus::Inactive),
        max_concurrency: Some(MaxConcurrency::Unlimited),
        ..http()
    };
    let list = parse_proxy_list("10.0.0.1:80", ProxyListFormat::Text, &defaults).unwrap();
    let plan = plan_import(pool, std::slice::from_ref(&existing), &list.entries);
    assert_eq!((plan.added, plan.updated), (0, 1));
    assert_eq!(plan.proxies[0].status, ProxyStatus::Inactive);
    assert_eq!(plan.proxies[0].max_concurrency, None);
}
