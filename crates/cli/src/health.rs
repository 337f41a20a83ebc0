//! `pharox health check` and `pharox health history`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pharox::http_probe::HttpProbe;
use pharox::{
    HealthCheck, HealthCheckOptions, HealthOrchestrator, HealthPolicy, PharoxError, ProxyId,
    ProxyStorage, SweepSummary,
};
use serde_json::json;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::limits;
use crate::migrate::{open_checked, required_url};
use crate::output::{self, OutputError, Stdout, outln};

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
    /// The URL fetched through each proxy.
    #[arg(long)]
    target: Option<String>,
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
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// The proxy's id.
    proxy_id: String,
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

/// Runs a health command.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    match args.command {
        HealthCommand::Check(args) => check(args).await,
        HealthCommand::History(args) => history(args).await,
    }
}

fn options(args: &CheckArgs) -> Result<HealthCheckOptions, CliError> {
    let mut options = HealthCheckOptions {
        timeout: limits::seconds("timeout", args.timeout, limits::MAX_TIMEOUT_SECS)?,
        attempts: args.attempts,
        slow_threshold: Some(Duration::from_millis(args.slow_ms)),
        ..HealthCheckOptions::default()
    };
    if let Some(target) = &args.target {
        options.target_url.clone_from(target);
    }
    options.validate()?;
    Ok(options)
}

async fn check(args: CheckArgs) -> Result<(), CliError> {
    let options = options(&args)?;
    limits::count("concurrency", args.concurrency, limits::MAX_CONCURRENCY)?;
    let policy = HealthPolicy::new(args.failures_before_inactive)?;
    let url = required_url(args.database_url.as_ref())?;
    let connections = u32::try_from(args.concurrency.min(64))
        .unwrap_or(64)
        .saturating_add(2);
    let storage: Arc<dyn ProxyStorage> = Arc::new(open_checked(url, connections, false).await?);
    let pool = storage.get_pool_by_name(&args.pool).await?;
    let proxies = storage.list_proxies(pool.id).await?;
    let addresses: HashMap<ProxyId, String> =
        proxies.iter().map(|p| (p.id, p.to_string())).collect();
    let probe = HttpProbe::new().map_err(|e| CliError::Other(e.to_string()))?;
    let orchestrator = HealthOrchestrator::builder(storage, Arc::new(probe))
        .options(options)
        .policy(policy)
        .concurrency(args.concurrency)
        .build()?;
    let mut sweep = orchestrator.sweep(proxies);
    let bar = ProgressBar::new(sweep.total() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} checking {pos}/{len} {wide_bar} {elapsed}")
    {
        bar.set_style(style);
    }
    let mut summary = SweepSummary::default();
    let mut checks: Vec<HealthCheck> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while let Some(item) = sweep.next().await {
        bar.inc(1);
        summary.record(&item);
        match item {
            Ok(check) => checks.push(check),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bar.finish_and_clear();
    let address = |check: &HealthCheck| addresses.get(&check.proxy_id).map_or("?", String::as_str);
    checks.sort_by(|a, b| address(a).cmp(address(b)));
    let printed = output::print(|out| {
        if args.json {
            print_check_json(out, &args.pool, &checks, &address, &summary, &failures)
        } else {
            print_check_table(out, &checks, &address, &summary, &failures)
        }
    });
    // A failure outweighs a closed stdout.
    if !failures.is_empty() {
        return Err(CliError::Pharox(PharoxError::Storage(
            pharox::StorageError::Backend {
                message: format!("{} results could not be persisted", failures.len()),
                source: None,
            },
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
        "\n{} checked: {} active, {} slow, {} inactive, {} banned; latency p50 {}, p95 {}",
        summary.checked,
        summary.active,
        summary.slow,
        summary.inactive,
        summary.banned,
        ms(0.5),
        ms(0.95)
    );
    Ok(())
}

fn print_check_json<'a>(
    out: &mut Stdout,
    pool: &str,
    checks: &'a [HealthCheck],
    address: &dyn Fn(&'a HealthCheck) -> &'a str,
    summary: &SweepSummary,
    failures: &[String],
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
        "checked": summary.checked,
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
    let proxy_id: ProxyId = args.proxy_id.parse().map_err(|_| CliError::Usage {
        flag: "proxy-id",
        reason: "is not a UUID".into(),
    })?;
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

    fn check_args(timeout: f64) -> CheckArgs {
        CheckArgs {
            pool: "p".to_owned(),
            database_url: None,
            target: None,
            concurrency: 8,
            timeout,
            attempts: 1,
            slow_ms: 2000,
            failures_before_inactive: 3,
            json: false,
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
