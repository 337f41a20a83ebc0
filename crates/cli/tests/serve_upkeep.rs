//! `pharox serve --health-interval --cleanup-interval` on PostgreSQL: two
//! replicas on one database, one leads each task, the other takes over when
//! the leader is killed; and `POST /v1/pools/{pool}/health-sweeps`. Sweeps
//! go through a real HTTP proxy on loopback to a loopback target.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use pharox_test_proxies::{HttpProxy, TargetServer};
use serde_json::Value;

mod common;

const ADMIN_KEY: &str = "admin-key-for-the-upkeep-test";
/// How long a line the test waits for may take: generous, since this is a
/// deadline for something that happens, not a wait for time to pass.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `pharox serve` process, its address and its stderr lines; killed on
/// drop.
struct Replica {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--database-url", url, "--max-connections", "4"];
        args.extend_from_slice(extra);
        let mut command = common::serve_command(&args);
        command.env("PHAROX_API_KEYS", format!("admin:{ADMIN_KEY}"));
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut replica = Self {
            child,
            addr: String::new(),
            lines,
            seen: Vec::new(),
        };
        let line = replica.wait_for("pharox serve: listening on http://");
        replica.addr = line
            .strip_prefix("pharox serve: listening on http://")
            .unwrap()
            .to_owned();
        replica
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stderr line starting with `prefix` (earlier lines are kept
    /// in `seen`); fails after [`PATIENCE`] or when the process ends.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!("no line {prefix:?} ({e}); saw {:#?}", self.seen),
            }
        }
    }

    /// As [`wait_for`](Self::wait_for), unless such a line was seen already.
    fn saw_or_wait_for(&mut self, prefix: &str) {
        if !self.seen.iter().any(|l| l.starts_with(prefix)) {
            self.wait_for(prefix);
        }
    }

    /// Lines that arrived so far, without waiting.
    fn drain(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A schema with pool `p` of two loopback HTTP proxies, and the target the
/// sweeps fetch.
struct Fixture {
    schema: common::Schema,
    proxies: [HttpProxy; 2],
    target: TargetServer,
}

impl Fixture {
    /// Requests the two proxies forwarded so far.
    fn forwarded(&self) -> usize {
        self.proxies.iter().map(HttpProxy::forwarded_requests).sum()
    }
}

fn fixture() -> Fixture {
    let schema = common::Schema::create();
    let (proxies, target) = schema.runtime.block_on(async {
        (
            [
                HttpProxy::start().await.unwrap(),
                HttpProxy::start().await.unwrap(),
            ],
            TargetServer::start().await.unwrap(),
        )
    });
    let created = schema.pharox(&["pool", "create", "p"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let list: String = proxies.iter().map(|p| format!("{}\n", p.addr())).collect();
    let imported = schema.pharox_stdin(
        &["proxy", "import", "--pool", "p", "--protocol", "http"],
        &list,
    );
    assert_eq!(imported.code, Some(0), "{imported:?}");
    Fixture {
        schema,
        proxies,
        target,
    }
}

fn upkeep_flags(target: &str) -> Vec<String> {
    [
        "--health-interval",
        "0.2",
        "--cleanup-interval",
        "0.2",
        "--target",
        target,
        "--timeout",
        "5",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[test]
fn one_replica_leads_the_upkeep_and_the_other_takes_over_when_it_is_killed() {
    let fx = fixture();
    let flags = upkeep_flags(&fx.target.url("/ok"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = Replica::start(&fx.schema.url, &flags);
    a.wait_for("pharox serve: health: leading");
    a.wait_for("pharox serve: health: swept pool p: 2 checked, 0 failed");

    let mut b = Replica::start(&fx.schema.url, &flags);
    let standing = b.wait_for("pharox serve: health: standing by");
    assert!(
        standing.contains(&format!("pharox serve, pid {}", a.pid())),
        "{standing}"
    );
    // Both tasks are led by a; b sweeps nothing while a lives.
    for _ in 0..3 {
        a.wait_for("pharox serve: health: swept pool p");
    }
    let said = b.drain();
    assert!(
        !said
            .iter()
            .any(|l| l.contains("swept") || l.contains("leading")),
        "{said:#?}"
    );
    b.saw_or_wait_for("pharox serve: cleanup: standing by");
    a.saw_or_wait_for("pharox serve: cleanup: leading");
    let forwarded = fx.forwarded();
    assert!(forwarded >= 8, "four sweeps of two proxies: {forwarded}");

    // Killed, a's sessions end and their advisory locks with them.
    a.kill();
    b.wait_for("pharox serve: health: leading");
    b.wait_for("pharox serve: health: swept pool p: 2 checked, 0 failed");
    b.saw_or_wait_for("pharox serve: cleanup: leading");
    assert!(fx.forwarded() > forwarded);

    // The records are in the database, for every replica to read.
    let addr = b.addr.clone();
    fx.schema.runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let proxies: Value = client
            .get(format!("http://{addr}/v1/pools/p/proxies"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = proxies["items"][0]["id"].as_str().unwrap().to_owned();
        let health: Value = client
            .get(format!("http://{addr}/v1/proxies/{id}/health"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "active", "{health}");
        assert!(health["records"].as_array().unwrap().len() >= 2, "{health}");
        // The leader's sweeps are counted in its metrics.
        let metrics = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Every result's series (zeros included, in no fixed order), summed.
        let checks: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("pharox_health_checks_total{") && l.contains("pool=\"p\""))
            .collect();
        assert!(!checks.is_empty(), "no health checks counted:\n{metrics}");
        let count: f64 = checks
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(count >= 2.0, "{checks:?}");
    });
}

#[test]
fn a_sweep_started_through_the_api_runs_once_at_a_time() {
    let fx = fixture();
    // No background sweeps: only the API starts them. A probe that never
    // hears back (the target is a listener that never answers) keeps the
    // first sweep running while the second is asked for.
    let silent = fx
        .schema
        .runtime
        .block_on(pharox_test_proxies::BlackHole::start())
        .unwrap();
    let target = format!("http://{}/health", silent.addr());
    let mut server = Replica::start(
        &fx.schema.url,
        &[
            "--target",
            &target,
            "--timeout",
            "3600",
            "--shutdown-timeout",
            "5",
        ],
    );
    let addr = server.addr.clone();
    fx.schema.runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://{addr}/v1/pools/p/health-sweeps");
        let started = client
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let started: Value = started.json().await.unwrap();
        assert_eq!(started["pool"], "p");
        assert_eq!(started["proxies"], 2);
        let holder = started["holder"].as_str().unwrap().to_owned();
        assert!(holder.starts_with("pharox serve, pid "), "{holder}");

        let second = client
            .post(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 409);
        let problem: Value = second.json().await.unwrap();
        assert_eq!(problem["code"], "sweep_running", "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(&holder),
            "{problem}"
        );

        let status: Value = client
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["running"], true, "{status}");
        // PostgreSQL adds the backend's pid and address to the description.
        assert!(
            status["holder"].as_str().unwrap().starts_with(&holder),
            "{status}"
        );

        // `pharox health check` of the same pool is told who sweeps it.
        let cli = fx.schema.pharox(&[
            "health",
            "check",
            "--pool",
            "p",
            "--target",
            &target,
            "--no-target-check",
        ]);
        assert_eq!(cli.code, Some(1), "{cli:?}");
        assert!(cli.stderr.contains(&holder), "{cli:?}");

        let unknown = client
            .post(format!("http://{addr}/v1/pools/nope/health-sweeps"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
    });
    // SIGTERM stops the sweep gently and frees its lock; exit 0.
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{:#?}", server.drain());
    let after = fx.schema.pharox(&[
        "health",
        "check",
        "--pool",
        "p",
        "--target",
        &fx.target.url("/ok"),
        "--json",
    ]);
    assert_eq!(
        after.code,
        Some(0),
        "the lock went with the server: {after:?}"
    );
}
