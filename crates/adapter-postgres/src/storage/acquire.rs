//! The acquire paths of [`PostgresStorage`]: the one-statement path
//! (no filter, or a filter compiled to SQL), the predicate path that locks
//! and tests candidates in batches, and learning the outcome of an acquire
//! whose reply was lost.

use super::*;

impl PostgresStorage {
    pub(super) async fn check_consumer(&self, consumer_id: ConsumerId) -> StorageResult<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM consumer WHERE id = $1)")
                .bind(consumer_id.0)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map_sqlx("acquire", e))?;
        if exists {
            Ok(())
        } else {
            Err(StorageError::not_found("consumer", consumer_id))
        }
    }

    /// The acquire of a filter with predicates: in one transaction, reclaim
    /// the pool's expired leases, lock candidates in batches (SQL selects a
    /// superset), test `ProxyFilter::matches` in Rust, lease the first that
    /// passes. Runs on the call's hot connection.
    pub(super) async fn acquire_with_predicates(
        &self,
        conn: &mut HotConnection,
        request: &AcquireRequest,
        lease_id: LeaseId,
    ) -> StorageResult<Option<Lease>> {
        let lease = self
            .acquire_with_predicates_locking(conn, request, lease_id, Lock::SkipLocked)
            .await?;
        if lease.is_some() {
            return Ok(lease);
        }
        self.acquire_with_predicates_locking(conn, request, lease_id, Lock::Wait)
            .await
    }

    pub(super) async fn acquire_with_predicates_locking(
        &self,
        conn: &mut HotConnection,
        request: &AcquireRequest,
        lease_id: LeaseId,
        lock: Lock,
    ) -> StorageResult<Option<Lease>> {
        let mut binds = Binds::after(sql::CANDIDATES_FIXED_PARAMS);
        let filter_sql = usage_sql::leasable(
            &sql::compile_filter(&request.filter, Predicates::Superset, &mut binds),
            request.target.as_ref(),
            &mut binds,
        );
        let candidates = sql::candidates_statement(request.selector, &filter_sql, lock);
        let session_candidate = request
            .session
            .as_ref()
            .map(|_| usage_sql::session_candidate_statement(&filter_sql));
        // random's start key, one for every batch of this call.
        let start_key: f64 = rand::random();
        let claim = sql::claim_statement(request.selector);
        let ttl = ttl_micros(request.ttl);
        let pool_name = request.pool_name.as_str();
        let batch = i64::try_from(PREDICATE_BATCH).unwrap_or(32);
        let limit = self.query_timeout;
        with_retry!(timed("acquire", limit, async {
            let mut tx = sqlx::Connection::begin(&mut **conn)
                .await
                .map_err(|e| map_sqlx("acquire", e))?;
            sqlx::query(sql::RECLAIM_POOL)
                .bind(pool_name)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx("acquire", e))?;
            let mut seen: Vec<Uuid> = Vec::new();
            // Under a session, its proxy first, if it still qualifies.
            let mut session_proxy: Option<Uuid> = None;
            let mut bound = None;
            if let (Some(session), Some(statement)) = (&request.session, &session_candidate) {
                session_proxy = sqlx::query_scalar(usage_sql::SESSION_PROXY)
                    .bind(pool_name)
                    .bind(session.key.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx("acquire", e))?;
                if let Some(id) = session_proxy {
                    let query = sqlx::query(AssertSqlSafe(statement.clone()))
                        .bind(pool_name)
                        .bind(id)
                        .bind(1_i64)
                        // `$4`, the candidates' start key: unused here, bound
                        // so the filter's placeholders mean the same.
                        .bind(start_key);
                    let found = binds
                        .bind_to(query)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx("acquire", e))?;
                    if let Some(row) = found {
                        let proxy = rows::proxy(&row)?;
                        if sql::matches(&request.filter, &proxy) {
                            bound = Some(proxy.id);
                        }
                    }
                }
            }
            // random: the passing candidates of the batch, up to the window
            // the one-statement pick draws from (`sql::RANDOM_WINDOW`, why
            // there), one of them chosen at random.
            let random = request.selector == Selector::Random;
            let mut passing: Vec<ProxyId> = Vec::new();
            let chosen = 'search: loop {
                if bound.is_some() {
                    break bound;
                }
                let query = sqlx::query(AssertSqlSafe(candidates.clone()))
                    .bind(pool_name)
                    .bind(seen.clone())
                    .bind(batch)
                    .bind(start_key);
                let found = binds
                    .bind_to(query)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx("acquire", e))?;
                for row in &found {
                    let proxy = rows::proxy(row)?;
                    seen.push(proxy.id.0);
                    if sql::matches(&request.filter, &proxy) {
                        if !random {
                            break 'search Some(proxy.id);
                        }
                        passing.push(proxy.id);
                        if passing.len() == sql::RANDOM_WINDOW {
                            break;
                        }
                    }
                }
                if !passing.is_empty() {
                    break passing.get(rand::random_range(0..passing.len())).copied();
                }
                if found.len() < PREDICATE_BATCH {
                    break None;
                }
            };
            let lease = match chosen {
                Some(proxy_id) => {
                    let row = sqlx::query(AssertSqlSafe(claim.clone()))
                        .bind(pool_name)
                        .bind(request.consumer_id.0)
                        .bind(ttl)
                        .bind(lease_id.0)
                        .bind(proxy_id.0)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx("acquire", e))?;
                    match row {
                        Some(row) => rows::acquired_lease(&row, lease_id, request)?,
                        None => None,
                    }
                }
                None => None,
            };
            let lease = match (lease, &request.session) {
                (Some(mut lease), Some(session)) => {
                    sqlx::query(usage_sql::UPSERT_SESSION)
                        .bind(pool_name)
                        .bind(session.key.as_str())
                        .bind(lease.proxy_id.0)
                        .bind(ttl_micros(session.ttl))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx("acquire", e))?;
                    lease.session = Some(pharox_domain::LeaseSession {
                        key: session.key.clone(),
                        moved: session_proxy.is_some_and(|id| id != lease.proxy_id.0),
                    });
                    Some(lease)
                }
                (lease, _) => lease,
            };
            tx.commit().await.map_err(|e| map_sqlx("acquire", e))?;
            Ok(lease)
        }))
    }

    /// The one-statement acquire (no predicates) on the call's connection:
    /// the common statement, and the reclaiming one only when the common
    /// one's pick is held by expired leases; skipping locked rows first,
    /// then waiting for them.
    pub(super) async fn acquire_unfiltered_or_compiled(
        &self,
        conn: &mut HotConnection,
        request: &AcquireRequest,
        lease_id: LeaseId,
    ) -> StorageResult<Option<Lease>> {
        let mut binds = Binds::after(4);
        let filter_sql = usage_sql::leasable(
            &sql::compile_acquire_filter(&request.filter, &mut binds),
            request.target.as_ref(),
            &mut binds,
        );
        // A session's key and TTL follow the filter's and the target's binds.
        let session = request.session.as_ref().map(|session| {
            (
                binds.push(sql::Arg::Text(session.key.as_str().to_owned())),
                binds.push(sql::Arg::Float(ttl_micros(session.ttl))),
            )
        });
        let plain = request.filter.is_empty() && request.target.is_none() && session.is_none();
        let ttl = ttl_micros(request.ttl);
        let pool_name = request.pool_name.as_str();
        let limit = self.query_timeout;
        for lock in [Lock::SkipLocked, Lock::Wait] {
            if let Some((key, session_ttl)) = &session {
                // One statement; only when its pick is held by expired
                // leases, the pool's expired leases are reclaimed and the
                // statement runs once more (a rare path).
                let statement: Arc<str> = Arc::from(usage_sql::session_acquire_statement(
                    request.selector,
                    &filter_sql,
                    lock,
                    key,
                    session_ttl,
                ));
                for step in 0..2 {
                    let row = with_retry!(timed("acquire", limit, async {
                        let query = sqlx::query(AssertSqlSafe(Arc::clone(&statement)))
                            .bind(pool_name)
                            .bind(request.consumer_id.0)
                            .bind(ttl)
                            .bind(lease_id.0);
                        binds
                            .bind_to(query)
                            .fetch_optional(&mut **conn)
                            .await
                            .map_err(|e| map_sqlx("acquire", e))
                    }))?;
                    let Some(row) = row else { break };
                    if let Some(lease) = rows::acquired_lease(&row, lease_id, request)? {
                        return Ok(Some(lease));
                    }
                    if step == 0 {
                        with_retry!(timed("acquire", limit, async {
                            sqlx::query(sql::RECLAIM_POOL)
                                .bind(pool_name)
                                .execute(&mut **conn)
                                .await
                                .map_err(|e| map_sqlx("acquire", e))
                        }))?;
                    }
                }
                continue;
            }
            // The common path first; only when its pick is held by expired
            // leases (a row without a lease) the statement that reclaims,
            // built only then: it is not the hot path.
            let builders: [fn(Selector, &str, Lock) -> String; 2] =
                [sql::acquire_statement, sql::reclaiming_acquire_statement];
            for (step, build) in builders.into_iter().enumerate() {
                let statement: Arc<str> = if step == 0 && lock == Lock::SkipLocked && plain {
                    sql::unfiltered_acquire_statement(request.selector)
                } else {
                    Arc::from(build(request.selector, &filter_sql, lock))
                };
                let row = with_retry!(timed("acquire", limit, async {
                    let query = sqlx::query(AssertSqlSafe(Arc::clone(&statement)))
                        .bind(pool_name)
                        .bind(request.consumer_id.0)
                        .bind(ttl)
                        .bind(lease_id.0);
                    binds
                        .bind_to(query)
                        .fetch_optional(&mut **conn)
                        .await
                        .map_err(|e| map_sqlx("acquire", e))
                }))?;
                let Some(row) = row else { break };
                if let Some(lease) = rows::acquired_lease(&row, lease_id, request)? {
                    return Ok(Some(lease));
                }
            }
        }
        Ok(None)
    }

    /// The lease a repeated acquire with the caller's id finds: the one an
    /// earlier call made, if it belongs to this request's pool and consumer.
    pub(super) async fn repeated_lease(
        &self,
        lease_id: LeaseId,
        request: &AcquireRequest,
    ) -> StorageResult<Option<Lease>> {
        let Some(lease) = self.fetch_lease(lease_id).await? else {
            return Ok(None);
        };
        if *lease.pool_name != *request.pool_name || lease.consumer_id != request.consumer_id {
            return Err(StorageError::Conflict(format!(
                "lease id {lease_id} is taken by another pool or consumer"
            )));
        }
        Ok(Some(lease))
    }

    /// What an acquire that lost its reply came to. Its connection's server
    /// process is stopped first (see [`crate::hot::FENCE`]), then the lease
    /// is looked up on another connection: `Ok(Some)` it exists, `Ok(None)`
    /// it does not and never will. Tried again while the database is out of
    /// reach, up to `resolve_timeout`; then `Err`: unknown.
    pub(super) async fn resolve_acquire(
        &self,
        lease_id: LeaseId,
        backend: Backend,
        request: &AcquireRequest,
    ) -> Result<Option<Lease>, StorageError> {
        let deadline = tokio::time::Instant::now() + self.resolve_timeout;
        let mut attempt = 1;
        loop {
            let looked_up = timed("acquire", self.query_timeout, async {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| map_sqlx("acquire", e))?;
                backend
                    .fence(&mut conn)
                    .await
                    .map_err(|e| map_sqlx("acquire", e))?;
                drop(conn);
                self.repeated_lease(lease_id, request).await
            })
            .await;
            match looked_up {
                Err(e) if is_lost_connection(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(lease = %lease_id, attempt, error = %e, "acquire outcome unknown yet");
                    crate::error::backoff(attempt.min(7)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Releases the leases whose acquire lost its reply and could not be
    /// resolved then (see [`Unresolved`]). A load of one flag when there are
    /// none.
    pub(crate) async fn settle_unresolved(&self) {
        if !self.unresolved.is_pending() {
            return;
        }
        for (lease_id, backend) in self.unresolved.take() {
            let released = timed("release", self.query_timeout, async {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| map_sqlx("release", e))?;
                backend
                    .fence(&mut conn)
                    .await
                    .map_err(|e| map_sqlx("release", e))?;
                sqlx::query(AssertSqlSafe(self.release_sql))
                    .bind(lease_id.0)
                    .bind(sql::ACTIVE)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map_sqlx("release", e))
            })
            .await;
            match released {
                Ok(done) => tracing::info!(
                    lease = %lease_id,
                    released = done.rows_affected(),
                    "released a lease whose acquire had lost its reply"
                ),
                Err(e) => {
                    tracing::debug!(lease = %lease_id, error = %e, "unresolved lease not released yet");
                    self.unresolved.push(lease_id, backend);
                }
            }
        }
    }
}
