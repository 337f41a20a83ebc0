//! pharox-gateway: a rotating forward proxy in front of a pharox pool.
//!
//! A client points its proxy setting at the gateway
//! (`http://pool-residential-country-us:KEY@127.0.0.1:8899`); the gateway
//! leases a proxy per request (absolute-form `GET http://…`) or per tunnel
//! (`CONNECT`, SOCKS5 `CONNECT`), dials through it with a
//! [`ProxyDialer`], tries another proxy when one fails before a byte
//! reached the client, reports what happened as the lease's outcome and
//! releases the lease when the request or tunnel ends. The username routes
//! (see [`route`]); the password is an API key. HTTPS passes through
//! untouched: the gateway never looks inside a tunnel.
//!
//! [`serve`] runs the HTTP proxy protocol on a listener and
//! [`serve_socks`] SOCKS5; both stop accepting on `shutdown`, end their
//! connections and tunnels, and return once every lease is released. The
//! crate knows no storage adapter and no dialer: the caller (the CLI)
//! chooses them.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use pharox::ProxyManager;
//! use pharox::api_keys::{ApiKeys, KeyRing};
//! use pharox_adapter_memory::MemoryStorage; // the caller picks the storage
//! use pharox_adapter_dialer::TokioDialer; // and the dialer
//! use pharox_gateway::{Gateway, GatewayConfig, serve};
//!
//! let keys = ApiKeys::parse("lease:worker-key-0123456789").expect("a valid key list");
//! let manager = Arc::new(ProxyManager::new(MemoryStorage::new()));
//! let gateway = Gateway::new(
//!     manager,
//!     Arc::new(TokioDialer::new()),
//!     KeyRing::new(keys, None),
//!     GatewayConfig::default(),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8899").await?;
//! serve(listener, gateway, std::future::pending()).await
//! # }
//! ```
//!
//! This crate has no cargo features.

mod admit;
pub mod config;
mod held;
mod http;
mod keep;
pub mod metrics;
mod relay;
pub mod route;
mod socks;
mod tunnel;
mod upstream;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use pharox::api_keys::{Caller, KeyRing};
use pharox::ports::ProxyDialer;
use pharox::{Lease, ProxyManager};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use config::{ConfigError, GatewayConfig, GatewayFlags};
pub use metrics::{GatewayMetrics, GatewayResult};
pub use route::{Route, RouteError};

use held::{HeldLease, Tracker};

/// `X-Pharox-Proxy-Id`: the upstream proxy's id, on every response served
/// through one (the `CONNECT` 200 included).
pub const PROXY_ID_HEADER: &str = "x-pharox-proxy-id";
/// `X-Pharox-Lease-Id`: the lease's id, so a client can report a block the
/// gateway cannot see (inside TLS) through the serve API.
pub const LEASE_ID_HEADER: &str = "x-pharox-lease-id";
/// `X-Pharox-Error`: why the gateway answered with an error, readable.
pub const ERROR_HEADER: &str = "x-pharox-error";
/// The consumer name of leases taken without client authentication; with
/// it, `<key id>:gateway`.
pub const GATEWAY_CONSUMER: &str = "gateway";

/// How long `serve` pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The gateway: the manager, the dialer, the keys and the settings, shared
/// by every connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<ProxyManager>,
    dialer: Arc<dyn ProxyDialer>,
    keys: KeyRing,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    releases: Arc<Tracker>,
    connections: Arc<Tracker>,
    slots: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .field("connections", &self.connections.open())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway leasing through `manager`, dialing with `dialer`, accepting
    /// the keys of `keys` (unless `config.no_auth`), recording no metrics.
    /// Settings out of range are brought into it
    /// ([`GatewayConfig::clamped`]); [`GatewayConfig::check`] reports them
    /// instead, for a command line to refuse.
    #[must_use]
    pub fn new(
        manager: Arc<ProxyManager>,
        dialer: Arc<dyn ProxyDialer>,
        keys: KeyRing,
        config: GatewayConfig,
    ) -> Self {
        Self::build(manager, dialer, keys, config, GatewayMetrics::disabled())
    }

    /// As [`new`](Self::new), recording into `metrics`.
    #[must_use]
    pub fn with_metrics(
        manager: Arc<ProxyManager>,
        dialer: Arc<dyn ProxyDialer>,
        keys: KeyRing,
        config: GatewayConfig,
        metrics: GatewayMetrics,
    ) -> Self {
        Self::build(manager, dialer, keys, config, metrics)
    }

    fn build(
        manager: Arc<ProxyManager>,
        dialer: Arc<dyn ProxyDialer>,
        keys: KeyRing,
        config: GatewayConfig,
        metrics: GatewayMetrics,
    ) -> Self {
        let config = config.clamped();
        let slots = Arc::new(Semaphore::new(config.max_connections));
        Self {
            inner: Arc::new(Inner {
                manager,
                dialer,
                keys,
                config,
                metrics,
                releases: Arc::new(Tracker::default()),
                connections: Arc::new(Tracker::default()),
                slots,
                stop: watch::channel(false).0,
            }),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The lease manager.
    #[must_use]
    pub fn manager(&self) -> &Arc<ProxyManager> {
        &self.inner.manager
    }

    /// Client connections open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.inner.connections.open()
    }

    /// Ends every connection and tunnel of every listener and waits until
    /// each is closed and every lease released ([`serve`] and
    /// [`serve_socks`] do it when their shutdown completes).
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        self.inner.connections.wait().await;
        self.inner.releases.wait().await;
    }

    pub(crate) fn dialer(&self) -> &dyn ProxyDialer {
        self.inner.dialer.as_ref()
    }

    pub(crate) fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    pub(crate) fn hold(&self, lease: Lease) -> HeldLease {
        HeldLease::new(
            Arc::clone(&self.inner.manager),
            Arc::clone(&self.inner.releases),
            lease,
        )
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// The caller a presented key stands for, `None` when it is not a key.
    pub(crate) async fn authenticate(
        &self,
        key: &str,
    ) -> Result<Option<Caller>, pharox::PharoxError> {
        self.inner.keys.authenticate(key).await
    }

    /// The consumer leases are taken for: per key, so every replica names
    /// the same key's leases alike.
    pub(crate) fn consumer(caller: Option<&Caller>) -> String {
        match caller {
            Some(caller) => format!("{}:{GATEWAY_CONSUMER}", caller.key_id),
            None => GATEWAY_CONSUMER.to_owned(),
        }
    }
}

/// Serves the HTTP proxy protocol (absolute-form requests and `CONNECT`)
/// on `listener` until `shutdown` completes; then stops accepting, lets
/// requests in flight finish, closes tunnels, and returns once every
/// lease they held is released.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(listener, gateway, shutdown, Protocol::Http).await
}

/// Serves SOCKS5 (username/password auth, `CONNECT`) on `listener`, as
/// [`serve`] does HTTP.
pub async fn serve_socks(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(listener, gateway, shutdown, Protocol::Socks5).await
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http,
    Socks5,
}

async fn accept_loop(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
    protocol: Protocol,
) -> io::Result<()> {
    let mut shutdown = pin!(shutdown);
    let mut stopping = gateway.stopping();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: keep serving, pausing so the table drains.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = crate::stopped(&mut stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&gateway.inner.slots).try_acquire_owned() else {
            tokio::spawn(refuse(stream, protocol));
            continue;
        };
        // Counted before its task starts, so a shutdown that begins now
        // waits for it.
        let connection = Connection::open(&gateway, slot);
        let gateway = gateway.clone();
        tokio::spawn(async move {
            match protocol {
                Protocol::Http => http::serve_connection(&gateway, stream).await,
                Protocol::Socks5 => socks::serve_connection(&gateway, stream).await,
            }
            drop(connection);
        });
    }
    drop(listener);
    gateway.shutdown().await;
    Ok(())
}

/// Returns once the gateway is told to stop (at once if it was).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` gives is dropped here, never held across an await.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A client connection being served: holds its slot, counts as open.
struct Connection {
    _slot: OwnedSemaphorePermit,
    _tracked: held::Tracked,
    metrics: GatewayMetrics,
}

impl Connection {
    fn open(gateway: &Gateway, slot: OwnedSemaphorePermit) -> Self {
        gateway.metrics().active_connections(1.0);
        Self {
            _slot: slot,
            _tracked: gateway.inner.connections.track(),
            metrics: gateway.metrics().clone(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.active_connections(-1.0);
    }
}

/// Answers a connection over the limit at once and closes it: a 503 for
/// HTTP, a closed socket for SOCKS5 (whose greeting has no error reply).
/// The request is read (briefly, a little) before the close, so the close
/// does not reset the connection before the client read the answer.
async fn refuse(mut stream: TcpStream, protocol: Protocol) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if let Protocol::Http = protocol {
        let answer = b"HTTP/1.1 503 Service Unavailable\r\nx-pharox-error: overloaded: too many client connections\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let answered = async {
            stream.write_all(answer).await?;
            stream.shutdown().await?;
            let mut sink = [0_u8; 4096];
            let mut drained = 0;
            while drained < 64 * 1024 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answered).await;
    }
}
