//! The server's settings: [`ServerArgs`] (flags and environment variables
//! of `pharox serve`, for clap) and the [`Limits`] they give.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use pharox::api_keys::DEFAULT_API_KEY_CACHE;

use crate::auth::{ApiKeys, KeyListError};
use crate::tls::TlsError;

/// The address `pharox serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The largest request body accepted by default: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The longest a request may take by default (waiting for a body included).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client may take to send a request's head by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests handled at once by default; more are answered 503 at once.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// The longest `?wait_ms=` a lease request may ask for by default (less
/// than the request timeout, so a wait ends in 201 or 409, not 408).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(20);

/// How much the server takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond it).
    pub body_limit: usize,
    /// Longest time for a whole request (408 beyond it).
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's head (the
    /// connection is closed beyond it: slow clients hold no slot for long).
    pub header_timeout: Duration,
    /// Requests in flight at once (503 beyond it, at once).
    pub max_concurrency: usize,
    /// Longest `?wait_ms=` of a lease request (422 beyond it).
    pub max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// A secret given on the command line or in the environment: `Debug`
/// shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for parsing; never for printing.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The flags of `pharox serve` that belong to the HTTP service (the CLI
/// adds the storage ones).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, env = "PHAROX_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// A file of API keys, `SCOPE:KEY` per line or comma-separated
    /// (scopes: lease, admin).
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys, `SCOPE:KEY` comma-separated, e.g. `lease:k1,admin:k2`.
    #[arg(
        long,
        env = "PHAROX_API_KEYS",
        hide_env_values = true,
        value_name = "LIST"
    )]
    pub api_keys: Option<Secret>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Longest time a request may take, in seconds.
    #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
    pub request_timeout: f64,
    /// Longest time a client may take to send a request's head, in seconds.
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    pub header_timeout: f64,
    /// Requests handled at once; more get 503 at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: usize,
    /// Longest `?wait_ms=` a lease request may ask for, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_MAX_WAIT.as_millis() as u64)]
    pub max_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_timeout: f64,

    // Keys in the database and TLS (`pharox apikey`, issue 14).
    /// With a database: how long a key found in it is trusted before it is
    /// looked up again, in seconds (0: every request). Other replicas see a
    /// revocation within this time.
    #[arg(long, default_value_t = DEFAULT_API_KEY_CACHE.as_secs_f64(), value_name = "SECS")]
    pub api_key_cache_secs: f64,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "PHAROX_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PHAROX_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// A bad server setting, naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value is out of range.
    #[error("invalid --{flag}: {reason}")]
    Invalid {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The key file cannot be read.
    #[error("--api-keys-file {path} cannot be read: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key list is malformed.
    #[error(transparent)]
    Keys(#[from] KeyListError),
    /// No key was given: every request would be refused.
    #[error("no API keys: give --api-keys-file FILE or PHAROX_API_KEYS (SCOPE:KEY,...)")]
    NoKeys,
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ServerArgs {
    /// The limits the flags give.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        if self.body_limit == 0 {
            return Err(ConfigError::Invalid {
                flag: "body-limit",
                reason: "must be at least 1",
            });
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::Invalid {
                flag: "max-concurrency",
                reason: "must be at least 1",
            });
        }
        let request_timeout = seconds("request-timeout", self.request_timeout)?;
        let max_wait = Duration::from_millis(self.max_wait_ms);
        // A wait the timeout cuts short would answer 408 instead of 409.
        if max_wait >= request_timeout {
            return Err(ConfigError::Invalid {
                flag: "max-wait-ms",
                reason: "must be shorter than --request-timeout",
            });
        }
        Ok(Limits {
            body_limit: self.body_limit,
            request_timeout,
            header_timeout: seconds("header-timeout", self.header_timeout)?,
            max_concurrency: self.max_concurrency,
            max_wait,
        })
    }

    /// How long a graceful shutdown may take.
    pub fn shutdown_timeout(&self) -> Result<Duration, ConfigError> {
        seconds("shutdown-timeout", self.shutdown_timeout)
    }

    /// The keys from the file and the list together; none at all is an
    /// error (use [`static_api_keys`](Self::static_api_keys) when keys in a
    /// database may be accepted too).
    pub fn api_keys(&self) -> Result<ApiKeys, ConfigError> {
        let keys = self.static_api_keys()?;
        if keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        Ok(keys)
    }

    /// The keys from the file and the list together, possibly none.
    pub fn static_api_keys(&self) -> Result<ApiKeys, ConfigError> {
        let mut list = String::new();
        if let Some(path) = &self.api_keys_file {
            list = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        if let Some(keys) = &self.api_keys {
            list.push('\n');
            list.push_str(keys.expose());
        }
        Ok(ApiKeys::parse(&list)?)
    }

    /// How long a key found in the database is trusted (zero: not cached).
    pub fn api_key_cache(&self) -> Result<Duration, ConfigError> {
        let secs = self.api_key_cache_secs;
        if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
            return Err(ConfigError::Invalid {
                flag: "api-key-cache-secs",
                reason: "must be 0 to 3600 seconds",
            });
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// The TLS configuration when both --tls-cert and --tls-key are given,
    /// `None` when neither is; one without the other is an error naming the
    /// missing flag.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(crate::tls::load_server_config(cert, key)?)),
            (Some(_), None) => Err(ConfigError::Invalid {
                flag: "tls-key",
                reason: "is required with --tls-cert",
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                flag: "tls-cert",
                reason: "is required with --tls-key",
            }),
        }
    }
}

fn seconds(flag: &'static str, secs: f64) -> Result<Duration, ConfigError> {
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be more than 0 and at most 86400 seconds",
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn args(flags: &[&str]) -> ServerArgs {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().server
    }

    #[test]
    fn the_defaults_are_the_documented_limits() {
        let parsed = args(&[]);
        assert_eq!(parsed.limits().unwrap(), Limits::default());
        assert_eq!(parsed.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(parsed.shutdown_timeout().unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn out_of_range_limits_name_their_flag() {
        for (flags, flag) in [
            (vec!["--body-limit", "0"], "body-limit"),
            (vec!["--max-concurrency", "0"], "max-concurrency"),
            (vec!["--request-timeout", "0"], "request-timeout"),
            (vec!["--request-timeout", "NaN"], "request-timeout"),
            (vec!["--header-timeout", "0"], "header-timeout"),
            (
                vec!["--request-timeout", "5", "--max-wait-ms", "5000"],
                "max-wait-ms",
            ),
        ] {
            match args(&flags).limits() {
                Err(ConfigError::Invalid { flag: named, .. }) => {
                    assert_eq!(named, flag, "{flags:?}")
                }
                other => panic!("{flags:?}: {other:?}"),
            }
        }
        assert!(args(&["--shutdown-timeout=-1"]).shutdown_timeout().is_err());
        for bad in ["-1", "NaN", "3601"] {
            match args(&[&format!("--api-key-cache-secs={bad}")]).api_key_cache() {
                Err(ConfigError::Invalid { flag, .. }) => assert_eq!(flag, "api-key-cache-secs"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(args(&[]).api_key_cache().unwrap(), DEFAULT_API_KEY_CACHE);
        assert_eq!(
            args(&["--api-key-cache-secs", "0"])
                .api_key_cache()
                .unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn tls_needs_both_files_and_names_the_missing_flag() {
        assert!(args(&[]).tls().unwrap().is_none());
        for (flags, missing) in [
            (["--tls-cert", "/nonexistent/cert.pem"], "tls-key"),
            (["--tls-key", "/nonexistent/key.pem"], "tls-cert"),
        ] {
            match args(&flags).tls() {
                Err(ConfigError::Invalid { flag, .. }) => assert_eq!(flag, missing),
                other => panic!("{flags:?}: {other:?}"),
            }
        }
        let e = args(&[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .tls()
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid --tls-cert"), "{e}");
    }

    #[test]
    fn keys_come_from_the_list_and_the_file_and_none_is_an_error() {
        assert!(matches!(args(&[]).api_keys(), Err(ConfigError::NoKeys)));
        assert!(args(&[]).static_api_keys().unwrap().is_empty());
        let file = std::env::temp_dir().join(format!("pharox-keys-{}", std::process::id()));
        std::fs::write(&file, "# keys\nadmin:admin-key-0123456789\n").unwrap();
        let keys = args(&[
            "--api-keys",
            "lease:lease-key-0123456789",
            "--api-keys-file",
            file.to_str().unwrap(),
        ])
        .api_keys()
        .unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.check("admin-key-0123456789").unwrap().scope,
            crate::Scope::Admin
        );
        let missing = args(&["--api-keys-file", "/nonexistent/pharox-keys"]).api_keys();
        assert!(
            matches!(missing, Err(ConfigError::KeyFile { .. })),
            "{missing:?}"
        );
    }
}
