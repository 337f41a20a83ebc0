//! Seeding the benchmark's pool (or checking the one `--reuse-pool` names)
//! and preparing the requests the workers send; `--seed-only`.

use super::*;

/// Seeds the pool and prepares the request the workers send.
pub(super) async fn prepare(plan: &Plan, target: &Target) -> Result<Run, CliError> {
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
pub(super) async fn seed_only(
    plan: &Plan,
    target: &Target,
    signals: &mut Signals,
) -> Result<(), CliError> {
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
