//! Sticky sessions: an acquire with a session key leases the proxy the
//! session used last while it qualifies, moves the session when it does
//! not, shares it between consumers, and forgets it after its TTL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pharox_domain::{
    ConsumerId, Lease, LeaseSession, Outcome, ProxyId, ProxyPool, ProxyStatus, Selector,
    SessionKey, SessionRequest,
};
use pharox_ports::AcquireRequest;
use tokio::sync::Barrier;

use super::outcomes::{cool_down, policy, target};
use super::support::*;
use crate::ContractFixture;

fn session(key: &SessionKey, ttl: Duration) -> SessionRequest {
    SessionRequest::new(key.clone(), ttl)
}

fn new_key() -> SessionKey {
    SessionKey::new(unique("session")).expect("valid session key")
}

/// An acquire under `key` (session TTL [`LONG`]) by `selector`.
fn under(
    pool: &ProxyPool,
    consumer: ConsumerId,
    key: &SessionKey,
    selector: Selector,
) -> AcquireRequest {
    request(pool, consumer, LONG)
        .with_selector(selector)
        .with_session(session(key, LONG))
}

#[track_caller]
fn expect_session(lease: &Lease, key: &SessionKey, moved: bool, what: &str) {
    assert_eq!(
        lease.session,
        Some(LeaseSession {
            key: key.clone(),
            moved,
        }),
        "{what}"
    );
}

async fn leased(fx: &ContractFixture, req: &AcquireRequest, what: &str) -> Lease {
    acquire(fx, req)
        .await
        .unwrap_or_else(|| panic!("{what}: expected a lease, got none"))
}

/// A second acquire under the same key gets the same proxy, even with
/// round_robin (which alone would move on); reads of the lease carry no
/// session.
pub async fn session_is_reused(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky").await;
    let consumer = new_consumer(fx, "sticky").await;
    save_many(fx, 3, |i| proxy(&pool, i)).await;
    let key = new_key();
    let req = under(&pool, consumer, &key, Selector::RoundRobin);
    let first = leased(fx, &req, "first acquire").await;
    expect_session(&first, &key, false, "a new session did not move");
    for round in 0..3 {
        let again = leased(fx, &req, "acquire under the session").await;
        assert_eq!(
            again.proxy_id, first.proxy_id,
            "round {round}: the session's proxy is leased again"
        );
        expect_session(&again, &key, false, "a reused session did not move");
    }
    let plain = leased(
        fx,
        &request(&pool, consumer, LONG).with_selector(Selector::RoundRobin),
        "plain",
    )
    .await;
    assert_eq!(plain.session, None, "no session asked, none in the lease");

    assert_eq!(
        lease_now(fx, first.id).await.session,
        None,
        "get_lease reads no session"
    );
    let listed = store(fx)
        .list_leases(&pool.name, None, 100)
        .await
        .expect("list_leases");
    assert_eq!(listed.len(), 5);
    assert!(
        listed.iter().all(|l| l.session.is_none()),
        "list_leases reads no session"
    );
}

/// When the bound proxy cools down the session moves (moved: true), and the
/// next acquire stays on the new proxy (moved: false).
pub async fn session_moves_when_its_proxy_cools_down(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-cool").await;
    let consumer = new_consumer(fx, "sticky-cool").await;
    save_many(fx, 2, |i| proxy(&pool, i)).await;
    let key = new_key();
    let req = under(&pool, consumer, &key, Selector::FirstAvailable);
    let first = leased(fx, &req, "first").await;
    cool_down(fx, first.id, &policy()).await;
    let moved = leased(fx, &req, "after the cooldown").await;
    assert_ne!(
        moved.proxy_id, first.proxy_id,
        "a cooling proxy is not reused"
    );
    expect_session(
        &moved,
        &key,
        true,
        "the session moved off the cooling proxy",
    );
    let next = leased(fx, &req, "after the move").await;
    assert_eq!(
        next.proxy_id, moved.proxy_id,
        "the session stays on its new proxy"
    );
    expect_session(&next, &key, false, "staying is not moving");
}

/// When the bound proxy is full the session moves to one with capacity,
/// and stays there once both are free again.
pub async fn session_moves_when_its_proxy_is_full(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-full").await;
    let consumer = new_consumer(fx, "sticky-full").await;
    save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    let key = new_key();
    let req = under(&pool, consumer, &key, Selector::FirstAvailable);
    let first = leased(fx, &req, "first").await;
    let moved = leased(fx, &req, "with the first proxy full").await;
    assert_ne!(moved.proxy_id, first.proxy_id);
    expect_session(&moved, &key, true, "the session moved off the full proxy");
    assert!(release(fx, first.id).await.was_released());
    assert!(release(fx, moved.id).await.was_released());
    let next = leased(fx, &req, "with both free").await;
    assert_eq!(
        next.proxy_id, moved.proxy_id,
        "the session stays where it moved (first_available alone would go back)"
    );
    expect_session(&next, &key, false, "staying is not moving");
}

/// The session moves when its proxy no longer matches the filter, is banned
/// for the request's target, or is no longer active.
pub async fn session_moves_when_its_proxy_no_longer_qualifies(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-qualify").await;
    let consumer = new_consumer(fx, "sticky-qualify").await;
    let proxies = save_many(fx, 3, |i| proxy(&pool, i)).await;
    let key = new_key();
    let req = under(&pool, consumer, &key, Selector::FirstAvailable);
    let first = leased(fx, &req, "first").await;

    let other = proxies
        .iter()
        .find(|p| p.id != first.proxy_id)
        .expect("three proxies");
    let by_filter = leased(fx, &req.clone().with_filter(only(other.id)), "filtered").await;
    assert_eq!(by_filter.proxy_id, other.id);
    expect_session(
        &by_filter,
        &key,
        true,
        "moved: the old proxy does not match",
    );

    let site = target("shop.example");
    store(fx)
        .report_outcome(by_filter.id, &Outcome::blocked(site.clone()), &policy())
        .await
        .expect("report_outcome");
    let for_site = leased(fx, &req.clone().with_target(site.clone()), "for the site").await;
    assert_ne!(for_site.proxy_id, other.id, "banned for the site");
    expect_session(
        &for_site,
        &key,
        true,
        "moved: the old proxy is banned for the target",
    );

    let mut inactive = proxy_now(fx, for_site.proxy_id).await;
    inactive.status = ProxyStatus::Inactive;
    store(fx).save_proxy(&inactive).await.expect("save_proxy");
    let after = leased(fx, &req, "after the proxy went inactive").await;
    assert_ne!(after.proxy_id, for_site.proxy_id);
    expect_session(&after, &key, true, "moved: the old proxy is not active");
}

/// Two consumers under one key share the session's proxy.
pub async fn session_is_shared_by_consumers(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-shared").await;
    let alice = new_consumer(fx, "alice").await;
    let bob = new_consumer(fx, "bob").await;
    save_many(fx, 3, |i| proxy(&pool, i)).await;
    let key = new_key();
    let first = leased(
        fx,
        &under(&pool, alice, &key, Selector::RoundRobin),
        "alice",
    )
    .await;
    let second = leased(fx, &under(&pool, bob, &key, Selector::RoundRobin), "bob").await;
    assert_eq!(
        second.proxy_id, first.proxy_id,
        "bob gets the session's proxy"
    );
    assert_eq!(second.consumer_id, bob, "the lease is bob's");
    expect_session(&second, &key, false, "sharing is not moving");
}

/// After its TTL a session is forgotten: the next acquire under the key is
/// a new session (moved: false), placed by the selector.
pub async fn session_expires_after_its_ttl(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-ttl").await;
    let consumer = new_consumer(fx, "sticky-ttl").await;
    save_many(fx, 3, |i| proxy(&pool, i)).await;
    let key = new_key();
    let req = request(&pool, consumer, LONG)
        .with_selector(Selector::LeastUsed)
        .with_session(session(&key, SHORT));
    let first = leased(fx, &req, "first").await;
    // Half the TTL, not a second before its end: a SQL adapter's clock keeps
    // running while the stored timestamps move back. This use renews the
    // session to SHORT from here, which PAST_SHORT then passes.
    fx.time.advance(SHORT / 2).await;
    let kept = leased(fx, &req, "before the TTL").await;
    assert_eq!(
        kept.proxy_id, first.proxy_id,
        "the session holds before its TTL"
    );
    fx.time.advance(PAST_SHORT).await;
    let fresh = leased(fx, &req, "after the TTL").await;
    assert_ne!(
        fresh.proxy_id, first.proxy_id,
        "an expired session does not bind: least_used picks a proxy without leases"
    );
    expect_session(&fresh, &key, false, "a new session did not move");
}

/// Each use renews the session's TTL.
pub async fn session_renews_on_each_use(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-renew").await;
    let consumer = new_consumer(fx, "sticky-renew").await;
    save_many(fx, 3, |i| proxy(&pool, i)).await;
    let key = new_key();
    let req = request(&pool, consumer, LONG)
        .with_selector(Selector::LeastUsed)
        .with_session(session(&key, SHORT));
    let first = leased(fx, &req, "first").await;
    for step in 0..4 {
        fx.time.advance(Duration::from_secs(6)).await;
        let again = leased(fx, &req, "within the TTL of the last use").await;
        assert_eq!(
            again.proxy_id, first.proxy_id,
            "step {step}: 6 s after the last use the session holds (least_used alone would move)"
        );
        expect_session(&again, &key, false, "reused");
    }
}

/// The same key in another pool is another session: using it there
/// neither moves nor forgets the first pool's.
pub async fn same_key_in_another_pool_is_independent(fx: &ContractFixture) {
    let east = new_pool(fx, "sticky-east").await;
    let west = new_pool(fx, "sticky-west").await;
    let consumer = new_consumer(fx, "sticky-pools").await;
    save_many(fx, 2, |i| proxy(&east, i)).await;
    let west_proxies = save_many(fx, 2, |i| proxy(&west, 100 + i)).await;
    let key = new_key();
    let in_east = leased(
        fx,
        &under(&east, consumer, &key, Selector::LeastUsed),
        "east",
    )
    .await;
    let in_west = leased(
        fx,
        &under(&west, consumer, &key, Selector::LeastUsed),
        "west",
    )
    .await;
    assert!(
        ids_of(&west_proxies).contains(&in_west.proxy_id),
        "the west pool's session leases a west proxy"
    );
    expect_session(&in_west, &key, false, "a new session in its own pool");
    let back = leased(
        fx,
        &under(&east, consumer, &key, Selector::LeastUsed),
        "east again",
    )
    .await;
    assert_eq!(
        back.proxy_id, in_east.proxy_id,
        "the east session keeps its proxy (least_used alone would pick the idle one)"
    );
    expect_session(&back, &key, false, "the east session was not touched");
}

/// When nothing qualifies the acquire gives None and the session keeps its
/// proxy.
pub async fn session_is_kept_when_nothing_qualifies(fx: &ContractFixture) {
    let pool = new_pool(fx, "sticky-none").await;
    let consumer = new_consumer(fx, "sticky-none").await;
    let bound = save(fx, proxy(&pool, 1).max_concurrency(3)).await;
    let spare = save(fx, proxy(&pool, 2).max_concurrency(1)).await;
    let key = new_key();
    let req = under(&pool, consumer, &key, Selector::LeastUsed);
    let first = leased(fx, &req.clone().with_filter(only(bound.id)), "bind").await;
    assert_eq!(first.proxy_id, bound.id);
    let blocker = leased(
        fx,
        &request(&pool, consumer, LONG).with_filter(only(spare.id)),
        "fill",
    )
    .await;
    assert!(
        acquire(fx, &req.clone().with_filter(only(spare.id)))
            .await
            .is_none(),
        "the bound proxy does not match and the other is full"
    );
    assert!(release(fx, blocker.id).await.was_released());
    let next = leased(fx, &req, "unfiltered").await;
    assert_eq!(
        next.proxy_id, bound.id,
        "the session kept its proxy (least_used alone would pick the idle one)"
    );
    expect_session(&next, &key, false, "kept, not moved");
}

/// 64 concurrent acquirers under one key on one proxy of max_concurrency 1
/// get exactly one lease, and no errors.
pub async fn contention_on_one_session_leases_once(fx: &ContractFixture) {
    const WORKERS: usize = 64;
    let pool = new_pool(fx, "sticky-contention").await;
    let consumer = new_consumer(fx, "sticky-contention").await;
    let only_proxy = save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    let key = new_key();
    let req = Arc::new(under(&pool, consumer, &key, Selector::FirstAvailable));
    let barrier = Arc::new(Barrier::new(WORKERS));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let storage = Arc::clone(&fx.storage);
            let barrier = Arc::clone(&barrier);
            let req = Arc::clone(&req);
            tokio::spawn(async move {
                barrier.wait().await;
                storage.acquire(&req).await
            })
        })
        .collect();
    let (mut leases, mut misses, mut errors) = (Vec::new(), 0, Vec::new());
    for task in tasks {
        match task.await.expect("acquire task panicked") {
            Ok(Some(lease)) => leases.push(lease),
            Ok(None) => misses += 1,
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "errors under contention: {errors:?}");
    assert_eq!((leases.len(), misses), (1, WORKERS - 1));
    let proxies: BTreeSet<ProxyId> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(proxies, BTreeSet::from([only_proxy.id]));
    assert_eq!(stats(fx, &pool).await.total_leases, 1);
}
