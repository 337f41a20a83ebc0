use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

/// The current time, injectable so tests can move it instead of sleeping.
pub trait Clock: Send + Sync + Debug {
    /// Now, in UTC, truncated to microseconds (what PostgreSQL keeps).
    fn now(&self) -> OffsetDateTime;

    /// Now, as microseconds since the Unix epoch: the same instant as
    /// [`Clock::now`], for hot paths that keep time as an integer.
    /// Override it when the clock can answer without making an
    /// `OffsetDateTime` first.
    fn now_unix_micros(&self) -> i64 {
        pharox_domain::unix_micros(self.now())
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        pharox_domain::now_micros()
    }

    fn now_unix_micros(&self) -> i64 {
        pharox_domain::unix_micros_now()
    }
}

/// A clock that only moves when told to: for tests of expiry and backoff.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock stopped at `start` (truncated to microseconds).
    #[must_use]
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(pharox_domain::truncate_to_micros(start)),
        }
    }

    /// A clock stopped at the current wall-clock time.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::new(pharox_domain::now_micros())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = pharox_domain::truncate_to_micros(*now + by);
    }

    /// Sets the clock.
    pub fn set(&self, to: OffsetDateTime) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            pharox_domain::truncate_to_micros(to);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::starting_now()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_now();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, time::Duration::seconds(90));
        assert_eq!(SystemClock.now().nanosecond() % 1000, 0);
    }
}
