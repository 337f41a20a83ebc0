//! Keys in storage (`pharox apikey`) on the real PostgreSQL server: a
//! created key works at once, the wrong scope is 403, a revoked or unknown
//! key 401; revoking through the server's own `ApiKeyAdmin` takes effect at
//! once even with a cache, revoking elsewhere within the cache time; a
//! storage that cannot answer is 503, without the key in the answer.

use std::sync::Arc;
use std::time::Duration;

use pharox::{ApiKeyAdmin, ApiKeyScope, ProxyManager, ProxyStorage};
use pharox_adapter_memory::MemoryStorage;
use pharox_adapter_postgres::testing::TestSchema;
use pharox_ports::{MockApiKeyStore, StorageError};
use pharox_server::{AppState, Limits};

use crate::common::{ADMIN_KEY, LEASE_KEY, TestApp, problem, seed, spawn_state, static_keys};

/// A server on a fresh schema accepting its stored keys through `admin`'s
/// cache of `cache`; returns it with `admin` and a second admin (another
/// replica) on the same schema with no cache.
async fn spawn_on_postgres(cache: Duration) -> (TestApp, Arc<ApiKeyAdmin>, ApiKeyAdmin) {
    let schema = TestSchema::create_with(4).await.unwrap();
    let storage = Arc::new(schema.storage().clone());
    let admin = Arc::new(ApiKeyAdmin::new(storage.clone()).with_cache_ttl(cache));
    let elsewhere = ApiKeyAdmin::new(storage.clone()).with_cache_ttl(Duration::ZERO);
    let manager = Arc::new(ProxyManager::from_arc(storage.clone()));
    let state = AppState::with_stored_keys(
        manager,
        static_keys(),
        Arc::clone(&admin),
        Limits::default(),
    );
    let app = spawn_state(storage as Arc<dyn ProxyStorage>, state, None).await;
    seed(app.storage.as_ref(), "p", 2, 10).await;
    (app, admin, elsewhere)
}

#[tokio::test]
async fn stored_keys_work_with_their_scope_until_revoked() {
    let (app, _, elsewhere) = spawn_on_postgres(Duration::ZERO).await;
    let lease = elsewhere
        .create(ApiKeyScope::Lease, Some("worker"))
        .await
        .unwrap();
    let admin = elsewhere.create(ApiKeyScope::Admin, None).await.unwrap();
    let (lease_key, admin_key) = (lease.key.expose(), admin.key.expose());

    let leased = app
        .post("/v1/pools/p/leases", lease_key)
        .send()
        .await
        .unwrap();
    assert_eq!(leased.status(), 201);
    let lease_json: serde_json::Value = leased.json().await.unwrap();
    let id = lease_json["lease_id"].as_str().unwrap();
    // The lease belongs to the stored key: another key may not release it.
    problem(
        app.post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
            .send()
            .await
            .unwrap(),
        403,
        "not_lease_holder",
    )
    .await;
    assert_eq!(
        app.post(&format!("/v1/leases/{id}/release"), lease_key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.get("/v1/pools", admin_key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    problem(
        app.get("/v1/pools", lease_key).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let unknown = format!("phx_{}", "0".repeat(64));
    let body = problem(
        app.post("/v1/pools/p/leases", &unknown)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert!(!body.to_string().contains(&unknown), "{body}");
    // The static keys still work beside the stored ones.
    assert_eq!(
        app.get("/v1/pools", ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    elsewhere.revoke("worker").await.unwrap();
    let body = problem(
        app.post("/v1/pools/p/leases", lease_key)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert!(!body.to_string().contains(lease_key), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn revoking_through_the_server_is_at_once_and_elsewhere_within_the_cache_time() {
    let (app, admin, elsewhere) = spawn_on_postgres(Duration::from_secs(600)).await;
    let here = elsewhere
        .create(ApiKeyScope::Lease, Some("here"))
        .await
        .unwrap();
    let there = elsewhere
        .create(ApiKeyScope::Lease, Some("there"))
        .await
        .unwrap();
    for key in [&here.key, &there.key] {
        assert_eq!(
            app.post("/v1/pools/p/leases", key.expose())
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    // Through the server's own admin: refused at once despite the cache.
    admin.revoke("here").await.unwrap();
    problem(
        app.post("/v1/pools/p/leases", here.key.expose())
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // By another process: the cached key is still trusted until the cache
    // time ends (documented), here 600 s.
    elsewhere.revoke("there").await.unwrap();
    assert_eq!(
        app.post("/v1/pools/p/leases", there.key.expose())
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_store_that_cannot_answer_is_503_without_the_key() {
    let mut store = MockApiKeyStore::new();
    store.expect_find_active_api_key().returning(|_| {
        Err(StorageError::Unavailable {
            message: "connection refused".into(),
            source: None,
        })
    });
    let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
    let admin = Arc::new(ApiKeyAdmin::new(Arc::new(store)));
    let manager = Arc::new(ProxyManager::from_arc(Arc::clone(&storage)));
    let state = AppState::with_stored_keys(manager, static_keys(), admin, Limits::default());
    let app = spawn_state(storage, state, None).await;
    let presented = "phx_not-a-static-key-0123456789";
    let body = problem(
        app.get("/v1/pools", presented).send().await.unwrap(),
        503,
        "storage_unavailable",
    )
    .await;
    assert!(!body.to_string().contains(presented), "{body}");
    // Static keys do not need the store.
    assert_eq!(
        app.get("/v1/pools", ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}
