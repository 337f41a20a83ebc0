//! What the gateway tests share: [`spawn_gateway`] over a fresh in-memory
//! pool, clients pointed at it, and raw proxy requests.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pharox::api_keys::{ApiKeys, KeyRing};
use pharox::{Proxy, ProxyId, ProxyManager, ProxyPool, ProxyStorage};
use pharox_adapter_dialer::TokioDialer;
use pharox_adapter_memory::MemoryStorage;
use pharox_gateway::{Gateway, GatewayConfig, GatewayMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A lease-scope key the gateways accept.
pub const KEY: &str = "lease-key-gateway-0123456789";
/// The pool every test leases from.
pub const POOL: &str = "web";

/// One upstream of the test pool.
pub struct Upstream {
    /// `http://user:pass@127.0.0.1:port`, `socks5://…`.
    pub url: String,
    /// Its country, if it has one.
    pub country: Option<&'static str>,
    /// Its max_concurrency.
    pub max_concurrency: u32,
}

impl Upstream {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            country: None,
            max_concurrency: 1,
        }
    }

    pub fn country(mut self, country: &'static str) -> Self {
        self.country = Some(country);
        self
    }

    pub fn max_concurrency(mut self, max: u32) -> Self {
        self.max_concurrency = max;
        self
    }
}

/// A running gateway (HTTP and SOCKS5 listeners) over an in-memory pool.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub socks: SocketAddr,
    pub storage: Arc<dyn ProxyStorage>,
    pub proxies: Vec<ProxyId>,
    pub metrics: PrometheusHandle,
    stop: Option<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// A client whose proxy is this gateway, as `username` with the key.
    pub fn client(&self, username: &str) -> reqwest::Client {
        self.client_with_password(username, KEY)
    }

    /// A client whose proxy is this gateway, as `username:password`.
    pub fn client_with_password(&self, username: &str, password: &str) -> reqwest::Client {
        let proxy = reqwest::Proxy::all(format!("http://{}", self.addr))
            .unwrap()
            .basic_auth(username, password);
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    }

    /// A client with no proxy credentials.
    pub fn anonymous_client(&self) -> reqwest::Client {
        let proxy = reqwest::Proxy::all(format!("http://{}", self.addr)).unwrap();
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    }

    /// Stops the gateway (as a signal would) and waits until it has.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for server in self.servers.drain(..) {
            server.await.unwrap().unwrap();
        }
    }

    /// Leases of the pool still active.
    pub async fn active_leases(&self) -> u64 {
        self.storage
            .pool_overview(POOL)
            .await
            .unwrap()
            .active_leases
    }

    /// The proxy, as stored now.
    pub async fn proxy(&self, id: ProxyId) -> Proxy {
        self.storage.get_proxy(id).await.unwrap()
    }
}

/// Starts a gateway with `config` over pool [`POOL`] holding `upstreams`,
/// accepting [`KEY`], recording metrics into a registry of its own.
pub async fn spawn_gateway(config: GatewayConfig, upstreams: Vec<Upstream>) -> TestGateway {
    // reqwest is built without a crypto provider: the workspace's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
    let pool = storage
        .save_pool(&ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for upstream in upstreams {
        let mut builder = Proxy::from_url(pool.id, &upstream.url)
            .unwrap()
            .max_concurrency(upstream.max_concurrency);
        if let Some(country) = upstream.country {
            builder = builder.country(country);
        }
        let proxy = storage.save_proxy(&builder.build().unwrap()).await.unwrap();
        proxies.push(proxy.id);
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let manager = Arc::new(ProxyManager::from_arc(Arc::clone(&storage)));
    let keys = KeyRing::new(ApiKeys::parse(&format!("lease:{KEY}")).unwrap(), None);
    let gateway = Gateway::with_metrics(
        manager,
        Arc::new(TokioDialer::new()),
        keys,
        config,
        GatewayMetrics::new(Arc::new(recorder)),
    );
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let socks_addr = socks.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (stop_socks, stopped_socks) = oneshot::channel::<()>();
    let servers = vec![
        tokio::spawn(pharox_gateway::serve(http, gateway.clone(), async move {
            let _ = stopped.await;
            let _ = stop_socks.send(());
        })),
        tokio::spawn(pharox_gateway::serve_socks(socks, gateway, async move {
            let _ = stopped_socks.await;
        })),
    ];
    TestGateway {
        addr,
        socks: socks_addr,
        storage,
        proxies,
        metrics,
        stop: Some(stop),
        servers,
    }
}

/// `Proxy-Authorization: Basic` for `username` and [`KEY`].
pub fn basic(username: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{username}:{KEY}")))
}

/// A raw `CONNECT` to `target` through the gateway as `username`: the
/// open stream and the answer's head (status line and headers).
pub async fn connect(
    gateway: SocketAddr,
    target: SocketAddr,
    username: &str,
) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(username)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads a response head, byte by byte (nothing past it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The value of header `name` in a raw head, if present.
pub fn head_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
