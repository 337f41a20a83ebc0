//! What using a leased proxy came to, and what that does to the proxy's
//! standing: the error score, cooldowns and bans per target site.
//!
//! The rules live here once, as pure functions
//! ([`UsagePolicy::apply_outcome`]); storage adapters only persist what they
//! compute, atomically with the report or the release that carries the
//! outcome.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, truncate_to_micros};

/// The longest host name accepted as a target (DNS limit).
pub const MAX_TARGET_CHARS: usize = 253;

/// The longest cooldown or ban a policy may set: 30 days.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A target site, by host name: what a ban is kept for.
///
/// Compared case-insensitively: the name is stored in lower case, with a
/// trailing dot dropped, so `Example.COM.` and `example.com` are one target.
/// Ports and paths are not part of it: a site blocks a proxy, not a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetHost(String);

impl TargetHost {
    /// Checks and normalises a host name (or an IP literal, IPv6 with or
    /// without brackets): letters, digits, `-`, `_`, `.` and `:`, 1 to
    /// [`MAX_TARGET_CHARS`] characters, no empty label.
    pub fn new(host: &str) -> Result<Self, ValidationError> {
        let trimmed = host.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(trimmed);
        let name = unbracketed
            .strip_suffix('.')
            .unwrap_or(unbracketed)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(ValidationError::new("target", "must not be blank"));
        }
        if name.len() > MAX_TARGET_CHARS {
            return Err(ValidationError::new(
                "target",
                format!("must be at most {MAX_TARGET_CHARS} characters"),
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            let shown = if bad.is_ascii_graphic() || bad == ' ' {
                format!("{bad:?}")
            } else {
                format!("U+{:04X}", u32::from(bad))
            };
            return Err(ValidationError::new(
                "target",
                format!("must be a host name (no scheme, port or path), found {shown}"),
            ));
        }
        if !name.contains(':') && name.split('.').any(str::is_empty) {
            return Err(ValidationError::new("target", "has an empty label"));
        }
        Ok(Self(name))
    }

    /// The normalised host name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TargetHost {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<TargetHost> for String {
    fn from(value: TargetHost) -> Self {
        value.0
    }
}

/// How a proxy failed a request (the proxy's fault, not the site's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyFailureKind {
    /// The proxy refused the connection.
    ConnectRefused,
    /// The proxy did not answer in time.
    Timeout,
    /// The proxy rejected its credentials.
    ProxyAuth,
    /// The proxy spoke the protocol wrongly (a bad reply, a dropped tunnel).
    Protocol,
    /// Any other failure of the proxy.
    Other,
}

impl ProxyFailureKind {
    /// The snake-case name used in JSON and storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::Timeout => "timeout",
            Self::ProxyAuth => "proxy_auth",
            Self::Protocol => "protocol",
            Self::Other => "other",
        }
    }
}

/// What one use of a leased proxy came to, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The request went through. A success naming a target also ends the
    /// doubling of that target's past bans.
    Success {
        /// The site, if the worker says which.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<TargetHost>,
        /// How long the request took through the proxy, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<f64>,
    },
    /// The proxy failed: it adds to the proxy's error score.
    ProxyFailure {
        /// How.
        failure: ProxyFailureKind,
    },
    /// A target site blocked the proxy (HTTP 403/429, a captcha page): the
    /// proxy is banned for that site only; a first block on a site also
    /// counts toward the proxy's score.
    Blocked {
        /// The site.
        target: TargetHost,
        /// The HTTP status the site answered with, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
    },
    /// The site failed and the proxy is not to blame: no penalty.
    TargetError {
        /// The site, if the worker says which.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<TargetHost>,
        /// The HTTP status the site answered with, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
    },
}

impl Outcome {
    /// A success with no target or latency.
    #[must_use]
    pub const fn success() -> Self {
        Self::Success {
            target: None,
            latency_ms: None,
        }
    }

    /// A failure of the proxy.
    #[must_use]
    pub const fn proxy_failure(failure: ProxyFailureKind) -> Self {
        Self::ProxyFailure { failure }
    }

    /// A block by `target`.
    #[must_use]
    pub const fn blocked(target: TargetHost) -> Self {
        Self::Blocked {
            target,
            http_status: None,
        }
    }

    /// An error of the site, not the proxy.
    #[must_use]
    pub const fn target_error() -> Self {
        Self::TargetError {
            target: None,
            http_status: None,
        }
    }

    /// The kind's snake-case name (`success`, `proxy_failure`, `blocked`,
    /// `target_error`), as in JSON.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Success { .. } => "success",
            Self::ProxyFailure { .. } => "proxy_failure",
            Self::Blocked { .. } => "blocked",
            Self::TargetError { .. } => "target_error",
        }
    }

    /// The target the outcome names, if any.
    #[must_use]
    pub const fn target(&self) -> Option<&TargetHost> {
        match self {
            Self::Success { target, .. } | Self::TargetError { target, .. } => target.as_ref(),
            Self::Blocked { target, .. } => Some(target),
            Self::ProxyFailure { .. } => None,
        }
    }

    /// Checks the values a caller can get wrong: a latency must be finite
    /// and not negative, an HTTP status between 100 and 599.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Success {
                latency_ms: Some(ms),
                ..
            } if !ms.is_finite() || *ms < 0.0 => Err(ValidationError::new(
                "outcome.latency_ms",
                "must be a finite number of milliseconds, not negative",
            )),
            Self::Blocked {
                http_status: Some(status),
                ..
            }
            | Self::TargetError {
                http_status: Some(status),
                ..
            } if !(100..=599).contains(status) => Err(ValidationError::new(
                "outcome.http_status",
                "must be between 100 and 599",
            )),
            _ => Ok(()),
        }
    }
}

/// A proxy's standing from the outcomes reported for it (kept by the
/// storage, changed only by [`UsagePolicy::apply_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProxyUsage {
    /// Accumulated penalties minus credits, never below zero.
    pub error_score: f64,
    /// While now is before this, the proxy is never leased.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub cooldown_until: Option<OffsetDateTime>,
    /// Cooldowns in a row without a success in between: the next cooldown
    /// lasts `cooldown_base * 2^consecutive_cooldowns` (capped).
    pub consecutive_cooldowns: u32,
}

impl ProxyUsage {
    /// Whether the proxy is cooling down at `now` (the end is exclusive: at
    /// `cooldown_until` itself it is leasable again).
    #[must_use]
    pub fn is_cooling_down_at(&self, now: OffsetDateTime) -> bool {
        self.cooldown_until.is_some_and(|until| now < until)
    }
}

/// A (proxy, target) pair's ban, as the storage keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetBanState {
    /// While now is before this, the proxy is not leased for the target.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Bans in a row for this target without a success on it in between.
    pub consecutive: u32,
}

impl TargetBanState {
    /// Whether the ban holds at `now` (the end is exclusive).
    #[must_use]
    pub fn is_active_at(&self, now: OffsetDateTime) -> bool {
        now < self.until
    }
}

/// One ban of a proxy for a target, as reads list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetBan {
    /// The site.
    pub target: TargetHost,
    /// When the ban ends.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Bans in a row for this target.
    pub consecutive: u32,
}

/// What an outcome does to the (proxy, target) ban it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanChange {
    /// Nothing to store.
    Unchanged,
    /// Store this ban (a new one, or a longer one after a previous ban).
    Set(TargetBanState),
    /// Forget the pair's ban history: a success on the site after its ban
    /// ended.
    Clear,
}

/// What [`UsagePolicy::apply_outcome`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageChange {
    /// The proxy's standing afterwards.
    pub usage: ProxyUsage,
    /// What to do with the ban of the outcome's target.
    pub ban: BanChange,
}

/// How outcomes change a proxy's standing. Every field is public and
/// checked by [`validate`](Self::validate); [`Default`] documents the
/// defaults.
///
/// The rules ([`apply_outcome`](Self::apply_outcome)):
///
/// - A proxy failure adds `failure_penalty` to the error score; a success
///   takes `success_credit` off (never below zero); a target error changes
///   nothing.
/// - When the score reaches `score_threshold`, the proxy cools down for
///   `cooldown_base`, doubled for each cooldown in a row before it, at most
///   `cooldown_cap`. While it cools down it is never leased, and outcomes
///   still reported for it (by leases granted before) change nothing.
/// - After a cooldown the proxy is leasable again, on probation: its first
///   success resets the score and the doubling; a failure sends it straight
///   back into the next, longer cooldown.
/// - A block by site S bans the (proxy, S) pair for `ban_base`, doubled per
///   ban in a row for S, at most `ban_cap`; acquires for other sites are
///   unaffected. The first ban for a site (no earlier ban in a row for it)
///   also adds `block_penalty` to the proxy's score, so a proxy blocked on
///   many sites cools down as a bad proxy, while repeated blocks on one site
///   stay that site's business. A success on S after its ban ended forgets
///   S's doubling.
/// - Outcomes never change a proxy's status: health sweeps own that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsagePolicy {
    /// Added to the score per proxy failure (default 1).
    pub failure_penalty: f64,
    /// Taken off the score per success (default 0.5).
    pub success_credit: f64,
    /// Added to the score for a first ban on a site (default 1).
    pub block_penalty: f64,
    /// The score at which a proxy cools down (default 3).
    pub score_threshold: f64,
    /// The first cooldown (default 60 s).
    pub cooldown_base: Duration,
    /// The longest cooldown (default 1 h).
    pub cooldown_cap: Duration,
    /// The first ban for a site (default 5 min).
    pub ban_base: Duration,
    /// The longest ban for a site (default 6 h).
    pub ban_cap: Duration,
    /// How long a sticky session is remembered after its last use, unless
    /// the acquire gives its own (default 10 min).
    pub session_ttl: Duration,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            failure_penalty: 1.0,
            success_credit: 0.5,
            block_penalty: 1.0,
            score_threshold: 3.0,
            cooldown_base: Duration::from_secs(60),
            cooldown_cap: Duration::from_secs(60 * 60),
            ban_base: Duration::from_secs(5 * 60),
            ban_cap: Duration::from_secs(6 * 60 * 60),
            session_ttl: Duration::from_secs(10 * 60),
        }
    }
}

fn check_amount(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be a finite number, not negative",
        ))
    }
}

fn check_span(
    base_field: &'static str,
    base: Duration,
    cap_field: &'static str,
    cap: Duration,
) -> Result<(), ValidationError> {
    if base.is_zero() {
        return Err(ValidationError::new(
            base_field,
            "must be greater than zero",
        ));
    }
    if cap < base {
        return Err(ValidationError::new(
            cap_field,
            format!("must be at least {base_field}"),
        ));
    }
    if cap > MAX_COOLDOWN {
        return Err(ValidationError::new(cap_field, "must be at most 30 days"));
    }
    Ok(())
}

/// `base * 2^doublings`, at most `cap`.
fn doubled(base: Duration, doublings: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// `now + span`, truncated to microseconds like every stored timestamp.
fn after(now: OffsetDateTime, span: Duration) -> OffsetDateTime {
    truncate_to_micros(now + span)
}

impl UsagePolicy {
    /// Checks every field; the error names it (`usage.cooldown_cap`, ...).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_amount("usage.failure_penalty", self.failure_penalty)?;
        check_amount("usage.success_credit", self.success_credit)?;
        check_amount("usage.block_penalty", self.block_penalty)?;
        if !(self.score_threshold.is_finite() && self.score_threshold > 0.0) {
            return Err(ValidationError::new(
                "usage.score_threshold",
                "must be a finite number greater than zero",
            ));
        }
        check_span(
            "usage.cooldown_base",
            self.cooldown_base,
            "usage.cooldown_cap",
            self.cooldown_cap,
        )?;
        check_span(
            "usage.ban_base",
            self.ban_base,
            "usage.ban_cap",
            self.ban_cap,
        )?;
        crate::validate_ttl(self.session_ttl).map_err(|e| e.within("usage.session"))
    }

    /// How long the cooldown after `consecutive` cooldowns in a row lasts.
    #[must_use]
    pub fn cooldown_after(&self, consecutive: u32) -> Duration {
        doubled(self.cooldown_base, consecutive, self.cooldown_cap)
    }

    /// How long the ban after `consecutive` bans in a row for a site lasts.
    #[must_use]
    pub fn ban_after(&self, consecutive: u32) -> Duration {
        doubled(self.ban_base, consecutive, self.ban_cap)
    }

    /// What `outcome`, reported at `now`, does to a proxy whose standing is
    /// `usage` and whose stored ban for the outcome's target is `ban` (the
    /// caller looks it up when [`Outcome::target`] names one). See the type's
    /// docs for the rules.
    #[must_use]
    pub fn apply_outcome(
        &self,
        usage: &ProxyUsage,
        ban: Option<&TargetBanState>,
        outcome: &Outcome,
        now: OffsetDateTime,
    ) -> UsageChange {
        let cooling = usage.is_cooling_down_at(now);
        match outcome {
            Outcome::Success { target, .. } => {
                let ban_change = match (target, ban) {
                    (Some(_), Some(state)) if !state.is_active_at(now) => BanChange::Clear,
                    _ => BanChange::Unchanged,
                };
                let usage = if cooling {
                    *usage
                } else if usage.consecutive_cooldowns > 0 {
                    // Probation passed: the proxy starts over.
                    ProxyUsage::default()
                } else {
                    ProxyUsage {
                        error_score: (usage.error_score - self.success_credit).max(0.0),
                        ..*usage
                    }
                };
                UsageChange {
                    usage,
                    ban: ban_change,
                }
            }
            Outcome::ProxyFailure { .. } => UsageChange {
                usage: self.penalise(usage, self.failure_penalty, now),
                ban: BanChange::Unchanged,
            },
            Outcome::Blocked { .. } => {
                let (ban_change, first_in_a_row) = match ban {
                    Some(state) if state.is_active_at(now) => (BanChange::Unchanged, false),
                    previous => {
                        let consecutive = previous.map_or(0, |s| s.consecutive);
                        (
                            BanChange::Set(TargetBanState {
                                until: after(now, self.ban_after(consecutive)),
                                consecutive: consecutive.saturating_add(1),
                            }),
                            consecutive == 0,
                        )
                    }
                };
                let usage = if first_in_a_row {
                    self.penalise(usage, self.block_penalty, now)
                } else {
                    *usage
                };
                UsageChange {
                    usage,
                    ban: ban_change,
                }
            }
            Outcome::TargetError { .. } => UsageChange {
                usage: *usage,
                ban: BanChange::Unchanged,
            },
        }
    }

    fn penalise(&self, usage: &ProxyUsage, penalty: f64, now: OffsetDateTime) -> ProxyUsage {
        // A penalty of zero means the policy ignores this kind of outcome,
        // also on probation (where the score is still at the threshold).
        if penalty == 0.0 || usage.is_cooling_down_at(now) {
            return *usage;
        }
        let error_score = usage.error_score + penalty;
        let on_probation = usage.consecutive_cooldowns > 0;
        if on_probation || error_score >= self.score_threshold {
            ProxyUsage {
                error_score,
                cooldown_until: Some(after(now, self.cooldown_after(usage.consecutive_cooldowns))),
                consecutive_cooldowns: usage.consecutive_cooldowns.saturating_add(1),
            }
        } else {
            ProxyUsage {
                error_score,
                ..*usage
            }
        }
    }
}

#[cfg(test)]
mod tests;
