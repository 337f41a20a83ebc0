//! Parsing and validating the configuration: URLs, keyword DSNs, the
//! environment, errors that name the field and never show a password.

use super::*;

#[test]
fn dsn_round_trip_and_redaction() {
    let c = PostgresConfig::from_dsn(
        "postgresql+psycopg://alice:s%40cr3t-pw@[::1]:6543/pharox?sslmode=require&max_connections=32&idle_timeout=0&schema=app&sql_log=info",
    )
    .unwrap();
    assert_eq!(c.host, "::1");
    assert_eq!(c.port, 6543);
    assert_eq!(c.user, "alice");
    assert_eq!(c.password.as_deref(), Some("s@cr3t-pw"));
    assert_eq!(c.database, "pharox");
    assert_eq!(c.ssl_mode, SslMode::Require);
    assert_eq!(c.max_connections, 32);
    assert_eq!(c.idle_timeout, None);
    assert_eq!(c.schema.as_deref(), Some("app"));
    assert!(c.sql_logging);
    assert_eq!(c.sql_log_level, tracing::Level::INFO);
    for shown in [format!("{c:?}"), c.to_string(), c.redacted_dsn()] {
        assert!(!shown.contains("s@cr3t"), "{shown}");
        assert!(!shown.contains("s%40cr3t"), "{shown}");
    }
    // Debug names the user; the DSN forms show no part of the userinfo.
    assert!(!c.redacted_dsn().contains("alice"));
    assert_eq!(
        c.to_string(),
        "postgres://***@[::1]:6543/pharox?sslmode=require&schema=app"
    );
}

#[test]
fn dsn_defaults_and_errors() {
    let c = PostgresConfig::from_dsn("postgres://db.internal").unwrap();
    assert_eq!(
        (c.user.as_str(), c.database.as_str(), c.port),
        ("postgres", "postgres", 5432)
    );
    assert_eq!(c.password, None);
    assert!(!c.test_before_acquire);
    assert!(
        !c.durable_release,
        "releases commit asynchronously by default"
    );
    assert!(
        PostgresConfig::from_dsn("postgres://h/db?durable_release=true")
            .unwrap()
            .durable_release
    );
    for bad in [
        "mysql://u:hunter2@h/db",
        "postgres://u:hunter2@h/db?sslmode=sometimes",
        "postgres://u:hunter2@h/db?bogus=1",
        "postgres://u:hunter2@h:99999/db",
        "no scheme hunter2",
    ] {
        let e = PostgresConfig::from_dsn(bad).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn tls_files_from_dsn_and_env() {
    let c = PostgresConfig::from_dsn(
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=/etc/pharox/ca.pem\
         &sslcert=/etc/pharox/client.pem&sslkey=/etc/pharox/client.key",
    )
    .unwrap();
    assert_eq!(c.ssl_mode, SslMode::VerifyFull);
    assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/etc/pharox/ca.pem")));
    assert_eq!(
        c.ssl_client_cert,
        Some(PathBuf::from("/etc/pharox/client.pem"))
    );
    assert_eq!(
        c.ssl_client_key,
        Some(PathBuf::from("/etc/pharox/client.key"))
    );
    assert!(c.validate().is_ok());

    let lookup = |name: &str| match name {
        "PHAROX_PG_HOST" => Some("h".to_owned()),
        "PHAROX_PG_SSLROOTCERT" => Some("ca.pem".to_owned()),
        _ => None,
    };
    let c = PostgresConfig::from_lookup(lookup).unwrap();
    assert_eq!(c.ssl_root_cert, Some(PathBuf::from("ca.pem")));
    assert_eq!(c.ssl_client_cert, None);

    let half = PostgresConfig::from_dsn("postgres://u@h/db?sslcert=client.pem").unwrap();
    let e = half.validate().unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid { field, .. } if field == "sslkey"),
        "{e}"
    );
    let e = PostgresConfig::from_dsn("postgres://u@h/db?sslrootcert=").unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid { field, .. } if field == "sslrootcert"),
        "{e}"
    );
}

#[test]
fn port_zero_is_refused() {
    let mut c = PostgresConfig::new("h", "db", "u");
    c.port = 0;
    let e = c.validate().unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid { field, .. } if field == "port"),
        "{e}"
    );
    assert!(
        PostgresConfig::from_dsn("postgres://u@h:0/db")
            .unwrap()
            .validate()
            .is_err()
    );
}

#[test]
fn env_lookup() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let c = PostgresConfig::from_lookup(env(&[
        ("PHAROX_PG_HOST", "10.1.2.3"),
        ("PHAROX_PG_PORT", "5433"),
        ("PHAROX_PG_DATABASE", "proxies"),
        ("PHAROX_PG_USER", "svc"),
        ("PHAROX_PG_PASSWORD", "topsecret"),
        ("PHAROX_PG_SSLMODE", "verify-full"),
        ("PHAROX_PG_MAX_CONNECTIONS", "4"),
        ("PHAROX_PG_ACQUIRE_TIMEOUT", "2.5"),
        ("PHAROX_PG_TEST_BEFORE_ACQUIRE", "true"),
        ("PHAROX_PG_DURABLE_RELEASE", "yes"),
    ]))
    .unwrap();
    assert_eq!(c.host, "10.1.2.3");
    assert_eq!(c.port, 5433);
    assert_eq!(c.database, "proxies");
    assert_eq!(c.password.as_deref(), Some("topsecret"));
    assert_eq!(c.ssl_mode, SslMode::VerifyFull);
    assert_eq!(c.max_connections, 4);
    assert_eq!(c.acquire_timeout, Duration::from_millis(2500));
    assert!(c.test_before_acquire);
    assert!(c.durable_release);
    assert!(!format!("{c:?}").contains("topsecret"));

    let c = PostgresConfig::from_lookup(env(&[
        ("PHAROX_DATABASE_URL", "postgres://u:pw-from-url@h/db"),
        ("PHAROX_PG_HOST", "ignored"),
        ("PHAROX_PG_MAX_CONNECTIONS", "3"),
    ]))
    .unwrap();
    assert_eq!((c.host.as_str(), c.max_connections), ("h", 3));

    assert_eq!(
        PostgresConfig::from_lookup(env(&[])).unwrap_err(),
        ConfigError::Missing
    );
    let e = PostgresConfig::from_lookup(env(&[
        ("PHAROX_DATABASE_URL", "postgres://u:pw-from-url@h/db"),
        ("PHAROX_PG_MAX_CONNECTIONS", "many"),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("PHAROX_PG_MAX_CONNECTIONS"), "{e}");
    assert!(!e.to_string().contains("pw-from-url"), "{e}");
}

/// Whether `shown` contains `fragment`: as a substring, or as a whole
/// word when the fragment is short enough to occur inside ordinary
/// words ("ss" in "password").
fn leaks(shown: &str, fragment: &str) -> bool {
    if fragment.len() > 3 || !fragment.chars().all(char::is_alphanumeric) {
        shown.contains(fragment)
    } else {
        shown
            .split(|c: char| !c.is_alphanumeric())
            .any(|word| word == fragment)
    }
}

#[test]
fn ambiguous_dsns_are_refused_without_echoing_them() {
    // (DSN, field, pieces of its userinfo that must not be shown)
    let cases: &[(&str, &str, &[&str])] = &[
        // An unencoded `/` in the password: URL parsers read host
        // "postgres", port 4321 and the password's tail as the path.
        (
            "postgres://postgres:4321/S3cr3t@127.0.0.1/db",
            "dsn",
            &["4321", "S3cr3t", "postgres:"],
        ),
        // `@` and `#`: host "ss", the rest a fragment.
        (
            "postgres://u:p@ss#x@127.0.0.1/db",
            "dsn",
            &["p@ss", "ss", "ss#x", "#x"],
        ),
        // `#` alone: the password's tail as a fragment.
        (
            "postgres://u:S3cr3t#x@127.0.0.1/db",
            "dsn",
            &["S3cr3t", "#x"],
        ),
        // Two `@`: which one ends the userinfo is a guess.
        (
            "postgres://u:p@ss@127.0.0.1/db",
            "dsn",
            &["p@ss", "ss", "u:p"],
        ),
        // `?`: the password's tail as the query.
        ("postgres://u:S3?cr3t@127.0.0.1/db", "dsn", &["S3", "cr3t"]),
        // An `@` in a query value, also when the userinfo is fine.
        (
            "postgres://u:S3cr3t@127.0.0.1/db?application_name=a@b",
            "dsn",
            &["S3cr3t"],
        ),
        // No host at all: user and password read as host and port.
        (
            "postgres://admin:S3cr3t/db",
            "dsn.port",
            &["admin", "S3cr3t"],
        ),
        ("postgres://admin:S3cr3t", "dsn.port", &["admin", "S3cr3t"]),
        // Two ports.
        (
            "postgres://u:S3cr3t@127.0.0.1:1:2/db",
            "dsn.port",
            &["S3cr3t", "1:2"],
        ),
        // A bracket left open.
        ("postgres://u:S3cr3t@[::1/db", "dsn.host", &["S3cr3t"]),
        ("postgres://u:S3cr3t@[::1]x/db", "dsn.host", &["S3cr3t"]),
    ];
    for &(dsn, field, secrets) in cases {
        let e = PostgresConfig::from_dsn(dsn).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            matches!(&e, ConfigError::Invalid { field: f, .. } if f == field),
            "{dsn}: {shown}"
        );
        assert!(shown.contains("percent-encoded"), "{dsn}: {shown}");
        let redacted = PostgresConfig::redact_dsn(dsn);
        assert_eq!(redacted, MALFORMED_DSN, "{dsn}");
        // Through the environment the field gets the variable's name,
        // and still no piece of the input.
        let env =
            PostgresConfig::from_lookup(|name| (name == ENV_DATABASE_URL).then(|| dsn.to_owned()))
                .unwrap_err();
        let env_shown = format!("{env} {env:?}");
        assert!(env_shown.contains(ENV_DATABASE_URL), "{env_shown}");
        for secret in secrets {
            for text in [&shown, &env_shown] {
                assert!(!leaks(text, secret), "{dsn}: {secret:?} in {text}");
            }
        }
    }
}

#[test]
fn url_parser_errors_do_not_echo_the_input_either() {
    for dsn in [
        "postgres://u:S3cr3t@ho st/db",
        "postgres://u:S3cr3t@[::zz]/db",
        "postgres://u:S3cr3t@999.1.1.1.1:5432/db",
        "postgres://u:S3cr3t@h:99999/db",
        "postgres://u:S3cr3t@/db",
        "S3cr3t://u:S3cr3t@h/db",
        "u:S3cr3t@h/db",
    ] {
        if let Err(e) = PostgresConfig::from_dsn(dsn) {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("S3cr3t"), "{dsn}: {shown}");
        }
        let redacted = PostgresConfig::redact_dsn(dsn);
        assert!(!redacted.contains("S3cr3t"), "{dsn}: {redacted}");
    }
}

#[test]
fn percent_encoded_and_unambiguous_dsns_still_parse() {
    let c = PostgresConfig::from_dsn("postgres://u:p%40ss%23x%2F%3F%3A@127.0.0.1/db").unwrap();
    assert_eq!(c.password.as_deref(), Some("p@ss#x/?:"));
    assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 5432));
    // A `:` in the password is unambiguous: the user name cannot hold one.
    let c = PostgresConfig::from_dsn("postgres://u:a:b@h:6000/db").unwrap();
    assert_eq!(
        (c.user.as_str(), c.password.as_deref(), c.port),
        ("u", Some("a:b"), 6000)
    );
    // `host:` is the default port, as URL parsers read it.
    assert_eq!(
        PostgresConfig::from_dsn("postgres://h:/db").unwrap().port,
        5432
    );
    let c = PostgresConfig::from_dsn("postgres://u@[::1]:7000").unwrap();
    assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
    assert_eq!(c.host_port(), "[::1]:7000");
    assert_eq!(
        PostgresConfig::from_dsn("postgres://h/db?application_name=a%40b")
            .unwrap()
            .application_name
            .as_deref(),
        Some("a@b")
    );
}

#[test]
fn redact_dsn_shows_where_but_never_the_password() {
    assert_eq!(
        PostgresConfig::redact_dsn(
            "postgresql://alice:S3cr3t@db.example:6543/pharox?sslmode=require&schema=app"
        ),
        "postgres://***@db.example:6543/pharox?sslmode=require&schema=app"
    );
    assert_eq!(
        PostgresConfig::redact_dsn("postgres://alice:p%40ss@db.example/pharox"),
        "postgres://***@db.example:5432/pharox?sslmode=prefer"
    );
    assert_eq!(
        PostgresConfig::redact_dsn("postgres://alice@db.example/pharox"),
        "postgres://***@db.example:5432/pharox?sslmode=prefer"
    );
    // A parameter that does not parse (libpq's `password`, here) is left
    // out with all the others.
    assert_eq!(
        PostgresConfig::redact_dsn("postgres://alice:S3cr3t@h/db?password=S3cr3t&x=1"),
        "postgres://***@h:5432/db"
    );
    assert_eq!(
        PostgresConfig::redact_dsn("no scheme S3cr3t"),
        MALFORMED_DSN
    );
    assert_eq!(PostgresConfig::redact_dsn(""), MALFORMED_DSN);
}
