//! The benchmark's flags, seeding and report, without a storage server.

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Bench(BenchArgs),
}

fn plan(flags: &[&str]) -> Result<Plan, CliError> {
    let args = ["pharox", "bench"].iter().chain(flags);
    let Command::Bench(args) = Cli::try_parse_from(args).unwrap().command;
    args.plan()
}

fn rejected_flag(flags: &[&str]) -> &'static str {
    match plan(flags) {
        Err(CliError::Usage { flag, .. }) => flag,
        Err(e) => panic!("{flags:?}: expected a usage error, got {e}"),
        Ok(_) => panic!("{flags:?}: accepted"),
    }
}

#[test]
fn durations_beyond_the_bound_are_usage_errors() {
    // 1e20 s overflows a Duration (Duration::from_secs_f64 panicked on it).
    assert_eq!(rejected_flag(&["--duration", "1e20"]), "duration");
    assert_eq!(rejected_flag(&["--duration", "2592001"]), "duration");
    assert_eq!(rejected_flag(&["--duration", "inf"]), "duration");
    assert_eq!(rejected_flag(&["--duration", "0"]), "duration");
    let err = plan(&["--duration", "1e20"]).err().unwrap();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().starts_with("invalid --duration: "), "{err}");
}

#[test]
fn durations_within_the_bound_are_kept() {
    let stop_after = |flags: &[&str]| plan(flags).unwrap().stop_after();
    assert_eq!(
        stop_after(&["--duration", "0.25"]),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        stop_after(&["--duration", "2592000"]),
        Some(Duration::from_secs(2_592_000))
    );
    assert_eq!(stop_after(&[]), Some(Duration::from_secs(5)));
    assert_eq!(stop_after(&["--iterations", "10"]), None);
}

#[test]
fn worker_and_proxy_counts_are_bounded() {
    // usize::MAX workers made Vec::with_capacity panic.
    assert_eq!(
        rejected_flag(&["--workers", &usize::MAX.to_string()]),
        "workers"
    );
    assert_eq!(rejected_flag(&["--workers", "0"]), "workers");
    assert_eq!(rejected_flag(&["--workers", "100001"]), "workers");
    assert_eq!(
        rejected_flag(&["--proxies", &usize::MAX.to_string()]),
        "proxies"
    );
    assert_eq!(rejected_flag(&["--proxies", "10000001"]), "proxies");
    assert_eq!(
        rejected_flag(&["--session-keys", "1000001"]),
        "session-keys"
    );
    assert_eq!(
        rejected_flag(&["--target-count", "1000001"]),
        "target-count"
    );
    let keyed = plan(&["--session-keys", "1000000", "--target-count", "7"]).unwrap();
    assert_eq!((keyed.session_keys, keyed.target_count), (1_000_000, 7));
    let plan = plan(&["--workers", "100000", "--proxies", "10000000"]).unwrap();
    assert_eq!((plan.workers, plan.proxies), (100_000, 10_000_000));
}

#[test]
fn seed_only_and_reuse_pool_need_a_pool_name_and_a_database() {
    assert_eq!(rejected_flag(&["--seed-only"]), "seed-only");
    assert_eq!(rejected_flag(&["--reuse-pool"]), "reuse-pool");
    assert_eq!(
        rejected_flag(&["--reuse-pool", "--pool", " "]),
        "reuse-pool"
    );
    assert_eq!(rejected_flag(&["--pool", "big"]), "pool");
    // In memory the pool would not outlive the command.
    assert_eq!(
        rejected_flag(&["--seed-only", "--pool", "big"]),
        "seed-only"
    );
    assert_eq!(
        rejected_flag(&["--reuse-pool", "--pool", "big"]),
        "reuse-pool"
    );
    assert_eq!(plan(&[]).unwrap().pool, PoolUse::Fresh);
    for conflicting in [
        ["--seed-only", "--reuse-pool"],
        ["--seed-only", "--duration=1"],
        ["--seed-only", "--iterations=1"],
    ] {
        let args = ["pharox", "bench", "--pool", "big"]
            .into_iter()
            .chain(conflicting);
        assert!(Cli::try_parse_from(args).is_err(), "{conflicting:?}");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn seed_only_and_reuse_pool_name_their_pool() {
    let url = ["--database-url", "postgres://postgres@127.0.0.1:5432/x"];
    let with = |flags: &[&str]| plan(&[&url[..], flags].concat()).unwrap().pool;
    assert_eq!(
        with(&["--seed-only", "--pool", "big"]),
        PoolUse::SeedOnly("big".to_owned())
    );
    assert_eq!(
        with(&["--reuse-pool", "--pool", "big", "--duration", "1"]),
        PoolUse::Reuse("big".to_owned())
    );
}

fn backend(message: &str) -> PharoxError {
    PharoxError::Storage(StorageError::Backend {
        message: message.to_owned(),
        source: None,
    })
}

#[test]
fn tallies_merge_counts_kinds_and_keep_the_earliest_error() {
    let mut early = Tally::default();
    early.record_error(&backend("early"));
    let mut late = Tally {
        hits: 5,
        misses: 1,
        ..Tally::default()
    };
    late.record_error(&backend("late"));
    late.record_error(&PharoxError::Storage(StorageError::Conflict("c".into())));
    late.release_errors = 1;

    // Merged into a worker that saw no error, then the earlier one.
    let mut total = Tally::default();
    total.merge(late);
    total.merge(early);
    assert_eq!((total.hits, total.misses), (5, 1));
    assert_eq!((total.errors, total.release_errors), (3, 1));
    assert_eq!(
        total.errors_by_kind,
        BTreeMap::from([("backend", 2), ("conflict", 1)])
    );
    assert_eq!(total.first_error(), Some("storage backend error: early"));
    assert_eq!(Tally::default().first_error(), None);
}

#[test]
fn a_failed_release_is_no_extra_operation_and_no_completed_pair() {
    let tally = Tally {
        hits: 10,
        misses: 2,
        errors: 4,
        release_errors: 3,
        ..Tally::default()
    };
    let measured = Measurement {
        tally,
        latency: new_histogram().unwrap(),
        elapsed: Duration::from_secs(2),
        capacity: 10,
        max_seen: 10,
        over_leased: 0,
        leases_left: Some(3),
    };
    // 10 hits + 2 misses + 1 failed acquire.
    assert_eq!(measured.operations(), 13);
    // 7 of the 10 leases were released.
    assert_eq!(measured.pairs_per_sec(), 3.5);
    assert!(measured.over_lease().is_none());
    let over = Measurement {
        max_seen: 11,
        ..measured
    };
    assert!(matches!(over.over_lease(), Some(CliError::OverLease(_))));
}

#[test]
fn the_first_failure_is_the_error_of_the_command() {
    assert!(first_failure(Vec::new()).is_ok());
    let first = first_failure(vec![
        CliError::Interrupted(Signal::Terminate),
        CliError::Other("also".into()),
    ]);
    assert!(matches!(
        first,
        Err(CliError::Interrupted(Signal::Terminate))
    ));
}

#[test]
fn a_deadline_past_the_clock_range_is_a_usage_error() {
    let now = Instant::now();
    match deadline(now, Some(Duration::MAX)) {
        Err(CliError::Usage { flag, .. }) => assert_eq!(flag, "duration"),
        other => panic!("expected a usage error, got {other:?}"),
    }
    assert_eq!(deadline(now, None).unwrap(), None);
    assert_eq!(
        deadline(now, Some(Duration::from_secs(3))).unwrap(),
        Some(now + Duration::from_secs(3))
    );
}
