//! SOCKS4 tunnels: SOCKS4a for host names (remote DNS), plain SOCKS4 for
//! IPv4 literals.

use std::net::IpAddr;

use pharox_domain::{Proxy, ProxyFailureKind};
use pharox_ports::{DialError, DialTarget, ProxyStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target_ip;
use crate::tcp::handshake_error;

const VERSION: u8 = 4;
const CMD_CONNECT: u8 = 1;
const GRANTED: u8 = 0x5A;
const REJECTED: u8 = 0x5B;
const NO_IDENTD: u8 = 0x5C;
const IDENTD_MISMATCH: u8 = 0x5D;

/// VN CD DSTPORT DSTIP USERID NUL [HOST NUL]: the user id is the proxy's
/// user name (empty without credentials); a name goes after DSTIP
/// `0.0.0.1` (SOCKS4a). IPv6 targets and NUL bytes are `Protocol` errors.
pub(crate) fn request(proxy: &Proxy, target: &DialTarget) -> Result<Vec<u8>, DialError> {
    let user = proxy
        .credentials
        .as_ref()
        .map_or("", |c| c.username.as_str());
    if user.contains('\0') {
        return Err(DialError::new(
            ProxyFailureKind::Protocol,
            "socks4 cannot send a user name containing NUL",
        ));
    }
    let (ip, name) = match target_ip(target) {
        Some(IpAddr::V4(ip)) => (ip.octets(), None),
        Some(IpAddr::V6(_)) => {
            return Err(DialError::new(
                ProxyFailureKind::Protocol,
                "socks4 cannot reach IPv6",
            ));
        }
        None => ([0, 0, 0, 1], Some(target.host.as_str())),
    };
    let mut out = vec![VERSION, CMD_CONNECT];
    out.extend_from_slice(&target.port.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    if let Some(name) = name {
        // `check_target_host` already refused NUL and other controls.
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// Sends `request` and reads the 8-byte reply: `0x5A` is the tunnel,
/// `0x5B` `Other`, `0x5C`/`0x5D` (identd) `ProxyAuth`.
pub(crate) async fn handshake(
    mut stream: TcpStream,
    request: &[u8],
) -> Result<Box<dyn ProxyStream>, DialError> {
    const DURING: &str = "socks4 handshake";
    stream
        .write_all(request)
        .await
        .map_err(|e| handshake_error(DURING, &e))?;
    let mut reply = [0u8; 8];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|e| handshake_error(DURING, &e))?;
    // The reply's VN is 0; some servers send 4.
    if !matches!(reply[0], 0 | VERSION) {
        return Err(DialError::new(
            ProxyFailureKind::Protocol,
            "socks4 proxy replied with a wrong version",
        ));
    }
    match reply[1] {
        GRANTED => Ok(Box::new(stream)),
        REJECTED => Err(DialError::new(
            ProxyFailureKind::Other,
            "socks4 proxy rejected the request or could not connect (0x5b)",
        )),
        NO_IDENTD | IDENTD_MISMATCH => Err(DialError::new(
            ProxyFailureKind::ProxyAuth,
            format!(
                "socks4 proxy could not confirm the user id with identd ({:#04x})",
                reply[1]
            ),
        )),
        other => Err(DialError::new(
            ProxyFailureKind::Protocol,
            format!("socks4 proxy replied with an unknown code {other:#04x}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use pharox_domain::PoolId;

    use super::*;

    fn request_for(url: &str, host: &str) -> Result<Vec<u8>, DialError> {
        let proxy = Proxy::from_url(PoolId::new(), url)
            .unwrap()
            .build()
            .unwrap();
        request(
            &proxy,
            &DialTarget {
                host: host.into(),
                port: 80,
            },
        )
    }

    #[test]
    fn names_use_socks4a_and_ipv4_plain_socks4() {
        assert_eq!(
            request_for("socks4://127.0.0.1:1080", "localhost").unwrap(),
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00localhost\x00"
        );
        assert_eq!(
            request_for("socks4://bob:pw@127.0.0.1:1080", "10.0.0.2").unwrap(),
            b"\x04\x01\x00\x50\x0a\x00\x00\x02bob\x00"
        );
    }

    #[test]
    fn ipv6_targets_cannot_be_expressed() {
        let err = request_for("socks4://127.0.0.1:1080", "::1").unwrap_err();
        assert_eq!(err.kind, ProxyFailureKind::Protocol);
        assert_eq!(err.message, "socks4 cannot reach IPv6");
    }
}
