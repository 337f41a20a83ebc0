//! Outcome reports (`report_outcome`, `release_with_outcome`) and the bans
//! they keep (`list_target_bans`): each outcome is applied by the domain's
//! `UsagePolicy::apply_outcome` in Rust, in one transaction that locks the
//! lease and then its proxy, and stores what the policy computed.
//!
//! A lost connection is resolved like acquire's: before the COMMIT is sent
//! nothing can have been applied, so the call is tried again on a fresh
//! connection; when the COMMIT's reply is lost, the server process is
//! stopped first ([`crate::hot::FENCE`]) and the lease's
//! `outcomes_applied`, which the transaction increments, tells whether it
//! committed. So an outcome is never applied twice by a retry, nor reported
//! failed while applied. (When another report of the same lease commits in
//! that window, the count cannot tell the two apart and the call takes its
//! own as applied: the outcome can be lost in that double fault, never
//! counted twice.)

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use pharox_domain::{
    BanChange, LeaseId, Outcome, Proxy, ProxyId, TargetBan, TargetBanState, TargetHost,
    UsageChange, UsagePolicy,
};
use pharox_ports::{ProxyStorage, ReleaseOutcome, ReleasedLease, StorageError, StorageResult};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, AssertSqlSafe, Row};
use time::OffsetDateTime;

use crate::error::{map_sqlx, with_retry};
use crate::hot::{Backend, is_lost_connection, timed};
use crate::storage::{LOST_CONNECTION_TRIES, PostgresStorage};
use crate::{rows, sql, usage_sql};

/// What the read of a report found, under its locks.
struct Standing {
    proxy: Proxy,
    lease_active: bool,
    outcomes_applied: i32,
    now: OffsetDateTime,
    ban: Option<TargetBanState>,
}

/// `outcomes_applied` before the transaction, as the read saw it (-1: not
/// read yet), and whether the COMMIT was sent: what a lost connection's
/// resolution needs to know.
#[derive(Default)]
struct Progress {
    applied_before: AtomicI64,
    commit_sent: AtomicBool,
}

impl Progress {
    fn start(&self) {
        self.applied_before.store(-1, Ordering::SeqCst);
        self.commit_sent.store(false, Ordering::SeqCst);
    }
}

fn standing_from_row(row: &PgRow) -> StorageResult<Standing> {
    let get = |e| map_sqlx("report_outcome", e);
    let status: String = row.try_get("lease_status").map_err(get)?;
    let until: Option<OffsetDateTime> = row.try_get("ban_until").map_err(get)?;
    let consecutive: Option<i32> = row.try_get("ban_consecutive").map_err(get)?;
    Ok(Standing {
        proxy: rows::proxy(row)?,
        lease_active: rows::lease_status(&status)? == pharox_domain::LeaseStatus::Active,
        outcomes_applied: row.try_get("outcomes_applied").map_err(get)?,
        now: row.try_get("now").map_err(get)?,
        ban: until.map(|until| TargetBanState {
            until,
            consecutive: u32::try_from(consecutive.unwrap_or(1).max(0)).unwrap_or(0),
        }),
    })
}

/// Reads the lease's proxy and the outcome's ban under their locks.
async fn read_standing(
    conn: &mut sqlx::PgConnection,
    lease_id: LeaseId,
    target: Option<&TargetHost>,
    context: &'static str,
) -> StorageResult<Option<Standing>> {
    let row = sqlx::query(AssertSqlSafe(usage_sql::report_read_statement()))
        .bind(lease_id.0)
        .bind(target.map(TargetHost::as_str))
        .fetch_optional(conn)
        .await
        .map_err(|e| map_sqlx(context, e))?;
    row.as_ref().map(standing_from_row).transpose()
}

/// Stores what the policy decided, and counts the outcome on the lease.
async fn write_change(
    conn: &mut sqlx::PgConnection,
    lease_id: LeaseId,
    proxy_id: ProxyId,
    target: Option<&TargetHost>,
    change: &UsageChange,
    context: &'static str,
) -> StorageResult<Proxy> {
    let (ban_op, ban_until, ban_consecutive) = match change.ban {
        BanChange::Unchanged => (0_i32, None, None),
        BanChange::Set(state) => (
            1,
            Some(state.until),
            Some(i32::try_from(state.consecutive).unwrap_or(i32::MAX)),
        ),
        BanChange::Clear => (2, None, None),
    };
    let usage = change.usage;
    let row = sqlx::query(AssertSqlSafe(usage_sql::outcome_write_statement()))
        .bind(proxy_id.0)
        .bind(usage.error_score)
        .bind(usage.cooldown_until)
        .bind(i32::try_from(usage.consecutive_cooldowns).unwrap_or(i32::MAX))
        .bind(lease_id.0)
        .bind(target.map(TargetHost::as_str))
        .bind(ban_op)
        .bind(ban_until)
        .bind(ban_consecutive)
        .fetch_one(conn)
        .await
        .map_err(|e| map_sqlx(context, e))?;
    rows::proxy(&row)
}

/// The lease's `outcomes_applied` now (`None`: no such lease).
async fn outcomes_applied(
    storage: &PostgresStorage,
    lease_id: LeaseId,
    context: &'static str,
) -> StorageResult<Option<i32>> {
    sqlx::query_scalar("SELECT outcomes_applied FROM lease WHERE id = $1")
        .bind(lease_id.0)
        .fetch_optional(&storage.pool)
        .await
        .map_err(|e| map_sqlx(context, e))
}

impl PostgresStorage {
    /// Whether a transaction whose COMMIT reply was lost committed: stops
    /// its server process, then compares the lease's count of applied
    /// outcomes with the one the transaction read. Tried again while the
    /// database is out of reach, up to `resolve_timeout`; then an error
    /// that says the outcome is unknown (not retryable: a retry could apply
    /// it twice).
    async fn committed(
        &self,
        lease_id: LeaseId,
        backend: Backend,
        applied_before: i64,
        context: &'static str,
    ) -> StorageResult<bool> {
        let deadline = tokio::time::Instant::now() + self.resolve_timeout;
        let mut attempt = 1;
        loop {
            let found = timed(context, self.query_timeout, async {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| map_sqlx(context, e))?;
                backend
                    .fence(&mut conn)
                    .await
                    .map_err(|e| map_sqlx(context, e))?;
                drop(conn);
                outcomes_applied(self, lease_id, context).await
            })
            .await;
            match found {
                Ok(count) => {
                    return Ok(count.is_some_and(|n| i64::from(n) > applied_before));
                }
                Err(e) if is_lost_connection(&e) && tokio::time::Instant::now() < deadline => {
                    crate::error::backoff(attempt.min(7)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StorageError::Backend {
                        message: format!(
                            "{context}: the connection was lost while committing the outcome \
                             of lease {lease_id}, and whether it was applied cannot be told yet"
                        ),
                        source: Some(Box::new(e)),
                    });
                }
            }
        }
    }

    /// See [`pharox_ports::ProxyStorage::report_outcome`].
    pub(crate) async fn report_outcome_now(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy> {
        outcome.validate()?;
        policy.validate()?;
        let context = "report_outcome";
        let target = outcome.target();
        let progress = Progress::default();
        let mut tries = 1;
        loop {
            let mut conn = self.checkout(context).await?;
            let backend = conn.backend;
            let result = with_retry!(timed(context, self.query_timeout, async {
                progress.start();
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(|e| map_sqlx(context, e))?;
                let standing = match read_standing(&mut tx, lease_id, target, context).await? {
                    Some(standing) if standing.lease_active => standing,
                    other => {
                        // Ended here, not when `tx` drops: a dropped
                        // transaction rolls back only on the connection's
                        // next use, and this one goes back to the stash
                        // holding the lease's lock.
                        tx.rollback().await.map_err(|e| map_sqlx(context, e))?;
                        return Err(match other {
                            None => StorageError::not_found("lease", lease_id),
                            Some(_) => StorageError::LeaseNotActive(lease_id),
                        });
                    }
                };
                progress
                    .applied_before
                    .store(i64::from(standing.outcomes_applied), Ordering::SeqCst);
                let change = policy.apply_outcome(
                    &standing.proxy.usage,
                    standing.ban.as_ref(),
                    outcome,
                    standing.now,
                );
                let proxy = write_change(
                    &mut tx,
                    lease_id,
                    standing.proxy.id,
                    target,
                    &change,
                    context,
                )
                .await?;
                progress.commit_sent.store(true, Ordering::SeqCst);
                tx.commit().await.map_err(|e| map_sqlx(context, e))?;
                Ok(proxy)
            }));
            match result {
                Ok(proxy) => {
                    self.stash.put(conn);
                    return Ok(proxy);
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    let before = progress.applied_before.load(Ordering::SeqCst);
                    if progress.commit_sent.load(Ordering::SeqCst)
                        && self.committed(lease_id, backend, before, context).await?
                    {
                        let lease = self.get_lease(lease_id).await?;
                        return self.get_proxy(lease.proxy_id).await;
                    }
                    if tries >= LOST_CONNECTION_TRIES {
                        return Err(e);
                    }
                    tracing::debug!(lease = %lease_id, tries, error = %e, "report_outcome lost its connection before committing; trying again");
                    tries += 1;
                }
                Err(e) => {
                    // Not-found and not-active roll back (the transaction
                    // drops); the connection is fine.
                    if matches!(
                        e,
                        StorageError::NotFound { .. } | StorageError::LeaseNotActive(_)
                    ) {
                        self.stash.put(conn);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// See [`pharox_ports::ProxyStorage::release_with_outcome`].
    pub(crate) async fn release_with_outcome_now(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome> {
        outcome.validate()?;
        policy.validate()?;
        self.settle_unresolved().await;
        let context = "release";
        let target = outcome.target();
        let progress = Progress::default();
        let mut tries = 1;
        let released = loop {
            let mut conn = self.checkout(context).await?;
            let backend = conn.backend;
            let result = with_retry!(timed(context, self.query_timeout, async {
                progress.start();
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(|e| map_sqlx(context, e))?;
                let row = sqlx::query(AssertSqlSafe(self.release_sql))
                    .bind(lease_id.0)
                    .bind(sql::ACTIVE)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(context, e))?;
                let Some(row) = row else {
                    // Not active: nothing was written; the outcome is dropped.
                    // Ended now (see report_outcome_now).
                    tx.rollback().await.map_err(|e| map_sqlx(context, e))?;
                    return Ok(None);
                };
                let released = crate::storage::released_from_row(&row, lease_id)?;
                let Some(standing) = read_standing(&mut tx, lease_id, target, context).await?
                else {
                    return Err(StorageError::not_found("lease", lease_id));
                };
                progress
                    .applied_before
                    .store(i64::from(standing.outcomes_applied), Ordering::SeqCst);
                let change = policy.apply_outcome(
                    &standing.proxy.usage,
                    standing.ban.as_ref(),
                    outcome,
                    standing.now,
                );
                write_change(
                    &mut tx,
                    lease_id,
                    standing.proxy.id,
                    target,
                    &change,
                    context,
                )
                .await?;
                progress.commit_sent.store(true, Ordering::SeqCst);
                tx.commit().await.map_err(|e| map_sqlx(context, e))?;
                Ok(Some(released))
            }));
            match result {
                Ok(released) => {
                    self.stash.put(conn);
                    break released;
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    let before = progress.applied_before.load(Ordering::SeqCst);
                    if progress.commit_sent.load(Ordering::SeqCst)
                        && self.committed(lease_id, backend, before, context).await?
                    {
                        break Some(self.released_lease(lease_id).await?);
                    }
                    if tries >= LOST_CONNECTION_TRIES {
                        return Err(e);
                    }
                    tracing::debug!(lease = %lease_id, tries, error = %e, "release_with_outcome lost its connection before committing; trying again");
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        match released {
            Some(released) => Ok(ReleaseOutcome::Released(released)),
            None => self.not_released(lease_id).await,
        }
    }

    /// The lease a committed release with outcome released, read back.
    async fn released_lease(&self, lease_id: LeaseId) -> StorageResult<ReleasedLease> {
        let lease = self.get_lease(lease_id).await?;
        Ok(ReleasedLease {
            lease_id,
            proxy_id: lease.proxy_id,
            pool_id: lease.pool_id,
            consumer_id: lease.consumer_id,
            acquired_at: lease.acquired_at,
            released_at: lease.released_at.unwrap_or(lease.acquired_at),
        })
    }

    /// See [`pharox_ports::ProxyStorage::list_target_bans`].
    pub(crate) async fn list_target_bans_now(
        &self,
        proxy_id: ProxyId,
    ) -> StorageResult<Vec<TargetBan>> {
        let context = "list_target_bans";
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM proxy WHERE id = $1)")
            .bind(proxy_id.0)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx(context, e))?;
        if !exists {
            return Err(StorageError::not_found("proxy", proxy_id));
        }
        let found = sqlx::query(usage_sql::ACTIVE_BANS)
            .bind(proxy_id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx(context, e))?;
        found
            .iter()
            .map(|row| {
                let get = |e| map_sqlx(context, e);
                let target: String = row.try_get("target").map_err(get)?;
                let consecutive: i32 = row.try_get("consecutive").map_err(get)?;
                Ok(TargetBan {
                    target: TargetHost::new(&target)
                        .map_err(|_| crate::error::bad_row("proxy_target_ban.target"))?,
                    until: row.try_get("until").map_err(get)?,
                    consecutive: u32::try_from(consecutive.max(0)).unwrap_or(0),
                })
            })
            .collect()
    }
}
