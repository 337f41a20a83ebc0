//! Health results: status, `checked_at` and the health summary under a
//! policy, and the history of records.

use pharox_domain::{HealthPolicy, ProxyStatus};
use time::OffsetDateTime;

use super::support::*;
use crate::ContractFixture;

/// apply_health_result updates status, checked_at and the health summary,
/// appends records (newest first, limited) and rejects invalid results.
pub async fn health_result_updates_proxy_and_history(fx: &ContractFixture) {
    let pool = new_pool(fx, "health").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let t = base_time();
    let policy = HealthPolicy::immediate();
    assert!(
        store(fx)
            .last_health_result(p.id)
            .await
            .expect("last")
            .is_none(),
        "no records yet"
    );

    let r1 = health(&p, ProxyStatus::Active, Some(120.0), t);
    let after = apply(fx, &r1, policy).await;
    assert_eq!(after.status, ProxyStatus::Active);
    assert_eq!(after.checked_at, Some(t));
    assert_eq!(after.health.last_latency_ms, Some(120.0));
    assert_eq!(after.health.last_http_status, Some(204));
    assert_eq!(after.health.consecutive_failures, 0);

    let t2 = t + time::Duration::seconds(60);
    let r2 = health(&p, ProxyStatus::Inactive, None, t2);
    let after = apply(fx, &r2, policy).await;
    assert_eq!(after.status, ProxyStatus::Inactive);
    assert_eq!(after.checked_at, Some(t2));
    assert_eq!(after.health.consecutive_failures, 1);
    assert_eq!(
        after.health.last_error.as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        after.health.last_latency_ms,
        Some(120.0),
        "kept from the success"
    );
    assert_eq!(
        after.health.last_http_status,
        Some(204),
        "kept from the success"
    );

    let t3 = t + time::Duration::seconds(120);
    let r3 = health(&p, ProxyStatus::Slow, Some(2500.0), t3);
    let after = apply(fx, &r3, policy).await;
    assert_eq!(after.status, ProxyStatus::Slow);
    assert_eq!(after.health.consecutive_failures, 0);
    assert_eq!(after.health.last_error, None, "a success clears the error");
    assert_eq!(after.health.last_latency_ms, Some(2500.0));
    let stored = store(fx).get_proxy(p.id).await.expect("get_proxy");
    assert_eq!(stored.status, ProxyStatus::Slow);
    assert_eq!(stored.health, after.health);
    assert_eq!(stored.checked_at, Some(t3));

    let last = store(fx)
        .last_health_result(p.id)
        .await
        .expect("last_health_result")
        .expect("a record");
    assert_eq!(last.checked_at, t3);
    assert_eq!(
        (last.status_before, last.status_after),
        (ProxyStatus::Inactive, ProxyStatus::Slow)
    );
    assert_eq!(last.latency_ms, Some(2500.0));
    assert!(last.reachable);
    let two = store(fx)
        .list_health_records(p.id, 2)
        .await
        .expect("list_health_records");
    let times: Vec<OffsetDateTime> = two.iter().map(|r| r.checked_at).collect();
    assert_eq!(times, vec![t3, t2], "newest first, limited to 2");
    assert_eq!(
        (two[1].status_before, two[1].status_after),
        (ProxyStatus::Active, ProxyStatus::Inactive)
    );
    assert_eq!(two[1].error.as_deref(), Some("connection refused"));
    assert_eq!(two[1].http_status, None);
    let all = store(fx)
        .list_health_records(p.id, 10)
        .await
        .expect("list_health_records");
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].checked_at, t);

    let mut bad = health(&p, ProxyStatus::Active, Some(1.0), t3);
    bad.attempts = 0;
    expect_invalid(
        store(fx).apply_health_result(&bad, &policy).await,
        "health result with 0 attempts",
    );
    let mut bad = health(&p, ProxyStatus::Active, Some(f64::NAN), t3);
    bad.reachable = true;
    expect_invalid(
        store(fx).apply_health_result(&bad, &policy).await,
        "health result with NaN latency",
    );
    let n = store(fx)
        .list_health_records(p.id, 10)
        .await
        .expect("list")
        .len();
    assert_eq!(n, 3, "rejected results must not be recorded");
}

/// HealthPolicy is applied: inactive only after N consecutive failures, a
/// success resets the streak, banned is never lifted nor changed.
pub async fn health_policy_streak_and_ban(fx: &ContractFixture) {
    let pool = new_pool(fx, "policy").await;
    let consumer = new_consumer(fx, "policy").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let policy = HealthPolicy::new(3).expect("valid policy");
    let t = base_time();
    let at = |s: i64| t + time::Duration::seconds(s);
    for (i, want) in [ProxyStatus::Active, ProxyStatus::Active]
        .into_iter()
        .enumerate()
    {
        let after = apply(
            fx,
            &health(&p, ProxyStatus::Inactive, None, at(i as i64)),
            policy,
        )
        .await;
        assert_eq!(after.status, want, "failure {} of 3", i + 1);
        assert_eq!(after.health.consecutive_failures, i as u32 + 1);
    }
    let ok = apply(
        fx,
        &health(&p, ProxyStatus::Active, Some(20.0), at(10)),
        policy,
    )
    .await;
    assert_eq!(
        ok.health.consecutive_failures, 0,
        "a success resets the streak"
    );
    for i in 0..3 {
        let after = apply(
            fx,
            &health(&p, ProxyStatus::Inactive, None, at(20 + i)),
            policy,
        )
        .await;
        let want = if i < 2 {
            ProxyStatus::Active
        } else {
            ProxyStatus::Inactive
        };
        assert_eq!(after.status, want, "failure {} after the reset", i + 1);
    }
    assert!(
        acquire(fx, &request(&pool, consumer, LONG)).await.is_none(),
        "an inactive proxy must not be leased"
    );
    let back = apply(
        fx,
        &health(&p, ProxyStatus::Active, Some(30.0), at(40)),
        policy,
    )
    .await;
    assert_eq!(back.status, ProxyStatus::Active, "a success revives it");
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("revived proxy is leased");
    assert!(release(fx, lease.id).await.was_released());

    let banned = save(fx, proxy(&pool, 2).status(ProxyStatus::Banned)).await;
    for (s, status) in [
        ProxyStatus::Active,
        ProxyStatus::Inactive,
        ProxyStatus::Slow,
    ]
    .into_iter()
    .enumerate()
    {
        let after = apply(
            fx,
            &health(&banned, status, Some(5.0), at(50 + s as i64)),
            HealthPolicy::immediate(),
        )
        .await;
        assert_eq!(
            after.status,
            ProxyStatus::Banned,
            "a {status} result lifted a ban"
        );
    }
    let rec = store(fx)
        .last_health_result(banned.id)
        .await
        .expect("last")
        .expect("record");
    assert_eq!(
        (rec.status_before, rec.status_after),
        (ProxyStatus::Banned, ProxyStatus::Banned)
    );
}

/// A result for a proxy that does not exist gives `Ok(None)` and records
/// nothing; its history reads as empty (`None`, no records), not not-found.
pub async fn health_result_for_unknown_proxy_is_none(fx: &ContractFixture) {
    let pool = new_pool(fx, "health-unknown").await;
    let ghost = proxy(&pool, 1).build().expect("valid");
    let result = health(&ghost, ProxyStatus::Active, Some(1.0), base_time());
    let got = store(fx)
        .apply_health_result(&result, &HealthPolicy::default())
        .await
        .expect("apply_health_result on an unknown proxy");
    assert!(got.is_none(), "unknown proxy must give None, got {got:?}");
    let last = store(fx).last_health_result(ghost.id).await.expect("last");
    assert!(
        last.is_none(),
        "last_health_result of an unknown proxy: {last:?}"
    );
    let records = store(fx)
        .list_health_records(ghost.id, 10)
        .await
        .expect("list_health_records of an unknown proxy");
    assert!(
        records.is_empty(),
        "records of an unknown proxy: {records:?}"
    );
}
