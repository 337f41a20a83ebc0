//! `pharox bench`: concurrent workers acquire and release leases as fast as
//! they can; we report throughput, acquire latency and the highest number of
//! simultaneous leases seen (which must never exceed the pool's capacity).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use pharox::{
    LeaseRequest, MemoryStorage, PharoxError, PreparedRequest, ProxyFilter, ProxyId, ProxyManager,
    ProxyPool, ProxyStorage, Selector, StorageError,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{CliError, error_kind};
use crate::limits;
use crate::output::{self, OutputError, errln, outln};
use crate::signals::{Signal, Signals};

/// The consumer the benchmark's leases are held by.
const BENCH_CONSUMER: &str = "pharox-bench";

/// Flags of `pharox bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    kind: Option<BenchKind>,
    /// Proxies seeded into the benchmark pool (1 to 10,000,000).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Concurrent workers (tokio tasks) acquiring and releasing (1 to 100,000).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Total acquire+release pairs to run (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    iterations: Option<u64>,
    /// Seconds to run, at most 30 days (2,592,000) [default: 5].
    #[arg(long)]
    duration: Option<f64>,
    /// first_available, least_used, round_robin, lowest_latency or random.
    #[arg(long, default_value = "first_available", value_parser = parse_selector)]
    selector: Selector,
    /// A filter tree in JSON, e.g. '{"country":"DE","any_of":[{"asn":64500},{"asn":64501}]}'.
    #[arg(long)]
    filter: Option<String>,
    /// Leases each proxy can carry at once.
    #[arg(long, default_value_t = 1)]
    max_concurrency: u32,
    /// Milliseconds each lease is held before release.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Print one JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
    /// Exit 0 even if operations failed (they are counted and reported all
    /// the same).
    #[arg(long)]
    allow_errors: bool,
    /// Run against PostgreSQL at this URL instead of in memory.
    #[cfg(feature = "postgres")]
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<crate::database_url::DatabaseUrl>,
    /// Apply the schema first if it is missing (PostgreSQL only).
    #[cfg(feature = "postgres")]
    #[arg(long, requires = "database_url")]
    migrate: bool,
    /// The benchmark pool's name, for --seed-only and --reuse-pool (without
    /// them each run seeds a pool of a random name and removes it).
    #[arg(long)]
    pool: Option<String>,
    /// Seed the pool named by --pool (--proxies, --max-concurrency), print
    /// what was seeded, keep it and exit without measuring.
    #[arg(long, conflicts_with_all = ["reuse_pool", "iterations", "duration"])]
    seed_only: bool,
    /// Measure on the pool named by --pool, seeded before with --seed-only,
    /// instead of seeding one; it must hold exactly --proxies proxies of
    /// --max-concurrency each, and it is kept after the run.
    #[arg(long)]
    reuse_pool: bool,
    /// Acquire under a sticky session, one of N distinct keys chosen at
    /// random per operation (0: no session).
    #[arg(long, default_value_t = 0)]
    session_keys: usize,
    /// Acquire for a target site, one of N distinct host names chosen at
    /// random per operation (0: no target).
    #[arg(long, default_value_t = 0)]
    target_count: usize,
    /// Record Prometheus metrics as `pharox serve` does (its observer and
    /// registry, histogram upkeep every 5 s), to measure what they cost.
    #[arg(long)]
    metrics: bool,
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Health-check throughput with a simulated probe and the in-memory storage.
    Health(crate::bench_health::HealthBenchArgs),
    /// The HTTP lease service over loopback: acquire+release pairs per
    /// second next to GET /healthz, in memory or on PostgreSQL.
    Serve(crate::bench_serve::ServeBenchArgs),
}

fn parse_selector(value: &str) -> Result<Selector, String> {
    value
        .parse()
        .map_err(|e: pharox::ValidationError| e.reason.into_owned())
}

/// The shape of a run, checked.
struct Plan {
    proxies: usize,
    workers: usize,
    stop: Stop,
    max_concurrency: u32,
    hold: Duration,
    filter: ProxyFilter,
    selector: Selector,
    pool: PoolUse,
    session_keys: usize,
    target_count: usize,
    metrics: bool,
}

/// Which pool a run measures on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PoolUse {
    /// A pool of a fresh name, seeded for the run and removed after it.
    Fresh,
    /// `--seed-only`: seed this pool, keep it, measure nothing.
    SeedOnly(String),
    /// `--reuse-pool`: measure on this pool as seeded, keep it.
    Reuse(String),
}

enum Stop {
    Iterations(u64),
    After(Duration),
}

impl BenchArgs {
    fn plan(&self) -> Result<Plan, CliError> {
        let usage = |flag, reason: &str| CliError::Usage {
            flag,
            reason: reason.to_owned(),
        };
        limits::count("proxies", self.proxies, limits::MAX_PROXIES)?;
        limits::count("workers", self.workers, limits::MAX_WORKERS)?;
        for (flag, n) in [
            ("session-keys", self.session_keys),
            ("target-count", self.target_count),
        ] {
            if n > limits::MAX_BENCH_KEYS {
                return Err(usage(
                    flag,
                    &format!("must be at most {}", limits::MAX_BENCH_KEYS),
                ));
            }
        }
        if self.max_concurrency == 0 {
            return Err(usage("max-concurrency", "must be at least 1"));
        }
        let stop = match (self.iterations, self.duration) {
            (Some(0), _) => return Err(usage("iterations", "must be at least 1")),
            (Some(n), _) => Stop::Iterations(n),
            (None, secs) => Stop::After(limits::seconds(
                "duration",
                secs.unwrap_or(DEFAULT_DURATION_SECS),
                limits::MAX_DURATION_SECS,
            )?),
        };
        let filter = match &self.filter {
            Some(json) => ProxyFilter::from_json(json).map_err(|e| CliError::Usage {
                flag: "filter",
                reason: e.to_string(),
            })?,
            None => ProxyFilter::new(),
        };
        let named = |flag: &'static str| match &self.pool {
            Some(name) if !name.trim().is_empty() => Ok(name.clone()),
            _ => Err(usage(flag, "needs --pool NAME (the pool to seed or reuse)")),
        };
        let pool = match (self.seed_only, self.reuse_pool) {
            (true, _) => PoolUse::SeedOnly(named("seed-only")?),
            (false, true) => PoolUse::Reuse(named("reuse-pool")?),
            (false, false) if self.pool.is_some() => {
                return Err(usage(
                    "pool",
                    "is only used with --seed-only or --reuse-pool",
                ));
            }
            (false, false) => PoolUse::Fresh,
        };
        if pool != PoolUse::Fresh && !self.uses_database() {
            let flag = if self.seed_only {
                "seed-only"
            } else {
                "reuse-pool"
            };
            return Err(usage(
                flag,
                "needs --database-url: an in-memory pool does not outlive the command",
            ));
        }
        Ok(Plan {
            pool,
            proxies: self.proxies,
            workers: self.workers,
            stop,
            max_concurrency: self.max_concurrency,
            hold: Duration::from_millis(self.hold_ms),
            filter,
            selector: self.selector,
            session_keys: self.session_keys,
            target_count: self.target_count,
            metrics: self.metrics,
        })
    }
}

impl BenchArgs {
    /// Whether the run goes to PostgreSQL.
    fn uses_database(&self) -> bool {
        #[cfg(feature = "postgres")]
        {
            self.database_url.is_some()
        }
        #[cfg(not(feature = "postgres"))]
        {
            false
        }
    }
}

/// Seconds a run lasts without `--iterations` or `--duration`.
const DEFAULT_DURATION_SECS: f64 = 5.0;

/// When a timed run stops: `after` past `started`, or a usage error if that
/// instant cannot be represented.
fn deadline(started: Instant, after: Option<Duration>) -> Result<Option<Instant>, CliError> {
    after
        .map(|d| {
            started.checked_add(d).ok_or_else(|| CliError::Usage {
                flag: "duration",
                reason: "is too far in the future for this system's clock".to_owned(),
            })
        })
        .transpose()
}

/// How long stopped workers may take to finish the operation they are in
/// (and release what they hold) before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long removing the seeded pool may take. Deleting it cascades to all
/// its proxies and leases, so a big pool on a slow server takes a while;
/// an unreachable server must not keep the command from ending.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the benchmark.
///
/// Whatever ends the run (it finished, an operation or the setup failed,
/// SIGINT or SIGTERM arrived, stdout is closed), the pool it seeded is
/// removed before the command returns, and with it its leases.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    match args.kind {
        Some(BenchKind::Health(health)) => return crate::bench_health::run(health).await,
        Some(BenchKind::Serve(serve)) => return crate::bench_serve::run(serve).await,
        None => {}
    }
    let plan = args.plan()?;
    // Before anything exists that would need tidying up: from here on
    // SIGINT and SIGTERM reach the code below instead of ending the process.
    let mut signals = Signals::install()?;
    let target = tokio::select! {
        target = open_storage(&args, &plan) => target?,
        signal = signals.recv() => return Err(CliError::Interrupted(signal)),
    };
    if let PoolUse::SeedOnly(_) = plan.pool {
        return seed_only(&plan, &target, &mut signals).await;
    }
    let outcome = bench(&plan, &target, &mut signals).await;
    let cleanup = match plan.pool {
        PoolUse::Fresh => remove_pool(&target, &mut signals).await,
        PoolUse::SeedOnly(_) | PoolUse::Reuse(_) => Ok(()),
    };
    let mut failures = Vec::new();
    match outcome {
        Ok(Outcome::Measured(measured)) => {
            let printed = if args.json {
                print_json(&plan, &target, &measured)
            } else {
                print_report(&plan, &target, &measured)
            };
            failures.extend(measured.over_lease());
            failures.extend(cleanup.err());
            if measured.tally.errors > 0 && !args.allow_errors {
                failures.push(CliError::OperationsFailed {
                    errors: measured.tally.errors,
                    first: measured.tally.first_error_message().to_owned(),
                });
            }
            failures.extend(printed.err().map(CliError::from));
        }
        Ok(Outcome::Interrupted(signal)) => {
            failures.push(CliError::Interrupted(signal));
            failures.extend(cleanup.err());
        }
        Err(e) => {
            failures.push(e);
            failures.extend(cleanup.err());
        }
    }
    first_failure(failures)
}

/// The first of `failures` is the command's error; the others are said on
/// stderr before it (but not a closed stdout, nor a second signal).
fn first_failure(failures: Vec<CliError>) -> Result<(), CliError> {
    let mut failures = failures.into_iter();
    let Some(first) = failures.next() else {
        return Ok(());
    };
    for also in failures {
        if !also.is_quiet() && !matches!(also, CliError::Interrupted(_)) {
            errln!("error: {also}");
        }
    }
    Err(first)
}

/// Where the benchmark runs.
struct Target {
    storage: Arc<dyn ProxyStorage>,
    name: &'static str,
    pool_name: String,
}

async fn open_storage(args: &BenchArgs, plan: &Plan) -> Result<Target, CliError> {
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.database_url {
        let storage = crate::migrate::open_for_bench(url, plan.workers, args.migrate).await?;
        let pool_name = match &plan.pool {
            PoolUse::SeedOnly(name) | PoolUse::Reuse(name) => name.clone(),
            // Every lease row stores its pool's name (the Python schema's
            // `lease.pool_name`): 48 random bits keep concurrent runs apart
            // and the rows as long as a real pool name makes them.
            PoolUse::Fresh => format!("bench-{:012x}", uuid::Uuid::new_v4().as_u128() >> 80),
        };
        return Ok(Target {
            storage,
            name: "postgres",
            pool_name,
        });
    }
    let _ = args;
    Ok(Target {
        storage: Arc::new(MemoryStorage::new()),
        name: "memory",
        pool_name: "bench".to_owned(),
    })
}

/// Removes the seeded pool (by name, so also when the run stopped before it
/// knew the pool's id), within [`CLEANUP_TIMEOUT`]. A pool that is not
/// there was never created. Another signal gives up on it at once.
async fn remove_pool(target: &Target, signals: &mut Signals) -> Result<(), CliError> {
    let storage = &target.storage;
    let remove = async {
        let pool = storage.get_pool_by_name(&target.pool_name).await?;
        storage.delete_pool(pool.id).await
    };
    let failed = |reason: String| CliError::Cleanup {
        pool: target.pool_name.clone(),
        reason,
    };
    tokio::select! {
        removed = tokio::time::timeout(CLEANUP_TIMEOUT, remove) => match removed {
            Ok(Ok(()) | Err(StorageError::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "gave up after {} s",
                CLEANUP_TIMEOUT.as_secs()
            ))),
        },
        signal = signals.recv() => {
            errln!("error: {}", failed(format!("{} came first", signal.name())));
            Err(CliError::Interrupted(signal))
        }
    }
}

/// How a run ended, when nothing failed around it.
enum Outcome {
    /// It ran to its end (boxed: a histogram is big).
    Measured(Box<Measurement>),
    /// A signal stopped it; its workers are stopped.
    Interrupted(Signal),
}

/// What a finished run measured.
struct Measurement {
    tally: Tally,
    latency: Histogram<u64>,
    elapsed: Duration,
    capacity: u64,
    max_seen: u64,
    over_leased: u64,
    /// Active leases in the pool once every worker had stopped, before the
    /// pool was removed (a release that never succeeded leaves one); `None`
    /// when the pool's stats could not be read.
    leases_left: Option<u64>,
}

impl Measurement {
    /// The over-lease error, if the run saw one.
    fn over_lease(&self) -> Option<CliError> {
        let (seen, capacity, over) = (self.max_seen, self.capacity, self.over_leased);
        (seen > capacity || over > 0).then(|| {
            CliError::OverLease(format!(
                "{seen} simultaneous leases for capacity {capacity}; {over} leases over a proxy's max_concurrency"
            ))
        })
    }

    /// Acquire attempts: a failed release belongs to a hit.
    fn operations(&self) -> u64 {
        let t = &self.tally;
        t.hits + t.misses + t.errors - t.release_errors
    }

    /// Acquire+release pairs completed per second.
    fn pairs_per_sec(&self) -> f64 {
        (self.tally.hits - self.tally.release_errors) as f64 / self.elapsed.as_secs_f64()
    }

    /// The acquire latency at quantile `q`, in microseconds.
    fn percentile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Shared state of the workers.
struct Run {
    manager: ProxyManager,
    /// The requests the workers send: one, or one per session key / target
    /// (`--session-keys`, `--target-count`), drawn at random per operation.
    requests: Vec<PreparedRequest>,
    hold: Duration,
    /// How many workers run.
    workers: usize,
    /// Set when the run is over; workers check it before every operation.
    stop: AtomicBool,
    /// The same, for workers holding a lease (`--hold-ms`) to wait on.
    stopped: watch::Sender<bool>,
    progress: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Leases held per proxy right now, to catch an over-leased proxy.
    per_proxy: HashMap<ProxyId, AtomicU32, BuildHasherDefault<IdHasher>>,
    max_concurrency: u32,
    capacity: u64,
    over_leased: AtomicU64,
    /// The metrics' histogram upkeep, with `--metrics`.
    _upkeep: Option<AbortOnDrop>,
}

impl Run {
    /// Tells every worker to stop after its current operation.
    fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.send_replace(true);
    }
}

/// What workers counted.
#[derive(Default)]
struct Tally {
    hits: u64,
    misses: u64,
    /// Failed acquires and failed releases.
    errors: u64,
    /// Of `errors`, the failed releases (each of a lease that was a hit).
    release_errors: u64,
    errors_by_kind: BTreeMap<&'static str, u64>,
    /// The earliest failure: when, and its message.
    first_error: Option<(Instant, String)>,
}

impl Tally {
    fn record_error(&mut self, error: &PharoxError) {
        self.errors += 1;
        *self.errors_by_kind.entry(error_kind(error)).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some((Instant::now(), error.to_string()));
        }
    }

    fn merge(&mut self, other: Self) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors += other.errors;
        self.release_errors += other.release_errors;
        for (kind, count) in other.errors_by_kind {
            *self.errors_by_kind.entry(kind).or_default() += count;
        }
        self.first_error = match (self.first_error.take(), other.first_error) {
            (Some(mine), Some(theirs)) => Some(if theirs.0 < mine.0 { theirs } else { mine }),
            (mine, theirs) => mine.or(theirs),
        };
    }

    fn first_error(&self) -> Option<&str> {
        self.first_error
            .as_ref()
            .map(|(_, message)| message.as_str())
    }

    fn first_error_message(&self) -> &str {
        self.first_error().unwrap_or("(none)")
    }
}

/// Seeds the pool and prepares the request the workers send.
async fn prepare(plan: &Plan, target: &Target) -> Result<Run, CliError> {
    let storage = &target.storage;
    let proxies = match plan.pool {
        PoolUse::Reuse(_) => seeded_proxies(plan, target).await?,
        PoolUse::Fresh | PoolUse::SeedOnly(_) => seed_pool(plan, target).await?,
    };
    let per_proxy = proxies.iter().map(|p| (p.id, AtomicU32::new(0))).collect();
    let mut manager = ProxyManager::from_arc(Arc::clone(storage));
    let mut upkeep = None;
    if plan.metrics {
        let metrics = pharox_server::ServerMetrics::new();
        manager = manager.with_observer(metrics.observer());
        upkeep = Some(tokio::spawn(pharox_server::metrics::upkeep(metrics)).abort_handle());
    }
    // Validated and with its consumer created before the clock starts; the
    // workers then acquire the way a worker loop should.
    let variants = plan.session_keys.max(plan.target_count).max(1);
    let mut requests = Vec::with_capacity(variants);
    for i in 0..variants {
        let mut request = LeaseRequest::new(target.pool_name.clone())
            .consumer(BENCH_CONSUMER)
            .ttl(Duration::from_secs(300))
            .filter(plan.filter.clone())
            .selector(plan.selector);
        if plan.session_keys > 0 {
            request = request.session(format!("bench-session-{}", i % plan.session_keys));
        }
        if plan.target_count > 0 {
            request = request.target(format!("site-{}.bench.test", i % plan.target_count));
        }
        requests.push(manager.prepare(request).await?);
    }
    Ok(Run {
        manager,
        requests,
        hold: plan.hold,
        workers: plan.workers,
        stop: AtomicBool::new(false),
        stopped: watch::Sender::new(false),
        progress: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        per_proxy,
        max_concurrency: plan.max_concurrency,
        capacity: plan.proxies as u64 * u64::from(plan.max_concurrency),
        over_leased: AtomicU64::new(0),
        _upkeep: upkeep.map(AbortOnDrop),
    })
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Creates the pool and adds `--proxies` proxies to it.
async fn seed_pool(plan: &Plan, target: &Target) -> Result<Vec<pharox::Proxy>, CliError> {
    let storage = &target.storage;
    let pool = storage
        .save_pool(&ProxyPool::new(target.pool_name.clone())?)
        .await?;
    let proxies = crate::seed::proxies(pool.id, plan.proxies, plan.max_concurrency)?;
    for chunk in proxies.chunks(1000) {
        storage.add_proxies(chunk).await?;
    }
    Ok(proxies)
}

/// The proxies of the pool `--reuse-pool` names, if it is what the flags
/// describe: refused (naming the flag) when the pool is missing, holds
/// another number of proxies, or proxies of another capacity, since the
/// run's capacity and over-lease checks are computed from the flags.
async fn seeded_proxies(plan: &Plan, target: &Target) -> Result<Vec<pharox::Proxy>, CliError> {
    let storage = &target.storage;
    let usage = |flag, reason: String| CliError::Usage { flag, reason };
    let pool = match storage.get_pool_by_name(&target.pool_name).await {
        Ok(pool) => pool,
        Err(StorageError::NotFound { .. }) => {
            return Err(usage(
                "reuse-pool",
                format!(
                    "no pool named {:?}: seed it first with --seed-only --pool {0:?}",
                    target.pool_name
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let proxies = storage.list_proxies(pool.id).await?;
    if proxies.len() != plan.proxies {
        return Err(usage(
            "proxies",
            format!(
                "is {} but pool {:?} holds {} proxies (--reuse-pool measures the pool as seeded)",
                plan.proxies,
                target.pool_name,
                proxies.len()
            ),
        ));
    }
    if let Some(other) = proxies
        .iter()
        .find(|p| p.max_concurrency != Some(plan.max_concurrency))
    {
        return Err(usage(
            "max-concurrency",
            format!(
                "is {} but pool {:?} has proxies of {} (--reuse-pool measures the pool as seeded)",
                plan.max_concurrency,
                target.pool_name,
                other
                    .max_concurrency
                    .map_or_else(|| "unlimited".to_owned(), |m| m.to_string())
            ),
        ));
    }
    Ok(proxies)
}

/// `--seed-only`: seeds the pool, says so, keeps it.
async fn seed_only(plan: &Plan, target: &Target, signals: &mut Signals) -> Result<(), CliError> {
    let started = Instant::now();
    tokio::select! {
        seeded = seed_pool(plan, target) => { seeded?; }
        signal = signals.recv() => return Err(CliError::Interrupted(signal)),
    }
    output::print(|stdout| {
        outln!(
            stdout,
            "pharox bench: seeded pool {} with {} proxies x {} in {:.2} s; kept for --reuse-pool --pool {}",
            target.pool_name,
            plan.proxies,
            plan.max_concurrency,
            started.elapsed().as_secs_f64(),
            target.pool_name
        );
        Ok(())
    })
    .map_err(CliError::from)
}

async fn bench(plan: &Plan, target: &Target, signals: &mut Signals) -> Result<Outcome, CliError> {
    let run = tokio::select! {
        run = prepare(plan, target) => Arc::new(run?),
        signal = signals.recv() => return Ok(Outcome::Interrupted(signal)),
    };
    let empty_histogram = new_histogram()?;
    let progress = progress_bar(&plan.stop);
    let started = Instant::now();
    let deadline = deadline(started, plan.stop_after())?;
    let mut workers = JoinSet::new();
    for index in 0..plan.workers {
        let quota = match plan.stop {
            Stop::Iterations(total) => {
                let workers = plan.workers as u64;
                Some(total / workers + u64::from((index as u64) < total % workers))
            }
            Stop::After(_) => None,
        };
        workers.spawn(worker(
            Arc::clone(&run),
            quota,
            deadline,
            empty_histogram.clone(),
        ));
    }
    let ticker = tokio::spawn(tick(Arc::clone(&run), plan.stop_after(), progress.clone()));

    let mut tally = Tally::default();
    let mut latency = empty_histogram;
    let mut ended = Ok(None);
    while let Ok(None) = ended {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok((worker_tally, histogram))) => {
                    tally.merge(worker_tally);
                    if let Err(e) = latency.add(&histogram) {
                        ended = Err(CliError::Other(format!("latency histogram: {e}")));
                    }
                }
                Some(Err(e)) => {
                    ended = Err(CliError::Other(format!("a benchmark worker failed: {e}")));
                }
            },
            signal = signals.recv() => ended = Ok(Some(signal)),
        }
    }
    let elapsed = started.elapsed();
    run.halt();
    // Workers still running were stopped: they finish the operation they
    // are in and release what they hold, or are aborted after the grace
    // period (the pool's removal takes their leases with it).
    let finishing = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE, finishing).await.is_err() {
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    ticker.abort();
    progress.finish_and_clear();
    if let Some(signal) = ended? {
        return Ok(Outcome::Interrupted(signal));
    }
    let leases_left = match target.storage.pool_stats(&target.pool_name).await {
        Ok(stats) => Some(stats.total_leases),
        Err(e) => {
            errln!("warning: cannot count the leases left after the run: {e}");
            None
        }
    };
    Ok(Outcome::Measured(Box::new(Measurement {
        leases_left,
        tally,
        latency,
        elapsed,
        capacity: run.capacity,
        max_seen: run.max_in_flight.load(Ordering::Relaxed),
        over_leased: run.over_leased.load(Ordering::Relaxed),
    })))
}

/// `--json`: one object, on one line.
fn print_json(plan: &Plan, target: &Target, m: &Measurement) -> Result<(), OutputError> {
    let out = json!({
        "storage": target.name,
        "workers": plan.workers,
        "session_keys": plan.session_keys,
        "target_count": plan.target_count,
        "metrics": plan.metrics,
        "proxies": plan.proxies,
        "operations": m.operations(),
        "ops_per_sec": round2(m.pairs_per_sec()),
        "hits": m.tally.hits,
        "misses": m.tally.misses,
        "errors": m.tally.errors,
        "first_error": m.tally.first_error(),
        "errors_by_kind": m.tally.errors_by_kind,
        "capacity": m.capacity,
        "max_concurrent_leases_seen": m.max_seen,
        "leases_left": m.leases_left,
        "latency_us": {
            "p50": round2(m.percentile_us(0.50)),
            "p95": round2(m.percentile_us(0.95)),
            "p99": round2(m.percentile_us(0.99)),
        },
    });
    output::print(|stdout| {
        outln!(stdout, "{out}");
        Ok(())
    })
}

/// The report for people.
fn print_report(plan: &Plan, target: &Target, m: &Measurement) -> Result<(), OutputError> {
    let t = &m.tally;
    output::print(|stdout| {
        outln!(
            stdout,
            "pharox bench: {} storage, {} proxies x {} = capacity {}, {} workers, {}, {:.2} s",
            target.name,
            plan.proxies,
            plan.max_concurrency,
            m.capacity,
            plan.workers,
            plan.selector,
            m.elapsed.as_secs_f64()
        );
        outln!(
            stdout,
            "  ops/s (acquire+release pairs per second): {:.0}",
            m.pairs_per_sec()
        );
        outln!(
            stdout,
            "  operations {}: hits {}, misses {}, errors {}",
            m.operations(),
            t.hits,
            t.misses,
            t.errors
        );
        outln!(
            stdout,
            "  acquire latency: p50 {:.2} us, p95 {:.2} us, p99 {:.2} us",
            m.percentile_us(0.50),
            m.percentile_us(0.95),
            m.percentile_us(0.99)
        );
        outln!(
            stdout,
            "  max simultaneous leases seen: {} of capacity {}",
            m.max_seen,
            m.capacity
        );
        if let Some(left) = m.leases_left {
            outln!(stdout, "  active leases left after the run: {left}");
        }
        if let Some(first) = t.first_error() {
            let kinds: Vec<String> = t
                .errors_by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            outln!(stdout, "  errors by kind: {}", kinds.join(", "));
            outln!(stdout, "  first error: {first}");
        }
        Ok(())
    })
}

/// Hashes a proxy id by its last eight bytes, which are random in a UUIDv7:
/// the per-proxy check in the hot loop should not cost a SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn new_histogram() -> Result<Histogram<u64>, CliError> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| CliError::Other(format!("latency histogram: {e}")))
}

/// How many operations a worker runs between yields to the scheduler, when
/// workers are as many as the runtime's threads. In-memory calls never
/// suspend, so without the yield the first workers to start would hold every
/// runtime thread and the others would never run. Yielding wakes an idle thread (a context switch),
/// so not too often: 1,024 in-memory operations take about a millisecond.
const YIELD_EVERY: u64 = 1024;

/// Operations faster than this (in-memory ones) are timed one in
/// [`SAMPLE_EVERY`]: two clock reads would cost a fifth of an in-memory pair
/// and measure the harness more than the storage, while a sample still
/// gives the percentiles hundreds of thousands of points a second. Slower
/// ones (a database round trip) are each timed.
const FAST_NANOS: u64 = 20_000;

/// One in how many fast operations is timed: coprime with [`YIELD_EVERY`],
/// so the operation after a yield is not always the one timed.
const SAMPLE_EVERY: u64 = 13;

async fn worker(
    run: Arc<Run>,
    quota: Option<u64>,
    deadline: Option<Instant>,
    mut latency: Histogram<u64>,
) -> (Tally, Histogram<u64>) {
    let mut tally = Tally::default();
    let mut stopped = run.stopped.subscribe();
    let mut done: u64 = 0;
    // A cheap per-worker generator (xorshift) for the request to send: the
    // draw must not cost what an in-memory acquire costs.
    // Each worker its own start, so the workers do not draw in lockstep.
    static NEXT_SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut draw = NEXT_SEED.fetch_add(0x6A09_E667_F3BC_C909, Ordering::Relaxed) | 1;
    let variants = run.requests.len() as u64;
    // With a runtime thread to spare for the others (the progress ticker),
    // a worker need not yield: a yield wakes the idle thread, which then
    // takes the worker over, and its caches with it.
    let share_threads = run.workers >= tokio::runtime::Handle::current().metrics().num_workers();
    // Every operation is timed until one proves fast.
    let mut stride: u64 = 1;
    loop {
        if done > 0 && done.is_multiple_of(YIELD_EVERY) {
            run.progress.fetch_add(YIELD_EVERY, Ordering::Relaxed);
            if share_threads {
                tokio::task::yield_now().await;
            }
        }
        if quota.is_some_and(|quota| done >= quota) || run.stop.load(Ordering::Relaxed) {
            break;
        }
        let started = (stride == 1 || done.is_multiple_of(stride)).then(Instant::now);
        // The clock is read for the latency anyway: checking the deadline
        // here keeps timed runs exact (to a few microseconds when sampling).
        if let Some(started) = started
            && deadline.is_some_and(|d| started >= d)
        {
            run.halt();
            break;
        }
        let request = if variants == 1 {
            &run.requests[0]
        } else {
            draw ^= draw << 13;
            draw ^= draw >> 7;
            draw ^= draw << 17;
            &run.requests[(draw % variants) as usize]
        };
        let outcome = run.manager.acquire_prepared(request).await;
        if let Some(started) = started {
            let nanos = started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
            latency.saturating_record(nanos);
            stride = if nanos < FAST_NANOS { SAMPLE_EVERY } else { 1 };
        }
        match outcome {
            Ok(Some(lease)) => {
                tally.hits += 1;
                // One worker holds one lease at a time: nothing to count.
                if run.workers == 1 {
                    if run.max_in_flight.load(Ordering::Relaxed) == 0 {
                        run.max_in_flight.store(1, Ordering::Relaxed);
                    }
                } else {
                    let held = run.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    if held > run.max_in_flight.load(Ordering::Relaxed) {
                        run.max_in_flight.fetch_max(held, Ordering::Relaxed);
                    }
                }
                // One worker holds one lease at a time, which no proxy's
                // limit can be below: only several workers can over-lease.
                let on_proxy = (run.workers > 1)
                    .then(|| run.per_proxy.get(&lease.proxy_id))
                    .flatten();
                if let Some(count) = on_proxy
                    && count.fetch_add(1, Ordering::Relaxed) + 1 > run.max_concurrency
                {
                    run.over_leased.fetch_add(1, Ordering::Relaxed);
                }
                if !run.hold.is_zero() {
                    // A stop cuts the hold short: the lease is released
                    // all the same.
                    tokio::select! {
                        () = tokio::time::sleep(run.hold) => {}
                        () = until_stopped(&mut stopped) => {}
                    }
                }
                if let Some(count) = on_proxy {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                if run.workers > 1 {
                    run.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                // The manager retries what is worth retrying; what still
                // fails is counted.
                if let Err(e) = run.manager.release(&lease).await {
                    tally.release_errors += 1;
                    tally.record_error(&e);
                }
            }
            Ok(None) => {
                tally.misses += 1;
                // Nothing free: let the holders run before asking again.
                tokio::task::yield_now().await;
            }
            Err(e) => tally.record_error(&e),
        }
        done += 1;
    }
    (tally, latency)
}

/// Returns once the run is halted.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the run is gone, which is a stop too.
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

impl Plan {
    fn stop_after(&self) -> Option<Duration> {
        match self.stop {
            Stop::After(d) => Some(d),
            Stop::Iterations(_) => None,
        }
    }
}

fn progress_bar(stop: &Stop) -> ProgressBar {
    let bar = match stop {
        Stop::After(d) if *d > Duration::from_secs(1) => ProgressBar::new(d.as_millis() as u64),
        Stop::Iterations(n) => ProgressBar::new(*n),
        Stop::After(_) => return ProgressBar::hidden(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}%")
    {
        bar.set_style(style);
    }
    bar
}

/// Keeps the progress bar current; it only appears once the run has lasted
/// a second. (Workers stop themselves: see [`worker`].)
async fn tick(run: Arc<Run>, stop_after: Option<Duration>, bar: ProgressBar) {
    let started = Instant::now();
    let mut shown = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        if !shown && elapsed >= Duration::from_secs(1) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
        match stop_after {
            Some(limit) => bar.set_position(elapsed.min(limit).as_millis() as u64),
            None => bar.set_position(run.progress.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests;
