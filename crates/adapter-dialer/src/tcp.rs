//! The TCP side of a dial: resolving and connecting to the proxy, the
//! overall timeout, and how I/O errors are classified.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pharox_domain::{Proxy, ProxyFailureKind};
use pharox_ports::DialError;
use tokio::net::{TcpStream, lookup_host};

/// Runs a whole dial within `timeout`; past it the dial (and whatever it
/// opened) is dropped and the error is a [`ProxyFailureKind::Timeout`].
pub(crate) async fn within<T>(
    timeout: Duration,
    dial: impl Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(timeout, dial)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::new(
                ProxyFailureKind::Timeout,
                format!("no ready stream within {} ms", timeout.as_millis()),
            ))
        })
}

/// A TCP connection to the proxy, with `TCP_NODELAY` set. An IP literal is
/// used as it is; a name is resolved and every address tried in turn (the
/// last error is reported).
pub(crate) async fn connect(proxy: &Proxy) -> Result<TcpStream, DialError> {
    let addrs: Vec<SocketAddr> = match proxy.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, proxy.port)],
        Err(_) => lookup_host((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|e| {
                DialError::new(
                    ProxyFailureKind::Other,
                    format!("cannot resolve the proxy's host: {e}"),
                )
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| {
                    DialError::new(
                        ProxyFailureKind::Other,
                        format!("cannot set TCP_NODELAY: {e}"),
                    )
                })?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => connect_error(&e),
        None => DialError::new(
            ProxyFailureKind::Other,
            "the proxy's host resolved to no address",
        ),
    })
}

/// Classifies a failed TCP connect: refused or reset (the proxy's host
/// actively turned us away) is `ConnectRefused`, an OS timeout is
/// `Timeout`, anything else (unreachable, ...) is `Other`.
pub(crate) fn connect_error(err: &io::Error) -> DialError {
    let kind = match err.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => ProxyFailureKind::ConnectRefused,
        io::ErrorKind::TimedOut => ProxyFailureKind::Timeout,
        _ => ProxyFailureKind::Other,
    };
    DialError::new(kind, format!("cannot connect to the proxy: {err}"))
}

/// Classifies an I/O error during a handshake: the proxy closing or
/// resetting the connection is `Protocol` (a dropped handshake), anything
/// else is `Other`. `during` names the step ("socks5 greeting").
pub(crate) fn handshake_error(during: &str, err: &io::Error) -> DialError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => DialError::new(
            ProxyFailureKind::Protocol,
            format!("proxy closed the connection during the {during}"),
        ),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => DialError::new(
            ProxyFailureKind::Protocol,
            format!("proxy dropped the connection during the {during}: {err}"),
        ),
        _ => DialError::new(ProxyFailureKind::Other, format!("{during} failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_classified() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connect_error(&refused).kind,
            ProxyFailureKind::ConnectRefused
        );
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(connect_error(&timed_out).kind, ProxyFailureKind::Timeout);
        let unreachable = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(connect_error(&unreachable).kind, ProxyFailureKind::Other);
    }

    #[test]
    fn a_closed_handshake_is_a_protocol_failure() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        let err = handshake_error("socks5 greeting", &eof);
        assert_eq!(err.kind, ProxyFailureKind::Protocol);
        assert!(err.message.contains("socks5 greeting"));
    }

    #[tokio::test]
    async fn the_timeout_covers_the_whole_dial() {
        let err = within(
            Duration::from_millis(10),
            std::future::pending::<Result<(), _>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ProxyFailureKind::Timeout);
    }
}
