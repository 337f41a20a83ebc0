//! The HTTP(S) server a probe fetches through a proxy.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::TestCa;
use crate::http::{read_head, respond};
use crate::server::{Running, serve};

/// One request the target received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Request method (`GET`).
    pub method: String,
    /// Request target as sent (origin-form, `/ok?x=1`).
    pub path: String,
    /// Headers in the order received.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first header named `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server (plain or TLS) with fixed routes, recording every
/// request:
///
/// | route | answer |
/// |---|---|
/// | `/`, `/ok` | 200 `ok` |
/// | `/no-content` | 204 |
/// | `/unavailable` | 503 |
/// | `/slow?ms=N` | 200 after N ms (default 1000) |
/// | `/redirect` | 302 to `/ok` |
/// | `/status/N` | status N |
/// | anything else | 404 |
///
/// Every response closes the connection. Shut down on drop.
#[derive(Debug)]
pub struct TargetServer {
    running: Running,
    tls: bool,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl TargetServer {
    /// Starts a plain HTTP target on `127.0.0.1`.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts an HTTPS target on `127.0.0.1` with a certificate from `ca`
    /// valid for `localhost`, `127.0.0.1` and `::1` (HTTP/1.1 only).
    pub async fn start_tls(ca: &TestCa) -> io::Result<Self> {
        Self::start_inner(Some(TlsAcceptor::from(ca.server_config()))).await
    }

    async fn start_inner(tls: Option<TlsAcceptor>) -> io::Result<Self> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let is_tls = tls.is_some();
        let running = serve(move |stream| {
            let log = Arc::clone(&log);
            let tls = tls.clone();
            async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            handle(stream, log).await;
                        }
                    }
                    None => handle(stream, log).await,
                }
            }
        })
        .await?;
        Ok(Self {
            running,
            tls: is_tls,
            requests,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// `http://127.0.0.1:PORT{path}` (`https` for a TLS target).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.addr())
    }

    /// `http://localhost:PORT{path}`: a host name the proxy must resolve
    /// (for SOCKS4a/SOCKS5h remote-DNS tests).
    #[must_use]
    pub fn localhost_url(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme(), self.addr().port())
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Every request received so far.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("request log").clone()
    }

    /// How many requests it received.
    #[must_use]
    pub fn request_count(&self) -> usize {
        self.requests.lock().expect("request log").len()
    }
}

async fn handle<S>(mut stream: S, log: Arc<Mutex<Vec<RecordedRequest>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(Some(head)) = read_head(&mut stream).await else {
        return;
    };
    log.lock().expect("request log").push(RecordedRequest {
        method: head.method.clone(),
        path: head.target.clone(),
        headers: head.headers.clone(),
    });
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let _ = match path {
        "/" | "/ok" => respond(&mut stream, 200, &[], b"ok").await,
        "/no-content" => respond(&mut stream, 204, &[], b"").await,
        "/unavailable" => respond(&mut stream, 503, &[], b"unavailable").await,
        "/redirect" => respond(&mut stream, 302, &[("Location", "/ok")], b"").await,
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(&mut stream, 200, &[], b"slow").await
        }
        _ => match path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
            Some(status) if (100..=599).contains(&status) => {
                respond(&mut stream, status, &[], b"").await
            }
            _ => respond(&mut stream, 404, &[], b"not found").await,
        },
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes() {
        let target = TargetServer::start().await.unwrap();
        assert!(get(target.addr(), "/ok").await.starts_with("HTTP/1.1 200"));
        assert!(
            get(target.addr(), "/no-content")
                .await
                .starts_with("HTTP/1.1 204")
        );
        assert!(
            get(target.addr(), "/unavailable")
                .await
                .starts_with("HTTP/1.1 503")
        );
        let redirect = get(target.addr(), "/redirect").await;
        assert!(redirect.starts_with("HTTP/1.1 302") && redirect.contains("Location: /ok"));
        assert!(
            get(target.addr(), "/slow?ms=10")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(target.addr(), "/status/418")
                .await
                .starts_with("HTTP/1.1 418")
        );
        assert_eq!(target.request_count(), 6);
        assert_eq!(target.requests()[0].header("x-probe"), Some("1"));
        assert!(target.url("/ok").starts_with("http://127.0.0.1:"));
    }

    #[tokio::test]
    async fn drop_stops_the_server() {
        let target = TargetServer::start().await.unwrap();
        let addr = target.addr();
        drop(target);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
