//! Relaying a tunnel's bytes both ways, with bounded buffers and an idle
//! timeout.
//!
//! Each direction's buffer starts at [`INITIAL_BUFFER`] bytes and doubles
//! whenever a read fills it, up to [`MAX_BUFFER`]: an idle tunnel costs two
//! small buffers (10,000 of them fit in a few tens of MiB), a busy one
//! moves 64 KiB per read.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The first buffer of each direction.
pub const INITIAL_BUFFER: usize = 1024;
/// The largest buffer of each direction.
pub const MAX_BUFFER: usize = 64 * 1024;

/// How a relay ended, and what it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Bytes from the upstream to the client.
    pub(crate) inbound: u64,
    /// Bytes from the client to the upstream.
    pub(crate) outbound: u64,
    /// Why it ended.
    pub(crate) end: RelayEnd,
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Both sides closed their half.
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// A side failed (reset, broken pipe).
    Failed,
    /// The caller's stop came first (shutdown, a lost lease).
    Stopped,
}

/// One direction: bytes read from one side, written to the other.
struct Half {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    grow: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Half {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            grow: false,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves bytes until the reader has nothing, the writer takes no more,
    /// or the reader is at its end (then the writer is shut down).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start < self.end {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.start..self.end])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
                *active = true;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if self.grow {
                        let bigger = (self.buf.len() * 2).min(MAX_BUFFER);
                        self.buf = vec![0; bigger];
                        self.grow = false;
                    }
                }
                continue;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    // The other side may be gone already: nothing is lost.
                    Ok(()) | Err(_) => {}
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.buf.is_empty() {
                self.buf = vec![0; INITIAL_BUFFER];
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read now: push out what was written.
                    ready!(writer.as_mut().poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
            let n = read.filled().len();
            if n == 0 {
                self.eof = true;
            } else {
                self.end = n;
                self.grow = n == self.buf.len() && self.buf.len() < MAX_BUFFER;
                *active = true;
            }
        }
    }
}

/// Relays between `client` and `upstream` until both sides close, one
/// fails, no byte moves for `idle`, or `stop` completes; what moved is
/// counted in every case.
pub(crate) async fn relay<C, U, S>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    stop: S,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: Future<Output = ()>,
{
    let mut stop = pin!(stop);
    let mut out = Half::new();
    let mut inb = Half::new();
    // The timer is re-armed only when it fires (to the last activity plus
    // `idle`), not on every poll that moved bytes: a busy tunnel costs a
    // clock read per wake-up, not a timer update.
    let mut timer = pin!(tokio::time::sleep(idle));
    let mut last_active = Instant::now();
    let end = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Stopped);
        }
        let mut active = false;
        if !out.done {
            match out.poll_copy(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *upstream),
                &mut active,
            ) {
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::Failed),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if !inb.done {
            match inb.poll_copy(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                &mut active,
            ) {
                Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::Failed),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if out.done && inb.done {
            return Poll::Ready(RelayEnd::Closed);
        }
        if active {
            last_active = Instant::now();
        }
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let deadline = last_active + idle;
                    if deadline <= Instant::now() {
                        return Poll::Ready(RelayEnd::Idle);
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    })
    .await;
    Relayed {
        inbound: inb.moved,
        outbound: out.moved,
        end,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_close_ends_it() {
        let (mut client, mut client_far) = duplex(1 << 20);
        let (mut upstream, mut upstream_far) = duplex(1 << 20);
        let relaying = tokio::spawn(async move {
            relay(
                &mut client_far,
                &mut upstream_far,
                Duration::from_secs(30),
                std::future::pending(),
            )
            .await
        });
        let big = vec![7_u8; 300_000];
        client.write_all(&big).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0; 300_000];
        while got.len() < big.len() {
            let n = upstream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, big);
        upstream.write_all(b"back").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        let relayed = relaying.await.unwrap();
        assert_eq!(relayed.end, RelayEnd::Closed);
        assert_eq!(relayed.outbound, 300_000);
        assert_eq!(relayed.inbound, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_at_the_idle_timeout() {
        let (_client, mut client_far) = duplex(1024);
        let (_upstream, mut upstream_far) = duplex(1024);
        let started = Instant::now();
        let relayed = relay(
            &mut client_far,
            &mut upstream_far,
            Duration::from_secs(5),
            std::future::pending(),
        )
        .await;
        assert_eq!(relayed.end, RelayEnd::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
