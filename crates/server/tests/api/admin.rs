//! The admin endpoints: pools, proxies, imports, health history and
//! pagination on both storages; the unauthenticated health probes and an
//! unreachable storage (a mock) on the in-memory one.

use std::sync::Arc;

use pharox::{HealthCheckResult, HealthPolicy, ProxyStatus};
use pharox_ports::{MockProxyStorage, StorageError};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::common::{
    ADMIN_KEY, LEASE_KEY, PASSWORD, TestApp, on_both_storages, problem, seed, spawn_app, spawn_with,
};

on_both_storages!(
    pools_are_created_listed_by_page_shown_and_deleted,
    proxies_are_imported_in_each_format_all_or_nothing,
    proxies_are_listed_by_page_shown_switched_and_removed,
    a_proxys_health_history_is_paged_newest_first,
);

async fn pools_are_created_listed_by_page_shown_and_deleted(app: TestApp) {
    for name in ["b", "a", "c"] {
        let created = app
            .post("/v1/pools", ADMIN_KEY)
            .json(&json!({"name": name, "description": "for tests"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let pool: Value = created.json().await.unwrap();
        assert_eq!(pool["name"], name);
        assert_eq!(pool["description"], "for tests");
    }
    let taken = app
        .post("/v1/pools", ADMIN_KEY)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    problem(taken, 409, "conflict").await;
    let blank = app
        .post("/v1/pools", ADMIN_KEY)
        .json(&json!({"name": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(blank, 422, "invalid_request").await["field"],
        "name"
    );

    let first: Value = app
        .get("/v1/pools?limit=2", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["a", "b"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!("/v1/pools?limit=2&cursor={cursor}"), ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&second), ["c"]);
    assert!(second.get("next_cursor").is_none(), "{second}");
    for bad in [
        "/v1/pools?limit=0",
        "/v1/pools?limit=1001",
        "/v1/pools?limit=x",
        "/v1/pools?page=2",
    ] {
        let response = app.get(bad, ADMIN_KEY).send().await.unwrap();
        problem(response, 422, "invalid_request").await;
    }

    seed(app.storage.as_ref(), "p", 3, 1).await;
    app.lease("p", json!({})).await;
    let overview: Value = app
        .get("/v1/pools/p", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["pool"], "p");
    assert_eq!(overview["proxies"], 3);
    assert_eq!(overview["active_leases"], 1);
    assert_eq!(overview["cooling_down"], 0);
    assert_eq!(overview["leased_proxies"], 1);
    assert_eq!(overview["capacity"], 3);
    assert_eq!(overview["by_status"]["active"], 3);
    assert_eq!(overview["by_status"]["banned"], 0);

    let deleted = app.delete("/v1/pools/p", ADMIN_KEY).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    problem(
        app.get("/v1/pools/p", ADMIN_KEY).send().await.unwrap(),
        404,
        "pool_not_found",
    )
    .await;
    problem(
        app.delete("/v1/pools/p", ADMIN_KEY).send().await.unwrap(),
        404,
        "pool_not_found",
    )
    .await;
}

async fn proxies_are_imported_in_each_format_all_or_nothing(app: TestApp) {
    seed(app.storage.as_ref(), "p", 0, 1).await;
    let json_list = json!([
        {"url": "http://u:pw@10.1.0.1:8080", "country": "AR"},
        {"host": "10.1.0.2", "port": 3128, "protocol": "socks5"}
    ]);
    let imported = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .json(&json_list)
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), 200);
    let report: Value = imported.json().await.unwrap();
    assert_eq!(
        (report["added"].as_u64(), report["updated"].as_u64()),
        (Some(2), Some(0))
    );

    let text = app
        .post("/v1/pools/p/proxies?protocol=http", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("# provider list\n10.1.0.3:80\n10.1.0.4:80:user:pass\n")
        .send()
        .await
        .unwrap();
    assert_eq!(text.json::<Value>().await.unwrap()["added"], 2);
    let csv = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .header("content-type", "text/csv; charset=utf-8")
        .body("url,city\nhttp://10.1.0.5:80,Rosario\n")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.json::<Value>().await.unwrap()["added"], 1);
    let dry = app
        .post("/v1/pools/p/proxies?dry_run=true", ADMIN_KEY)
        .header("content-type", "application/x-ndjson")
        .body("{\"url\": \"http://10.1.0.6:80\"}\n")
        .send()
        .await
        .unwrap();
    let dry: Value = dry.json().await.unwrap();
    assert_eq!(
        (dry["added"].as_u64(), dry["dry_run"].as_bool()),
        (Some(1), Some(true))
    );

    // One bad line: nothing written, every bad line named.
    let bad = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("http://10.1.0.7:80\nnot a proxy\nhttp://10.1.0.8:99999\n")
        .send()
        .await
        .unwrap();
    let body = problem(bad, 422, "invalid_lines").await;
    let lines: Vec<u64> = body["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3], "{body}");
    let listed: Value = app
        .get("/v1/pools/p/proxies", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 5, "{listed}");
    // Unless asked to skip them.
    let skipped = app
        .post("/v1/pools/p/proxies?skip_invalid=true", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("http://10.1.0.7:80\nnot a proxy\n")
        .send()
        .await
        .unwrap();
    assert_eq!(skipped.json::<Value>().await.unwrap()["added"], 1);

    let not_a_list = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .json(&json!({"url": "http://10.1.0.9:80"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(not_a_list, 422, "invalid_request").await["field"],
        "json"
    );
    let media = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .header("content-type", "application/xml")
        .body("<proxies/>")
        .send()
        .await
        .unwrap();
    problem(media, 415, "unsupported_media_type").await;
    let unknown = app
        .post("/v1/pools/nope/proxies", ADMIN_KEY)
        .json(&json_list)
        .send()
        .await
        .unwrap();
    problem(unknown, 404, "pool_not_found").await;
    let not_utf8 = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(not_utf8, 422, "invalid_request").await["field"],
        "body"
    );
}

async fn proxies_are_listed_by_page_shown_switched_and_removed(app: TestApp) {
    let proxies = seed(app.storage.as_ref(), "p", 3, 1).await;
    let first: Value = app
        .get("/v1/pools/p/proxies?limit=2", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(
            &format!("/v1/pools/p/proxies?limit=2&cursor={cursor}"),
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut ids: Vec<String> = proxies.iter().map(|p| p.id.to_string()).collect();
    ids.sort();
    assert_eq!(seen, ids);

    let id = proxies[0].id;
    let shown: Value = app
        .get(&format!("/v1/proxies/{id}"), ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["host"], "10.0.0.1");
    assert_eq!(shown["status"], "active");

    // Ban two of three; only the third can be leased.
    for proxy in &proxies[..2] {
        let banned = app
            .patch(&format!("/v1/proxies/{}", proxy.id), ADMIN_KEY)
            .json(&json!({"status": "banned"}))
            .send()
            .await
            .unwrap();
        assert_eq!(banned.json::<Value>().await.unwrap()["status"], "banned");
    }
    let only: Value = app
        .get("/v1/pools/p/proxies?status=active", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    let lease = app.lease("p", json!({})).await;
    assert_eq!(lease["proxy_id"], proxies[2].id.to_string());
    let bad_status = app
        .patch(&format!("/v1/proxies/{id}"), ADMIN_KEY)
        .json(&json!({"status": "great"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(bad_status, 422, "invalid_request").await["field"],
        "status"
    );

    let removed = app
        .delete(&format!("/v1/proxies/{id}"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    problem(
        app.get(&format!("/v1/proxies/{id}"), ADMIN_KEY)
            .send()
            .await
            .unwrap(),
        404,
        "proxy_not_found",
    )
    .await;
    problem(
        app.delete(&format!("/v1/proxies/{id}"), ADMIN_KEY)
            .send()
            .await
            .unwrap(),
        404,
        "proxy_not_found",
    )
    .await;
    let bad_id = app.get("/v1/proxies/123", ADMIN_KEY).send().await.unwrap();
    assert_eq!(
        problem(bad_id, 422, "invalid_request").await["field"],
        "proxy_id"
    );
}

async fn a_proxys_health_history_is_paged_newest_first(app: TestApp) {
    let proxies = seed(app.storage.as_ref(), "p", 1, 1).await;
    let proxy = &proxies[0];
    let start = OffsetDateTime::now_utc() - time::Duration::hours(1);
    for i in 0..3i64 {
        let result = HealthCheckResult {
            proxy_id: proxy.id,
            protocol: proxy.protocol,
            status: ProxyStatus::Active,
            reachable: true,
            latency_ms: Some(10.0 * (i + 1) as f64),
            attempts: 1,
            http_status: Some(204),
            checked_at: start + time::Duration::minutes(i),
            error: None,
        };
        app.storage
            .apply_health_result(&result, &HealthPolicy::default())
            .await
            .unwrap();
    }
    let path = format!("/v1/proxies/{}/health", proxy.id);
    let first: Value = app
        .get(&format!("{path}?limit=2"), ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let latencies = |page: &Value| -> Vec<f64> {
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["latency_ms"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(latencies(&first), [30.0, 20.0]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!("{path}?limit=2&cursor={cursor}"), ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latencies(&second), [10.0]);
    assert!(second.get("next_cursor").is_none());
    let bad = app
        .get(&format!("{path}?cursor=zzz"), ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(bad, 422, "invalid_request").await["field"],
        "cursor"
    );
    let missing = app
        .get(
            "/v1/proxies/0190b0a4-6f9c-7a3e-8b1d-2c4e6f8a0b1c/health",
            ADMIN_KEY,
        )
        .send()
        .await
        .unwrap();
    problem(missing, 404, "proxy_not_found").await;
}

#[tokio::test]
async fn health_probes_need_no_key_and_unknown_routes_are_problems() {
    let app = spawn_app().await;
    let healthz = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.json::<Value>().await.unwrap()["status"], "ok");
    let readyz = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert_eq!(readyz.json::<Value>().await.unwrap()["status"], "ready");
    let unknown = app.get("/v2/anything", LEASE_KEY).send().await.unwrap();
    problem(unknown, 404, "route_not_found").await;
    let wrong_method = app.client.put(app.url("/v1/pools")).send().await.unwrap();
    problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_storage_that_is_down_gives_opaque_503s() {
    let mut storage = MockProxyStorage::waiting();
    storage.expect_get_pool_by_name().returning(|_| {
        Err(StorageError::Unavailable {
            message: format!("connection to db.internal refused (password {PASSWORD})"),
            source: None,
        })
    });
    storage.expect_list_pools().returning(|| {
        Err(StorageError::backend(
            "relation pharox_pools is corrupt",
            std::io::Error::other("disk"),
        ))
    });
    let app = spawn_with(Arc::new(storage), pharox_server::Limits::default()).await;
    let readyz = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body = problem(readyz, 503, "storage_unavailable").await;
    let listed = app.get("/v1/pools", ADMIN_KEY).send().await.unwrap();
    let internal = problem(listed, 500, "internal").await;
    for body in [body, internal] {
        let text = body.to_string();
        assert!(
            !text.contains("db.internal") && !text.contains(PASSWORD),
            "{text}"
        );
        assert!(!text.contains("corrupt"), "{text}");
    }
}
