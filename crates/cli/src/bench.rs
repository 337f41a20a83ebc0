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

mod report;
mod seed;
mod worker;

use report::{print_json, print_report};
use seed::{prepare, seed_only};
use worker::{progress_bar, tick, worker};

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

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

fn new_histogram() -> Result<Histogram<u64>, CliError> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| CliError::Other(format!("latency histogram: {e}")))
}

impl Plan {
    fn stop_after(&self) -> Option<Duration> {
        match self.stop {
            Stop::After(d) => Some(d),
            Stop::Iterations(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
