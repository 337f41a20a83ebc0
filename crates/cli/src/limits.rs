//! Upper bounds on numeric flags. Without them an absurd value would panic
//! (a capacity overflow, a `Duration` or `Instant` out of range) or exhaust
//! memory instead of failing with a usage error that names the flag.

use std::time::Duration;

use crate::error::CliError;

/// The most proxies a benchmark seeds (`--proxies`): they are all built in
/// memory first.
pub const MAX_PROXIES: usize = 10_000_000;

/// The most distinct session keys or targets a benchmark draws from
/// (`--session-keys`, `--target-count`): one prepared request each.
pub const MAX_BENCH_KEYS: usize = 1_000_000;

/// The most benchmark workers (`pharox bench --workers`): a tokio task each,
/// and with PostgreSQL a pooled connection each.
pub const MAX_WORKERS: usize = 100_000;

/// The most health checks in flight (`--concurrency` of `pharox health
/// check` and `pharox bench health`).
pub const MAX_CONCURRENCY: usize = 100_000;

/// The longest benchmark (`pharox bench --duration`): 30 days, in seconds.
pub const MAX_DURATION_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// The longest probe attempt (`pharox health check --timeout`): an hour, in
/// seconds.
#[cfg_attr(
    not(all(feature = "postgres", feature = "http-probe")),
    allow(dead_code)
)]
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// Checks a count given by `--flag`: 1 to `max`.
pub fn count(flag: &'static str, value: usize, max: usize) -> Result<usize, CliError> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(CliError::Usage {
            flag,
            reason: format!("must be between 1 and {max}"),
        })
    }
}

/// Converts seconds given by `--flag` into a `Duration`: a finite number
/// greater than 0 and at most `max_secs`.
pub fn seconds(flag: &'static str, secs: f64, max_secs: f64) -> Result<Duration, CliError> {
    let out_of_range = || CliError::Usage {
        flag,
        reason: format!("must be a number of seconds > 0 and at most {max_secs}"),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= max_secs) {
        return Err(out_of_range());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| out_of_range())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_flag(result: Result<impl std::fmt::Debug, CliError>) -> &'static str {
        match result {
            Err(CliError::Usage { flag, .. }) => flag,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn counts_are_bounded_on_both_sides() {
        assert_eq!(count("workers", 1, MAX_WORKERS).unwrap(), 1);
        assert_eq!(
            count("workers", MAX_WORKERS, MAX_WORKERS).unwrap(),
            MAX_WORKERS
        );
        assert_eq!(usage_flag(count("workers", 0, MAX_WORKERS)), "workers");
        assert_eq!(
            usage_flag(count("proxies", usize::MAX, MAX_PROXIES)),
            "proxies"
        );
        let Err(e) = count("proxies", MAX_PROXIES + 1, MAX_PROXIES) else {
            panic!("accepted more than MAX_PROXIES");
        };
        assert_eq!(
            e.to_string(),
            "invalid --proxies: must be between 1 and 10000000"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn seconds_in_range_become_durations() {
        assert_eq!(
            seconds("timeout", 0.25, MAX_TIMEOUT_SECS).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            seconds("duration", MAX_DURATION_SECS, MAX_DURATION_SECS).unwrap(),
            Duration::from_secs(2_592_000)
        );
    }

    #[test]
    fn seconds_out_of_range_are_usage_errors_naming_the_flag() {
        // 1e20 and f64::MAX overflow a Duration: Duration::from_secs_f64 panics on them.
        for secs in [
            1e20,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
            0.0,
            -1.0,
            MAX_TIMEOUT_SECS + 0.5,
        ] {
            assert_eq!(
                usage_flag(seconds("timeout", secs, MAX_TIMEOUT_SECS)),
                "timeout",
                "{secs}"
            );
        }
        let Err(e) = seconds("duration", 1e20, MAX_DURATION_SECS) else {
            panic!("accepted 1e20 seconds");
        };
        assert_eq!(
            e.to_string(),
            "invalid --duration: must be a number of seconds > 0 and at most 2592000"
        );
    }
}
