//! `pharox serve --pool p --proxies FILE`: the built binary on an ephemeral
//! loopback port, leased through over HTTP, stopped with SIGTERM.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::{Value, json};

mod common;

const LEASE_KEY: &str = "lease-key-for-the-cli-test";
const ADMIN_KEY: &str = "admin-key-for-the-cli-test";

/// Starts `pharox serve ARGS --listen 127.0.0.1:0` with the test's keys.
fn start(args: &[&str]) -> (common::ServeProcess, String) {
    common::serve(args, &format!("lease:{LEASE_KEY},admin:{ADMIN_KEY}"))
}

#[tokio::test]
async fn serve_leases_from_a_list_in_memory_and_stops_on_sigterm() {
    let list = std::env::temp_dir().join(format!("pharox-serve-{}.txt", std::process::id()));
    std::fs::write(&list, "10.7.0.1:8080:user:pw-in-list\n10.7.0.2:8080\n").unwrap();
    let (mut server, addr) = start(&[
        "--pool",
        "p",
        "--proxies",
        list.to_str().unwrap(),
        "--protocol",
        "http",
        "--shutdown-timeout",
        "5",
    ]);
    let _ = std::fs::remove_file(&list);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{addr}{path}");

    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        200
    );
    let leased = client
        .post(url("/v1/pools/p/leases"))
        .header("x-api-key", LEASE_KEY)
        .json(&json!({"ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(leased.status(), 201);
    let lease: Value = leased.json().await.unwrap();
    assert_eq!(lease["proxy_url"], "http://user:pw-in-list@10.7.0.1:8080");
    let id = lease["lease_id"].as_str().unwrap();
    let released: Value = client
        .post(url(&format!("/v1/leases/{id}/release")))
        .bearer_auth(LEASE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released["result"], "released");
    let overview: Value = client
        .get(url("/v1/pools/p"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["proxies"], 2);
    assert_eq!(overview["active_leases"], 0);
    let refused = client.post(url("/v1/pools/p/leases")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // The lease metrics: `serve` puts the observer on the manager.
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "pharox_acquire_total{pool=\"p\",result=\"hit\"} 1",
        "pharox_release_total{pool=\"p\"} 1",
        "pharox_pool_proxies{pool=\"p\",status=\"active\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn a_request_still_in_flight_at_the_shutdown_timeout_does_not_hold_the_exit() {
    use tokio::io::AsyncWriteExt;

    // The request timeout (60 s) would end the stalled request much later
    // than the shutdown timeout (0.3 s) does.
    let (mut server, addr) = start(&[
        "--pool",
        "p",
        "--shutdown-timeout",
        "0.3",
        "--request-timeout",
        "60",
        "--max-wait-ms",
        "1000",
    ]);
    // A request whose body never comes: in flight until cut off.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/pools/p/leases HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {LEASE_KEY}\r\ncontent-length: 100\r\n\r\n{{"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    // The server has taken it once another request on a new connection is answered.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthz = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    let pid = server.child.id().to_string();
    let signalled = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let took = signalled.elapsed();
    assert!(
        took < std::time::Duration::from_secs(30),
        "exit took {took:?}: the shutdown timeout was not applied"
    );
    drop(stalled);
}

#[test]
fn serve_leases_from_postgres_with_database_url() {
    let schema = common::Schema::create();
    let created = schema.pharox(&["pool", "create", "p"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let imported = schema.pharox_stdin(
        &[
            "proxy",
            "import",
            "--pool",
            "p",
            "--protocol",
            "http",
            "--max-concurrency",
            "1",
        ],
        "10.8.0.1:8080:user:pw-in-db\n",
    );
    assert_eq!(imported.code, Some(0), "{imported:?}");
    let (mut server, addr) = start(&["--database-url", &schema.url, "--max-connections", "2"]);
    schema.runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let leased = client
            .post(format!("http://{addr}/v1/pools/p/leases"))
            .bearer_auth(LEASE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(leased.status(), 201);
        let lease: Value = leased.json().await.unwrap();
        assert_eq!(lease["proxy_url"], "http://user:pw-in-db@10.8.0.1:8080");
        let busy = client
            .post(format!("http://{addr}/v1/pools/p/leases"))
            .bearer_auth(LEASE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(busy.status(), 409);
        let id = lease["lease_id"].as_str().unwrap();
        let released = client
            .post(format!("http://{addr}/v1/leases/{id}/release"))
            .bearer_auth(LEASE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(released.status(), 200);
    });
    // The lease is in the database, released.
    let leases = schema.pharox(&["lease", "list", "--pool", "p", "--json"]);
    assert_eq!(leases.code, Some(0), "{leases:?}");
    assert!(!leases.stdout.contains("pw-in-db"), "{leases:?}");
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}

#[test]
fn serve_refuses_to_start_without_keys_or_with_a_bad_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_pharox"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("PHAROX_API_KEYS")
        .env_remove("PHAROX_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api-keys-file"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_pharox"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PHAROX_API_KEYS", "lease:short")
        .env_remove("PHAROX_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("entry 1") && !stderr.contains("short"),
        "{stderr}"
    );

    let list = std::env::temp_dir().join(format!("pharox-serve-bad-{}.txt", std::process::id()));
    std::fs::write(&list, "10.7.0.1:8080\nnot a proxy\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pharox"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            "p",
            "--protocol",
            "http",
            "--proxies",
        ])
        .arg(&list)
        .env("PHAROX_API_KEYS", format!("lease:{LEASE_KEY}"))
        .env_remove("PHAROX_DATABASE_URL")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&list);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}
