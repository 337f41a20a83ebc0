//! `pharox gateway`: the rotating forward proxy (`pharox_gateway`) over the
//! storage `pharox serve` would use. This module chooses the storage, the
//! keys and the dialer, binds the listeners (HTTP proxy, SOCKS5, metrics)
//! and stops on SIGTERM/SIGINT; the proxy itself is `pharox_gateway`'s.
//! The helpers that bind and run the gateway serve `pharox serve
//! --gateway-listen` too.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use pharox::api_keys::{ApiKeys, DEFAULT_API_KEY_CACHE, KeyRing};
use pharox::{ApiKeyAdmin, ProxyManager, ProxyStorage};
use pharox_adapter_dialer::TokioDialer;
use pharox_gateway::{Gateway, GatewayConfig, GatewayFlags, GatewayMetrics};
use pharox_server::ServerMetrics;
use pharox_server::config::Secret;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::error::CliError;
use crate::operate::usage;
use crate::output::errln;
use crate::signals::Signals;
use crate::stores::{StorageArgs, open_storage};

/// The address `pharox gateway` listens on unless told otherwise.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8899";

/// Scrapes served at once by `--metrics-listen`; more connections are closed.
const MAX_METRICS_CONNECTIONS: usize = 64;
/// The longest a metrics connection stays open.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `pharox gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address of the HTTP proxy listener (absolute-form requests and
    /// CONNECT; loopback by default).
    #[arg(long, value_name = "ADDR", env = "PHAROX_GATEWAY_LISTEN", default_value = DEFAULT_GATEWAY_LISTEN)]
    listen: SocketAddr,
    /// Also serve SOCKS5 (username/password auth, CONNECT) on this address.
    #[arg(long, value_name = "ADDR")]
    socks_listen: Option<SocketAddr>,
    /// Answer `GET /metrics` (Prometheus text format) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Longest time a client may take to send a request's head, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// On SIGTERM/SIGINT, how long requests in flight get to finish (and
    /// leases to be released), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    shutdown_timeout: f64,
    /// A file of API keys, `SCOPE:KEY` per line or comma-separated
    /// (scopes: lease, admin); the key is the proxy password.
    #[arg(long, value_name = "FILE")]
    api_keys_file: Option<PathBuf>,
    /// API keys, `SCOPE:KEY` comma-separated, e.g. `lease:k1,admin:k2`.
    #[arg(
        long,
        env = "PHAROX_API_KEYS",
        hide_env_values = true,
        value_name = "LIST"
    )]
    api_keys: Option<Secret>,
    /// With a database: how long a key found in it is trusted before it is
    /// looked up again, in seconds (0: every request).
    #[arg(long, default_value_t = DEFAULT_API_KEY_CACHE.as_secs_f64(), value_name = "SECS")]
    api_key_cache_secs: f64,
    #[command(flatten)]
    storage: StorageArgs,
    /// What the gateway does with a request.
    #[command(flatten, next_help_heading = "Gateway")]
    gateway: GatewayFlags,
}

/// Runs `pharox gateway` until SIGTERM or SIGINT, then ends tunnels, lets
/// forwarded requests finish and waits for every lease to be released
/// within `--shutdown-timeout` (exit code 0).
pub async fn run(args: GatewayArgs) -> Result<(), CliError> {
    let listeners: Vec<SocketAddr> = std::iter::once(args.listen)
        .chain(args.socks_listen)
        .collect();
    let config = gateway_config(&args.gateway, args.header_timeout, &listeners)?;
    let shutdown_timeout = seconds("shutdown-timeout", args.shutdown_timeout)?;
    let key_cache = key_cache(args.api_key_cache_secs)?;
    let keys = read_keys(args.api_keys_file.as_deref(), args.api_keys.as_ref())?;
    if keys.is_empty() && !config.no_auth && args.storage.database_url.is_none() {
        return Err(usage(
            "api-keys-file",
            "or PHAROX_API_KEYS is required without --database-url (or --no-auth on a \
             loopback listener): SCOPE:KEY,... (scopes lease, admin)",
        ));
    }
    let mut signals = Signals::install()?;
    let stores = open_storage(&args.storage, "pharox gateway").await?;
    let metrics = args.metrics_listen.map(|_| ServerMetrics::new());
    let mut manager = ProxyManager::from_arc(Arc::clone(&stores.storage));
    if let Some(metrics) = &metrics {
        manager = manager.with_observer(metrics.observer());
    }
    let stored = stores
        .keys
        .map(|store| Arc::new(ApiKeyAdmin::new(store).with_cache_ttl(key_cache)));
    let gateway_metrics = metrics.as_ref().map_or_else(GatewayMetrics::disabled, |m| {
        GatewayMetrics::new(m.recorder())
    });
    let gateway = Gateway::with_metrics(
        Arc::new(manager),
        Arc::new(TokioDialer::new()),
        KeyRing::new(keys, stored),
        config,
        gateway_metrics,
    );

    let http = bind(args.listen, "listen").await?;
    let socks = match args.socks_listen {
        Some(addr) => Some(bind(addr, "socks-listen").await?),
        None => None,
    };
    let scrape = match (args.metrics_listen, &metrics) {
        (Some(addr), Some(metrics)) => Some((bind(addr, "metrics-listen").await?, metrics)),
        _ => None,
    };
    // One line per listener on stderr, so a supervisor (or a test) learns
    // the ports.
    let mut helpers = Vec::new();
    announce("pharox gateway: listening on http://", &http.1);
    if let Some(socks) = &socks {
        announce("pharox gateway: socks5 on socks5://", &socks.1);
    }
    if let Some(((listener, local), metrics)) = scrape {
        errln!("pharox gateway: metrics on http://{local}/metrics");
        tracing::info!(%local, "metrics listening");
        helpers.push(tokio::spawn(serve_metrics(
            listener,
            metrics.clone(),
            Arc::clone(&stores.storage),
        )));
        helpers.push(tokio::spawn(pharox_server::metrics::upkeep(
            metrics.clone(),
        )));
    }

    let mut running = RunningGateway::start(gateway, http.0, socks.map(|s| s.0));
    let signal = tokio::select! {
        signal = signals.recv() => signal,
        ended = running.ended() => {
            helpers.iter().for_each(JoinHandle::abort);
            return ended;
        }
    };
    errln!(
        "pharox gateway: {}: closing tunnels, finishing requests in flight (up to {:.1} s)",
        signal.name(),
        shutdown_timeout.as_secs_f64()
    );
    running.stop();
    let finished = tokio::time::timeout(shutdown_timeout, running.ended()).await;
    helpers.iter().for_each(JoinHandle::abort);
    match finished {
        Ok(ended) => ended,
        Err(_) => {
            tracing::warn!("requests still in flight at the shutdown timeout were cut off");
            errln!(
                "pharox gateway: shutdown timeout reached; requests still in flight were cut \
                 off and their leases left to expire"
            );
            Ok(())
        }
    }
}

/// The gateway's settings from its flags, checked against the listeners
/// it will serve; a bad value is a usage error naming its flag.
pub(crate) fn gateway_config(
    flags: &GatewayFlags,
    header_timeout: f64,
    listeners: &[SocketAddr],
) -> Result<GatewayConfig, CliError> {
    let config = flags.config(header_timeout).map_err(config_error)?;
    config.check(listeners).map_err(config_error)?;
    Ok(config)
}

fn config_error(e: pharox_gateway::ConfigError) -> CliError {
    // The gateway's setting is `max_connections`; its flag is named
    // `--max-client-connections`, apart from the database's `--max-connections`.
    let flag = match e.flag {
        "max-connections" => "max-client-connections",
        flag => flag,
    };
    CliError::Usage {
        flag,
        reason: e.reason,
    }
}

/// Binds `addr` (given by `--flag`): the listener and its local address.
pub(crate) async fn bind(
    addr: SocketAddr,
    flag: &'static str,
) -> Result<(TcpListener, SocketAddr), CliError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Other(format!("--{flag}: cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    Ok((listener, local))
}

fn announce(prefix: &str, local: &SocketAddr) {
    errln!("{prefix}{local}");
    tracing::info!(%local, "gateway listening");
}

/// The gateway's listeners being served, until [`stop`](Self::stop).
pub(crate) struct RunningGateway {
    task: Option<JoinHandle<std::io::Result<()>>>,
    stop: watch::Sender<bool>,
}

impl RunningGateway {
    /// Serves the HTTP proxy protocol on `http` and SOCKS5 on `socks`.
    pub(crate) fn start(gateway: Gateway, http: TcpListener, socks: Option<TcpListener>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let signalled = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let http_done = pharox_gateway::serve(http, gateway.clone(), signalled(stopped.clone()));
        let socks_done = socks.map(|socks| {
            pharox_gateway::serve_socks(socks, gateway.clone(), signalled(stopped.clone()))
        });
        let task = tokio::spawn(async move {
            let (http, socks) = tokio::join!(http_done, optional(socks_done));
            http.and(socks)
        });
        Self {
            task: Some(task),
            stop,
        }
    }

    /// Tells every listener to stop: they stop accepting, end tunnels, let
    /// forwarded requests finish and release every lease.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Returns once the listeners have returned (at once if they had).
    pub(crate) async fn ended(&mut self) -> Result<(), CliError> {
        let Some(task) = &mut self.task else {
            return Ok(());
        };
        let ended = task.await;
        self.task = None;
        match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CliError::Other(format!("the gateway stopped: {e}"))),
            Err(e) => Err(CliError::Other(format!("the gateway failed: {e}"))),
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn optional(
    serving: Option<impl Future<Output = std::io::Result<()>>>,
) -> std::io::Result<()> {
    match serving {
        Some(serving) => serving.await,
        None => Ok(()),
    }
}

/// The keys of `--api-keys-file` and `--api-keys` (`PHAROX_API_KEYS`)
/// together, possibly none.
fn read_keys(file: Option<&std::path::Path>, list: Option<&Secret>) -> Result<ApiKeys, CliError> {
    let mut all = String::new();
    if let Some(path) = file {
        all = std::fs::read_to_string(path).map_err(|e| {
            CliError::Other(format!(
                "--api-keys-file {} cannot be read: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(list) = list {
        all.push('\n');
        all.push_str(list.expose());
    }
    ApiKeys::parse(&all).map_err(|e| CliError::Usage {
        flag: "api-keys-file",
        reason: format!("(or PHAROX_API_KEYS) {e}"),
    })
}

/// `--api-key-cache-secs`: 0 to 3600 seconds.
fn key_cache(secs: f64) -> Result<Duration, CliError> {
    if secs.is_finite() && (0.0..=3600.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(usage("api-key-cache-secs", "must be 0 to 3600 seconds"))
    }
}

/// A duration flag: more than 0 and at most a day.
fn seconds(flag: &'static str, secs: f64) -> Result<Duration, CliError> {
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(usage(flag, "must be more than 0 and at most 86400 seconds"))
    }
}

/// `--metrics-listen`: `GET /metrics` answered with the registry's text
/// and the pools' gauges read from `storage`; anything else is a 404.
async fn serve_metrics(
    listener: TcpListener,
    metrics: ServerMetrics,
    storage: Arc<dyn ProxyStorage>,
) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        let storage = Arc::clone(&storage);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                let storage = Arc::clone(&storage);
                async move { Ok::<_, Infallible>(scrape(&request, &metrics, storage.as_ref()).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

async fn scrape(
    request: &Request<Incoming>,
    metrics: &ServerMetrics,
    storage: &dyn ProxyStorage,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                pharox_server::metrics::CONTENT_TYPE,
                Bytes::from(metrics.render(storage).await),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"not found: the metrics are at GET /metrics\n"),
            )
        };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
