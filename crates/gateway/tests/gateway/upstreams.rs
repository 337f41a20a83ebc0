//! Each upstream kind, for absolute-form requests and for tunnels.

use std::sync::Arc;

use pharox_gateway::GatewayConfig;
use pharox_test_proxies::{
    HttpProxy, Socks4Server, Socks5Server, SocksTarget, TargetServer, TestCa,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{POOL, Upstream, connect, head_header, spawn_gateway};

/// The five upstream kinds, each with its own server.
struct Kinds {
    http: HttpProxy,
    http_auth: HttpProxy,
    socks5: Socks5Server,
    socks5_auth: Socks5Server,
    socks4: Socks4Server,
}

impl Kinds {
    async fn start() -> Self {
        Self {
            http: HttpProxy::start().await.unwrap(),
            http_auth: HttpProxy::start_with_auth("up", "up-secret").await.unwrap(),
            socks5: Socks5Server::start().await.unwrap(),
            socks5_auth: Socks5Server::start_with_auth("up", "up-secret")
                .await
                .unwrap(),
            socks4: Socks4Server::start().await.unwrap(),
        }
    }

    fn urls(&self) -> [(&'static str, String); 5] {
        [
            ("http", format!("http://{}", self.http.addr())),
            (
                "http with credentials",
                format!("http://up:up-secret@{}", self.http_auth.addr()),
            ),
            ("socks5", format!("socks5://{}", self.socks5.addr())),
            (
                "socks5 with credentials",
                format!("socks5://up:up-secret@{}", self.socks5_auth.addr()),
            ),
            ("socks4a", format!("socks4://{}", self.socks4.addr())),
        ]
    }
}

#[tokio::test]
async fn absolute_form_requests_go_through_every_upstream_kind() {
    let kinds = Kinds::start().await;
    let target = TargetServer::start().await.unwrap();
    for (kind, url) in kinds.urls() {
        let gateway = spawn_gateway(GatewayConfig::default(), vec![Upstream::new(url)]).await;
        let response = gateway
            .client(&format!("pool-{POOL}"))
            .get(target.localhost_url("/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{kind}");
        assert_eq!(
            response.headers()["x-pharox-proxy-id"].to_str().unwrap(),
            gateway.proxies[0].to_string(),
            "{kind}"
        );
        assert!(
            response.headers().contains_key("x-pharox-lease-id"),
            "{kind}"
        );
        assert_eq!(response.text().await.unwrap(), "ok", "{kind}");
        // The lease ends with the response.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while gateway.active_leases().await > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the lease is released");
    }
    // Each proxy saw its request: forwarded by the HTTP proxies, tunnelled
    // (by name: remote DNS) by the SOCKS ones.
    assert_eq!(kinds.http.forwarded_requests(), 1);
    assert_eq!(kinds.http_auth.forwarded_requests(), 1);
    assert_eq!(kinds.http_auth.auth_failures(), 0);
    for targets in [
        kinds.socks5.targets(),
        kinds.socks5_auth.targets(),
        kinds.socks4.targets(),
    ] {
        assert_eq!(targets.len(), 1);
        assert!(
            matches!(&targets[0], SocksTarget::Domain(host, _) if host == "localhost"),
            "{targets:?}"
        );
    }
    assert_eq!(target.request_count(), 5);
    // The gateway's own headers never reach the target.
    for request in target.requests() {
        assert!(request.header("proxy-authorization").is_none());
    }
}

#[tokio::test]
async fn connect_tunnels_carry_tls_through_every_upstream_kind() {
    let ca = TestCa::new();
    let target = TargetServer::start_tls(&ca).await.unwrap();
    let kinds = Kinds::start().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    for (kind, url) in kinds.urls() {
        let gateway = spawn_gateway(GatewayConfig::default(), vec![Upstream::new(url)]).await;
        let proxy = reqwest::Proxy::all(format!("http://{}", gateway.addr))
            .unwrap()
            .basic_auth(&format!("pool-{POOL}"), crate::common::KEY);
        let client = reqwest::Client::builder()
            .proxy(proxy)
            .use_preconfigured_tls(tls.clone())
            .build()
            .unwrap();
        let response = client
            .get(target.localhost_url("/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{kind}");
        assert_eq!(response.text().await.unwrap(), "ok", "{kind}");
    }
    assert_eq!(kinds.http.tunnels(), 1);
    assert_eq!(kinds.http_auth.tunnels(), 1);
    assert_eq!(target.request_count(), 5);
}

#[tokio::test]
async fn the_connect_answer_names_the_proxy_and_the_lease() {
    let upstream = HttpProxy::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let gateway = spawn_gateway(
        GatewayConfig::default(),
        vec![Upstream::new(format!("http://{}", upstream.addr()))],
    )
    .await;
    let (mut stream, head) = connect(gateway.addr, target.addr(), &format!("pool-{POOL}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        head_header(&head, "x-pharox-proxy-id"),
        Some(gateway.proxies[0].to_string().as_str())
    );
    let lease_id = head_header(&head, "x-pharox-lease-id").unwrap().to_owned();
    assert_eq!(gateway.active_leases().await, 1);
    // Bytes cross the tunnel untouched.
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    drop(stream);
    // Closing the tunnel releases the lease, reported as a success.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while gateway.active_leases().await > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lease is released");
    let lease = gateway
        .storage
        .get_lease(lease_id.parse().unwrap())
        .await
        .unwrap();
    assert!(lease.released_at.is_some());
}
