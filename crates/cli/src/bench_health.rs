//! `pharox bench health`: sweeps of the health orchestrator with a simulated
//! probe (a fixed latency, no network) persisting into the in-memory storage.
//! It measures what a check costs without the network: scheduling, the
//! status policy and persistence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use pharox::{
    HealthCheckOptions, HealthOrchestrator, MemoryStorage, ProxyPool, ProxyStorage, SimulatedProbe,
};
use serde_json::json;

use crate::error::CliError;
use crate::limits;
use crate::output::{self, outln};

/// Flags of `pharox bench health`.
#[derive(Debug, Args)]
pub struct HealthBenchArgs {
    /// Proxies in the swept pool (1 to 10,000,000).
    #[arg(long, default_value_t = 10_000)]
    proxies: usize,
    /// Sweeps over the whole pool.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Checks in flight at once (1 to 100,000).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Latency of the simulated probe, in milliseconds.
    #[arg(long, default_value_t = 1)]
    latency_ms: u64,
    /// Print one JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

/// Runs the health benchmark.
pub async fn run(args: HealthBenchArgs) -> Result<(), CliError> {
    limits::count("proxies", args.proxies, limits::MAX_PROXIES)?;
    limits::count("concurrency", args.concurrency, limits::MAX_CONCURRENCY)?;
    if args.rounds == 0 {
        return Err(CliError::Usage {
            flag: "rounds",
            reason: "must be at least 1".into(),
        });
    }
    let storage = Arc::new(MemoryStorage::new());
    let pool = storage.save_pool(&ProxyPool::new("bench-health")?).await?;
    let proxies = crate::seed::proxies(pool.id, args.proxies, 1)?;
    storage.add_proxies(&proxies).await?;
    // Every round sweeps the same slice; nothing is copied per round.
    let proxies: Arc<[pharox::Proxy]> = proxies.into();
    let orchestrator = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::from_millis(args.latency_ms))),
    )
    .options(HealthCheckOptions {
        target_url: "http://127.0.0.1/simulated".into(),
        ..HealthCheckOptions::default()
    })
    .concurrency(args.concurrency)
    .build()?;

    let started = Instant::now();
    let mut checks = 0usize;
    let mut failed = 0usize;
    for _ in 0..args.rounds {
        let summary = orchestrator.sweep(Arc::clone(&proxies)).summarize().await;
        checks += summary.checked;
        failed += summary.not_persisted;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_sec = checks as f64 / elapsed;
    let printed = if args.json {
        let out = json!({
            "proxies": args.proxies,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "checks": checks,
            "checks_per_sec": (per_sec * 100.0).round() / 100.0,
            "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        });
        output::print(|stdout| {
            outln!(stdout, "{out}");
            Ok(())
        })
    } else {
        output::print(|stdout| {
            outln!(
                stdout,
                "pharox bench health: {} proxies x {} rounds, concurrency {}, simulated probe {} ms",
                args.proxies,
                args.rounds,
                args.concurrency,
                args.latency_ms
            );
            outln!(
                stdout,
                "  checks {checks} in {elapsed:.3} s: {per_sec:.0} checks/s (every result persisted)"
            );
            Ok(())
        })
    };
    // A failure outweighs a closed stdout.
    if failed > 0 {
        return Err(CliError::Other(format!(
            "{failed} results could not be persisted"
        )));
    }
    Ok(printed?)
}
