//! Connection settings: from a DSN, from environment variables, or by hand.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// How the connection uses TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, with the certificate checked against the trusted CAs.
    VerifyCa,
    /// TLS, with the certificate and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`"verify-full"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(Self::Disable),
            "allow" => Ok(Self::Allow),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" | "verify_ca" => Ok(Self::VerifyCa),
            "verify-full" | "verify_full" => Ok(Self::VerifyFull),
            _ => Err(ConfigError::invalid(
                "sslmode",
                "must be one of disable, allow, prefer, require, verify-ca, verify-full",
            )),
        }
    }
}

impl From<SslMode> for sea_orm::sqlx::postgres::PgSslMode {
    fn from(mode: SslMode) -> Self {
        match mode {
            SslMode::Disable => Self::Disable,
            SslMode::Allow => Self::Allow,
            SslMode::Prefer => Self::Prefer,
            SslMode::Require => Self::Require,
            SslMode::VerifyCa => Self::VerifyCa,
            SslMode::VerifyFull => Self::VerifyFull,
        }
    }
}

/// A configuration value was missing or wrong. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither a DSN nor a host was given.
    #[error(
        "no database configured: set PHAROX_DATABASE_URL (postgres://user:pass@host:5432/db) \
         or PHAROX_PG_HOST and friends"
    )]
    Missing,
    /// A value could not be used.
    #[error("invalid database setting {field}: {reason}")]
    Invalid {
        /// The setting (a DSN part, a query parameter or an env var name).
        field: String,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Where the database is and how to pool connections to it.
///
/// Build it with [`from_dsn`](Self::from_dsn), [`from_env`](Self::from_env)
/// or [`new`](Self::new) and adjust the public fields. `Debug` and `Display`
/// never show the password (`Display` gives the DSN with `***` for the user
/// name and password).
#[derive(Clone, PartialEq)]
pub struct PostgresConfig {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 5432).
    pub port: u16,
    /// Database name (default: the user name).
    pub database: String,
    /// User name (default `postgres`).
    pub user: String,
    /// Password, if the server asks for one. Never printed.
    pub password: Option<String>,
    /// TLS mode (default prefer).
    pub ssl_mode: SslMode,
    /// PEM file of the certificate authorities that `verify-ca` and
    /// `verify-full` trust (libpq's `sslrootcert`); `None`: the system's.
    pub ssl_root_cert: Option<PathBuf>,
    /// PEM file of a client certificate to present (libpq's `sslcert`).
    pub ssl_client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (libpq's `sslkey`).
    pub ssl_client_key: Option<PathBuf>,
    /// Schema to use: becomes the session's `search_path` (sent at
    /// connection start-up, no extra round trip). `None`: the server's default.
    pub schema: Option<String>,
    /// `application_name` reported to the server (default `pharox`).
    pub application_name: Option<String>,
    /// Most pooled connections (default 10).
    pub max_connections: u32,
    /// Connections kept open even when idle (default 0).
    pub min_connections: u32,
    /// Limit for opening the first connection in [`PostgresStorage::connect`](crate::PostgresStorage::connect)
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// Limit for getting a connection from the pool, including opening a new
    /// one (default 10 s).
    pub acquire_timeout: Duration,
    /// Limit for one statement's round trip on the lease hot path (acquire,
    /// release, renew), measured on the client (default 30 s). A connection
    /// that stalls fails the call with a retryable
    /// [`StorageError::Unavailable`](pharox_ports::StorageError::Unavailable)
    /// within this time; an acquire whose outcome it leaves unknown is
    /// resolved (see [`PostgresStorage::acquire`](crate::PostgresStorage)).
    pub query_timeout: Duration,
    /// Close connections idle this long (default 10 min; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close connections this old (default 30 min; `None`: never). acquire
    /// and release keep their connection between calls; a kept connection
    /// goes back to the pool, which closes it when too old, at most this
    /// long after it was first kept (sqlx does not tell a connection's age),
    /// so a connection lives at most about twice this.
    pub max_lifetime: Option<Duration>,
    /// Ping every connection before handing it out (default false: that is
    /// one more round trip per call; a dead connection instead fails the
    /// call with a retryable [`StorageError::Unavailable`](pharox_ports::StorageError::Unavailable)).
    /// With it on, acquire and release no longer keep their connection
    /// between calls, so every call gets a connection just pinged.
    pub test_before_acquire: bool,
    /// Wait for a release's commit to reach disk (default false).
    ///
    /// A release commits asynchronously by default (`synchronous_commit =
    /// off` for that one transaction): it is visible to every worker at once
    /// and reaches disk within a few milliseconds, but its caller does not
    /// wait for the WAL flush. A release lost in a server crash only leaves
    /// the lease to expire at its TTL, as if the worker had died; and a later
    /// acquire that reuses the freed capacity flushes the WAL up to its own
    /// commit, so it is never durable without the release it depends on.
    /// Acquire always commits synchronously (a lost lease would over-lease).
    pub durable_release: bool,
    /// Start every connection with `enable_seqscan = off` (default true).
    ///
    /// pharox's statements are built for index access, and their plans are
    /// prepared once per connection. A table that was empty when it was last
    /// vacuumed (a new database, or a lease table whose pool was deleted)
    /// has statistics that make a sequential scan look free, so the generic
    /// plan that the connection then keeps scans `lease` sequentially for
    /// every release while the table grows; measured: about half the
    /// throughput after a `VACUUM ANALYZE` of empty tables. With this on,
    /// the planner takes a sequential scan only where no index applies. Set
    /// it false to leave the planner alone (e.g. for ad-hoc reporting on
    /// [`PostgresStorage::connection`](crate::PostgresStorage::connection)).
    pub prefer_index_scans: bool,
    /// Log every SQL statement (default false). Bind values are not logged.
    pub sql_logging: bool,
    /// Level of the statement log when `sql_logging` is on (default debug).
    pub sql_log_level: tracing::Level,
}

/// The environment variable with a full DSN.
pub const ENV_DATABASE_URL: &str = "PHAROX_DATABASE_URL";

/// What [`PostgresConfig::redact_dsn`] shows for a DSN it cannot read for
/// sure.
const MALFORMED_DSN: &str = "<malformed database URL, not shown>";

/// The advice every "malformed DSN" message ends with.
const ENCODING_HINT: &str = "a user name or password holding `@`, `/`, `:`, `?` or `#` \
     must be percent-encoded (%40, %2F, %3A, %3F, %23); the URL is not shown, it may hold a password";

impl PostgresConfig {
    /// Settings for `user@host/database` with the default pool tuning.
    pub fn new(
        host: impl Into<String>,
        database: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port: 5432,
            database: database.into(),
            user: user.into(),
            password: None,
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            ssl_client_cert: None,
            ssl_client_key: None,
            schema: None,
            application_name: Some("pharox".to_owned()),
            max_connections: 10,
            min_connections: 0,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_before_acquire: false,
            durable_release: false,
            prefer_index_scans: true,
            sql_logging: false,
            sql_log_level: tracing::Level::DEBUG,
        }
    }

    /// Sets the password.
    #[must_use]
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the schema (the session's `search_path`).
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets the pool size.
    #[must_use]
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Parses `postgres://user:pass@host:5432/db?sslmode=require` (also
    /// `postgresql://` and the Python `postgresql+psycopg://` spelling).
    /// User and password are percent-decoded.
    ///
    /// Query parameters: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`
    /// (file paths, as in libpq), `application_name`, `schema` (or
    /// `search_path`, or `options=-csearch_path=...`), and the pool tuning
    /// `max_connections`, `min_connections`, `connect_timeout`,
    /// `acquire_timeout`, `query_timeout`, `idle_timeout`, `max_lifetime` (seconds; `0` for
    /// none on the last two), `test_before_acquire`, `durable_release`,
    /// `prefer_index_scans`, `sql_log` (off, error,
    /// warn, info, debug, trace). Unknown parameters are rejected.
    ///
    /// A URL whose parts cannot be told apart for sure is rejected rather
    /// than guessed at: an `@` after the host (in the path or query), a `#`,
    /// more than one `@`, or a port that is not a number. Those are what a
    /// password with an unencoded `@`, `/`, `:`, `?` or `#` turns into, and a
    /// guess would connect to (and print) a "host" made of pieces of the
    /// password. No error echoes any part of the input.
    pub fn from_dsn(dsn: &str) -> Result<Self, ConfigError> {
        let (mut config, url) = Self::parse_dsn_structure(dsn)?;
        for (key, value) in url.query_pairs() {
            config.apply_param(&key, &value)?;
        }
        Ok(config)
    }

    /// `dsn` in a form safe to print or log: `postgres://***@host:5432/db`
    /// (with `sslmode` and `schema` when the whole DSN parses), as
    /// [`redacted_dsn`](Self::redacted_dsn) shows a configuration.
    ///
    /// This is the one DSN redactor of the workspace (xtask uses it too). No
    /// part of the userinfo is returned, the user name neither; a DSN that
    /// [`from_dsn`](Self::from_dsn) finds malformed gives
    /// `<malformed database URL, not shown>` and nothing of the input, since
    /// in such a URL any part may hold pieces of the password.
    #[must_use]
    pub fn redact_dsn(dsn: &str) -> String {
        match Self::from_dsn(dsn) {
            Ok(config) => config.redacted_dsn(),
            // The parts are unambiguous, only a parameter is wrong: the
            // parameters may be what is wrong (or hold a secret), so they are
            // left out.
            Err(_) => match Self::parse_dsn_structure(dsn) {
                Ok((config, _)) => config.redacted_base(),
                Err(_) => MALFORMED_DSN.to_owned(),
            },
        }
    }

    /// The scheme, user, password, host, port and database of a DSN, and
    /// the parsed URL for its query; rejects every ambiguous shape.
    fn parse_dsn_structure(dsn: &str) -> Result<(Self, url::Url), ConfigError> {
        let dsn = dsn.trim();
        let (scheme, rest) = dsn.split_once("://").ok_or_else(|| {
            ConfigError::invalid("dsn", "must look like postgres://user:pass@host:5432/db")
        })?;
        let base_scheme = scheme.split('+').next().unwrap_or(scheme);
        if !matches!(base_scheme, "postgres" | "postgresql") {
            return Err(ConfigError::invalid(
                "dsn",
                "scheme must be postgres:// or postgresql://",
            ));
        }
        check_unambiguous(rest)?;
        // Normalise the scheme so the URL parser treats it the same way.
        let normalised = format!("postgres://{rest}");
        let url = url::Url::parse(&normalised).map_err(|e| {
            // url's messages are fixed words: they never echo the input.
            ConfigError::invalid("dsn", format!("is not a valid URL ({e}); {ENCODING_HINT}"))
        })?;
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => return Err(ConfigError::invalid("dsn.host", "is missing")),
        };
        if host.is_empty() {
            return Err(ConfigError::invalid("dsn.host", "is missing"));
        }
        let decode = |part: &str, field: &str| {
            percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ConfigError::invalid(field, "is not valid percent-encoded UTF-8"))
        };
        let user = if url.username().is_empty() {
            "postgres".to_owned()
        } else {
            decode(url.username(), "dsn.user")?
        };
        let password = url
            .password()
            .map(|p| decode(p, "dsn.password"))
            .transpose()?;
        let path = url.path().trim_start_matches('/');
        let database = if path.is_empty() {
            user.clone()
        } else {
            decode(path, "dsn.database")?
        };
        let mut config = Self::new(host, database, user);
        config.password = password;
        if let Some(port) = url.port() {
            config.port = port;
        }
        Ok((config, url))
    }

    /// Reads the process environment (see [`from_lookup`](Self::from_lookup)).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (an environment, or a map in tests):
    ///
    /// - `PHAROX_DATABASE_URL`: a full DSN (see [`from_dsn`](Self::from_dsn)); or
    /// - `PHAROX_PG_HOST` (required without a DSN), `PHAROX_PG_PORT`,
    ///   `PHAROX_PG_DATABASE`, `PHAROX_PG_USER`, `PHAROX_PG_PASSWORD`,
    ///   `PHAROX_PG_SSLMODE`, `PHAROX_PG_SCHEMA`;
    /// - on top of either: `PHAROX_PG_SSLROOTCERT`, `PHAROX_PG_SSLCERT`,
    ///   `PHAROX_PG_SSLKEY` (file paths);
    /// - on top of either: `PHAROX_PG_MAX_CONNECTIONS`,
    ///   `PHAROX_PG_MIN_CONNECTIONS`, `PHAROX_PG_CONNECT_TIMEOUT`,
    ///   `PHAROX_PG_ACQUIRE_TIMEOUT`, `PHAROX_PG_QUERY_TIMEOUT`, `PHAROX_PG_IDLE_TIMEOUT`,
    ///   `PHAROX_PG_MAX_LIFETIME` (seconds), `PHAROX_PG_TEST_BEFORE_ACQUIRE`,
    ///   `PHAROX_PG_DURABLE_RELEASE`, `PHAROX_PG_PREFER_INDEX_SCANS`,
    ///   `PHAROX_PG_SQL_LOG`,
    ///   `PHAROX_PG_APPLICATION_NAME`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = if let Some(dsn) = get(ENV_DATABASE_URL) {
            Self::from_dsn(&dsn).map_err(|e| match e {
                ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                    field: format!("{ENV_DATABASE_URL} ({field})"),
                    reason,
                },
                other => other,
            })?
        } else {
            let host = get("PHAROX_PG_HOST").ok_or(ConfigError::Missing)?;
            let user = get("PHAROX_PG_USER").unwrap_or_else(|| "postgres".to_owned());
            let database = get("PHAROX_PG_DATABASE").unwrap_or_else(|| user.clone());
            let mut config = Self::new(host, database, user);
            config.password = lookup("PHAROX_PG_PASSWORD").filter(|p| !p.is_empty());
            if let Some(port) = get("PHAROX_PG_PORT") {
                config.port = parse_num("PHAROX_PG_PORT", &port)?;
            }
            if let Some(mode) = get("PHAROX_PG_SSLMODE") {
                config.ssl_mode = mode
                    .parse()
                    .map_err(|_| ConfigError::invalid("PHAROX_PG_SSLMODE", "unknown sslmode"))?;
            }
            config.schema = get("PHAROX_PG_SCHEMA");
            config
        };
        for (var, param) in [
            ("PHAROX_PG_SSLROOTCERT", "sslrootcert"),
            ("PHAROX_PG_SSLCERT", "sslcert"),
            ("PHAROX_PG_SSLKEY", "sslkey"),
            ("PHAROX_PG_MAX_CONNECTIONS", "max_connections"),
            ("PHAROX_PG_MIN_CONNECTIONS", "min_connections"),
            ("PHAROX_PG_CONNECT_TIMEOUT", "connect_timeout"),
            ("PHAROX_PG_ACQUIRE_TIMEOUT", "acquire_timeout"),
            ("PHAROX_PG_QUERY_TIMEOUT", "query_timeout"),
            ("PHAROX_PG_IDLE_TIMEOUT", "idle_timeout"),
            ("PHAROX_PG_MAX_LIFETIME", "max_lifetime"),
            ("PHAROX_PG_TEST_BEFORE_ACQUIRE", "test_before_acquire"),
            ("PHAROX_PG_DURABLE_RELEASE", "durable_release"),
            ("PHAROX_PG_PREFER_INDEX_SCANS", "prefer_index_scans"),
            ("PHAROX_PG_SQL_LOG", "sql_log"),
            ("PHAROX_PG_APPLICATION_NAME", "application_name"),
        ] {
            if let Some(value) = get(var) {
                config.apply_param(param, &value).map_err(|e| match e {
                    ConfigError::Invalid { reason, .. } => ConfigError::Invalid {
                        field: var.to_owned(),
                        reason,
                    },
                    other => other,
                })?;
            }
        }
        Ok(config)
    }

    fn apply_param(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let value = value.trim();
        match key {
            "sslmode" => self.ssl_mode = value.parse()?,
            "sslrootcert" => self.ssl_root_cert = Some(parse_path(key, value)?),
            "sslcert" => self.ssl_client_cert = Some(parse_path(key, value)?),
            "sslkey" => self.ssl_client_key = Some(parse_path(key, value)?),
            "application_name" => self.application_name = Some(value.to_owned()),
            "schema" | "search_path" | "currentSchema" => self.schema = Some(value.to_owned()),
            "options" => {
                let rest = value
                    .trim_start_matches("-c")
                    .trim_start_matches(" ")
                    .strip_prefix("search_path=")
                    .ok_or_else(|| {
                        ConfigError::invalid("options", "only -csearch_path=<schema> is supported")
                    })?;
                self.schema = Some(rest.to_owned());
            }
            "max_connections" => self.max_connections = parse_num(key, value)?,
            "min_connections" => self.min_connections = parse_num(key, value)?,
            "connect_timeout" => self.connect_timeout = parse_secs(key, value)?,
            "acquire_timeout" => self.acquire_timeout = parse_secs(key, value)?,
            "query_timeout" => self.query_timeout = parse_secs(key, value)?,
            "idle_timeout" => {
                self.idle_timeout = Some(parse_secs(key, value)?).filter(|d| !d.is_zero());
            }
            "max_lifetime" => {
                self.max_lifetime = Some(parse_secs(key, value)?).filter(|d| !d.is_zero());
            }
            "test_before_acquire" => self.test_before_acquire = parse_bool(key, value)?,
            "durable_release" => self.durable_release = parse_bool(key, value)?,
            "prefer_index_scans" => self.prefer_index_scans = parse_bool(key, value)?,
            "sql_log" => match value.to_ascii_lowercase().as_str() {
                "off" | "false" | "0" | "none" => self.sql_logging = false,
                level => {
                    self.sql_log_level = level.parse().map_err(|_| {
                        ConfigError::invalid(key, "must be off, error, warn, info, debug or trace")
                    })?;
                    self.sql_logging = true;
                }
            },
            other => {
                return Err(ConfigError::invalid(
                    format!("dsn parameter {other:?}"),
                    "is not supported",
                ));
            }
        }
        Ok(())
    }

    /// Checks the pool tuning.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::invalid("host", "must not be blank"));
        }
        if self.port == 0 {
            return Err(ConfigError::invalid("port", "must be between 1 and 65535"));
        }
        if self.ssl_client_cert.is_some() != self.ssl_client_key.is_some() {
            return Err(ConfigError::invalid(
                "sslkey",
                "a client certificate (sslcert) and its key (sslkey) go together",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "max_connections",
                "must be at least 1",
            ));
        }
        if self.min_connections > self.max_connections {
            return Err(ConfigError::invalid(
                "min_connections",
                "must not exceed max_connections",
            ));
        }
        if self.connect_timeout.is_zero()
            || self.acquire_timeout.is_zero()
            || self.query_timeout.is_zero()
        {
            return Err(ConfigError::invalid(
                "timeout",
                "connect, acquire and query timeouts must be greater than zero",
            ));
        }
        if let Some(schema) = &self.schema
            && (schema.trim().is_empty() || schema.contains(['\0', ' ', '\\']))
        {
            return Err(ConfigError::invalid(
                "schema",
                "must be a schema name without spaces or backslashes",
            ));
        }
        Ok(())
    }

    /// The DSN with the user name and password replaced by `***`
    /// (`postgres://***@host:5432/db?sslmode=prefer`): safe to log.
    #[must_use]
    pub fn redacted_dsn(&self) -> String {
        let mut dsn = self.redacted_base();
        dsn.push_str("?sslmode=");
        dsn.push_str(self.ssl_mode.as_str());
        if let Some(schema) = &self.schema {
            dsn.push_str("&schema=");
            dsn.push_str(schema);
        }
        dsn
    }

    /// `postgres://***@host:port/database`, without parameters. The whole
    /// userinfo is `***`: the user name too, since in a mistyped URL the
    /// "user name" may be a piece of the password.
    fn redacted_base(&self) -> String {
        format!("postgres://***@{}/{}", self.host_port(), self.database)
    }

    /// `host:port`, with an IPv6 address in brackets: where [`PostgresStorage::connect`](crate::PostgresStorage::connect)
    /// connects to, for messages.
    #[must_use]
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_dsn())
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_client_cert", &self.ssl_client_cert)
            .field("ssl_client_key", &self.ssl_client_key)
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("test_before_acquire", &self.test_before_acquire)
            .field("durable_release", &self.durable_release)
            .field("prefer_index_scans", &self.prefer_index_scans)
            .field("sql_logging", &self.sql_logging)
            .field("sql_log_level", &self.sql_log_level)
            .finish()
    }
}

/// Rejects the DSN shapes (after `scheme://`) whose parts cannot be told
/// apart for sure. Every message names the part and gives the encoding hint;
/// none quotes the input.
fn check_unambiguous(rest: &str) -> Result<(), ConfigError> {
    let malformed = |field: &str, what: &str| {
        ConfigError::invalid(field, format!("is malformed: {what}; {ENCODING_HINT}"))
    };
    if rest.contains('#') {
        // A DSN has no fragment: a `#` can only be part of a password.
        return Err(malformed("dsn", "it contains a `#`"));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if after.contains('@') {
        // The userinfo ends before the host: an `@` further on means the
        // password held a `/` or `?` that ended the authority early.
        return Err(malformed(
            "dsn",
            "an `@` follows the host (in the path or query)",
        ));
    }
    let host_port = match authority.split_once('@') {
        Some((_, host_port)) if host_port.contains('@') => {
            return Err(malformed("dsn", "it has more than one `@` before the host"));
        }
        Some((_, host_port)) => host_port,
        None => authority,
    };
    let port = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (_, tail) = bracketed
            .split_once(']')
            .ok_or_else(|| malformed("dsn.host", "an IPv6 address lacks its closing `]`"))?;
        match tail.strip_prefix(':') {
            Some(port) => Some(port),
            None if tail.is_empty() => None,
            None => return Err(malformed("dsn.host", "text follows the IPv6 address")),
        }
    } else {
        let mut pieces = host_port.splitn(3, ':');
        let _host = pieces.next();
        let port = pieces.next();
        if pieces.next().is_some() {
            return Err(malformed(
                "dsn.port",
                "the host is followed by more than one `:`",
            ));
        }
        port
    };
    match port {
        // `host:` is the default port, as URL parsers read it.
        None | Some("") => Ok(()),
        Some(port) if !port.bytes().all(|b| b.is_ascii_digit()) => {
            Err(malformed("dsn.port", "is not a number"))
        }
        Some(port) if port.parse::<u16>().is_err() => Err(ConfigError::invalid(
            "dsn.port",
            "must be between 1 and 65535",
        )),
        Some(_) => Ok(()),
    }
}

fn parse_num<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(field, "must be a whole number"))
}

fn parse_secs(field: &str, value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(field, "must be a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| ConfigError::invalid(field, "must be a non-negative number of seconds"))
}

fn parse_path(field: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(field, "must be a file path"));
    }
    Ok(PathBuf::from(value))
}

fn parse_bool(field: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(field, "must be true or false")),
    }
}

#[cfg(test)]
mod tests;
