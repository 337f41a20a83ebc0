//! `pharox health check` and `pharox health history`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pharox::http_probe::HttpProbe;
use pharox::observe::HealthObserver;
use pharox::ports::{TaskLockGuard, TaskLocks};
use pharox::postgres::PostgresStorage;
use pharox::{
    HealthCheck, HealthCheckOptions, HealthOrchestrator, HealthPolicy, PharoxError, ProxyId,
    ProxyPool, ProxyStorage, SweepSummary, ValidationError,
};
use serde_json::json;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::limits;
use crate::migrate::{open_checked, required_url};
use crate::output::{self, OutputError, Stdout, errln, outln};
use crate::signals::Signals;

/// Flags of `pharox health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(subcommand)]
    command: HealthCommand,
}

#[derive(Debug, Subcommand)]
enum HealthCommand {
    /// Check every proxy of a pool through the proxy itself and persist the results.
    Check(CheckArgs),
    /// Show a proxy's health history, newest first.
    History(HistoryArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The pool to sweep.
    #[arg(long)]
    pool: String,
    /// The database, as postgres://user:pass@host:5432/db
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<DatabaseUrl>,
    #[command(flatten)]
    sweep: SweepFlags,
    /// Exit 1 when any probe of this sweep failed (for cron and CI).
    #[arg(long)]
    fail_on_error: bool,
    /// When another sweep of the pool is running, wait for it to finish
    /// instead of exiting 1.
    #[arg(long)]
    wait: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// How a sweep checks proxies: the flags `pharox health check` and
/// `pharox serve` (for its background and on-demand sweeps) share.
#[derive(Debug, Clone, Args)]
pub struct SweepFlags {
    /// The URL fetched through each proxy (a public URL by default: pass
    /// your own where the internet is not reachable).
    #[arg(long, value_name = "URL", default_value_t = HealthCheckOptions::default().target_url)]
    target: String,
    /// Skip the direct request to --target (without a proxy) made before
    /// sweeping, which refuses to sweep when the target does not answer.
    #[arg(long)]
    no_target_check: bool,
    /// PEM file of extra root certificates to trust for HTTPS targets (a
    /// private CA), on top of the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Probes in flight at once (1 to 100,000).
    #[arg(long, default_value_t = pharox::health::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Seconds each attempt may take (at most 3600).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Attempts per proxy (1 to 5).
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Latency in ms above which a working proxy is slow.
    #[arg(long, default_value_t = 2000)]
    slow_ms: u64,
    /// Consecutive failures before a proxy becomes inactive.
    #[arg(long, default_value_t = 3)]
    failures_before_inactive: u32,
    /// Leave proxies with an exclusive lease alone: max concurrency 1 and
    /// a lease held when the sweep starts (probing would share a proxy a
    /// worker counts on having to itself).
    #[arg(long)]
    skip_leased: bool,
}

/// A sweep's checked settings and probe, from [`SweepFlags`].
pub struct SweepSetup {
    probe: Arc<HttpProbe>,
    options: HealthCheckOptions,
    policy: HealthPolicy,
    concurrency: usize,
    skip_leased: bool,
    target_check: bool,
}

impl SweepFlags {
    /// Checks the flags (each error names its flag) and builds the probe.
    pub fn setup(&self) -> Result<SweepSetup, CliError> {
        let options = options(self)?;
        limits::count("concurrency", self.concurrency, limits::MAX_CONCURRENCY)?;
        let policy = HealthPolicy::new(self.failures_before_inactive).map_err(|e| usage(&e))?;
        Ok(SweepSetup {
            probe: Arc::new(probe(self)?),
            options,
            policy,
            concurrency: self.concurrency,
            skip_leased: self.skip_leased,
            target_check: !self.no_target_check,
        })
    }

    /// Database connections a sweep with these flags wants.
    pub fn connections(&self) -> u32 {
        u32::try_from(self.concurrency.min(64))
            .unwrap_or(64)
            .saturating_add(2)
    }
}

impl SweepSetup {
    /// An orchestrator persisting into `storage`, reporting each check to
    /// `observer` when given (`pharox serve`'s metrics).
    pub fn orchestrator(
        &self,
        storage: Arc<dyn ProxyStorage>,
        observer: Option<Arc<dyn HealthObserver>>,
    ) -> Result<HealthOrchestrator, CliError> {
        let mut builder = HealthOrchestrator::builder(storage, self.probe.clone())
            .options(self.options.clone())
            .policy(self.policy)
            .concurrency(self.concurrency)
            .skip_leased(self.skip_leased);
        if let Some(observer) = observer {
            builder = builder.observer(observer);
        }
        Ok(builder.build()?)
    }

    /// Fetches --target directly (without a proxy) unless
    /// --no-target-check: a sweep against a target that does not answer
    /// would fail every proxy, so it is refused.
    pub async fn check_target(&self) -> Result<(), CliError> {
        if !self.target_check {
            return Ok(());
        }
        self.probe
            .check_target(&self.options)
            .await
            .map(drop)
            .map_err(|why| {
                CliError::Other(format!(
                    "--target {} does not answer directly (without a proxy): {why}; \
                 refusing to sweep, since every proxy would fail against it \
                 (fix --target, or pass --no-target-check to sweep anyway)",
                    shown_target(&self.options.target_url)
                ))
            })
    }
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// The proxy's id (a UUID).
    #[arg(value_parser = parse_proxy_id)]
    proxy_id: ProxyId,
    /// The database, as postgres://user:pass@host:5432/db
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<DatabaseUrl>,
    /// How many records, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_proxy_id(value: &str) -> Result<ProxyId, String> {
    value.parse().map_err(|_| "is not a UUID".to_owned())
}

/// Runs a health command.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    match args.command {
        HealthCommand::Check(args) => check(args).await,
        HealthCommand::History(args) => history(args).await,
    }
}

/// The flag behind an option's field, for messages about it.
fn flag_of(field: &str) -> &'static str {
    match field {
        "health.target_url" => "target",
        "health.timeout" => "timeout",
        "health.attempts" => "attempts",
        "health.slow_threshold" => "slow-ms",
        "health.concurrency" => "concurrency",
        _ => "failures-before-inactive",
    }
}

fn usage(e: &ValidationError) -> CliError {
    CliError::Usage {
        flag: flag_of(&e.field),
        reason: e.reason.to_string(),
    }
}

fn options(args: &SweepFlags) -> Result<HealthCheckOptions, CliError> {
    let options = HealthCheckOptions {
        target_url: args.target.clone(),
        timeout: limits::seconds("timeout", args.timeout, limits::MAX_TIMEOUT_SECS)?,
        attempts: args.attempts,
        slow_threshold: Some(Duration::from_millis(args.slow_ms)),
        ..HealthCheckOptions::default()
    };
    options.validate().map_err(|e| usage(&e))?;
    Ok(options)
}

fn probe(args: &SweepFlags) -> Result<HttpProbe, CliError> {
    let mut builder = HttpProbe::builder();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| CliError::Usage {
            flag: "ca-file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        builder = builder
            .add_root_certificates_pem(&pem)
            .map_err(|e| CliError::Usage {
                flag: "ca-file",
                reason: format!("{}: {e}", path.display()),
            })?;
    }
    builder.build().map_err(|e| CliError::Usage {
        flag: "ca-file",
        reason: e.to_string(),
    })
}

/// The target URL without any `user:password@`, for messages.
fn shown_target(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// How this process describes itself to a second sweep of the same pool.
fn holder_description() -> String {
    describe_process("pharox health check")
}

/// `"<what>, pid N on HOST"`: how a process names itself as a lock holder.
pub fn describe_process(what: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().take(24).collect::<String>())
        .filter(|h| !h.is_empty());
    let pid = std::process::id();
    match host {
        Some(host) => format!("{what}, pid {pid} on {host}"),
        None => format!("{what}, pid {pid}"),
    }
}

/// Takes the pool's sweep lock, or says who has it (exit 1); with `--wait`,
/// waits for it (a signal ends the wait).
async fn lock_pool(
    locks: &PostgresStorage,
    pool: &ProxyPool,
    wait: bool,
    signals: &mut Signals,
) -> Result<TaskLockGuard, CliError> {
    let key = pharox::sweep_lock_key(pool.id);
    let me = holder_description();
    let mut told = false;
    loop {
        if let Some(guard) = locks.try_lock(&key, &me).await? {
            return Ok(guard);
        }
        let holder = locks
            .holder(&key)
            .await?
            .unwrap_or_else(|| "a session that just ended".to_owned());
        if !wait {
            return Err(CliError::Other(format!(
                "another health check of pool {} is running, held by {holder}; \
                 pass --wait to wait for it to finish",
                pool.name
            )));
        }
        if !told {
            errln!(
                "pharox: waiting for the health check of pool {} held by {holder}",
                pool.name
            );
            told = true;
        }
        tokio::select! {
            signal = signals.recv() => return Err(CliError::Interrupted(signal)),
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// How often `--wait` asks for the lock again.
const LOCK_POLL: Duration = Duration::from_millis(250);

async fn check(args: CheckArgs) -> Result<(), CliError> {
    let setup = args.sweep.setup()?;
    let url = required_url(args.database_url.as_ref())?;
    let mut signals = Signals::install()?;
    let postgres = Arc::new(open_checked(url, args.sweep.connections(), false).await?);
    let storage: Arc<dyn ProxyStorage> = postgres.clone();
    let pool = postgres.get_pool_by_name(&args.pool).await?;
    // Held to the end of the sweep; dropping it releases it.
    let lock = lock_pool(&postgres, &pool, args.wait, &mut signals).await?;
    tokio::select! {
        signal = signals.recv() => return Err(CliError::Interrupted(signal)),
        checked = setup.check_target() => checked?,
    }
    let proxies = storage.list_proxies(pool.id).await?;
    let addresses: HashMap<ProxyId, String> =
        proxies.iter().map(|p| (p.id, p.to_string())).collect();
    let orchestrator = setup.orchestrator(storage, None)?;
    let mut sweep = orchestrator.sweep(proxies);
    let bar = ProgressBar::new(sweep.total() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} checking {pos}/{len} {wide_bar} {elapsed}")
    {
        bar.set_style(style);
    }
    let mut summary = sweep.summary();
    let mut checks: Vec<HealthCheck> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut stopped_by = None;
    loop {
        let item = tokio::select! {
            item = sweep.next() => item,
            signal = signals.recv(), if stopped_by.is_none() => {
                // No new probe; those in flight are abandoned, results
                // being written are written and still come.
                sweep.stop();
                stopped_by = Some(signal);
                continue;
            }
        };
        let Some(item) = item else { break };
        bar.inc(1);
        summary.record(&item);
        match item {
            Ok(check) => checks.push(check),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bar.finish_and_clear();
    drop(sweep);
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release the sweep lock; it goes with the connection");
    }
    let address = |check: &HealthCheck| addresses.get(&check.proxy_id).map_or("?", String::as_str);
    checks.sort_by(|a, b| address(a).cmp(address(b)));
    let stopped = stopped_by.is_some();
    let printed = output::print(|out| {
        if args.json {
            print_check_json(
                out, &args.pool, &checks, &address, &summary, &failures, stopped,
            )
        } else {
            print_check_table(out, &checks, &address, &summary, &failures, stopped)
        }
    });
    // A signal, then a failure, outweigh a closed stdout.
    if let Some(signal) = stopped_by {
        return Err(CliError::Interrupted(signal));
    }
    if !failures.is_empty() {
        return Err(CliError::Pharox(PharoxError::Storage(
            pharox::StorageError::Backend {
                message: format!("{} results could not be persisted", failures.len()),
                source: None,
            },
        )));
    }
    if args.fail_on_error && summary.failed > 0 {
        return Err(CliError::Other(format!(
            "{} of {} probes failed (--fail-on-error)",
            summary.failed, summary.checked
        )));
    }
    Ok(printed?)
}

fn status_name(status: Option<pharox::ProxyStatus>) -> &'static str {
    status.map_or("deleted", |s| s.as_str())
}

fn print_check_table<'a>(
    out: &mut Stdout,
    checks: &'a [HealthCheck],
    address: &dyn Fn(&'a HealthCheck) -> &'a str,
    summary: &SweepSummary,
    failures: &[String],
    stopped: bool,
) -> Result<(), OutputError> {
    outln!(
        out,
        "{:<36}  {:<32}  {:<8}  {:<8}  {:>10}  error",
        "proxy",
        "address",
        "before",
        "after",
        "latency"
    );
    for check in checks {
        let latency = check
            .result
            .latency_ms
            .map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
        outln!(
            out,
            "{:<36}  {:<32}  {:<8}  {:<8}  {:>10}  {}",
            check.proxy_id,
            address(check),
            check.status_before.as_str(),
            status_name(check.status_after),
            latency,
            check.result.error.as_deref().unwrap_or("")
        );
    }
    for failure in failures {
        outln!(out, "not persisted: {failure}");
    }
    let ms = |q| {
        summary
            .latency_percentile(q)
            .map_or("-".to_owned(), |v| format!("{v:.1} ms"))
    };
    outln!(
        out,
        "\n{} checked, {} failed; became inactive {}, slow {}, active {}",
        summary.checked,
        summary.failed,
        summary.became_inactive,
        summary.became_slow,
        summary.became_active,
    );
    outln!(
        out,
        "now {} active, {} slow, {} inactive, {} banned; latency p50 {}, p95 {}",
        summary.active,
        summary.slow,
        summary.inactive,
        summary.banned,
        ms(0.5),
        ms(0.95)
    );
    if summary.skipped > 0 {
        outln!(out, "skipped {} with an exclusive lease", summary.skipped);
    }
    if stopped {
        outln!(
            out,
            "stopped early: {} of {} not checked",
            summary.unchecked(),
            summary.total
        );
    }
    Ok(())
}

fn print_check_json<'a>(
    out: &mut Stdout,
    pool: &str,
    checks: &'a [HealthCheck],
    address: &dyn Fn(&'a HealthCheck) -> &'a str,
    summary: &SweepSummary,
    failures: &[String],
    stopped: bool,
) -> Result<(), OutputError> {
    let proxies: Vec<_> = checks
        .iter()
        .map(|c| {
            json!({
                "proxy_id": c.proxy_id.to_string(),
                "address": address(c),
                "status_before": c.status_before.as_str(),
                "status_after": status_name(c.status_after),
                "latency_ms": c.result.latency_ms,
                "http_status": c.result.http_status,
                "attempts": c.result.attempts,
                "error": c.result.error,
            })
        })
        .collect();
    let json = json!({
        "pool": pool,
        "total": summary.total,
        "checked": summary.checked,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "unchecked": summary.unchecked(),
        "stopped": stopped,
        "became": {
            "inactive": summary.became_inactive,
            "slow": summary.became_slow,
            "active": summary.became_active,
        },
        "active": summary.active,
        "slow": summary.slow,
        "inactive": summary.inactive,
        "banned": summary.banned,
        "not_persisted": failures.len(),
        "latency_ms": { "p50": summary.latency_percentile(0.5), "p95": summary.latency_percentile(0.95) },
        "proxies": proxies,
    });
    outln!(out, "{json}");
    Ok(())
}

async fn history(args: HistoryArgs) -> Result<(), CliError> {
    let proxy_id = args.proxy_id;
    let url = required_url(args.database_url.as_ref())?;
    let storage = open_checked(url, 2, false).await?;
    let proxy = storage.get_proxy(proxy_id).await?;
    let records = storage.list_health_records(proxy_id, args.limit).await?;
    if args.json {
        let json = serde_json::to_string(&records).map_err(|e| CliError::Other(e.to_string()))?;
        output::print(|out| {
            outln!(out, "{json}");
            Ok(())
        })?;
        return Ok(());
    }
    output::print(|out| print_history(out, &proxy, &records))?;
    Ok(())
}

fn print_history(
    out: &mut Stdout,
    proxy: &pharox::Proxy,
    records: &[pharox::HealthRecord],
) -> Result<(), OutputError> {
    outln!(
        out,
        "{proxy} is {}; {} records, newest first",
        proxy.status,
        records.len()
    );
    outln!(
        out,
        "{:<32}  {:<9}  {:>10}  {:<19}  {:>4}  error",
        "checked at",
        "reachable",
        "latency",
        "status",
        "http"
    );
    for r in records {
        outln!(
            out,
            "{:<32}  {:<9}  {:>10}  {:<19}  {:>4}  {}",
            r.checked_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| r.checked_at.to_string()),
            r.reachable,
            r.latency_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
            format!("{} -> {}", r.status_before, r.status_after),
            r.http_status.map_or("-".to_owned(), |s| s.to_string()),
            r.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_args(timeout: f64) -> SweepFlags {
        SweepFlags {
            target: HealthCheckOptions::default().target_url,
            no_target_check: false,
            ca_file: None,
            skip_leased: false,
            concurrency: 8,
            timeout,
            attempts: 1,
            slow_ms: 2000,
            failures_before_inactive: 3,
        }
    }

    #[test]
    fn timeouts_out_of_range_are_usage_errors() {
        // 1e20 s overflows a Duration (Duration::from_secs_f64 panicked on it).
        for timeout in [1e20, 3600.5, f64::INFINITY, f64::NAN, 0.0, -2.0] {
            match options(&check_args(timeout)) {
                Err(CliError::Usage { flag, .. }) => assert_eq!(flag, "timeout", "{timeout}"),
                Err(e) => panic!("{timeout}: expected a usage error, got {e}"),
                Ok(_) => panic!("{timeout}: accepted"),
            }
        }
    }

    #[test]
    fn a_bad_target_names_the_flag() {
        let mut args = check_args(5.0);
        args.target = "ftp://x".to_owned();
        match options(&args) {
            Err(e @ CliError::Usage { .. }) => {
                assert!(e.to_string().starts_with("invalid --target: "), "{e}");
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn shown_targets_have_no_credentials() {
        assert_eq!(
            shown_target("https://u:pw@example.test:8443/x@y"),
            "https://example.test:8443/x@y"
        );
        assert_eq!(shown_target("http://127.0.0.1/ok"), "http://127.0.0.1/ok");
    }

    #[test]
    fn timeouts_in_range_are_kept() {
        assert_eq!(
            options(&check_args(1.5)).unwrap().timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            options(&check_args(3600.0)).unwrap().timeout,
            Duration::from_secs(3600)
        );
    }
}
