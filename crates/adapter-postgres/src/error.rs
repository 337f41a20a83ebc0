//! Mapping database failures to [`StorageError`], and the internal retry of
//! transactions that lost a race.

use std::time::Duration;

use pharox_ports::StorageError;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};

/// How often a call whose transaction hit a serialization failure or a
/// deadlock (SQLSTATE 40001, 40P01) is tried in all, with a short backoff in
/// between, before it returns [`StorageError::Transient`] (retryable).
pub const MAX_ATTEMPTS: u32 = 5;

/// SQLSTATEs that mean "lost a race, try again".
const SERIALIZATION_FAILURE: &str = "40001";
const DEADLOCK_DETECTED: &str = "40P01";
const UNIQUE_VIOLATION: &str = "23505";
const FOREIGN_KEY_VIOLATION: &str = "23503";
const CHECK_VIOLATION: &str = "23514";

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Maps a sqlx error. Messages name what failed, never a password: sqlx's
/// connection errors carry the server's or the OS's words, not the options.
pub(crate) fn map_sqlx(context: &'static str, err: sqlx::Error) -> StorageError {
    classify(context, &err).with_source(Box::new(err))
}

/// What a sqlx error maps to, before its source is attached.
enum Class {
    Transient(String),
    Unavailable(String),
    Backend(String),
    /// Errors that carry no source.
    Done(StorageError),
}

impl Class {
    fn with_source(self, source: BoxError) -> StorageError {
        match self {
            Self::Transient(message) => StorageError::Transient {
                message,
                source: Some(source),
            },
            Self::Unavailable(message) => StorageError::Unavailable {
                message,
                source: Some(source),
            },
            Self::Backend(message) => StorageError::Backend {
                message,
                source: Some(source),
            },
            Self::Done(error) => error,
        }
    }
}

/// Sorts `err` (owned or shared) into a [`Class`].
fn classify(context: &'static str, err: &sqlx::Error) -> Class {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let constraint = db.constraint().unwrap_or("").to_owned();
            match code.as_str() {
                SERIALIZATION_FAILURE | DEADLOCK_DETECTED => {
                    Class::Transient(format!("{context}: {}", db.message()))
                }
                UNIQUE_VIOLATION => Class::Done(StorageError::Conflict(format!(
                    "{context}: duplicate value ({constraint})"
                ))),
                FOREIGN_KEY_VIOLATION => Class::Done(match constraint.as_str() {
                    "proxy_pool_id_fkey" => StorageError::not_found("pool", "of the proxy"),
                    "lease_consumer_id_fkey" => StorageError::not_found("consumer", "of the lease"),
                    "lease_proxy_id_fkey" | "proxy_health_record_proxy_id_fkey" => {
                        StorageError::not_found("proxy", "of the record")
                    }
                    _ => StorageError::Conflict(format!(
                        "{context}: references a missing row ({constraint})"
                    )),
                }),
                CHECK_VIOLATION => Class::Done(StorageError::Conflict(format!(
                    "{context}: violates the check {constraint}"
                ))),
                // Connection-level classes: 08 (connection exception),
                // 57P01..03 (admin shutdown, crash shutdown, cannot connect
                // now), 53300 (too many connections).
                c if c.starts_with("08")
                    || c == "57P01"
                    || c == "57P02"
                    || c == "57P03"
                    || c == "53300" =>
                {
                    Class::Unavailable(format!("{context}: {}", db.message()))
                }
                _ => Class::Backend(format!("{context}: {}", db.message())),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => {
            Class::Unavailable(format!("{context}: cannot reach the database ({err})"))
        }
        sqlx::Error::Protocol(_) => {
            Class::Unavailable(format!("{context}: connection broke ({err})"))
        }
        _ => Class::Backend(format!("{context}: {err}")),
    }
}

/// Whether an acquire failed because a lease with its (caller-chosen) id
/// exists already: the repeat of an earlier call, see
/// `ProxyStorage::acquire`.
pub(crate) fn is_duplicate_lease(e: &StorageError) -> bool {
    matches!(e, StorageError::Conflict(message) if message.ends_with("(lease_pkey)"))
}

/// Maps a SeaORM error (used by the entity-based calls).
pub(crate) fn map_db(context: &'static str, err: DbErr) -> StorageError {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => match std::sync::Arc::try_unwrap(e) {
            Ok(e) => map_sqlx(context, e),
            // Someone else holds the error too: the same classification,
            // with the shared error as the source.
            Err(shared) => {
                let source: BoxError = Box::new(std::sync::Arc::clone(&shared));
                classify(context, &shared).with_source(source)
            }
        },
        DbErr::ConnectionAcquire(e) => StorageError::Unavailable {
            message: format!("{context}: {e}"),
            source: Some(Box::new(e)),
        },
        other => StorageError::Backend {
            message: format!("{context}: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// A stored value that does not decode (a row written by something else
/// with a value pharox does not know).
pub(crate) fn bad_row(what: impl std::fmt::Display) -> StorageError {
    StorageError::Backend {
        message: format!("stored row has an invalid {what}"),
        source: None,
    }
}

/// Sleeps before attempt `attempt + 1`: 1, 2, 4, 8 ms plus up to 1 ms of
/// jitter from the clock, so racing workers do not collide again in step.
pub(crate) async fn backoff(attempt: u32) {
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros() % 1000)
            .unwrap_or(0),
    );
    tokio::time::sleep(Duration::from_micros(
        (1000 << attempt.saturating_sub(1).min(10)) + jitter,
    ))
    .await;
}

/// Evaluates the async block `$op` until it succeeds, fails for a reason
/// other than a lost race, or has been tried [`MAX_ATTEMPTS`] times. Lost
/// races (serialization failure, deadlock) surface as
/// [`StorageError::Transient`] at the end. (A macro rather than a function
/// taking a closure so the futures stay `Send` for `async_trait`.)
macro_rules! with_retry {
    ($op:expr) => {{
        let mut attempt: u32 = 1;
        loop {
            match $op.await {
                Err(pharox_ports::StorageError::Transient { message, .. })
                    if attempt < $crate::error::MAX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %message, "retrying after a lost race");
                    $crate::error::backoff(attempt).await;
                    attempt += 1;
                }
                Err(pharox_ports::StorageError::Transient { message, source }) => {
                    break Err(pharox_ports::StorageError::Transient {
                        message: format!(
                            "{message} (gave up after {} attempts)",
                            $crate::error::MAX_ATTEMPTS
                        ),
                        source,
                    });
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use with_retry;
