//! The gateway's metrics, recorded into a registry the caller gives (the
//! one `pharox serve` renders on `GET /metrics`). The names and histogram
//! buckets are `pharox::metrics`'s `GATEWAY_*` constants.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Recorder, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use parking_lot::Mutex;
use pharox::metrics::{
    GATEWAY_ACTIVE_CONNECTIONS, GATEWAY_ACTIVE_TUNNELS, GATEWAY_ATTEMPTS, GATEWAY_BYTES_TOTAL,
    GATEWAY_CONNECT_SECONDS, GATEWAY_REQUESTS_TOTAL, GATEWAY_TUNNELS_TOTAL, OTHER_POOLS,
};

/// Pool names that get series of their own; later ones are labelled
/// [`OTHER_POOLS`] (clients choose pool names, so series stay bounded).
pub const MAX_POOL_LABELS: usize = 1000;

/// How a request or tunnel ended, as labelled (`result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayResult {
    /// Served through an upstream proxy (for requests: not blocked).
    Success,
    /// Served, and the target answered with a blocked status.
    Blocked,
    /// Every upstream tried failed: 502.
    UpstreamFailed,
    /// No proxy qualified: 503.
    NoProxy,
    /// No or a wrong key, or a username the gateway cannot route: 407.
    Refused,
    /// A request the gateway does not serve: 400.
    BadRequest,
    /// The storage failed: 503 or 500.
    StorageFailed,
    /// The client went away before its tunnel began.
    Aborted,
}

impl GatewayResult {
    /// The label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Blocked => "blocked",
            Self::UpstreamFailed => "upstream_failed",
            Self::NoProxy => "no_proxy",
            Self::Refused => "refused",
            Self::BadRequest => "bad_request",
            Self::StorageFailed => "storage_failed",
            Self::Aborted => "aborted",
        }
    }
}

/// Records the gateway's series into one registry; cheap to clone. Without
/// a registry ([`GatewayMetrics::disabled`]) it records nothing.
#[derive(Clone)]
pub struct GatewayMetrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    recorder: Arc<dyn Recorder + Send + Sync>,
    pools: Mutex<HashSet<String>>,
}

impl fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayMetrics")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl GatewayMetrics {
    /// Records into `recorder` (e.g. `ServerMetrics::recorder()`).
    #[must_use]
    pub fn new(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        metrics::with_local_recorder(recorder.as_ref(), describe);
        Self {
            inner: Some(Arc::new(Inner {
                recorder,
                pools: Mutex::new(HashSet::new()),
            })),
        }
    }

    /// Records nothing.
    #[must_use]
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    fn with(&self, record: impl FnOnce(&Inner)) {
        if let Some(inner) = &self.inner {
            metrics::with_local_recorder(inner.recorder.as_ref(), || record(inner));
        }
    }

    /// One absolute-form request ended.
    pub(crate) fn request(&self, pool: &str, result: GatewayResult) {
        self.with(|inner| {
            counter!(GATEWAY_REQUESTS_TOTAL, "pool" => inner.pool_label(pool), "result" => result.as_str())
                .increment(1);
        });
    }

    /// One tunnel ended (or was refused).
    pub(crate) fn tunnel(&self, pool: &str, result: GatewayResult) {
        self.with(|inner| {
            counter!(GATEWAY_TUNNELS_TOTAL, "pool" => inner.pool_label(pool), "result" => result.as_str())
                .increment(1);
        });
    }

    /// Upstreams tried for one request or tunnel.
    pub(crate) fn attempts(&self, attempts: u32) {
        self.with(|_| histogram!(GATEWAY_ATTEMPTS).record(f64::from(attempts)));
    }

    /// A successful dial's latency.
    pub(crate) fn connected(&self, latency: Duration) {
        self.with(|_| histogram!(GATEWAY_CONNECT_SECONDS).record(latency.as_secs_f64()));
    }

    /// Bytes relayed: `inbound` from upstreams to clients, `outbound` the
    /// other way.
    pub(crate) fn bytes(&self, inbound: u64, outbound: u64) {
        self.with(|_| {
            if inbound > 0 {
                counter!(GATEWAY_BYTES_TOTAL, "direction" => "in").increment(inbound);
            }
            if outbound > 0 {
                counter!(GATEWAY_BYTES_TOTAL, "direction" => "out").increment(outbound);
            }
        });
    }

    /// A tunnel opened (`1.0`) or closed (`-1.0`).
    pub(crate) fn active_tunnels(&self, delta: f64) {
        self.with(|_| gauge!(GATEWAY_ACTIVE_TUNNELS).increment(delta));
    }

    /// A client connection opened (`1.0`) or closed (`-1.0`).
    pub(crate) fn active_connections(&self, delta: f64) {
        self.with(|_| gauge!(GATEWAY_ACTIVE_CONNECTIONS).increment(delta));
    }
}

impl Inner {
    fn pool_label(&self, pool: &str) -> String {
        let mut pools = self.pools.lock();
        if pools.contains(pool) {
            return pool.to_owned();
        }
        if pools.len() < MAX_POOL_LABELS && !pool.is_empty() && pool.len() <= 128 {
            pools.insert(pool.to_owned());
            return pool.to_owned();
        }
        OTHER_POOLS.to_owned()
    }
}

fn describe() {
    describe_counter!(
        GATEWAY_REQUESTS_TOTAL,
        Unit::Count,
        "Gateway: absolute-form requests by pool and result."
    );
    describe_counter!(
        GATEWAY_TUNNELS_TOTAL,
        Unit::Count,
        "Gateway: CONNECT and SOCKS5 tunnels by pool and result."
    );
    describe_histogram!(
        GATEWAY_ATTEMPTS,
        Unit::Count,
        "Gateway: upstream proxies tried per request or tunnel."
    );
    describe_histogram!(
        GATEWAY_CONNECT_SECONDS,
        Unit::Seconds,
        "Gateway: time to a ready upstream connection (connect and handshake)."
    );
    describe_counter!(
        GATEWAY_BYTES_TOTAL,
        Unit::Bytes,
        "Gateway: bytes relayed; in: upstream to client, out: client to upstream."
    );
    describe_gauge!(
        GATEWAY_ACTIVE_TUNNELS,
        Unit::Count,
        "Gateway: tunnels open now."
    );
    describe_gauge!(
        GATEWAY_ACTIVE_CONNECTIONS,
        Unit::Count,
        "Gateway: client connections open now."
    );
}
