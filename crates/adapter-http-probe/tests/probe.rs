//! End-to-end probes through real loopback proxies (pharox-test-proxies).
//! Nothing leaves the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pharox_adapter_http_probe::{HttpProbe, HttpsProxyMode};
use pharox_domain::{
    HealthCheckOptions, HealthCheckResult, PoolId, Proxy, ProxyProtocol, ProxyStatus,
};
use pharox_ports::HealthProbe;
use pharox_test_proxies::{
    BlackHole, HttpProxy, Socks4Server, Socks5Server, SocksTarget, TargetServer, TestCa,
    closed_port,
};

fn proxy(protocol: ProxyProtocol, addr: SocketAddr, creds: Option<(&str, &str)>) -> Proxy {
    let mut builder = Proxy::builder(PoolId::new(), addr.ip().to_string(), addr.port(), protocol);
    if let Some((user, password)) = creds {
        builder = builder.credentials(user, password);
    }
    builder.build().unwrap()
}

fn options(target_url: String) -> HealthCheckOptions {
    HealthCheckOptions {
        target_url,
        timeout: Duration::from_secs(5),
        attempts: 1,
        expected_status: Vec::new(),
        slow_threshold: None,
        follow_redirects: false,
        headers: Vec::new(),
        remote_dns: false,
    }
}

fn probe() -> HttpProbe {
    HttpProbe::new().unwrap()
}

#[track_caller]
fn assert_active(result: &HealthCheckResult) {
    assert_eq!(result.status, ProxyStatus::Active, "{result:?}");
    assert!(result.reachable);
    assert_eq!(result.error, None);
    assert_eq!(result.attempts, 1);
    let latency = result.latency_ms.unwrap();
    assert!(latency > 0.0 && latency < 5_000.0, "{latency}");
    assert!(result.validate().is_ok());
    assert_eq!(result.checked_at.nanosecond() % 1_000, 0);
}

#[track_caller]
fn assert_secret_free(result: &HealthCheckResult, secrets: &[&str]) {
    let debug = format!("{result:?}");
    let error = result.error.clone().unwrap_or_default();
    for secret in secrets {
        assert!(!debug.contains(secret), "{secret:?} in {debug}");
        assert!(!error.contains(secret), "{secret:?} in {error}");
    }
}

#[tokio::test]
async fn http_proxy_absolute_form() {
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start().await.unwrap();
    let p = proxy(ProxyProtocol::Http, server.addr(), None);
    let result = probe().probe(&p, &options(target.url("/ok"))).await;
    assert_active(&result);
    assert_eq!(result.http_status, Some(200));
    assert_eq!(result.proxy_id, p.id);
    assert_eq!(result.protocol, ProxyProtocol::Http);
    assert_eq!(server.forwarded_requests(), 1);
    assert_eq!(server.tunnels(), 0);
}

#[tokio::test]
async fn https_proxy_tunnels_with_connect_to_a_tls_target() {
    let ca = TestCa::new();
    let target = TargetServer::start_tls(&ca).await.unwrap();
    let server = HttpProxy::start_with_auth("alice", "tunnel-pw")
        .await
        .unwrap();
    let probe = HttpProbe::builder()
        .add_root_certificate_der(ca.cert_der())
        .build()
        .unwrap();
    for protocol in [ProxyProtocol::Https, ProxyProtocol::Http] {
        let p = proxy(protocol, server.addr(), Some(("alice", "tunnel-pw")));
        let result = probe.probe(&p, &options(target.url("/ok"))).await;
        assert_active(&result);
    }
    assert_eq!(server.tunnels(), 2);
    assert_eq!(server.forwarded_requests(), 0);
    // ring was used explicitly: nobody installed a process-wide provider.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}

#[tokio::test]
async fn https_proxy_over_tls_mode() {
    let ca = TestCa::new();
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start_tls(&ca, Some(("u", "tls-proxy-pw")))
        .await
        .unwrap();
    let probe = HttpProbe::builder()
        .add_root_certificates_pem(ca.cert_pem().as_bytes())
        .unwrap()
        .https_proxy_mode(HttpsProxyMode::Tls)
        .build()
        .unwrap();
    let p = proxy(
        ProxyProtocol::Https,
        server.addr(),
        Some(("u", "tls-proxy-pw")),
    );
    assert_active(&probe.probe(&p, &options(target.url("/ok"))).await);
    assert_eq!(server.forwarded_requests(), 1);

    // The default mode speaks plain HTTP to it: the TLS proxy cannot answer.
    let plain = HttpProbe::new().unwrap();
    let mut opts = options(target.url("/ok"));
    opts.timeout = Duration::from_secs(2);
    let result = plain.probe(&p, &opts).await;
    assert_eq!(result.status, ProxyStatus::Inactive);
}

#[tokio::test]
async fn untrusted_target_certificate_is_a_tls_error() {
    let ca = TestCa::new();
    let target = TargetServer::start_tls(&ca).await.unwrap();
    let server = HttpProxy::start().await.unwrap();
    let probe = HttpProbe::builder().platform_roots(false).build().unwrap();
    let p = proxy(ProxyProtocol::Http, server.addr(), None);
    let result = probe.probe(&p, &options(target.url("/ok"))).await;
    assert_eq!(result.status, ProxyStatus::Inactive);
    assert!(!result.reachable);
    let error = result.error.unwrap();
    assert!(error.starts_with("TLS error: "), "{error}");

    // ... and accepted when the lab says so.
    let lab = HttpProbe::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert_active(&lab.probe(&p, &options(target.url("/ok"))).await);
}

#[tokio::test]
async fn socks4_and_socks4a() {
    let target = TargetServer::start().await.unwrap();
    let server = Socks4Server::start().await.unwrap();
    let p = proxy(ProxyProtocol::Socks4, server.addr(), None);

    assert_active(&probe().probe(&p, &options(target.url("/ok"))).await);
    let mut remote = options(target.localhost_url("/ok"));
    remote.remote_dns = true;
    assert_active(&probe().probe(&p, &remote).await);

    let targets = server.targets();
    assert_eq!(targets[0], SocksTarget::Ip(target.addr()));
    assert_eq!(
        targets[1],
        SocksTarget::Domain("localhost".into(), target.addr().port())
    );
}

#[tokio::test]
async fn socks5_with_and_without_auth_and_socks5h() {
    let target = TargetServer::start().await.unwrap();
    let open = Socks5Server::start().await.unwrap();
    let p = proxy(ProxyProtocol::Socks5, open.addr(), None);
    assert_active(&probe().probe(&p, &options(target.url("/ok"))).await);
    assert_eq!(open.targets(), vec![SocksTarget::Ip(target.addr())]);

    let guarded = Socks5Server::start_with_auth("bob", "p@ss:w/rd")
        .await
        .unwrap();
    let p = proxy(
        ProxyProtocol::Socks5,
        guarded.addr(),
        Some(("bob", "p@ss:w/rd")),
    );
    assert_active(&probe().probe(&p, &options(target.url("/ok"))).await);
    let mut remote = options(target.localhost_url("/ok"));
    remote.remote_dns = true;
    assert_active(&probe().probe(&p, &remote).await);
    assert_eq!(
        guarded.targets(),
        vec![
            SocksTarget::Ip(target.addr()),
            SocksTarget::Domain("localhost".into(), target.addr().port()),
        ]
    );
    assert_eq!(guarded.auth_failures(), 0);
}

#[tokio::test]
async fn wrong_http_proxy_credentials_407() {
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start_with_auth("alice", "right-pw")
        .await
        .unwrap();
    let password = "wr0ng:p@ss/word";
    let p = proxy(
        ProxyProtocol::Http,
        server.addr(),
        Some(("alice", password)),
    );
    let mut opts = options(target.url("/ok"));
    opts.attempts = 3;
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.status, ProxyStatus::Inactive);
    assert!(!result.reachable);
    assert_eq!(
        result.error.as_deref(),
        Some("proxy authentication failed (407)")
    );
    // Rejected credentials are not retried.
    assert_eq!(result.attempts, 1);
    assert_eq!(target.request_count(), 0);
    assert_secret_free(&result, &[password, "wr0ng%3Ap%40ss%2Fword"]);

    // Same through a CONNECT tunnel, and without any credentials.
    let ca = TestCa::new();
    let tls_target = TargetServer::start_tls(&ca).await.unwrap();
    let result = probe().probe(&p, &options(tls_target.url("/ok"))).await;
    assert_eq!(
        result.error.as_deref(),
        Some("proxy authentication failed (407)")
    );
    assert_secret_free(&result, &[password]);
    let anonymous = proxy(ProxyProtocol::Http, server.addr(), None);
    let result = probe().probe(&anonymous, &options(target.url("/ok"))).await;
    assert!(
        result
            .error
            .as_deref()
            .unwrap()
            .starts_with("proxy authentication required (407)"),
        "{result:?}"
    );
    assert_eq!(server.auth_failures(), 3);
}

#[tokio::test]
async fn wrong_socks5_credentials() {
    let target = TargetServer::start().await.unwrap();
    let server = Socks5Server::start_with_auth("bob", "right-pw")
        .await
        .unwrap();
    let password = "not-the-Secret-42";
    let p = proxy(
        ProxyProtocol::Socks5,
        server.addr(),
        Some(("bob", password)),
    );
    let result = probe().probe(&p, &options(target.url("/ok"))).await;
    assert_eq!(result.status, ProxyStatus::Inactive);
    let error = result.error.clone().unwrap();
    assert!(error.starts_with("SOCKS error: "), "{error}");
    assert!(error.contains("authentication failed"), "{error}");
    assert_secret_free(&result, &[password]);
    assert_eq!(server.auth_failures(), 1);

    let anonymous = proxy(ProxyProtocol::Socks5, server.addr(), None);
    let result = probe().probe(&anonymous, &options(target.url("/ok"))).await;
    assert_eq!(
        result.error.as_deref(),
        Some("SOCKS error: proxy requires authentication, and the proxy has no credentials")
    );
}

#[tokio::test]
async fn connection_refused() {
    let target = TargetServer::start().await.unwrap();
    let closed = closed_port().unwrap();
    for protocol in ProxyProtocol::ALL {
        let p = proxy(protocol, closed, Some(("user", "hidden-pw")));
        let result = probe().probe(&p, &options(target.url("/ok"))).await;
        assert_eq!(result.status, ProxyStatus::Inactive);
        assert!(!result.reachable);
        assert_eq!(result.latency_ms, None);
        assert_eq!(
            result.error.as_deref(),
            Some("connection refused"),
            "{protocol}"
        );
        assert_secret_free(&result, &["hidden-pw"]);
    }
}

#[tokio::test]
async fn retries_count_attempts() {
    let target = TargetServer::start().await.unwrap();
    let p = proxy(ProxyProtocol::Http, closed_port().unwrap(), None);
    let mut opts = options(target.url("/ok"));
    opts.attempts = 3;
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.attempts, 3);
    assert_eq!(result.status, ProxyStatus::Inactive);
    assert!(result.validate().is_ok());
}

#[tokio::test]
async fn black_hole_timeout_is_honoured() {
    let hole = BlackHole::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let probe = probe();
    for protocol in [ProxyProtocol::Http, ProxyProtocol::Socks5] {
        let p = proxy(protocol, hole.addr(), None);
        let mut opts = options(target.url("/ok"));
        opts.timeout = Duration::from_millis(400);
        let start = Instant::now();
        let result = probe.probe(&p, &opts).await;
        let elapsed = start.elapsed();
        eprintln!("{protocol} black hole, timeout 400 ms: returned after {elapsed:?}");
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_millis(480),
            "{protocol}: {elapsed:?}"
        );
        assert_eq!(result.error.as_deref(), Some("timed out after 400 ms"));
        assert_eq!(result.status, ProxyStatus::Inactive);
        assert!(!result.reachable);
    }
    assert_eq!(hole.connections(), 2);
    // The abandoned attempts closed their connections (nothing lingers).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hole.open_connections(), 0);
}

#[tokio::test]
async fn unexpected_status_is_inactive_but_reachable() {
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start().await.unwrap();
    let p = proxy(ProxyProtocol::Http, server.addr(), None);
    let result = probe()
        .probe(&p, &options(target.url("/unavailable")))
        .await;
    assert_eq!(result.status, ProxyStatus::Inactive);
    assert!(result.reachable);
    assert_eq!(result.http_status, Some(503));
    assert_eq!(result.error.as_deref(), Some("unexpected status 503"));

    // An explicit list of expected codes.
    let mut opts = options(target.url("/no-content"));
    opts.expected_status = vec![204];
    assert_active(&probe().probe(&p, &opts).await);
    opts.expected_status = vec![200];
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.error.as_deref(), Some("unexpected status 204"));
}

#[tokio::test]
async fn slow_response_above_threshold_is_slow() {
    let target = TargetServer::start().await.unwrap();
    let server = Socks5Server::start().await.unwrap();
    let p = proxy(ProxyProtocol::Socks5, server.addr(), None);
    let mut opts = options(target.url("/slow?ms=300"));
    opts.slow_threshold = Some(Duration::from_millis(100));
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.status, ProxyStatus::Slow, "{result:?}");
    assert!(result.succeeded() && result.reachable);
    assert!(result.latency_ms.unwrap() >= 300.0);

    opts.target_url = target.url("/ok");
    assert_active(&probe().probe(&p, &opts).await);
}

#[tokio::test]
async fn redirects_followed_or_judged() {
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start().await.unwrap();
    let p = proxy(ProxyProtocol::Http, server.addr(), None);
    let mut opts = options(target.url("/redirect"));
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.http_status, Some(302));
    assert_eq!(result.error.as_deref(), Some("unexpected status 302"));
    assert_eq!(target.request_count(), 1);

    opts.follow_redirects = true;
    let result = probe().probe(&p, &opts).await;
    assert_active(&result);
    assert_eq!(result.http_status, Some(200));
    let paths: Vec<_> = target.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/redirect", "/redirect", "/ok"]);
}

#[tokio::test]
async fn extra_headers_and_user_agent_reach_the_target() {
    let target = TargetServer::start().await.unwrap();
    let server = HttpProxy::start_with_auth("u", "hdr-pw").await.unwrap();
    let p = proxy(ProxyProtocol::Http, server.addr(), Some(("u", "hdr-pw")));
    let mut opts = options(target.url("/ok"));
    opts.headers = vec![("X-Pharox-Check".into(), "abc 123".into())];
    let probe = HttpProbe::builder()
        .user_agent("pharox-test/1")
        .build()
        .unwrap();
    assert_active(&probe.probe(&p, &opts).await);
    let request = &target.requests()[0];
    assert_eq!(request.header("x-pharox-check"), Some("abc 123"));
    assert_eq!(request.header("user-agent"), Some("pharox-test/1"));
    // The proxy's credentials are for the proxy, not the target.
    assert_eq!(request.header("proxy-authorization"), None);
}

#[tokio::test]
async fn invalid_options_become_results() {
    let p = proxy(ProxyProtocol::Http, closed_port().unwrap(), None);
    let mut opts = options("ftp://example.invalid/x".into());
    let result = probe().probe(&p, &opts).await;
    assert_eq!(result.status, ProxyStatus::Inactive);
    assert!(
        result
            .error
            .unwrap()
            .starts_with("invalid health check options")
    );
    opts.target_url = "http://127.0.0.1:1/".into();
    opts.headers = vec![("bad header".into(), "x".into())];
    let result = probe().probe(&p, &opts).await;
    assert!(result.error.unwrap().contains("invalid header name"));
}
