//! SOCKS4/4a and SOCKS5 servers (CONNECT only).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpStream, lookup_host};

use crate::server::{Running, serve};

/// A destination a SOCKS client asked for, in the address type it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksTarget {
    /// An IPv4 or IPv6 address (resolved by the client).
    Ip(SocketAddr),
    /// A host name for the server to resolve (SOCKS4a / SOCKS5 domain name:
    /// remote DNS).
    Domain(String, u16),
}

impl SocksTarget {
    /// Whether the client left name resolution to the proxy.
    #[must_use]
    pub fn is_domain(&self) -> bool {
        matches!(self, Self::Domain(..))
    }
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicUsize,
    auth_failures: AtomicUsize,
    targets: Mutex<Vec<SocksTarget>>,
}

impl Stats {
    fn record(&self, target: &SocksTarget) {
        self.targets.lock().expect("targets").push(target.clone());
    }
}

/// Connects to `target`, trying every address a name resolves to.
async fn connect(target: &SocksTarget) -> io::Result<TcpStream> {
    match target {
        SocksTarget::Ip(addr) => TcpStream::connect(addr).await,
        SocksTarget::Domain(host, port) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in lookup_host((host.as_str(), *port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// A SOCKS5 server (RFC 1928, CONNECT) on `127.0.0.1`, with no
/// authentication or with username/password (RFC 1929). Accepts IPv4,
/// domain-name and IPv6 destinations and records which were asked for.
/// Shut down on drop.
#[derive(Debug)]
pub struct Socks5Server {
    running: Running,
    stats: Arc<Stats>,
}

impl Socks5Server {
    /// Starts a server that needs no authentication.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a server that requires this username and password.
    pub async fn start_with_auth(username: &str, password: &str) -> io::Result<Self> {
        Self::start_inner(Some((username.to_owned(), password.to_owned()))).await
    }

    async fn start_inner(auth: Option<(String, String)>) -> io::Result<Self> {
        let stats = Arc::new(Stats::default());
        let shared = Arc::clone(&stats);
        let auth = Arc::new(auth);
        let running = serve(move |stream| {
            let stats = Arc::clone(&shared);
            let auth = Arc::clone(&auth);
            async move {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let _ = socks5(stream, auth.as_ref().as_ref(), &stats).await;
            }
        })
        .await?;
        Ok(Self { running, stats })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// TCP connections accepted.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Username/password exchanges rejected.
    #[must_use]
    pub fn auth_failures(&self) -> usize {
        self.stats.auth_failures.load(Ordering::Relaxed)
    }

    /// Destinations requested by authenticated clients, in order.
    #[must_use]
    pub fn targets(&self) -> Vec<SocksTarget> {
        self.stats.targets.lock().expect("targets").clone()
    }
}

async fn socks5(
    mut client: TcpStream,
    auth: Option<&(String, String)>,
    stats: &Stats,
) -> io::Result<()> {
    // Greeting: VER NMETHODS METHODS...
    let mut hdr = [0u8; 2];
    client.read_exact(&mut hdr).await?;
    if hdr[0] != 5 {
        return Ok(());
    }
    let mut methods = vec![0u8; usize::from(hdr[1])];
    client.read_exact(&mut methods).await?;
    let wanted = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        client.write_all(&[5, 0xFF]).await?;
        return Ok(());
    }
    client.write_all(&[5, wanted]).await?;

    if let Some((user, pass)) = auth {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD
        let mut ver_len = [0u8; 2];
        client.read_exact(&mut ver_len).await?;
        let mut uname = vec![0u8; usize::from(ver_len[1])];
        client.read_exact(&mut uname).await?;
        let mut plen = [0u8; 1];
        client.read_exact(&mut plen).await?;
        let mut passwd = vec![0u8; usize::from(plen[0])];
        client.read_exact(&mut passwd).await?;
        if ver_len[0] != 1 || uname != user.as_bytes() || passwd != pass.as_bytes() {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            client.write_all(&[1, 1]).await?;
            return Ok(());
        }
        client.write_all(&[1, 0]).await?;
    }

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    let target = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            let port = client.read_u16().await?;
            SocksTarget::Ip(SocketAddr::from((Ipv4Addr::from(ip), port)))
        }
        3 => {
            let len = client.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await?;
            let port = client.read_u16().await?;
            SocksTarget::Domain(String::from_utf8_lossy(&name).into_owned(), port)
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            let port = client.read_u16().await?;
            SocksTarget::Ip(SocketAddr::from((Ipv6Addr::from(ip), port)))
        }
        _ => {
            // Address type not supported.
            client.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            return Ok(());
        }
    };
    if req[1] != 1 {
        // Command not supported.
        client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(());
    }
    stats.record(&target);
    match connect(&target).await {
        Ok(mut upstream) => {
            client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            let _ = copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::ConnectionRefused {
                5
            } else {
                4
            };
            client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        }
    }
    Ok(())
}

/// A SOCKS4 server (CONNECT) on `127.0.0.1` that also understands SOCKS4a
/// (destination `0.0.0.x` followed by a host name: remote DNS). The user id
/// is ignored. Records the destinations asked for. Shut down on drop.
#[derive(Debug)]
pub struct Socks4Server {
    running: Running,
    stats: Arc<Stats>,
}

impl Socks4Server {
    /// Starts the server.
    pub async fn start() -> io::Result<Self> {
        let stats = Arc::new(Stats::default());
        let shared = Arc::clone(&stats);
        let running = serve(move |stream| {
            let stats = Arc::clone(&shared);
            async move {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let _ = socks4(stream, &stats).await;
            }
        })
        .await?;
        Ok(Self { running, stats })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// TCP connections accepted.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Destinations requested, in order.
    #[must_use]
    pub fn targets(&self) -> Vec<SocksTarget> {
        self.stats.targets.lock().expect("targets").clone()
    }
}

async fn read_cstr(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let b = stream.read_u8().await?;
        if b == 0 || out.len() > 255 {
            return Ok(out);
        }
        out.push(b);
    }
}

async fn socks4(mut client: TcpStream, stats: &Stats) -> io::Result<()> {
    // VER CMD DSTPORT DSTIP USERID\0 [HOST\0]
    let mut req = [0u8; 8];
    client.read_exact(&mut req).await?;
    let _user = read_cstr(&mut client).await?;
    let port = u16::from_be_bytes([req[2], req[3]]);
    let ip = Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    let target = if req[4..7] == [0, 0, 0] && req[7] != 0 {
        let host = read_cstr(&mut client).await?;
        SocksTarget::Domain(String::from_utf8_lossy(&host).into_owned(), port)
    } else {
        SocksTarget::Ip(SocketAddr::from((ip, port)))
    };
    let reject = [0u8, 0x5B, 0, 0, 0, 0, 0, 0];
    if req[0] != 4 || req[1] != 1 {
        client.write_all(&reject).await?;
        return Ok(());
    }
    stats.record(&target);
    match connect(&target).await {
        Ok(mut upstream) => {
            client.write_all(&[0, 0x5A, 0, 0, 0, 0, 0, 0]).await?;
            let _ = copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(_) => client.write_all(&reject).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetServer;

    async fn http_get(mut s: TcpStream) -> String {
        s.write_all(b"GET /ok HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn socks5_auth_and_address_types() {
        let target = TargetServer::start().await.unwrap();
        let server = Socks5Server::start_with_auth("u", "p").await.unwrap();
        let port = target.addr().port().to_be_bytes();

        // Wrong password.
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 2]);
        s.write_all(&[1, 1, b'u', 1, b'x']).await.unwrap();
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [1, 1]);
        assert_eq!(server.auth_failures(), 1);

        // Right password, domain-name destination.
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(&[5, 1, 2, 1, 1, b'u', 1, b'p']).await.unwrap();
        let mut r = [0u8; 4];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 2, 1, 0]);
        let mut req = vec![5, 1, 0, 3, 9];
        req.extend_from_slice(b"localhost");
        req.extend_from_slice(&port);
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 0);
        assert!(http_get(s).await.starts_with("HTTP/1.1 200"));
        assert_eq!(
            server.targets(),
            vec![SocksTarget::Domain(
                "localhost".into(),
                target.addr().port()
            )]
        );
    }

    #[tokio::test]
    async fn socks5_ipv6_destination() {
        let server = Socks5Server::start().await.unwrap();
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 0]);
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        req.extend_from_slice(&9u16.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        // Nothing listens on [::1]:9: refused (or unreachable without IPv6).
        assert!(matches!(reply[1], 4 | 5), "{reply:?}");
        assert_eq!(
            server.targets(),
            vec![SocksTarget::Ip(SocketAddr::from((Ipv6Addr::LOCALHOST, 9)))]
        );
    }

    #[tokio::test]
    async fn socks4a_domain() {
        let target = TargetServer::start().await.unwrap();
        let server = Socks4Server::start().await.unwrap();
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        let mut req = vec![4, 1];
        req.extend_from_slice(&target.addr().port().to_be_bytes());
        req.extend_from_slice(&[0, 0, 0, 1, b'x', 0]);
        req.extend_from_slice(b"localhost\0");
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 0x5A);
        assert!(http_get(s).await.starts_with("HTTP/1.1 200"));
        assert!(server.targets()[0].is_domain());
    }
}
