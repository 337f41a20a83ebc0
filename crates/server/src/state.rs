//! [`AppState`]: what every handler shares (the manager, the operator use
//! cases, the static and stored API keys, the limits, the metrics), and the
//! bounded per-key consumer names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use pharox::api_keys::KeyRing;
use pharox::{ApiKeyAdmin, ConsumerId, Operator, ProxyManager};

use crate::auth::{ApiKeys, Caller};
use crate::config::Limits;
use crate::error::ApiError;
use crate::held::HeldLeases;
use crate::metrics::ServerMetrics;
use crate::routes::sweeps::HealthSweeps;

/// Consumer name used when a lease request names none.
pub const DEFAULT_CLIENT_CONSUMER: &str = "default";
/// Longest consumer name a client may choose.
pub const MAX_CONSUMER_CHARS: usize = 64;
/// Distinct consumer names one API key may use (per server process).
pub const MAX_CONSUMERS_PER_KEY: usize = 256;

/// The state handlers share; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    metrics: ServerMetrics,
}

#[derive(Debug)]
struct Inner {
    manager: Arc<ProxyManager>,
    operator: Operator,
    keys: KeyRing,
    limits: Limits,
    consumers: Mutex<HashMap<String, HashSet<String>>>,
    held_leases: HeldLeases,
    health_sweeps: OnceLock<HealthSweeps>,
}

impl AppState {
    /// State over `manager` (whose storage the operator use cases share),
    /// accepting `keys`, within `limits`.
    #[must_use]
    pub fn new(manager: Arc<ProxyManager>, keys: ApiKeys, limits: Limits) -> Self {
        Self::build(manager, keys, None, limits)
    }

    /// As [`new`](Self::new), also accepting the keys in storage that
    /// `stored_keys` finds (`pharox apikey create`), cached as it says.
    #[must_use]
    pub fn with_stored_keys(
        manager: Arc<ProxyManager>,
        keys: ApiKeys,
        stored_keys: Arc<ApiKeyAdmin>,
        limits: Limits,
    ) -> Self {
        Self::build(manager, keys, Some(stored_keys), limits)
    }

    fn build(
        manager: Arc<ProxyManager>,
        keys: ApiKeys,
        stored_keys: Option<Arc<ApiKeyAdmin>>,
        limits: Limits,
    ) -> Self {
        let operator = Operator::new(Arc::clone(manager.storage()));
        Self {
            inner: Arc::new(Inner {
                manager,
                operator,
                keys: KeyRing::new(keys, stored_keys),
                limits,
                consumers: Mutex::new(HashMap::new()),
                held_leases: HeldLeases::default(),
                health_sweeps: OnceLock::new(),
            }),
            metrics: ServerMetrics::new(),
        }
    }

    /// Lets `POST /v1/pools/{pool}/health-sweeps` run sweeps (without it,
    /// the endpoint answers 501 `not_configured`). Set once: a second call
    /// is ignored.
    #[must_use]
    pub fn with_health_sweeps(self, sweeps: HealthSweeps) -> Self {
        let _ = self.inner.health_sweeps.set(sweeps);
        self
    }

    /// The health sweeps, when configured.
    #[must_use]
    pub fn health_sweeps(&self) -> Option<&HealthSweeps> {
        self.inner.health_sweeps.get()
    }

    /// Stops what the server runs in the background (health sweeps started
    /// through the API) and waits for it; call it after [`serve`](crate::serve)
    /// returns.
    pub async fn shutdown(&self) {
        if let Some(sweeps) = self.health_sweeps() {
            sweeps.stop().await;
        }
    }

    /// Serves `metrics` on `GET /metrics` (by default a fresh registry
    /// with HTTP metrics only: lease metrics need its observer on the
    /// manager, see [`ServerMetrics`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: ServerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics registry.
    #[must_use]
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// The lease manager.
    #[must_use]
    pub fn manager(&self) -> &ProxyManager {
        &self.inner.manager
    }

    /// The operator use cases (pools, proxies).
    #[must_use]
    pub fn operator(&self) -> &Operator {
        &self.inner.operator
    }

    /// The static API keys (from the key file and `PHAROX_API_KEYS`).
    #[must_use]
    pub fn keys(&self) -> &ApiKeys {
        self.inner.keys.listed()
    }

    /// Every key accepted: the static ones, then the stored ones.
    #[must_use]
    pub fn key_ring(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The keys in storage, when the server has them.
    #[must_use]
    pub fn stored_keys(&self) -> Option<&ApiKeyAdmin> {
        self.inner.keys.stored()
    }

    /// The holders of the leases this server handed out.
    #[must_use]
    pub fn held_leases(&self) -> &HeldLeases {
        &self.inner.held_leases
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The storage consumer name for a client's consumer under the caller's
    /// key: `<key id>:<consumer>`. Client names are 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ -`, and one key may use at most 256 of them, so no
    /// client grows the consumer table (or the manager's cache) without
    /// bound. Every replica derives the same name for the same key.
    pub fn consumer_name(&self, caller: &Caller, client: Option<&str>) -> Result<String, ApiError> {
        let client = client.unwrap_or(DEFAULT_CLIENT_CONSUMER);
        validate_client_consumer(client)?;
        let mut seen = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = seen.entry(caller.key_id.clone()).or_default();
        if !names.contains(client) {
            if names.len() >= MAX_CONSUMERS_PER_KEY {
                return Err(ApiError::invalid(
                    "consumer",
                    "this API key already uses 256 consumer names; reuse one",
                ));
            }
            names.insert(client.to_owned());
        }
        Ok(format!("{}:{client}", caller.key_id))
    }

    /// The id of the consumer a caller acts as (see [`consumer_name`](Self::consumer_name)).
    pub async fn consumer_id(
        &self,
        caller: &Caller,
        client: Option<&str>,
    ) -> Result<ConsumerId, ApiError> {
        let name = self.consumer_name(caller, client)?;
        Ok(self.manager().consumer_id(&name).await?)
    }
}

/// Checks a client-chosen consumer name.
pub fn validate_client_consumer(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_CONSUMER_CHARS {
        return Err(ApiError::invalid("consumer", "must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ApiError::invalid(
            "consumer",
            "may contain only A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    Ok(())
}
