//! Opening the pool: probing the server first so a bad address, a refused
//! or timed-out connection and bad credentials each get a readable error.

use super::*;

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
}

pub(super) fn invalid_config(e: crate::ConfigError) -> StorageError {
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
pub(super) async fn probe_connection(
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
pub(super) fn connect_timed_out(config: &PostgresConfig, target: &str) -> StorageError {
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
pub(super) fn connect_failed(
    config: &PostgresConfig,
    target: &str,
    err: sqlx::Error,
) -> StorageError {
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
pub(super) fn io_reason(err: &std::io::Error) -> String {
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
