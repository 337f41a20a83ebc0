//! pharox-adapter-dialer: the tokio [`ProxyDialer`]. It opens tunnels through
//! upstream proxies (HTTP `CONNECT`, SOCKS4/4a, SOCKS5 with remote DNS and
//! RFC 1929 auth) and plain connections to HTTP proxies, each within one
//! timeout, and classifies every failure as a [`ProxyFailureKind`] with a
//! message that names no credentials.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use pharox_adapter_dialer::TokioDialer;
//! use pharox_domain::{PoolId, Proxy};
//! use pharox_ports::{DialTarget, ProxyDialer};
//! use tokio::io::AsyncWriteExt;
//!
//! let proxy = Proxy::from_url(PoolId::new(), "socks5://user:secret@127.0.0.1:1080")?.build()?;
//! let target = DialTarget { host: "example.com".into(), port: 443 };
//! let mut dialed = TokioDialer::new()
//!     .tunnel(&proxy, &target, Duration::from_secs(5))
//!     .await?;
//! println!("tunnel ready in {:?}", dialed.latency);
//! dialed.stream.write_all(b"bytes for example.com").await?;
//! # Ok(()) }
//! ```
//!
//! [`ProxyFailureKind`]: pharox_domain::ProxyFailureKind

mod http_connect;
mod prefixed;
mod socks4;
mod socks5;
mod tcp;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pharox_domain::{Proxy, ProxyFailureKind, ProxyProtocol};
use pharox_ports::{DialError, DialTarget, Dialed, ProxyDialer, ProxyStream};

pub use http_connect::basic_proxy_authorization;

/// The tokio [`ProxyDialer`]: a fresh TCP connection per dial, no pooling,
/// no state. Cheap to create and to clone.
///
/// - [`tunnel`](ProxyDialer::tunnel): `CONNECT` for `http` and `https`
///   proxies (plain TCP to the proxy, `Proxy-Authorization: Basic` when it
///   has credentials), SOCKS4a for `socks4` (plain SOCKS4 for IPv4
///   targets, the proxy's user name as user id), SOCKS5 for `socks5` (host
///   names sent to the proxy, username/password auth when it has
///   credentials).
/// - [`connect`](ProxyDialer::connect): a TCP connection to an `http`
///   proxy, for absolute-form requests (add [`basic_proxy_authorization`]).
///
/// The TCP connect and the handshake share the timeout; streams have
/// `TCP_NODELAY` set.
#[derive(Debug, Clone, Default)]
pub struct TokioDialer {
    _private: (),
}

impl TokioDialer {
    /// A dialer.
    #[must_use]
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

#[async_trait]
impl ProxyDialer for TokioDialer {
    async fn tunnel(
        &self,
        proxy: &Proxy,
        target: &DialTarget,
        timeout: Duration,
    ) -> Result<Dialed, DialError> {
        let started = Instant::now();
        check_target_host(&target.host)?;
        // Every request is built before connecting: a target the protocol
        // cannot express fails without touching the network.
        let handshake = match proxy.protocol {
            ProxyProtocol::Http | ProxyProtocol::Https => Handshake::HttpConnect {
                request: http_connect::connect_request(proxy, target),
                has_credentials: proxy.credentials.is_some(),
            },
            ProxyProtocol::Socks4 => Handshake::Socks4(socks4::request(proxy, target)?),
            ProxyProtocol::Socks5 => Handshake::Socks5(socks5::Plan::new(proxy, target)?),
        };
        tcp::within(timeout, async {
            let stream = tcp::connect(proxy).await?;
            let stream = match handshake {
                Handshake::HttpConnect {
                    request,
                    has_credentials,
                } => http_connect::handshake(stream, &request, has_credentials).await?,
                Handshake::Socks4(request) => socks4::handshake(stream, &request).await?,
                Handshake::Socks5(plan) => plan.handshake(stream).await?,
            };
            Ok(Dialed {
                stream,
                latency: started.elapsed(),
            })
        })
        .await
    }

    async fn connect(&self, proxy: &Proxy, timeout: Duration) -> Result<Dialed, DialError> {
        let started = Instant::now();
        if proxy.protocol != ProxyProtocol::Http {
            return Err(DialError::new(
                ProxyFailureKind::Protocol,
                "only http proxies take absolute-form requests",
            ));
        }
        tcp::within(timeout, async {
            let stream: Box<dyn ProxyStream> = Box::new(tcp::connect(proxy).await?);
            Ok(Dialed {
                stream,
                latency: started.elapsed(),
            })
        })
        .await
    }
}

/// The handshake a tunnel needs, prepared before connecting.
enum Handshake {
    HttpConnect {
        request: Vec<u8>,
        has_credentials: bool,
    },
    Socks4(Vec<u8>),
    Socks5(socks5::Plan),
}

/// Longest host name a target may have (DNS names are at most 253
/// characters; SOCKS5 caps names at 255 bytes).
const MAX_TARGET_HOST: usize = 255;

/// Rejects target hosts that would corrupt a handshake: empty, too long,
/// or with whitespace or control characters (a CR/LF in a `CONNECT` line, a
/// NUL in a SOCKS4a name). The gateway should validate targets first; this
/// is the dialer's own guard.
fn check_target_host(host: &str) -> Result<(), DialError> {
    let valid = !host.is_empty()
        && host.len() <= MAX_TARGET_HOST
        && !host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if valid {
        Ok(())
    } else {
        Err(DialError::new(
            ProxyFailureKind::Protocol,
            "target host is not a valid host name or address",
        ))
    }
}

/// The target host as an IP literal, if it is one.
fn target_ip(target: &DialTarget) -> Option<IpAddr> {
    target.host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hosts_that_would_corrupt_a_handshake_are_rejected() {
        assert!(check_target_host("example.com").is_ok());
        assert!(check_target_host("2001:db8::1").is_ok());
        for bad in ["", "a b", "a\r\nHost: x", "a\0b", &"x".repeat(256)] {
            let err = check_target_host(bad).unwrap_err();
            assert_eq!(err.kind, ProxyFailureKind::Protocol, "{bad:?}");
        }
    }
}
