//! Scripted fake proxies on `127.0.0.1`: answers real servers do not give
//! (bytes right after the head, cut or malformed replies, rejections).

use std::net::SocketAddr;

use pharox_domain::ProxyFailureKind;
use pharox_ports::ProxyStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{PASSWORD, TIMEOUT, USER, assert_no_secret, fake_target, proxy, tunnel};

/// A fake proxy for one connection: reads up to the end of the request
/// head, sends `answer` in a single write, then holds the connection until
/// the client closes it (or, without `hold`, closes it).
async fn fake_http_proxy(answer: &'static [u8], hold: bool) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        stream.write_all(answer).await.unwrap();
        if hold {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
    });
    addr
}

/// A fake SOCKS server for one connection: for each step, reads that many
/// bytes and sends the answer; then holds the connection.
async fn fake_socks(steps: Vec<(usize, Vec<u8>)>) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for (read, answer) in steps {
            let mut buf = vec![0u8; read];
            if stream.read_exact(&mut buf).await.is_err() {
                return;
            }
            stream.write_all(&answer).await.unwrap();
        }
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    addr
}

async fn first_bytes(stream: &mut Box<dyn ProxyStream>, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn bytes_right_after_the_connect_answer_belong_to_the_tunnel() {
    let addr = fake_http_proxy(b"HTTP/1.1 200 OK\r\n\r\nHELLO", true).await;
    let mut dialed = tunnel(&proxy("http", addr, None), &fake_target())
        .await
        .unwrap();
    assert_eq!(first_bytes(&mut dialed.stream, 5).await, b"HELLO");
}

#[tokio::test]
async fn other_connect_answers_are_classified() {
    let cases: [(&'static [u8], ProxyFailureKind, &str); 4] = [
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
            ProxyFailureKind::Other,
            "proxy answered CONNECT with 502",
        ),
        (
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            ProxyFailureKind::Protocol,
            "other than HTTP",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Cut: short",
            ProxyFailureKind::Protocol,
            "closed the connection",
        ),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            ProxyFailureKind::ProxyAuth,
            "407",
        ),
    ];
    for (answer, kind, text) in cases {
        // The cut head is followed by a close.
        let addr = fake_http_proxy(answer, text != "closed the connection").await;
        let err = tunnel(&proxy("http", addr, Some((USER, PASSWORD))), &fake_target())
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "{err}");
        assert!(err.message.contains(text), "{err}");
        assert_no_secret(&err);
    }
}

#[tokio::test]
async fn socks5_reply_with_a_domain_bound_address_is_read_to_its_end() {
    let mut reply = vec![5, 0, 0, 3, 13];
    reply.extend_from_slice(b"bound.example");
    reply.extend_from_slice(&[0x04, 0x38]);
    reply.extend_from_slice(b"HELLO");
    // Greeting (3 bytes), then the IPv4 request (10 bytes).
    let addr = fake_socks(vec![(3, vec![5, 0]), (10, reply)]).await;
    let mut dialed = tunnel(&proxy("socks5", addr, None), &fake_target())
        .await
        .unwrap();
    assert_eq!(first_bytes(&mut dialed.stream, 5).await, b"HELLO");
}

#[tokio::test]
async fn socks5_malformed_replies_are_protocol_failures() {
    let addr = fake_socks(vec![(3, vec![4, 0])]).await;
    let err = tunnel(&proxy("socks5", addr, None), &fake_target())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::Protocol, "{err}");
    let addr = fake_socks(vec![(3, vec![5, 0]), (10, vec![5, 0, 0, 9, 0, 0])]).await;
    let err = tunnel(&proxy("socks5", addr, None), &fake_target())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProxyFailureKind::Protocol, "{err}");
}

#[tokio::test]
async fn socks4_rejections_are_classified() {
    let cases = [
        (0x5B, ProxyFailureKind::Other),
        (0x5D, ProxyFailureKind::ProxyAuth),
        (0x99, ProxyFailureKind::Protocol),
    ];
    for (code, kind) in cases {
        // VN CD DSTPORT DSTIP NUL: 9 bytes for an IPv4 target and no user.
        let addr = fake_socks(vec![(9, vec![0, code, 0, 0, 0, 0, 0, 0])]).await;
        let err = tunnel(&proxy("socks4", addr, None), &fake_target())
            .await
            .unwrap_err();
        assert_eq!(err.kind, kind, "{err}");
    }
}
