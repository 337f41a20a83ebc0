//! `TokioDialer` against real loopback proxies (pharox-test-proxies) and a
//! few scripted fakes. Nothing connects anywhere but `127.0.0.1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pharox_adapter_dialer::{TokioDialer, basic_proxy_authorization};
use pharox_domain::{PoolId, Proxy, ProxyFailureKind};
use pharox_ports::{DialError, DialTarget, Dialed, ProxyDialer, ProxyStream};
use pharox_test_proxies::{
    BlackHole, HttpProxy, Socks4Server, Socks5Server, SocksTarget, TargetServer, closed_port,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "dial/scripted.rs"]
mod scripted;

const TIMEOUT: Duration = Duration::from_secs(5);
const USER: &str = "dial-user";
const PASSWORD: &str = "s3cret-dial-pw";

fn proxy(scheme: &str, addr: SocketAddr, creds: Option<(&str, &str)>) -> Proxy {
    let userinfo = creds.map_or_else(String::new, |(u, p)| format!("{u}:{p}@"));
    Proxy::from_url(PoolId::new(), &format!("{scheme}://{userinfo}{addr}"))
        .unwrap()
        .build()
        .unwrap()
}

/// The target by IP literal.
fn by_ip(target: &TargetServer) -> DialTarget {
    DialTarget {
        host: "127.0.0.1".into(),
        port: target.addr().port(),
    }
}

/// The target by name, for the proxy to resolve.
fn by_name(target: &TargetServer) -> DialTarget {
    DialTarget {
        host: "localhost".into(),
        port: target.addr().port(),
    }
}

async fn tunnel(proxy: &Proxy, target: &DialTarget) -> Result<Dialed, DialError> {
    TokioDialer::new().tunnel(proxy, target, TIMEOUT).await
}

/// A hand-written `GET /ok` over `stream`; the whole response.
async fn get_ok(mut stream: Box<dyn ProxyStream>, host: &str) -> String {
    stream
        .write_all(
            format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Fetches `/ok` through a tunnel and checks the target saw it.
async fn assert_tunnel_works(proxy: &Proxy, target: &TargetServer, to: &DialTarget) {
    let dialed = tunnel(proxy, to).await.unwrap();
    assert!(dialed.latency > Duration::ZERO && dialed.latency < TIMEOUT);
    let before = target.request_count();
    let response = get_ok(dialed.stream, &to.authority()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    assert_eq!(target.request_count(), before + 1);
    assert_eq!(target.requests().last().unwrap().path, "/ok");
}

/// A target the fakes and failing proxies never reach.
fn fake_target() -> DialTarget {
    DialTarget {
        host: "127.0.0.1".into(),
        port: 9,
    }
}

fn assert_no_secret(err: &DialError) {
    let text = err.to_string();
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains(USER), "{text}");
}

#[tokio::test]
async fn http_connect_without_credentials() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start().await.unwrap();
    assert_tunnel_works(&proxy("http", http.addr(), None), &target, &by_ip(&target)).await;
    // An `https` proxy is an HTTP proxy used through CONNECT.
    assert_tunnel_works(&proxy("https", http.addr(), None), &target, &by_ip(&target)).await;
    assert_eq!(http.tunnels(), 2);
}

#[tokio::test]
async fn http_connect_with_credentials() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start_with_auth(USER, PASSWORD).await.unwrap();
    let with = proxy("http", http.addr(), Some((USER, PASSWORD)));
    assert_tunnel_works(&with, &target, &by_ip(&target)).await;
    assert_eq!((http.tunnels(), http.auth_failures()), (1, 0));
}

#[tokio::test]
async fn http_connect_with_wrong_or_missing_credentials_is_proxy_auth() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start_with_auth(USER, "the-right-one")
        .await
        .unwrap();
    let wrong = proxy("http", http.addr(), Some((USER, PASSWORD)));
    let err = tunnel(&wrong, &by_ip(&target)).await.unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::ProxyAuth, "{err}");
    assert_no_secret(&err);
    let missing = proxy("http", http.addr(), None);
    let err = tunnel(&missing, &by_ip(&target)).await.unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::ProxyAuth, "{err}");
    assert_eq!(http.auth_failures(), 2);
    assert_eq!(target.request_count(), 0);
}

#[tokio::test]
async fn socks5_without_auth_sends_names_to_the_proxy() {
    let target = TargetServer::start().await.unwrap();
    let socks = Socks5Server::start().await.unwrap();
    let plain = proxy("socks5", socks.addr(), None);
    assert_tunnel_works(&plain, &target, &by_name(&target)).await;
    assert_tunnel_works(&plain, &target, &by_ip(&target)).await;
    assert_eq!(
        socks.targets(),
        vec![
            SocksTarget::Domain("localhost".into(), target.addr().port()),
            SocksTarget::Ip(target.addr()),
        ]
    );
}

#[tokio::test]
async fn socks5_with_auth() {
    let target = TargetServer::start().await.unwrap();
    let socks = Socks5Server::start_with_auth(USER, PASSWORD).await.unwrap();
    let with = proxy("socks5", socks.addr(), Some((USER, PASSWORD)));
    assert_tunnel_works(&with, &target, &by_name(&target)).await;
    assert_eq!(socks.auth_failures(), 0);
    assert!(socks.targets()[0].is_domain());
}

#[tokio::test]
async fn socks5_with_wrong_or_missing_auth_is_proxy_auth() {
    let target = TargetServer::start().await.unwrap();
    let socks = Socks5Server::start_with_auth(USER, "the-right-one")
        .await
        .unwrap();
    let wrong = proxy("socks5", socks.addr(), Some((USER, PASSWORD)));
    let err = tunnel(&wrong, &by_name(&target)).await.unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::ProxyAuth, "{err}");
    assert_no_secret(&err);
    assert_eq!(socks.auth_failures(), 1);
    // Without credentials the server accepts none of the methods (0xFF).
    let missing = proxy("socks5", socks.addr(), None);
    let err = tunnel(&missing, &by_name(&target)).await.unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::ProxyAuth, "{err}");
    assert!(socks.targets().is_empty());
}

#[tokio::test]
async fn socks5_failure_replies_are_named() {
    let socks = Socks5Server::start().await.unwrap();
    let closed = closed_port().unwrap();
    let to_closed = DialTarget {
        host: "127.0.0.1".into(),
        port: closed.port(),
    };
    let err = tunnel(&proxy("socks5", socks.addr(), None), &to_closed)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::Other, "{err}");
    assert!(
        err.message
            .contains("connection refused by destination host"),
        "{err}"
    );
}

#[tokio::test]
async fn socks4a_by_name_and_socks4_by_ip() {
    let target = TargetServer::start().await.unwrap();
    let socks = Socks4Server::start().await.unwrap();
    let plain = proxy("socks4", socks.addr(), None);
    assert_tunnel_works(&plain, &target, &by_name(&target)).await;
    let with_user = proxy("socks4", socks.addr(), Some((USER, PASSWORD)));
    assert_tunnel_works(&with_user, &target, &by_ip(&target)).await;
    assert_eq!(
        socks.targets(),
        vec![
            SocksTarget::Domain("localhost".into(), target.addr().port()),
            SocksTarget::Ip(target.addr()),
        ]
    );
}

#[tokio::test]
async fn socks4_cannot_reach_ipv6_and_does_not_try() {
    let socks = Socks4Server::start().await.unwrap();
    let v6 = DialTarget {
        host: "::1".into(),
        port: 80,
    };
    let err = tunnel(&proxy("socks4", socks.addr(), None), &v6)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::Protocol);
    assert_eq!(err.message, "socks4 cannot reach IPv6");
    assert_eq!(socks.connections(), 0);
}

#[tokio::test]
async fn a_closed_port_is_connect_refused() {
    let closed = closed_port().unwrap();
    for scheme in ["http", "socks5", "socks4"] {
        let err = tunnel(
            &proxy(scheme, closed, Some((USER, PASSWORD))),
            &fake_target(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ProxyFailureKind::ConnectRefused, "{err}");
        assert_no_secret(&err);
    }
    let err = TokioDialer::new()
        .connect(&proxy("http", closed, None), TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::ConnectRefused, "{err}");
}

#[tokio::test]
async fn a_silent_proxy_times_out_and_nothing_stays_open() {
    let hole = BlackHole::start().await.unwrap();
    for scheme in ["http", "socks5", "socks4"] {
        let started = Instant::now();
        let err = TokioDialer::new()
            .tunnel(
                &proxy(scheme, hole.addr(), Some((USER, PASSWORD))),
                &fake_target(),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind, ProxyFailureKind::Timeout, "{err}");
        assert!(
            took >= Duration::from_millis(200) && took < TIMEOUT,
            "{took:?}"
        );
        assert_no_secret(&err);
    }
    assert_eq!(hole.connections(), 3);
    // The dropped dials closed their connections.
    let deadline = Instant::now() + TIMEOUT;
    while hole.open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hole.open_connections(), 0);
}

#[tokio::test]
async fn connect_then_an_absolute_form_request_with_basic_auth() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start_with_auth(USER, PASSWORD).await.unwrap();
    let with = proxy("http", http.addr(), Some((USER, PASSWORD)));
    let dialed = TokioDialer::new().connect(&with, TIMEOUT).await.unwrap();
    assert!(dialed.latency < TIMEOUT);
    let mut stream = dialed.stream;
    let auth = basic_proxy_authorization(&with).unwrap();
    let url = target.url("/ok");
    let host = target.addr();
    stream
        .write_all(
            format!(
                "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(http.forwarded_requests(), 1);
    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok");
    assert_eq!(seen[0].header("proxy-authorization"), None);
}

#[tokio::test]
async fn connect_is_only_for_http_proxies() {
    let socks = Socks5Server::start().await.unwrap();
    for scheme in ["socks5", "socks4", "https"] {
        let err = TokioDialer::new()
            .connect(
                &proxy(scheme, socks.addr(), Some((USER, PASSWORD))),
                TIMEOUT,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ProxyFailureKind::Protocol, "{err}");
        assert_eq!(err.message, "only http proxies take absolute-form requests");
    }
    assert_eq!(socks.connections(), 0);
}

#[tokio::test]
async fn a_target_that_would_corrupt_the_request_is_refused_before_connecting() {
    let http = HttpProxy::start().await.unwrap();
    let evil = DialTarget {
        host: "example.com\r\nX-Injected: 1".into(),
        port: 80,
    };
    let err = tunnel(&proxy("http", http.addr(), None), &evil)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::Protocol);
    assert_eq!(http.connections(), 0);
}

#[test]
fn the_dialer_is_a_cheap_shareable_value() {
    fn shareable<T: Send + Sync + Clone + Default + std::fmt::Debug + 'static>() {}
    shareable::<TokioDialer>();
    let dialer: Box<dyn ProxyDialer> = Box::new(TokioDialer::default());
    drop(dialer);
}
