//! The [`TaskLocks`] port on PostgreSQL session advisory locks.
//!
//! Each held lock has a connection of its own, opened with the storage's
//! connection options (outside its pool, so a long sweep does not take a
//! pooled connection) and with the holder's description as its
//! `application_name`; the lock is `pg_try_advisory_lock(class, hashtext(key))`
//! on that session. The server frees a session's advisory locks when the
//! session ends: on release, when the guard is dropped (its socket closes),
//! when the holder crashes, and when its backend is terminated or its
//! connection lost. Who holds a key is read from `pg_locks` joined with
//! `pg_stat_activity`, so no table is needed and nothing is left behind.
//!
//! Keys are per database: schemas of one database share them, so callers
//! put something unique in the key (the CLI uses the pool's id).

use async_trait::async_trait;
use pharox_ports::{HeldLock, StorageError, StorageResult, TaskLockGuard, TaskLocks};
use sea_orm::sqlx::{self, Connection, PgConnection};

use crate::PostgresStorage;
use crate::error::map_sqlx;

/// The first half of every pharox advisory lock's key ("phlx"), so that
/// they do not collide with other applications' single-key advisory locks.
pub const LOCK_CLASS: i32 = 0x7068_6c78;

/// The longest `application_name` the server keeps (NAMEDATALEN - 1).
const MAX_APPLICATION_NAME: usize = 63;

/// The holder's description as an `application_name`: printable ASCII (the
/// server replaces anything else with `?`), cut to what the server keeps.
fn application_name(holder: &str) -> String {
    let mut name: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    name.truncate(MAX_APPLICATION_NAME);
    name
}

#[async_trait]
impl TaskLocks for PostgresStorage {
    async fn try_lock(&self, key: &str, holder: &str) -> StorageResult<Option<TaskLockGuard>> {
        let options = (*self.pg_pool().connect_options())
            .clone()
            .application_name(&application_name(holder));
        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(|e| map_sqlx("connecting for a task lock", e))?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(key)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| map_sqlx("taking a task lock", e))?;
        if !taken {
            let _ = connection.close().await;
            return Ok(None);
        }
        let held = PostgresLock {
            connection: Some(connection),
            key: key.to_owned(),
        };
        Ok(Some(TaskLockGuard::new(key, holder, Box::new(held))))
    }

    async fn holder(&self, key: &str) -> StorageResult<Option<String>> {
        let row: Option<(Option<String>, i32, Option<String>)> = sqlx::query_as(
            "SELECT a.application_name::text, a.pid, host(a.client_addr) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2 \
             LIMIT 1",
        )
        .bind(LOCK_CLASS)
        .bind(key)
        .fetch_optional(self.pg_pool())
        .await
        .map_err(|e| map_sqlx("looking up a task lock's holder", e))?;
        Ok(row.map(|(name, pid, addr)| {
            let name = name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "a session".to_owned());
            match addr {
                Some(addr) => format!("{name} (PostgreSQL backend {pid}, client {addr})"),
                None => format!("{name} (PostgreSQL backend {pid})"),
            }
        }))
    }
}

/// A held advisory lock: the session holding it.
struct PostgresLock {
    /// `None` once released.
    connection: Option<PgConnection>,
    key: String,
}

#[async_trait]
impl HeldLock for PostgresLock {
    async fn release(mut self: Box<Self>) -> StorageResult<()> {
        let Some(mut connection) = self.connection.take() else {
            return Ok(());
        };
        let unlocked: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(&self.key)
                .fetch_one(&mut connection)
                .await;
        // Closing the session frees the lock whatever the unlock said.
        let closed = connection.close().await;
        match unlocked {
            Ok(true) => closed.map_err(|e| map_sqlx("closing a task lock's connection", e)),
            Ok(false) => Err(StorageError::Backend {
                message: format!("task lock {} was no longer held", self.key),
                source: None,
            }),
            Err(e) => Err(map_sqlx("releasing a task lock", e)),
        }
    }

    async fn check(&mut self) -> StorageResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(StorageError::Backend {
                message: format!("task lock {} was released", self.key),
                source: None,
            });
        };
        // A session that answers still holds its session locks.
        connection
            .ping()
            .await
            .map_err(|e| map_sqlx("checking a task lock's connection", e))
    }
}

impl Drop for PostgresLock {
    fn drop(&mut self) {
        // Dropping the connection closes its socket; the server ends the
        // session and frees its locks. Closing politely (a Terminate
        // message) needs the runtime, so do that when there is one.
        if let Some(connection) = self.connection.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = connection.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::TestSchema;

    fn unique_key() -> String {
        format!("test-lock:{}", uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_and_told_who_holds_it() {
        let schema = TestSchema::create_with(2).await.unwrap();
        let other = PostgresStorage::connect(schema.config()).await.unwrap();
        let key = unique_key();
        let guard = schema
            .storage()
            .try_lock(&key, "first sweep, pid 1")
            .await
            .unwrap()
            .unwrap();
        assert!(other.try_lock(&key, "second").await.unwrap().is_none());
        let holder = other.holder(&key).await.unwrap().unwrap();
        assert!(
            holder.starts_with("first sweep, pid 1 (PostgreSQL backend "),
            "{holder}"
        );
        // Another key is free.
        let second = other.try_lock(&unique_key(), "second").await.unwrap();
        assert!(second.is_some());
        guard.release().await.unwrap();
        assert_eq!(other.holder(&key).await.unwrap(), None);
        let again = other.try_lock(&key, "second").await.unwrap().unwrap();
        // Dropped, not released: the session ends and frees it.
        drop(again);
        let mut freed = None;
        for _ in 0..200 {
            freed = schema.storage().try_lock(&key, "third").await.unwrap();
            if freed.is_some() {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(freed.is_some(), "a dropped guard's lock was never freed");
        drop(freed);
        other.close().await;
        schema.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn a_crashed_holders_lock_is_free_again() {
        let schema = TestSchema::create_with(2).await.unwrap();
        let key = unique_key();
        let mut guard = schema
            .storage()
            .try_lock(&key, "doomed")
            .await
            .unwrap()
            .unwrap();
        guard.check().await.unwrap();
        // The holder's backend dies (a crash, a lost connection, an admin).
        let terminated: bool = sqlx::query_scalar(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2",
        )
        .bind(LOCK_CLASS)
        .bind(&key)
        .fetch_one(schema.storage().pg_pool())
        .await
        .unwrap();
        assert!(terminated);
        // pg_terminate_backend only signals: wait for the backend to go.
        let mut taken = None;
        for _ in 0..500 {
            taken = schema.storage().try_lock(&key, "successor").await.unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(taken.is_some(), "the terminated holder's lock stayed taken");
        // The old guard finds out that it lost the lock.
        assert!(guard.check().await.is_err());
        assert!(guard.release().await.is_err());
        drop(taken);
        schema.drop_schema().await.unwrap();
    }

    #[test]
    fn application_names_are_printable_and_short() {
        assert_eq!(application_name("pharox\u{e9}\n"), "pharox??");
        assert_eq!(application_name(&"x".repeat(100)).len(), 63);
    }
}
