//! The lease endpoints on the real PostgreSQL server (a fresh schema per
//! test, from `PHAROX_TEST_DATABASE_URL`).

use std::sync::Arc;

use pharox_adapter_postgres::testing::TestSchema;
use pharox_server::Limits;
use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, LEASE_KEY, LEASE_KEY_2, PASSWORD, problem, seed, spawn_with};

#[tokio::test]
async fn leases_over_http_on_postgres() {
    let schema = TestSchema::create_with(4).await.unwrap();
    let app = spawn_with(Arc::new(schema.storage().clone()), Limits::default()).await;
    seed(app.storage.as_ref(), "p", 1, 1).await;

    let lease = app
        .lease("p", json!({"consumer": "w1", "ttl_seconds": 60}))
        .await;
    assert_eq!(
        lease["proxy_url"],
        format!("http://u:{PASSWORD}@10.0.0.1:8080")
    );
    let id = lease["lease_id"].as_str().unwrap().to_owned();

    problem(
        app.post("/v1/pools/p/leases", LEASE_KEY)
            .send()
            .await
            .unwrap(),
        409,
        "no_proxy_available",
    )
    .await;
    problem(
        app.post("/v1/pools/q/leases", LEASE_KEY)
            .send()
            .await
            .unwrap(),
        404,
        "pool_not_found",
    )
    .await;
    let invalid = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .json(&json!({"ttl_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(invalid, 422, "invalid_request").await["field"],
        "ttl_seconds"
    );

    let renewed = app
        .post(&format!("/v1/leases/{id}/renew?consumer=w1"), LEASE_KEY)
        .json(&json!({"ttl_seconds": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let reported = app
        .post(&format!("/v1/leases/{id}/outcomes?consumer=w1"), LEASE_KEY)
        .json(&json!({"kind": "blocked", "target": "shop.example", "http_status": 429}))
        .send()
        .await
        .unwrap();
    assert_eq!(reported.status(), 200);

    // The consumer's id comes from the database: another key is refused.
    let stolen = app
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY_2)
        .send()
        .await
        .unwrap();
    problem(stolen, 403, "not_lease_holder").await;

    let shown: Value = app
        .get(&format!("/v1/leases/{id}?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "active");
    let released: Value = app
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY)
        .json(&json!({"kind": "success"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released["result"], "released");
    let renew_after = app
        .post(&format!("/v1/leases/{id}/renew?consumer=w1"), LEASE_KEY)
        .json(&json!({"ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    problem(renew_after, 409, "lease_not_active").await;

    // The proxy is free again; waiting for it works on PostgreSQL too.
    let again = app.lease("p", json!({})).await;
    let waiting = tokio::spawn({
        let request = app.post("/v1/pools/p/leases?wait_ms=20000", LEASE_KEY_2);
        async move { request.send().await.unwrap() }
    });
    let again_id = again["lease_id"].as_str().unwrap();
    let admin_release = app
        .post(&format!("/v1/leases/{again_id}/release"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(admin_release.status(), 200);
    assert_eq!(waiting.await.unwrap().status(), 201);

    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
    schema.drop_schema().await.unwrap();
}
