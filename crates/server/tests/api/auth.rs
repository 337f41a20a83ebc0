//! API keys: none, unknown, wrong scope, both header forms, and no secret
//! in any answer an admin can read.

use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, LEASE_KEY, PASSWORD, problem, seed, spawn_app};

#[tokio::test]
async fn no_key_or_an_unknown_key_is_401() {
    let app = spawn_app().await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    for path in ["/v1/pools", "/v1/pools/p/leases"] {
        let none = app.client.post(app.url(path)).send().await.unwrap();
        problem(none, 401, "unauthorized").await;
        let wrong = app
            .post(path, "lease-key-one-0123456780")
            .send()
            .await
            .unwrap();
        problem(wrong, 401, "unauthorized").await;
        let wrong_header = app
            .client
            .post(app.url(path))
            .header("x-api-key", "not-a-key-at-all-000")
            .send()
            .await
            .unwrap();
        problem(wrong_header, 401, "unauthorized").await;
        let basic = app
            .client
            .post(app.url(path))
            .header("authorization", format!("Basic {LEASE_KEY}"))
            .send()
            .await
            .unwrap();
        problem(basic, 401, "unauthorized").await;
    }
    // Nothing was leased by the refused calls.
    app.lease("p", json!({})).await;
}

#[tokio::test]
async fn a_lease_key_cannot_reach_the_admin_endpoints() {
    let app = spawn_app().await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let proxy_id = "0190b0a4-6f9c-7a3e-8b1d-2c4e6f8a0b1c";
    let requests = [
        app.get("/v1/pools", LEASE_KEY),
        app.post("/v1/pools", LEASE_KEY).json(&json!({"name": "q"})),
        app.get("/v1/pools/p", LEASE_KEY),
        app.delete("/v1/pools/p", LEASE_KEY),
        app.get("/v1/pools/p/proxies", LEASE_KEY),
        app.post("/v1/pools/p/proxies", LEASE_KEY)
            .body("10.1.1.1:80"),
        app.get(&format!("/v1/proxies/{proxy_id}"), LEASE_KEY),
        app.patch(&format!("/v1/proxies/{proxy_id}"), LEASE_KEY)
            .json(&json!({"status": "banned"})),
        app.delete(&format!("/v1/proxies/{proxy_id}"), LEASE_KEY),
        app.get(&format!("/v1/proxies/{proxy_id}/health"), LEASE_KEY),
    ];
    for request in requests {
        problem(request.send().await.unwrap(), 403, "forbidden").await;
    }
    // The pool is still there.
    let pools: Value = app
        .get("/v1/pools", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pools["items"][0]["name"], "p");
}

#[tokio::test]
async fn both_header_forms_are_accepted() {
    let app = spawn_app().await;
    seed(app.storage.as_ref(), "p", 2, 1).await;
    let bearer = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);
    let header = app
        .client
        .post(app.url("/v1/pools/p/leases"))
        .header("X-API-Key", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 201);
    let admin = app
        .client
        .get(app.url("/v1/pools"))
        .header("authorization", format!("bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

#[tokio::test]
async fn passwords_and_keys_appear_only_in_lease_responses() {
    let app = spawn_app().await;
    let proxies = seed(app.storage.as_ref(), "p", 2, 1).await;
    let id = proxies[0].id;
    for path in [
        "/v1/pools/p/proxies".to_owned(),
        format!("/v1/proxies/{id}"),
        format!("/v1/proxies/{id}/health"),
        "/v1/pools/p".to_owned(),
        "/v1/pools".to_owned(),
    ] {
        let text = app
            .get(&path, ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains(&id.to_string()) || !path.contains("proxies"),
            "{path}: {text}"
        );
        assert!(!text.contains(PASSWORD), "{path}: {text}");
        assert!(!text.contains(ADMIN_KEY), "{path}: {text}");
    }
    let listed: Value = app
        .get("/v1/pools/p/proxies", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["username"], "u");
    assert_eq!(listed["items"][0]["url"], "http://u@10.0.0.1:8080");
    // A refused key is not echoed back either.
    let refused = app
        .get("/v1/pools", "a-wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    let text = refused.text().await.unwrap();
    assert!(!text.contains("a-wrong-key"), "{text}");
}
