//! Leases the gateway holds, and the work it must finish before it stops:
//! a [`HeldLease`] is released, with its outcome, when it is dropped
//! (finished, failed or cancelled alike), and [`Tracker`] lets shutdown
//! wait for those releases and for the connections still open.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pharox::{Lease, Outcome, ProxyManager};
use tokio::sync::Notify;

/// Counts work in flight; [`wait`](Self::wait) returns once none is left.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

/// One unit of tracked work; dropping it ends the unit.
#[derive(Debug)]
pub(crate) struct Tracked(Arc<Tracker>);

impl Tracker {
    /// Starts a unit of work.
    pub(crate) fn track(self: &Arc<Self>) -> Tracked {
        self.open.fetch_add(1, Ordering::AcqRel);
        Tracked(Arc::clone(self))
    }

    /// Units open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no unit is open.
    pub(crate) async fn wait(&self) {
        loop {
            let idle = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A lease the gateway holds for one request or tunnel. Dropping it
/// releases the lease with the outcome last set (none: a plain release),
/// in a task of its own that shutdown waits for, so a cancelled request
/// gives its proxy back too. Without a runtime (the process is ending) the
/// lease is left to lapse at its TTL.
#[derive(Debug)]
pub(crate) struct HeldLease {
    manager: Arc<ProxyManager>,
    releases: Arc<Tracker>,
    lease: Lease,
    outcome: Option<Outcome>,
}

impl HeldLease {
    pub(crate) fn new(manager: Arc<ProxyManager>, releases: Arc<Tracker>, lease: Lease) -> Self {
        Self {
            manager,
            releases,
            lease,
            outcome: None,
        }
    }

    /// The lease.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The outcome to release with.
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lease = %self.lease.id, "no runtime to release a lease; it lapses at its TTL");
            return;
        };
        let manager = Arc::clone(&self.manager);
        let id = self.lease.id;
        let outcome = self.outcome.take();
        let tracked = self.releases.track();
        runtime.spawn(async move {
            let _tracked = tracked;
            if let Err(e) = manager.release_with_outcome(id, outcome).await {
                tracing::warn!(lease = %id, error = %e, "release failed; the lease lapses at its TTL");
            }
        });
    }
}
