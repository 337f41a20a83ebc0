use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ConsumerId, LeaseId, LeaseSession, PoolId, Proxy, ProxyId, ValidationError};

/// The longest lease accepted: 30 days. Longer "leases" are ownership and
/// belong in the pool layout, not in a TTL.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Checks a lease time-to-live: more than zero, at most [`MAX_LEASE_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<(), ValidationError> {
    if ttl.is_zero() {
        return Err(ValidationError::new("ttl", "must be greater than zero"));
    }
    if ttl > MAX_LEASE_TTL {
        return Err(ValidationError::new("ttl", "must be at most 30 days"));
    }
    Ok(())
}

/// Now, in UTC, truncated to whole microseconds.
///
/// PostgreSQL keeps microseconds; truncating every timestamp the domain makes
/// means values compare equal after a round trip through any adapter.
#[must_use]
pub fn now_micros() -> OffsetDateTime {
    // Within range for any clock this program can run under.
    from_unix_micros(unix_micros_now()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Now, as whole microseconds since the Unix epoch (negative before it).
///
/// The hot paths keep time as this integer and make an [`OffsetDateTime`]
/// only for what they hand out: `time`'s conversion from `SystemTime` and
/// its `Duration` arithmetic cost several times a clock read.
#[must_use]
pub fn unix_micros_now() -> i64 {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(after.subsec_micros())),
        // A clock set before 1970: count back, truncating toward the past
        // as `truncate_to_micros` does.
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_micros()).unwrap_or(i64::MAX);
            let partial = i64::from(before.subsec_nanos() % 1_000 != 0);
            whole.saturating_add(partial).saturating_neg()
        }
    }
}

/// The instant `micros` microseconds after the Unix epoch, in UTC; `None`
/// outside the years `time` can represent.
#[must_use]
pub fn from_unix_micros(micros: i64) -> Option<OffsetDateTime> {
    type Seconds = [(i64, OffsetDateTime); 2];
    thread_local! {
        // The last two seconds converted: a thread converts "now" and an
        // expiry minutes later, over and over, and all but the
        // microseconds is the costly part. `i64::MIN` is no second `time`
        // can show, so it never matches.
        static SECONDS: std::cell::Cell<Seconds> =
            const { std::cell::Cell::new([(i64::MIN, OffsetDateTime::UNIX_EPOCH); 2]) };
    }
    let second = micros.div_euclid(1_000_000);
    // In 0..1_000_000.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let within = micros.rem_euclid(1_000_000) as u32;
    let [newer, older] = SECONDS.get();
    let start = if newer.0 == second {
        newer.1
    } else if older.0 == second {
        older.1
    } else {
        let start = OffsetDateTime::from_unix_timestamp(second).ok()?;
        SECONDS.set([(second, start), newer]);
        start
    };
    start.replace_microsecond(within).ok()
}

/// Whole microseconds since the Unix epoch (the sub-microsecond part is
/// dropped, toward the past).
#[must_use]
pub fn unix_micros(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.microsecond()))
}

/// Drops the sub-microsecond part of a timestamp (see [`now_micros`]).
#[must_use]
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// Whether a lease still holds its proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// Held, until released or expired.
    Active,
    /// Given back (by its holder, or reclaimed after it expired).
    Released,
}

impl LeaseStatus {
    /// The lower-case name used in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Released => "released",
        }
    }
}

impl fmt::Display for LeaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LeaseStatus {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Ok(Self::Active),
            "released" => Ok(Self::Released),
            _ => Err(ValidationError::new(
                "lease.status",
                "must be active or released",
            )),
        }
    }
}

/// A consumer's claim on a proxy for a limited time.
///
/// It carries a snapshot of the proxy as it was when leased, so the holder
/// can connect without a second lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Identity.
    pub id: LeaseId,
    /// The leased proxy.
    pub proxy_id: ProxyId,
    /// The pool it was leased from.
    pub pool_id: PoolId,
    /// The pool's name at the time of leasing.
    pub pool_name: Arc<str>,
    /// Who holds it.
    pub consumer_id: ConsumerId,
    /// Active or released.
    pub status: LeaseStatus,
    /// When it was granted.
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    /// When it stops holding the proxy unless renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was released, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub released_at: Option<OffsetDateTime>,
    /// The proxy as it was when leased.
    pub proxy: Arc<Proxy>,
    /// The sticky session the acquire asked for, and whether it moved to
    /// this proxy. Only the lease an acquire returns carries it; reads of a
    /// stored lease give `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<LeaseSession>,
}

impl Lease {
    /// Whether the lease has run out at `now` (expiry is exclusive: a lease
    /// expiring at `now` no longer holds its proxy).
    #[must_use]
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    /// Whether the lease still holds its proxy at `now`.
    #[must_use]
    pub fn is_active_at(&self, now: OffsetDateTime) -> bool {
        self.status == LeaseStatus::Active && !self.is_expired_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(validate_ttl(Duration::ZERO).is_err());
        assert!(validate_ttl(Duration::from_millis(1)).is_ok());
        assert!(validate_ttl(MAX_LEASE_TTL).is_ok());
        assert_eq!(
            validate_ttl(MAX_LEASE_TTL + Duration::from_secs(1))
                .unwrap_err()
                .field,
            "ttl"
        );
    }

    #[test]
    fn timestamps_are_microsecond_precise() {
        let t = now_micros();
        assert_eq!(t.nanosecond() % 1_000, 0);
        let odd = OffsetDateTime::UNIX_EPOCH
            .replace_nanosecond(123_456_789)
            .unwrap();
        assert_eq!(truncate_to_micros(odd).nanosecond(), 123_456_000);
    }

    #[test]
    fn unix_micros_round_trip_on_both_sides_of_the_epoch() {
        for micros in [
            0,
            1,
            -1,
            999_999,
            -1_000_000,
            -1_000_001,
            1_733_000_000_123_456,
        ] {
            let t = from_unix_micros(micros).unwrap();
            assert_eq!(unix_micros(t), micros, "{micros}");
            assert_eq!(t.nanosecond() % 1_000, 0);
        }
        let t = from_unix_micros(-1).unwrap();
        assert_eq!(
            t,
            OffsetDateTime::UNIX_EPOCH - time::Duration::microseconds(1)
        );
        assert_eq!(from_unix_micros(i64::MAX), None);
        assert_eq!(from_unix_micros(i64::MIN), None);
    }

    #[test]
    fn the_integer_clock_agrees_with_time() {
        let before = truncate_to_micros(OffsetDateTime::now_utc());
        let now = from_unix_micros(unix_micros_now()).unwrap();
        let after = OffsetDateTime::now_utc();
        assert!(before <= now && now <= after, "{before} {now} {after}");
        assert!(now_micros() >= now);
    }
}
