//! The gateway's settings ([`GatewayConfig`]) and the flags that set them
//! ([`GatewayFlags`], shared by `pharox gateway` and `pharox serve
//! --gateway-listen`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Upstream proxies tried per request, by default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The time all attempts of one request share, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Target statuses that mean "blocked by the target host", by default.
pub const DEFAULT_BLOCKED_STATUS: [u16; 2] = [403, 429];
/// Client connections served at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// The largest request head read, by default (hyper's floor is 8 KiB).
pub const DEFAULT_HEADER_LIMIT: usize = 16 * 1024;
/// The longest a client may take to send a request head, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tunnel (or an upstream's answer) may stay silent, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each lease is held before it is renewed, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The `Retry-After` of a 503 when no proxy qualifies, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// What the gateway does; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The pool of requests that name none (else they get a 407).
    pub default_pool: Option<String>,
    /// Serve without client authentication (loopback listeners only).
    pub no_auth: bool,
    /// Upstream proxies tried for one request, at most.
    pub max_attempts: u32,
    /// The time every attempt of one request shares (connect and handshake).
    pub connect_timeout: Duration,
    /// Target statuses reported as "blocked by the target host".
    pub blocked_status: Vec<u16>,
    /// How long to wait for a proxy to come free before a 503 (zero: none).
    pub wait: Duration,
    /// Client connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The largest request head, in bytes (bigger: 431).
    pub header_limit: usize,
    /// The longest a client may take to send a request head.
    pub header_timeout: Duration,
    /// How long a tunnel may carry no byte either way, and how long an
    /// upstream may take to answer a forwarded request.
    pub idle_timeout: Duration,
    /// How long each lease is taken for; a tunnel renews its lease at half
    /// of it, so a long tunnel never outlives its lease.
    pub lease_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            default_pool: None,
            no_auth: false,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            blocked_status: DEFAULT_BLOCKED_STATUS.to_vec(),
            wait: Duration::ZERO,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_limit: DEFAULT_HEADER_LIMIT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// A flag value the gateway refuses, naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// Why.
    pub reason: String,
}

impl ConfigError {
    fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            reason: reason.into(),
        }
    }
}

impl GatewayConfig {
    /// Checks the settings against the listeners they will serve: no
    /// attempt count of zero, no zero timeout, and `no_auth` only when
    /// every listener is on a loopback address.
    pub fn check(&self, listeners: &[SocketAddr]) -> Result<(), ConfigError> {
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(ConfigError::new("max-attempts", "must be from 1 to 100"));
        }
        for (flag, value) in [
            ("connect-timeout", self.connect_timeout),
            ("header-timeout", self.header_timeout),
            ("idle-timeout", self.idle_timeout),
            ("lease-ttl", self.lease_ttl),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::new("lease-ttl", "must be at least 2 seconds"));
        }
        if self.lease_ttl <= self.connect_timeout {
            return Err(ConfigError::new(
                "lease-ttl",
                "must be longer than --connect-timeout (a lease must outlast its dial)",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "max-client-connections",
                "must be at least 1",
            ));
        }
        if self.header_limit < 8192 {
            return Err(ConfigError::new(
                "header-limit",
                "must be at least 8192 bytes",
            ));
        }
        if self.no_auth
            && let Some(open) = listeners.iter().find(|a| !a.ip().is_loopback())
        {
            return Err(ConfigError::new(
                "no-auth",
                format!("is allowed on loopback listeners only, and {open} is not one"),
            ));
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// These settings brought into range: at least one attempt (at most
    /// 100), a head limit of at least 8 KiB, at least one connection,
    /// timeouts from 1 ms to a day, and a lease TTL from 2 s to a day.
    #[must_use]
    pub fn clamped(mut self) -> Self {
        let within = |d: Duration, low: Duration| d.clamp(low, Duration::from_secs(86_400));
        self.max_attempts = self.max_attempts.clamp(1, 100);
        self.header_limit = self.header_limit.max(8192);
        self.max_connections = self.max_connections.max(1);
        self.connect_timeout = within(self.connect_timeout, Duration::from_millis(1));
        self.header_timeout = within(self.header_timeout, Duration::from_millis(1));
        self.idle_timeout = within(self.idle_timeout, Duration::from_millis(1));
        self.wait = self.wait.min(Duration::from_secs(600));
        self.lease_ttl = within(self.lease_ttl, Duration::from_secs(2));
        self
    }
}

/// The gateway's flags (the listeners and the header timeout are the
/// command's: `pharox serve` shares its own `--header-timeout`).
#[derive(Debug, Clone, Args)]
pub struct GatewayFlags {
    /// The pool of requests whose username and headers name none.
    #[arg(long, value_name = "POOL")]
    pub default_pool: Option<String>,
    /// Serve without client authentication: allowed on loopback listeners
    /// only.
    #[arg(long)]
    pub no_auth: bool,
    /// Upstream proxies tried for one request before a 502.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Seconds every attempt of one request shares (connect and handshake).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT.as_secs_f64())]
    pub connect_timeout: f64,
    /// Target statuses recorded as "blocked by the target host",
    /// comma-separated.
    #[arg(long, value_name = "CODES", value_delimiter = ',', default_values_t = DEFAULT_BLOCKED_STATUS)]
    pub blocked_status: Vec<u16>,
    /// Wait up to this many ms for a proxy to come free before a 503.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub wait_ms: u64,
    /// Client connections served at once; past it a connection gets a 503.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_client_connections: usize,
    /// The largest request head, in bytes (bigger: 431).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_HEADER_LIMIT)]
    pub header_limit: usize,
    /// Seconds a tunnel may stay silent (and an upstream may take to answer).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_timeout: f64,
    /// Seconds each lease is taken for (tunnels renew theirs at half of it).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LEASE_TTL.as_secs_f64())]
    pub lease_ttl: f64,
}

impl GatewayFlags {
    /// The settings these flags give, with `header_timeout` (seconds) from
    /// the command.
    pub fn config(&self, header_timeout: f64) -> Result<GatewayConfig, ConfigError> {
        if let Some(status) = self
            .blocked_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(ConfigError::new(
                "blocked-status",
                format!("{status} is not an HTTP status (100 to 599)"),
            ));
        }
        Ok(GatewayConfig {
            default_pool: self.default_pool.clone(),
            no_auth: self.no_auth,
            max_attempts: self.max_attempts,
            connect_timeout: seconds("connect-timeout", self.connect_timeout)?,
            blocked_status: self.blocked_status.clone(),
            wait: Duration::from_millis(self.wait_ms.min(600_000)),
            max_connections: self.max_client_connections,
            header_limit: self.header_limit,
            header_timeout: seconds("header-timeout", header_timeout)?,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            lease_ttl: seconds("lease-ttl", self.lease_ttl)?,
        })
    }
}

/// Seconds as a duration: more than 0 and at most a day.
fn seconds(flag: &'static str, secs: f64) -> Result<Duration, ConfigError> {
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(ConfigError::new(
            flag,
            "must be more than 0 and at most 86400 seconds",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn no_auth_needs_loopback_listeners() {
        let config = GatewayConfig {
            no_auth: true,
            ..GatewayConfig::default()
        };
        let loopback: SocketAddr = "127.0.0.1:8899".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:8899".parse().unwrap();
        assert!(config.check(&[loopback]).is_ok());
        let refused = config.check(&[loopback, open]).unwrap_err();
        assert_eq!(refused.flag, "no-auth");
        assert!(GatewayConfig::default().check(&[open]).is_ok());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let zero = GatewayConfig {
            max_attempts: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(zero.check(&[]).unwrap_err().flag, "max-attempts");
        assert_eq!(
            seconds("idle-timeout", -1.0).unwrap_err().flag,
            "idle-timeout"
        );
        assert_eq!(
            seconds("idle-timeout", f64::NAN).unwrap_err().flag,
            "idle-timeout"
        );
    }
}
