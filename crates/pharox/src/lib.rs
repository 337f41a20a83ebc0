//! pharox: lease proxies from named pools to workers, safely and fast.
//!
//! This is the crate applications depend on. It holds the application layer
//! ([`ProxyManager`] for leasing, [`HealthOrchestrator`] for health checks,
//! [`import_proxies`] for loading proxy lists) and re-exports the domain
//! types, the ports and, behind cargo features, the adapters (see
//! [Features](#features)).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pharox::{LeaseRequest, MemoryStorage, Proxy, ProxyFilter, ProxyManager, ProxyPool, ProxyStorage, Selector};
//!
//! let storage = MemoryStorage::new();
//! let pool = storage.save_pool(&ProxyPool::new("latam")?).await?;
//! let proxy = Proxy::from_url(pool.id, "http://user:secret@186.33.123.10:8080")?
//!     .country("AR")
//!     .build()?;
//! storage.save_proxy(&proxy).await?;
//!
//! let manager = ProxyManager::new(storage);
//! let request = LeaseRequest::new("latam")
//!     .filter(ProxyFilter::new().country("AR"))
//!     .selector(Selector::LeastUsed);
//! let answer = manager
//!     .with_lease(request, |lease| async move {
//!         // hand lease.proxy.connect_url() to your HTTP client here
//!         Ok::<_, std::io::Error>(lease.proxy.port)
//!     })
//!     .await?;
//! assert_eq!(answer, 8080);
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`MemoryStorage`] and `MemoryTaskLocks`, the in-memory adapter |
//! | `postgres` | no | `pharox::postgres`, the PostgreSQL adapter (SeaORM) |
//! | `http-probe` | no | `pharox::http_probe`, the HTTP/HTTPS/SOCKS health probe (reqwest) |
//! | `metrics` | no | `pharox::metrics` and `MetricsObserver`: lease and health metrics through the `metrics` facade, named for Prometheus |
//!
//! An application writes `pharox = "0.1"` (or with
//! `features = ["postgres", "http-probe"]`) in its `[dependencies]`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod api_keys;
mod error;
pub mod health;
mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
mod operator;
mod pool_names;
mod release;
pub mod upkeep;

pub use admin::{ImportOptions, import_proxies};
pub use api_keys::{ApiKeyAdmin, ApiKeySecret, CreatedApiKey};
pub use error::{PharoxError, WithLeaseError};
pub use health::{
    HealthCheck, HealthOrchestrator, HealthOrchestratorBuilder, SimulatedProbe, Sweep, SweepSummary,
};
pub use manager::{
    DEFAULT_CONSUMER, DEFAULT_TTL, LeaseRequest, ManagerConfig, PreparedRequest, ProxyManager,
    default_release_retry,
};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::MetricsObserver;
pub use observe::{
    AcquireErrorEvent, AcquireEvent, HealthCheckEvent, HealthObserver, LeaseObserver, OutcomeEvent,
    ReleaseEvent,
};
pub use operator::{CLOSE_NAME_DISTANCE, Operator, close_names, edit_distance};
pub use upkeep::{Upkeep, UpkeepEvent, UpkeepTask, sweep_lock_key};

pub use pharox_domain as domain;
pub use pharox_domain::{ApiKeyRecord, ApiKeyScope};
pub use pharox_domain::{
    ConsumerId, Credentials, HealthCheckOptions, HealthCheckResult, HealthPolicy, HealthRecord,
    Lease, LeaseId, LeaseStatus, PoolId, PoolOverview, PoolStats, Proxy, ProxyFilter, ProxyId,
    ProxyPool, ProxyProtocol, ProxyStatus, RetryPolicy, Selector, ValidationError,
};
pub use pharox_domain::{
    ImportDefaults, ImportReport, InvalidLine, MaxConcurrency, ParsedLine, ParsedList, ProxyEntry,
    ProxyListFormat, parse_proxy_json, parse_proxy_json_values, parse_proxy_list,
};
pub use pharox_domain::{
    LeaseSession, Outcome, ProxyFailureKind, ProxyUsage, SessionKey, SessionRequest, TargetBan,
    TargetHost, UsagePolicy,
};
pub use pharox_ports as ports;
pub use pharox_ports::{
    AcquireRequest, ApiKeyStore, Clock, HealthProbe, ManualClock, ProxyStorage, ReleaseOutcome,
    StorageError, SystemClock,
};

/// The in-memory storage adapter.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use pharox_adapter_memory::{MemoryStorage, MemoryTaskLocks};

/// The PostgreSQL storage adapter.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use pharox_adapter_postgres as postgres;

/// The HTTP/HTTPS/SOCKS health probe.
#[cfg(feature = "http-probe")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-probe")))]
pub use pharox_adapter_http_probe as http_probe;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
