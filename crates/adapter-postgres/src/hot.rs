//! The lease hot path's connections: the ones acquire and release keep
//! checked out between calls, the client-side limit on each statement, and
//! what a failed call leaves to be resolved (a lease whose acquire lost its
//! reply).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pharox_domain::LeaseId;
use pharox_ports::{StorageError, StorageResult};
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgPool, Postgres};
use sea_orm::sqlx::{self, Row};
use time::OffsetDateTime;

use crate::error::map_sqlx;

/// Connections that acquire and release keep checked out between calls.
///
/// sqlx tests every connection that goes back to its pool with a round trip
/// (a lone `Sync`, whatever `test_before_acquire` says), which doubles the
/// round trips of a one-statement call and the server's work with them. The
/// hot paths keep the connection they used here instead and take it again
/// next time. A call that fails or is cancelled drops its connection, which
/// then goes back to sqlx and is tested there; a call that lost its
/// connection also drains the stash, since the others are likely dead too
/// (a server restart kills them all), so a dead connection costs one failed
/// attempt, not one per worker. At most `capacity` connections wait here,
/// so other calls always find pool connections; one left unused for the
/// pool's idle timeout, or kept for the pool's `max_lifetime` since it
/// first came here, is handed back to the pool (which closes it if it is
/// too old). With `test_before_acquire` the stash keeps nothing, so every
/// call gets a connection sqlx has just pinged.
pub(crate) struct Stash {
    pub(crate) idle: Mutex<Vec<Kept>>,
    capacity: usize,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

/// A connection in the stash, with when it was last used and when it first
/// came here (sqlx does not tell a pooled connection's age, so the stash
/// counts from then: a connection leaves it at most `max_lifetime` after it
/// left the pool).
pub(crate) struct Kept {
    conn: PoolConnection<Postgres>,
    backend: Backend,
    pub(crate) used: Instant,
    pub(crate) first_kept: Instant,
}

/// The server process behind a connection, so that a call whose reply never
/// came can be stopped for certain before anyone looks for what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backend {
    pid: i32,
    /// With the pid, tells the process apart from a later one that got the
    /// same pid (NULL when the server does not track activity).
    started: Option<OffsetDateTime>,
}

/// A connection checked out for a hot-path call, from the stash or fresh
/// from the pool (then `first_kept` is the checkout time).
pub(crate) struct HotConnection {
    conn: PoolConnection<Postgres>,
    pub(crate) backend: Backend,
    pub(crate) first_kept: Instant,
}

impl HotConnection {
    /// Closes a connection whose call broke or timed out instead of handing
    /// it back to sqlx: it is dead or mid-reply, so sqlx's ping on return
    /// would only fail or wait, and a stalled one must not be reused (its
    /// server process may be fenced next).
    pub(crate) fn discard(self) {
        drop(self.conn.detach());
    }
}

impl std::ops::Deref for HotConnection {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for HotConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Stash {
    /// Keeps all but two of the pool's connections at most (none when the
    /// pool tests connections before handing them out).
    pub(crate) fn for_pool(pool: &PgPool) -> Self {
        let options = pool.options();
        let max = usize::try_from(options.get_max_connections()).unwrap_or(usize::MAX);
        Self {
            idle: Mutex::new(Vec::new()),
            capacity: if options.get_test_before_acquire() {
                0
            } else {
                max.saturating_sub(2)
            },
            idle_timeout: options.get_idle_timeout(),
            max_lifetime: options.get_max_lifetime(),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept connection, most recently used first; stale ones go back to
    /// the pool.
    pub(crate) fn take(&self) -> Option<HotConnection> {
        let mut idle = self.lock();
        // One clock read for both limits: this runs on every acquire.
        let now = Instant::now();
        while let Some(kept) = idle.pop() {
            let idle_too_long = self
                .idle_timeout
                .is_some_and(|limit| now.saturating_duration_since(kept.used) > limit);
            let kept_too_long = self
                .max_lifetime
                .is_some_and(|limit| now.saturating_duration_since(kept.first_kept) > limit);
            if idle_too_long || kept_too_long {
                continue; // dropped: sqlx tests it and pools or closes it
            }
            return Some(HotConnection {
                conn: kept.conn,
                backend: kept.backend,
                first_kept: kept.first_kept,
            });
        }
        None
    }

    /// Keeps a connection that just completed a call, if there is room.
    pub(crate) fn put(&self, hot: HotConnection) {
        let mut idle = self.lock();
        if idle.len() < self.capacity {
            idle.push(Kept {
                conn: hot.conn,
                backend: hot.backend,
                used: Instant::now(),
                first_kept: hot.first_kept,
            });
        }
    }

    /// Hands every kept connection back to the pool.
    pub(crate) fn drain(&self) {
        self.lock().clear();
    }

    /// A connection for a hot-path call: a kept one, else one from the pool,
    /// whose server process is asked for its pid (once per checkout from the
    /// pool, not per call). A pooled connection that turns out dead there is
    /// dropped and the next one tried, so a restart's dead idle connections
    /// cost no call its answer; nothing of the call has been sent yet.
    pub(crate) async fn checkout(
        &self,
        pool: &PgPool,
        context: &'static str,
        limit: Duration,
    ) -> StorageResult<HotConnection> {
        if let Some(hot) = self.take() {
            return Ok(hot);
        }
        let tries = pool.options().get_max_connections().saturating_add(1);
        let mut last = None;
        for _ in 0..tries {
            let mut conn = pool.acquire().await.map_err(|e| map_sqlx(context, e))?;
            let found = timed(context, limit, async {
                sqlx::query(
                    "SELECT pg_backend_pid(), \
                       (SELECT backend_start FROM pg_stat_get_activity(pg_backend_pid()))",
                )
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| map_sqlx(context, e))
            })
            .await;
            match found.and_then(|row| {
                Ok(Backend {
                    pid: row.try_get(0).map_err(|e| map_sqlx(context, e))?,
                    started: row.try_get(1).map_err(|e| map_sqlx(context, e))?,
                })
            }) {
                Ok(backend) => {
                    return Ok(HotConnection {
                        conn,
                        backend,
                        first_kept: Instant::now(),
                    });
                }
                Err(e) if is_lost_connection(&e) => {
                    drop(conn.detach());
                    self.drain();
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StorageError::Unavailable {
            message: format!("{context}: no working connection"),
            source: None,
        }))
    }
}

/// Whether a hot-path statement failed in a way that may have lost its
/// reply: the connection broke, or no answer came within the limit. The
/// statement may have taken effect on the server.
pub(crate) fn is_lost_connection(e: &StorageError) -> bool {
    matches!(e, StorageError::Unavailable { .. })
}

/// Runs `call` with a client-side limit: past it, a retryable
/// [`StorageError::Unavailable`] (the call's future is dropped, and with it
/// the connection it was using).
pub(crate) async fn timed<T>(
    context: &'static str,
    limit: Duration,
    call: impl Future<Output = StorageResult<T>>,
) -> StorageResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Unavailable {
            message: format!("{context}: no answer from the database within {limit:?}"),
            source: None,
        }),
    }
}

/// Stops the server process of a connection whose call lost its reply and
/// waits (up to 5 s) until it has exited, so that the call has either
/// committed or never will: only then does a lookup tell its outcome. A
/// statement still on its way to the server (a stalled network) then meets
/// a closed connection instead of running later. A process that is gone
/// already (the usual case: the server ended it) matches no row.
pub(crate) const FENCE: &str = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
     WHERE pid = $1 AND backend_start IS NOT DISTINCT FROM $2";

impl Backend {
    /// Runs [`FENCE`] for this process.
    pub(crate) async fn fence(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(FENCE)
            .bind(self.pid)
            .bind(self.started)
            .execute(conn)
            .await
            .map(|_| ())
    }
}

/// Leases whose acquire lost its reply while the database stayed out of
/// reach for longer than the resolution tries: their callers were told the
/// acquire failed, so nobody holds them. The next hot-path call that finds
/// the database again fences the acquire's server process (its statement
/// may still be on its way) and then releases the lease (release is
/// idempotent, and one never created is simply not found); until then each
/// holds its proxy at most until its TTL.
#[derive(Default)]
pub(crate) struct Unresolved {
    /// Read on every hot-path call: a load, no lock, when there is nothing.
    pending: AtomicBool,
    ids: Mutex<Vec<(LeaseId, Backend)>>,
}

impl Unresolved {
    fn ids(&self) -> std::sync::MutexGuard<'_, Vec<(LeaseId, Backend)>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a lease to release once the database answers, with the
    /// server process its acquire was sent to.
    pub(crate) fn push(&self, id: LeaseId, backend: Backend) {
        self.ids().push((id, backend));
        self.pending.store(true, Ordering::Release);
    }

    /// Whether any lease waits to be released.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every waiting id (put back the ones still unresolved).
    pub(crate) fn take(&self) -> Vec<(LeaseId, Backend)> {
        let mut ids = self.ids();
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *ids)
    }

    /// How many leases wait to be released.
    pub(crate) fn len(&self) -> usize {
        self.ids().len()
    }
}
