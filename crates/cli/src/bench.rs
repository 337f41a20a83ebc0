//! `pharox bench`: concurrent workers acquire and release leases as fast as
//! they can; we report throughput, acquire latency and the highest number of
//! simultaneous leases seen (which must never exceed the pool's capacity).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use pharox::{
    LeaseRequest, MemoryStorage, PreparedRequest, ProxyFilter, ProxyId, ProxyManager, ProxyPool,
    ProxyStorage, Selector,
};
use serde_json::json;

use crate::error::CliError;
use crate::limits;

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
    /// Run against PostgreSQL at this URL instead of in memory.
    #[cfg(feature = "postgres")]
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<crate::database_url::DatabaseUrl>,
    /// Apply the schema first if it is missing (PostgreSQL only).
    #[cfg(feature = "postgres")]
    #[arg(long, requires = "database_url")]
    migrate: bool,
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Health-check throughput with a simulated probe and the in-memory storage.
    Health(crate::bench_health::HealthBenchArgs),
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
        Ok(Plan {
            proxies: self.proxies,
            workers: self.workers,
            stop,
            max_concurrency: self.max_concurrency,
            hold: Duration::from_millis(self.hold_ms),
            filter,
            selector: self.selector,
        })
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

/// Shared state of the workers.
struct Run {
    manager: ProxyManager,
    request: PreparedRequest,
    hold: Duration,
    stop: AtomicBool,
    progress: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Leases held per proxy right now, to catch an over-leased proxy.
    per_proxy: HashMap<ProxyId, AtomicU32, BuildHasherDefault<IdHasher>>,
    max_concurrency: u32,
    over_leased: AtomicU64,
}

#[derive(Default)]
struct WorkerReport {
    hits: u64,
    misses: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if let Some(BenchKind::Health(health)) = args.kind {
        return crate::bench_health::run(health).await;
    }
    let plan = args.plan()?;
    let target = open_storage(&args, plan.workers).await?;
    let outcome = bench(&plan, &target, args.json).await;
    // Remove the seeded pool whatever happened, so runs do not pile up.
    if target.drop_pool_after
        && let Ok(pool) = target.storage.get_pool_by_name(&target.pool_name).await
        && let Err(e) = target.storage.delete_pool(pool.id).await
    {
        eprintln!(
            "warning: could not remove benchmark pool {}: {e}",
            target.pool_name
        );
    }
    outcome
}

/// Where the benchmark runs.
struct Target {
    storage: Arc<dyn ProxyStorage>,
    name: &'static str,
    pool_name: String,
    drop_pool_after: bool,
}

async fn open_storage(args: &BenchArgs, workers: usize) -> Result<Target, CliError> {
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.database_url {
        let storage = crate::migrate::open_for_bench(url, workers, args.migrate).await?;
        return Ok(Target {
            storage,
            name: "postgres",
            // Every lease row stores its pool's name (the Python schema's
            // `lease.pool_name`): 48 random bits keep concurrent runs apart
            // and the rows as long as a real pool name makes them.
            pool_name: format!("bench-{:012x}", uuid::Uuid::new_v4().as_u128() >> 80),
            drop_pool_after: true,
        });
    }
    let _ = (args, workers);
    Ok(Target {
        storage: Arc::new(MemoryStorage::new()),
        name: "memory",
        pool_name: "bench".to_owned(),
        drop_pool_after: false,
    })
}

async fn bench(plan: &Plan, target: &Target, json_output: bool) -> Result<(), CliError> {
    let storage = &target.storage;
    let pool = storage
        .save_pool(&ProxyPool::new(target.pool_name.clone())?)
        .await?;
    let proxies = crate::seed::proxies(pool.id, plan.proxies, plan.max_concurrency)?;
    for chunk in proxies.chunks(1000) {
        storage.add_proxies(chunk).await?;
    }
    let per_proxy = proxies.iter().map(|p| (p.id, AtomicU32::new(0))).collect();
    let capacity = plan.proxies as u64 * u64::from(plan.max_concurrency);

    let manager = ProxyManager::from_arc(Arc::clone(storage));
    // Validated and with its consumer created before the clock starts; the
    // workers then acquire the way a worker loop should.
    let request = manager
        .prepare(
            LeaseRequest::new(target.pool_name.clone())
                .consumer(BENCH_CONSUMER)
                .ttl(Duration::from_secs(300))
                .filter(plan.filter.clone())
                .selector(plan.selector),
        )
        .await?;
    let run = Arc::new(Run {
        manager,
        request,
        hold: plan.hold,
        stop: AtomicBool::new(false),
        progress: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        per_proxy,
        max_concurrency: plan.max_concurrency,
        over_leased: AtomicU64::new(0),
    });

    let empty_histogram = new_histogram()?;
    let progress = progress_bar(&plan.stop);
    let started = Instant::now();
    let deadline = deadline(started, plan.stop_after())?;
    let mut workers = Vec::with_capacity(plan.workers);
    for index in 0..plan.workers {
        let quota = match plan.stop {
            Stop::Iterations(total) => {
                let workers = plan.workers as u64;
                Some(total / workers + u64::from((index as u64) < total % workers))
            }
            Stop::After(_) => None,
        };
        workers.push(tokio::spawn(worker(
            Arc::clone(&run),
            quota,
            deadline,
            empty_histogram.clone(),
        )));
    }
    let ticker = tokio::spawn(tick(Arc::clone(&run), plan.stop_after(), progress.clone()));

    let mut report = WorkerReport::default();
    let mut latency = empty_histogram.clone();
    for handle in workers {
        let (worker_report, histogram) = handle
            .await
            .map_err(|e| CliError::Other(format!("a benchmark worker failed: {e}")))?;
        report.hits += worker_report.hits;
        report.misses += worker_report.misses;
        report.errors += worker_report.errors;
        report.first_error = report.first_error.or(worker_report.first_error);
        latency
            .add(&histogram)
            .map_err(|e| CliError::Other(format!("latency histogram: {e}")))?;
    }
    let elapsed = started.elapsed();
    run.stop.store(true, Ordering::Relaxed);
    ticker.abort();
    progress.finish_and_clear();

    let operations = report.hits + report.misses + report.errors;
    let pairs_per_sec = report.hits as f64 / elapsed.as_secs_f64();
    let max_seen = run.max_in_flight.load(Ordering::Relaxed);
    let percentile_us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    if json_output {
        let out = json!({
            "storage": target.name,
            "workers": plan.workers,
            "proxies": plan.proxies,
            "operations": operations,
            "ops_per_sec": round2(pairs_per_sec),
            "hits": report.hits,
            "misses": report.misses,
            "errors": report.errors,
            "capacity": capacity,
            "max_concurrent_leases_seen": max_seen,
            "latency_us": {
                "p50": round2(percentile_us(0.50)),
                "p95": round2(percentile_us(0.95)),
                "p99": round2(percentile_us(0.99)),
            },
        });
        println!("{out}");
    } else {
        println!(
            "pharox bench: {} storage, {} proxies x {} = capacity {}, {} workers, {}, {:.2} s",
            target.name,
            plan.proxies,
            plan.max_concurrency,
            capacity,
            plan.workers,
            plan.selector,
            elapsed.as_secs_f64()
        );
        println!(
            "  ops/s (acquire+release pairs per second): {:.0}",
            pairs_per_sec
        );
        println!(
            "  operations {operations}: hits {}, misses {}, errors {}",
            report.hits, report.misses, report.errors
        );
        println!(
            "  acquire latency: p50 {:.2} us, p95 {:.2} us, p99 {:.2} us",
            percentile_us(0.50),
            percentile_us(0.95),
            percentile_us(0.99)
        );
        println!("  max simultaneous leases seen: {max_seen} of capacity {capacity}");
        if let Some(e) = &report.first_error {
            println!("  first error: {e}");
        }
    }
    let over = run.over_leased.load(Ordering::Relaxed);
    if max_seen > capacity || over > 0 {
        return Err(CliError::OverLease(format!(
            "{max_seen} simultaneous leases for capacity {capacity}; {over} leases over a proxy's max_concurrency"
        )));
    }
    Ok(())
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

/// How many operations a worker runs between yields to the scheduler. In-memory calls never suspend, so without the
/// yield the first workers to start would hold both runtime threads and the
/// others would never run. Yielding wakes an idle thread (a context switch),
/// so not too often: 1,024 in-memory operations take about a millisecond.
const YIELD_EVERY: u64 = 1024;

async fn worker(
    run: Arc<Run>,
    quota: Option<u64>,
    deadline: Option<Instant>,
    mut latency: Histogram<u64>,
) -> (WorkerReport, Histogram<u64>) {
    let mut report = WorkerReport::default();
    let mut done: u64 = 0;
    loop {
        if done > 0 && done.is_multiple_of(YIELD_EVERY) {
            run.progress.fetch_add(YIELD_EVERY, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
        match quota {
            Some(quota) if done >= quota => break,
            None if run.stop.load(Ordering::Relaxed) => break,
            _ => {}
        }
        let started = Instant::now();
        // The clock is read for the latency anyway: checking the deadline
        // here keeps timed runs exact whatever an operation costs.
        if deadline.is_some_and(|d| started >= d) {
            run.stop.store(true, Ordering::Relaxed);
            break;
        }
        let outcome = run.manager.acquire_prepared(&run.request).await;
        latency.saturating_record(started.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
        match outcome {
            Ok(Some(lease)) => {
                report.hits += 1;
                let held = run.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                if held > run.max_in_flight.load(Ordering::Relaxed) {
                    run.max_in_flight.fetch_max(held, Ordering::Relaxed);
                }
                let on_proxy = run.per_proxy.get(&lease.proxy_id);
                if let Some(count) = on_proxy
                    && count.fetch_add(1, Ordering::Relaxed) + 1 > run.max_concurrency
                {
                    run.over_leased.fetch_add(1, Ordering::Relaxed);
                }
                if !run.hold.is_zero() {
                    tokio::time::sleep(run.hold).await;
                }
                if let Some(count) = on_proxy {
                    count.fetch_sub(1, Ordering::Relaxed);
                }
                run.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = run.manager.release(&lease).await {
                    report.errors += 1;
                    report.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            Ok(None) => {
                report.misses += 1;
                // Nothing free: let the holders run before asking again.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        done += 1;
    }
    (report, latency)
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
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Bench(BenchArgs),
    }

    fn plan(flags: &[&str]) -> Result<Plan, CliError> {
        let args = ["pharox", "bench"].iter().chain(flags);
        let Command::Bench(args) = Cli::try_parse_from(args).unwrap().command;
        args.plan()
    }

    fn rejected_flag(flags: &[&str]) -> &'static str {
        match plan(flags) {
            Err(CliError::Usage { flag, .. }) => flag,
            Err(e) => panic!("{flags:?}: expected a usage error, got {e}"),
            Ok(_) => panic!("{flags:?}: accepted"),
        }
    }

    #[test]
    fn durations_beyond_the_bound_are_usage_errors() {
        // 1e20 s overflows a Duration (Duration::from_secs_f64 panicked on it).
        assert_eq!(rejected_flag(&["--duration", "1e20"]), "duration");
        assert_eq!(rejected_flag(&["--duration", "2592001"]), "duration");
        assert_eq!(rejected_flag(&["--duration", "inf"]), "duration");
        assert_eq!(rejected_flag(&["--duration", "0"]), "duration");
        let err = plan(&["--duration", "1e20"]).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("invalid --duration: "), "{err}");
    }

    #[test]
    fn durations_within_the_bound_are_kept() {
        let stop_after = |flags: &[&str]| plan(flags).unwrap().stop_after();
        assert_eq!(
            stop_after(&["--duration", "0.25"]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            stop_after(&["--duration", "2592000"]),
            Some(Duration::from_secs(2_592_000))
        );
        assert_eq!(stop_after(&[]), Some(Duration::from_secs(5)));
        assert_eq!(stop_after(&["--iterations", "10"]), None);
    }

    #[test]
    fn worker_and_proxy_counts_are_bounded() {
        // usize::MAX workers made Vec::with_capacity panic.
        assert_eq!(
            rejected_flag(&["--workers", &usize::MAX.to_string()]),
            "workers"
        );
        assert_eq!(rejected_flag(&["--workers", "0"]), "workers");
        assert_eq!(rejected_flag(&["--workers", "100001"]), "workers");
        assert_eq!(
            rejected_flag(&["--proxies", &usize::MAX.to_string()]),
            "proxies"
        );
        assert_eq!(rejected_flag(&["--proxies", "10000001"]), "proxies");
        let plan = plan(&["--workers", "100000", "--proxies", "10000000"]).unwrap();
        assert_eq!((plan.workers, plan.proxies), (100_000, 10_000_000));
    }

    #[test]
    fn a_deadline_past_the_clock_range_is_a_usage_error() {
        let now = Instant::now();
        match deadline(now, Some(Duration::MAX)) {
            Err(CliError::Usage { flag, .. }) => assert_eq!(flag, "duration"),
            other => panic!("expected a usage error, got {other:?}"),
        }
        assert_eq!(deadline(now, None).unwrap(), None);
        assert_eq!(
            deadline(now, Some(Duration::from_secs(3))).unwrap(),
            Some(now + Duration::from_secs(3))
        );
    }
}
