//! Admitting a client request: its key, its route, and the prepared lease
//! request; and the refusals the gateway answers with when any step (or
//! the upstream) fails.

use pharox::ports::DialError;
use pharox::{PharoxError, PreparedRequest, ProxyId};

use crate::metrics::GatewayResult;
use crate::route::Route;
use crate::upstream::OpenError;
use crate::{Gateway, RouteError};

/// Why the gateway does not serve a request; every variant has an HTTP
/// status, a SOCKS5 reply and a readable message (never a key).
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No credentials: 407.
    AuthRequired,
    /// A password that is no API key: 407.
    BadKey,
    /// A username (or header) the gateway cannot route by: 407.
    Route(String),
    /// Not a request a forward proxy serves: 400.
    BadRequest(String),
    /// No proxy of the pool qualifies: 503 with `Retry-After`.
    NoProxy {
        /// The pool asked for.
        pool: String,
    },
    /// Every upstream tried failed: 502.
    UpstreamFailed {
        /// Proxies tried.
        attempts: u32,
        /// How the last one failed.
        last: DialError,
    },
    /// The storage failed: 503 when worth retrying, else 500.
    Storage(PharoxError),
}

impl Refusal {
    /// The HTTP status.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::AuthRequired | Self::BadKey | Self::Route(_) => 407,
            Self::BadRequest(_) => 400,
            Self::NoProxy { .. } => 503,
            Self::UpstreamFailed { .. } => 502,
            Self::Storage(e) if e.is_retryable() => 503,
            Self::Storage(_) => 500,
        }
    }

    /// The metrics result.
    pub(crate) fn result(&self) -> GatewayResult {
        match self {
            Self::AuthRequired | Self::BadKey | Self::Route(_) => GatewayResult::Refused,
            Self::BadRequest(_) => GatewayResult::BadRequest,
            Self::NoProxy { .. } => GatewayResult::NoProxy,
            Self::UpstreamFailed { .. } => GatewayResult::UpstreamFailed,
            Self::Storage(_) => GatewayResult::StorageFailed,
        }
    }

    /// The SOCKS5 reply code (RFC 1928): general failure, not allowed,
    /// host unreachable.
    pub(crate) fn socks_reply(&self) -> u8 {
        match self {
            Self::AuthRequired | Self::BadKey | Self::Route(_) => 0x02,
            Self::UpstreamFailed { .. } => 0x04,
            Self::BadRequest(_) => 0x07,
            Self::NoProxy { .. } | Self::Storage(_) => 0x01,
        }
    }

    /// What `X-Pharox-Error` says: a code, a colon, the reason.
    pub(crate) fn message(&self) -> String {
        let text = match self {
            Self::AuthRequired => "proxy_auth_required: send Proxy-Authorization: Basic with an API key as the password".to_owned(),
            Self::BadKey => "proxy_auth_required: the password is not a valid API key".to_owned(),
            Self::Route(reason) => format!("bad_route: {reason}"),
            Self::BadRequest(reason) => format!("bad_request: {reason}"),
            Self::NoProxy { pool } => format!("no_proxy_available: no proxy of pool {pool:?} qualifies now"),
            Self::UpstreamFailed { attempts, last } => format!(
                "upstream_failed: {attempts} proxies tried, the last failed with {last}"
            ),
            Self::Storage(e) if e.is_retryable() => format!("storage_unavailable: {e}"),
            Self::Storage(_) => "internal: the storage failed; see the gateway's log".to_owned(),
        };
        if let Self::Storage(e) = self {
            tracing::error!(error = %e, "storage failed");
        }
        // A header value: visible ASCII and spaces only, bounded.
        text.chars()
            .take(400)
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    }
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::NoProxy => Self::NoProxy {
                pool: String::new(),
            },
            OpenError::AllFailed { attempts, last } => Self::UpstreamFailed { attempts, last },
            OpenError::Storage(e) => Self::Storage(e),
            OpenError::Refused(refusal) => refusal,
        }
    }
}

impl From<RouteError> for Refusal {
    fn from(e: RouteError) -> Self {
        Self::Route(e.to_string())
    }
}

/// An admitted request: what to lease, for which pool, and what a retry
/// needs to lease again without the proxies already tried.
pub(crate) struct Admitted {
    pub(crate) request: PreparedRequest,
    pub(crate) pool: String,
    route: Route,
    consumer: String,
}

impl Admitted {
    /// The request again, excluding the proxies in `tried`.
    pub(crate) async fn without(
        &self,
        gateway: &Gateway,
        tried: &[ProxyId],
    ) -> Result<PreparedRequest, Refusal> {
        prepare(gateway, &self.route, &self.consumer, tried)
            .await
            .map(|(request, _)| request)
    }
}

/// Checks a client's credentials and reads its route (the username, then
/// `header` for what it leaves open), then prepares the lease request.
pub(crate) async fn admit<'h>(
    gateway: &Gateway,
    username: &str,
    password: Option<&str>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<Admitted, Refusal> {
    let config = gateway.config();
    let caller = if config.no_auth {
        None
    } else {
        let key = password.ok_or(Refusal::AuthRequired)?;
        match gateway.authenticate(key).await {
            Ok(Some(caller)) => Some(caller),
            Ok(None) => return Err(Refusal::BadKey),
            Err(e) => return Err(Refusal::Storage(e)),
        }
    };
    let mut route = Route::parse_username(username)?;
    route.fill_from_headers(header)?;
    let consumer = Gateway::consumer(caller.as_ref());
    let (request, pool) = prepare(gateway, &route, &consumer, &[]).await?;
    Ok(Admitted {
        request,
        pool,
        route,
        consumer,
    })
}

/// The prepared lease request of `route` for `consumer`, without `tried`,
/// and its pool.
async fn prepare(
    gateway: &Gateway,
    route: &Route,
    consumer: &str,
    tried: &[ProxyId],
) -> Result<(PreparedRequest, String), Refusal> {
    let config = gateway.config();
    let request = route.lease_request(
        config.default_pool.as_deref(),
        consumer,
        config.lease_ttl,
        tried,
    )?;
    let pool = request.pool().to_owned();
    match gateway.manager().prepare(request).await {
        Ok(request) => Ok((request, pool)),
        Err(PharoxError::Invalid(v)) => Err(Refusal::Route(format!("{}: {}", v.field, v.reason))),
        Err(e) => Err(Refusal::Storage(e)),
    }
}

/// A refusal of `open` for `pool`, the pool named in it.
pub(crate) fn open_refusal(e: OpenError, pool: &str) -> Refusal {
    match Refusal::from(e) {
        Refusal::NoProxy { .. } => Refusal::NoProxy {
            pool: pool.to_owned(),
        },
        other => other,
    }
}
