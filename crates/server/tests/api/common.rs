//! What the API tests share: [`spawn_app`], the keys, pool fixtures and
//! checks of problem documents.

use std::net::SocketAddr;
use std::sync::Arc;

use pharox::Proxy;
use pharox::{HealthOrchestrator, HealthProbe, ProxyManager, ProxyPool, ProxyStorage};
use pharox_adapter_memory::{MemoryStorage, MemoryTaskLocks};
use pharox_server::Limits;
use pharox_server::{ApiKeys, AppState, HealthSweeps, ServerMetrics};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const LEASE_KEY: &str = "lease-key-one-0123456789";
pub const LEASE_KEY_2: &str = "lease-key-two-0123456789";
pub const ADMIN_KEY: &str = "admin-key-000-0123456789";
pub const PASSWORD: &str = "s3cret-pw";

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub client: Client,
    pub storage: Arc<dyn ProxyStorage>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn get(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn post(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key)
    }

    pub fn delete(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(key)
    }

    pub fn patch(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.patch(self.url(path)).bearer_auth(key)
    }

    /// Acquires from `pool` with the lease key and `body`; the lease JSON.
    pub async fn lease(&self, pool: &str, body: Value) -> Value {
        let response = self
            .post(&format!("/v1/pools/{pool}/leases"), LEASE_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// Stops accepting, waits for requests in flight, and returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// A server over a fresh in-memory storage with the default limits.
pub async fn spawn_app() -> TestApp {
    spawn_with(Arc::new(MemoryStorage::new()), Limits::default()).await
}

/// A server over `storage` within `limits`, on 127.0.0.1 port 0.
pub async fn spawn_with(storage: Arc<dyn ProxyStorage>, limits: Limits) -> TestApp {
    let metrics = ServerMetrics::new();
    let manager =
        Arc::new(ProxyManager::from_arc(Arc::clone(&storage)).with_observer(metrics.observer()));
    let state = AppState::new(manager, static_keys(), limits).with_metrics(metrics);
    spawn_state(storage, state, None).await
}

/// A server over a fresh, migrated PostgreSQL schema (from
/// `PHAROX_TEST_DATABASE_URL`), within the default limits.
pub async fn spawn_on_postgres() -> TestApp {
    let schema = pharox_adapter_postgres::testing::TestSchema::create_with(4)
        .await
        .unwrap();
    spawn_with(Arc::new(schema.storage().clone()), Limits::default()).await
}

/// A server as `pharox serve` builds it, health sweeps included (in-process
/// locks), checking proxies with `probe`.
pub async fn spawn_with_sweeps(
    storage: Arc<dyn ProxyStorage>,
    limits: Limits,
    probe: Arc<dyn HealthProbe>,
) -> TestApp {
    let metrics = ServerMetrics::new();
    let orchestrator = HealthOrchestrator::builder(Arc::clone(&storage), probe)
        .observer(metrics.observer())
        .build()
        .unwrap();
    let manager =
        Arc::new(ProxyManager::from_arc(Arc::clone(&storage)).with_observer(metrics.observer()));
    let state = AppState::new(manager, static_keys(), limits)
        .with_metrics(metrics)
        .with_health_sweeps(HealthSweeps::new(
            orchestrator,
            Arc::new(MemoryTaskLocks::new()),
            "the API tests",
        ));
    spawn_state(storage, state, None).await
}

/// The test's static keys: [`LEASE_KEY`], [`LEASE_KEY_2`], [`ADMIN_KEY`].
pub fn static_keys() -> ApiKeys {
    ApiKeys::parse(&format!(
        "lease:{LEASE_KEY},lease:{LEASE_KEY_2},admin:{ADMIN_KEY}"
    ))
    .unwrap()
}

/// A server with `state` (over `storage`) on 127.0.0.1 port 0, over TLS
/// when given a configuration and a client that trusts it.
pub async fn spawn_state(
    storage: Arc<dyn ProxyStorage>,
    state: AppState,
    tls: Option<(Arc<rustls::ServerConfig>, Client)>,
) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let stopped = async move {
        let _ = rx.await;
    };
    let (scheme, client, server) = match tls {
        Some((config, client)) => (
            "https",
            client,
            tokio::spawn(pharox_server::serve_tls(listener, state, config, stopped)),
        ),
        None => (
            "http",
            client(),
            tokio::spawn(pharox_server::serve(listener, state, stopped)),
        ),
    };
    TestApp {
        addr,
        scheme,
        client,
        storage,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A plain-HTTP client. reqwest is built without a default TLS provider
/// (one provider, ring, for the workspace), so it is handed ring's.
pub fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().no_proxy().build().unwrap()
}

/// Creates `pool` with `count` proxies `10.0.0.N:8080` (user `u`,
/// password [`PASSWORD`]), each taking `max_concurrency` leases.
pub async fn seed(
    storage: &dyn ProxyStorage,
    pool: &str,
    count: usize,
    max_concurrency: u32,
) -> Vec<Proxy> {
    let pool = storage
        .save_pool(&ProxyPool::new(pool).unwrap())
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for i in 0..count {
        let proxy = Proxy::from_url(
            pool.id,
            &format!("http://u:{PASSWORD}@10.0.0.{}:8080", i + 1),
        )
        .unwrap()
        .country(if i % 2 == 0 { "AR" } else { "DE" })
        .city(if i % 2 == 0 { "Rosario" } else { "Berlin" })
        .max_concurrency(max_concurrency)
        .build()
        .unwrap();
        proxies.push(storage.save_proxy(&proxy).await.unwrap());
    }
    proxies
}

/// Checks a problem response's status, content type and code; returns it.
pub async fn problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["type"], format!("urn:pharox:problem:{code}"), "{body}");
    body
}

/// Each scenario, once on the in-memory storage and once on a fresh
/// PostgreSQL schema.
macro_rules! on_both_storages_ {
    ($($scenario:ident),* $(,)?) => {
        mod in_memory {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(crate::common::spawn_app().await).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(crate::common::spawn_on_postgres().await).await;
            })*
        }
    };
}

pub(crate) use on_both_storages_ as on_both_storages;
