//! [`PostgresStorage`]: the [`ProxyStorage`] port on PostgreSQL.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, HealthRecordId, Lease, LeaseId,
    Outcome, PoolId, PoolOverview, PoolStats, Proxy, ProxyFilter, ProxyId, ProxyPool, Selector,
    TargetBan, UsagePolicy, ValidationError, truncate_to_micros, validate_name, validate_ttl,
};
use pharox_ports::{
    AcquireRequest, ProxyStorage, ReleaseOutcome, ReleasedLease, StorageError, StorageResult,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sea_orm::sqlx::{self, AssertSqlSafe, ConnectOptions as _, Row};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseConnectionType, EntityTrait,
    QueryFilter, QueryOrder, SqlxPostgresConnector,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::PostgresConfig;
use crate::entities::proxy_pool;
use crate::error::{map_db, map_sqlx, with_retry};
use crate::hot::{Backend, HotConnection, Stash, Unresolved, is_lost_connection, timed};
use crate::rows;
use crate::sql::{self, Binds, Lock, Predicates};
use crate::usage_sql;

/// How many candidates the predicate path locks and tests per round trip.
const PREDICATE_BATCH: usize = 32;

/// How many times a hot-path call runs its statement when the connection
/// keeps breaking under it. One retry is not enough where every connection
/// of an application is terminated at once, repeatedly: the retry's fresh
/// connection can be among the next batch.
pub(crate) const LOST_CONNECTION_TRIES: u32 = 3;

/// Proxy storage on PostgreSQL (see the crate docs for the design).
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStorage {
    db: DatabaseConnection,
    pub(crate) pool: PgPool,
    pub(crate) stash: Arc<Stash>,
    unresolved: Arc<Unresolved>,
    /// [`sql::RELEASE`], or [`sql::RELEASE_DURABLE`] with `durable_release`.
    pub(crate) release_sql: &'static str,
    /// [`PostgresConfig::query_timeout`].
    pub(crate) query_timeout: Duration,
    /// How long an acquire (or an outcome report) that lost its reply keeps
    /// trying to learn its outcome ([`PostgresConfig::acquire_timeout`]).
    pub(crate) resolve_timeout: Duration,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("pool_size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .finish_non_exhaustive()
    }
}

fn ttl_micros(ttl: Duration) -> f64 {
    // validate_ttl caps TTLs at 30 days: exact in an f64.
    ttl.as_micros() as f64
}

fn release_sql(durable: bool) -> &'static str {
    if durable {
        sql::RELEASE_DURABLE
    } else {
        sql::RELEASE
    }
}

fn invalid_config(e: crate::ConfigError) -> StorageError {
    StorageError::Invalid(match e {
        crate::ConfigError::Invalid { field, reason } => {
            ValidationError::new(format!("database.{field}"), reason)
        }
        missing @ crate::ConfigError::Missing => {
            ValidationError::new("database", missing.to_string())
        }
    })
}

/// Opens one connection as `options` say, once (no retry), within
/// `config.connect_timeout`, and closes it again: the check behind
/// [`PostgresStorage::connect`]'s plain-worded errors.
async fn probe_connection(
    options: &PgConnectOptions,
    config: &PostgresConfig,
    target: &str,
) -> Result<(), StorageError> {
    let attempt = async {
        let connection = sqlx::ConnectOptions::connect(options).await?;
        // The connection worked; a failed goodbye changes nothing.
        let _ = sqlx::Connection::close(connection).await;
        Ok::<(), sqlx::Error>(())
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Err(_) => Err(connect_timed_out(config, target)),
        Ok(Err(e)) => Err(connect_failed(config, target, e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// `connect_timeout` passed without a connection (retryable).
fn connect_timed_out(config: &PostgresConfig, target: &str) -> StorageError {
    StorageError::Unavailable {
        message: format!(
            "cannot connect to {target}: timed out after {:?} (connect_timeout) without an \
             answer; is the host right, and does a firewall drop the packets?",
            config.connect_timeout
        ),
        source: None,
    }
}

/// A failed connection attempt, in plain words where the cause is known,
/// classified as [`map_sqlx`] does (unreachable: retryable `Unavailable`;
/// turned down by the server: `Backend`). For the common causes the words
/// are ours, not the server's (whose messages quote the user name).
fn connect_failed(config: &PostgresConfig, target: &str, err: sqlx::Error) -> StorageError {
    let reason = match &err {
        sqlx::Error::Io(io) => Some(io_reason(io)),
        sqlx::Error::Tls(tls) => Some(format!(
            "TLS failed ({tls}); check sslmode, sslrootcert, sslcert and sslkey"
        )),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => {
                Some("password authentication failed; check the user name and password".to_owned())
            }
            Some("28000") => Some(
                "the server refused the login (no such role, or no pg_hba.conf entry for this \
                 host, user and database)"
                    .to_owned(),
            ),
            Some("3D000") => Some(format!("database \"{}\" does not exist", config.database)),
            Some("53300") => Some("the server has too many connections".to_owned()),
            Some("57P03") => Some("the server is starting up or shutting down".to_owned()),
            _ => None,
        },
        _ => None,
    };
    let reword = |message: String| match &reason {
        Some(reason) => format!("cannot connect to {target}: {reason}"),
        None => format!("cannot connect to {target}: {message}"),
    };
    match map_sqlx("connecting", err) {
        StorageError::Unavailable { message, source } => StorageError::Unavailable {
            message: reword(message),
            source,
        },
        StorageError::Backend { message, source } => StorageError::Backend {
            message: reword(message),
            source,
        },
        StorageError::Transient { message, source } => StorageError::Transient {
            message: reword(message),
            source,
        },
        other => other,
    }
}

/// What an I/O error while connecting means, in words.
fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens there: is PostgreSQL running, on this port?)"
                .to_owned()
        }
        ErrorKind::TimedOut => "timed out (no answer from the host)".to_owned(),
        ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => {
            "the server closed the connection during start-up (is it PostgreSQL, and not \
             shutting down?)"
                .to_owned()
        }
        ErrorKind::PermissionDenied => "permission denied".to_owned(),
        // Name resolution errors have no kind of their own; std and tokio
        // word them like this.
        _ if err.to_string().contains("failed to lookup address") => {
            "host not found (the name does not resolve)".to_owned()
        }
        _ => format!("cannot reach the database ({err})"),
    }
}

impl PostgresStorage {
    /// Opens a connection pool as `config` says and checks that one
    /// connection works.
    ///
    /// An unreachable server gives [`StorageError::Unavailable`] (retryable)
    /// within `config.connect_timeout`, saying what happened ("connection
    /// refused", "host not found", "timed out") and naming `host:port`; a
    /// refused connection fails at once, without waiting for a timeout. A
    /// server that answers but turns the connection down gives
    /// [`StorageError::Backend`] in plain words ("password authentication
    /// failed", "database \"x\" does not exist"); a bad configuration gives
    /// [`StorageError::Invalid`]. No message contains the password. This does
    /// not migrate; run `pharox migrate` (or [`pharox_migration::run`]) first.
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StorageError> {
        config.validate().map_err(invalid_config)?;
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&config.host)
            .port(config.port)
            .username(&config.user)
            .database(&config.database)
            .ssl_mode(config.ssl_mode.into());
        if let Some(path) = &config.ssl_root_cert {
            options = options.ssl_root_cert(path);
        }
        if let Some(path) = &config.ssl_client_cert {
            options = options.ssl_client_cert(path);
        }
        if let Some(path) = &config.ssl_client_key {
            options = options.ssl_client_key(path);
        }
        if let Some(password) = &config.password {
            options = options.password(password);
        }
        if let Some(name) = &config.application_name {
            options = options.application_name(name);
        }
        // Start-up parameters: no extra round trip per connection.
        if let Some(schema) = &config.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        if config.prefer_index_scans {
            options = options.options([("enable_seqscan", "off")]);
        }
        options = if config.sql_logging {
            match config.sql_log_level.as_str().parse() {
                Ok(level) => options.log_statements(level),
                Err(_) => options,
            }
        } else {
            options.disable_statement_logging()
        };
        let pool_options = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_before_acquire(config.test_before_acquire);
        let target = config.host_port();
        // One connection of our own first, outside the pool: the pool would
        // retry a refused connection until `acquire_timeout` and then say
        // only that it timed out. The pool's own first connection then shares
        // what is left of `connect_timeout`.
        let started = Instant::now();
        probe_connection(&options, config, &target).await?;
        let remaining = config.connect_timeout.saturating_sub(started.elapsed());
        let pool = match tokio::time::timeout(remaining, pool_options.connect_with(options)).await {
            Err(_) => return Err(connect_timed_out(config, &target)),
            Ok(Err(e)) => return Err(connect_failed(config, &target, e)),
            Ok(Ok(pool)) => pool,
        };
        tracing::debug!(database = %config, "connected to PostgreSQL");
        Ok(Self {
            db: SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
            stash: Arc::new(Stash::for_pool(&pool)),
            unresolved: Arc::default(),
            pool,
            release_sql: release_sql(config.durable_release),
            query_timeout: config.query_timeout,
            resolve_timeout: config.acquire_timeout,
        })
    }

    /// Wraps an existing SeaORM connection; it must be a PostgreSQL (sqlx)
    /// pool, else [`StorageError::Backend`].
    pub fn from_connection(db: DatabaseConnection) -> Result<Self, StorageError> {
        if !matches!(
            db.inner,
            DatabaseConnectionType::SqlxPostgresPoolConnection(_)
        ) {
            return Err(StorageError::Backend {
                message: "PostgresStorage needs a PostgreSQL (sqlx) connection".to_owned(),
                source: None,
            });
        }
        let pool = db.get_postgres_connection_pool().clone();
        let stash = Arc::new(Stash::for_pool(&pool));
        let defaults = PostgresConfig::new("", "", "");
        Ok(Self {
            db,
            pool,
            stash,
            unresolved: Arc::default(),
            release_sql: release_sql(false),
            query_timeout: defaults.query_timeout,
            resolve_timeout: defaults.acquire_timeout,
        })
    }

    /// Whether a release waits for its commit to reach disk; see
    /// [`PostgresConfig::durable_release`] (default false).
    #[must_use]
    pub fn with_durable_release(mut self, durable: bool) -> Self {
        self.release_sql = release_sql(durable);
        self
    }

    /// The SeaORM connection, for the entities in [`crate::entities`] and
    /// for migrations.
    #[must_use]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The sqlx pool under the SeaORM connection.
    #[must_use]
    pub fn pg_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every pooled connection (waits for checked-out ones).
    pub async fn close(&self) {
        self.settle_unresolved().await;
        self.stash.drain();
        self.pool.close().await;
    }

    /// A connection for a hot-path call (see [`Stash::checkout`]). Give it
    /// back with `self.stash.put` once the call has succeeded.
    pub(crate) async fn checkout(&self, context: &'static str) -> StorageResult<HotConnection> {
        self.stash
            .checkout(&self.pool, context, self.query_timeout)
            .await
    }

    /// How many connections the hot path keeps checked out between calls
    /// right now (see the crate README).
    #[must_use]
    pub fn kept_connections(&self) -> usize {
        self.stash.lock().len()
    }

    /// How many leases whose acquire lost its reply wait to be released
    /// (see the crate README's section on faults); 0 in normal operation.
    #[must_use]
    pub fn unresolved_leases(&self) -> usize {
        self.unresolved.len()
    }

    /// Every proxy of `pool_id` that `filter` selects in SQL, by id, with
    /// predicates counting as true and whatever the proxy's status or load:
    /// the set `ProxyFilter::matches_without_predicates` defines. For
    /// checking the filter compiler (and for admin listings).
    pub async fn list_matching(
        &self,
        pool_id: PoolId,
        filter: &ProxyFilter,
    ) -> StorageResult<Vec<Proxy>> {
        filter.validate()?;
        let mut binds = Binds::after(1);
        let filter_sql = sql::compile_filter(filter, Predicates::AsTrue, &mut binds);
        let statement = sql::matching_statement(&filter_sql);
        let query = binds.bind_to(sqlx::query(AssertSqlSafe(statement)).bind(pool_id.0));
        let found = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_matching", e))?;
        found.iter().map(rows::proxy).collect()
    }

    async fn check_consumer(&self, consumer_id: ConsumerId) -> StorageResult<()> {
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
    async fn acquire_with_predicates(
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

    async fn acquire_with_predicates_locking(
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
    async fn acquire_unfiltered_or_compiled(
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
    async fn repeated_lease(
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
    async fn resolve_acquire(
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

    /// The release statement on a hot connection: the released lease's row,
    /// or none when it was not active.
    async fn release_on(
        &self,
        conn: &mut HotConnection,
        lease_id: LeaseId,
    ) -> StorageResult<Option<PgRow>> {
        with_retry!(timed("release", self.query_timeout, async {
            sqlx::query(AssertSqlSafe(self.release_sql))
                .bind(lease_id.0)
                .bind(sql::ACTIVE)
                .fetch_optional(&mut **conn)
                .await
                .map_err(|e| map_sqlx("release", e))
        }))
    }

    /// What a release that released nothing says: the lease was released
    /// before (by a caller or a reclaim), or it is unknown.
    pub(crate) async fn not_released(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        let released_at: Option<Option<OffsetDateTime>> =
            timed("release", self.query_timeout, async {
                sqlx::query_scalar("SELECT released_at FROM lease WHERE id = $1")
                    .bind(lease_id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx("release", e))
            })
            .await?;
        match released_at {
            Some(released_at) => Ok(ReleaseOutcome::AlreadyReleased {
                lease_id,
                released_at,
            }),
            None => Err(StorageError::not_found("lease", lease_id)),
        }
    }

    async fn fetch_lease(&self, lease_id: LeaseId) -> StorageResult<Option<Lease>> {
        let statement = format!(
            "SELECT {}, {} FROM lease l JOIN proxy p ON p.id = l.proxy_id WHERE l.id = $1",
            sql::lease_columns("l"),
            sql::PROXY_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(lease_id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("get_lease", e))?;
        row.as_ref().map(rows::lease).transpose()
    }

    async fn upsert_proxies(
        &self,
        proxies: &[Proxy],
        context: &'static str,
    ) -> StorageResult<Vec<Proxy>> {
        let mut ids = Vec::with_capacity(proxies.len());
        let mut pool_ids = Vec::with_capacity(proxies.len());
        let mut hosts = Vec::with_capacity(proxies.len());
        let mut ports = Vec::with_capacity(proxies.len());
        let mut protocols = Vec::with_capacity(proxies.len());
        let mut statuses = Vec::with_capacity(proxies.len());
        let mut credentials = Vec::with_capacity(proxies.len());
        let mut sources = Vec::with_capacity(proxies.len());
        let mut countries = Vec::with_capacity(proxies.len());
        let mut cities = Vec::with_capacity(proxies.len());
        let mut latitudes = Vec::with_capacity(proxies.len());
        let mut longitudes = Vec::with_capacity(proxies.len());
        let mut isps = Vec::with_capacity(proxies.len());
        let mut asns = Vec::with_capacity(proxies.len());
        let mut limits = Vec::with_capacity(proxies.len());
        let mut created = Vec::with_capacity(proxies.len());
        for (i, p) in proxies.iter().enumerate() {
            // Python pharox 0.11 workers reading the row refuse a password
            // that is only whitespace (the domain refuses only an empty
            // one): such a proxy would fail every Python acquire that
            // reaches it, so it is not written.
            if p.credentials
                .as_ref()
                .is_some_and(|c| c.password.chars().all(char::is_whitespace))
            {
                let error = ValidationError::new(
                    "credentials.password",
                    "must not be only whitespace (Python pharox workers sharing the \
                     database cannot read such a proxy)",
                );
                return Err(StorageError::Invalid(if context == "add_proxies" {
                    error.within(&format!("proxies[{i}]"))
                } else {
                    error
                }));
            }
            ids.push(p.id.0);
            pool_ids.push(p.pool_id.0);
            hosts.push(p.host.clone());
            ports.push(i32::from(p.port));
            protocols.push(p.protocol.as_str().to_owned());
            statuses.push(p.status.as_str().to_owned());
            credentials.push(
                p.credentials
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|_| {
                        StorageError::Invalid(ValidationError::new(
                            "credentials",
                            "cannot be encoded",
                        ))
                    })?,
            );
            sources.push(p.source.clone());
            countries.push(p.country.clone());
            cities.push(p.city.clone());
            latitudes.push(p.latitude);
            longitudes.push(p.longitude);
            isps.push(p.isp.clone());
            asns.push(p.asn.map(i64::from));
            limits.push(
                p.max_concurrency
                    .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            );
            created.push(truncate_to_micros(p.created_at));
        }
        let statement = format!(
            "INSERT INTO proxy AS p (id, pool_id, host, port, protocol, status, credentials, source, \
               country, city, latitude, longitude, isp, asn, max_concurrency, current_leases, created_at, \
               checked_at) \
             SELECT t.id, t.pool_id, t.host, t.port, t.protocol, t.status, t.credentials::json, \
               t.source, t.country, t.city, t.latitude, t.longitude, t.isp, t.asn, t.max_concurrency, \
               0, t.created_at, $17::timestamptz \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::float8[], \
               $13::text[], $14::int8[], $15::int4[], $16::timestamptz[]) \
               AS t(id, pool_id, host, port, protocol, status, credentials, source, country, city, \
                    latitude, longitude, isp, asn, max_concurrency, created_at) \
             ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, \
               protocol = EXCLUDED.protocol, status = EXCLUDED.status, \
               credentials = EXCLUDED.credentials, source = EXCLUDED.source, \
               country = EXCLUDED.country, city = EXCLUDED.city, latitude = EXCLUDED.latitude, \
               longitude = EXCLUDED.longitude, isp = EXCLUDED.isp, asn = EXCLUDED.asn, \
               max_concurrency = EXCLUDED.max_concurrency \
             WHERE p.pool_id = EXCLUDED.pool_id \
             RETURNING {}",
            sql::PROXY_COLUMNS
        );
        let expected = proxies.len();
        let saved = with_retry!(async {
            let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(context, e))?;
            let result = sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(&ids)
                .bind(&pool_ids)
                .bind(&hosts)
                .bind(&ports)
                .bind(&protocols)
                .bind(&statuses)
                .bind(&credentials)
                .bind(&sources)
                .bind(&countries)
                .bind(&cities)
                .bind(&latitudes)
                .bind(&longitudes)
                .bind(&isps)
                .bind(&asns)
                .bind(&limits)
                .bind(&created)
                // A new proxy is never checked: the stored marker for that,
                // which Python can read (see `rows::NEVER_CHECKED`). An
                // update keeps the stored `checked_at`.
                .bind(rows::NEVER_CHECKED)
                .fetch_all(&mut *tx)
                .await;
            let found = match result {
                Ok(found) => found,
                Err(e) => {
                    return Err(match map_sqlx(context, e) {
                        StorageError::NotFound { entity: "pool", .. } => {
                            let known = self.missing_pool(&pool_ids).await;
                            StorageError::not_found("pool", known)
                        }
                        other => other,
                    });
                }
            };
            if found.len() != expected {
                // Some id exists in another pool; the transaction is rolled
                // back when `tx` drops, so nothing is written.
                return Err(StorageError::Conflict(
                    "a proxy cannot move to another pool".to_owned(),
                ));
            }
            let saved = found
                .iter()
                .map(rows::proxy)
                .collect::<StorageResult<Vec<_>>>()?;
            tx.commit().await.map_err(|e| map_sqlx(context, e))?;
            Ok(saved)
        })?;
        // RETURNING order is not guaranteed: give them back in input order.
        let mut by_id: std::collections::HashMap<ProxyId, Proxy> =
            saved.into_iter().map(|p| (p.id, p)).collect();
        Ok(proxies.iter().filter_map(|p| by_id.remove(&p.id)).collect())
    }

    /// The first of `pool_ids` that does not exist (for a not-found message).
    async fn missing_pool(&self, pool_ids: &[Uuid]) -> String {
        let found: Result<Option<Uuid>, _> = sqlx::query_scalar(
            "SELECT x FROM UNNEST($1::uuid[]) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM proxy_pool WHERE id = x) LIMIT 1",
        )
        .bind(pool_ids)
        .fetch_optional(&self.pool)
        .await;
        match found {
            Ok(Some(id)) => id.to_string(),
            _ => "of the proxy".to_owned(),
        }
    }
}

fn pool_from_model(m: proxy_pool::Model) -> ProxyPool {
    ProxyPool {
        id: m.id.into(),
        name: m.name,
        description: m.description,
        created_at: m.created_at,
    }
}

pub(crate) fn released_from_row(row: &PgRow, lease_id: LeaseId) -> StorageResult<ReleasedLease> {
    let get = |e| map_sqlx("release", e);
    Ok(ReleasedLease {
        lease_id,
        proxy_id: row.try_get::<Uuid, _>("proxy_id").map_err(get)?.into(),
        pool_id: row.try_get::<Uuid, _>("pool_id").map_err(get)?.into(),
        consumer_id: row.try_get::<Uuid, _>("consumer_id").map_err(get)?.into(),
        acquired_at: row.try_get("acquired_at").map_err(get)?,
        released_at: row.try_get("released_at").map_err(get)?,
    })
}

#[async_trait]
impl ProxyStorage for PostgresStorage {
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool> {
        pool.validate()?;
        let model = proxy_pool::ActiveModel {
            id: Set(pool.id.0),
            name: Set(pool.name.clone()),
            description: Set(pool.description.clone()),
            created_at: Set(truncate_to_micros(pool.created_at)),
        };
        let saved = proxy_pool::Entity::insert(model)
            .on_conflict(
                OnConflict::column(proxy_pool::Column::Id)
                    .update_columns([proxy_pool::Column::Name, proxy_pool::Column::Description])
                    .to_owned(),
            )
            .exec_with_returning(&self.db)
            .await
            .map_err(|e| match map_db("save_pool", e) {
                StorageError::Conflict(_) => {
                    StorageError::Conflict(format!("pool name {:?} is taken", pool.name))
                }
                other => other,
            })?;
        Ok(pool_from_model(saved))
    }

    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool> {
        proxy_pool::Entity::find_by_id(id.0)
            .one(&self.db)
            .await
            .map_err(|e| map_db("get_pool", e))?
            .map(pool_from_model)
            .ok_or_else(|| StorageError::not_found("pool", id))
    }

    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool> {
        proxy_pool::Entity::find()
            .filter(proxy_pool::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(|e| map_db("get_pool_by_name", e))?
            .map(pool_from_model)
            .ok_or_else(|| StorageError::not_found("pool", name))
    }

    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>> {
        Ok(proxy_pool::Entity::find()
            .order_by_asc(proxy_pool::Column::Name)
            .all(&self.db)
            .await
            .map_err(|e| map_db("list_pools", e))?
            .into_iter()
            .map(pool_from_model)
            .collect())
    }

    async fn delete_pool(&self, id: PoolId) -> StorageResult<()> {
        // Proxies, their leases and health records, and the selector state
        // go by ON DELETE CASCADE.
        let result = with_retry!(async {
            proxy_pool::Entity::delete_by_id(id.0)
                .exec(&self.db)
                .await
                .map_err(|e| map_db("delete_pool", e))
        })?;
        if result.rows_affected == 0 {
            return Err(StorageError::not_found("pool", id));
        }
        Ok(())
    }

    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy> {
        proxy.validate()?;
        let mut saved = self
            .upsert_proxies(std::slice::from_ref(proxy), "save_proxy")
            .await?;
        saved.pop().ok_or_else(|| StorageError::Backend {
            message: "save_proxy: the database returned no row".to_owned(),
            source: None,
        })
    }

    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>> {
        let mut ids = HashSet::with_capacity(proxies.len());
        for (i, proxy) in proxies.iter().enumerate() {
            proxy
                .validate()
                .map_err(|e| e.within(&format!("proxies[{i}]")))?;
            if !ids.insert(proxy.id) {
                return Err(ValidationError::new(
                    format!("proxies[{i}].id"),
                    "appears twice in one batch",
                )
                .into());
            }
        }
        if proxies.is_empty() {
            return Ok(Vec::new());
        }
        self.upsert_proxies(proxies, "add_proxies").await
    }

    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy> {
        let statement = format!("SELECT {} FROM proxy p WHERE p.id = $1", sql::PROXY_COLUMNS);
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("get_proxy", e))?;
        match row {
            Some(row) => rows::proxy(&row),
            None => Err(StorageError::not_found("proxy", id)),
        }
    }

    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>> {
        let statement = format!(
            "SELECT {} FROM proxy p WHERE p.pool_id = $1 ORDER BY p.id",
            sql::PROXY_COLUMNS
        );
        let found = sqlx::query(AssertSqlSafe(statement))
            .bind(pool_id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_proxies", e))?;
        if found.is_empty() {
            self.get_pool(pool_id).await?;
        }
        found.iter().map(rows::proxy).collect()
    }

    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()> {
        let result = with_retry!(async {
            sqlx::query("DELETE FROM proxy WHERE id = $1")
                .bind(id.0)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx("delete_proxy", e))
        })?;
        if result.rows_affected() == 0 {
            return Err(StorageError::not_found("proxy", id));
        }
        Ok(())
    }

    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId> {
        validate_name("consumer.name", name)?;
        // The statement's snapshot may miss a row a racing insert committed
        // while ON CONFLICT waited for it; the next attempt sees it.
        for _ in 0..3 {
            let id: Option<Uuid> = sqlx::query_scalar(
                "WITH ins AS (INSERT INTO consumer (id, name, created_at) VALUES ($1, $2, now()) \
                   ON CONFLICT (name) DO NOTHING RETURNING id) \
                 SELECT id FROM ins UNION ALL SELECT id FROM consumer WHERE name = $2 LIMIT 1",
            )
            .bind(ConsumerId::new().0)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("ensure_consumer", e))?;
            if let Some(id) = id {
                return Ok(id.into());
            }
        }
        Err(StorageError::Transient {
            message: format!("ensure_consumer: consumer {name:?} kept racing"),
            source: None,
        })
    }

    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>> {
        request.validate()?;
        self.settle_unresolved().await;
        let lease_id = request.lease_id.unwrap_or_default();
        // A lost connection costs another try on a fresh one, after the
        // lost try's outcome is known (it may have leased).
        let mut tries = 1;
        loop {
            let mut conn = self.checkout("acquire").await?;
            let backend = conn.backend;
            let result = if request.filter.has_predicate() {
                self.acquire_with_predicates(&mut conn, request, lease_id)
                    .await
            } else {
                self.acquire_unfiltered_or_compiled(&mut conn, request, lease_id)
                    .await
            };
            match result {
                Ok(Some(lease)) => {
                    self.stash.put(conn);
                    return Ok(Some(lease));
                }
                Ok(None) => {
                    self.stash.put(conn);
                    // A caller-chosen id may name a lease an earlier call
                    // made (whose reply it never got).
                    if request.lease_id.is_some()
                        && let Some(lease) = self.repeated_lease(lease_id, request).await?
                    {
                        return Ok(Some(lease));
                    }
                    self.check_consumer(request.consumer_id).await?;
                    return Ok(None);
                }
                Err(e) if crate::error::is_duplicate_lease(&e) => {
                    self.stash.put(conn);
                    return match self.repeated_lease(lease_id, request).await? {
                        Some(lease) => Ok(Some(lease)),
                        None => Err(e),
                    };
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    match self.resolve_acquire(lease_id, backend, request).await {
                        Ok(Some(lease)) => return Ok(Some(lease)),
                        Ok(None) if tries < LOST_CONNECTION_TRIES => {
                            tracing::debug!(lease = %lease_id, tries, error = %e, "acquire lost its connection; trying again");
                            tries += 1;
                        }
                        Ok(None) => return Err(e),
                        Err(unknown) => {
                            tracing::warn!(
                                lease = %lease_id,
                                error = %unknown,
                                "acquire lost its reply and its outcome stays unknown; \
                                 the lease, if any, is released when the database answers"
                            );
                            self.unresolved.push(lease_id, backend);
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        self.settle_unresolved().await;
        // Idempotent: a lost connection costs another try on a fresh one.
        let mut tries = 1;
        let row = loop {
            let mut conn = self.checkout("release").await?;
            match self.release_on(&mut conn, lease_id).await {
                Ok(row) => {
                    self.stash.put(conn);
                    break row;
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    if tries >= LOST_CONNECTION_TRIES {
                        return Err(e);
                    }
                    tracing::debug!(lease = %lease_id, tries, error = %e, "release lost its connection; trying again");
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(row) = row {
            return released_from_row(&row, lease_id).map(ReleaseOutcome::Released);
        }
        self.not_released(lease_id).await
    }

    async fn release_with_outcome<'a>(
        &self,
        lease_id: LeaseId,
        outcome: Option<&'a Outcome>,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome> {
        match outcome {
            Some(outcome) => {
                self.release_with_outcome_now(lease_id, outcome, policy)
                    .await
            }
            None => {
                policy.validate()?;
                self.release(lease_id).await
            }
        }
    }

    async fn report_outcome(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy> {
        self.report_outcome_now(lease_id, outcome, policy).await
    }

    async fn list_target_bans(&self, proxy_id: ProxyId) -> StorageResult<Vec<TargetBan>> {
        self.list_target_bans_now(proxy_id).await
    }

    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease> {
        validate_ttl(ttl)?;
        let statement = format!(
            "WITH u AS (UPDATE lease SET expires_at = now() + $2::float8 * interval '1 microsecond' \
               WHERE id = $1 AND status = $3 AND expires_at > now() RETURNING *) \
             SELECT {}, {} FROM u JOIN proxy p ON p.id = (SELECT proxy_id FROM u)",
            sql::lease_columns("u"),
            sql::PROXY_COLUMNS
        );
        // Renewing twice is harmless, so a lost connection costs one more
        // try (sqlx hands out another connection).
        let renew_once = || async {
            with_retry!(timed("renew", self.query_timeout, async {
                sqlx::query(AssertSqlSafe(statement.as_str()))
                    .bind(lease_id.0)
                    .bind(ttl_micros(ttl))
                    .bind(sql::ACTIVE) // a parameter: see sql::ACTIVE
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx("renew", e))
            }))
        };
        let row = match renew_once().await {
            Err(e) if is_lost_connection(&e) => renew_once().await?,
            other => other?,
        };
        if let Some(row) = row {
            return rows::lease(&row);
        }
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM lease WHERE id = $1)")
            .bind(lease_id.0)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx("renew", e))?;
        if exists {
            Err(StorageError::LeaseNotActive(lease_id))
        } else {
            Err(StorageError::not_found("lease", lease_id))
        }
    }

    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease> {
        self.fetch_lease(lease_id)
            .await?
            .ok_or_else(|| StorageError::not_found("lease", lease_id))
    }

    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>> {
        validate_name("pool_name", pool_name)?;
        filter.validate()?;
        let with_predicates = filter.has_predicate();
        let mode = if with_predicates {
            Predicates::Superset
        } else {
            Predicates::AsTrue
        };
        let mut binds = Binds::after(sql::CANDIDATES_FIXED_PARAMS);
        let filter_sql = usage_sql::leasable(
            &sql::compile_filter(filter, mode, &mut binds),
            None,
            &mut binds,
        );
        let statement = sql::candidates_statement(selector, &filter_sql, Lock::None);
        // random's start key, one for every batch of this call.
        let start_key: f64 = rand::random();
        let batch = if with_predicates { PREDICATE_BATCH } else { 1 };
        let mut seen: Vec<Uuid> = Vec::new();
        loop {
            let query = sqlx::query(AssertSqlSafe(statement.as_str()))
                .bind(pool_name)
                .bind(seen.clone())
                .bind(i64::try_from(batch).unwrap_or(1))
                .bind(start_key);
            let found = binds
                .bind_to(query)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx("find_available", e))?;
            for row in &found {
                let mut proxy = rows::proxy(row)?;
                let expired: i32 = row
                    .try_get("expired")
                    .map_err(|e| map_sqlx("find_available", e))?;
                proxy.current_leases = proxy
                    .current_leases
                    .saturating_sub(u32::try_from(expired).unwrap_or(0));
                seen.push(proxy.id.0);
                if !with_predicates || sql::matches(filter, &proxy) {
                    return Ok(Some(proxy));
                }
            }
            if found.len() < batch {
                return Ok(None);
            }
        }
    }

    async fn cleanup_expired(&self) -> StorageResult<u64> {
        let n: i64 = with_retry!(async {
            sqlx::query_scalar(sql::CLEANUP_EXPIRED)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map_sqlx("cleanup_expired", e))
        })?;
        // Sessions past their TTL are never read again.
        with_retry!(async {
            sqlx::query(crate::usage_sql::DELETE_EXPIRED_SESSIONS)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx("cleanup_expired", e))
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        result.validate()?;
        let select = format!(
            "SELECT {} FROM proxy p WHERE p.id = $1 FOR UPDATE",
            sql::PROXY_COLUMNS
        );
        let update = format!(
            "UPDATE proxy p SET status = $2, checked_at = $3, consecutive_failures = $4, \
               last_latency_ms = $5, last_error = $6, last_http_status = $7, \
               error_score = CASE WHEN $8 THEN 0 ELSE p.error_score END, \
               cooldown_until = CASE WHEN $8 THEN NULL ELSE p.cooldown_until END, \
               consecutive_cooldowns = CASE WHEN $8 THEN 0 ELSE p.consecutive_cooldowns END \
             WHERE p.id = $1 RETURNING {}",
            sql::PROXY_COLUMNS
        );
        let checked_at = truncate_to_micros(result.checked_at);
        with_retry!(async {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let row = sqlx::query(AssertSqlSafe(select.as_str()))
                .bind(result.proxy_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let before = rows::proxy(&row)?;
            let outcome = policy.apply(before.status, &before.health, result);
            let row = sqlx::query(AssertSqlSafe(update.as_str()))
                .bind(result.proxy_id.0)
                .bind(outcome.status.as_str())
                .bind(checked_at)
                .bind(i32::try_from(outcome.health.consecutive_failures).unwrap_or(i32::MAX))
                .bind(outcome.health.last_latency_ms)
                .bind(outcome.health.last_error.as_deref())
                .bind(outcome.health.last_http_status.map(i32::from))
                // The policy's outcome ends the cooldown: the usage is reset
                // (bans per target stay).
                .bind(outcome.ends_cooldown)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let after = rows::proxy(&row)?;
            sqlx::query(
                "INSERT INTO proxy_health_record (id, proxy_id, checked_at, reachable, latency_ms, \
                   protocol, status_before, status_after, error, http_status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(HealthRecordId::new().0)
            .bind(result.proxy_id.0)
            .bind(checked_at)
            .bind(result.reachable)
            // Whole milliseconds: Python pharox 0.11 reads this column as an
            // integer and rejects a fraction (the proxy row keeps the exact
            // figure in last_latency_ms).
            .bind(result.latency_ms.map(f64::round))
            .bind(result.protocol.as_str())
            .bind(before.status.as_str())
            .bind(after.status.as_str())
            .bind(result.error.as_deref())
            .bind(result.http_status.map(i32::from))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx("apply_health_result", e))?;
            tx.commit()
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            Ok(Some(after))
        })
    }

    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        Ok(self
            .list_health_records(proxy_id, 1)
            .await?
            .into_iter()
            .next())
    }

    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let statement = format!(
            "SELECT {} FROM proxy_health_record WHERE proxy_id = $1 \
             ORDER BY checked_at DESC, id DESC LIMIT $2",
            sql::HEALTH_COLUMNS
        );
        let found = sqlx::query(AssertSqlSafe(statement))
            .bind(proxy_id.0)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_health_records", e))?;
        found.iter().map(rows::health_record).collect()
    }

    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        validate_name("pool_name", pool_name)?;
        let row = sqlx::query(sql::POOL_STATS)
            .bind(pool_name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("pool_stats", e))?
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let get = |name: &str| -> StorageResult<u64> {
            let v: i64 = row.try_get(name).map_err(|e| map_sqlx("pool_stats", e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(PoolStats {
            pool_id: row
                .try_get::<Uuid, _>("id")
                .map_err(|e| map_sqlx("pool_stats", e))?
                .into(),
            pool_name: row.try_get("name").map_err(|e| map_sqlx("pool_stats", e))?,
            total_proxies: get("total")?,
            active_proxies: get("active")?,
            available_proxies: get("available")?,
            cooling_down_proxies: get("cooling")?,
            leased_proxies: get("leased")?,
            total_leases: get("leases")?,
        })
    }

    async fn pool_overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        self.overview(pool_name).await
    }

    async fn list_leases<'a>(
        &self,
        pool_name: &str,
        consumer: Option<&'a str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        self.active_leases(pool_name, consumer, limit).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pharox_domain::{Proxy, ProxyPool, ProxyProtocol};
    use pharox_ports::{AcquireRequest, ProxyStorage};
    use sea_orm::sqlx::{self, AssertSqlSafe};

    use crate::testing::TestSchema;

    /// A new pool `name` holding one single-slot proxy.
    async fn pool_of_one_proxy(storage: &super::PostgresStorage, name: &str) -> ProxyPool {
        let pool = storage
            .save_pool(&ProxyPool::new(name).unwrap())
            .await
            .unwrap();
        let proxy = Proxy::builder(pool.id, "10.2.0.1", 9000, ProxyProtocol::Http)
            .build()
            .unwrap();
        storage.add_proxies(&[proxy]).await.unwrap();
        pool
    }

    /// What `synchronous_commit` is when the release statement of a storage
    /// has run, read inside that statement's transaction (the setting is
    /// transaction-local, so the commit that follows uses it).
    async fn commit_mode_of_release(storage: &super::PostgresStorage) -> String {
        let pool = pool_of_one_proxy(storage, "commit-mode").await;
        let consumer = storage.ensure_consumer("c").await.unwrap();
        let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let lease = storage.acquire(&request).await.unwrap().unwrap();
        let mut tx = storage.pg_pool().begin().await.unwrap();
        let released = sqlx::query(AssertSqlSafe(storage.release_sql))
            .bind(lease.id.0)
            .bind(crate::sql::ACTIVE)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(released.len(), 1, "the statement released the lease");
        let mode: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        storage.delete_pool(pool.id).await.unwrap();
        mode
    }

    #[tokio::test]
    async fn release_commits_asynchronously_unless_durable() {
        let schema = TestSchema::create().await.unwrap();
        let storage = schema.storage().clone();
        assert_eq!(commit_mode_of_release(&storage).await, "off");
        let server_default: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(storage.pg_pool())
            .await
            .unwrap();
        let durable = storage.with_durable_release(true);
        assert_eq!(
            commit_mode_of_release(&durable).await,
            server_default,
            "a durable release leaves the server's setting alone"
        );
        schema.drop_schema().await.unwrap();
    }

    /// One acquire and release on `storage`'s pool `pool`.
    async fn one_cycle(storage: &super::PostgresStorage, pool: &ProxyPool) {
        let consumer = storage.ensure_consumer("stash").await.unwrap();
        let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
        let lease = storage.acquire(&request).await.unwrap().unwrap();
        storage.release(lease.id).await.unwrap();
    }

    #[tokio::test]
    async fn stash_honours_test_before_acquire_idle_timeout_and_max_lifetime() {
        let schema = TestSchema::create().await.unwrap();
        let pool = pool_of_one_proxy(schema.storage(), "stash").await;

        let mut config = schema.config().clone();
        config.idle_timeout = Some(Duration::from_secs(30));
        config.max_lifetime = Some(Duration::from_secs(60));
        let storage = super::PostgresStorage::connect(&config).await.unwrap();
        one_cycle(&storage, &pool).await;
        assert_eq!(
            storage.stash.lock().len(),
            1,
            "the hot path keeps its connection"
        );
        // Time is moved by rewriting the stash's own timestamps, not slept.
        let ago = |secs| {
            std::time::Instant::now()
                .checked_sub(Duration::from_secs(secs))
                .expect("the monotonic clock reaches back a minute")
        };
        storage.stash.lock()[0].used = ago(31);
        assert!(storage.stash.take().is_none(), "idle past idle_timeout");
        one_cycle(&storage, &pool).await;
        storage.stash.lock()[0].first_kept = ago(61);
        assert!(storage.stash.take().is_none(), "kept past max_lifetime");
        one_cycle(&storage, &pool).await;
        let kept = storage.stash.take().expect("a fresh connection is kept");
        assert!(kept.first_kept.elapsed() < Duration::from_secs(30));
        storage.stash.put(kept);
        storage.close().await;

        config.test_before_acquire = true;
        let tested = super::PostgresStorage::connect(&config).await.unwrap();
        one_cycle(&tested, &pool).await;
        assert!(
            tested.stash.lock().is_empty(),
            "with test_before_acquire every call gets a connection sqlx pinged"
        );
        tested.close().await;
        schema.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_setting_is_invalid_and_names_its_field() {
        let mut config = crate::PostgresConfig::new("127.0.0.1", "db", "u").with_password("pw-x1");
        config.max_connections = 0;
        let e = super::PostgresStorage::connect(&config).await.unwrap_err();
        match e {
            pharox_ports::StorageError::Invalid(v) => {
                assert_eq!(v.field, "database.max_connections");
                assert!(!v.reason.contains("pw-x1"));
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// The generic plan of `statement` (prepared as `name` with `types`),
    /// executed with `args`, on a connection set up like the storage's.
    async fn generic_plan(
        conn: &mut sea_orm::sqlx::PgConnection,
        name: &str,
        types: &str,
        statement: &str,
        args: &str,
    ) -> String {
        let setup = format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE {name} ({types}) AS {statement}"
        );
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(&mut *conn)
            .await
            .unwrap();
        let lines: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE {name} ({args})")))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        lines.join("\n")
    }

    /// The generic plan of first_available's common-path acquire for the
    /// pool named `pool` (prepared afresh under `name`).
    async fn acquire_plan(
        conn: &mut sea_orm::sqlx::PgConnection,
        name: &str,
        pool: &str,
    ) -> String {
        use crate::sql::{self, Lock};
        let statement = sql::acquire_statement(
            pharox_domain::Selector::FirstAvailable,
            "TRUE",
            Lock::SkipLocked,
        );
        let nil = "'00000000-0000-0000-0000-000000000000'";
        generic_plan(
            conn,
            name,
            "text, uuid, float8, uuid",
            &statement,
            &format!("'{pool}', {nil}, 1.0, {nil}"),
        )
        .await
    }

    /// A lease table that was empty at its last VACUUM ANALYZE (a new
    /// database, a deleted pool) makes every plan look equally cheap; the
    /// prepared plans must still read the indexes they were written for,
    /// since a connection keeps them while the table grows.
    #[tokio::test]
    async fn hot_path_plans_survive_empty_statistics() {
        use crate::sql;
        let schema = TestSchema::create().await.unwrap();
        let storage = schema.storage().clone();
        let mut conn = storage.pg_pool().acquire().await.unwrap();
        for table in ["lease", "proxy"] {
            // One statement per call: VACUUM refuses to run in the implicit
            // transaction of a multi-statement query.
            sqlx::raw_sql(AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let nil = "'00000000-0000-0000-0000-000000000000'";

        let release = generic_plan(
            &mut conn,
            "release_plan",
            "uuid, text",
            sql::RELEASE,
            &format!("{nil}, 'active'"),
        )
        .await;
        assert!(release.contains("lease_pkey"), "{release}");
        for other in ["lease_consumer_id_idx", "lease_active_pool_expiry_idx"] {
            assert!(!release.contains(other), "{release}");
        }

        let acquire = acquire_plan(&mut conn, "acquire_empty", "pool").await;
        // The expired-lease probe: a per-row probe of the pool's active
        // leases, never a hashed scan of some other index.
        assert!(
            acquire.contains("lease_active_pool_expiry_idx"),
            "{acquire}"
        );
        for other in [
            "hashed SubPlan",
            "lease_consumer_id_idx",
            "lease_proxy_id_idx",
        ] {
            assert!(!acquire.contains(other), "{other} in {acquire}");
        }

        // Statistics of one big pool: pool_id looks unselective, and the
        // primary key walks proxies in id order too. first_available must
        // still scan its own pool's index, not the whole table by id.
        let big = storage
            .save_pool(&ProxyPool::new("big").unwrap())
            .await
            .unwrap();
        let proxies: Vec<Proxy> = (0..300)
            .map(|i| {
                Proxy::builder(big.id, "10.3.0.1", 10_000 + i, ProxyProtocol::Http)
                    .build()
                    .unwrap()
            })
            .collect();
        storage.add_proxies(&proxies).await.unwrap();
        sqlx::raw_sql("VACUUM ANALYZE proxy")
            .execute(&mut *conn)
            .await
            .unwrap();
        let acquire = acquire_plan(&mut conn, "acquire_big_pool", "small").await;
        assert!(acquire.contains("proxy_available_idx"), "{acquire}");
        assert_eq!(
            acquire.matches("proxy_pkey").count(),
            1,
            "only the update of the picked proxy goes by primary key: {acquire}"
        );
        drop(conn);
        schema.drop_schema().await.unwrap();
    }
}
