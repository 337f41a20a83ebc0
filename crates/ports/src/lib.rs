//! The ports of pharox: what the application needs from the outside world.
//!
//! - [`ProxyStorage`]: pools, proxies, consumers, leases and health history.
//!   Every adapter (in-memory, PostgreSQL, your own) implements it and proves
//!   it with the `pharox-contract-tests` suite.
//! - [`Clock`]: the time, injectable so expiry can be tested without sleeping.
//! - [`HealthProbe`]: one health check through one proxy.
//! - [`TaskLocks`]: exclusive named locks for background tasks.
//! - [`ApiKeyStore`]: the HTTP service's API keys, stored as hashes.
//! - [`ProxyDialer`]: connections through an upstream proxy, for the gateway.
//!
//! A storage adapter depends on this crate and `pharox-domain` (re-exported
//! here as [`domain`]), implements [`ProxyStorage`] and proves it with the
//! `pharox-contract-tests` suite. Code written against the ports takes them
//! as generics or trait objects:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use pharox_ports::{AcquireRequest, Clock, ManualClock, ProxyStorage, StorageResult};
//!
//! /// Leases a proxy of `pool` for `worker` and hands it straight back.
//! async fn lease_once(storage: &dyn ProxyStorage, pool: &str, worker: &str) -> StorageResult<bool> {
//!     let consumer = storage.ensure_consumer(worker).await?;
//!     let request = AcquireRequest::new(pool, consumer, Duration::from_secs(30));
//!     match storage.acquire(&request).await? {
//!         Some(lease) => Ok(storage.release(lease.id).await?.was_released()),
//!         None => Ok(false),
//!     }
//! }
//!
//! // Tests move a ManualClock instead of sleeping.
//! let clock = Arc::new(ManualClock::starting_now());
//! let before = clock.now();
//! clock.advance(Duration::from_secs(60));
//! assert!(clock.now() > before);
//! # let _ = lease_once;
//! ```
//!
//! # Features
//!
//! - `mock`: mockall mocks of the ports (`MockProxyStorage`,
//!   `MockHealthProbe`, `MockApiKeyStore`), for unit-testing code written
//!   against them, such as the application layer.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod api_key;
mod clock;
mod dial;
mod error;
mod lock;
mod probe;
mod storage;

pub use api_key::ApiKeyStore;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub use api_key::MockApiKeyStore;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dial::{DialError, DialTarget, Dialed, ProxyDialer, ProxyStream};
pub use error::{BoxError, StorageError, StorageResult};
pub use lock::{HeldLock, TaskLockGuard, TaskLocks};
pub use probe::HealthProbe;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub use probe::MockHealthProbe;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub use storage::MockProxyStorage;
pub use storage::{AcquireRequest, ProxyStorage, ReleaseOutcome, ReleasedLease};

/// The domain crate, re-exported so adapters need one dependency for both.
pub use pharox_domain as domain;
