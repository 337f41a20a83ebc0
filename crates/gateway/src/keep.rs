//! Keeping a lease alive while its proxy is in use: renewed at half of
//! what is left of it, retried every second while the storage fails in a
//! way worth retrying, and given up (the caller then stops using the
//! proxy) once it is no longer active or its expiry passes unrenewed, so a
//! proxy never carries work its lease no longer counts.

use std::time::Duration;

use pharox::{Lease, ProxyManager};
use time::OffsetDateTime;

/// The longest pause between two tries of a renewal that failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Renews `lease` for `ttl` each time half of what is left of it has
/// passed, keeping `lease` up to date; returns only when the lease is
/// lost. Each renewal must answer before the lease would expire.
pub(crate) async fn keep_alive(manager: &ProxyManager, lease: &mut Lease, ttl: Duration) {
    let current = lease;
    loop {
        let left = remaining(current);
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left / 2).await;
        loop {
            let left = remaining(current);
            if left.is_zero() {
                tracing::warn!(lease = %current.id, "lease expired unrenewed; ending its use");
                return;
            }
            // Boxed: the renewal's state exists only while it runs, so an
            // idle tunnel's future stays small.
            let renewal = Box::pin(manager.renew(current, ttl));
            match tokio::time::timeout(left, renewal).await {
                Ok(Ok(renewed)) => {
                    *current = renewed;
                    break;
                }
                Ok(Err(e)) if e.is_retryable() => {
                    tracing::warn!(lease = %current.id, error = %e, "lease renewal failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %current.id, error = %e, "lease lost; ending its use");
                    return;
                }
                Err(_) => {
                    tracing::warn!(lease = %current.id, "no renewal before the lease expired");
                    return;
                }
            }
        }
    }
}

/// How long `lease` runs yet (zero once it expired).
fn remaining(lease: &Lease) -> Duration {
    (lease.expires_at - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO)
}
