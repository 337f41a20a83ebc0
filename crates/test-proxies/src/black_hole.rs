//! A server that accepts and never answers, and a port nobody listens on.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;

use crate::server::{Running, serve};

/// Accepts TCP connections, reads and discards whatever arrives and never
/// writes a byte: a proxy that hangs. Shut down (connections closed) on drop.
#[derive(Debug)]
pub struct BlackHole {
    running: Running,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl BlackHole {
    /// Starts it on `127.0.0.1`.
    pub async fn start() -> io::Result<Self> {
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (total, live) = (Arc::clone(&connections), Arc::clone(&open));
        let running = serve(move |mut stream| {
            total.fetch_add(1, Ordering::Relaxed);
            live.fetch_add(1, Ordering::Relaxed);
            let live = Arc::clone(&live);
            async move {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                live.fetch_sub(1, Ordering::Relaxed);
            }
        })
        .await?;
        Ok(Self {
            running,
            connections,
            open,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// TCP connections accepted.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections the client has not closed yet (a client that gave up
    /// should close its end).
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A `127.0.0.1` address with no listener: binds an ephemeral port and
/// releases it. Connecting gets "connection refused" (unless another process
/// grabs the port in between, which is unlikely for a moment).
pub fn closed_port() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    listener.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn black_hole_never_answers_and_closed_port_refuses() {
        let hole = BlackHole::start().await.unwrap();
        let mut s = TcpStream::connect(hole.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
        assert!(read.is_err(), "it answered");
        assert_eq!(hole.connections(), 1);

        let err = TcpStream::connect(closed_port().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
