//! Limits: an oversized body (413), a request over the concurrency cap
//! (503 at once), a client too slow to send its body (408), and a graceful
//! stop that lets a request in flight finish.

use std::sync::Arc;
use std::time::Duration;

use pharox_adapter_memory::MemoryStorage;
use pharox_server::Limits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{ADMIN_KEY, LEASE_KEY, TestApp, problem, seed, spawn_with};

async fn spawn_limited(limits: Limits) -> TestApp {
    spawn_with(Arc::new(MemoryStorage::new()), limits).await
}

/// Sends the head of a lease request whose body never fully arrives: the
/// request stays in flight until the connection closes.
async fn stalled_request(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/pools/p/leases HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {LEASE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Sends the rest of a [`stalled_request`]'s body.
async fn finish(stream: &mut TcpStream) {
    let mut rest = vec![b' '; 99];
    rest[0] = b'}';
    stream.write_all(&rest).await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_limited(Limits {
        body_limit: 1024,
        ..Limits::default()
    })
    .await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let big = json!({"consumer": "w", "target": "x".repeat(2000)});
    let response = app
        .post("/v1/pools/p/leases", LEASE_KEY)
        .json(&big)
        .send()
        .await
        .unwrap();
    problem(response, 413, "payload_too_large").await;
    let import = app
        .post("/v1/pools/p/proxies", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("10.9.9.9:80\n".repeat(200))
        .send()
        .await
        .unwrap();
    problem(import, 413, "payload_too_large").await;
    // Under the limit it goes through.
    app.lease("p", json!({"consumer": "w"})).await;
}

#[tokio::test]
async fn over_the_concurrency_cap_is_503_at_once() {
    let app = spawn_limited(Limits {
        max_concurrency: 1,
        ..Limits::default()
    })
    .await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let mut stalled = stalled_request(&app).await;
    // The stalled request holds the only slot once the server has read its
    // head; until then a probe may still get through, so ask until refused.
    let mut refused = None;
    for _ in 0..1000 {
        let response = app.client.get(app.url("/healthz")).send().await.unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::task::yield_now().await;
    }
    problem(
        refused.expect("a 503 while the slot is held"),
        503,
        "overloaded",
    )
    .await;
    // Finishing the stalled request frees the slot.
    finish(&mut stalled).await;
    let mut answer = vec![0; 12];
    stalled.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 201");
    drop(stalled);
    let mut ok = false;
    for _ in 0..1000 {
        if app
            .client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ok = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "the slot came back");
    // Refused requests count too: the metrics layer is outside the cap.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "pharox_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"503\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no refused /healthz in\n{metrics}"));
    assert_eq!(refusals, "1", "{metrics}");
}

#[tokio::test]
async fn a_client_too_slow_with_its_body_gets_408() {
    let app = spawn_limited(Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let mut stalled = stalled_request(&app).await;
    let mut answer = vec![0; 12];
    stalled.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    // Nothing was leased.
    app.lease("p", json!({})).await;
}

#[tokio::test]
async fn a_client_too_slow_with_its_head_is_disconnected() {
    let app = spawn_limited(Limits {
        header_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Half a head, then nothing.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Without the header timeout this read would wait for ever: the guard
    // turns that into a failure instead of a hang.
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the server kept a connection whose head never came"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
    // A client that sends its head in time is served as usual.
    let ok = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_limited(Limits {
        header_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, and the connection stays open for the next request
    // (keep-alive) until no head has come for the header timeout.
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut seen)).await;
    assert!(
        read.is_ok(),
        "an idle keep-alive connection outlived the header timeout"
    );
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
}

#[tokio::test]
async fn a_graceful_stop_lets_a_request_in_flight_finish() {
    let app = spawn_limited(Limits::default()).await;
    seed(app.storage.as_ref(), "p", 1, 1).await;
    let mut stalled = stalled_request(&app).await;
    // Make sure the server has the request before stopping it.
    let probe = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(probe.status(), 200);
    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    finish(&mut stalled).await;
    let mut answer = Vec::new();
    stalled.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let lease: Value = serde_json::from_str(body).unwrap();
    assert!(lease["lease_id"].is_string());
    stopping.await.unwrap();
    // Stopped: no more connections.
    assert!(TcpStream::connect(addr).await.is_err());
}
