//! The background upkeep (`pharox::upkeep`): one leader per task, standby
//! and takeover, sweep locks shared with other sweeps, cleanup of expired
//! leases, and a gentle stop. In memory, under paused time (the intervals
//! pass without waiting); the PostgreSQL locks are exercised across
//! processes by `pharox serve`'s replica test in the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pharox::ports::{ManualClock, TaskLocks};
use pharox::upkeep::{SweepPools, SweepStart, UpkeepListener, start_locked_sweep, upkeep};
use pharox::{
    AcquireRequest, HealthOrchestrator, MemoryStorage, MemoryTaskLocks, PharoxError, PoolId, Proxy,
    ProxyPool, ProxyProtocol, ProxyStorage, SimulatedProbe, UpkeepEvent, UpkeepTask,
    sweep_lock_key,
};
use tokio::sync::mpsc;

const EVERY: Duration = Duration::from_secs(60);

async fn seeded(storage: &MemoryStorage, name: &str, n: usize) -> PoolId {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            Proxy::builder(
                pool.id,
                format!("10.3.0.{}", i + 1),
                8080,
                ProxyProtocol::Http,
            )
            .build()
            .unwrap()
        })
        .collect();
    storage.add_proxies(&proxies).await.unwrap();
    pool.id
}

fn orchestrator(storage: &Arc<MemoryStorage>, probe_latency: Duration) -> HealthOrchestrator {
    let storage: Arc<dyn ProxyStorage> = storage.clone();
    HealthOrchestrator::builder(storage, Arc::new(SimulatedProbe::new(probe_latency)))
        .concurrency(1)
        .build()
        .unwrap()
}

/// A listener that sends `(who, event)` down a channel.
fn tagged(
    who: &'static str,
    tx: &mpsc::UnboundedSender<(&'static str, UpkeepEvent)>,
) -> UpkeepListener {
    let tx = tx.clone();
    Arc::new(move |event: &UpkeepEvent| {
        let _ = tx.send((who, event.clone()));
    })
}

#[tokio::test(start_paused = true)]
async fn one_process_leads_the_sweeps_the_other_stands_by_and_takes_over() {
    let storage = Arc::new(MemoryStorage::new());
    seeded(&storage, "p", 3).await;
    let locks = Arc::new(MemoryTaskLocks::new());
    let (tx, mut events) = mpsc::unbounded_channel();
    let start = |who: &'static str| {
        upkeep(storage.clone(), locks.clone(), who)
            .health(
                orchestrator(&storage, Duration::from_millis(10)),
                EVERY,
                SweepPools::All,
            )
            .listener(tagged(who, &tx))
            .spawn()
            .unwrap()
    };
    let a = start("a");
    assert!(matches!(
        events.recv().await,
        Some(("a", UpkeepEvent::Leading(UpkeepTask::Health)))
    ));
    match events.recv().await {
        Some(("a", UpkeepEvent::Swept { pool, summary })) => {
            assert_eq!(pool, "p");
            assert_eq!(summary.checked, 3);
        }
        other => panic!("{other:?}"),
    }
    let b = start("b");
    match events.recv().await {
        Some(("b", UpkeepEvent::StandingBy { task, leader })) => {
            assert_eq!(task, UpkeepTask::Health);
            assert_eq!(leader.as_deref(), Some("a"));
        }
        other => panic!("{other:?}"),
    }
    // Three more intervals: only the leader sweeps; b says nothing more.
    for _ in 0..3 {
        assert!(matches!(
            events.recv().await,
            Some(("a", UpkeepEvent::Swept { .. }))
        ));
    }
    a.stop().await;
    assert!(matches!(
        events.recv().await,
        Some(("b", UpkeepEvent::Leading(UpkeepTask::Health)))
    ));
    assert!(matches!(
        events.recv().await,
        Some(("b", UpkeepEvent::Swept { .. }))
    ));
    b.stop().await;
    assert!(
        locks
            .holder(UpkeepTask::Health.leader_key())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_whose_sweep_lock_is_held_is_skipped_and_the_others_are_swept() {
    let storage = Arc::new(MemoryStorage::new());
    let busy = seeded(&storage, "busy", 2).await;
    seeded(&storage, "free", 2).await;
    let locks = Arc::new(MemoryTaskLocks::new());
    let held = locks
        .try_lock(&sweep_lock_key(busy), "pharox health check, pid 7")
        .await
        .unwrap()
        .unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let upkeep = upkeep(storage.clone(), locks.clone(), "serve")
        .health(
            orchestrator(&storage, Duration::ZERO),
            EVERY,
            SweepPools::Named(vec!["busy".into(), "free".into()]),
        )
        .listener(tagged("serve", &tx))
        .spawn()
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Leading(_)))
    ));
    match events.recv().await {
        Some((_, UpkeepEvent::SweepSkipped { pool, holder })) => {
            assert_eq!(pool, "busy");
            assert_eq!(holder.as_deref(), Some("pharox health check, pid 7"));
        }
        other => panic!("{other:?}"),
    }
    match events.recv().await {
        Some((_, UpkeepEvent::Swept { pool, summary })) => {
            assert_eq!(pool, "free");
            assert_eq!(summary.checked, 2);
        }
        other => panic!("{other:?}"),
    }
    // Once the other sweep ends, the next round sweeps the pool.
    held.release().await.unwrap();
    match events.recv().await {
        Some((_, UpkeepEvent::Swept { pool, .. })) => assert_eq!(pool, "busy"),
        other => panic!("{other:?}"),
    }
    upkeep.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_pool_fails_its_round_and_the_upkeep_goes_on() {
    let storage = Arc::new(MemoryStorage::new());
    seeded(&storage, "p", 1).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let upkeep = upkeep(storage.clone(), Arc::new(MemoryTaskLocks::new()), "serve")
        .health(
            orchestrator(&storage, Duration::ZERO),
            EVERY,
            SweepPools::Named(vec!["gone".into(), "p".into()]),
        )
        .listener(tagged("serve", &tx))
        .spawn()
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Leading(_)))
    ));
    match events.recv().await {
        Some((_, UpkeepEvent::Failed { task, error })) => {
            assert_eq!(task, UpkeepTask::Health);
            assert!(error.contains("gone"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Swept { .. }))
    ));
    upkeep.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cleanup_reclaims_expired_leases_every_interval() {
    let clock = Arc::new(ManualClock::starting_now());
    let storage = Arc::new(MemoryStorage::with_clock(clock.clone()));
    seeded(&storage, "p", 2).await;
    let consumer = storage.ensure_consumer("worker").await.unwrap();
    let lease = storage
        .acquire(&AcquireRequest::new("p", consumer, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(31));
    let (tx, mut events) = mpsc::unbounded_channel();
    let upkeep = upkeep(storage.clone(), Arc::new(MemoryTaskLocks::new()), "serve")
        .cleanup(Duration::from_secs(10))
        .listener(tagged("serve", &tx))
        .spawn()
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Leading(UpkeepTask::Cleanup)))
    ));
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Cleaned { reclaimed: 1 }))
    ));
    assert!(storage.get_lease(lease.id).await.unwrap().status == pharox::LeaseStatus::Released);
    // A lease that expires later is reclaimed at a later round.
    let second = storage
        .acquire(&AcquireRequest::new("p", consumer, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Cleaned { reclaimed: 0 }))
    ));
    clock.advance(Duration::from_secs(31));
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Cleaned { reclaimed: 1 }))
    ));
    assert!(storage.get_lease(second.id).await.unwrap().status == pharox::LeaseStatus::Released);
    upkeep.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_during_a_sweep_ends_it_gently_and_frees_both_locks() {
    let storage = Arc::new(MemoryStorage::new());
    let pool = seeded(&storage, "p", 3).await;
    let locks = Arc::new(MemoryTaskLocks::new());
    let (tx, mut events) = mpsc::unbounded_channel();
    // Each probe takes an hour: the stop comes while the first is in flight.
    let upkeep = upkeep(storage.clone(), locks.clone(), "serve")
        .health(
            orchestrator(&storage, Duration::from_secs(3600)),
            EVERY,
            SweepPools::All,
        )
        .listener(tagged("serve", &tx))
        .spawn()
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some((_, UpkeepEvent::Leading(_)))
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    upkeep.stop().await;
    match events.recv().await {
        Some((_, UpkeepEvent::Swept { summary, .. })) => {
            assert_eq!(summary.total, 3);
            assert_eq!(summary.checked, 0, "no probe finished within the hour");
        }
        other => panic!("{other:?}"),
    }
    assert!(locks.holder(&sweep_lock_key(pool)).await.unwrap().is_none());
    assert!(
        locks
            .holder(UpkeepTask::Health.leader_key())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_second_locked_sweep_of_a_pool_is_told_who_runs_the_first() {
    let storage = Arc::new(MemoryStorage::new());
    seeded(&storage, "p", 2).await;
    let locks = MemoryTaskLocks::new();
    let orchestrator = orchestrator(&storage, Duration::ZERO);
    let SweepStart::Started(first) = start_locked_sweep(&orchestrator, &locks, "p", "api, pid 1")
        .await
        .unwrap()
    else {
        panic!("the pool was free");
    };
    assert_eq!(first.total(), 2);
    match start_locked_sweep(&orchestrator, &locks, "p", "upkeep")
        .await
        .unwrap()
    {
        SweepStart::Busy { holder } => assert_eq!(holder.as_deref(), Some("api, pid 1")),
        SweepStart::Started(_) => panic!("two sweeps of one pool at once"),
    }
    let (_stop, never) = tokio::sync::watch::channel(false);
    let summary = first.finish(never).await;
    assert_eq!(summary.checked, 2);
    assert!(matches!(
        start_locked_sweep(&orchestrator, &locks, "p", "upkeep")
            .await
            .unwrap(),
        SweepStart::Started(_)
    ));
    assert!(matches!(
        start_locked_sweep(&orchestrator, &locks, "nope", "upkeep").await,
        Err(PharoxError::Storage(_))
    ));
}

#[tokio::test]
async fn a_zero_interval_is_refused_naming_it() {
    let storage = Arc::new(MemoryStorage::new());
    let refused = upkeep(storage.clone(), Arc::new(MemoryTaskLocks::new()), "serve")
        .cleanup(Duration::ZERO)
        .spawn();
    match refused {
        Err(PharoxError::Invalid(e)) => assert_eq!(e.field, "cleanup_interval"),
        other => panic!("{other:?}"),
    }
}
