//! The lease endpoints on both storages: each success and failure.

use std::sync::Arc;

use pharox_server::Limits;
use serde_json::{Value, json};

use crate::common::{
    ADMIN_KEY, LEASE_KEY, LEASE_KEY_2, PASSWORD, TestApp, on_both_storages, problem, seed,
    spawn_with,
};

on_both_storages!(
    a_lease_is_acquired_shown_renewed_reported_and_released,
    an_empty_body_leases_with_the_defaults,
    a_null_body_is_no_body,
    filters_selectors_sessions_and_targets_reach_the_manager,
    nothing_free_is_409_and_an_unknown_pool_404,
    wait_ms_waits_for_a_release_and_gives_up_with_409,
    invalid_lease_requests_are_422_naming_the_field,
    only_the_holder_or_an_admin_acts_on_a_lease,
    a_key_may_use_a_bounded_number_of_consumer_names,
    a_replica_that_did_not_hand_out_a_lease_checks_its_holder_through_the_storage,
    a_lease_gone_with_its_pool_is_not_found_by_the_key_that_held_it,
);

async fn a_lease_is_acquired_shown_renewed_reported_and_released(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;

    let lease = app
        .lease("p", json!({"ttl_seconds": 60, "consumer": "w1"}))
        .await;
    let id = lease["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        lease["proxy_url"],
        format!("http://u:{PASSWORD}@10.0.0.1:8080")
    );
    assert_eq!(lease["protocol"], "http");
    assert_eq!(lease["host"], "10.0.0.1");
    assert_eq!(lease["port"], 8080);
    assert_eq!(lease["country"], "AR");
    assert_eq!(lease["city"], "Rosario");
    assert_eq!(lease["status"], "active");
    assert!(lease["proxy_id"].is_string() && lease["expires_at"].is_string());
    assert!(lease.get("session_moved").is_none(), "{lease}");

    let shown: Value = app
        .get(&format!("/v1/leases/{id}?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["lease_id"], id.as_str());

    let renewed = app
        .post(&format!("/v1/leases/{id}/renew?consumer=w1"), LEASE_KEY)
        .json(&json!({"ttl_seconds": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let renewed: Value = renewed.json().await.unwrap();
    assert!(
        renewed["expires_at"].as_str().unwrap() > lease["expires_at"].as_str().unwrap(),
        "{renewed} vs {lease}"
    );

    let standing = app
        .post(&format!("/v1/leases/{id}/outcomes?consumer=w1"), LEASE_KEY)
        .json(&json!({"kind": "proxy_failure", "failure": "timeout"}))
        .send()
        .await
        .unwrap();
    assert_eq!(standing.status(), 200);
    let standing: Value = standing.json().await.unwrap();
    assert_eq!(standing["proxy_id"], lease["proxy_id"]);
    assert!(
        standing["error_score"].as_f64().unwrap() > 0.0,
        "{standing}"
    );

    let released = app
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY)
        .json(&json!({"kind": "success", "latency_ms": 12.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    let released: Value = released.json().await.unwrap();
    assert_eq!(released["result"], "released");

    // Twice is fine, and says so.
    let again: Value = app
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["result"], "already_released");

    // The proxy is free again.
    app.lease("p", json!({})).await;

    // A released lease can be neither renewed nor reported.
    let renew = app
        .post(&format!("/v1/leases/{id}/renew?consumer=w1"), LEASE_KEY)
        .json(&json!({"ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    problem(renew, 409, "lease_not_active").await;
    let report = app
        .post(&format!("/v1/leases/{id}/outcomes?consumer=w1"), LEASE_KEY)
        .json(&json!({"kind": "success"}))
        .send()
        .await
        .unwrap();
    problem(report, 409, "lease_not_active").await;
    app.stop().await;
}

async fn an_empty_body_leases_with_the_defaults(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let response = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let lease: Value = response.json().await.unwrap();
    // Default consumer: release needs no ?consumer=.
    let id = lease["lease_id"].as_str().unwrap();
    let released = app
        .post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
}

/// The document gives the optional bodies as `null` or an object, so a
/// JSON `null` means "no body" (the schema fuzz sent one and got 422).
async fn a_null_body_is_no_body(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let null_body = |path: String| {
        app.post(&path, LEASE_KEY)
            .header("content-type", "application/json")
            .body(" null ")
    };
    let response = null_body("/v1/pools/p/leases".into()).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let lease: Value = response.json().await.unwrap();
    let id = lease["lease_id"].as_str().unwrap();
    let released = null_body(format!("/v1/leases/{id}/release"))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    // A required body is still required.
    let renew = null_body(format!("/v1/leases/{id}/renew"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(renew, 422, "invalid_request").await["field"],
        "body"
    );
}

async fn filters_selectors_sessions_and_targets_reach_the_manager(app: TestApp) {
    seed(app.storage.as_ref(), "p", 4, 10).await;
    let lease = app
        .lease(
            "p",
            json!({
                "filter": {"country": "DE"},
                "selector": "least_used",
                "session": {"key": "checkout-1", "ttl_seconds": 120},
                "target": "shop.example"
            }),
        )
        .await;
    assert_eq!(lease["country"], "DE");
    assert!(lease["session_moved"].is_boolean(), "{lease}");
    // The same session sticks to its proxy.
    let again = app
        .lease(
            "p",
            json!({"filter": {"country": "DE"}, "session": "checkout-1"}),
        )
        .await;
    assert_eq!(again["proxy_id"], lease["proxy_id"]);
    assert_eq!(again["session_moved"], false);
}

async fn nothing_free_is_409_and_an_unknown_pool_404(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    app.lease("p", json!({})).await;
    let busy = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    let body = problem(busy, 409, "no_proxy_available").await;
    assert!(body["detail"].as_str().unwrap().contains("p"), "{body}");

    let filtered = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .json(&json!({"filter": {"country": "JP"}}))
        .send()
        .await
        .unwrap();
    problem(filtered, 409, "no_proxy_available").await;

    let unknown = app
        .post("/v1/pools/nope/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    problem(unknown, 404, "pool_not_found").await;

    let unknown_lease = app
        .get("/v1/leases/0190b0a4-6f9c-7a3e-8b1d-2c4e6f8a0b1c", LEASE_KEY)
        .send()
        .await
        .unwrap();
    problem(unknown_lease, 404, "lease_not_found").await;
}

async fn wait_ms_waits_for_a_release_and_gives_up_with_409(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let held = app.lease("p", json!({})).await;

    // Nothing comes free: 409 after the wait.
    let gave_up = app
        .post("/v1/pools/p/leases?wait_ms=30", LEASE_KEY)
        .send()
        .await
        .unwrap();
    problem(gave_up, 409, "no_proxy_available").await;

    // A release during the wait lets the waiting request through.
    let waiting = tokio::spawn({
        let request = app.post("/v1/pools/p/leases?wait_ms=20000", LEASE_KEY_2);
        async move { request.send().await.unwrap() }
    });
    let id = held["lease_id"].as_str().unwrap();
    let released = app
        .post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    assert_eq!(waiting.await.unwrap().status(), 201);

    // Longer than the server allows: refused, naming the parameter.
    let too_long = app
        .post("/v1/pools/p/leases?wait_ms=3600000", LEASE_KEY)
        .send()
        .await
        .unwrap();
    let body = problem(too_long, 422, "invalid_request").await;
    assert_eq!(body["field"], "wait_ms");
}

async fn invalid_lease_requests_are_422_naming_the_field(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"ttl_seconds": "soon"}), "ttl_seconds"),
        (json!({"ttl_seconds": 0}), "ttl_seconds"),
        (json!({"ttl_seconds": 100_000_000}), "ttl_seconds"),
        (json!({"consumer": "has space"}), "consumer"),
        (json!({"consumer": "x".repeat(65)}), "consumer"),
        (json!({"selector": "fastest"}), "selector"),
        (json!({"filter": {"cuntry": "AR"}}), "filter"),
        (
            json!({"filter": {"latitude": 91.0, "longitude": 0.0, "radius_km": 5.0}}),
            "filter",
        ),
        (json!({"session": "has space"}), "session"),
        (json!({"target": ""}), "target"),
        (json!({"colour": "red"}), "colour"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let response = app
            .post("/v1/pools/p/leases", LEASE_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = problem(response, 422, "invalid_request").await;
        let named = problem["field"].as_str().unwrap();
        assert!(
            named.starts_with(field),
            "{body}: field {named}, expected {field}: {problem}"
        );
    }
    // Not JSON at all.
    let garbage = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(garbage, 422, "invalid_request").await;
    let wrong_type = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(wrong_type, 415, "unsupported_media_type").await;
    // A bad lease id, a bad outcome, a missing renew body.
    let bad_id = app
        .get("/v1/leases/not-a-uuid", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(bad_id, 422, "invalid_request").await["field"],
        "lease_id"
    );
    let lease = app.lease("p", json!({})).await;
    let id = lease["lease_id"].as_str().unwrap();
    let bad_outcome = app
        .post(&format!("/v1/leases/{id}/outcomes"), LEASE_KEY)
        .json(&json!({"kind": "success", "latency_ms": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(bad_outcome, 422, "invalid_request").await["field"],
        "latency_ms"
    );
    let unknown_kind = app
        .post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
        .json(&json!({"kind": "meh"}))
        .send()
        .await
        .unwrap();
    problem(unknown_kind, 422, "invalid_request").await;
    let no_body = app
        .post(&format!("/v1/leases/{id}/renew"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(no_body, 422, "invalid_request").await["field"],
        "body"
    );
    // The lease survived every refusal.
    let shown = app
        .get(&format!("/v1/leases/{id}"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.json::<Value>().await.unwrap()["status"], "active");
}

async fn only_the_holder_or_an_admin_acts_on_a_lease(app: TestApp) {
    seed(app.storage.as_ref(), "p", 2, 1).await;
    let lease = app.lease("p", json!({"consumer": "w1"})).await;
    let id = lease["lease_id"].as_str().unwrap();

    // Another lease key, even naming the same consumer.
    for path in [
        format!("/v1/leases/{id}/release?consumer=w1"),
        format!("/v1/leases/{id}/outcomes?consumer=w1"),
    ] {
        let response = app
            .post(&path, LEASE_KEY_2)
            .json(&json!({"kind": "success"}))
            .send()
            .await
            .unwrap();
        problem(response, 403, "not_lease_holder").await;
    }
    let renew = app
        .post(&format!("/v1/leases/{id}/renew?consumer=w1"), LEASE_KEY_2)
        .json(&json!({"ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    problem(renew, 403, "not_lease_holder").await;
    let show = app
        .get(&format!("/v1/leases/{id}?consumer=w1"), LEASE_KEY_2)
        .send()
        .await
        .unwrap();
    problem(show, 403, "not_lease_holder").await;
    // The same key under another consumer.
    let other_consumer = app
        .post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    problem(other_consumer, 403, "not_lease_holder").await;
    // Still held after all that.
    let shown: Value = app
        .get(&format!("/v1/leases/{id}?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "active");
    // An admin may release any lease.
    let admin = app
        .post(&format!("/v1/leases/{id}/release"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert_eq!(admin.json::<Value>().await.unwrap()["result"], "released");
}

async fn a_key_may_use_a_bounded_number_of_consumer_names(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let limit = pharox_server::state::MAX_CONSUMERS_PER_KEY;
    // Each new name counts, whatever became of the request (here: an
    // exhausted pool after the first).
    for i in 0..limit {
        let response = app
            .post("/v1/pools/p/leases", LEASE_KEY)
            .json(&json!({"consumer": format!("c{i}")}))
            .send()
            .await
            .unwrap();
        assert!(matches!(response.status().as_u16(), 201 | 409), "{i}");
    }
    let over = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .json(&json!({"consumer": "one-more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(over, 422, "invalid_request").await["field"],
        "consumer"
    );
    // A name already in use still works, and other keys have their own budget.
    let known = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .json(&json!({"consumer": "c3"}))
        .send()
        .await
        .unwrap();
    problem(known, 409, "no_proxy_available").await;
    let other_key = app
        .post("/v1/pools/p/leases", LEASE_KEY_2)
        .json(&json!({"consumer": "one-more"}))
        .send()
        .await
        .unwrap();
    problem(other_key, 409, "no_proxy_available").await;
}

async fn a_replica_that_did_not_hand_out_a_lease_checks_its_holder_through_the_storage(
    made_here: TestApp,
) {
    seed(made_here.storage.as_ref(), "p", 2, 1).await;
    let other = spawn_with(Arc::clone(&made_here.storage), Limits::default()).await;
    let lease = made_here.lease("p", json!({"consumer": "w1"})).await;
    let id = lease["lease_id"].as_str().unwrap();

    let wrong_key = other
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY_2)
        .send()
        .await
        .unwrap();
    problem(wrong_key, 403, "not_lease_holder").await;
    let wrong_consumer = other
        .post(&format!("/v1/leases/{id}/outcomes"), LEASE_KEY)
        .json(&json!({"kind": "success"}))
        .send()
        .await
        .unwrap();
    problem(wrong_consumer, 403, "not_lease_holder").await;
    let released: Value = other
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released["result"], "released");
    // The replica that made it still knows its holder, and the storage
    // that it is over.
    let again: Value = made_here
        .post(&format!("/v1/leases/{id}/release?consumer=w1"), LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["result"], "already_released");
}

async fn a_lease_gone_with_its_pool_is_not_found_by_the_key_that_held_it(app: TestApp) {
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let lease = app.lease("p", json!({})).await;
    let id = lease["lease_id"].as_str().unwrap();
    let deleted = app.delete("/v1/pools/p", ADMIN_KEY).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let release = app
        .post(&format!("/v1/leases/{id}/release"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    problem(release, 404, "lease_not_found").await;
    let report = app
        .post(&format!("/v1/leases/{id}/outcomes"), LEASE_KEY)
        .json(&json!({"kind": "success"}))
        .send()
        .await
        .unwrap();
    problem(report, 404, "lease_not_found").await;
}
