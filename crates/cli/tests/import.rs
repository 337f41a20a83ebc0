//! `pharox proxy import` run as an operator runs it, against the real
//! PostgreSQL server, each test in a fresh schema of its own: every format,
//! bad lines (all or nothing, then `--skip-invalid`), re-imports that update
//! instead of duplicating, IPv6 and percent-encoded credentials, and no
//! password in any output.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{Run, Schema, json};
use pharox::{Proxy, ProxyProtocol, ProxyStatus, ProxyStorage};

const PASSWORD: &str = "pw-9f3k";

/// A file in the temp directory, removed on drop.
struct ListFile(PathBuf);

impl ListFile {
    fn new(extension: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pharox-import-{}.{extension}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ListFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Schema {
    fn pool(&self, name: &str) -> pharox::PoolId {
        let created = json(&self.pharox(&["pool", "create", name, "--json"]));
        created["id"].as_str().unwrap().parse().unwrap()
    }

    /// The pool's proxies, by `host:port`.
    fn proxies(&self, pool: pharox::PoolId) -> BTreeMap<String, Proxy> {
        let storage = self.storage();
        self.runtime
            .block_on(storage.list_proxies(pool))
            .unwrap()
            .into_iter()
            .map(|p| (format!("{}:{}", p.host, p.port), p))
            .collect()
    }
}

fn assert_no_password(runs: &[&Run]) {
    common::assert_no_password(PASSWORD, runs.iter().copied());
}

#[test]
fn a_text_list_with_every_line_form_imports_ipv6_and_percent_encoded_credentials() {
    let schema = Schema::create();
    let pool = schema.pool("latam");
    let list = ListFile::new(
        "txt",
        &format!(
            "# provider export\n\
             \n\
             http://127.0.0.1:8001\n\
             socks5://u1:p%40ss%3Aword@[::1]:1080\n\
             127.0.0.2:8002\n\
             127.0.0.3:8003:u3:{PASSWORD}\n\
             https://u4:{PASSWORD}@127.0.0.4:8443\n"
        ),
    );
    let run = schema.pharox(&[
        "proxy",
        "import",
        "--pool",
        "latam",
        list.path(),
        "--protocol",
        "http",
        "--country",
        "AR",
        "--source",
        "acme",
        "--json",
    ]);
    let report = json(&run);
    assert_eq!(report["added"], 5, "{run:?}");
    assert_eq!(report["updated"], 0);
    assert_eq!(report["invalid"], serde_json::json!([]));
    assert_eq!(report["dry_run"], false);

    let proxies = schema.proxies(pool);
    assert_eq!(proxies.len(), 5, "{proxies:?}");
    let v6 = &proxies["::1:1080"];
    assert_eq!(v6.protocol, ProxyProtocol::Socks5);
    let credentials = v6.credentials.as_ref().unwrap();
    assert_eq!(
        (credentials.username.as_str(), credentials.password.as_str()),
        ("u1", "p@ss:word")
    );
    // A bare host:port and the provider form take --protocol; the
    // provider form's credentials are taken as they are.
    assert_eq!(proxies["127.0.0.2:8002"].protocol, ProxyProtocol::Http);
    let provider = &proxies["127.0.0.3:8003"];
    assert_eq!(provider.credentials.as_ref().unwrap().password, PASSWORD);
    assert_eq!(proxies["127.0.0.4:8443"].protocol, ProxyProtocol::Https);
    for proxy in proxies.values() {
        assert_eq!(proxy.country.as_deref(), Some("AR"));
        assert_eq!(proxy.source.as_deref(), Some("acme"));
        assert_eq!(proxy.status, ProxyStatus::Active);
    }
    // The table form says the same, without a password.
    let table = schema.pharox(&["proxy", "list", "--pool", "latam"]);
    assert!(table.stdout.contains("socks5://u1@[::1]:1080"), "{table:?}");
    assert_no_password(&[&run, &table]);
}

#[test]
fn a_csv_list_and_a_jsonl_list_give_every_column() {
    let schema = Schema::create();
    let pool = schema.pool("geo");
    let csv = ListFile::new(
        "csv",
        &format!(
            "host,port,protocol,username,password,country,city,isp,asn,latitude,longitude,max_concurrency\n\
             127.0.0.1,3128,http,alice,\"{PASSWORD}\",AR,Rosario,Telecom,AS7303,-32.95,-60.66,4\n\
             127.0.0.2,1080,socks5,,,BR,,,,,,unlimited\n"
        ),
    );
    let run = schema.pharox(&["proxy", "import", "--pool", "geo", csv.path(), "--json"]);
    assert_eq!(json(&run)["added"], 2, "{run:?}");
    let jsonl = ListFile::new(
        "jsonl",
        &format!(
            "{{\"url\": \"http://bob:{PASSWORD}@127.0.0.3:8080\", \"country\": \"CL\", \"asn\": 7418}}\n\
             \n\
             {{\"host\": \"127.0.0.4\", \"port\": 8081, \"protocol\": \"https\", \"max_concurrency\": 2, \"source\": \"dc\"}}\n"
        ),
    );
    let run_jsonl = schema.pharox(&["proxy", "import", "--pool", "geo", jsonl.path(), "--json"]);
    assert_eq!(json(&run_jsonl)["added"], 2, "{run_jsonl:?}");

    let proxies = schema.proxies(pool);
    let alice = &proxies["127.0.0.1:3128"];
    assert_eq!(alice.credentials.as_ref().unwrap().username, "alice");
    assert_eq!(alice.credentials.as_ref().unwrap().password, PASSWORD);
    assert_eq!(
        (alice.country.as_deref(), alice.city.as_deref()),
        (Some("AR"), Some("Rosario"))
    );
    assert_eq!(alice.isp.as_deref(), Some("Telecom"));
    assert_eq!(alice.asn, Some(7303));
    assert_eq!(
        (alice.latitude, alice.longitude),
        (Some(-32.95), Some(-60.66))
    );
    assert_eq!(alice.max_concurrency, Some(4));
    let open = &proxies["127.0.0.2:1080"];
    assert!(open.credentials.is_none());
    assert_eq!(open.max_concurrency, None);
    assert_eq!(open.protocol, ProxyProtocol::Socks5);
    let bob = &proxies["127.0.0.3:8080"];
    assert_eq!((bob.country.as_deref(), bob.asn), (Some("CL"), Some(7418)));
    let dc = &proxies["127.0.0.4:8081"];
    assert_eq!(dc.protocol, ProxyProtocol::Https);
    assert_eq!(
        (dc.max_concurrency, dc.source.as_deref()),
        (Some(2), Some("dc"))
    );
    assert_no_password(&[&run, &run_jsonl]);
}

#[test]
fn bad_lines_write_nothing_unless_skipped_and_are_listed_by_line() {
    let schema = Schema::create();
    let pool = schema.pool("p");
    let input = format!(
        "http://127.0.0.1:8001\n\
         http://127.0.0.1:99999\n\
         # a comment\n\
         ftp://u:{PASSWORD}@127.0.0.1:21\n\
         127.0.0.5:8005\n\
         http://127.0.0.6:8006\n"
    );
    // All or nothing: exit 2, the bad lines by number, the pool untouched.
    let rejected = schema.pharox_stdin(&["proxy", "import", "--pool", "p", "--json"], &input);
    assert_eq!(rejected.code, Some(2), "{rejected:?}");
    let report: serde_json::Value = serde_json::from_str(rejected.stdout.trim()).unwrap();
    assert_eq!(
        (report["added"].clone(), report["updated"].clone()),
        (0.into(), 0.into())
    );
    let lines: Vec<_> = report["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["line"].as_u64().unwrap())
        .collect();
    // Line 5 has no scheme and no --protocol was given.
    assert_eq!(lines, [2, 4, 5], "{report}");
    for invalid in report["invalid"].as_array().unwrap() {
        assert!(!invalid["error"].as_str().unwrap().is_empty(), "{report}");
    }
    assert!(
        rejected.stderr.contains("nothing was written"),
        "{rejected:?}"
    );
    assert!(schema.proxies(pool).is_empty());

    // The table form lists them too.
    let table = schema.pharox_stdin(&["proxy", "import", "--pool", "p"], &input);
    assert_eq!(table.code, Some(2), "{table:?}");
    assert!(table.stdout.contains("nothing imported"), "{table:?}");
    assert!(table.stdout.contains("line 2: invalid"), "{table:?}");
    assert!(table.stderr.contains("--skip-invalid"), "{table:?}");
    assert!(schema.proxies(pool).is_empty());

    // --skip-invalid writes the good lines; still exit 2.
    let skipped = schema.pharox_stdin(
        &["proxy", "import", "--pool", "p", "--skip-invalid", "--json"],
        &input,
    );
    assert_eq!(skipped.code, Some(2), "{skipped:?}");
    let report: serde_json::Value = serde_json::from_str(skipped.stdout.trim()).unwrap();
    assert_eq!(report["added"], 2, "{report}");
    assert_eq!(report["invalid"].as_array().unwrap().len(), 3);
    let proxies = schema.proxies(pool);
    assert_eq!(
        proxies.keys().collect::<Vec<_>>(),
        ["127.0.0.1:8001", "127.0.0.6:8006"]
    );
    assert_no_password(&[&rejected, &table, &skipped]);
}

#[test]
fn a_reimport_updates_what_changed_keeps_ids_and_never_duplicates() {
    let schema = Schema::create();
    let pool = schema.pool("p");
    let first = format!(
        "http://a:{PASSWORD}@127.0.0.1:8001\nhttp://127.0.0.2:8002\nhttp://127.0.0.3:8003\n"
    );
    let run = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "p",
            "--country",
            "AR",
            "--json",
        ],
        &first,
    );
    assert_eq!(json(&run)["added"], 3, "{run:?}");
    let before = schema.proxies(pool);

    // The same list again changes nothing.
    let same = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "p",
            "--country",
            "AR",
            "--json",
        ],
        &first,
    );
    let report = json(&same);
    assert_eq!(
        (
            report["added"].clone(),
            report["updated"].clone(),
            report["skipped"].clone()
        ),
        (0.into(), 0.into(), 3.into()),
        "{report}"
    );

    // A new password (same user) and a new country update; a new line adds;
    // a different user on the same address is another proxy.
    let second = "http://a:new-pw@127.0.0.1:8001\n\
                  http://127.0.0.2:8002\n\
                  http://b:x@127.0.0.2:8002\n";
    let run2 = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "p",
            "--country",
            "BR",
            "--json",
        ],
        second,
    );
    let report = json(&run2);
    assert_eq!(
        (
            report["added"].clone(),
            report["updated"].clone(),
            report["skipped"].clone()
        ),
        (1.into(), 2.into(), 0.into()),
        "{report}"
    );
    let after = schema.storage();
    let all = schema.runtime.block_on(after.list_proxies(pool)).unwrap();
    assert_eq!(all.len(), 4, "no duplicate: {all:?}");
    let updated = all.iter().find(|p| p.port == 8001).unwrap();
    assert_eq!(updated.id, before["127.0.0.1:8001"].id, "the id is kept");
    assert_eq!(updated.credentials.as_ref().unwrap().password, "new-pw");
    assert_eq!(updated.country.as_deref(), Some("BR"));
    // Not in the second list: left as it was.
    let untouched = all.iter().find(|p| p.port == 8003).unwrap();
    assert_eq!(untouched.country.as_deref(), Some("AR"));

    // A dry run reports and writes nothing.
    let dry = schema.pharox_stdin(
        &["proxy", "import", "--pool", "p", "--dry-run", "--json"],
        "http://127.0.0.9:8009\n",
    );
    let report = json(&dry);
    assert_eq!(
        (report["added"].clone(), report["dry_run"].clone()),
        (1.into(), true.into())
    );
    let count = schema
        .runtime
        .block_on(after.list_proxies(pool))
        .unwrap()
        .len();
    assert_eq!(count, 4, "the dry run wrote nothing");
    let dry_table = schema.pharox_stdin(
        &["proxy", "import", "--pool", "p", "--dry-run"],
        "http://127.0.0.9:8009\n",
    );
    assert!(dry_table.stdout.contains("dry run"), "{dry_table:?}");
    assert_no_password(&[&run, &same, &run2, &dry, &dry_table]);
}

#[test]
fn bad_flags_and_unknown_pools_are_refused_naming_what_is_wrong() {
    let schema = Schema::create();
    schema.pool("latam");
    let one = "http://127.0.0.1:8001\n";
    for (flag, value) in [
        ("--max-concurrency", "0"),
        ("--status", "banned"),
        ("--protocol", "ftp"),
        ("--asn", "ASx"),
        ("--format", "xml"),
        ("--country", "  "),
    ] {
        let run = schema.pharox_stdin(&["proxy", "import", "--pool", "latam", flag, value], one);
        assert_eq!(run.code, Some(2), "{flag}: {run:?}");
        assert!(
            run.stderr.contains(&format!("invalid {flag}")),
            "{flag}: {run:?}"
        );
    }
    let missing = schema.pharox(&[
        "proxy",
        "import",
        "--pool",
        "latam",
        "/nonexistent/list.txt",
    ]);
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("invalid FILE"), "{missing:?}");
    let header = schema.pharox_stdin(
        &["proxy", "import", "--pool", "latam", "--format", "csv"],
        "hostname,port\n127.0.0.1,80\n",
    );
    assert_eq!(header.code, Some(2), "{header:?}");
    assert!(header.stderr.contains("invalid FILE"), "{header:?}");
    let unknown = schema.pharox_stdin(&["proxy", "import", "--pool", "latm"], one);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("pool latm does not exist; did you mean latam?"),
        "{unknown:?}"
    );
    // Input problems are found before the database is opened.
    let offline = common::run_full(
        &[
            "proxy",
            "import",
            "--pool",
            "latam",
            "--max-concurrency",
            "0",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
        ],
        Some(one.as_bytes()),
        std::process::Stdio::piped(),
    );
    assert_eq!(offline.code, Some(2), "{offline:?}");
}
