//! The ports of pharox: what the application needs from the outside world.
//!
//! - [`ProxyStorage`]: pools, proxies, consumers, leases and health history.
//!   Every adapter (in-memory, PostgreSQL, your own) implements it and proves
//!   it with the `pharox-contract-tests` suite.
//! - [`Clock`]: the time, injectable so expiry can be tested without sleeping.
//! - [`HealthProbe`]: one health check through one proxy.
//! - [`TaskLocks`]: exclusive named locks for background tasks.
//! - [`ApiKeyStore`]: the HTTP service's API keys, stored as hashes.
//!
//! With the `mock` feature, mockall mocks (`MockProxyStorage`,
//! `MockHealthProbe`) are generated for unit-testing the application layer.

mod api_key;
mod clock;
mod error;
mod lock;
mod probe;
mod storage;

pub use api_key::ApiKeyStore;
#[cfg(feature = "mock")]
pub use api_key::MockApiKeyStore;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, StorageError, StorageResult};
pub use lock::{HeldLock, TaskLockGuard, TaskLocks};
pub use probe::HealthProbe;
#[cfg(feature = "mock")]
pub use probe::MockHealthProbe;
#[cfg(feature = "mock")]
pub use storage::MockProxyStorage;
pub use storage::{AcquireRequest, ProxyStorage, ReleaseOutcome, ReleasedLease};

/// The domain crate, re-exported so adapters need one dependency for both.
pub use pharox_domain as domain;
