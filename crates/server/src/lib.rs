//! pharox-server: the HTTP lease service behind `pharox serve`.
//!
//! [`router`] builds the API over an [`AppState`] (a `ProxyManager` on any
//! storage, the API keys and the limits); [`serve`] runs it on a listener
//! until a shutdown signal, letting requests in flight finish. The crate
//! knows no storage adapter: the caller (the CLI) chooses one. The API and
//! its auth are described in this crate's README.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use pharox::ProxyManager;
//! use pharox_adapter_memory::MemoryStorage; // the caller picks the storage
//! use pharox_server::{ApiKeys, AppState, Limits, serve};
//!
//! let keys = ApiKeys::parse("lease:worker-key-0123456789,admin:admin-key-0123456789")
//!     .expect("a valid key list");
//! let manager = Arc::new(ProxyManager::new(MemoryStorage::new()));
//! let state = AppState::new(manager, keys, Limits::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # drop(stop);
//! serve(listener, state, async move { let _ = stopped.await; }).await
//! # }
//! ```
//!
//! This crate has no cargo features.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod held;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;

pub use auth::{ApiKeys, Caller, Scope};
pub use config::{Limits, ServerArgs};
pub use error::ApiError;
pub use metrics::ServerMetrics;
pub use state::AppState;

pub use routes::sweeps::HealthSweeps;

use routes::{health, leases, pools, proxies, sweeps};

/// The API's routes and limits over `state`.
///
/// Every request passes a concurrency cap (over it: 503 `overloaded` at
/// once, nothing queued), a timeout (408 `request_timeout`) and a body
/// limit (413 `payload_too_large`).
pub fn router(state: AppState) -> Router {
    let limits = *state.limits();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/pools", get(pools::list).post(pools::create))
        .route(
            "/v1/pools/{pool}",
            get(pools::overview).delete(pools::delete),
        )
        .route(
            "/v1/pools/{pool}/proxies",
            get(pools::proxies).post(pools::import),
        )
        .route("/v1/pools/{pool}/leases", post(leases::acquire))
        .route(
            "/v1/pools/{pool}/health-sweeps",
            get(sweeps::status).post(sweeps::start),
        )
        .route("/v1/leases/{id}", get(leases::show))
        .route("/v1/leases/{id}/release", post(leases::release))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/leases/{id}/outcomes", post(leases::report))
        .route(
            "/v1/proxies/{id}",
            get(proxies::show)
                .patch(proxies::patch)
                .delete(proxies::delete),
        )
        .route("/v1/proxies/{id}/health", get(proxies::health))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overload_error))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrency))
                .layer(TimeoutLayer::new(limits.request_timeout)),
        )
        // Outermost, so refused (503) and timed-out (408) requests count too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting and waits for the requests in flight (bound that wait from
/// outside, as `pharox serve --shutdown-timeout` does).
///
/// HTTP/1.1 with keep-alive; a client that takes longer than
/// [`Limits::header_timeout`] to send a request's head is disconnected.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// As [`serve`], over TLS with `tls` (see [`tls::load_server_config`]).
/// Each handshake runs in its connection's own task and must finish within
/// [`Limits::header_timeout`], so a client that never completes one holds
/// neither the accept loop nor a task for long.
pub async fn serve_tls(
    listener: TcpListener,
    state: AppState,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Some(TlsAcceptor::from(tls)), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = state.limits().header_timeout;
    let upkeep = tokio::spawn(metrics::upkeep(state.metrics().clone()));
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: keep serving the others, pausing a
                    // moment so a full descriptor table can drain.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let ended = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting, then let every connection finish what it is doing.
    drop(listener);
    graceful.shutdown().await;
    upkeep.abort();
    Ok(())
}

/// How long `serve` pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::NotFound {
        entity: "route",
        key: uri.path().chars().take(200).collect(),
    }
}

async fn wrong_method(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

async fn overload_error(error: tower::BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded.into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout.into_response()
    } else {
        ApiError::Internal(error.to_string()).into_response()
    }
}
