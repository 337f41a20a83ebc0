//! Health checks: the [`HealthOrchestrator`] probes proxies with bounded
//! concurrency, persists every result through the storage, and streams the
//! results as they finish.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use pharox_domain::{
    HealthCheckOptions, HealthCheckResult, HealthPolicy, Proxy, ProxyId, ProxyProtocol,
    ProxyStatus, ValidationError, now_micros,
};
use pharox_ports::{HealthProbe, ProxyStorage};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use tracing::Instrument;

use crate::PharoxError;
use crate::observe::{HealthCheckEvent, HealthObserver};
use crate::pool_names::PoolNames;

/// Default number of probes in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// One proxy checked and its result persisted.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The proxy checked.
    pub proxy_id: ProxyId,
    /// Its status before the result was applied.
    pub status_before: ProxyStatus,
    /// Its status after, or `None` when the proxy was deleted meanwhile.
    pub status_after: Option<ProxyStatus>,
    /// What the probe found.
    pub result: HealthCheckResult,
}

/// Counts of a sweep's outcomes, built with [`record`](Self::record); start
/// one with [`Sweep::summary`] to have its size and skipped proxies in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepSummary {
    /// Proxies the sweep was to check (skipped ones not included).
    pub total: usize,
    /// Proxies left alone (with [`HealthOrchestratorBuilder::skip_leased`],
    /// the ones with an exclusive lease).
    pub skipped: usize,
    /// Results received.
    pub checked: usize,
    /// Probes of this sweep that failed (the verdict was inactive), whatever
    /// the proxy's status became: a proxy turns inactive only after several.
    pub failed: usize,
    /// Proxies active afterwards.
    pub active: usize,
    /// Proxies slow afterwards.
    pub slow: usize,
    /// Proxies inactive afterwards.
    pub inactive: usize,
    /// Proxies banned (left banned) afterwards.
    pub banned: usize,
    /// Proxies deleted while being checked.
    pub vanished: usize,
    /// Proxies that became active in this sweep (were slow or inactive).
    pub became_active: usize,
    /// Proxies that became slow in this sweep.
    pub became_slow: usize,
    /// Proxies that became inactive in this sweep.
    pub became_inactive: usize,
    /// Checks whose result could not be persisted.
    pub not_persisted: usize,
    latencies_ms: Vec<f64>,
}

impl SweepSummary {
    /// Counts one item of a sweep, keeping its latency for percentiles.
    pub fn record(&mut self, item: &Result<HealthCheck, PharoxError>) {
        self.count(item);
        if let Ok(HealthCheck {
            result:
                HealthCheckResult {
                    latency_ms: Some(latency),
                    ..
                },
            ..
        }) = item
        {
            self.latencies_ms.push(*latency);
        }
    }

    /// Counts one item without keeping its latency.
    fn count(&mut self, item: &Result<HealthCheck, PharoxError>) {
        self.checked += 1;
        let Ok(check) = item else {
            self.not_persisted += 1;
            return;
        };
        if check.result.status == ProxyStatus::Inactive || check.result.error.is_some() {
            self.failed += 1;
        }
        match check.status_after {
            Some(ProxyStatus::Active) => self.active += 1,
            Some(ProxyStatus::Slow) => self.slow += 1,
            Some(ProxyStatus::Inactive) => self.inactive += 1,
            Some(ProxyStatus::Banned) => self.banned += 1,
            None => self.vanished += 1,
        }
        match check.status_after {
            Some(after) if after == check.status_before => {}
            Some(ProxyStatus::Active) => self.became_active += 1,
            Some(ProxyStatus::Slow) => self.became_slow += 1,
            Some(ProxyStatus::Inactive) => self.became_inactive += 1,
            _ => {}
        }
    }

    /// Proxies of the sweep not checked (it was stopped, or hit its deadline).
    #[must_use]
    pub fn unchecked(&self) -> usize {
        self.total.saturating_sub(self.checked)
    }

    /// Adds another summary's counts (and latencies) to this one.
    pub fn merge(&mut self, other: &SweepSummary) {
        self.total += other.total;
        self.skipped += other.skipped;
        self.checked += other.checked;
        self.failed += other.failed;
        self.active += other.active;
        self.slow += other.slow;
        self.inactive += other.inactive;
        self.banned += other.banned;
        self.vanished += other.vanished;
        self.became_active += other.became_active;
        self.became_slow += other.became_slow;
        self.became_inactive += other.became_inactive;
        self.not_persisted += other.not_persisted;
        self.latencies_ms.extend_from_slice(&other.latencies_ms);
    }

    /// The latency below which `q` (0..=1) of the measured checks fall, in ms.
    #[must_use]
    pub fn latency_percentile(&self, q: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted.get(rank).copied()
    }
}

/// The results of a running sweep, as they finish.
///
/// Dropping it cancels the sweep: probes still in flight are aborted.
/// [`stop`](Self::stop) ends it gently instead.
pub struct Sweep {
    results: mpsc::Receiver<Result<HealthCheck, PharoxError>>,
    driver: AbortHandle,
    total: usize,
    skipped: usize,
    deadline_hit: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl Sweep {
    /// How many proxies the sweep covers.
    #[must_use]
    pub fn total(&self) -> usize {
        self.total
    }

    /// How many proxies were left alone (see
    /// [`HealthOrchestratorBuilder::skip_leased`]).
    #[must_use]
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// An empty summary for this sweep: its total and skipped proxies.
    #[must_use]
    pub fn summary(&self) -> SweepSummary {
        SweepSummary {
            total: self.total,
            skipped: self.skipped,
            ..SweepSummary::default()
        }
    }

    /// Stops the sweep: no new probe starts, probes in flight are
    /// abandoned (their proxies are left as they were, nothing recorded),
    /// results already being persisted are persisted and still yielded;
    /// then the stream ends. For Ctrl-C.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Whether the overall deadline stopped the sweep before every proxy was
    /// checked (meaningful once the stream has ended).
    #[must_use]
    pub fn deadline_exceeded(&self) -> bool {
        self.deadline_hit.load(Ordering::Acquire)
    }

    /// Drives the sweep to the end and counts the outcomes.
    pub async fn summarize(mut self) -> SweepSummary {
        let mut summary = self.summary();
        while let Some(item) = self.results.recv().await {
            summary.record(&item);
        }
        summary
    }
}

impl Stream for Sweep {
    type Item = Result<HealthCheck, PharoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.results.poll_recv(cx)
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweep")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

struct Inner {
    storage: Arc<dyn ProxyStorage>,
    default_probe: Arc<dyn HealthProbe>,
    probes: HashMap<ProxyProtocol, Arc<dyn HealthProbe>>,
    options: HealthCheckOptions,
    protocol_options: HashMap<ProxyProtocol, HealthCheckOptions>,
    policy: HealthPolicy,
    concurrency: usize,
    deadline: Option<Duration>,
    skip_leased: bool,
    observers: Vec<Arc<dyn HealthObserver>>,
    /// Pool names for the observers' events.
    pool_names: PoolNames,
}

impl Inner {
    async fn check(&self, proxy: &Proxy) -> Result<HealthCheck, PharoxError> {
        let result = self.probe(proxy).await;
        self.apply(proxy, result).await
    }

    /// Runs the probe for the proxy's protocol; touches no storage, so it
    /// can be abandoned at any point.
    async fn probe(&self, proxy: &Proxy) -> HealthCheckResult {
        let probe = self
            .probes
            .get(&proxy.protocol)
            .unwrap_or(&self.default_probe);
        let options = self
            .protocol_options
            .get(&proxy.protocol)
            .unwrap_or(&self.options);
        let span = tracing::debug_span!("pharox.health.probe", proxy = %proxy.id, protocol = %proxy.protocol);
        probe.probe(proxy, options).instrument(span).await
    }

    /// Persists a probe's result.
    async fn apply(
        &self,
        proxy: &Proxy,
        result: HealthCheckResult,
    ) -> Result<HealthCheck, PharoxError> {
        let updated = match self
            .storage
            .apply_health_result(&result, &self.policy)
            .await
        {
            Ok(updated) => updated,
            Err(e) => {
                let error = PharoxError::from(e);
                self.notify(proxy, &result, None, Some(&error)).await;
                return Err(error);
            }
        };
        tracing::debug!(
            proxy = %proxy.id,
            verdict = %result.status,
            status = updated.as_ref().map(|p| p.status.as_str()),
            latency_ms = result.latency_ms,
            "health result applied"
        );
        let check = HealthCheck {
            proxy_id: proxy.id,
            status_before: proxy.status,
            status_after: updated.map(|p| p.status),
            result,
        };
        self.notify(proxy, &check.result, check.status_after, None)
            .await;
        Ok(check)
    }

    /// Tells the observers about one check (nothing to do without any).
    async fn notify(
        &self,
        proxy: &Proxy,
        result: &HealthCheckResult,
        status_after: Option<ProxyStatus>,
        error: Option<&PharoxError>,
    ) {
        if self.observers.is_empty() {
            return;
        }
        let pool_name = self.pool_names.resolve(&*self.storage, proxy.pool_id).await;
        let event = HealthCheckEvent {
            proxy_id: proxy.id,
            pool_id: proxy.pool_id,
            pool_name: pool_name.as_deref(),
            result,
            status_before: proxy.status,
            status_after,
            error,
        };
        self.observers
            .iter()
            .for_each(|o| o.on_health_check(&event));
    }
}

/// Checks proxies and keeps their status honest.
///
/// Each check runs the probe for the proxy's protocol with that protocol's
/// options, then hands the result to the storage, which applies the
/// [`HealthPolicy`] atomically (inactive only after N consecutive failures,
/// slow above the threshold, banned never lifted) and appends a record.
#[derive(Clone)]
pub struct HealthOrchestrator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthOrchestrator")
            .field("concurrency", &self.inner.concurrency)
            .field("deadline", &self.inner.deadline)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl HealthOrchestrator {
    /// Starts configuring an orchestrator that checks with `probe` and
    /// persists into `storage`.
    pub fn builder(
        storage: Arc<dyn ProxyStorage>,
        probe: Arc<dyn HealthProbe>,
    ) -> HealthOrchestratorBuilder {
        HealthOrchestratorBuilder {
            inner: Inner {
                storage,
                default_probe: probe,
                probes: HashMap::new(),
                options: HealthCheckOptions::default(),
                protocol_options: HashMap::new(),
                policy: HealthPolicy::default(),
                concurrency: DEFAULT_CONCURRENCY,
                deadline: None,
                skip_leased: false,
                observers: Vec::new(),
                pool_names: PoolNames::default(),
            },
        }
    }

    /// The storage results are persisted into.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn ProxyStorage> {
        &self.inner.storage
    }

    /// Checks one proxy and persists the result.
    pub async fn check(&self, proxy: &Proxy) -> Result<HealthCheck, PharoxError> {
        self.inner.check(proxy).await
    }

    /// Sweeps every proxy of a pool (see [`sweep`](Self::sweep)).
    pub async fn sweep_pool(&self, pool_name: &str) -> Result<Sweep, PharoxError> {
        let pool = self.inner.storage.get_pool_by_name(pool_name).await?;
        if !self.inner.observers.is_empty() {
            self.inner
                .pool_names
                .remember(pool.id, &pool.name.as_str().into());
        }
        let proxies = self.inner.storage.list_proxies(pool.id).await?;
        Ok(self.sweep(proxies))
    }

    /// Checks `proxies` with bounded concurrency, persisting each result;
    /// the returned stream yields them as they finish. The sweep stops at
    /// the overall deadline, if one is set. Must be called inside a tokio
    /// runtime.
    ///
    /// Takes anything that becomes an `Arc<[Proxy]>` (a `Vec<Proxy>`, or a
    /// shared slice to sweep the same proxies again without copying them).
    pub fn sweep(&self, proxies: impl Into<Arc<[Proxy]>>) -> Sweep {
        let mut proxies: Arc<[Proxy]> = proxies.into();
        let mut skipped = 0;
        if self.inner.skip_leased && proxies.iter().any(is_exclusively_leased) {
            let kept: Vec<Proxy> = proxies
                .iter()
                .filter(|p| !is_exclusively_leased(p))
                .cloned()
                .collect();
            skipped = proxies.len() - kept.len();
            proxies = kept.into();
        }
        let total = proxies.len();
        let inner = Arc::clone(&self.inner);
        let (tx, rx) = mpsc::channel(inner.concurrency);
        let deadline_hit = Arc::new(AtomicBool::new(false));
        let hit = Arc::clone(&deadline_hit);
        let span = tracing::info_span!(
            "pharox.health.sweep",
            proxies = total,
            concurrency = inner.concurrency
        );
        let (stop, stopped) = watch::channel(false);
        let driver = tokio::spawn(drive_sweep(inner, proxies, tx, hit, stopped).instrument(span));
        Sweep {
            results: rx,
            driver: driver.abort_handle(),
            total,
            skipped,
            deadline_hit,
            stop,
        }
    }
}

/// Whether `proxy` is held exclusively by a worker right now: it takes one
/// lease at a time (`max_concurrency` 1) and has it. Probing it would send
/// traffic through a proxy a worker counts on having to itself. Judged on
/// the proxies as listed when the sweep starts.
fn is_exclusively_leased(proxy: &Proxy) -> bool {
    proxy.max_concurrency == Some(1) && proxy.current_leases >= 1
}

/// Runs a sweep as `concurrency` lanes, each taking the next unchecked proxy
/// until none is left: one task per lane rather than per proxy, and results
/// go straight from the lanes to the stream. Aborting the driver (dropping
/// the [`Sweep`]) drops the lanes and the probes in flight with them.
async fn drive_sweep(
    inner: Arc<Inner>,
    proxies: Arc<[Proxy]>,
    tx: mpsc::Sender<Result<HealthCheck, PharoxError>>,
    deadline_hit: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut lanes = JoinSet::new();
    for _ in 0..inner.concurrency.min(proxies.len()) {
        let (inner, proxies, next, tx, mut stopped) = (
            Arc::clone(&inner),
            Arc::clone(&proxies),
            Arc::clone(&next),
            tx.clone(),
            stopped.clone(),
        );
        lanes.spawn(async move {
            let mut counts = SweepSummary::default();
            loop {
                // Copied out: a borrow held on would block `stop`.
                let stop = *stopped.borrow();
                if stop {
                    break;
                }
                let Some(proxy) = proxies.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                let result = tokio::select! {
                    biased;
                    // Stopped (or the sweep dropped): abandon the probe.
                    _ = stopped.wait_for(|stop| *stop) => break,
                    result = inner.probe(proxy) => result,
                };
                let item = inner.apply(proxy, result).await;
                counts.count(&item);
                if tx.send(item).await.is_err() {
                    break; // the consumer dropped the stream
                }
            }
            counts
        });
    }
    // Held until the summary is logged: the stream ends when the last
    // sender goes, and a consumer that drops the sweep at the end of the
    // stream aborts this task, which would lose the log line.
    let keep_stream_open = tx;
    let mut summary = SweepSummary::default();
    let deadline = async {
        match inner.deadline {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = lanes.join_next() => match joined {
                Some(Ok(counts)) => summary.merge(&counts),
                Some(Err(e)) => tracing::error!(error = %e, "a sweep lane failed"),
                None => break,
            },
            () = &mut deadline => {
                deadline_hit.store(true, Ordering::Release);
                tracing::warn!(
                    unchecked = proxies.len().saturating_sub(next.load(Ordering::Relaxed)) + lanes.len(),
                    "sweep deadline reached"
                );
                break;
            }
        }
    }
    tracing::info!(
        checked = summary.checked,
        active = summary.active,
        slow = summary.slow,
        inactive = summary.inactive,
        banned = summary.banned,
        vanished = summary.vanished,
        failed = summary.failed,
        not_persisted = summary.not_persisted,
        "sweep finished"
    );
    drop(keep_stream_open);
}

/// Configures a [`HealthOrchestrator`].
#[must_use]
pub struct HealthOrchestratorBuilder {
    inner: Inner,
}

impl HealthOrchestratorBuilder {
    /// Options for every protocol without its own (default:
    /// [`HealthCheckOptions::default`]).
    pub fn options(mut self, options: HealthCheckOptions) -> Self {
        self.inner.options = options;
        self
    }

    /// Options for one protocol, replacing the defaults for it.
    pub fn protocol_options(
        mut self,
        protocol: ProxyProtocol,
        options: HealthCheckOptions,
    ) -> Self {
        self.inner.protocol_options.insert(protocol, options);
        self
    }

    /// A probe for one protocol, replacing the default probe for it.
    pub fn protocol_probe(mut self, protocol: ProxyProtocol, probe: Arc<dyn HealthProbe>) -> Self {
        self.inner.probes.insert(protocol, probe);
        self
    }

    /// What results do to a proxy's status (default: inactive after 3
    /// consecutive failures).
    pub fn policy(mut self, policy: HealthPolicy) -> Self {
        self.inner.policy = policy;
        self
    }

    /// Probes in flight at once (default 32).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.inner.concurrency = concurrency;
        self
    }

    /// Leaves out proxies with an exclusive lease: `max_concurrency` 1 and
    /// a lease held, as listed when the sweep starts (default: check them).
    pub fn skip_leased(mut self, skip: bool) -> Self {
        self.inner.skip_leased = skip;
        self
    }

    /// Adds an observer of every check (for metrics: `MetricsObserver`
    /// with the `metrics` feature).
    pub fn observer(mut self, observer: Arc<dyn HealthObserver>) -> Self {
        self.inner.observers.push(observer);
        self
    }

    /// Stops a sweep after this long, whatever is left.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.inner.deadline = Some(deadline);
        self
    }

    /// Validates the options and builds the orchestrator.
    pub fn build(self) -> Result<HealthOrchestrator, PharoxError> {
        if self.inner.concurrency == 0 {
            return Err(ValidationError::new("health.concurrency", "must be at least 1").into());
        }
        if self.inner.deadline.is_some_and(|d| d.is_zero()) {
            return Err(
                ValidationError::new("health.deadline", "must be greater than zero").into(),
            );
        }
        self.inner.options.validate()?;
        for (protocol, options) in &self.inner.protocol_options {
            options
                .validate()
                .map_err(|e| e.within(&format!("protocol_options.{protocol}")))?;
        }
        Ok(HealthOrchestrator {
            inner: Arc::new(self.inner),
        })
    }
}

/// A probe that touches no network: it answers after a fixed latency with a
/// fixed verdict. For benchmarks (`pharox bench health`) and tests of
/// everything around the probe.
#[derive(Debug, Clone)]
pub struct SimulatedProbe {
    latency: Duration,
    verdict: ProxyStatus,
}

impl SimulatedProbe {
    /// Answers "active" after `latency`.
    #[must_use]
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            verdict: ProxyStatus::Active,
        }
    }

    /// Answers with this verdict instead (active, slow or inactive).
    #[must_use]
    pub fn with_verdict(mut self, verdict: ProxyStatus) -> Self {
        self.verdict = verdict;
        self
    }
}

#[async_trait]
impl HealthProbe for SimulatedProbe {
    async fn probe(&self, proxy: &Proxy, _options: &HealthCheckOptions) -> HealthCheckResult {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let failed = self.verdict == ProxyStatus::Inactive;
        HealthCheckResult {
            proxy_id: proxy.id,
            protocol: proxy.protocol,
            status: self.verdict,
            reachable: !failed,
            latency_ms: (!failed).then_some(self.latency.as_secs_f64() * 1000.0),
            attempts: 1,
            http_status: (!failed).then_some(204),
            checked_at: now_micros(),
            error: failed.then(|| "simulated failure".to_owned()),
        }
    }
}
