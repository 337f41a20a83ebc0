//! import_proxies: every behaviour against the in-memory storage and a real
//! PostgreSQL (a fresh schema per test), and its error paths against
//! mocked storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pharox::ports::MockProxyStorage;
use pharox::{
    AcquireRequest, ImportDefaults, ImportOptions, ImportReport, LeaseStatus, PharoxError,
    ProxyListFormat, ProxyPool, ProxyProtocol, ProxyStatus, ProxyStorage, StorageError,
    import_proxies, parse_proxy_list,
};
use pharox_adapter_postgres::testing::TestSchema;

const POOL: &str = "imports";

fn http() -> ImportDefaults {
    ImportDefaults {
        protocol: Some(ProxyProtocol::Http),
        ..ImportDefaults::default()
    }
}

async fn pool(storage: &dyn ProxyStorage) -> ProxyPool {
    storage
        .save_pool(&ProxyPool::new(POOL).unwrap())
        .await
        .unwrap()
}

async fn import(
    storage: &dyn ProxyStorage,
    input: &str,
    format: ProxyListFormat,
    defaults: &ImportDefaults,
    options: ImportOptions,
) -> ImportReport {
    let parsed = parse_proxy_list(input, format, defaults).unwrap();
    import_proxies(storage, POOL, parsed, options)
        .await
        .unwrap()
}

/// The pool's proxies as `(url, password, country)`, sorted.
async fn stored(storage: &dyn ProxyStorage) -> Vec<(String, Option<String>, Option<String>)> {
    let pool = storage.get_pool_by_name(POOL).await.unwrap();
    let mut rows: Vec<_> = storage
        .list_proxies(pool.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.to_string(),
                p.credentials.as_ref().map(|c| c.password.clone()),
                p.country.clone(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn row(
    url: &str,
    password: Option<&str>,
    country: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        url.to_owned(),
        password.map(str::to_owned),
        country.map(str::to_owned),
    )
}

async fn adds_proxies_from_every_format(storage: &dyn ProxyStorage) {
    pool(storage).await;
    let text = "# provider A\nsocks5://u:p%40ss@[2001:db8::1]:1080\n10.0.0.1:8080:alice:secret\n";
    let report = import(
        storage,
        text,
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    assert_eq!(
        report,
        ImportReport {
            added: 2,
            ..ImportReport::default()
        }
    );
    let csv = "host,port,protocol,country,asn,latitude,longitude,max_concurrency\n\
               10.0.0.2,3128,https,AR,13335,-34.6,-58.4,4\n";
    import(
        storage,
        csv,
        ProxyListFormat::Csv,
        &http(),
        ImportOptions::default(),
    )
    .await;
    let jsonl = r#"{"url": "http://10.0.0.3:80", "country": "BR", "max_concurrency": "unlimited"}"#;
    import(
        storage,
        jsonl,
        ProxyListFormat::Jsonl,
        &http(),
        ImportOptions::default(),
    )
    .await;
    assert_eq!(
        stored(storage).await,
        [
            row("http://10.0.0.1:8080", Some("secret"), None),
            row("http://10.0.0.3:80", None, Some("BR")),
            row("https://10.0.0.2:3128", None, Some("AR")),
            row("socks5://[2001:db8::1]:1080", Some("p@ss"), None),
        ]
    );
    let pool = storage.get_pool_by_name(POOL).await.unwrap();
    let proxies = storage.list_proxies(pool.id).await.unwrap();
    let https = proxies.iter().find(|p| p.port == 3128).unwrap();
    assert_eq!(
        (
            https.asn,
            https.latitude,
            https.longitude,
            https.max_concurrency
        ),
        (Some(13335), Some(-34.6), Some(-58.4), Some(4))
    );
    assert_eq!(
        proxies
            .iter()
            .find(|p| p.port == 80)
            .unwrap()
            .max_concurrency,
        None
    );
}

async fn reimport_updates_in_place_keeping_ids_leases_and_bans(storage: &dyn ProxyStorage) {
    let pool = pool(storage).await;
    let defaults = ImportDefaults {
        country: Some("AR".into()),
        ..http()
    };
    // Alice's proxy first, alone, so that the lease must be on it.
    import(
        storage,
        "10.0.0.1:8080:alice:old",
        ProxyListFormat::Text,
        &defaults,
        ImportOptions::default(),
    )
    .await;
    let consumer = storage.ensure_consumer("worker").await.unwrap();
    let request = AcquireRequest::new(POOL, consumer, Duration::from_secs(300));
    let lease = storage.acquire(&request).await.unwrap().unwrap();
    import(
        storage,
        "10.0.0.2:8080\n10.0.0.3:8080\n",
        ProxyListFormat::Text,
        &defaults,
        ImportOptions::default(),
    )
    .await;
    let before = storage.list_proxies(pool.id).await.unwrap();
    assert_eq!(before.len(), 3);
    let alice = before
        .iter()
        .find(|p| p.credentials.is_some())
        .unwrap()
        .clone();
    assert_eq!(lease.proxy.id, alice.id);
    // A ban that the re-import must keep.
    let mut banned = before
        .iter()
        .find(|p| p.host == "10.0.0.2")
        .unwrap()
        .clone();
    banned.status = ProxyStatus::Banned;
    storage.save_proxy(&banned).await.unwrap();

    // Same proxies (hosts spelt differently), a new password, a new country
    // for one line, no status given; and one new proxy.
    let second = "http://alice:new@10.0.0.1:8080\n10.0.0.2:8080\n\
                  HTTP://10.0.0.3:8080\n10.0.0.4:8080\n";
    let defaults = ImportDefaults {
        country: Some("CL".into()),
        ..http()
    };
    let report = import(
        storage,
        second,
        ProxyListFormat::Text,
        &defaults,
        ImportOptions::default(),
    )
    .await;
    assert_eq!((report.added, report.updated, report.skipped), (1, 3, 0));
    let after = storage.list_proxies(pool.id).await.unwrap();
    assert_eq!(after.len(), 4, "updated, not duplicated");
    for old in &before {
        let new = after.iter().find(|p| p.id == old.id).expect("ids are kept");
        assert_eq!(new.created_at, old.created_at);
        assert_eq!(new.country.as_deref(), Some("CL"));
    }
    let alice_now = after.iter().find(|p| p.id == alice.id).unwrap();
    assert_eq!(alice_now.credentials.as_ref().unwrap().password, "new");
    assert_eq!(
        alice_now.current_leases, 1,
        "the lease still holds its slot"
    );
    let lease_now = storage.get_lease(lease.id).await.unwrap();
    assert_eq!(lease_now.status, LeaseStatus::Active);
    assert_eq!(
        lease_now.proxy.credentials.as_ref().unwrap().password,
        "new"
    );
    let banned_now = after.iter().find(|p| p.id == banned.id).unwrap();
    assert_eq!(
        banned_now.status,
        ProxyStatus::Banned,
        "no status given: the ban stays"
    );
    assert_eq!(
        after.iter().find(|p| p.host == "10.0.0.4").unwrap().status,
        ProxyStatus::Active
    );

    // An explicit status applies to updated proxies too.
    let report = import(
        storage,
        "10.0.0.4:8080",
        ProxyListFormat::Text,
        &ImportDefaults {
            status: Some(ProxyStatus::Inactive),
            ..http()
        },
        ImportOptions::default(),
    )
    .await;
    assert_eq!((report.added, report.updated), (0, 1));
    let proxies = storage.list_proxies(pool.id).await.unwrap();
    assert_eq!(
        proxies
            .iter()
            .find(|p| p.host == "10.0.0.4")
            .unwrap()
            .status,
        ProxyStatus::Inactive
    );
}

async fn reimporting_the_same_list_writes_nothing(storage: &dyn ProxyStorage) {
    let pool = pool(storage).await;
    let list = "10.0.0.1:80:u:pw\nsocks5://[::1]:1080\n";
    import(
        storage,
        list,
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    let before = storage.list_proxies(pool.id).await.unwrap();
    let report = import(
        storage,
        list,
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    assert_eq!((report.added, report.updated, report.skipped), (0, 0, 2));
    assert_eq!(storage.list_proxies(pool.id).await.unwrap(), before);
}

async fn any_invalid_line_writes_nothing(storage: &dyn ProxyStorage) {
    pool(storage).await;
    import(
        storage,
        "10.0.0.1:80:u:old",
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    let input = "10.0.0.1:80:u:new\n10.0.0.2:80\n10.0.0.3:99999\nftp://10.0.0.4:21\n";
    for dry_run in [false, true] {
        let options = ImportOptions {
            dry_run,
            skip_invalid: false,
        };
        let report = import(storage, input, ProxyListFormat::Text, &http(), options).await;
        assert_eq!((report.added, report.updated, report.skipped), (0, 0, 0));
        assert_eq!(report.dry_run, dry_run);
        let bad: Vec<_> = report
            .invalid
            .iter()
            .map(|i| (i.line, i.error.field.to_string()))
            .collect();
        assert_eq!(
            bad,
            [(3, "port".to_owned()), (4, "url.protocol".to_owned())]
        );
        assert_eq!(
            stored(storage).await,
            [row("http://10.0.0.1:80", Some("old"), None)],
            "neither the update nor the good new line was written"
        );
    }
}

async fn skip_invalid_writes_the_good_lines(storage: &dyn ProxyStorage) {
    pool(storage).await;
    import(
        storage,
        "10.0.0.1:80:u:old",
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    let input = "host,port,username,password\n\
                 10.0.0.1,80,u,new\n\
                 10.0.0.2,0,,\n\
                 10.0.0.3,80,,\n\
                 10.0.0.4,80,,pw-without-user\n";
    let options = ImportOptions {
        dry_run: false,
        skip_invalid: true,
    };
    let report = import(storage, input, ProxyListFormat::Csv, &http(), options).await;
    assert_eq!((report.added, report.updated, report.skipped), (1, 1, 0));
    let bad: Vec<_> = report
        .invalid
        .iter()
        .map(|i| (i.line, i.error.field.to_string()))
        .collect();
    assert_eq!(bad, [(3, "port".to_owned()), (5, "username".to_owned())]);
    assert_eq!(
        stored(storage).await,
        [
            row("http://10.0.0.1:80", Some("new"), None),
            row("http://10.0.0.3:80", None, None),
        ]
    );
}

async fn dry_run_reports_and_writes_nothing(storage: &dyn ProxyStorage) {
    pool(storage).await;
    import(
        storage,
        "10.0.0.1:80:u:old",
        ProxyListFormat::Text,
        &http(),
        ImportOptions::default(),
    )
    .await;
    let input = "10.0.0.1:80:u:new\n10.0.0.2:80\n10.0.0.2:80\nbad\n";
    let options = ImportOptions {
        dry_run: true,
        skip_invalid: true,
    };
    let report = import(storage, input, ProxyListFormat::Text, &http(), options).await;
    assert_eq!(
        (
            report.added,
            report.updated,
            report.skipped,
            report.invalid.len(),
            report.dry_run
        ),
        (1, 1, 1, 1, true)
    );
    assert_eq!(
        stored(storage).await,
        [row("http://10.0.0.1:80", Some("old"), None)]
    );
}

async fn duplicates_in_one_input_the_last_line_wins(storage: &dyn ProxyStorage) {
    pool(storage).await;
    let input = r#"{"url": "http://u:first@10.0.0.1:80", "country": "AR"}
{"host": "10.0.0.1", "port": 80, "username": "u", "password": "second"}
{"url": "http://u:third@10.0.0.1:80/", "country": "CL"}
{"url": "http://v:other-user@10.0.0.1:80"}
"#;
    let report = import(
        storage,
        input,
        ProxyListFormat::Jsonl,
        &http(),
        ImportOptions::default(),
    )
    .await;
    assert_eq!((report.added, report.updated, report.skipped), (2, 0, 2));
    assert_eq!(
        stored(storage).await,
        [
            row("http://10.0.0.1:80", Some("other-user"), None),
            row("http://10.0.0.1:80", Some("third"), Some("CL")),
        ]
    );
}

async fn unknown_pool_is_not_found(storage: &dyn ProxyStorage) {
    let parsed = parse_proxy_list("10.0.0.1:80", ProxyListFormat::Text, &http()).unwrap();
    let err = import_proxies(storage, "no-such-pool", parsed, ImportOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PharoxError::Storage(StorageError::NotFound { entity: "pool", .. })
        ),
        "{err:?}"
    );
}

/// Runs each scenario against a fresh in-memory storage and a fresh
/// PostgreSQL schema.
macro_rules! on_both_storages {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(&pharox::MemoryStorage::new()).await;
                }
            )*
        }
        mod postgres {
            use super::TestSchema;
            $(
                #[tokio::test]
                async fn $scenario() {
                    let schema = TestSchema::create_with(4).await.unwrap();
                    super::$scenario(schema.storage()).await;
                    schema.drop_schema().await.unwrap();
                }
            )*
        }
    };
}

on_both_storages!(
    adds_proxies_from_every_format,
    reimport_updates_in_place_keeping_ids_leases_and_bans,
    reimporting_the_same_list_writes_nothing,
    any_invalid_line_writes_nothing,
    skip_invalid_writes_the_good_lines,
    dry_run_reports_and_writes_nothing,
    duplicates_in_one_input_the_last_line_wins,
    unknown_pool_is_not_found,
);

fn mock_with_pool() -> MockProxyStorage {
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_get_pool_by_name()
        .returning(|name| Ok(ProxyPool::new(name).unwrap()));
    storage
}

#[tokio::test]
async fn rejected_imports_neither_read_the_pool_nor_write() {
    let mut storage = mock_with_pool();
    storage.expect_list_proxies().never();
    storage.expect_add_proxies().never();
    let parsed =
        parse_proxy_list("10.0.0.1:80\n10.0.0.2:0\n", ProxyListFormat::Text, &http()).unwrap();
    let report = import_proxies(&storage, POOL, parsed, ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.invalid.len(), 1);
}

#[tokio::test]
async fn a_dry_run_reads_but_never_writes() {
    let mut storage = mock_with_pool();
    storage
        .expect_list_proxies()
        .times(1)
        .returning(|_| Ok(Vec::new()));
    storage.expect_add_proxies().never();
    let parsed = parse_proxy_list("10.0.0.1:80\n", ProxyListFormat::Text, &http()).unwrap();
    let options = ImportOptions {
        dry_run: true,
        skip_invalid: false,
    };
    let report = import_proxies(&storage, POOL, parsed, options)
        .await
        .unwrap();
    assert_eq!((report.added, report.dry_run), (1, true));
}

#[tokio::test]
async fn everything_is_written_in_one_call_and_storage_errors_pass_through() {
    let mut storage = mock_with_pool();
    storage
        .expect_list_proxies()
        .times(1)
        .returning(|_| Ok(Vec::new()));
    storage
        .expect_add_proxies()
        .times(1)
        .withf(|proxies| proxies.len() == 3)
        .returning(|_| {
            Err(StorageError::Unavailable {
                message: "connection refused".into(),
                source: None,
            })
        });
    let parsed = parse_proxy_list(
        "10.0.0.1:80\n10.0.0.2:80\n10.0.0.3:80\n",
        ProxyListFormat::Text,
        &http(),
    )
    .unwrap();
    let err = import_proxies(&storage, POOL, parsed, ImportOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_bad_pool_name_is_rejected_before_storage() {
    let storage = MockProxyStorage::waiting();
    let err = import_proxies(&storage, " ", Default::default(), ImportOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PharoxError::Invalid(e) if e.field == "pool.name"),
        "{err:?}"
    );
}
