//! Outcomes: the error score, cooldowns and their doubling, bans per target
//! site, and the calls that carry outcomes (`report_outcome`,
//! `release_with_outcome`). The rules are the domain's
//! [`UsagePolicy::apply_outcome`]; these scenarios check that a storage
//! keeps what it computes, atomically, and honours it when leasing.

use std::sync::Arc;
use std::time::Duration;

use pharox_domain::{
    ConsumerId, HealthPolicy, LeaseId, Outcome, ProxyFailureKind, ProxyFilter, ProxyPool,
    ProxyStatus, ProxyUsage, Selector, TargetHost, UsagePolicy,
};
use pharox_ports::{ReleaseOutcome, StorageError};
use tokio::sync::Barrier;

use super::support::*;
use crate::ContractFixture;

/// The policy of these scenarios, spelled out so that they do not depend on
/// the domain's defaults: three failures cool a proxy down for a minute,
/// doubling up to ten minutes; a ban lasts five minutes, doubling up to an
/// hour.
pub(crate) fn policy() -> UsagePolicy {
    UsagePolicy {
        failure_penalty: 1.0,
        success_credit: 0.5,
        block_penalty: 1.0,
        score_threshold: 3.0,
        cooldown_base: Duration::from_secs(60),
        cooldown_cap: Duration::from_secs(600),
        ban_base: Duration::from_secs(300),
        ban_cap: Duration::from_secs(3600),
        session_ttl: Duration::from_secs(600),
    }
}

/// How long before an end the scenarios check that it still holds. On a SQL
/// adapter the database's clock keeps running while a scenario moves the
/// stored timestamps back, and under load a second or more passes between
/// two statements: a one-second margin made "still cooling" checks flaky.
const MARGIN: Duration = Duration::from_secs(20);

pub(crate) fn failure() -> Outcome {
    Outcome::proxy_failure(ProxyFailureKind::Timeout)
}

pub(crate) fn target(host: &str) -> TargetHost {
    TargetHost::new(host).expect("valid target")
}

fn success_on(host: &str) -> Outcome {
    Outcome::Success {
        target: Some(target(host)),
        latency_ms: Some(12.5),
    }
}

/// `report_outcome`, panicking on an error; returns the proxy's usage.
pub(crate) async fn report(
    fx: &ContractFixture,
    lease: LeaseId,
    outcome: &Outcome,
    policy: &UsagePolicy,
) -> ProxyUsage {
    store(fx)
        .report_outcome(lease, outcome, policy)
        .await
        .unwrap_or_else(|e| panic!("report_outcome({lease}, {outcome:?}) failed: {e}"))
        .usage
}

/// Reports proxy failures until the lease's proxy cools down (at most 100).
pub(crate) async fn cool_down(fx: &ContractFixture, lease: LeaseId, policy: &UsagePolicy) {
    for _ in 0..100 {
        if report(fx, lease, &failure(), policy)
            .await
            .cooldown_until
            .is_some()
        {
            return;
        }
    }
    panic!("100 proxy failures did not cool the proxy of lease {lease} down");
}

/// Whether an acquire (for `target`, if any) leases something from `pool`
/// now; a lease it makes is released again.
async fn leasable(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    for_target: Option<&str>,
) -> bool {
    let mut req = request(pool, consumer, LONG);
    if let Some(host) = for_target {
        req = req.with_target(target(host));
    }
    match acquire(fx, &req).await {
        Some(lease) => {
            assert!(release(fx, lease.id).await.was_released());
            true
        }
        None => false,
    }
}

/// A pool of one proxy (unlimited concurrency), a consumer and a lease on
/// the proxy to report outcomes on.
async fn one_leased(fx: &ContractFixture, prefix: &str) -> (ProxyPool, ConsumerId, LeaseId) {
    let pool = new_pool(fx, prefix).await;
    let consumer = new_consumer(fx, prefix).await;
    save(fx, proxy(&pool, 1)).await;
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("the pool's one proxy is leasable");
    (pool, consumer, lease.id)
}

/// Failures add to the score, successes take off and never below zero;
/// report_outcome returns the proxy as stored, and get_proxy agrees.
pub async fn score_rises_with_failures_and_decays_with_successes(fx: &ContractFixture) {
    let (_pool, _consumer, lease) = one_leased(fx, "score").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    let mut seen = Vec::new();
    for outcome in [
        failure(),
        failure(),
        Outcome::success(),
        Outcome::target_error(),
        success_on("a.example"),
        Outcome::success(),
        Outcome::success(),
    ] {
        let usage = report(fx, lease, &outcome, &policy).await;
        assert_eq!(
            proxy_now(fx, proxy_id).await.usage,
            usage,
            "get_proxy disagrees with what report_outcome returned"
        );
        assert_eq!(usage.cooldown_until, None, "below the threshold");
        seen.push(usage.error_score);
    }
    assert_eq!(
        seen,
        [1.0, 2.0, 1.5, 1.5, 1.0, 0.5, 0.0],
        "failure +1, success -0.5, target error 0"
    );
    let usage = report(fx, lease, &Outcome::success(), &policy).await;
    assert_eq!(usage.error_score, 0.0, "the score never goes below zero");
    assert_eq!(usage.consecutive_cooldowns, 0);
}

/// At the threshold the proxy cools down: acquire skips it, find_available
/// does not offer it, pool_stats counts it cooling and not available,
/// pool_overview counts it cooling; outcomes reported while it cools change
/// nothing.
pub async fn cooldown_starts_at_the_threshold(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "cooldown").await;
    let policy = policy();
    assert_eq!(
        report(fx, lease, &failure(), &policy).await.error_score,
        1.0
    );
    assert_eq!(
        report(fx, lease, &failure(), &policy).await.error_score,
        2.0
    );
    assert!(
        leasable(fx, &pool, consumer, None).await,
        "below the threshold"
    );
    let cooled = report(fx, lease, &failure(), &policy).await;
    assert_eq!(cooled.error_score, 3.0);
    assert!(
        cooled.cooldown_until.is_some(),
        "the threshold cools it down"
    );
    assert_eq!(cooled.consecutive_cooldowns, 1);

    assert!(
        acquire(fx, &request(&pool, consumer, LONG)).await.is_none(),
        "a proxy cooling down must not be leased"
    );
    assert!(
        peek(fx, &pool, &ProxyFilter::default(), Selector::FirstAvailable)
            .await
            .is_none(),
        "find_available must not offer a proxy cooling down"
    );
    let s = stats(fx, &pool).await;
    assert_eq!(
        (
            s.active_proxies,
            s.available_proxies,
            s.cooling_down_proxies
        ),
        (1, 0, 1),
        "pool_stats: {s:?}"
    );
    assert_eq!(s.total_leases, 1, "the lease granted before still holds");
    let overview = store(fx)
        .pool_overview(&pool.name)
        .await
        .unwrap_or_else(|e| panic!("pool_overview failed: {e}"));
    assert_eq!(overview.cooling_down, 1, "pool_overview: {overview:?}");

    let again = report(fx, lease, &failure(), &policy).await;
    assert_eq!(again, cooled, "a failure while cooling changes nothing");
    let again = report(fx, lease, &Outcome::success(), &policy).await;
    assert_eq!(again, cooled, "a success while cooling changes nothing");
}

/// A cooldown lasts `cooldown_base`: cooling before its end, leasable (and
/// no longer counted cooling) at the end itself (the end is exclusive).
pub async fn cooldown_ends_after_its_base(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "cool-end").await;
    let policy = policy();
    cool_down(fx, lease, &policy).await;
    fx.time.advance(policy.cooldown_base - MARGIN).await;
    assert!(
        !leasable(fx, &pool, consumer, None).await,
        "still cooling before the end"
    );
    assert_eq!(stats(fx, &pool).await.cooling_down_proxies, 1);
    fx.time.advance(MARGIN).await;
    assert!(
        leasable(fx, &pool, consumer, None).await,
        "leasable again once the cooldown is over"
    );
    let s = stats(fx, &pool).await;
    assert_eq!((s.available_proxies, s.cooling_down_proxies), (1, 0));
    let overview = store(fx)
        .pool_overview(&pool.name)
        .await
        .unwrap_or_else(|e| panic!("pool_overview failed: {e}"));
    assert_eq!(
        overview.cooling_down, 0,
        "the cooldown is over: {overview:?}"
    );
}

/// A failure right after a cooldown sends the proxy straight back, for
/// twice as long; and again for four times as long.
pub async fn failure_after_a_cooldown_doubles_it(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "doubling").await;
    let policy = policy();
    cool_down(fx, lease, &policy).await;
    fx.time.advance(policy.cooldown_base).await;
    for (round, span) in [(2, 120), (3, 240)] {
        let usage = report(fx, lease, &failure(), &policy).await;
        assert!(
            usage.cooldown_until.is_some(),
            "one failure on probation cools the proxy again"
        );
        assert_eq!(usage.consecutive_cooldowns, round);
        assert!(!leasable(fx, &pool, consumer, None).await);
        fx.time.advance(Duration::from_secs(span) - MARGIN).await;
        assert!(
            !leasable(fx, &pool, consumer, None).await,
            "cooldown {round} lasts {span} s: still cooling before its end"
        );
        fx.time.advance(MARGIN).await;
        assert!(
            leasable(fx, &pool, consumer, None).await,
            "cooldown {round} is over after {span} s"
        );
    }
}

/// The doubling stops at `cooldown_cap`.
pub async fn cooldown_doubling_stops_at_the_cap(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "cap").await;
    let policy = UsagePolicy {
        cooldown_cap: Duration::from_secs(90),
        ..policy()
    };
    cool_down(fx, lease, &policy).await;
    fx.time.advance(Duration::from_secs(60)).await;
    for round in 2..=4 {
        let usage = report(fx, lease, &failure(), &policy).await;
        assert_eq!(usage.consecutive_cooldowns, round);
        fx.time.advance(Duration::from_secs(90) - MARGIN).await;
        assert!(
            !leasable(fx, &pool, consumer, None).await,
            "cooldown {round}: the cap (90 s) still holds before its end"
        );
        fx.time.advance(MARGIN).await;
        assert!(
            leasable(fx, &pool, consumer, None).await,
            "cooldown {round} is capped at 90 s"
        );
    }
}

/// A success after a cooldown resets the score and the doubling: it takes
/// the threshold's failures again to cool down, and then for the base time.
pub async fn success_after_a_cooldown_resets_the_doubling(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "reset").await;
    let policy = policy();
    cool_down(fx, lease, &policy).await;
    fx.time.advance(policy.cooldown_base).await;
    let usage = report(fx, lease, &Outcome::success(), &policy).await;
    assert_eq!(usage.error_score, 0.0, "the score starts over");
    assert_eq!(usage.consecutive_cooldowns, 0, "the doubling starts over");
    assert_eq!(usage.cooldown_until, None);

    assert_eq!(
        report(fx, lease, &failure(), &policy).await.cooldown_until,
        None
    );
    assert_eq!(
        report(fx, lease, &failure(), &policy).await.cooldown_until,
        None
    );
    let usage = report(fx, lease, &failure(), &policy).await;
    assert_eq!(usage.consecutive_cooldowns, 1);
    fx.time.advance(policy.cooldown_base).await;
    assert!(
        leasable(fx, &pool, consumer, None).await,
        "after the reset the cooldown is the base again"
    );
}

/// Outcomes never change a proxy's status (health sweeps own it).
pub async fn outcomes_never_change_status(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "status").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    cool_down(fx, lease, &policy).await;
    assert_eq!(proxy_now(fx, proxy_id).await.status, ProxyStatus::Active);

    let mut banned = proxy_now(fx, proxy_id).await;
    banned.status = ProxyStatus::Banned;
    store(fx).save_proxy(&banned).await.expect("save_proxy");
    fx.time.advance(policy.cooldown_base).await;
    for outcome in [
        Outcome::success(),
        failure(),
        Outcome::blocked(target("a.example")),
    ] {
        let after = store(fx)
            .report_outcome(lease, &outcome, &policy)
            .await
            .expect("report_outcome");
        assert_eq!(
            after.status,
            ProxyStatus::Banned,
            "{outcome:?} changed the status"
        );
    }
    assert!(
        !leasable(fx, &pool, consumer, None).await,
        "banned stays banned"
    );
    assert_eq!(
        stats(fx, &pool).await.cooling_down_proxies,
        0,
        "only active proxies count as cooling down"
    );
}

/// save_proxy and add_proxies ignore a caller's usage: an update keeps the
/// stored one, an insert starts clean.
pub async fn save_proxy_ignores_the_callers_usage(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "usage-owned").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    cool_down(fx, lease, &policy).await;
    let stored = proxy_now(fx, proxy_id).await.usage;

    let mut edited = proxy_now(fx, proxy_id).await;
    edited.usage = ProxyUsage::default();
    edited.city = Some("Lyon".to_owned());
    let saved = store(fx).save_proxy(&edited).await.expect("save_proxy");
    assert_eq!(saved.city.as_deref(), Some("Lyon"), "the edit is saved");
    assert_eq!(saved.usage, stored, "save_proxy must keep the stored usage");
    let saved = store(fx)
        .add_proxies(std::slice::from_ref(&edited))
        .await
        .expect("add_proxies");
    assert_eq!(
        saved[0].usage, stored,
        "add_proxies must keep the stored usage"
    );
    assert_eq!(proxy_now(fx, proxy_id).await.usage, stored);
    assert!(!leasable(fx, &pool, consumer, None).await, "still cooling");

    let mut fresh = proxy(&pool, 2).build().expect("valid proxy");
    fresh.usage = stored;
    let inserted = store(fx).save_proxy(&fresh).await.expect("save_proxy");
    assert_eq!(
        inserted.usage,
        ProxyUsage::default(),
        "an insert starts with a clean usage"
    );
    assert!(
        leasable(fx, &pool, consumer, None).await,
        "the new proxy leases"
    );
}

/// A health success leaves a cooldown alone, unless the health policy is
/// built with_success_ending_cooldown(true); then it clears score and
/// cooldown, and bans per target stay.
pub async fn health_success_ends_a_cooldown_only_when_told(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "health-cool").await;
    let policy = policy();
    let proxy = proxy_now(fx, lease_now(fx, lease).await.proxy_id).await;
    report(fx, lease, &Outcome::blocked(target("a.example")), &policy).await;
    cool_down(fx, lease, &policy).await;
    let cooled = proxy_now(fx, proxy.id).await.usage;

    let t = base_time();
    let ok = health(&proxy, ProxyStatus::Active, Some(50.0), t);
    let after = apply(fx, &ok, HealthPolicy::default()).await;
    assert_eq!(
        after.usage, cooled,
        "a plain health success keeps the cooldown"
    );
    assert!(!leasable(fx, &pool, consumer, None).await);

    let failed = health(
        &proxy,
        ProxyStatus::Inactive,
        None,
        t + time::Duration::seconds(1),
    );
    let ending = HealthPolicy::default().with_success_ending_cooldown(true);
    let after = apply(fx, &failed, ending).await;
    assert_eq!(
        after.usage, cooled,
        "a health failure never ends a cooldown"
    );

    let ok = health(
        &proxy,
        ProxyStatus::Active,
        Some(50.0),
        t + time::Duration::seconds(2),
    );
    let after = apply(fx, &ok, ending).await;
    assert_eq!(
        after.usage,
        ProxyUsage::default(),
        "a success under with_success_ending_cooldown(true) resets the usage"
    );
    assert!(leasable(fx, &pool, consumer, None).await);
    let bans = list_bans(fx, proxy.id).await;
    assert_eq!(bans.len(), 1, "bans per target stay: {bans:?}");
    assert!(!leasable(fx, &pool, consumer, Some("a.example")).await);
}

async fn list_bans(
    fx: &ContractFixture,
    id: pharox_domain::ProxyId,
) -> Vec<pharox_domain::TargetBan> {
    store(fx)
        .list_target_bans(id)
        .await
        .unwrap_or_else(|e| panic!("list_target_bans({id}) failed: {e}"))
}

/// A block by one site bans the proxy for that site only, matched
/// case-insensitively; the first block on a site adds to the score.
pub async fn ban_is_isolated_to_its_site(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "ban").await;
    let policy = policy();
    let usage = report(fx, lease, &Outcome::blocked(target("A.Example.")), &policy).await;
    assert_eq!(usage.error_score, 1.0, "a first block adds block_penalty");
    assert_eq!(usage.cooldown_until, None, "a block is not a cooldown");

    assert!(
        !leasable(fx, &pool, consumer, Some("a.example")).await,
        "banned for a.example"
    );
    assert!(
        !leasable(fx, &pool, consumer, Some("A.EXAMPLE")).await,
        "targets compare case-insensitively"
    );
    assert!(
        leasable(fx, &pool, consumer, Some("b.example")).await,
        "another site is unaffected"
    );
    assert!(
        leasable(fx, &pool, consumer, None).await,
        "an acquire without a target is unaffected"
    );
    assert!(
        peek(fx, &pool, &ProxyFilter::default(), Selector::FirstAvailable)
            .await
            .is_some(),
        "find_available has no target: the proxy is offered"
    );
    let s = stats(fx, &pool).await;
    assert_eq!((s.available_proxies, s.cooling_down_proxies), (1, 0));

    let usage = report(fx, lease, &Outcome::blocked(target("a.example")), &policy).await;
    assert_eq!(
        usage.error_score, 1.0,
        "a block while the site's ban holds changes nothing"
    );
}

/// A ban lasts `ban_base`, a new block after it doubles it and adds nothing
/// to the score, and a success on the site after its ban ended forgets the
/// doubling.
pub async fn ban_ends_and_doubles(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "ban-end").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    let blocked = Outcome::blocked(target("a.example"));
    report(fx, lease, &blocked, &policy).await;
    fx.time.advance(policy.ban_base - MARGIN).await;
    assert!(!leasable(fx, &pool, consumer, Some("a.example")).await);
    fx.time.advance(MARGIN).await;
    assert!(
        leasable(fx, &pool, consumer, Some("a.example")).await,
        "the ban is over after ban_base (the end is exclusive)"
    );
    assert!(list_bans(fx, proxy_id).await.is_empty(), "no ban holds now");

    let usage = report(fx, lease, &blocked, &policy).await;
    assert_eq!(usage.error_score, 1.0, "only a first block in a row scores");
    let bans = list_bans(fx, proxy_id).await;
    assert_eq!(bans.len(), 1);
    assert_eq!(
        (bans[0].target.as_str(), bans[0].consecutive),
        ("a.example", 2)
    );
    fx.time.advance(2 * policy.ban_base - MARGIN).await;
    assert!(
        !leasable(fx, &pool, consumer, Some("a.example")).await,
        "the second ban lasts twice as long"
    );
    fx.time.advance(MARGIN).await;
    assert!(leasable(fx, &pool, consumer, Some("a.example")).await);

    report(fx, lease, &success_on("a.example"), &policy).await;
    let usage = report(fx, lease, &blocked, &policy).await;
    assert_eq!(
        usage.error_score, 1.5,
        "after a success on the site a block is a first one again (1 - 0.5 + 1)"
    );
    let bans = list_bans(fx, proxy_id).await;
    assert_eq!(bans[0].consecutive, 1, "the success forgot the doubling");
    fx.time.advance(policy.ban_base).await;
    assert!(
        leasable(fx, &pool, consumer, Some("a.example")).await,
        "and the ban is the base again"
    );
}

/// list_target_bans lists the bans that hold now, ordered by target; an
/// unknown proxy is not found.
pub async fn list_target_bans_lists_bans_that_hold(fx: &ContractFixture) {
    let (_pool, _consumer, lease) = one_leased(fx, "ban-list").await;
    let policy = UsagePolicy {
        score_threshold: 100.0,
        ..policy()
    };
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    assert!(list_bans(fx, proxy_id).await.is_empty());
    report(fx, lease, &Outcome::blocked(target("c.example")), &policy).await;
    fx.time.advance(policy.ban_base).await;
    report(fx, lease, &Outcome::blocked(target("b.example")), &policy).await;
    report(fx, lease, &Outcome::blocked(target("A.example")), &policy).await;
    let bans = list_bans(fx, proxy_id).await;
    let targets: Vec<&str> = bans.iter().map(|b| b.target.as_str()).collect();
    assert_eq!(
        targets,
        ["a.example", "b.example"],
        "bans that hold now, ordered by (normalised) target"
    );
    assert!(bans.iter().all(|b| b.consecutive == 1));

    expect_not_found(
        store(fx)
            .list_target_bans(pharox_domain::ProxyId::new())
            .await,
        "proxy",
        "list_target_bans of an unknown proxy",
    );
}

/// release_with_outcome releases and applies the outcome once: a second
/// call is AlreadyReleased and counts nothing; without an outcome it is a
/// plain release; an unknown lease is not found.
pub async fn release_with_outcome_applies_once(fx: &ContractFixture) {
    let (pool, consumer, lease) = one_leased(fx, "release-outcome").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    let first = store(fx)
        .release_with_outcome(lease, Some(&failure()), &policy)
        .await
        .expect("release_with_outcome");
    assert!(first.was_released(), "{first:?}");
    assert_eq!(proxy_now(fx, proxy_id).await.usage.error_score, 1.0);
    assert!(lease_now(fx, lease).await.released_at.is_some());
    let second = store(fx)
        .release_with_outcome(lease, Some(&failure()), &policy)
        .await
        .expect("release_with_outcome again");
    assert!(
        matches!(second, ReleaseOutcome::AlreadyReleased { lease_id, .. } if lease_id == lease),
        "{second:?}"
    );
    assert_eq!(
        proxy_now(fx, proxy_id).await.usage.error_score,
        1.0,
        "an outcome with an already released lease is dropped"
    );

    let plain = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("lease");
    let done = store(fx)
        .release_with_outcome(plain.id, None, &policy)
        .await
        .expect("release_with_outcome without an outcome");
    assert!(done.was_released());
    assert_eq!(proxy_now(fx, proxy_id).await.usage.error_score, 1.0);

    expect_not_found(
        store(fx)
            .release_with_outcome(LeaseId::new(), Some(&failure()), &policy)
            .await,
        "lease",
        "release_with_outcome of an unknown lease",
    );
}

/// A report on a released lease is LeaseNotActive and changes nothing; a
/// lease past its expiry that nothing reclaimed still takes reports; an
/// unknown lease is not found.
pub async fn report_needs_an_active_lease(fx: &ContractFixture) {
    let pool = new_pool(fx, "report-active").await;
    let consumer = new_consumer(fx, "report-active").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let policy = policy();
    let lease = acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("lease");
    fx.time.advance(PAST_SHORT).await;
    let usage = report(fx, lease.id, &failure(), &policy).await;
    assert_eq!(
        usage.error_score, 1.0,
        "an expired, unreclaimed lease reports"
    );

    assert!(release(fx, lease.id).await.was_released());
    expect_not_active(
        store(fx)
            .report_outcome(lease.id, &failure(), &policy)
            .await,
        lease.id,
        "report on a released lease",
    );
    assert_eq!(proxy_now(fx, p.id).await.usage.error_score, 1.0);
    expect_not_found(
        store(fx)
            .report_outcome(LeaseId::new(), &failure(), &policy)
            .await,
        "lease",
        "report on an unknown lease",
    );
}

/// An invalid outcome (NaN latency) or policy is rejected by both calls,
/// and changes nothing: the lease stays active, the usage untouched.
pub async fn invalid_outcome_or_policy_changes_nothing(fx: &ContractFixture) {
    let (_pool, _consumer, lease) = one_leased(fx, "invalid-outcome").await;
    let policy = policy();
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    report(fx, lease, &failure(), &policy).await;
    let before = proxy_now(fx, proxy_id).await.usage;
    let nan = Outcome::Success {
        target: None,
        latency_ms: Some(f64::NAN),
    };
    let bad_policy = UsagePolicy {
        score_threshold: 0.0,
        ..policy
    };
    expect_invalid(
        store(fx).report_outcome(lease, &nan, &policy).await,
        "report with a NaN latency",
    );
    expect_invalid(
        store(fx)
            .report_outcome(lease, &failure(), &bad_policy)
            .await,
        "report under a threshold of 0",
    );
    expect_invalid(
        store(fx)
            .release_with_outcome(lease, Some(&nan), &policy)
            .await,
        "release with a NaN latency",
    );
    expect_invalid(
        store(fx)
            .release_with_outcome(lease, Some(&failure()), &bad_policy)
            .await,
        "release under a threshold of 0",
    );
    assert_eq!(proxy_now(fx, proxy_id).await.usage, before);
    assert_eq!(
        lease_now(fx, lease).await.released_at,
        None,
        "a rejected release_with_outcome must not release"
    );
}

/// Racing release_with_outcome(failure) and report_outcome(failure) calls
/// on one lease: exactly one release applies, and the score counts exactly
/// the calls that succeeded on the active lease.
pub async fn racing_release_and_report_never_double_count(fx: &ContractFixture) {
    const RACERS: usize = 16;
    let (_pool, _consumer, lease) = one_leased(fx, "race-outcome").await;
    let policy = UsagePolicy {
        score_threshold: 1000.0,
        ..policy()
    };
    let proxy_id = lease_now(fx, lease).await.proxy_id;
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let storage = Arc::clone(&fx.storage);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                if i % 2 == 0 {
                    match storage
                        .release_with_outcome(lease, Some(&failure()), &policy)
                        .await
                    {
                        Ok(outcome) => Ok(outcome.was_released()),
                        Err(e) => Err(e),
                    }
                } else {
                    match storage.report_outcome(lease, &failure(), &policy).await {
                        Ok(_) => Ok(true),
                        Err(StorageError::LeaseNotActive(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
        })
        .collect();
    let (mut releases, mut reports) = (0u32, 0u32);
    for (i, task) in tasks.into_iter().enumerate() {
        let applied = task
            .await
            .expect("racer panicked")
            .unwrap_or_else(|e| panic!("racer {i} failed: {e}"));
        if applied && i % 2 == 0 {
            releases += 1;
        } else if applied {
            reports += 1;
        }
    }
    assert_eq!(releases, 1, "exactly one release applies");
    assert_eq!(
        proxy_now(fx, proxy_id).await.usage.error_score,
        f64::from(releases + reports),
        "{reports} reports and {releases} release succeeded on the active lease"
    );
}
