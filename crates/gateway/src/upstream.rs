//! Getting an upstream: lease a proxy, dial through it, and on a proxy
//! failure try another, within the attempt count and the connect timeout
//! every attempt shares.

use std::time::Duration;

use pharox::ports::{DialError, DialTarget, Dialed};
use pharox::{Outcome, PharoxError, PreparedRequest, ProxyFailureKind, ProxyProtocol};
use tokio::time::Instant;

use crate::Gateway;
use crate::admit::{Admitted, Refusal};
use crate::held::HeldLease;

/// How the gateway will use the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A tunnel to the target (CONNECT, SOCKS5).
    Tunnel,
    /// An absolute-form request: sent to an HTTP proxy as it is, or in
    /// origin form through a tunnel to the target for other proxies.
    Forward,
}

/// A ready upstream and the lease it runs under.
pub(crate) struct Opened {
    pub(crate) lease: HeldLease,
    pub(crate) dialed: Dialed,
    /// Whether the stream leads to the proxy itself (absolute-form
    /// forwarding to an HTTP proxy) rather than to the target.
    pub(crate) to_proxy: bool,
}

/// Why no upstream could be had.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// No proxy of the pool qualifies (or the pool does not exist).
    NoProxy,
    /// Every proxy tried failed; `last` says how the last one did.
    AllFailed {
        /// Proxies tried.
        attempts: u32,
        /// The last failure.
        last: DialError,
    },
    /// The storage failed.
    Storage(PharoxError),
    /// Leasing again without the proxies tried failed otherwise.
    Refused(Refusal),
}

/// What an [`open`] call has used of its budget.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) attempts: u32,
    /// When the connect timeout runs out: it starts with the first lease,
    /// so a wait for a free proxy (`--wait-ms`) does not eat into it.
    deadline: Option<Instant>,
    connect_timeout: Duration,
    /// Leases of proxies that failed, held until the request is served so
    /// the next attempt cannot pick them again; each is released with its
    /// failure when dropped.
    pub(crate) failed: Vec<HeldLease>,
    pub(crate) last: Option<DialError>,
}

impl Budget {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self {
            attempts: 0,
            deadline: None,
            connect_timeout,
            failed: Vec::new(),
            last: None,
        }
    }

    /// What is left of the connect timeout (all of it before the first
    /// lease).
    fn remaining(&self) -> Duration {
        self.deadline.map_or(self.connect_timeout, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// The proxies tried so far.
    fn tried(&self) -> Vec<pharox::ProxyId> {
        self.failed.iter().map(|l| l.lease().proxy_id).collect()
    }

    /// Counts a failure of `lease`'s proxy, to be reported when released.
    pub(crate) fn failed(&mut self, mut lease: HeldLease, error: DialError) {
        lease.set_outcome(Outcome::proxy_failure(error.kind));
        tracing::debug!(proxy = %lease.lease().proxy_id, error = %error, "upstream failed");
        self.failed.push(lease);
        self.last = Some(error);
    }
}

/// Leases and dials until an upstream is ready, for `target`. A retry
/// never leases a proxy this request tried already.
pub(crate) async fn open(
    gateway: &Gateway,
    admitted: &Admitted,
    target: &DialTarget,
    usage: Use,
    budget: &mut Budget,
) -> Result<Opened, OpenError> {
    let config = gateway.config();
    while budget.attempts < config.max_attempts {
        let first = budget.attempts == 0 && budget.failed.is_empty();
        if !first && budget.remaining().is_zero() {
            break;
        }
        let lease = if first {
            acquire_waiting(gateway, &admitted.request).await
        } else {
            let request = admitted
                .without(gateway, &budget.tried())
                .await
                .map_err(OpenError::Refused)?;
            gateway.manager().acquire_prepared(&request).await
        }
        .map_err(OpenError::Storage)?;
        let Some(lease) = lease else {
            return Err(match budget.last.take() {
                Some(last) => OpenError::AllFailed {
                    attempts: budget.attempts,
                    last,
                },
                None => OpenError::NoProxy,
            });
        };
        if budget.deadline.is_none() {
            budget.deadline = Some(Instant::now() + budget.connect_timeout);
        }
        let remaining = budget.remaining();
        let held = gateway.hold(lease);
        if remaining.is_zero() {
            // Never dialed: released as it is, no fault of the proxy.
            drop(held);
            break;
        }
        budget.attempts += 1;
        let proxy = &held.lease().proxy;
        let to_proxy = usage == Use::Forward && proxy.protocol == ProxyProtocol::Http;
        let dialer = gateway.dialer();
        let dial = async {
            if to_proxy {
                dialer.connect(proxy, remaining).await
            } else {
                dialer.tunnel(proxy, target, remaining).await
            }
        };
        let dialed = match tokio::time::timeout(remaining, dial).await {
            Ok(dialed) => dialed,
            Err(_) => Err(DialError::new(
                ProxyFailureKind::Timeout,
                format!("no connection within {remaining:?}"),
            )),
        };
        match dialed {
            Ok(dialed) => {
                gateway.metrics().connected(dialed.latency);
                return Ok(Opened {
                    lease: held,
                    dialed,
                    to_proxy,
                });
            }
            Err(e) => budget.failed(held, e),
        }
    }
    Err(OpenError::AllFailed {
        attempts: budget.attempts,
        last: budget.last.take().unwrap_or_else(|| {
            DialError::new(ProxyFailureKind::Timeout, "the connect timeout ran out")
        }),
    })
}

/// The first acquire of a request: when nothing is free, waits up to the
/// configured wait, retrying at 10 ms doubling to 100 ms.
async fn acquire_waiting(
    gateway: &Gateway,
    request: &PreparedRequest,
) -> Result<Option<pharox::Lease>, PharoxError> {
    let manager = gateway.manager();
    let wait = gateway.config().wait;
    let until = Instant::now() + wait;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(lease) = manager.acquire_prepared(request).await? {
            return Ok(Some(lease));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
