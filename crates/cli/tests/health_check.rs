//! `pharox health check` run as a user runs it, against the real PostgreSQL
//! server (a migrated schema of its own per test) and real proxy and target
//! servers on 127.0.0.1. Every run passes `--target` at a loopback target:
//! the default public target is never contacted.
//!
//! The server comes from `PHAROX_TEST_DATABASE_URL` (else
//! `PHAROX_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`);
//! when it cannot be reached the tests fail and say so.
#![cfg(all(feature = "postgres", feature = "http-probe"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pharox::postgres::testing::{TestSchema, test_database_url};
use pharox::{AcquireRequest, PoolId, Proxy, ProxyPool, ProxyProtocol, ProxyStatus, ProxyStorage};
use pharox_test_proxies::{BlackHole, HttpProxy, TargetServer, TestCa, closed_port};
use serde_json::Value;

/// How long a run may take before it counts as hung.
const HUNG_AFTER: Duration = Duration::from_secs(120);

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
        Self {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.stdout.lines().count(), 1, "one line of JSON: {self:?}");
        serde_json::from_str(&self.stdout).unwrap()
    }
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pharox"));
    command
        .args(args)
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("RUST_LOG")
        // No proxy of the environment may carry the direct target check.
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn spawn(args: &[&str]) -> Child {
    command(args).spawn().expect("starting the pharox binary")
}

/// Waits for `child` (killing it after [`HUNG_AFTER`]).
fn finish(child: Child) -> Run {
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match exited.recv_timeout(HUNG_AFTER) {
        Ok(output) => output.unwrap().into(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("pharox (pid {pid}) did not exit within {HUNG_AFTER:?}");
        }
    }
}

fn pharox(args: &[&str]) -> Run {
    finish(spawn(args))
}

/// A migrated schema with one pool, and the URL the binary gets for it.
struct Fixture {
    schema: TestSchema,
    url: String,
    pool: PoolId,
}

impl Fixture {
    async fn new() -> Self {
        let schema = TestSchema::create_with(4).await.unwrap_or_else(|e| {
            panic!(
                "the health check tests need PostgreSQL ({e}); start one or point \
                 PHAROX_TEST_DATABASE_URL at one"
            )
        });
        let base = test_database_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}schema={}", schema.name());
        let pool = schema
            .storage()
            .save_pool(&ProxyPool::new("edge").unwrap())
            .await
            .unwrap()
            .id;
        Self { schema, url, pool }
    }

    fn storage(&self) -> &pharox::postgres::PostgresStorage {
        self.schema.storage()
    }

    async fn add(&self, addr: SocketAddr, max_concurrency: u32) -> Proxy {
        let proxy = Proxy::builder(
            self.pool,
            addr.ip().to_string(),
            addr.port(),
            ProxyProtocol::Http,
        )
        .max_concurrency(max_concurrency)
        .build()
        .unwrap();
        self.storage().save_proxy(&proxy).await.unwrap()
    }

    async fn status(&self, proxy: &Proxy) -> ProxyStatus {
        self.storage().get_proxy(proxy.id).await.unwrap().status
    }

    async fn records(&self, proxy: &Proxy) -> usize {
        self.storage()
            .list_health_records(proxy.id, 100)
            .await
            .unwrap()
            .len()
    }

    /// `health check --pool edge --database-url URL --target TARGET extra...`
    fn args<'a>(&'a self, target: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "health",
            "check",
            "--pool",
            "edge",
            "--database-url",
            &self.url,
            "--target",
            target,
        ];
        args.extend_from_slice(extra);
        args
    }

    async fn drop_schema(self) {
        self.schema.drop_schema().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_failures_and_transitions_and_fail_on_error_exits_1() {
    let fixture = Fixture::new().await;
    let target = TargetServer::start().await.unwrap();
    let relay = HttpProxy::start().await.unwrap();
    let good = fixture.add(relay.addr(), 10).await;
    let dead = fixture.add(closed_port().unwrap(), 10).await;
    let url = target.url("/ok");
    let once = ["--failures-before-inactive", "1", "--json"];

    let mut logged = command(&fixture.args(&url, &once));
    logged.env("RUST_LOG", "info");
    let run: Run = logged.output().unwrap().into();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        !run.stderr.contains('\u{1b}'),
        "ANSI colours in a pipe: {run:?}"
    );
    assert!(
        run.stderr.contains("sweep finished"),
        "logs at info: {run:?}"
    );
    let json = run.json();
    assert_eq!(json["checked"], 2, "{run:?}");
    assert_eq!(json["failed"], 1, "{run:?}");
    assert_eq!(json["became"]["inactive"], 1, "{run:?}");
    assert_eq!(json["became"]["active"], 0, "{run:?}");
    assert_eq!(json["active"], 1, "{run:?}");
    assert_eq!(json["inactive"], 1, "{run:?}");
    assert_eq!(fixture.status(&good).await, ProxyStatus::Active);
    assert_eq!(fixture.status(&dead).await, ProxyStatus::Inactive);

    // Again: the dead one fails again but becomes nothing new.
    let run = pharox(&fixture.args(&url, &["--json", "--fail-on-error"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("error: 1 of 2 probes failed (--fail-on-error)"),
        "{run:?}"
    );
    let json = run.json();
    assert_eq!(
        (json["failed"].clone(), json["became"]["inactive"].clone()),
        (1.into(), 0.into())
    );

    // The table says the same in words.
    let run = pharox(&fixture.args(&url, &[]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("2 checked, 1 failed; became inactive 0, slow 0, active 0"),
        "{run:?}"
    );
    // Without the dead proxy nothing fails and --fail-on-error exits 0.
    fixture.storage().delete_proxy(dead.id).await.unwrap();
    let run = pharox(&fixture.args(&url, &["--fail-on-error"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    fixture.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_refused_before_any_proxy_is_marked() {
    let fixture = Fixture::new().await;
    let relay = HttpProxy::start().await.unwrap();
    let proxy = fixture.add(relay.addr(), 10).await;
    let dead_target = format!("http://{}/ok", closed_port().unwrap());
    for _ in 0..3 {
        let run = pharox(&fixture.args(&dead_target, &["--failures-before-inactive", "1"]));
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(
            run.stderr.starts_with(&format!(
                "error: --target {dead_target} does not answer directly"
            )),
            "{run:?}"
        );
        assert!(run.stderr.contains("--no-target-check"), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    assert_eq!(relay.connections(), 0, "no proxy was probed");
    assert_eq!(fixture.records(&proxy).await, 0);
    assert_eq!(fixture.status(&proxy).await, ProxyStatus::Active);

    // Skipped on request: the sweep runs and the proxy fails.
    let run = pharox(&fixture.args(
        &dead_target,
        &[
            "--failures-before-inactive",
            "1",
            "--no-target-check",
            "--json",
        ],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["failed"], 1, "{run:?}");
    assert_eq!(fixture.status(&proxy).await, ProxyStatus::Inactive);
    fixture.drop_schema().await;
}

/// Polls `ready` until it holds (the binary cannot tell the test when it
/// has got going), failing after [`HUNG_AFTER`] or when `child` exits.
async fn wait_until<F: Future<Output = bool>>(
    child: &mut Child,
    what: &str,
    mut ready: impl FnMut() -> F,
) {
    let deadline = Instant::now() + HUNG_AFTER;
    while !ready().await {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pharox exited ({status}) before {what}");
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {HUNG_AFTER:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `child`'s stderr on a thread: the first line containing `needle`
/// is announced on the returned receiver; the whole text is what the
/// thread returns.
fn watch_stderr(
    child: &mut Child,
    needle: &'static str,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<String>,
) {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (seen, saw) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains(needle) {
                let _ = seen.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (saw, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sweep_is_refused_and_ctrl_c_prints_the_partial_summary() {
    let fixture = Fixture::new().await;
    let target = TargetServer::start().await.unwrap();
    let relay = HttpProxy::start().await.unwrap();
    let hole = BlackHole::start().await.unwrap();
    let good = fixture.add(relay.addr(), 10).await;
    let stuck = fixture.add(hole.addr(), 10).await;
    let url = target.url("/ok");
    let mut first = spawn(&fixture.args(&url, &["--json", "--timeout", "600"]));
    let pid = first.id();
    wait_until(&mut first, "the sweep was under way", || async {
        hole.connections() > 0 && fixture.records(&good).await == 1
    })
    .await;

    let second = pharox(&fixture.args(&url, &["--json"]));
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second.stderr.starts_with(
            "error: another health check of pool edge is running, held by pharox health check, pid "
        ),
        "{second:?}"
    );
    assert!(second.stderr.contains(&format!("pid {pid}")), "{second:?}");
    assert!(second.stderr.contains("--wait"), "{second:?}");
    assert!(second.stdout.is_empty(), "{second:?}");
    assert_eq!(
        fixture.records(&good).await,
        1,
        "the second one probed nothing"
    );

    // A waiting one gets its turn when the first ends.
    let mut waiting = spawn(&fixture.args(&url, &["--json", "--wait", "--timeout", "1"]));
    let (saw, stderr) = watch_stderr(&mut waiting, "waiting for the health check of pool edge");
    saw.recv_timeout(HUNG_AFTER)
        .expect("the second sweep never said it was waiting");
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = finish(first);
    assert_eq!(run.code, Some(130), "{run:?}");
    assert!(run.stderr.contains("pharox: stopped by SIGINT"), "{run:?}");
    let json = run.json();
    assert_eq!(json["stopped"], true, "{run:?}");
    assert_eq!(json["total"], 2, "{run:?}");
    assert_eq!(json["checked"], 1, "{run:?}");
    assert_eq!(json["unchecked"], 1, "{run:?}");
    assert_eq!(json["active"], 1, "{run:?}");
    // The abandoned probe left its proxy alone.
    assert_eq!(fixture.records(&stuck).await, 0);
    assert_eq!(fixture.status(&stuck).await, ProxyStatus::Active);

    let mut waited = finish(waiting);
    waited.stderr = stderr.join().unwrap();
    assert_eq!(waited.code, Some(0), "{waited:?}");
    let json = waited.json();
    assert_eq!(
        (json["checked"].clone(), json["failed"].clone()),
        (2.into(), 1.into())
    );
    fixture.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_sweep_leaves_its_pool_free() {
    let fixture = Fixture::new().await;
    let target = TargetServer::start().await.unwrap();
    let hole = BlackHole::start().await.unwrap();
    fixture.add(hole.addr(), 10).await;
    let url = target.url("/ok");
    let mut first = spawn(&fixture.args(&url, &["--timeout", "600"]));
    wait_until(&mut first, "the sweep was under way", || async {
        hole.connections() > 0
    })
    .await;
    first.kill().unwrap();
    let _ = first.wait();
    // Its session ends with the process; the lock goes with it.
    let deadline = Instant::now() + HUNG_AFTER;
    let run = loop {
        let run = pharox(&fixture.args(&url, &["--json", "--timeout", "1"]));
        if run.code != Some(1) || !run.stderr.contains("another health check") {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the killed sweep's lock stayed: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["checked"], 1, "{run:?}");
    fixture.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_leased_leaves_exclusively_leased_proxies_alone() {
    let fixture = Fixture::new().await;
    let target = TargetServer::start().await.unwrap();
    let relay = HttpProxy::start().await.unwrap();
    let leased = fixture.add(relay.addr(), 1).await;
    let worker = fixture.storage().ensure_consumer("worker").await.unwrap();
    let lease = fixture
        .storage()
        .acquire(&AcquireRequest::new(
            "edge",
            worker,
            Duration::from_secs(600),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.proxy.id, leased.id);
    let shared = fixture.add(relay.addr(), 10).await;
    let url = target.url("/ok");
    let run = pharox(&fixture.args(&url, &["--skip-leased", "--json"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let json = run.json();
    assert_eq!(
        (json["skipped"].clone(), json["checked"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(fixture.records(&leased).await, 0);
    assert_eq!(fixture.records(&shared).await, 1);
    // Without the flag it is checked too.
    let run = pharox(&fixture.args(&url, &["--json"]));
    assert_eq!(run.json()["checked"], 2, "{run:?}");
    fixture.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_trusts_a_private_ca_and_a_bad_one_is_a_usage_error() {
    let fixture = Fixture::new().await;
    let ca = TestCa::new();
    let target = TargetServer::start_tls(&ca).await.unwrap();
    let relay = HttpProxy::start().await.unwrap();
    let proxy = fixture.add(relay.addr(), 10).await;
    let url = target.url("/ok");
    let dir = std::env::temp_dir().join(format!("pharox-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("ca.pem");
    std::fs::write(&good, ca.cert_pem()).unwrap();
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();

    // Unknown to the system: the target check refuses.
    let run = pharox(&fixture.args(&url, &[]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("does not answer directly"), "{run:?}");

    let run = pharox(&fixture.args(&url, &["--ca-file", good.to_str().unwrap(), "--json"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["failed"], 0, "{run:?}");
    assert_eq!(fixture.records(&proxy).await, 1);

    for path in [
        bad.to_str().unwrap(),
        dir.join("missing.pem").to_str().unwrap(),
    ] {
        let run = pharox(&fixture.args(&url, &["--ca-file", path]));
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(
            run.stderr.starts_with("error: invalid --ca-file: "),
            "{run:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    fixture.drop_schema().await;
}

#[test]
fn help_shows_the_default_target_and_messages_name_the_flags() {
    let run = pharox(&["health", "check", "--help"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("[default: https://www.gstatic.com/generate_204]"),
        "{run:?}"
    );
    let run = pharox(&[
        "health",
        "check",
        "--pool",
        "p",
        "--target",
        "ftp://nowhere",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.starts_with("error: invalid --target: "),
        "{run:?}"
    );
    assert!(!run.stderr.contains("health.target_url"), "{run:?}");
    let run = pharox(&["health", "history", "not-a-uuid"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("<PROXY_ID>"), "{run:?}");
    assert!(!run.stderr.contains("--proxy-id"), "{run:?}");
}
