//! Prometheus metrics: [`ServerMetrics`] (the server's own registry, the
//! lease observer that records into it, HTTP request counts), the
//! middleware that counts requests by route template, and `GET /metrics`,
//! which adds the pools' gauges read from the storage at scrape time.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use pharox::metrics::HISTOGRAM_BUCKETS;
use pharox::{MetricsObserver, PoolOverview, PoolStats, ProxyStorage, StorageError};

use crate::state::AppState;

/// HTTP requests by method, route template and status.
pub const HTTP_REQUESTS_TOTAL: &str = "pharox_http_requests_total";
/// Time to answer an HTTP request (to the response head), by method and
/// route template.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "pharox_http_request_duration_seconds";
/// Proxies of a pool by status (every status, 0 included), at scrape time.
pub const POOL_PROXIES: &str = "pharox_pool_proxies";
/// Active proxies of a pool that can take one more lease now.
pub const POOL_AVAILABLE_PROXIES: &str = "pharox_pool_available_proxies";
/// Active, unexpired leases of a pool.
pub const POOL_ACTIVE_LEASES: &str = "pharox_pool_active_leases";
/// Storage reads that failed in this scrape (the pool list, or a pool's
/// figures); the pools concerned have no gauges in it.
pub const SCRAPE_ERRORS: &str = "pharox_metrics_scrape_errors";

/// Buckets (seconds) for [`HTTP_REQUEST_DURATION_SECONDS`]: 250 µs to the
/// default request timeout (30 s).
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];
/// Pools whose gauges one scrape reads, at most (the first by name).
pub const MAX_SCRAPED_POOLS: usize = 1000;
/// Pools read at once during a scrape.
pub const SCRAPE_CONCURRENCY: usize = 4;
/// The longest one pool's figures may take in a scrape; past it the pool
/// is skipped (counted in [`SCRAPE_ERRORS`]).
pub const POOL_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`crate::serve`] folds recorded histogram samples into their
/// buckets, so memory stays bounded between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The `route` label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The server's metrics registry, its own (not the process-wide recorder),
/// so several servers in one process keep apart. Cheap to clone.
///
/// Lease metrics come from [`observer`](Self::observer), which the caller
/// adds to the manager: `ProxyManager::from_arc(storage).with_observer(metrics.observer())`.
#[derive(Clone)]
pub struct ServerMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    observer: Arc<MetricsObserver>,
}

impl fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("observer", &self.inner.observer)
            .finish_non_exhaustive()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// A fresh registry with the histogram buckets of [`HISTOGRAM_BUCKETS`]
    /// and [`HTTP_DURATION_BUCKETS`].
    #[must_use]
    pub fn new() -> Self {
        let recorder = match with_buckets(PrometheusBuilder::new()) {
            Ok(builder) => builder.build_recorder(),
            Err(e) => {
                // Only empty bucket lists fail, and ours are constants.
                tracing::error!(error = %e, "histogram buckets rejected; using summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let observer = Arc::new(MetricsObserver::with_recorder(
            Arc::clone(&recorder) as Arc<dyn metrics::Recorder + Send + Sync>
        ));
        metrics::with_local_recorder(recorder.as_ref(), describe);
        Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                observer,
            }),
        }
    }

    /// The registry's recorder, for what else in the process records into
    /// it (the gateway of `pharox serve --gateway-listen`).
    #[must_use]
    pub fn recorder(&self) -> Arc<dyn metrics::Recorder + Send + Sync> {
        Arc::clone(&self.inner.recorder) as Arc<dyn metrics::Recorder + Send + Sync>
    }

    /// The lease and health observer that records into this registry.
    #[must_use]
    pub fn observer(&self) -> Arc<MetricsObserver> {
        Arc::clone(&self.inner.observer)
    }

    /// Counts one HTTP request. `route` is the matched route template
    /// (`/v1/leases/{id}`), never the raw path, so ids do not become
    /// series; `None` for a request no route matched.
    pub fn record_http(
        &self,
        method: &Method,
        route: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let route = route.unwrap_or(UNMATCHED_ROUTE).to_owned();
        metrics::with_local_recorder(self.inner.recorder.as_ref(), || {
            counter!(HTTP_REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status.as_u16().to_string())
                .increment(1);
            metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
                .record(elapsed.as_secs_f64());
        });
    }

    /// Folds recorded histogram samples into their buckets (rendering does
    /// it too); [`crate::serve`] runs it every [`UPKEEP_INTERVAL`].
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// The text exposition: every recorded series, then the pools' gauges
    /// read from `storage` now. A storage failure leaves out the pools it
    /// concerns (logged, counted in [`SCRAPE_ERRORS`]), never the rest.
    pub async fn render(&self, storage: &dyn ProxyStorage) -> String {
        let mut text = self.inner.handle.render();
        text.push_str(&pool_gauges(storage).await);
        text
    }
}

/// The middleware that counts every request (see [`ServerMetrics::record_http`]).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    state.metrics().record_http(
        &method,
        route.as_ref().map(MatchedPath::as_str),
        response.status(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics` (no key): the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "probes",
    responses((status = 200, description = "The server's metrics, Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
pub async fn scrape(State(state): State<AppState>) -> Response {
    let text = state
        .metrics()
        .render(state.manager().storage().as_ref())
        .await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Runs [`ServerMetrics::run_upkeep`] every [`UPKEEP_INTERVAL`], forever
/// (spawn it; [`crate::serve`] does).
pub async fn upkeep(metrics: ServerMetrics) {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        metrics.run_upkeep();
    }
}

fn with_buckets(mut builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    for (name, buckets) in HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    builder.set_buckets_for_metric(
        Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()),
        HTTP_DURATION_BUCKETS,
    )
}

/// A bounded set of method labels: clients may send any token as a method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One pool's figures for the gauges.
struct PoolFigures {
    overview: PoolOverview,
    stats: PoolStats,
}

/// The pools' gauges, rendered from a registry made for this scrape (so a
/// deleted pool leaves no stale series behind).
async fn pool_gauges(storage: &dyn ProxyStorage) -> String {
    let mut errors = 0_u64;
    let pools = match storage.list_pools().await {
        Ok(pools) => pools,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list pools; pool gauges skipped");
            errors += 1;
            Vec::new()
        }
    };
    let figures: Vec<(String, Result<PoolFigures, StorageError>)> =
        futures::stream::iter(pools.into_iter().take(MAX_SCRAPED_POOLS))
            .map(|pool| async move {
                let figures = tokio::time::timeout(POOL_SCRAPE_TIMEOUT, async {
                    let overview = storage.pool_overview(&pool.name).await?;
                    let stats = storage.pool_stats(&pool.name).await?;
                    Ok(PoolFigures { overview, stats })
                })
                .await
                .unwrap_or_else(|_| {
                    Err(StorageError::Unavailable {
                        message: format!("no answer within {POOL_SCRAPE_TIMEOUT:?}"),
                        source: None,
                    })
                });
                (pool.name, figures)
            })
            .buffer_unordered(SCRAPE_CONCURRENCY)
            .collect()
            .await;

    let registry = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&registry, || {
        describe_pool_gauges();
        for (pool, figures) in figures {
            let PoolFigures { overview, stats } = match figures {
                Ok(figures) => figures,
                Err(e) => {
                    tracing::warn!(%pool, error = %e, "metrics: cannot read a pool; its gauges skipped");
                    errors += 1;
                    continue;
                }
            };
            for (status, count) in &overview.by_status {
                gauge!(POOL_PROXIES, "pool" => pool.clone(), "status" => status.as_str())
                    .set(*count as f64);
            }
            gauge!(POOL_AVAILABLE_PROXIES, "pool" => pool.clone())
                .set(stats.available_proxies as f64);
            gauge!(POOL_ACTIVE_LEASES, "pool" => pool).set(overview.active_leases as f64);
        }
        gauge!(SCRAPE_ERRORS).set(errors as f64);
    });
    registry.handle().render()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests by method, route template and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route template."
    );
}

fn describe_pool_gauges() {
    describe_gauge!(
        POOL_PROXIES,
        Unit::Count,
        "Proxies of a pool by status, read at scrape time."
    );
    describe_gauge!(
        POOL_AVAILABLE_PROXIES,
        Unit::Count,
        "Active proxies of a pool that can take one more lease now."
    );
    describe_gauge!(
        POOL_ACTIVE_LEASES,
        Unit::Count,
        "Active, unexpired leases of a pool."
    );
    describe_gauge!(
        SCRAPE_ERRORS,
        Unit::Count,
        "Storage reads that failed in this scrape; their pools have no gauges in it."
    );
}
