//! Connections that die under the adapter: a dead kept connection costs one
//! retry inside the call, not an error, for acquire and for release.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use pharox_adapter_postgres::PostgresStorage;
use pharox_domain::{Proxy, ProxyPool, ProxyProtocol};
use pharox_ports::{AcquireRequest, ProxyStorage};
use sea_orm::sqlx;

/// Terminates every server process of connections named `application`;
/// returns how many.
async fn terminate(admin: &PostgresStorage, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(application)
    .fetch_one(admin.pg_pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn dead_kept_connections_cost_one_retry_not_an_error() {
    let schema = common::schema().await;
    let pool = schema
        .storage()
        .save_pool(&ProxyPool::new("dead").unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (1..=4)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.7.0.{i}"), 8080, ProxyProtocol::Http)
                .build()
                .unwrap()
        })
        .collect();
    schema.storage().add_proxies(&proxies).await.unwrap();
    // Only this test's connections are terminated: tests share the server.
    let application = format!("pharox-dead-{}", uuid::Uuid::new_v4().simple());
    let mut config = schema.config().clone().with_max_connections(8);
    config.application_name = Some(application.clone());
    let storage = PostgresStorage::connect(&config).await.unwrap();
    let consumer = storage.ensure_consumer("w").await.unwrap();
    let request = AcquireRequest::new("dead", consumer, Duration::from_secs(60));

    // Four calls at once leave four kept connections.
    let leases = futures_join(&storage, &request).await;
    for lease in &leases {
        storage.release(lease.id).await.unwrap();
    }
    assert!(
        storage.kept_connections() >= 2,
        "{}",
        storage.kept_connections()
    );

    assert!(terminate(schema.storage(), &application).await >= 2);
    let lease = storage
        .acquire(&request)
        .await
        .expect("a dead kept connection costs a retry, not an error")
        .expect("a free proxy");
    assert_eq!(
        storage.kept_connections(),
        1,
        "the dead ones were dropped, the working one kept"
    );

    assert!(terminate(schema.storage(), &application).await >= 1);
    assert!(
        storage
            .release(lease.id)
            .await
            .expect("release tries again on a fresh connection")
            .was_released()
    );
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM lease WHERE status = 'active'")
        .fetch_one(schema.storage().pg_pool())
        .await
        .unwrap();
    assert_eq!(active, 0);
    assert_eq!(storage.unresolved_leases(), 0);
    storage.close().await;
    schema.drop_schema().await.unwrap();
}

/// Four acquires at once (so four connections are checked out together).
async fn futures_join(
    storage: &PostgresStorage,
    request: &AcquireRequest,
) -> Vec<pharox_domain::Lease> {
    let (a, b, c, d) = tokio::join!(
        storage.acquire(request),
        storage.acquire(request),
        storage.acquire(request),
        storage.acquire(request)
    );
    [a, b, c, d]
        .into_iter()
        .map(|l| l.unwrap().expect("a free proxy"))
        .collect()
}
