//! The outbound port of the gateway: opening connections through an
//! upstream proxy.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use pharox_domain::{Proxy, ProxyFailureKind};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream the dialer opened: a tunnel through a proxy, or a
/// connection to the proxy itself.
pub trait ProxyStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ProxyStream for T {}

/// Where a tunnel leads. The host is handed to the proxy as it is (a name
/// is resolved by the proxy: remote DNS), so the gateway never resolves a
/// client's target itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialTarget {
    /// A host name, or an IPv4 or IPv6 literal (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl DialTarget {
    /// `host:port`, an IPv6 literal bracketed.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for DialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

/// An open connection and how long it took to be ready.
pub struct Dialed {
    /// The stream: bytes written go to the target (a tunnel) or to the
    /// proxy (a [`ProxyDialer::connect`]).
    pub stream: Box<dyn ProxyStream>,
    /// From the start of the dial to a ready stream: the TCP connect plus
    /// the proxy's handshake.
    pub latency: Duration,
}

impl fmt::Debug for Dialed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialed")
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

/// Why a dial failed: always the proxy's fault (it refused, timed out,
/// rejected its credentials, answered wrongly or could not reach the
/// target). The message names no credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct DialError {
    /// The failure, as an outcome reports it.
    pub kind: ProxyFailureKind,
    /// What happened, readable, without secrets.
    pub message: String,
}

impl DialError {
    /// A failure of `kind`.
    pub fn new(kind: ProxyFailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Opens connections through upstream proxies, for the gateway.
///
/// Both calls finish within `timeout` (connect and handshake together) or
/// fail with [`ProxyFailureKind::Timeout`]; a cancelled call leaves
/// nothing open.
#[async_trait]
pub trait ProxyDialer: Send + Sync {
    /// A tunnel through `proxy` to `target`: HTTP `CONNECT` (with the
    /// proxy's credentials as `Proxy-Authorization`) for `http` and `https`
    /// proxies, SOCKS4a for `socks4`, SOCKS5 with remote DNS and RFC 1929
    /// auth for `socks5`.
    async fn tunnel(
        &self,
        proxy: &Proxy,
        target: &DialTarget,
        timeout: Duration,
    ) -> Result<Dialed, DialError>;

    /// A TCP connection to `proxy` itself, to send it absolute-form HTTP
    /// requests (its credentials are the caller's to add). Only for `http`
    /// proxies: others fail with [`ProxyFailureKind::Protocol`].
    async fn connect(&self, proxy: &Proxy, timeout: Duration) -> Result<Dialed, DialError>;
}
