//! Selectors: the order in which least_used, round_robin, random and
//! lowest_latency choose among the qualifying proxies.

use std::collections::BTreeSet;

use pharox_domain::{HealthPolicy, ProxyFilter, ProxyId, ProxyStatus, Selector};

use super::support::*;
use crate::ContractFixture;

/// least_used picks the fewest current leases, then never-checked /
/// oldest-checked, then smallest id.
pub async fn least_used_prefers_the_lowest_load(fx: &ContractFixture) {
    let pool = new_pool(fx, "least-used").await;
    let consumer = new_consumer(fx, "least-used").await;
    let p = save_many(fx, 3, |i| proxy(&pool, i).city(format!("c{i}"))).await;
    let by_city = |i: usize| {
        request(&pool, consumer, LONG)
            .with_filter(ProxyFilter::new().city(p[i].city.clone().expect("city set")))
    };
    // Loads: p0 = 2, p1 = 1, p2 = 0.
    for i in [0, 0, 1] {
        acquire(fx, &by_city(i)).await.expect("filtered acquire");
    }
    let req = request(&pool, consumer, LONG).with_selector(Selector::LeastUsed);
    let first = acquire(fx, &req).await.expect("least_used");
    assert_eq!(first.proxy_id, p[2].id, "the proxy without leases");
    // Now p1 = 1, p2 = 1: a tie on load, neither checked: smallest id.
    let second = acquire(fx, &req).await.expect("least_used");
    assert_eq!(second.proxy_id, p[1].id, "tie broken by smallest id");
    // p0 = 2, p1 = 2, p2 = 1.
    let third = acquire(fx, &req).await.expect("least_used");
    assert_eq!(third.proxy_id, p[2].id);
    // All at 2; p0 checked long ago, p1 recently, p2 never: p2 first.
    let t = base_time();
    apply(
        fx,
        &health(&p[0], ProxyStatus::Active, Some(10.0), t),
        HealthPolicy::default(),
    )
    .await;
    apply(
        fx,
        &health(
            &p[1],
            ProxyStatus::Active,
            Some(10.0),
            t + time::Duration::minutes(5),
        ),
        HealthPolicy::default(),
    )
    .await;
    let fourth = acquire(fx, &req).await.expect("least_used");
    assert_eq!(fourth.proxy_id, p[2].id, "never checked comes first");
    // p2 = 3: among p0 and p1 (2 each), the oldest check wins.
    let fifth = acquire(fx, &req).await.expect("least_used");
    assert_eq!(fifth.proxy_id, p[0].id, "oldest checked_at comes next");
}

/// round_robin hands proxies out in id order and wraps; skipped proxies
/// (no capacity, not matching) do not stop the cycle; the cursor survives
/// releases.
pub async fn round_robin_cycles_in_id_order(fx: &ContractFixture) {
    let pool = new_pool(fx, "round-robin").await;
    let consumer = new_consumer(fx, "round-robin").await;
    let p = save_many(fx, 3, |i| proxy(&pool, i)).await;
    let req = request(&pool, consumer, LONG).with_selector(Selector::RoundRobin);
    let mut got = Vec::new();
    for _ in 0..7 {
        let lease = acquire(fx, &req).await.expect("round_robin");
        got.push(lease.proxy_id);
        assert!(release(fx, lease.id).await.was_released());
    }
    let want: Vec<ProxyId> = [0, 1, 2, 0, 1, 2, 0].iter().map(|&i| p[i].id).collect();
    assert_eq!(
        got,
        want,
        "round_robin order (ids sorted: {:?})",
        ids_of(&p)
    );
    // The last handed out was p0; a filter excluding p1 makes p2 next.
    let skip = req
        .clone()
        .with_filter(ProxyFilter::new().none_of([ProxyFilter::new().predicate({
            let p1 = p[1].id;
            move |x| x.id == p1
        })]));
    let lease = acquire(fx, &skip).await.expect("round_robin with filter");
    assert_eq!(lease.proxy_id, p[2].id, "next matching after the cursor");
    let lease = acquire(fx, &req).await.expect("round_robin");
    assert_eq!(lease.proxy_id, p[0].id, "wraps to the smallest id");
}

/// random leases only matching proxies, and (over many draws) more than one.
pub async fn random_selector_leases_a_matching_proxy(fx: &ContractFixture) {
    let pool = new_pool(fx, "random").await;
    let consumer = new_consumer(fx, "random").await;
    let p = save_many(fx, 5, |i| {
        proxy(&pool, i).country(if i % 2 == 0 { "AR" } else { "UY" })
    })
    .await;
    let want: BTreeSet<ProxyId> = p
        .iter()
        .filter(|x| x.country.as_deref() == Some("UY"))
        .map(|x| x.id)
        .collect();
    let req = request(&pool, consumer, LONG)
        .with_selector(Selector::Random)
        .with_filter(ProxyFilter::new().country("UY"));
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let lease = acquire(fx, &req).await.expect("random");
        assert!(want.contains(&lease.proxy_id), "random leased a non-match");
        seen.insert(lease.proxy_id);
        assert!(release(fx, lease.id).await.was_released());
    }
    assert_eq!(seen, want, "40 random draws among 2 should see both");
    let req = request(&pool, consumer, LONG).with_selector(Selector::Random);
    let lease = acquire(fx, &req).await.expect("random without a filter");
    assert!(p.iter().any(|x| x.id == lease.proxy_id));
}

/// lowest_latency orders by the latest reachable latency (set through
/// health results); never-measured proxies come last; ties by id.
pub async fn lowest_latency_prefers_the_fastest(fx: &ContractFixture) {
    let pool = new_pool(fx, "latency").await;
    let consumer = new_consumer(fx, "latency").await;
    let p = save_many(fx, 5, |i| proxy(&pool, i).max_concurrency(1)).await;
    let t = base_time();
    let policy = HealthPolicy::default();
    // p0 300 ms, p1 50 ms (after having been 500), p2 never, p3 120, p4 120.
    for (i, ms) in [(0, 300.0), (1, 500.0), (1, 50.0), (3, 120.0), (4, 120.0)] {
        apply(fx, &health(&p[i], ProxyStatus::Active, Some(ms), t), policy).await;
    }
    let req = request(&pool, consumer, LONG).with_selector(Selector::LowestLatency);
    let peek = store(fx)
        .find_available(&pool.name, &ProxyFilter::new(), Selector::LowestLatency)
        .await
        .expect("find_available")
        .expect("a proxy");
    assert_eq!(peek.id, p[1].id);
    let mut got = Vec::new();
    while let Some(lease) = acquire(fx, &req).await {
        got.push(lease.proxy_id);
        assert!(got.len() <= 5, "more leases than proxies");
    }
    let want: Vec<ProxyId> = [1, 3, 4, 0, 2].iter().map(|&i| p[i].id).collect();
    assert_eq!(got, want, "lowest_latency order");
}
