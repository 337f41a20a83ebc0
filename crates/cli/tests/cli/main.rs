//! The `pharox` binary, run as a user runs it: exit codes, stdout, stderr.
//!
//! The PostgreSQL tests give every test a freshly created, empty schema of
//! its own (`?schema=` in the URL the binary gets) and drop it afterwards,
//! even when the test fails. The server comes from
//! `PHAROX_TEST_DATABASE_URL`, else `PHAROX_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`; when it cannot be reached
//! the tests fail and say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        let Output {
            status,
            stdout,
            stderr,
        } = output;
        Self {
            code: status.code(),
            stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
        }
    }
}

/// `pharox args...` with neither `PHAROX_DATABASE_URL` nor `RUST_LOG`
/// inherited (a developer's `PHAROX_DATABASE_URL` would send the in-memory
/// bench to PostgreSQL).
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pharox"));
    command
        .args(args)
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("RUST_LOG");
    command
}

/// Runs `pharox args...` with `env` set (see [`command`]).
fn pharox_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running the pharox binary").into()
}

/// Starts `pharox args...` with stdout and stderr piped.
fn spawn(args: &[&str]) -> Child {
    command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the pharox binary")
}

/// How long a run of the binary in these tests may take before it counts
/// as hung.
const HUNG_AFTER: Duration = Duration::from_secs(120);

/// Waits for `child` to exit and collects what it printed; kills it and
/// fails if it takes longer than [`HUNG_AFTER`].
fn finish(child: Child) -> Run {
    let pid = child.id();
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match exited.recv_timeout(HUNG_AFTER) {
        Ok(output) => output.expect("waiting for pharox").into(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("pharox (pid {pid}) did not exit within {HUNG_AFTER:?}");
        }
    }
}

/// Runs `pharox args...` with a stdout nobody reads: the pipe's read end
/// is closed before the binary starts, so its first write fails (EPIPE).
fn with_closed_stdout(args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let child = command(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the pharox binary");
    finish(child)
}

/// A run that ended quietly: exit code 0, nothing on stderr.
fn assert_quiet(args: &[&str], run: &Run) {
    assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    assert!(!run.stderr.contains("Broken pipe"), "{args:?}: {run:?}");
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    assert!(run.stderr.is_empty(), "{args:?}: {run:?}");
}

fn pharox(args: &[&str]) -> Run {
    pharox_with_env(args, &[])
}

/// The keys of `pharox bench --json`, whatever the storage.
const BENCH_KEYS: [&str; 17] = [
    "storage",
    "workers",
    "session_keys",
    "target_count",
    "metrics",
    "proxies",
    "operations",
    "ops_per_sec",
    "hits",
    "misses",
    "errors",
    "first_error",
    "errors_by_kind",
    "capacity",
    "max_concurrent_leases_seen",
    "leases_left",
    "latency_us",
];

/// Parses the one JSON object a successful `bench --json` prints and
/// checks its shape (see [`bench_json_of`]).
fn bench_json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{run:?}");
    bench_json_of(run)
}

/// Parses the one JSON object `bench --json` printed and checks its shape:
/// exactly [`BENCH_KEYS`], `latency_us` with exactly p50 <= p95 <= p99,
/// and `errors_by_kind` counting every error.
fn bench_json_of(run: &Run) -> Value {
    assert_eq!(run.stdout.lines().count(), 1, "one line of JSON: {run:?}");
    let json: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let keys: BTreeSet<&str> = json
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(BENCH_KEYS), "{run:?}");
    let latency = json["latency_us"].as_object().expect("latency_us object");
    let latency_keys: BTreeSet<&str> = latency.keys().map(String::as_str).collect();
    assert_eq!(latency_keys, BTreeSet::from(["p50", "p95", "p99"]));
    let [p50, p95, p99] = ["p50", "p95", "p99"].map(|q| latency[q].as_f64().expect("a number"));
    assert!(
        0.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 > 0.0,
        "{run:?}"
    );
    assert!(json["ops_per_sec"].as_f64().expect("a number") > 0.0);
    let by_kind = json["errors_by_kind"]
        .as_object()
        .expect("errors_by_kind object");
    let counted: u64 = by_kind.values().map(|n| n.as_u64().expect("a count")).sum();
    assert_eq!(json["errors"], counted, "{run:?}");
    assert_eq!(json["first_error"].is_null(), counted == 0, "{run:?}");
    json
}

/// The bench's JSON, checked for a run on `storage` with `workers` workers
/// on `proxies` single-slot proxies that did `operations` pairs, every one
/// a hit, and never more leases at once than workers.
fn assert_clean_bench(run: &Run, storage: &str, workers: u64, proxies: u64, operations: u64) {
    let json = bench_json(run);
    assert_eq!(json["storage"], storage, "{run:?}");
    assert_eq!(json["workers"], workers, "{run:?}");
    assert_eq!(json["proxies"], proxies, "{run:?}");
    assert_eq!(json["capacity"], proxies, "{run:?}");
    assert_eq!(json["operations"], operations, "{run:?}");
    assert_eq!(json["hits"], operations, "{run:?}");
    assert_eq!(json["misses"], 0, "{run:?}");
    assert_eq!(json["errors"], 0, "{run:?}");
    assert_eq!(json["first_error"], Value::Null, "{run:?}");
    assert_eq!(json["errors_by_kind"], serde_json::json!({}), "{run:?}");
    let seen = json["max_concurrent_leases_seen"].as_u64().unwrap();
    assert!((1..=workers).contains(&seen), "{run:?}");
    assert_eq!(json["leases_left"], 0, "{run:?}");
}

#[test]
fn memory_bench_prints_the_documented_json() {
    let run = pharox(&["bench", "--json", "--iterations", "1000"]);
    assert_clean_bench(&run, "memory", 8, 1000, 1000);
}

#[test]
fn memory_bench_with_session_keys_and_targets() {
    let run = pharox(&[
        "bench",
        "--json",
        "--iterations",
        "1000",
        "--session-keys",
        "16",
        "--target-count",
        "3",
    ]);
    assert_clean_bench(&run, "memory", 8, 1000, 1000);
    let json = bench_json(&run);
    assert_eq!(
        (json["session_keys"].as_u64(), json["target_count"].as_u64()),
        (Some(16), Some(3))
    );
    let plain = bench_json(&pharox(&["bench", "--json", "--iterations", "10"]));
    assert_eq!(
        (
            plain["session_keys"].as_u64(),
            plain["target_count"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn commands_with_a_closed_stdout_end_quietly() {
    for args in [
        &["bench", "--iterations", "1000"][..],
        &["bench", "--iterations", "1000", "--json"][..],
        &["bench", "health", "--proxies", "100", "--rounds", "1"][..],
        &["--help"][..],
    ] {
        assert_quiet(args, &with_closed_stdout(args));
    }
}

/// Whether process `pid` has handlers for SIGINT and SIGTERM installed
/// (the `SigCgt` mask of `/proc/PID/status`: bit n-1 for signal n).
#[cfg(target_os = "linux")]
fn catches_int_and_term(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let caught = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    let (sigint, sigterm) = (1u64 << (2 - 1), 1u64 << (15 - 1));
    caught & sigint != 0 && caught & sigterm != 0
}

/// In memory there is nothing to look at from outside, so the test waits
/// for the handlers; the bench seeds its pool only after installing them.
#[cfg(target_os = "linux")]
#[test]
fn an_in_memory_bench_stops_on_sigint_and_sigterm() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        // Holding its leases for ten minutes: the signal cuts the hold short.
        let mut child = spawn(&["bench", "--duration", "60", "--hold-ms", "600000"]);
        let pid = child.id();
        signal_when_running(&mut child, signal, || catches_int_and_term(pid));
        let run = finish(child);
        assert_eq!(run.code, Some(code), "{signal}: {run:?}");
        assert!(run.stdout.is_empty(), "{signal}: {run:?}");
        assert!(
            run.stderr.starts_with("pharox: stopped by SIG"),
            "{signal}: {run:?}"
        );
    }
}

/// Waits until `running` says the bench in `child` has got going (polling:
/// the bench has no way to say so), then sends it `signal` (`-INT`, `-TERM`).
fn signal_when_running(child: &mut Child, signal: &str, mut running: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + HUNG_AFTER;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pharox exited ({status}) before it was sent {signal}");
        }
        if running() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench did not get going within {HUNG_AFTER:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} failed");
}

#[test]
fn out_of_range_numbers_are_usage_errors_not_panics() {
    for (args, flag) in [
        (&["bench", "--duration", "1e20"][..], "--duration"),
        (
            &["bench", "--workers", "18446744073709551615"][..],
            "--workers",
        ),
        (
            &["bench", "--proxies", "18446744073709551615"][..],
            "--proxies",
        ),
        (
            &["bench", "health", "--concurrency", "18446744073709551615"][..],
            "--concurrency",
        ),
    ] {
        let run = pharox(args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.starts_with(&format!("error: invalid {flag}: ")),
            "{args:?}: {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

/// A password that must never be printed; nothing listens on port 1, and the
/// timeouts make the refused connection fail fast.
#[cfg(feature = "postgres")]
const WRONG_PASSWORD_URL: &str =
    "postgres://postgres:wrongpass@127.0.0.1:1/x?connect_timeout=0.5&acquire_timeout=0.5";

#[cfg(feature = "postgres")]
#[test]
fn a_password_in_the_url_never_reaches_the_output() {
    let unreachable = WRONG_PASSWORD_URL;
    let malformed = "postgres://postgres:wrongpass@127.0.0.1:notaport/x";
    let unknown_parameter = "postgres://postgres:wrongpass@127.0.0.1:1/x?bogus=1";
    /// Arguments, environment, expected exit code.
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], i32);
    let cases: Vec<Case> = vec![
        (
            vec!["migrate", "status", "--database-url", unreachable],
            &[],
            1,
        ),
        (
            vec!["migrate", "status"],
            &[("PHAROX_DATABASE_URL", WRONG_PASSWORD_URL)],
            1,
        ),
        (
            vec!["bench", "--json", "--database-url", unreachable],
            &[],
            1,
        ),
        (
            vec![
                "health",
                "history",
                "0190b0a4-6f9c-7a3e-8b1d-2c4e6f8a0b1c",
                "--database-url",
                unreachable,
            ],
            &[],
            1,
        ),
        (vec!["migrate", "--database-url", malformed], &[], 2),
        (vec!["bench", "--database-url", unknown_parameter], &[], 2),
    ];
    for (args, env, code) in cases {
        let run = pharox_with_env(&args, env);
        assert_eq!(run.code, Some(code), "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error: "), "{args:?}: {run:?}");
        if code == 1 {
            // The failure names where it tried to go, and says what to check.
            assert!(run.stderr.contains("127.0.0.1:1"), "{args:?}: {run:?}");
            assert!(run.stderr.contains("hint: "), "{args:?}: {run:?}");
        } else {
            assert!(
                run.stderr.contains("invalid --database-url"),
                "{args:?}: {run:?}"
            );
        }
        assert!(!run.stderr.contains("wrongpass"), "{args:?}: {run:?}");
        assert!(!run.stdout.contains("wrongpass"), "{args:?}: {run:?}");
    }
}

#[cfg(feature = "postgres")]
mod postgres;
