use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::{SessionKey, SessionRequest};

const T0: OffsetDateTime = datetime!(2026-12-01 12:00:00 UTC);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn failure() -> Outcome {
    Outcome::proxy_failure(ProxyFailureKind::Timeout)
}

fn target(name: &str) -> TargetHost {
    TargetHost::new(name).unwrap()
}

/// Applies outcomes one after the other at `now`, with no ban involved.
fn run(
    policy: &UsagePolicy,
    start: ProxyUsage,
    outcomes: &[Outcome],
    now: OffsetDateTime,
) -> ProxyUsage {
    outcomes.iter().fold(start, |usage, outcome| {
        policy.apply_outcome(&usage, None, outcome, now).usage
    })
}

#[test]
fn failures_raise_the_score_and_successes_take_it_down_to_zero_at_most() {
    let policy = UsagePolicy::default();
    let usage = run(&policy, ProxyUsage::default(), &[failure(), failure()], T0);
    assert_eq!(usage.error_score, 2.0);
    assert_eq!(usage.cooldown_until, None);
    let usage = run(&policy, usage, &[Outcome::success()], T0);
    assert_eq!(usage.error_score, 1.5);
    let usage = run(&policy, usage, &vec![Outcome::success(); 5], T0);
    assert_eq!(usage.error_score, 0.0);
}

#[test]
fn target_errors_change_nothing() {
    let policy = UsagePolicy::default();
    let start = ProxyUsage {
        error_score: 2.0,
        ..ProxyUsage::default()
    };
    let change = policy.apply_outcome(&start, None, &Outcome::target_error(), T0);
    assert_eq!(change.usage, start);
    assert_eq!(change.ban, BanChange::Unchanged);
}

#[test]
fn reaching_the_threshold_starts_the_base_cooldown_which_ends_exclusively() {
    let policy = UsagePolicy::default();
    let usage = run(&policy, ProxyUsage::default(), &vec![failure(); 3], T0);
    assert_eq!(usage.cooldown_until, Some(T0 + secs(60)));
    assert_eq!(usage.consecutive_cooldowns, 1);
    assert!(usage.is_cooling_down_at(T0 + secs(59)));
    assert!(!usage.is_cooling_down_at(T0 + secs(60)));
}

#[test]
fn outcomes_reported_during_a_cooldown_change_nothing() {
    let policy = UsagePolicy::default();
    let cooling = run(&policy, ProxyUsage::default(), &vec![failure(); 3], T0);
    let later = T0 + secs(30);
    for outcome in [
        failure(),
        Outcome::success(),
        Outcome::blocked(target("a.example")),
    ] {
        assert_eq!(
            policy.apply_outcome(&cooling, None, &outcome, later).usage,
            cooling
        );
    }
}

#[test]
fn a_success_after_the_cooldown_resets_score_and_doubling() {
    let policy = UsagePolicy::default();
    let cooling = run(&policy, ProxyUsage::default(), &vec![failure(); 3], T0);
    let after = run(&policy, cooling, &[Outcome::success()], T0 + secs(60));
    assert_eq!(after, ProxyUsage::default());
}

#[test]
fn a_failure_after_the_cooldown_sends_it_back_for_twice_as_long() {
    let policy = UsagePolicy::default();
    let cooling = run(&policy, ProxyUsage::default(), &vec![failure(); 3], T0);
    let t1 = T0 + secs(60);
    let again = run(&policy, cooling, &[failure()], t1);
    assert_eq!(again.cooldown_until, Some(t1 + secs(120)));
    assert_eq!(again.consecutive_cooldowns, 2);
    let t2 = t1 + secs(120);
    let third = run(&policy, again, &[failure()], t2);
    assert_eq!(third.cooldown_until, Some(t2 + secs(240)));
}

#[test]
fn the_doubling_stops_at_the_cap() {
    let policy = UsagePolicy {
        cooldown_cap: secs(300),
        ..UsagePolicy::default()
    };
    assert_eq!(policy.cooldown_after(0), secs(60));
    assert_eq!(policy.cooldown_after(2), secs(240));
    assert_eq!(policy.cooldown_after(3), secs(300));
    assert_eq!(policy.cooldown_after(u32::MAX), secs(300));
    let mut usage = run(&policy, ProxyUsage::default(), &vec![failure(); 3], T0);
    let mut now = T0;
    for _ in 0..40 {
        now = usage.cooldown_until.unwrap();
        usage = run(&policy, usage, &[failure()], now);
    }
    assert_eq!(usage.cooldown_until, Some(now + secs(300)));
    assert_eq!(usage.consecutive_cooldowns, 41);
}

#[test]
fn a_block_bans_the_pair_with_the_same_doubling_and_counts_once_toward_the_score() {
    let policy = UsagePolicy::default();
    let site = target("shop.example");
    let first = policy.apply_outcome(
        &ProxyUsage::default(),
        None,
        &Outcome::blocked(site.clone()),
        T0,
    );
    let BanChange::Set(ban) = first.ban else {
        panic!("a block sets a ban: {first:?}");
    };
    assert_eq!(
        ban,
        TargetBanState {
            until: T0 + secs(300),
            consecutive: 1
        }
    );
    assert_eq!(first.usage.error_score, 1.0);

    // During the ban a late block changes nothing.
    let during = policy.apply_outcome(
        &first.usage,
        Some(&ban),
        &Outcome::blocked(site.clone()),
        T0 + secs(10),
    );
    assert_eq!(during.ban, BanChange::Unchanged);
    assert_eq!(during.usage, first.usage);

    // Blocked again right after: twice as long, and no second penalty.
    let t1 = ban.until;
    let second = policy.apply_outcome(&first.usage, Some(&ban), &Outcome::blocked(site), t1);
    assert_eq!(
        second.ban,
        BanChange::Set(TargetBanState {
            until: t1 + secs(600),
            consecutive: 2
        })
    );
    assert_eq!(second.usage.error_score, 1.0);
}

#[test]
fn blocks_on_many_sites_cool_the_proxy_down() {
    let policy = UsagePolicy::default();
    let usage = ["a.example", "b.example", "c.example"].iter().fold(
        ProxyUsage::default(),
        |usage, site| {
            policy
                .apply_outcome(&usage, None, &Outcome::blocked(target(site)), T0)
                .usage
        },
    );
    assert_eq!(usage.cooldown_until, Some(T0 + secs(60)));
}

#[test]
fn a_success_on_the_site_after_its_ban_forgets_the_doubling() {
    let policy = UsagePolicy::default();
    let ban = TargetBanState {
        until: T0,
        consecutive: 3,
    };
    let success = Outcome::Success {
        target: Some(target("shop.example")),
        latency_ms: None,
    };
    assert_eq!(
        policy
            .apply_outcome(&ProxyUsage::default(), Some(&ban), &success, T0)
            .ban,
        BanChange::Clear
    );
    // Still banned: the success (from an older lease) leaves the ban.
    let early = T0 - secs(1);
    assert_eq!(
        policy
            .apply_outcome(&ProxyUsage::default(), Some(&ban), &success, early)
            .ban,
        BanChange::Unchanged
    );
}

#[test]
fn a_zero_penalty_ignores_that_kind_also_on_probation() {
    let policy = UsagePolicy {
        block_penalty: 0.0,
        ..UsagePolicy::default()
    };
    let probation = ProxyUsage {
        error_score: 3.0,
        cooldown_until: Some(T0),
        consecutive_cooldowns: 1,
    };
    let change = policy.apply_outcome(&probation, None, &Outcome::blocked(target("a.example")), T0);
    assert_eq!(change.usage, probation);
}

#[test]
fn targets_are_host_names_compared_case_insensitively() {
    assert_eq!(target("Shop.EXAMPLE.com."), target("shop.example.com"));
    assert_eq!(target("[::1]").as_str(), "::1");
    assert_eq!(target("127.0.0.1").as_str(), "127.0.0.1");
    for bad in [
        "",
        "  ",
        "http://a.example",
        "a.example:8080/x",
        "a..example",
        "a b",
        "a\u{7}b",
    ] {
        let err = TargetHost::new(bad).unwrap_err();
        assert_eq!(err.field, "target", "{bad:?}");
    }
    assert!(TargetHost::new(&"a".repeat(254)).is_err());
    let json = serde_json::to_string(&target("A.Example")).unwrap();
    assert_eq!(json, "\"a.example\"");
    assert!(serde_json::from_str::<TargetHost>("\"a/b\"").is_err());
}

#[test]
fn outcomes_have_a_tagged_json_form() {
    let blocked = Outcome::Blocked {
        target: target("a.example"),
        http_status: Some(429),
    };
    let json = serde_json::to_value(&blocked).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "blocked", "target": "a.example", "http_status": 429})
    );
    assert_eq!(serde_json::from_value::<Outcome>(json).unwrap(), blocked);
    let failure: Outcome =
        serde_json::from_str(r#"{"kind":"proxy_failure","failure":"proxy_auth"}"#).unwrap();
    assert_eq!(failure, Outcome::proxy_failure(ProxyFailureKind::ProxyAuth));
    assert_eq!(
        serde_json::from_str::<Outcome>(r#"{"kind":"success"}"#).unwrap(),
        Outcome::success()
    );
    assert!(serde_json::from_str::<Outcome>(r#"{"kind":"blocked"}"#).is_err());
    assert_eq!(blocked.kind(), "blocked");
    assert_eq!(blocked.target(), Some(&target("a.example")));
}

#[test]
fn outcome_values_are_checked() {
    let slow = Outcome::Success {
        target: None,
        latency_ms: Some(-1.0),
    };
    assert_eq!(slow.validate().unwrap_err().field, "outcome.latency_ms");
    let nan = Outcome::Success {
        target: None,
        latency_ms: Some(f64::NAN),
    };
    assert!(nan.validate().is_err());
    let status = Outcome::TargetError {
        target: None,
        http_status: Some(99),
    };
    assert_eq!(status.validate().unwrap_err().field, "outcome.http_status");
    assert!(
        Outcome::Blocked {
            target: target("a.example"),
            http_status: Some(403)
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn the_policy_is_checked_field_by_field() {
    assert!(UsagePolicy::default().validate().is_ok());
    let cases: [(UsagePolicy, &str); 8] = [
        (
            UsagePolicy {
                failure_penalty: -1.0,
                ..UsagePolicy::default()
            },
            "usage.failure_penalty",
        ),
        (
            UsagePolicy {
                success_credit: f64::INFINITY,
                ..UsagePolicy::default()
            },
            "usage.success_credit",
        ),
        (
            UsagePolicy {
                block_penalty: f64::NAN,
                ..UsagePolicy::default()
            },
            "usage.block_penalty",
        ),
        (
            UsagePolicy {
                score_threshold: 0.0,
                ..UsagePolicy::default()
            },
            "usage.score_threshold",
        ),
        (
            UsagePolicy {
                cooldown_base: Duration::ZERO,
                ..UsagePolicy::default()
            },
            "usage.cooldown_base",
        ),
        (
            UsagePolicy {
                cooldown_cap: secs(1),
                ..UsagePolicy::default()
            },
            "usage.cooldown_cap",
        ),
        (
            UsagePolicy {
                ban_cap: MAX_COOLDOWN + secs(1),
                ..UsagePolicy::default()
            },
            "usage.ban_cap",
        ),
        (
            UsagePolicy {
                session_ttl: Duration::ZERO,
                ..UsagePolicy::default()
            },
            "usage.session.ttl",
        ),
    ];
    for (policy, field) in cases {
        assert_eq!(policy.validate().unwrap_err().field, field);
    }
}

#[test]
fn session_keys_are_exact_and_checked() {
    assert_eq!(SessionKey::new("Login-42").unwrap().as_str(), "Login-42");
    assert_ne!(SessionKey::new("a").unwrap(), SessionKey::new("A").unwrap());
    for bad in [
        String::new(),
        "a b".to_owned(),
        "a\tb".to_owned(),
        "x".repeat(129),
    ] {
        assert_eq!(SessionKey::new(bad).unwrap_err().field, "session");
    }
    let request = SessionRequest::new(SessionKey::new("k").unwrap(), Duration::ZERO);
    assert_eq!(request.validate().unwrap_err().field, "session.ttl");
}
