//! Opening the pool: probing the server first so a bad address, a refused
//! or timed-out connection and bad credentials each get a readable error.

use super::*;

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
