//! SOCKS5 inbound (RFC 1928, RFC 1929): username/password auth (the
//! username routes, the password is an API key; no auth only with
//! `no_auth`), the `CONNECT` command, then a tunnel like an HTTP
//! `CONNECT`'s.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use pharox::ports::DialTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admit::{Refusal, admit, open_refusal};
use crate::metrics::GatewayResult;
use crate::upstream::{self, Budget, Use};
use crate::{Gateway, tunnel};

const VERSION: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_METHOD: u8 = 0xFF;
const CONNECT: u8 = 0x01;

/// Serves one SOCKS5 client: the handshake within the header timeout,
/// then the tunnel.
pub(crate) async fn serve_connection(gateway: &Gateway, mut stream: TcpStream) {
    let timeout = gateway.config().header_timeout;
    let mut stopping = gateway.stopping();
    let handshake = tokio::select! {
        shaken = tokio::time::timeout(timeout, handshake(gateway, &mut stream)) => shaken,
        () = crate::stopped(&mut stopping) => return,
    };
    let (admitted, target) = match handshake {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "SOCKS5 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("SOCKS5 handshake timed out");
            return;
        }
    };
    let mut budget = Budget::new(gateway.config().connect_timeout);
    let opened = upstream::open(gateway, &admitted, &target, Use::Tunnel, &mut budget).await;
    gateway.metrics().attempts(budget.attempts);
    drop(budget);
    match opened {
        Ok(opened) => {
            let mut lease = opened.lease;
            lease.set_outcome(pharox::Outcome::Success {
                target: pharox::TargetHost::new(&target.host).ok(),
                latency_ms: Some(opened.dialed.latency.as_secs_f64() * 1000.0),
            });
            if reply(&mut stream, 0x00).await.is_err() {
                return;
            }
            tunnel::run(gateway, stream, lease, opened.dialed.stream, &admitted.pool).await;
        }
        Err(e) => {
            let refusal = open_refusal(e, &admitted.pool);
            tracing::debug!(reason = %refusal.message(), "SOCKS5 tunnel refused");
            gateway.metrics().tunnel(&admitted.pool, refusal.result());
            let _ = reply(&mut stream, refusal.socks_reply()).await;
        }
    }
}

/// Greeting, auth and request. `Ok(None)`: the client was refused (and
/// told so).
async fn handshake(
    gateway: &Gateway,
    stream: &mut TcpStream,
) -> io::Result<Option<(crate::admit::Admitted, DialTarget)>> {
    let mut head = [0_u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not SOCKS5"));
    }
    let mut methods = vec![0_u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    let no_auth = gateway.config().no_auth;
    let (username, password) = if methods.contains(&USER_PASS) {
        stream.write_all(&[VERSION, USER_PASS]).await?;
        let (user, pass) = read_user_pass(stream).await?;
        (user, Some(pass))
    } else if no_auth && methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_AUTH]).await?;
        (String::new(), None)
    } else {
        stream.write_all(&[VERSION, NO_METHOD]).await?;
        gateway.metrics().tunnel("", GatewayResult::Refused);
        return Ok(None);
    };
    let admitted = admit(gateway, &username, password.as_deref(), |_| None).await;
    let admitted = match admitted {
        Ok(admitted) => {
            if password.is_some() {
                stream.write_all(&[0x01, 0x00]).await?;
            }
            admitted
        }
        Err(refusal) => {
            tracing::debug!(reason = %refusal.message(), "SOCKS5 client refused");
            gateway.metrics().tunnel("", refusal.result());
            if password.is_some() {
                stream.write_all(&[0x01, 0x01]).await?;
            } else {
                reply(stream, refusal.socks_reply()).await?;
            }
            return Ok(None);
        }
    };
    let mut request = [0_u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not SOCKS5"));
    }
    let host = match request[3] {
        0x01 => {
            let mut ip = [0_u8; 4];
            stream.read_exact(&mut ip).await?;
            Ipv4Addr::from(ip).to_string()
        }
        0x03 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0_u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "host is not UTF-8"))?
        }
        0x04 => {
            let mut ip = [0_u8; 16];
            stream.read_exact(&mut ip).await?;
            Ipv6Addr::from(ip).to_string()
        }
        _ => {
            reply(stream, 0x08).await?;
            return Ok(None);
        }
    };
    let port = stream.read_u16().await?;
    if request[1] != CONNECT {
        gateway
            .metrics()
            .tunnel(&admitted.pool, GatewayResult::BadRequest);
        reply(stream, 0x07).await?;
        return Ok(None);
    }
    if host.is_empty() || port == 0 {
        let refusal = Refusal::BadRequest("the target needs a host and a port".to_owned());
        gateway.metrics().tunnel(&admitted.pool, refusal.result());
        reply(stream, refusal.socks_reply()).await?;
        return Ok(None);
    }
    Ok(Some((admitted, DialTarget { host, port })))
}

/// The RFC 1929 sub-negotiation's user name and password.
async fn read_user_pass(stream: &mut TcpStream) -> io::Result<(String, String)> {
    let version = stream.read_u8().await?;
    if version != 0x01 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad auth version",
        ));
    }
    let mut field = async || -> io::Result<String> {
        let len = stream.read_u8().await?;
        let mut bytes = vec![0_u8; usize::from(len)];
        stream.read_exact(&mut bytes).await?;
        String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
    };
    let user = field().await?;
    let pass = field().await?;
    Ok((user, pass))
}

/// A reply with `code` and an unspecified bound address (0.0.0.0:0).
async fn reply(stream: &mut TcpStream, code: u8) -> io::Result<()> {
    stream
        .write_all(&[VERSION, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        .await
}
