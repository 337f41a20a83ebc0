//! `PostgresStorage::connect` against real sockets on 127.0.0.1: a closed
//! port fails at once with "connection refused", a listener that never
//! answers fails after `connect_timeout` (not `acquire_timeout`), and a
//! server that turns the login down says why in plain words. None of the
//! messages shows the password or the user name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::Duration;

use pharox_adapter_postgres::testing::test_database_url;
use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
use pharox_ports::StorageError;

/// Far longer than any test may take: a test that waits for one of these
/// has failed.
const LONG: Duration = Duration::from_secs(120);

/// Only a guard against a hang: every connect here must end well before.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on: bound, read and released again.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Connects, failing the test if that takes longer than [`HANG_GUARD`].
async fn connect_err(config: &PostgresConfig) -> StorageError {
    match tokio::time::timeout(HANG_GUARD, PostgresStorage::connect(config)).await {
        Ok(Ok(_)) => panic!("connected to {config}, which should have failed"),
        Ok(Err(e)) => e,
        Err(_) => panic!("connecting to {config} still waited after {HANG_GUARD:?}"),
    }
}

/// The test server's settings, from `PHAROX_TEST_DATABASE_URL`.
fn test_server_config() -> PostgresConfig {
    let url = test_database_url();
    PostgresConfig::from_dsn(&url).unwrap_or_else(|e| {
        panic!("PHAROX_TEST_DATABASE_URL must be a postgres:// URL of the test server: {e}")
    })
}

#[tokio::test]
async fn a_refused_port_fails_at_once_and_says_connection_refused() {
    let port = closed_port();
    let mut config = PostgresConfig::from_dsn(&format!(
        "postgres://pharox_user:Very-S3cret-pw@127.0.0.1:{port}/pharox"
    ))
    .unwrap();
    // Before the direct first connection, sqlx's pool retried the refused
    // connection until these ran out and then said only "pool timed out".
    config.connect_timeout = LONG;
    config.acquire_timeout = LONG;
    let err = connect_err(&config).await;
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let shown = err.to_string();
    assert!(shown.contains("connection refused"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    let all = format!("{err} {err:?}");
    assert!(!all.contains("Very-S3cret-pw"), "{all}");
    assert!(!all.contains("pharox_user"), "{all}");
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out_after_connect_timeout() {
    // Accepted by the kernel's backlog, never answered: the start-up
    // handshake waits for a reply that does not come.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = PostgresConfig::new("127.0.0.1", "pharox", "pharox_user");
    config.port = port;
    config.connect_timeout = Duration::from_millis(500);
    config.acquire_timeout = LONG;
    let err = connect_err(&config).await;
    drop(listener);
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("timed out"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
}

#[tokio::test]
async fn a_missing_database_is_named() {
    let mut config = test_server_config();
    let missing = format!("pharox_no_such_db_{}", uuid::Uuid::new_v4().simple());
    config.database.clone_from(&missing);
    config.acquire_timeout = LONG;
    let err = connect_err(&config).await;
    assert!(matches!(err, StorageError::Backend { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("database \"{missing}\" does not exist")),
        "{shown}"
    );
}

#[tokio::test]
async fn a_refused_login_says_so_without_the_user_name() {
    let mut config = test_server_config();
    // No such role, so the login fails under any authentication method.
    config.user = "pharox_no_such_role_q7".to_owned();
    config.password = Some("Not-The-Password-q7".to_owned());
    config.acquire_timeout = LONG;
    let err = connect_err(&config).await;
    assert!(matches!(err, StorageError::Backend { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("refused the login") || shown.contains("password authentication failed"),
        "{shown}"
    );
    assert!(!shown.contains("pharox_no_such_role_q7"), "{shown}");
    assert!(
        !format!("{err:?}").contains("Not-The-Password-q7"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reachable_server_still_connects() {
    let config = test_server_config().with_max_connections(1);
    let storage = tokio::time::timeout(HANG_GUARD, PostgresStorage::connect(&config))
        .await
        .expect("connecting to the test server hung")
        .unwrap_or_else(|e| {
            panic!(
                "the PostgreSQL tests need a server: set PHAROX_TEST_DATABASE_URL \
                 (postgres://user:pass@host:5432/db) or run one on 127.0.0.1:5432: {e}"
            )
        });
    let one: i32 = sea_orm::sqlx::query_scalar("SELECT 1")
        .fetch_one(storage.pg_pool())
        .await
        .unwrap();
    assert_eq!(one, 1);
    storage.close().await;
}
