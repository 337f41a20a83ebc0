//! The accept loop shared by every server.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A running accept loop; dropping it aborts the loop and, with it, every
/// connection task it spawned.
#[derive(Debug)]
pub(crate) struct Running {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `127.0.0.1:0` and runs `handler` for every accepted connection.
pub(crate) async fn serve<F, Fut>(handler: F) -> io::Result<Running>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Owned by the loop: aborting the loop drops the set, which aborts
        // every connection still open.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(handler(stream));
                    }
                    // Out of file descriptors and the like: back off a little.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Running { addr, task })
}
