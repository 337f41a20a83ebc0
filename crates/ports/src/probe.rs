use async_trait::async_trait;
use pharox_domain::{HealthCheckOptions, HealthCheckResult, Proxy};

/// Runs one health check through one proxy.
///
/// A probe never fails as a call: every problem (refused, timed out, wrong
/// credentials, unexpected status, TLS) becomes a result with status
/// inactive and a readable `error` that never contains credentials.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// Checks `proxy` with `options` (already validated by the caller).
    async fn probe(&self, proxy: &Proxy, options: &HealthCheckOptions) -> HealthCheckResult;
}
