//! HTTP `CONNECT` tunnels: the request, the bounded reading of the
//! proxy's answer head, and the Basic `Proxy-Authorization` value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pharox_domain::{Proxy, ProxyFailureKind};
use pharox_ports::{DialError, DialTarget, ProxyStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::prefixed::Prefixed;
use crate::tcp::handshake_error;

/// The `Proxy-Authorization` value for `proxy`'s credentials,
/// `Basic base64(user:password)`, or `None` when it has none. Whatever the
/// proxy's protocol; for `CONNECT` the dialer adds it itself, for
/// absolute-form requests over [`connect`](pharox_ports::ProxyDialer::connect)
/// the caller does.
///
/// The value carries the password (base64 is no protection): send it to the
/// proxy, never to a log.
#[must_use]
pub fn basic_proxy_authorization(proxy: &Proxy) -> Option<String> {
    proxy.credentials.as_ref().map(|c| {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", c.username, c.password))
        )
    })
}

/// Longest answer head accepted from the proxy.
const MAX_HEAD: usize = 8 * 1024;

/// The end of an HTTP head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// `CONNECT host:port HTTP/1.1` with `Host` and, when the proxy has
/// credentials, `Proxy-Authorization`.
pub(crate) fn connect_request(proxy: &Proxy, target: &DialTarget) -> Vec<u8> {
    let authority = target.authority();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = basic_proxy_authorization(proxy) {
        request.push_str("Proxy-Authorization: ");
        request.push_str(&auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Sends `request` and reads the answer head. A 2xx answer gives the
/// tunnel (bytes that followed the head are read from it first); 407 is
/// `ProxyAuth`, any other status `Other`, anything not HTTP `Protocol`.
pub(crate) async fn handshake(
    mut stream: TcpStream,
    request: &[u8],
    has_credentials: bool,
) -> Result<Box<dyn ProxyStream>, DialError> {
    stream
        .write_all(request)
        .await
        .map_err(|e| handshake_error("CONNECT request", &e))?;
    let (head, leftover) = read_head(&mut stream).await?;
    match status(&head)? {
        200..=299 if leftover.is_empty() => Ok(Box::new(stream)),
        200..=299 => Ok(Box::new(Prefixed::new(leftover, stream))),
        407 if has_credentials => Err(DialError::new(
            ProxyFailureKind::ProxyAuth,
            "proxy rejected the credentials (407)",
        )),
        407 => Err(DialError::new(
            ProxyFailureKind::ProxyAuth,
            "proxy requires credentials (407)",
        )),
        code => Err(DialError::new(
            ProxyFailureKind::Other,
            format!("proxy answered CONNECT with {code}"),
        )),
    }
}

/// Reads up to the end of the head (at most [`MAX_HEAD`] bytes). Returns
/// the head, `\r\n\r\n` included, and whatever was read past it.
async fn read_head<R: AsyncRead + Unpin>(stream: &mut R) -> Result<(Vec<u8>, Vec<u8>), DialError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| handshake_error("CONNECT answer", &e))?;
        if n == 0 {
            return Err(DialError::new(
                ProxyFailureKind::Protocol,
                "proxy closed the connection before a full CONNECT answer",
            ));
        }
        // The end may straddle the previous read.
        let from = buf.len().saturating_sub(HEAD_END.len() - 1);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[from..]
            .windows(HEAD_END.len())
            .position(|w| w == HEAD_END)
        {
            let end = from + at + HEAD_END.len();
            if end > MAX_HEAD {
                return Err(head_too_long());
            }
            let leftover = buf.split_off(end);
            return Ok((buf, leftover));
        }
        if buf.len() >= MAX_HEAD {
            return Err(head_too_long());
        }
    }
}

fn head_too_long() -> DialError {
    DialError::new(
        ProxyFailureKind::Protocol,
        format!("proxy's CONNECT answer head is longer than {MAX_HEAD} bytes"),
    )
}

/// The status code of `HTTP/1.x NNN reason`.
fn status(head: &[u8]) -> Result<u16, DialError> {
    let not_http = || {
        DialError::new(
            ProxyFailureKind::Protocol,
            "proxy answered CONNECT with something other than HTTP",
        )
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| not_http())?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(not_http());
    }
    match code.parse() {
        Ok(code @ 100..=599) => Ok(code),
        _ => Err(not_http()),
    }
}

#[cfg(test)]
mod tests {
    use pharox_domain::PoolId;

    use super::*;

    fn proxy(url: &str) -> Proxy {
        Proxy::from_url(PoolId::new(), url)
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn the_request_carries_the_authority_and_the_credentials() {
        let target = DialTarget {
            host: "2001:db8::1".into(),
            port: 443,
        };
        let plain = connect_request(&proxy("http://127.0.0.1:3128"), &target);
        assert_eq!(
            plain,
            b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"
        );
        let with_auth = connect_request(&proxy("http://user:pass@127.0.0.1:3128"), &target);
        let with_auth = String::from_utf8(with_auth).unwrap();
        assert!(with_auth.contains("\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n"));
        assert!(with_auth.ends_with("\r\n\r\n"));
    }

    #[test]
    fn basic_authorization_is_user_colon_password_in_base64() {
        let with = proxy("http://us%3Aer:p%40ss@127.0.0.1:1");
        assert_eq!(
            basic_proxy_authorization(&with).as_deref(),
            Some("Basic dXM6ZXI6cEBzcw==")
        );
        assert_eq!(
            basic_proxy_authorization(&proxy("http://127.0.0.1:1")),
            None
        );
    }

    #[test]
    fn status_lines_are_parsed_strictly() {
        assert_eq!(
            status(b"HTTP/1.1 200 Connection Established\r\n\r\n").unwrap(),
            200
        );
        assert_eq!(status(b"HTTP/1.0 407\r\n\r\n").unwrap(), 407);
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            let err = status(garbage).unwrap_err();
            assert_eq!(err.kind, ProxyFailureKind::Protocol);
        }
    }

    #[tokio::test]
    async fn the_head_ends_at_the_blank_line_and_keeps_what_follows() {
        let (mut near, mut far) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // The end of the head split across two writes.
            near.write_all(b"HTTP/1.1 200 OK\r\n\r").await.unwrap();
            tokio::task::yield_now().await;
            near.write_all(b"\nHELLO").await.unwrap();
        });
        let (head, leftover) = read_head(&mut far).await.unwrap();
        assert_eq!(head, b"HTTP/1.1 200 OK\r\n\r\n");
        let mut rest = leftover;
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"HELLO");
    }

    #[tokio::test]
    async fn a_head_without_end_is_bounded() {
        let (mut near, mut far) = tokio::io::duplex(64 * 1024);
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', MAX_HEAD + 1));
        near.write_all(&endless).await.unwrap();
        let err = read_head(&mut far).await.unwrap_err();
        assert_eq!(err.kind, ProxyFailureKind::Protocol);
        assert!(err.message.contains("longer than"));
    }
}
