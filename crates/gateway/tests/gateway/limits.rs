//! Limits and lifecycle: slow or oversized heads, the connection cap,
//! a proxy's concurrency, and a shutdown that leaves no lease behind.

use std::time::Duration;

use pharox_gateway::GatewayConfig;
use pharox_test_proxies::{HttpProxy, TargetServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{POOL, Upstream, basic, connect, read_head, spawn_gateway};

#[tokio::test]
async fn a_client_slow_to_send_its_head_is_cut_off() {
    let upstream = HttpProxy::start().await.unwrap();
    let config = GatewayConfig {
        header_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // The head never ends; the gateway closes the connection (hyper may
    // answer 408 first). Bounded, so a gateway that waits forever fails.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn an_oversized_head_is_a_431() {
    let upstream = HttpProxy::start().await.unwrap();
    let config = GatewayConfig {
        header_limit: 8192,
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let big = "a".repeat(20_000);
    let request =
        format!("GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn connections_over_the_cap_get_a_quick_503() {
    let upstream = HttpProxy::start().await.unwrap();
    let config = GatewayConfig {
        max_connections: 1,
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let _held = TcpStream::connect(gateway.addr).await.unwrap();
    // The first connection is accepted before the second is.
    while gateway_open(&gateway).await == 0 {
        tokio::task::yield_now().await;
    }
    let mut over = TcpStream::connect(gateway.addr).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut over))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("overloaded"), "{head}");
}

async fn gateway_open(gateway: &crate::common::TestGateway) -> usize {
    let text = gateway.metrics.render();
    text.lines()
        .find(|l| l.starts_with("pharox_gateway_active_connections "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

#[tokio::test]
async fn tunnels_never_exceed_a_proxys_max_concurrency() {
    let first = HttpProxy::start().await.unwrap();
    let second = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![
            Upstream::new(format!("http://{}", first.addr())).max_concurrency(2),
            Upstream::new(format!("http://{}", second.addr())).max_concurrency(1),
        ],
    )
    .await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let (stream, head) = connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
        if head.starts_with("HTTP/1.1 200") {
            open.push(stream);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    assert_eq!(open.len(), 3);
    assert_eq!(refused, 2);
    assert_eq!(first.tunnels() + second.tunnels(), 3);
    assert_eq!(gateway.active_leases().await, 3);
    // Closing one frees its slot for the next tunnel.
    drop(open.pop());
    let reopened = async {
        loop {
            let (stream, head) =
                connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
            if head.starts_with("HTTP/1.1 200") {
                return stream;
            }
            tokio::task::yield_now().await;
        }
    };
    open.push(
        tokio::time::timeout(Duration::from_secs(5), reopened)
            .await
            .unwrap(),
    );
    assert_eq!(gateway.active_leases().await, 3);
    let text = gateway.metrics.render();
    assert!(text.contains("pharox_gateway_active_tunnels 3"), "{text}");
}

#[tokio::test]
async fn shutdown_closes_tunnels_and_leaves_no_lease_behind() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let mut gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", upstream.addr())).max_concurrency(10)],
    )
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (stream, head) = connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tunnels.push(stream);
    }
    // A forwarded request still waiting for its answer.
    let slow = {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\n\r\n",
            target.url("/slow?ms=300"),
            target.addr(),
            basic(&format!("pool-{POOL}"))
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    };
    while gateway.active_leases().await < 4 {
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(10), gateway.shut_down())
        .await
        .expect("the gateway stops");
    assert_eq!(gateway.active_leases().await, 0);
    // The tunnels were closed.
    for mut tunnel in tunnels {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await;
        assert!(read.is_ok());
    }
    drop(slow);
}

#[tokio::test]
async fn a_tunnel_renews_its_lease_and_closes_when_the_lease_is_lost() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        lease_ttl: Duration::from_secs(2),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let (mut tunnel, head) = connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lease_id = crate::common::head_header(&head, "x-pharox-lease-id")
        .unwrap()
        .parse()
        .unwrap();
    let first = gateway.storage.get_lease(lease_id).await.unwrap();
    // Held past half its TTL, the tunnel's lease is renewed (waited for, at
    // most 10 s, not slept through).
    let renewed = async {
        loop {
            let lease = gateway.storage.get_lease(lease_id).await.unwrap();
            if lease.expires_at > first.expires_at {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let renewed = tokio::time::timeout(Duration::from_secs(10), renewed)
        .await
        .unwrap();
    assert!(renewed.released_at.is_none());
    // Someone else ends the lease (an operator, a cleanup after a stall):
    // at its next renewal the gateway closes the tunnel, so the proxy never
    // carries a tunnel its lease no longer counts.
    gateway.storage.release(lease_id).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel is still open");
}

#[tokio::test]
async fn a_forwarded_request_keeps_its_lease_while_the_target_is_slow() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let config = GatewayConfig {
        lease_ttl: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..GatewayConfig::default()
    };
    let gateway = spawn_gateway(
        config,
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    // The answer takes longer than the lease's TTL: the lease is renewed
    // meanwhile, so the request succeeds under an active lease.
    let response = gateway
        .client(&format!("pool-{POOL}"))
        .get(target.url("/slow?ms=2500"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lease_id = response.headers()["x-pharox-lease-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "slow");
    let released = async {
        loop {
            let lease = gateway.storage.get_lease(lease_id).await.unwrap();
            if lease.released_at.is_some() {
                return lease;
            }
            tokio::task::yield_now().await;
        }
    };
    let lease = tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .unwrap();
    // Renewed while the answer was awaited (it ran past its first TTL),
    // and released while still active.
    assert!(
        lease.expires_at - lease.acquired_at > time::Duration::seconds(2),
        "never renewed: {lease:?}"
    );
    assert!(lease.released_at.unwrap() <= lease.expires_at, "{lease:?}");
}
