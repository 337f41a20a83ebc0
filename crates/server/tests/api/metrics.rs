//! `GET /metrics` over real HTTP: lease, release, outcome, pool and HTTP
//! series after real requests, route labels that are templates, and a
//! scrape that still answers while the storage fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use pharox::{ProxyPool, ProxyStorage};
use pharox_adapter_memory::MemoryStorage;
use pharox_ports::{MockProxyStorage, StorageError};
use reqwest::Method;
use serde_json::json;

use crate::common::{LEASE_KEY, TestApp, seed, spawn_app, spawn_with};

/// The samples of an exposition, by name and label set.
struct Scrape {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    text: String,
}

impl Scrape {
    /// The sample `name{labels}`, with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }
}

/// Scrapes without a key and parses the text format (label values here
/// hold no escapes).
async fn scrape(app: &TestApp) -> Scrape {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.insert((name.to_owned(), labels), value.parse().unwrap());
    }
    Scrape { samples, text }
}

#[tokio::test]
async fn a_hit_a_miss_a_release_and_an_outcome_show_in_the_series() {
    let app = spawn_app().await;
    seed(app.storage.as_ref(), "m-pool", 1, 1).await;
    let lease = app.lease("m-pool", json!({})).await;
    let lease_id = lease["lease_id"].as_str().unwrap().to_owned();

    let miss = app
        .post("/v1/pools/m-pool/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 409);

    let held = scrape(&app).await;
    let pool = [("pool", "m-pool")];
    assert_eq!(held.value("pharox_pool_active_leases", &pool), 1.0);
    assert_eq!(held.value("pharox_pool_available_proxies", &pool), 0.0);

    let released = app
        .post(&format!("/v1/leases/{lease_id}/release"), LEASE_KEY)
        .json(&json!({"kind": "success", "latency_ms": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);

    let after = scrape(&app).await;
    let acquire = |result| {
        after.value(
            "pharox_acquire_total",
            &[("pool", "m-pool"), ("result", result)],
        )
    };
    assert_eq!(acquire("hit"), 1.0);
    assert_eq!(acquire("miss"), 1.0);
    assert_eq!(acquire("error"), 0.0);
    assert_eq!(
        after.value("pharox_acquire_duration_seconds_count", &pool),
        2.0
    );
    // An in-memory acquire is far below a second.
    assert_eq!(
        after.value(
            "pharox_acquire_duration_seconds_bucket",
            &[("pool", "m-pool"), ("le", "1")]
        ),
        2.0
    );
    assert_eq!(after.value("pharox_release_total", &pool), 1.0);
    assert_eq!(
        after.value("pharox_lease_duration_seconds_count", &pool),
        1.0
    );
    assert_eq!(
        after.value(
            "pharox_lease_duration_seconds_bucket",
            &[("pool", "m-pool"), ("le", "+Inf")]
        ),
        1.0
    );
    let outcome = |kind| {
        after.value(
            "pharox_outcomes_total",
            &[("pool", "m-pool"), ("kind", kind)],
        )
    };
    assert_eq!(outcome("success"), 1.0);
    assert_eq!(outcome("proxy_failure"), 0.0);

    // The pool's gauges, read from the storage at scrape time.
    let proxies = |status| {
        after.value(
            "pharox_pool_proxies",
            &[("pool", "m-pool"), ("status", status)],
        )
    };
    assert_eq!(proxies("active"), 1.0);
    assert_eq!(proxies("inactive"), 0.0);
    assert_eq!(proxies("banned"), 0.0);
    assert_eq!(after.value("pharox_pool_active_leases", &pool), 0.0);
    assert_eq!(after.value("pharox_pool_available_proxies", &pool), 1.0);
    assert_eq!(after.value("pharox_metrics_scrape_errors", &[]), 0.0);

    // HTTP requests by route template and status.
    let http = |method, route, status| {
        after.value(
            "pharox_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", "/v1/pools/{pool}/leases", "201"), 1.0);
    assert_eq!(http("POST", "/v1/pools/{pool}/leases", "409"), 1.0);
    assert_eq!(http("POST", "/v1/leases/{id}/release", "200"), 1.0);
    // The first scrape counted itself.
    assert_eq!(http("GET", "/metrics", "200"), 1.0);
    assert_eq!(
        after.value(
            "pharox_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/pools/{pool}/leases")]
        ),
        2.0
    );
}

#[tokio::test]
async fn route_labels_are_templates_and_methods_are_bounded() {
    let app = spawn_app().await;
    let lease_id = pharox::LeaseId::new().to_string();
    for _ in 0..3 {
        let shown = app
            .get(&format!("/v1/leases/{lease_id}"), LEASE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(shown.status(), 404);
    }
    let unknown = app
        .get(&format!("/v2/things/{lease_id}"), LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let brew = app
        .client
        .request(Method::from_bytes(b"BREW").unwrap(), app.url("/v1/pools"))
        .send()
        .await
        .unwrap();
    assert_eq!(brew.status(), 405);
    // An acquire on a pool that does not exist: a miss (the storage
    // answers "none"), then 404.
    let nowhere = app
        .post("/v1/pools/no-such-pool/leases", LEASE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);

    let after = scrape(&app).await;
    let http = |method, route, status| {
        after.get(
            "pharox_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("GET", "/v1/leases/{id}", "404"), Some(3.0));
    assert_eq!(http("GET", "unmatched", "404"), Some(1.0));
    assert_eq!(http("other", "/v1/pools", "405"), Some(1.0));
    assert_eq!(http("POST", "/v1/pools/{pool}/leases", "404"), Some(1.0));
    assert!(!after.text.contains(&lease_id), "{}", after.text);
    assert!(!after.text.contains("BREW"), "{}", after.text);
    assert_eq!(
        after.get(
            "pharox_acquire_total",
            &[("pool", "no-such-pool"), ("result", "miss")]
        ),
        Some(1.0)
    );
    // No pool exists: no pool gauges.
    assert!(
        !after.text.contains("pharox_pool_proxies{"),
        "{}",
        after.text
    );
}

#[tokio::test]
async fn servers_in_one_process_keep_their_metrics_apart() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    seed(one.storage.as_ref(), "shared-name", 1, 1).await;
    seed(two.storage.as_ref(), "shared-name", 1, 1).await;
    one.lease("shared-name", json!({})).await;
    let labels = [("pool", "shared-name"), ("result", "hit")];
    assert_eq!(
        scrape(&one).await.value("pharox_acquire_total", &labels),
        1.0
    );
    assert_eq!(
        scrape(&two).await.get("pharox_acquire_total", &labels),
        None
    );
}

fn unavailable() -> StorageError {
    StorageError::Unavailable {
        message: "connection refused".into(),
        source: None,
    }
}

#[tokio::test]
async fn a_scrape_answers_while_the_storage_cannot_list_pools() {
    let mut storage = MockProxyStorage::waiting();
    storage.expect_list_pools().returning(|| Err(unavailable()));
    let app = spawn_with(Arc::new(storage), pharox_server::Limits::default()).await;
    let healthz = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);

    let scraped = scrape(&app).await;
    assert_eq!(scraped.value("pharox_metrics_scrape_errors", &[]), 1.0);
    assert_eq!(
        scraped.value(
            "pharox_http_requests_total",
            &[("method", "GET"), ("route", "/healthz"), ("status", "200")]
        ),
        1.0
    );
    assert!(
        !scraped.text.contains("pharox_pool_proxies{"),
        "{}",
        scraped.text
    );
}

#[tokio::test]
async fn a_pool_the_storage_cannot_read_is_left_out_and_the_others_shown() {
    // Real figures for pool "ok", taken from the in-memory storage.
    let real = MemoryStorage::new();
    seed(&real, "ok", 2, 1).await;
    let overview = real.pool_overview("ok").await.unwrap();
    let stats = real.pool_stats("ok").await.unwrap();
    let pools = vec![
        ProxyPool::new("broken").unwrap(),
        ProxyPool::new("ok").unwrap(),
    ];

    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_list_pools()
        .returning(move || Ok(pools.clone()));
    storage
        .expect_pool_overview()
        .returning(move |name| match name {
            "ok" => Ok(overview.clone()),
            _ => Err(unavailable()),
        });
    storage
        .expect_pool_stats()
        .returning(move |_| Ok(stats.clone()));
    let app = spawn_with(Arc::new(storage), pharox_server::Limits::default()).await;

    let scraped = scrape(&app).await;
    assert_eq!(scraped.value("pharox_metrics_scrape_errors", &[]), 1.0);
    assert_eq!(
        scraped.value(
            "pharox_pool_proxies",
            &[("pool", "ok"), ("status", "active")]
        ),
        2.0
    );
    assert_eq!(
        scraped.value("pharox_pool_available_proxies", &[("pool", "ok")]),
        2.0
    );
    assert!(
        !scraped.text.contains("pool=\"broken\""),
        "{}",
        scraped.text
    );
}
