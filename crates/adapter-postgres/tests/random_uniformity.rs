//! The random selector picks uniformly on PostgreSQL: chi-squared tests of
//! how often each proxy of a pool is leased, through the real storage, on
//! the one-statement acquire and on the predicate path.
//!
//! The one-statement pick keeps every key fixed and corrects for the spans
//! between keys by rejection (`sql::pick::random_pick`); without the correction
//! a proxy's share is the span of the keys before its own, which the pool
//! test rejects (simulated: a chi-squared statistic of 254 to 283 for a
//! window of 32 over 160 proxies, against the bound 234). The predicate
//! path gives the leased proxy a new key instead (`sql::REDRAW_PICK_KEY`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use pharox_adapter_postgres::PostgresStorage;
use pharox_domain::{Proxy, ProxyFilter, ProxyId, ProxyPool, ProxyProtocol, Selector};
use pharox_ports::{AcquireRequest, ProxyStorage};

/// The 0.9999 quantile of the chi-squared distribution with 159 degrees of
/// freedom (160 proxies). Computed by bisection on the regularised lower
/// incomplete gamma function P(159/2, x/2) (series expansion, to 1e-18),
/// which gives 234.013 (and 80.646 for 39 degrees, matching the tables).
const CHI2_159_Q9999: f64 = 234.013;

/// The same for 19 degrees of freedom (20 proxies): 50.795.
const CHI2_19_Q9999: f64 = 50.795;

/// A pool of `n` single-slot proxies.
async fn seed(storage: &PostgresStorage, name: &str, n: u16) -> (ProxyPool, Vec<Proxy>) {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            Proxy::builder(pool.id, "10.2.0.1", 20_000 + i, ProxyProtocol::Http)
                .max_concurrency(1)
                .build()
                .unwrap()
        })
        .collect();
    let saved = storage.add_proxies(&proxies).await.unwrap();
    (pool, saved)
}

/// Leases and releases `cycles` times with `request`, one lease at a time
/// (so every proxy is leasable at every pick), and counts the picks.
async fn count_picks(
    storage: &PostgresStorage,
    request: &AcquireRequest,
    cycles: usize,
) -> HashMap<ProxyId, u64> {
    let mut picks: HashMap<ProxyId, u64> = HashMap::new();
    for _ in 0..cycles {
        let lease = storage
            .acquire(request)
            .await
            .unwrap()
            .expect("a leasable proxy");
        *picks.entry(lease.proxy_id).or_default() += 1;
        assert!(storage.release(lease.id).await.unwrap().was_released());
    }
    picks
}

/// Pearson's statistic of `picks` against equal shares over `proxies`
/// (a proxy never picked counts as 0).
fn chi_squared(picks: &HashMap<ProxyId, u64>, proxies: &[Proxy], cycles: usize) -> f64 {
    let expected = cycles as f64 / proxies.len() as f64;
    proxies
        .iter()
        .map(|p| {
            let observed = picks.get(&p.id).copied().unwrap_or(0) as f64;
            (observed - expected).powi(2) / expected
        })
        .sum()
}

fn assert_uniform(
    what: &str,
    picks: &HashMap<ProxyId, u64>,
    proxies: &[Proxy],
    cycles: usize,
    bound: f64,
) {
    let never: Vec<_> = proxies
        .iter()
        .filter(|p| !picks.contains_key(&p.id))
        .collect();
    assert!(
        never.is_empty(),
        "{what}: {} of {} proxies never picked in {cycles} acquires",
        never.len(),
        proxies.len()
    );
    assert!(
        picks.keys().all(|id| proxies.iter().any(|p| p.id == *id)),
        "{what}: leased a proxy outside the pool"
    );
    let statistic = chi_squared(picks, proxies, cycles);
    let (min, max) = (
        picks.values().min().copied().unwrap_or(0),
        picks.values().max().copied().unwrap_or(0),
    );
    println!("{what}: chi-squared {statistic:.1} (bound {bound}), picks per proxy {min}..{max}");
    assert!(
        statistic < bound,
        "{what}: chi-squared {statistic:.1} >= {bound} (the 0.9999 quantile): \
         picks per proxy range {min}..{max}, expected {}",
        cycles / proxies.len()
    );
}

#[tokio::test]
async fn random_acquire_is_uniform_over_the_pool() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    // Ten times the span the pick measures (`sql::RANDOM_SPAN`) and five
    // times its estimate's (`sql::RANDOM_ESTIMATE`), so a proxy's chance
    // depends on the keys around it unless corrected.
    let (pool, proxies) = seed(&storage, "uniform", 160).await;
    let consumer = storage.ensure_consumer("chi2").await.unwrap();
    let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60))
        .with_selector(Selector::Random);
    // 50 expected picks per proxy.
    let cycles = 8_000;
    let picks = count_picks(&storage, &request, cycles).await;
    assert_uniform(
        "one-statement acquire",
        &picks,
        &proxies,
        cycles,
        CHI2_159_Q9999,
    );
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn random_acquire_with_a_predicate_is_uniform_over_the_matches() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let (pool, proxies) = seed(&storage, "uniform-predicate", 40).await;
    let consumer = storage.ensure_consumer("chi2").await.unwrap();
    // Every other proxy (by port) matches: the predicate path, where SQL
    // selects a superset in batches and Rust tests each candidate.
    let matching: Vec<Proxy> = proxies
        .iter()
        .filter(|p| p.port % 2 == 0)
        .cloned()
        .collect();
    let filter = ProxyFilter::new().predicate(|p| p.port % 2 == 0);
    let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60))
        .with_selector(Selector::Random)
        .with_filter(filter);
    let cycles = 2_000;
    let picks = count_picks(&storage, &request, cycles).await;
    assert_uniform("predicate path", &picks, &matching, cycles, CHI2_19_Q9999);
    schema.drop_schema().await.unwrap();
}
