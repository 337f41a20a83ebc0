//! SOCKS5 tunnels (RFC 1928 `CONNECT`): no-auth or username/password
//! (RFC 1929), host names sent to the proxy (remote DNS).

use std::net::IpAddr;

use pharox_domain::{Proxy, ProxyFailureKind};
use pharox_ports::{DialError, DialTarget, ProxyStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target_ip;
use crate::tcp::handshake_error;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// The messages of one SOCKS5 handshake, built (and checked) before
/// connecting.
pub(crate) struct Plan {
    /// VER NMETHODS METHODS.
    greeting: Vec<u8>,
    /// The RFC 1929 request (VER ULEN UNAME PLEN PASSWD), when the proxy
    /// has credentials.
    auth: Option<Vec<u8>>,
    /// VER CMD RSV ATYP DST.ADDR DST.PORT.
    request: Vec<u8>,
}

impl Plan {
    /// The handshake for `target` through `proxy`. Credentials must be 1
    /// to 255 bytes each (`ProxyAuth` otherwise), a host name at most 255
    /// bytes (`Protocol`).
    pub(crate) fn new(proxy: &Proxy, target: &DialTarget) -> Result<Self, DialError> {
        let auth = proxy
            .credentials
            .as_ref()
            .map(|c| auth_request(&c.username, &c.password))
            .transpose()?;
        let greeting = if auth.is_some() {
            vec![VERSION, 2, NO_AUTH, USER_PASS]
        } else {
            vec![VERSION, 1, NO_AUTH]
        };
        let mut request = vec![VERSION, CMD_CONNECT, 0];
        match target_ip(target) {
            Some(IpAddr::V4(ip)) => {
                request.push(ATYP_IPV4);
                request.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                request.push(ATYP_IPV6);
                request.extend_from_slice(&ip.octets());
            }
            None => {
                let len = u8::try_from(target.host.len()).map_err(|_| {
                    DialError::new(
                        ProxyFailureKind::Protocol,
                        "socks5 cannot send a host name longer than 255 bytes",
                    )
                })?;
                request.push(ATYP_DOMAIN);
                request.push(len);
                request.extend_from_slice(target.host.as_bytes());
            }
        }
        request.extend_from_slice(&target.port.to_be_bytes());
        Ok(Self {
            greeting,
            auth,
            request,
        })
    }

    /// Runs the handshake on `stream`: method selection, authentication,
    /// `CONNECT`. The reply is read to its end, so the stream holds only
    /// the tunnel's bytes.
    pub(crate) async fn handshake(
        self,
        mut stream: TcpStream,
    ) -> Result<Box<dyn ProxyStream>, DialError> {
        send(&mut stream, &self.greeting, "socks5 greeting").await?;
        let mut choice = [0u8; 2];
        recv(&mut stream, &mut choice, "socks5 greeting").await?;
        if choice[0] != VERSION {
            return Err(protocol(
                "socks5 proxy answered the greeting with a wrong version",
            ));
        }
        match (choice[1], &self.auth) {
            (NO_AUTH, _) => {}
            (USER_PASS, Some(auth)) => authenticate(&mut stream, auth).await?,
            (NO_ACCEPTABLE_METHOD, Some(_)) => {
                return Err(DialError::new(
                    ProxyFailureKind::ProxyAuth,
                    "socks5 proxy accepted none of the offered authentication methods",
                ));
            }
            (NO_ACCEPTABLE_METHOD, None) => {
                return Err(DialError::new(
                    ProxyFailureKind::ProxyAuth,
                    "socks5 proxy requires authentication",
                ));
            }
            (_, _) => {
                return Err(protocol(
                    "socks5 proxy chose an authentication method that was not offered",
                ));
            }
        }
        send(&mut stream, &self.request, "socks5 request").await?;
        read_reply(&mut stream).await?;
        Ok(Box::new(stream))
    }
}

/// VER ULEN UNAME PLEN PASSWD. The error quotes neither part.
fn auth_request(username: &str, password: &str) -> Result<Vec<u8>, DialError> {
    let length = |part: &str| {
        u8::try_from(part.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                DialError::new(
                    ProxyFailureKind::ProxyAuth,
                    "socks5 user name and password must be 1 to 255 bytes each",
                )
            })
    };
    let (ulen, plen) = (length(username)?, length(password)?);
    let mut out = Vec::with_capacity(3 + username.len() + password.len());
    out.push(1);
    out.push(ulen);
    out.extend_from_slice(username.as_bytes());
    out.push(plen);
    out.extend_from_slice(password.as_bytes());
    Ok(out)
}

/// The RFC 1929 exchange: any non-zero status is rejected credentials.
async fn authenticate(stream: &mut TcpStream, auth: &[u8]) -> Result<(), DialError> {
    send(stream, auth, "socks5 authentication").await?;
    let mut answer = [0u8; 2];
    recv(stream, &mut answer, "socks5 authentication").await?;
    // RFC 1929 says version 1; some servers echo 5.
    if !matches!(answer[0], 1 | VERSION) {
        return Err(protocol(
            "socks5 proxy answered the authentication with a wrong version",
        ));
    }
    if answer[1] != 0 {
        return Err(DialError::new(
            ProxyFailureKind::ProxyAuth,
            "socks5 proxy rejected the credentials",
        ));
    }
    Ok(())
}

/// VER REP RSV ATYP BND.ADDR BND.PORT, read to the end whatever the
/// address type.
async fn read_reply(stream: &mut TcpStream) -> Result<(), DialError> {
    const DURING: &str = "socks5 reply";
    let mut head = [0u8; 4];
    recv(stream, &mut head, DURING).await?;
    if head[0] != VERSION {
        return Err(protocol("socks5 proxy replied with a wrong version"));
    }
    if head[1] != 0 {
        return Err(DialError::new(
            ProxyFailureKind::Other,
            format!("socks5 proxy could not connect: {}", reply_text(head[1])),
        ));
    }
    let address_len = match head[3] {
        ATYP_IPV4 => 4,
        ATYP_IPV6 => 16,
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            recv(stream, &mut len, DURING).await?;
            usize::from(len[0])
        }
        _ => {
            return Err(protocol(
                "socks5 proxy replied with an unknown address type",
            ));
        }
    };
    // The bound address and port are not needed; they must not stay in
    // the stream.
    let mut bound = vec![0u8; address_len + 2];
    recv(stream, &mut bound, DURING).await
}

/// RFC 1928's name for a reply code.
fn reply_text(rep: u8) -> String {
    match rep {
        1 => "general SOCKS server failure".to_owned(),
        2 => "connection not allowed by ruleset".to_owned(),
        3 => "network unreachable".to_owned(),
        4 => "host unreachable".to_owned(),
        5 => "connection refused by destination host".to_owned(),
        6 => "TTL expired".to_owned(),
        7 => "command not supported".to_owned(),
        8 => "address type not supported".to_owned(),
        other => format!("unknown reply {other:#04x}"),
    }
}

fn protocol(message: &'static str) -> DialError {
    DialError::new(ProxyFailureKind::Protocol, message)
}

async fn send(stream: &mut TcpStream, bytes: &[u8], during: &str) -> Result<(), DialError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| handshake_error(during, &e))
}

async fn recv(stream: &mut TcpStream, buf: &mut [u8], during: &str) -> Result<(), DialError> {
    stream
        .read_exact(buf)
        .await
        .map(drop)
        .map_err(|e| handshake_error(during, &e))
}

#[cfg(test)]
mod tests {
    use pharox_domain::PoolId;

    use super::*;

    fn target(host: &str) -> DialTarget {
        DialTarget {
            host: host.into(),
            port: 0x1F90,
        }
    }

    fn plan(url: &str, host: &str) -> Result<Plan, DialError> {
        let proxy = Proxy::from_url(PoolId::new(), url)
            .unwrap()
            .build()
            .unwrap();
        Plan::new(&proxy, &target(host))
    }

    #[test]
    fn each_address_type_is_encoded() {
        let name = plan("socks5://127.0.0.1:1080", "localhost").unwrap();
        assert_eq!(name.greeting, [5, 1, 0]);
        assert!(name.auth.is_none());
        assert_eq!(name.request, b"\x05\x01\x00\x03\x09localhost\x1f\x90");
        let v4 = plan("socks5://127.0.0.1:1080", "10.1.2.3").unwrap();
        assert_eq!(v4.request, [5, 1, 0, 1, 10, 1, 2, 3, 0x1F, 0x90]);
        let v6 = plan("socks5://127.0.0.1:1080", "::1").unwrap();
        assert_eq!(v6.request[3], 4);
        assert_eq!(v6.request.len(), 4 + 16 + 2);
    }

    #[test]
    fn credentials_offer_user_pass_and_are_bounded() {
        let with = plan("socks5://u:pw@127.0.0.1:1080", "localhost").unwrap();
        assert_eq!(with.greeting, [5, 2, 0, 2]);
        assert_eq!(with.auth.unwrap(), b"\x01\x01u\x02pw");
        let long = "p".repeat(256);
        let err = plan(&format!("socks5://u:{long}@127.0.0.1:1080"), "localhost")
            .err()
            .unwrap();
        assert_eq!(err.kind, ProxyFailureKind::ProxyAuth);
        assert!(!err.to_string().contains(&long));
    }

    #[test]
    fn reply_codes_are_named() {
        assert_eq!(reply_text(5), "connection refused by destination host");
        assert_eq!(reply_text(0x42), "unknown reply 0x42");
    }
}
