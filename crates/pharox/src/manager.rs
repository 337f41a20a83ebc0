//! [`ProxyManager`]: acquire, release, renew and scoped leases.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use pharox_domain::{
    ConsumerId, Lease, LeaseId, Outcome, PoolStats, Proxy, ProxyFilter, RetryPolicy, Selector,
    SessionKey, SessionRequest, TargetHost, UsagePolicy, validate_name, validate_ttl,
};
use pharox_ports::{
    AcquireRequest, Clock, ProxyStorage, ReleaseOutcome, StorageError, SystemClock,
};
use tracing::Instrument;

use crate::observe::{AcquireErrorEvent, AcquireEvent, LeaseObserver, OutcomeEvent, ReleaseEvent};
use crate::pool_names::PoolNames;
use crate::release::{ReleaseOnDrop, retry_storage};
use crate::{PharoxError, WithLeaseError};

mod release;
mod scoped;

/// The consumer name used when a request names none.
pub const DEFAULT_CONSUMER: &str = "default";
/// The lease time-to-live used when a request sets none: 300 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// How [`ProxyManager::release`] and [`ProxyManager::renew`] try again
/// after a retryable storage failure, by default: 10 attempts in all,
/// waiting 20 ms, then twice as long each time up to 1 s (4.26 s of waiting
/// at most). Both calls are idempotent, so trying again is always safe; a
/// release that gives up leaves the lease to expire at its TTL.
#[must_use]
pub fn default_release_retry() -> RetryPolicy {
    RetryPolicy::new(
        10,
        Duration::from_millis(20),
        2.0,
        Some(Duration::from_secs(1)),
    )
    .unwrap_or_default()
}

/// What to lease: a pool, and optionally who, for how long, which proxies
/// and how to choose.
///
/// ```
/// use std::time::Duration;
/// use pharox::{LeaseRequest, ProxyFilter, Selector};
/// let request = LeaseRequest::new("residential-eu")
///     .consumer("crawler-7")
///     .ttl(Duration::from_secs(60))
///     .filter(ProxyFilter::new().country("DE"))
///     .selector(Selector::LeastUsed)
///     .session("checkout-42")
///     .target("shop.example");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct LeaseRequest {
    pool: String,
    consumer: Option<String>,
    ttl: Option<Duration>,
    filter: ProxyFilter,
    selector: Selector,
    session: Option<String>,
    session_ttl: Option<Duration>,
    target: Option<String>,
}

impl LeaseRequest {
    /// Any proxy of `pool`, for the default consumer and TTL.
    pub fn new(pool: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            consumer: None,
            ttl: None,
            filter: ProxyFilter::default(),
            selector: Selector::default(),
            session: None,
            session_ttl: None,
            target: None,
        }
    }

    /// Leases under the sticky session `key`: the proxy the session used
    /// last while it still qualifies, else a new one the session moves to
    /// (see [`ProxyStorage::acquire`]). Checked when the request is prepared.
    pub fn session(mut self, key: impl Into<String>) -> Self {
        self.session = Some(key.into());
        self
    }

    /// How long the session is remembered after this use (default: the
    /// usage policy's `session_ttl`).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = Some(ttl);
        self
    }

    /// The site the lease is for (a host name, compared case-insensitively):
    /// proxies banned for it are skipped. Checked when the request is
    /// prepared.
    pub fn target(mut self, host: impl Into<String>) -> Self {
        self.target = Some(host.into());
        self
    }

    /// Leases on behalf of this consumer (created on first use).
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Holds the lease this long unless released or renewed.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Only proxies matching this filter.
    pub fn filter(mut self, filter: ProxyFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Chooses among matching proxies this way.
    pub fn selector(mut self, selector: Selector) -> Self {
        self.selector = selector;
        self
    }

    /// The pool asked for.
    #[must_use]
    pub fn pool(&self) -> &str {
        &self.pool
    }
}

impl From<&str> for LeaseRequest {
    fn from(pool: &str) -> Self {
        Self::new(pool)
    }
}

impl From<String> for LeaseRequest {
    fn from(pool: String) -> Self {
        Self::new(pool)
    }
}

/// A [`LeaseRequest`] validated, with its consumer resolved: made by
/// [`ProxyManager::prepare`], used by [`ProxyManager::acquire_prepared`].
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    request: AcquireRequest,
    consumer: String,
}

impl PreparedRequest {
    /// The storage request it stands for.
    #[must_use]
    pub fn request(&self) -> &AcquireRequest {
        &self.request
    }

    /// The consumer's name.
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.consumer
    }
}

/// Settings of a [`ProxyManager`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ManagerConfig {
    default_consumer: String,
    default_ttl: Duration,
    pool_stats_in_events: bool,
    release_retry: RetryPolicy,
    usage_policy: UsagePolicy,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            default_consumer: DEFAULT_CONSUMER.to_owned(),
            default_ttl: DEFAULT_TTL,
            pool_stats_in_events: false,
            release_retry: default_release_retry(),
            usage_policy: UsagePolicy::default(),
        }
    }
}

impl ManagerConfig {
    /// The consumer used when a request names none (default `"default"`).
    pub fn with_default_consumer(mut self, name: impl Into<String>) -> Self {
        self.default_consumer = name.into();
        self
    }

    /// The TTL used when a request sets none (default 300 s).
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Whether observer events carry pool stats. Off by default: on a
    /// database it costs one query per acquire and release.
    pub fn with_pool_stats(mut self, enabled: bool) -> Self {
        self.pool_stats_in_events = enabled;
        self
    }

    /// How release and renew retry retryable storage failures (default
    /// [`default_release_retry`]); one attempt turns retrying off.
    pub fn with_release_retry(mut self, policy: RetryPolicy) -> Self {
        self.release_retry = policy;
        self
    }

    /// How reported outcomes change a proxy's standing, and the default
    /// session TTL (default [`UsagePolicy::default`]).
    pub fn with_usage_policy(mut self, policy: UsagePolicy) -> Self {
        self.usage_policy = policy;
        self
    }

    /// The usage policy in force.
    #[must_use]
    pub fn usage_policy(&self) -> &UsagePolicy {
        &self.usage_policy
    }

    fn validate(&self) -> Result<(), PharoxError> {
        validate_name("default_consumer", &self.default_consumer)?;
        validate_ttl(self.default_ttl)?;
        self.usage_policy.validate()?;
        Ok(())
    }
}

/// Leases proxies from pools on top of any [`ProxyStorage`].
///
/// Cheap to share: wrap it in an `Arc` and hand it to every worker task.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pharox::{LeaseRequest, MemoryStorage, Proxy, ProxyManager, ProxyPool, ProxyProtocol, ProxyStorage};
///
/// let storage = MemoryStorage::new();
/// let pool = storage.save_pool(&ProxyPool::new("eu")?).await?;
/// storage
///     .save_proxy(&Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http).build()?)
///     .await?;
///
/// let manager = ProxyManager::new(storage);
/// let lease = manager.acquire("eu").await?.expect("a free proxy");
/// println!("connect through {}", lease.proxy); // credentials never printed
/// manager.release(&lease).await?;
/// # Ok(()) }
/// ```
pub struct ProxyManager {
    storage: Arc<dyn ProxyStorage>,
    clock: Arc<dyn Clock>,
    config: ManagerConfig,
    observers: Vec<Arc<dyn LeaseObserver>>,
    consumers: RwLock<HashMap<String, ConsumerId>>,
    /// The default consumer's id, read without a lock on the hot path.
    default_consumer_id: OnceLock<ConsumerId>,
    /// Pool names for events that carry only a pool id (used with observers).
    pool_names: PoolNames,
    /// Whether an observer wants pool names read when not cached.
    read_pool_names: bool,
}

impl std::fmt::Debug for ProxyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyManager")
            .field("config", &self.config)
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl ProxyManager {
    /// A manager over `storage` with the default settings.
    pub fn new(storage: impl ProxyStorage + 'static) -> Self {
        Self::from_arc(Arc::new(storage))
    }

    /// A manager over a shared storage.
    pub fn from_arc(storage: Arc<dyn ProxyStorage>) -> Self {
        Self {
            storage,
            clock: Arc::new(SystemClock),
            config: ManagerConfig::default(),
            observers: Vec::new(),
            consumers: RwLock::new(HashMap::new()),
            default_consumer_id: OnceLock::new(),
            pool_names: PoolNames::default(),
            read_pool_names: false,
        }
    }

    /// Replaces the settings; fails if the default consumer or TTL is invalid.
    pub fn with_config(mut self, config: ManagerConfig) -> Result<Self, PharoxError> {
        config.validate()?;
        self.config = config;
        self.default_consumer_id = OnceLock::new();
        Ok(self)
    }

    /// Uses this clock for event timestamps and lease durations.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds an observer of acquire and release events.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn LeaseObserver>) -> Self {
        self.read_pool_names |= observer.wants_pool_names();
        self.observers.push(observer);
        self
    }

    /// The storage underneath.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn ProxyStorage> {
        &self.storage
    }

    /// The id of the consumer `name`, created on first use and then cached.
    pub async fn consumer_id(&self, name: &str) -> Result<ConsumerId, PharoxError> {
        let is_default = name == self.config.default_consumer;
        if is_default && let Some(id) = self.default_consumer_id.get() {
            return Ok(*id);
        }
        if let Some(id) = self.consumers.read().get(name) {
            return Ok(*id);
        }
        validate_name("consumer", name)?;
        let id = self.storage.ensure_consumer(name).await?;
        if is_default {
            let _ = self.default_consumer_id.set(id);
        }
        self.consumers.write().insert(name.to_owned(), id);
        Ok(id)
    }

    /// Leases a proxy, or returns `Ok(None)` when none is free (or the pool
    /// does not exist). Accepts a pool name or a [`LeaseRequest`].
    pub async fn acquire(
        &self,
        request: impl Into<LeaseRequest>,
    ) -> Result<Option<Lease>, PharoxError> {
        let prepared = self.prepare(request).await?;
        self.acquire_prepared(&prepared).await
    }

    /// Validates a request and resolves its consumer once, for workers that
    /// acquire with the same request in a loop: [`acquire_prepared`](Self::acquire_prepared)
    /// then does no validation, lookup or allocation of its own.
    pub async fn prepare(
        &self,
        request: impl Into<LeaseRequest>,
    ) -> Result<PreparedRequest, PharoxError> {
        let request = request.into();
        let consumer = request
            .consumer
            .unwrap_or_else(|| self.config.default_consumer.clone());
        let ttl = request.ttl.unwrap_or(self.config.default_ttl);
        // Validate everything before anything is created (the consumer included).
        validate_name("pool", &request.pool)?;
        validate_ttl(ttl)?;
        request.filter.validate()?;
        let session = match request.session {
            Some(key) => {
                let session = SessionRequest::new(
                    SessionKey::new(key)?,
                    request
                        .session_ttl
                        .unwrap_or(self.config.usage_policy.session_ttl),
                );
                session.validate()?;
                Some(session)
            }
            None => None,
        };
        let target = request.target.as_deref().map(TargetHost::new).transpose()?;
        let consumer_id = self.consumer_id(&consumer).await?;
        Ok(PreparedRequest {
            request: AcquireRequest {
                pool_name: request.pool,
                consumer_id,
                ttl,
                filter: request.filter,
                selector: request.selector,
                lease_id: None,
                session,
                target,
            },
            consumer,
        })
    }

    /// Leases a proxy for a request made by [`prepare`](Self::prepare).
    pub async fn acquire_prepared(
        &self,
        prepared: &PreparedRequest,
    ) -> Result<Option<Lease>, PharoxError> {
        let request = &prepared.request;
        let span = tracing::debug_span!(
            "pharox.acquire",
            pool = %request.pool_name,
            consumer = %prepared.consumer,
            selector = %request.selector,
        );
        let started_at = (!self.observers.is_empty()).then(|| self.clock.now());
        // A storage that answers without waiting spares a boxed future; when
        // nothing observes or traces the call, its answer is the result.
        // Everything else is boxed, so the future of this quick path stays
        // small.
        let answered = {
            let _in = span.enter();
            self.storage.acquire_now(request)
        };
        if self.unwatched(&span)
            && let Some(result) = answered
        {
            return result.map_err(PharoxError::from);
        }
        Box::pin(self.acquire_watched(prepared, span, started_at, answered)).await
    }

    /// Whether nothing observes or traces a call made in `span`.
    fn unwatched(&self, span: &tracing::Span) -> bool {
        self.observers.is_empty() && span.is_disabled() && !tracing::enabled!(tracing::Level::DEBUG)
    }

    /// [`acquire_prepared`](Self::acquire_prepared) with its events, given
    /// the storage's immediate answer if it had one.
    async fn acquire_watched(
        &self,
        prepared: &PreparedRequest,
        span: tracing::Span,
        started_at: Option<time::OffsetDateTime>,
        answered: Option<Result<Option<Lease>, StorageError>>,
    ) -> Result<Option<Lease>, PharoxError> {
        let request = &prepared.request;
        let result = match answered {
            Some(result) => result,
            None => in_span(span, self.storage.acquire(request)).await,
        };
        let lease = match result {
            Ok(lease) => lease,
            Err(e) => {
                let error = PharoxError::from(e);
                if let Some(started_at) = started_at {
                    let event = AcquireErrorEvent {
                        pool_name: &request.pool_name,
                        consumer: &prepared.consumer,
                        error: &error,
                        duration: (self.clock.now() - started_at)
                            .try_into()
                            .unwrap_or_default(),
                    };
                    self.observers
                        .iter()
                        .for_each(|o| o.on_acquire_error(&event));
                }
                return Err(error);
            }
        };
        match &lease {
            Some(lease) => tracing::debug!(
                pool = %request.pool_name,
                lease = %lease.id,
                proxy = %lease.proxy_id,
                session_moved = lease.session.as_ref().map(|s| s.moved),
                "proxy leased"
            ),
            None => tracing::debug!(pool = %request.pool_name, "no proxy available"),
        }

        if let Some(started_at) = started_at {
            if let Some(lease) = &lease {
                self.pool_names.remember(lease.pool_id, &lease.pool_name);
            }
            let stats = self.stats_for_event(&request.pool_name).await;
            let completed_at = self.clock.now();
            let event = AcquireEvent {
                pool_name: &request.pool_name,
                consumer: &prepared.consumer,
                filter: &request.filter,
                selector: request.selector,
                lease: lease.as_ref(),
                started_at,
                completed_at,
                duration: (completed_at - started_at).try_into().unwrap_or_default(),
                pool_stats: stats.as_ref(),
            };
            self.observers.iter().for_each(|o| o.on_acquire(&event));
        }
        Ok(lease)
    }

    /// Like [`acquire`](Self::acquire), but when nothing is free (or the
    /// storage fails in a retryable way) waits per `policy` and tries again,
    /// up to `policy.max_attempts()` attempts in all. Non-retryable errors
    /// return at once.
    pub async fn acquire_with_retry(
        &self,
        request: impl Into<LeaseRequest>,
        policy: &RetryPolicy,
    ) -> Result<Option<Lease>, PharoxError> {
        let request = request.into();
        // Preparing creates the consumer on first use, which can fail in a
        // retryable way too: it is part of every attempt until it succeeds.
        let mut prepared: Option<PreparedRequest> = None;
        let mut attempt = 1;
        loop {
            let outcome = match &prepared {
                Some(ready) => self.acquire_prepared(ready).await,
                None => match self.prepare(request.clone()).await {
                    Ok(mut ready) => {
                        // One lease id for every attempt: an attempt whose
                        // reply was lost left at most this lease, which the
                        // next attempt gets back instead of a second one.
                        ready.request.lease_id = Some(LeaseId::new());
                        self.acquire_prepared(prepared.insert(ready)).await
                    }
                    Err(e) => Err(e),
                },
            };
            let last = attempt >= policy.max_attempts();
            match outcome {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) if last => return Ok(None),
                Err(e) if last || !e.is_retryable() => return Err(e),
                Ok(None) | Err(_) => {}
            }
            let delay = policy.delay_after(attempt);
            tracing::debug!(pool = %request.pool, attempt, ?delay, "acquire retry");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The pool's current stats.
    pub async fn pool_stats(&self, pool_name: &str) -> Result<PoolStats, PharoxError> {
        Ok(self.storage.pool_stats(pool_name).await?)
    }

    /// The name of pool `id` for an event: cached, else read (once per
    /// pool) if `read`.
    async fn pool_name(&self, id: pharox_domain::PoolId, read: bool) -> Option<Arc<str>> {
        match read {
            true => self.pool_names.resolve(&*self.storage, id).await,
            false => self.pool_names.cached(id),
        }
    }

    async fn stats_for_event(&self, pool_name: &str) -> Option<PoolStats> {
        if !self.config.pool_stats_in_events {
            return None;
        }
        match self.storage.pool_stats(pool_name).await {
            Ok(stats) => Some(stats),
            Err(e) => {
                tracing::debug!(pool = %pool_name, error = %e, "pool stats for event unavailable");
                None
            }
        }
    }
}

/// Awaits `future` inside `span`, or bare when no subscriber records the
/// span: the hot paths then skip the wrapper's work on every poll and drop.
async fn in_span<F: Future>(span: tracing::Span, future: F) -> F::Output {
    if span.is_disabled() {
        future.await
    } else {
        future.instrument(span).await
    }
}
