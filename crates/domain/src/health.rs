use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{HealthRecordId, ProxyId, ProxyProtocol, ProxyStatus, ValidationError};

/// What one health check through a proxy found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckResult {
    /// The proxy checked.
    pub proxy_id: ProxyId,
    /// The protocol spoken.
    pub protocol: ProxyProtocol,
    /// The probe's verdict: active (worked), slow (worked, above the slow
    /// threshold) or inactive (failed).
    pub status: ProxyStatus,
    /// Whether the proxy relayed the request at all.
    pub reachable: bool,
    /// Round-trip time of the successful attempt, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Attempts made (1..=5).
    pub attempts: u32,
    /// HTTP status the target answered with, if it answered.
    pub http_status: Option<u16>,
    /// When the check finished.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// A readable reason when it failed; never contains credentials.
    pub error: Option<String>,
}

impl HealthCheckResult {
    /// Whether the check counts as a success (the verdict is not inactive).
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.status != ProxyStatus::Inactive
    }

    /// Checks the values a storage will persist.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.status == ProxyStatus::Banned {
            return Err(ValidationError::new(
                "health.status",
                "a health check cannot ban; use active, slow or inactive",
            ));
        }
        if let Some(latency) = self.latency_ms
            && !(latency.is_finite() && latency >= 0.0)
        {
            return Err(ValidationError::new(
                "health.latency_ms",
                "must be a finite number >= 0",
            ));
        }
        if self.attempts == 0 {
            return Err(ValidationError::new(
                "health.attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What a storage keeps about a proxy's recent health, next to its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyHealth {
    /// Failed checks in a row; a success resets it.
    pub consecutive_failures: u32,
    /// Latency of the latest check that reached the target, in ms.
    pub last_latency_ms: Option<f64>,
    /// Error of the latest check (cleared by a success).
    pub last_error: Option<String>,
    /// HTTP status of the latest check that got one.
    pub last_http_status: Option<u16>,
}

/// One persisted health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Identity.
    pub id: HealthRecordId,
    /// The proxy checked.
    pub proxy_id: ProxyId,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// Whether the proxy relayed the request.
    pub reachable: bool,
    /// Latency in ms, when reachable.
    pub latency_ms: Option<f64>,
    /// Protocol spoken.
    pub protocol: ProxyProtocol,
    /// Proxy status before the result was applied.
    pub status_before: ProxyStatus,
    /// Proxy status after.
    pub status_after: ProxyStatus,
    /// HTTP status from the target, if any.
    pub http_status: Option<u16>,
    /// Failure reason, if any.
    pub error: Option<String>,
}

/// The status and health a proxy ends up with after one result.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthOutcome {
    /// New status.
    pub status: ProxyStatus,
    /// New health summary.
    pub health: ProxyHealth,
    /// Whether the result ends the proxy's cooldown and clears its error
    /// score (a success under a policy built
    /// [`with_success_ending_cooldown`](HealthPolicy::with_success_ending_cooldown)).
    pub ends_cooldown: bool,
}

/// Decides what a health result does to a proxy.
///
/// - A success resets the failure streak and makes the proxy active, or slow
///   when the probe judged it slow.
/// - A failure lengthens the streak; the proxy becomes inactive once the
///   streak reaches `failures_before_inactive`, and keeps its status before.
/// - Banned is never lifted (nor changed) by a health check.
/// - A success leaves a cooldown from reported outcomes (see
///   [`UsagePolicy`](crate::UsagePolicy)) alone, unless the policy is built
///   [`with_success_ending_cooldown`](Self::with_success_ending_cooldown).
///
/// Storage applies it atomically with persisting the result, so concurrent
/// sweeps cannot lose a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthPolicy {
    failures_before_inactive: u32,
    #[serde(default)]
    success_ends_cooldown: bool,
}

impl HealthPolicy {
    /// A policy that marks a proxy inactive after `n` consecutive failures
    /// (`n >= 1`).
    pub fn new(failures_before_inactive: u32) -> Result<Self, ValidationError> {
        if failures_before_inactive == 0 {
            return Err(ValidationError::new(
                "health.failures_before_inactive",
                "must be at least 1",
            ));
        }
        Ok(Self {
            failures_before_inactive,
            success_ends_cooldown: false,
        })
    }

    /// One failure is enough: the proxy takes the probe's verdict at once.
    #[must_use]
    pub const fn immediate() -> Self {
        Self {
            failures_before_inactive: 1,
            success_ends_cooldown: false,
        }
    }

    /// The same policy, where a successful check ends a proxy's cooldown and
    /// clears its error score (`true`), or leaves them to reported outcomes
    /// (`false`, the default: a proxy that answers a probe can still fail
    /// real traffic).
    #[must_use]
    pub const fn with_success_ending_cooldown(mut self, ends: bool) -> Self {
        self.success_ends_cooldown = ends;
        self
    }

    /// Whether a successful check ends a cooldown.
    #[must_use]
    pub const fn success_ends_cooldown(&self) -> bool {
        self.success_ends_cooldown
    }

    /// Consecutive failures that make a proxy inactive.
    #[must_use]
    pub const fn failures_before_inactive(&self) -> u32 {
        self.failures_before_inactive
    }

    /// Applies `result` to a proxy whose status is `status` and health `health`.
    #[must_use]
    pub fn apply(
        &self,
        status: ProxyStatus,
        health: &ProxyHealth,
        result: &HealthCheckResult,
    ) -> HealthOutcome {
        let mut next = health.clone();
        if result.reachable && result.latency_ms.is_some() {
            next.last_latency_ms = result.latency_ms;
        }
        if result.http_status.is_some() {
            next.last_http_status = result.http_status;
        }
        let new_status = if result.succeeded() {
            next.consecutive_failures = 0;
            next.last_error = None;
            result.status
        } else {
            next.consecutive_failures = health.consecutive_failures.saturating_add(1);
            next.last_error.clone_from(&result.error);
            if next.consecutive_failures >= self.failures_before_inactive {
                ProxyStatus::Inactive
            } else {
                status
            }
        };
        HealthOutcome {
            status: if status == ProxyStatus::Banned {
                ProxyStatus::Banned
            } else {
                new_status
            },
            health: next,
            ends_cooldown: self.success_ends_cooldown && result.succeeded(),
        }
    }
}

impl Default for HealthPolicy {
    /// Inactive after 3 consecutive failures.
    fn default() -> Self {
        Self {
            failures_before_inactive: 3,
            success_ends_cooldown: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: ProxyStatus, latency: Option<f64>) -> HealthCheckResult {
        HealthCheckResult {
            proxy_id: ProxyId::new(),
            protocol: ProxyProtocol::Http,
            status,
            reachable: status != ProxyStatus::Inactive,
            latency_ms: latency,
            attempts: 1,
            http_status: Some(200),
            checked_at: crate::lease::now_micros(),
            error: (status == ProxyStatus::Inactive).then(|| "connection refused".to_owned()),
        }
    }

    #[test]
    fn streak_policy() {
        let policy = HealthPolicy::default();
        let fail = result(ProxyStatus::Inactive, None);
        let mut status = ProxyStatus::Active;
        let mut health = ProxyHealth::default();
        for expected in [
            ProxyStatus::Active,
            ProxyStatus::Active,
            ProxyStatus::Inactive,
        ] {
            let out = policy.apply(status, &health, &fail);
            (status, health) = (out.status, out.health);
            assert_eq!(status, expected);
        }
        assert_eq!(health.consecutive_failures, 3);
        assert_eq!(health.last_error.as_deref(), Some("connection refused"));
        let out = policy.apply(status, &health, &result(ProxyStatus::Slow, Some(900.0)));
        assert_eq!(out.status, ProxyStatus::Slow);
        assert_eq!(out.health.consecutive_failures, 0);
        assert_eq!(out.health.last_error, None);
        assert_eq!(out.health.last_latency_ms, Some(900.0));
    }

    #[test]
    fn banned_is_never_lifted() {
        let out = HealthPolicy::immediate().apply(
            ProxyStatus::Banned,
            &ProxyHealth::default(),
            &result(ProxyStatus::Active, Some(5.0)),
        );
        assert_eq!(out.status, ProxyStatus::Banned);
        assert_eq!(out.health.last_latency_ms, Some(5.0));
    }

    #[test]
    fn immediate_policy_and_validation() {
        let out = HealthPolicy::immediate().apply(
            ProxyStatus::Active,
            &ProxyHealth::default(),
            &result(ProxyStatus::Inactive, None),
        );
        assert_eq!(out.status, ProxyStatus::Inactive);
        assert!(HealthPolicy::new(0).is_err());
        let mut bad = result(ProxyStatus::Active, Some(f64::INFINITY));
        assert_eq!(bad.validate().unwrap_err().field, "health.latency_ms");
        bad.latency_ms = Some(1.0);
        bad.status = ProxyStatus::Banned;
        assert_eq!(bad.validate().unwrap_err().field, "health.status");
    }
}

/// How to run a health check through a proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckOptions {
    /// The URL fetched through the proxy (`http://` or `https://`).
    pub target_url: String,
    /// Limit for one attempt, connect to last byte of the head.
    #[serde(with = "duration_ms")]
    pub timeout: std::time::Duration,
    /// Attempts before giving up, 1..=5.
    pub attempts: u32,
    /// Status codes that count as success; empty means any 2xx.
    pub expected_status: Vec<u16>,
    /// Latency above which a working proxy is judged slow.
    #[serde(with = "duration_ms::option")]
    pub slow_threshold: Option<std::time::Duration>,
    /// Follow redirects from the target (at most 5) or judge the 3xx itself.
    pub follow_redirects: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// For SOCKS: let the proxy resolve the target's name (socks4a/socks5h)
    /// instead of resolving it locally.
    pub remote_dns: bool,
}

/// The most attempts a health check may make.
pub const MAX_HEALTH_ATTEMPTS: u32 = 5;

impl Default for HealthCheckOptions {
    /// `https://www.gstatic.com/generate_204`, 5 s timeout, 1 attempt, any
    /// 2xx, slow above 2 s, no redirects, remote DNS.
    fn default() -> Self {
        Self {
            target_url: "https://www.gstatic.com/generate_204".to_owned(),
            timeout: std::time::Duration::from_secs(5),
            attempts: 1,
            expected_status: Vec::new(),
            slow_threshold: Some(std::time::Duration::from_secs(2)),
            follow_redirects: false,
            headers: Vec::new(),
            remote_dns: true,
        }
    }
}

impl HealthCheckOptions {
    /// Whether `status` counts as success under these options.
    #[must_use]
    pub fn is_expected(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_status.contains(&status)
        }
    }

    /// Checks every option.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let lower = self.target_url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || self.target_url.len() < 10
        {
            return Err(ValidationError::new(
                "health.target_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ValidationError::new(
                "health.timeout",
                "must be greater than zero",
            ));
        }
        if !(1..=MAX_HEALTH_ATTEMPTS).contains(&self.attempts) {
            return Err(ValidationError::new(
                "health.attempts",
                "must be between 1 and 5",
            ));
        }
        if let Some(code) = self
            .expected_status
            .iter()
            .find(|c| !(100..=599).contains(*c))
        {
            return Err(ValidationError::new(
                "health.expected_status",
                format!("{code} is not an HTTP status code"),
            ));
        }
        if let Some((name, _)) = self.headers.iter().find(|(name, value)| {
            name.trim().is_empty()
                || name.contains([':', '\r', '\n'])
                || value.contains(['\r', '\n'])
        }) {
            return Err(ValidationError::new(
                "health.headers",
                format!("header {name:?} is not a valid header"),
            ));
        }
        Ok(())
    }
}

/// Serde for durations as whole milliseconds.
mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }

    pub(super) mod option {
        use super::*;

        pub(in super::super) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
        }
    }
}
