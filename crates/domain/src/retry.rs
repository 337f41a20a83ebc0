use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// How often and how patiently to retry an acquire that found nothing.
///
/// Attempt 1 runs at once; before attempt `n + 1` the caller waits
/// [`delay_after(n)`](Self::delay_after) = `initial_backoff * multiplier^(n-1)`,
/// capped at `max_backoff` when set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Option<Duration>,
}

impl RetryPolicy {
    /// A policy; fails unless `max_attempts >= 1`, `multiplier >= 1` (and
    /// finite), and `max_backoff`, when set, is at least `initial_backoff`.
    pub fn new(
        max_attempts: u32,
        initial_backoff: Duration,
        multiplier: f64,
        max_backoff: Option<Duration>,
    ) -> Result<Self, ValidationError> {
        if max_attempts == 0 {
            return Err(ValidationError::new(
                "retry.max_attempts",
                "must be at least 1",
            ));
        }
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(ValidationError::new(
                "retry.multiplier",
                "must be a finite number >= 1",
            ));
        }
        if max_backoff.is_some_and(|cap| cap < initial_backoff) {
            return Err(ValidationError::new(
                "retry.max_backoff",
                "must not be smaller than initial_backoff",
            ));
        }
        Ok(Self {
            max_attempts,
            initial_backoff,
            multiplier,
            max_backoff,
        })
    }

    /// How many attempts in all, at least 1.
    #[must_use]
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after the first failed attempt.
    #[must_use]
    pub const fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The growth factor between waits.
    #[must_use]
    pub const fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The longest wait, if capped.
    #[must_use]
    pub const fn max_backoff(&self) -> Option<Duration> {
        self.max_backoff
    }

    /// The wait after failed attempt `attempt` (1-based). Saturates instead
    /// of overflowing; attempt 0 is treated as 1.
    #[must_use]
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let delay = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        match self.max_backoff {
            Some(cap) => delay.min(cap),
            None => delay,
        }
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, waiting 100 ms then 200 ms, capped at 5 s.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Some(Duration::from_secs(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::new(
            5,
            Duration::from_millis(100),
            2.0,
            Some(Duration::from_millis(350)),
        )
        .unwrap();
        let delays: Vec<_> = (1..=4).map(|n| p.delay_after(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert_eq!(p.delay_after(0), Duration::from_millis(100));
        let uncapped = RetryPolicy::new(2, Duration::from_secs(1), 10.0, None).unwrap();
        assert_eq!(uncapped.delay_after(u32::MAX), Duration::MAX);
    }

    #[test]
    fn rejects_bad_policies() {
        let d = Duration::from_millis(10);
        assert_eq!(
            RetryPolicy::new(0, d, 2.0, None).unwrap_err().field,
            "retry.max_attempts"
        );
        assert_eq!(
            RetryPolicy::new(1, d, 0.5, None).unwrap_err().field,
            "retry.multiplier"
        );
        assert_eq!(
            RetryPolicy::new(1, d, f64::NAN, None).unwrap_err().field,
            "retry.multiplier"
        );
        assert_eq!(
            RetryPolicy::new(1, d, 1.0, Some(Duration::from_millis(1)))
                .unwrap_err()
                .field,
            "retry.max_backoff"
        );
    }
}
