//! An HTTP forward proxy: absolute-form requests and `CONNECT` tunnels.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, copy_bidirectional};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::TestCa;
use crate::http::{Head, read_head, respond, split_authority};
use crate::server::{Running, serve};

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicUsize,
    forwarded: AtomicUsize,
    tunnels: AtomicUsize,
    auth_failures: AtomicUsize,
}

#[derive(Debug)]
struct Config {
    /// The expected `Proxy-Authorization` value, if auth is on.
    expected_auth: Option<String>,
    stats: Stats,
}

/// An HTTP/1.1 forward proxy on `127.0.0.1`.
///
/// - `GET http://host:port/path HTTP/1.1` (absolute-form) is forwarded to
///   the origin in origin-form with `Connection: close`;
///   `Proxy-Authorization` is not passed on.
/// - `CONNECT host:port` opens a tunnel (`200 Connection Established`).
/// - With Basic auth configured, a missing or wrong `Proxy-Authorization`
///   gets `407` with `Proxy-Authenticate: Basic realm="pharox-test"`.
/// - An origin it cannot reach gets `502`.
///
/// Optionally served over TLS (an "HTTPS proxy": TLS to the proxy itself).
/// Counts what it served. Shut down on drop.
#[derive(Debug)]
pub struct HttpProxy {
    running: Running,
    config: Arc<Config>,
}

impl HttpProxy {
    /// Starts a proxy without authentication.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None, None).await
    }

    /// Starts a proxy that requires Basic proxy authentication.
    pub async fn start_with_auth(username: &str, password: &str) -> io::Result<Self> {
        Self::start_inner(Some((username, password)), None).await
    }

    /// Starts a proxy that clients reach over TLS (certificate from `ca`,
    /// valid for `localhost` and `127.0.0.1`), optionally with Basic auth.
    pub async fn start_tls(ca: &TestCa, auth: Option<(&str, &str)>) -> io::Result<Self> {
        Self::start_inner(auth, Some(TlsAcceptor::from(ca.server_config()))).await
    }

    async fn start_inner(auth: Option<(&str, &str)>, tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let config = Arc::new(Config {
            expected_auth: auth
                .map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}")))),
            stats: Stats::default(),
        });
        let shared = Arc::clone(&config);
        let running = serve(move |stream| {
            let config = Arc::clone(&shared);
            let tls = tls.clone();
            async move {
                config.stats.connections.fetch_add(1, Ordering::Relaxed);
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            handle(stream, &config).await;
                        }
                    }
                    None => handle(stream, &config).await,
                }
            }
        })
        .await?;
        Ok(Self { running, config })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// TCP connections accepted.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.config.stats.connections.load(Ordering::Relaxed)
    }

    /// Absolute-form requests forwarded to an origin.
    #[must_use]
    pub fn forwarded_requests(&self) -> usize {
        self.config.stats.forwarded.load(Ordering::Relaxed)
    }

    /// `CONNECT` tunnels opened.
    #[must_use]
    pub fn tunnels(&self) -> usize {
        self.config.stats.tunnels.load(Ordering::Relaxed)
    }

    /// Requests answered with 407.
    #[must_use]
    pub fn auth_failures(&self) -> usize {
        self.config.stats.auth_failures.load(Ordering::Relaxed)
    }
}

async fn handle<S>(mut client: S, config: &Config)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(Some(head)) = read_head(&mut client).await else {
        return;
    };
    if let Some(expected) = &config.expected_auth
        && head.header("proxy-authorization") != Some(expected.as_str())
    {
        config.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        let _ = respond(
            &mut client,
            407,
            &[("Proxy-Authenticate", "Basic realm=\"pharox-test\"")],
            b"proxy authentication required",
        )
        .await;
        return;
    }
    if head.method.eq_ignore_ascii_case("CONNECT") {
        tunnel(client, head, config).await;
    } else if let Some(rest) = head.target.strip_prefix("http://") {
        let rest = rest.to_owned();
        forward(client, head, &rest, config).await;
    } else {
        let _ = respond(&mut client, 400, &[], b"absolute-form or CONNECT only").await;
    }
}

async fn tunnel<S>(mut client: S, head: Head, config: &Config)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((host, port)) = split_authority(&head.target, 443) else {
        let _ = respond(&mut client, 400, &[], b"bad CONNECT target").await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect((host.as_str(), port)).await else {
        let _ = respond(&mut client, 502, &[], b"").await;
        return;
    };
    config.stats.tunnels.fetch_add(1, Ordering::Relaxed);
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
        || upstream.write_all(&head.rest).await.is_err()
    {
        return;
    }
    let _ = copy_bidirectional(&mut client, &mut upstream).await;
}

async fn forward<S>(mut client: S, head: Head, rest: &str, config: &Config)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((host, port)) = split_authority(authority, 80) else {
        let _ = respond(&mut client, 400, &[], b"bad request target").await;
        return;
    };
    let Ok(mut upstream) = TcpStream::connect((host.as_str(), port)).await else {
        let _ = respond(&mut client, 502, &[], b"").await;
        return;
    };
    config.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut out = format!("{} {path} {}\r\n", head.method, head.version);
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if !matches!(
            lower.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection"
        ) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&head.rest);
    if upstream.write_all(&bytes).await.is_err() {
        return;
    }
    let _ = copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetServer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn exchange(addr: SocketAddr, request: String) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn forwards_and_tunnels_with_auth() {
        let target = TargetServer::start().await.unwrap();
        let proxy = HttpProxy::start_with_auth("u", "p").await.unwrap();
        let url = target.url("/ok");
        let auth = format!("Basic {}", STANDARD.encode("u:p"));

        let denied = exchange(proxy.addr(), format!("GET {url} HTTP/1.1\r\n\r\n")).await;
        assert!(denied.starts_with("HTTP/1.1 407"), "{denied}");
        assert_eq!(proxy.auth_failures(), 1);

        let ok = exchange(
            proxy.addr(),
            format!("GET {url} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert_eq!(proxy.forwarded_requests(), 1);
        assert_eq!(target.requests()[0].header("proxy-authorization"), None);

        let tunneled = exchange(
            proxy.addr(),
            format!(
                "CONNECT {0} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\nGET /no-content HTTP/1.1\r\n\r\n",
                target.addr()
            ),
        )
        .await;
        assert!(tunneled.starts_with("HTTP/1.1 200 Connection Established"));
        assert!(tunneled.contains("HTTP/1.1 204"), "{tunneled}");
        assert_eq!(proxy.tunnels(), 1);
        assert_eq!(proxy.connections(), 3);
    }
}
