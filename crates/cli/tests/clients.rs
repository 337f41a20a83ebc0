//! The clients the server README shows, run as a worker would run them:
//! `examples/python/lease.py` (Python's standard library only) and
//! `examples/curl/lease.sh` (sh and curl), against the built `pharox serve`
//! on an ephemeral loopback port. The leased proxy is a real HTTP proxy on
//! 127.0.0.1 with Basic auth, and the page fetched through it a real target
//! on 127.0.0.1.
//!
//! The interpreter is `PHAROX_TEST_PYTHON` when set (`cargo xtask test`
//! sets it), else `python3` on PATH; without one the tests fail saying so.

#![cfg(all(feature = "postgres", feature = "http-probe"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pharox_test_proxies::{HttpProxy, TargetServer};
use serde_json::{Value, json};

mod common;

const LEASE_KEY: &str = "lease-key-for-the-client-examples";
const ADMIN_KEY: &str = "admin-key-for-the-client-examples";
const PROXY_USER: &str = "worker";
const PROXY_PASSWORD: &str = "pw-of-the-upstream";

/// The repository's root (the examples live there).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A target, a proxy with Basic auth in front of it, and `pharox serve`
/// with that one proxy (one lease at a time) in pool `p`.
struct Setup {
    target: TargetServer,
    proxy: HttpProxy,
    server: common::ServeProcess,
    addr: String,
    client: reqwest::Client,
}

impl Setup {
    async fn start() -> Self {
        let target = TargetServer::start().await.unwrap();
        let proxy = HttpProxy::start_with_auth(PROXY_USER, PROXY_PASSWORD)
            .await
            .unwrap();
        // One lease at a time, so "no proxy free" is one lease away.
        let list = std::env::temp_dir().join(format!(
            "pharox-clients-{}-{}.csv",
            std::process::id(),
            proxy.addr().port()
        ));
        std::fs::write(
            &list,
            format!(
                "url,max_concurrency\nhttp://{PROXY_USER}:{PROXY_PASSWORD}@{},1\n",
                proxy.addr()
            ),
        )
        .unwrap();
        let (server, addr) = common::serve(
            &[
                "--pool",
                "p",
                "--proxies",
                list.to_str().unwrap(),
                "--protocol",
                "http",
            ],
            &format!("lease:{LEASE_KEY},admin:{ADMIN_KEY}"),
        );
        let _ = std::fs::remove_file(&list);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            target,
            proxy,
            server,
            addr,
            client,
        }
    }

    /// Runs `program ARGS` with the service's settings in its environment
    /// (and no proxy settings of the machine's: only loopback is reached).
    async fn run(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(repository())
            .env("PHAROX_URL", format!("http://{}", self.addr))
            .env("PHAROX_API_KEY", LEASE_KEY)
            .env("PHAROX_POOL", "p");
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ] {
            command.env_remove(var);
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {program}: {e}. The client examples need python3 (Debian: \
                     `apt-get install python3`; or set PHAROX_TEST_PYTHON) and curl \
                     (`apt-get install curl`)"
                )
            })
    }

    /// `examples/python/lease.py TARGET_URL`.
    async fn python(&self, url: &str, extra: &[(&str, &str)]) -> Output {
        let python = std::env::var("PHAROX_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        self.run(&python, &["examples/python/lease.py", url], extra)
            .await
    }

    /// A call of the API with the admin key.
    async fn admin(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Acquires with the lease key: the status and the body.
    async fn lease(&self, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}/v1/pools/p/leases", self.addr))
            .bearer_auth(LEASE_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The pool holds no lease any more.
    async fn assert_nothing_leased(&self) {
        let overview = self.admin("/v1/pools/p").await;
        assert_eq!(overview["active_leases"], 0, "{overview}");
    }

    fn stop(mut self) {
        assert_eq!(self.server.terminate(), Some(0));
    }
}

/// The one JSON line the Python example prints.
fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON line ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn the_python_example_leases_fetches_through_the_proxy_reports_and_releases() {
    let setup = Setup::start().await;
    let output = setup.python(&setup.target.url("/ok"), &[]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let summary = summary(&output);
    assert_eq!(summary["http_status"], 200, "{summary}");
    assert_eq!(summary["bytes"], 2, "{summary}");
    assert_eq!(summary["outcome"], "success", "{summary}");
    assert_eq!(summary["error_score"], 0.0, "{summary}");
    assert_eq!(summary["released"], "released", "{summary}");
    // The page came through the leased proxy, with its credentials.
    assert_eq!(setup.proxy.forwarded_requests(), 1);
    assert_eq!(setup.proxy.auth_failures(), 0);
    assert_eq!(setup.target.request_count(), 1);
    setup.assert_nothing_leased().await;
    let lease_id = summary["lease_id"].as_str().unwrap();
    let lease = setup.admin(&format!("/v1/leases/{lease_id}")).await;
    assert_eq!(lease["status"], "released", "{lease}");
    // Nothing of the key or the upstream's password on its output.
    let printed = format!("{output:?}");
    assert!(
        !printed.contains(PROXY_PASSWORD) && !printed.contains(LEASE_KEY),
        "{printed}"
    );
    setup.stop();
}

#[tokio::test]
async fn the_python_example_reports_a_block_so_the_proxy_is_banned_for_that_site() {
    let setup = Setup::start().await;
    let output = setup.python(&setup.target.url("/status/403"), &[]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let summary = summary(&output);
    assert_eq!(summary["http_status"], 403, "{summary}");
    assert_eq!(summary["outcome"], "blocked", "{summary}");
    assert_eq!(summary["released"], "released", "{summary}");
    setup.assert_nothing_leased().await;
    // Banned for 127.0.0.1, the target's host; still leased for others.
    let (status, body) = setup.lease(json!({"target": "127.0.0.1"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "no_proxy_available", "{body}");
    let (status, body) = setup.lease(json!({"target": "example.org"})).await;
    assert_eq!(status, 201, "{body}");
    setup.stop();
}

#[tokio::test]
async fn the_python_example_exits_2_when_no_proxy_is_free() {
    let setup = Setup::start().await;
    let (status, body) = setup.lease(json!({"ttl_seconds": 60})).await;
    assert_eq!(status, 201, "{body}");
    let output = setup
        .python(&setup.target.url("/ok"), &[("PHAROX_WAIT_MS", "0")])
        .await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let summary = summary(&output);
    assert_eq!(
        summary,
        json!({"error": "no_proxy_available", "status": 409})
    );
    assert_eq!(setup.target.request_count(), 0);
    setup.stop();
}

#[tokio::test]
async fn the_curl_example_leases_fetches_through_the_proxy_and_releases_with_the_outcome() {
    let setup = Setup::start().await;
    let output = setup
        .run(
            "sh",
            &["examples/curl/lease.sh", &setup.target.url("/ok")],
            &[],
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.ends_with("HTTP 200 through the proxy; released\n"),
        "{stdout}"
    );
    assert_eq!(setup.proxy.forwarded_requests(), 1);
    assert_eq!(setup.target.request_count(), 1);
    setup.assert_nothing_leased().await;

    // A blocked answer is released with a ban for the site.
    let output = setup
        .run(
            "sh",
            &["examples/curl/lease.sh", &setup.target.url("/status/429")],
            &[],
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.ends_with("HTTP 429 through the proxy; released\n"),
        "{stdout}"
    );
    setup.assert_nothing_leased().await;
    let (status, body) = setup.lease(json!({"target": "127.0.0.1"})).await;
    assert_eq!(status, 409, "{body}");
    setup.stop();
}

#[test]
fn the_server_readme_shows_the_examples_as_they_are_tested() {
    let readme = std::fs::read_to_string(repository().join("crates/server/README.md")).unwrap();
    let script = std::fs::read_to_string(repository().join("examples/curl/lease.sh")).unwrap();
    // The script after its shebang, verbatim.
    let body = script.split_once('\n').unwrap().1;
    assert!(
        readme.contains(body),
        "crates/server/README.md must show examples/curl/lease.sh (after its first line) verbatim"
    );
    assert!(readme.contains("examples/python/lease.py"));
}
