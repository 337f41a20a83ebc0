//! Unit tests of the memory-specific parts: the bounded lease history, the
//! bounded expiry heap, and index consistency under random operations
//! (checked against a naive scan of the pool).

use std::sync::Arc;
use std::time::Duration;

use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, LeaseId, Outcome, Proxy, ProxyFailureKind,
    ProxyFilter, ProxyId, ProxyPool, ProxyProtocol, ProxyStatus, Selector, SessionKey,
    SessionRequest, TargetHost, UsagePolicy,
};
use pharox_ports::{
    AcquireRequest, Clock, ManualClock, ProxyStorage, ReleaseOutcome, StorageError,
};
use proptest::prelude::*;

use crate::MemoryStorage;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

async fn setup(
    storage: &MemoryStorage,
    max: &[Option<u32>],
) -> (ProxyPool, ConsumerId, Vec<Proxy>) {
    let pool = storage
        .save_pool(&ProxyPool::new("p").unwrap())
        .await
        .unwrap();
    let consumer = storage.ensure_consumer("w").await.unwrap();
    let mut proxies = Vec::new();
    for (i, m) in max.iter().enumerate() {
        let i = u16::try_from(i).unwrap();
        let mut b = Proxy::builder(
            pool.id,
            format!("10.0.0.{}", i + 1),
            8000 + i,
            ProxyProtocol::Http,
        )
        .country(if i % 2 == 0 { "A" } else { "B" });
        if let Some(m) = m {
            b = b.max_concurrency(*m);
        }
        proxies.push(storage.save_proxy(&b.build().unwrap()).await.unwrap());
    }
    proxies.sort_by_key(|p| p.id);
    (pool, consumer, proxies)
}

impl MemoryStorage {
    fn with_pool<T>(&self, name: &str, f: impl FnOnce(&crate::pool::PoolState) -> T) -> T {
        let catalog = self.catalog.read();
        let cell = catalog.by_name.get(name).unwrap();
        f(&cell.lock())
    }
}

#[test]
fn lease_history_is_bounded() {
    block_on(async {
        let storage = MemoryStorage::builder().lease_history(128).build();
        let (pool, consumer, _) = setup(&storage, &[Some(1)]).await;
        let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let mut ids = Vec::new();
        for _ in 0..5_000 {
            let lease = storage.acquire(&req).await.unwrap().unwrap();
            assert!(storage.release(lease.id).await.unwrap().was_released());
            ids.push(lease.id);
        }
        assert!(
            storage.leases.finished_len() <= 128,
            "history over its bound"
        );
        assert_eq!(storage.leases.len(), storage.leases.finished_len());
        assert!(matches!(
            storage.release(ids[0]).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            storage.release(ids[4_999]).await.unwrap(),
            ReleaseOutcome::AlreadyReleased { .. }
        ));
        let last = storage.get_lease(ids[4_999]).await.unwrap();
        assert_eq!(last.status, pharox_domain::LeaseStatus::Released);
        // The expiry heap is compacted: it does not keep every lease ever made.
        let heap = storage.with_pool(&pool.name, crate::pool::PoolState::expiry_len);
        assert!(heap <= 1025, "expiry heap holds {heap} entries");
    });
}

/// Acquires and releases `n` leases on a thread of its own; their ids.
fn pairs_on_a_thread(storage: &Arc<MemoryStorage>, req: &AcquireRequest, n: usize) -> Vec<LeaseId> {
    let (storage, req) = (Arc::clone(storage), req.clone());
    std::thread::spawn(move || {
        block_on(async {
            let mut ids = Vec::new();
            for _ in 0..n {
                let lease = storage.acquire(&req).await.unwrap().unwrap();
                assert!(storage.release(lease.id).await.unwrap().was_released());
                ids.push(lease.id);
            }
            ids
        })
    })
    .join()
    .unwrap()
}

#[test]
fn a_threads_leases_keep_to_one_shard() {
    let storage = Arc::new(MemoryStorage::new());
    let (pool, consumer, _) = block_on(setup(&storage, &[None]));
    let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    let shard = |id: LeaseId| id.0.as_bytes()[15] % 64;
    let first = pairs_on_a_thread(&storage, &req, 50);
    let second = pairs_on_a_thread(&storage, &req, 50);
    assert!(first.iter().all(|&id| shard(id) == shard(first[0])));
    assert!(second.iter().all(|&id| shard(id) == shard(second[0])));
    assert_ne!(
        shard(first[0]),
        shard(second[0]),
        "threads take shards in turn"
    );
    // Still UUIDv7: the shard is in the random part.
    assert!(first.iter().all(|id| id.0.get_version_num() == 7));
}

#[test]
fn a_thread_that_starts_late_gets_its_share_of_the_history() {
    let storage = Arc::new(MemoryStorage::builder().lease_history(128).build());
    let (pool, consumer, _) = block_on(setup(&storage, &[None]));
    let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    let early = pairs_on_a_thread(&storage, &req, 1_000);
    // One thread alone keeps the whole history, oldest forgotten first.
    assert_eq!(storage.leases.finished_len(), 128);
    block_on(async {
        for &id in &early[early.len() - 128..] {
            assert!(!storage.release(id).await.unwrap().was_released());
        }
        assert!(storage.release(early[early.len() - 129]).await.is_err());
    });
    let late = pairs_on_a_thread(&storage, &req, 1_000);
    // The late thread took room from the first one, up to half of it,
    // and the bound held.
    assert!(
        storage.leases.finished_len() <= 129,
        "history over its bound"
    );
    block_on(async {
        for &id in &late[late.len() - 60..] {
            assert!(
                !storage.release(id).await.unwrap().was_released(),
                "forgot a recent lease"
            );
        }
        for &id in &early[early.len() - 60..] {
            assert!(
                !storage.release(id).await.unwrap().was_released(),
                "took more than its share"
            );
        }
    });
}

#[test]
fn zero_history_forgets_at_once() {
    block_on(async {
        let storage = MemoryStorage::builder().lease_history(0).build();
        let (pool, consumer, _) = setup(&storage, &[None]).await;
        let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let lease = storage.acquire(&req).await.unwrap().unwrap();
        assert!(storage.release(lease.id).await.unwrap().was_released());
        assert!(matches!(
            storage.release(lease.id).await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(storage.leases.len(), 0);
    });
}

#[test]
fn health_history_is_bounded() {
    block_on(async {
        let storage = MemoryStorage::builder().health_history(3).build();
        let (_, _, proxies) = setup(&storage, &[None]).await;
        let p = &proxies[0];
        let t0 = pharox_domain::now_micros();
        for i in 0..10 {
            let result = HealthCheckResult {
                proxy_id: p.id,
                protocol: p.protocol,
                status: ProxyStatus::Active,
                reachable: true,
                latency_ms: Some(f64::from(i)),
                attempts: 1,
                http_status: Some(200),
                checked_at: t0 + time::Duration::seconds(i64::from(i)),
                error: None,
            };
            storage
                .apply_health_result(&result, &HealthPolicy::default())
                .await
                .unwrap();
        }
        let records = storage.list_health_records(p.id, 100).await.unwrap();
        let latencies: Vec<_> = records.iter().map(|r| r.latency_ms).collect();
        assert_eq!(latencies, vec![Some(9.0), Some(8.0), Some(7.0)]);
    });
}

#[test]
fn snapshots_are_shared_until_the_proxy_changes() {
    block_on(async {
        let storage = MemoryStorage::new();
        let (pool, consumer, _) = setup(&storage, &[Some(1)]).await;
        let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let first = storage.acquire(&req).await.unwrap().unwrap();
        storage.release(first.id).await.unwrap();
        let second = storage.acquire(&req).await.unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&first.proxy, &second.proxy),
            "an unchanged proxy must not be deep-cloned per lease"
        );
    });
}

// ----------------------------------------------------- random operations

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        selector: usize,
        filter: usize,
        ttl: u64,
    },
    Release(usize),
    Renew(usize, u64),
    Advance(u64),
    Health {
        proxy: usize,
        status: usize,
        latency: Option<u32>,
    },
    SetStatus {
        proxy: usize,
        status: usize,
    },
    Delete(usize),
    Add(Option<u32>),
    Cleanup,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5usize, 0..5usize, 1..40u64)
            .prop_map(|(selector, filter, ttl)| Op::Acquire { selector, filter, ttl }),
        4 => (0..64usize).prop_map(Op::Release),
        1 => (0..64usize, 1..40u64).prop_map(|(i, ttl)| Op::Renew(i, ttl)),
        2 => (1..20u64).prop_map(Op::Advance),
        2 => (0..16usize, 0..3usize, proptest::option::of(0..500u32))
            .prop_map(|(proxy, status, latency)| Op::Health { proxy, status, latency }),
        1 => (0..16usize, 0..4usize).prop_map(|(proxy, status)| Op::SetStatus { proxy, status }),
        1 => (0..16usize).prop_map(Op::Delete),
        1 => proptest::option::of(1..3u32).prop_map(Op::Add),
        1 => Just(Op::Cleanup),
    ]
}

fn filter(i: usize) -> ProxyFilter {
    match i {
        0 => ProxyFilter::new(),
        1 => ProxyFilter::new().country("A"),
        2 => ProxyFilter::new().none_of([ProxyFilter::new().country("A")]),
        3 => ProxyFilter::new().predicate(|p| p.port % 3 != 0),
        _ => ProxyFilter::new().predicate(|p| p.current_leases == 0),
    }
}

/// What a naive scan says `selector` must pick (`None` for random: any
/// candidate will do, checked separately).
fn reference(
    proxies: &[Proxy],
    f: &ProxyFilter,
    selector: Selector,
    cursor: Option<ProxyId>,
) -> (Vec<ProxyId>, Option<ProxyId>) {
    let mut c: Vec<&Proxy> = proxies
        .iter()
        .filter(|p| p.has_capacity() && f.matches(p))
        .collect();
    c.sort_by_key(|p| p.id);
    let candidates = c.iter().map(|p| p.id).collect();
    let pick = match selector {
        Selector::FirstAvailable => c.first().map(|p| p.id),
        Selector::RoundRobin => cursor
            .and_then(|cur| c.iter().find(|p| p.id > cur))
            .or(c.first())
            .map(|p| p.id),
        Selector::LeastUsed => c
            .iter()
            .min_by_key(|p| (p.current_leases, p.checked_at, p.id))
            .map(|p| p.id),
        Selector::LowestLatency => c
            .iter()
            .min_by(|a, b| {
                let key =
                    |p: &Proxy| (p.health.last_latency_ms.is_none(), p.health.last_latency_ms);
                let (ka, kb) = (key(a), key(b));
                ka.0.cmp(&kb.0)
                    .then(ka.1.partial_cmp(&kb.1).unwrap_or(std::cmp::Ordering::Equal))
                    .then(a.id.cmp(&b.id))
            })
            .map(|p| p.id),
        Selector::Random => None,
    };
    (candidates, pick)
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    block_on(async move {
        let clock = Arc::new(ManualClock::starting_now());
        let storage = MemoryStorage::builder()
            .clock(clock.clone())
            .lease_history(64)
            .build();
        let (pool, consumer, mut proxies) =
            setup(&storage, &[Some(1), Some(2), None, Some(1), Some(3), None]).await;
        let mut held: Vec<LeaseId> = Vec::new();
        let mut cursor: Option<ProxyId> = None;
        let mut port = 9000u16;
        for op in ops {
            match op {
                Op::Acquire {
                    selector,
                    filter: fi,
                    ttl,
                } => {
                    let selector = Selector::ALL[selector];
                    let f = filter(fi);
                    let peek = storage
                        .find_available(&pool.name, &f, selector)
                        .await
                        .unwrap()
                        .map(|p| p.id);
                    let now = storage.list_proxies(pool.id).await.unwrap();
                    let (candidates, want) = reference(&now, &f, selector, cursor);
                    let req =
                        AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(ttl))
                            .with_filter(f)
                            .with_selector(selector);
                    let got = storage.acquire(&req).await.unwrap();
                    let got_id = got.as_ref().map(|l| l.proxy_id);
                    if selector == Selector::Random {
                        prop_assert_eq!(got_id.is_some(), !candidates.is_empty());
                        if let Some(id) = got_id {
                            prop_assert!(candidates.contains(&id), "random picked a non-candidate");
                        }
                    } else {
                        prop_assert_eq!(
                            got_id,
                            want,
                            "{} picked differently from the scan",
                            selector
                        );
                        prop_assert_eq!(peek, want, "find_available disagrees for {}", selector);
                    }
                    if let Some(lease) = got {
                        if selector == Selector::RoundRobin {
                            cursor = Some(lease.proxy_id);
                        }
                        held.push(lease.id);
                    }
                }
                Op::Release(i) => {
                    if !held.is_empty() {
                        let id = held.swap_remove(i % held.len());
                        // Not found when its proxy was deleted, or when it
                        // expired and the (tiny) history forgot it.
                        match storage.release(id).await {
                            Ok(_) | Err(StorageError::NotFound { .. }) => {}
                            Err(e) => prop_assert!(false, "release failed: {}", e),
                        }
                    }
                }
                Op::Renew(i, ttl) => {
                    if !held.is_empty() {
                        let id = held[i % held.len()];
                        match storage.renew(id, Duration::from_secs(ttl)).await {
                            Ok(_)
                            | Err(
                                StorageError::LeaseNotActive(_) | StorageError::NotFound { .. },
                            ) => {}
                            Err(e) => prop_assert!(false, "renew failed: {}", e),
                        }
                    }
                }
                Op::Advance(s) => clock.advance(Duration::from_secs(s)),
                Op::Health {
                    proxy,
                    status,
                    latency,
                } => {
                    if !proxies.is_empty() {
                        let p = &proxies[proxy % proxies.len()];
                        let status = [
                            ProxyStatus::Active,
                            ProxyStatus::Slow,
                            ProxyStatus::Inactive,
                        ][status];
                        let result = HealthCheckResult {
                            proxy_id: p.id,
                            protocol: p.protocol,
                            status,
                            reachable: status != ProxyStatus::Inactive,
                            latency_ms: latency.map(f64::from),
                            attempts: 1,
                            http_status: None,
                            checked_at: clock.now(),
                            error: None,
                        };
                        storage
                            .apply_health_result(&result, &HealthPolicy::immediate())
                            .await
                            .unwrap();
                    }
                }
                Op::SetStatus { proxy, status } => {
                    if !proxies.is_empty() {
                        let mut p = storage
                            .get_proxy(proxies[proxy % proxies.len()].id)
                            .await
                            .unwrap();
                        p.status = ProxyStatus::ALL[status];
                        storage.save_proxy(&p).await.unwrap();
                    }
                }
                Op::Delete(i) => {
                    if !proxies.is_empty() {
                        let p = proxies.remove(i % proxies.len());
                        storage.delete_proxy(p.id).await.unwrap();
                    }
                }
                Op::Add(max) => {
                    port += 1;
                    let mut b =
                        Proxy::builder(pool.id, "10.1.0.1", port, ProxyProtocol::Http).country("A");
                    if let Some(m) = max {
                        b = b.max_concurrency(m);
                    }
                    proxies.push(storage.save_proxy(&b.build().unwrap()).await.unwrap());
                }
                Op::Cleanup => {
                    storage.cleanup_expired().await.unwrap();
                }
            }
            let check = storage.with_pool(&pool.name, crate::pool::PoolState::check_invariants);
            prop_assert!(check.is_ok(), "{:?}", check);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn indexes_stay_consistent(ops in proptest::collection::vec(op(), 1..120)) {
        run_ops(ops)?;
    }
}

fn one_proxy_storage() -> (MemoryStorage, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::starting_now());
    (MemoryStorage::with_clock(clock.clone()), clock)
}

/// Sessions past their TTL are swept once the map reaches its sweep size,
/// so keys used once do not pile up; live ones are kept.
#[test]
fn expired_sessions_are_swept() {
    block_on(async {
        let (storage, clock) = one_proxy_storage();
        let (pool, consumer, _) = setup(&storage, &[None]).await;
        let acquire_under = |key: String, ttl: u64| {
            let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60))
                .with_session(SessionRequest::new(
                    SessionKey::new(key).unwrap(),
                    Duration::from_secs(ttl),
                ));
            let storage = &storage;
            async move { storage.acquire(&req).await.unwrap().unwrap() }
        };
        for i in 0..10 {
            acquire_under(format!("live-{i}"), 3600).await;
        }
        for i in 0..1014 {
            acquire_under(format!("once-{i}"), 1).await;
        }
        assert_eq!(storage.with_pool("p", |s| s.session_count()), 1024);
        clock.advance(Duration::from_secs(2));
        acquire_under("new".to_owned(), 60).await;
        assert_eq!(
            storage.with_pool("p", |s| s.session_count()),
            11,
            "the 1014 expired sessions are swept, the 10 live ones and the new one kept"
        );
    });
}

/// A cooldown or a ban switches the per-proxy checks on only while one
/// can hold: once every stored cooldown and ban has ended, a plain acquire
/// is back on the path without them. Ended bans are kept (their count in a
/// row is what the next ban doubles) but not listed.
#[test]
fn cooldown_and_ban_checks_switch_off_when_they_end() {
    block_on(async {
        let (storage, clock) = one_proxy_storage();
        let (pool, consumer, proxies) = setup(&storage, &[None]).await;
        let policy = UsagePolicy::default();
        let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(3600));
        let lease = storage.acquire(&req).await.unwrap().unwrap();
        let site = TargetHost::new("a.example").unwrap();
        let plain = |storage: &MemoryStorage, target: Option<&TargetHost>| {
            let now = clock.now();
            storage.with_pool("p", |s| s.skips(now, crate::micros(now), target).none())
        };
        assert!(plain(&storage, Some(&site)), "nothing to check yet");
        storage
            .report_outcome(lease.id, &Outcome::blocked(site.clone()), &policy)
            .await
            .unwrap();
        assert!(
            plain(&storage, None),
            "a ban needs no check without a target"
        );
        assert!(!plain(&storage, Some(&site)));
        for _ in 0..2 {
            storage
                .report_outcome(
                    lease.id,
                    &Outcome::proxy_failure(ProxyFailureKind::Timeout),
                    &policy,
                )
                .await
                .unwrap();
        }
        assert!(!plain(&storage, None), "cooling down: acquires check");
        clock.advance(policy.ban_base);
        assert!(
            plain(&storage, Some(&site)),
            "every cooldown and ban has ended"
        );
        assert!(
            storage
                .list_target_bans(proxies[0].id)
                .await
                .unwrap()
                .is_empty()
        );
        let kept = storage.with_pool("p", |s| s.proxy(proxies[0].id).unwrap().bans.len());
        assert_eq!(kept, 1, "the ended ban is kept for its doubling");
    });
}

/// An outcome changes the stored proxy, not the snapshot a lease was
/// handed (copy-on-write).
#[test]
fn outcomes_leave_lease_snapshots_alone() {
    block_on(async {
        let (storage, _clock) = one_proxy_storage();
        let (pool, consumer, proxies) = setup(&storage, &[None]).await;
        let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let lease = storage.acquire(&req).await.unwrap().unwrap();
        let after = storage
            .report_outcome(
                lease.id,
                &Outcome::proxy_failure(ProxyFailureKind::Timeout),
                &UsagePolicy::default(),
            )
            .await
            .unwrap();
        assert_eq!(after.usage.error_score, 1.0);
        assert_eq!(
            lease.proxy.usage.error_score, 0.0,
            "the snapshot is unchanged"
        );
        let stored = storage.get_proxy(proxies[0].id).await.unwrap();
        assert_eq!(stored.usage.error_score, 1.0);
    });
}
