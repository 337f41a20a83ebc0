//! Routing: what a client asks for, read from its proxy username
//! (`pool-residential-country-us-session-abc`, the convention of commercial
//! proxy networks) and from `X-Pharox-*` request headers, turned into a
//! [`LeaseRequest`].

use std::time::Duration;

use pharox::{LeaseRequest, ProxyFilter, ProxyId, Selector};

/// `X-Pharox-Pool`: the pool, for clients that cannot set a username.
pub const POOL_HEADER: &str = "x-pharox-pool";
/// `X-Pharox-Session`: the sticky session key.
pub const SESSION_HEADER: &str = "x-pharox-session";
/// `X-Pharox-Country`: the proxies' country (ISO 3166-1 alpha-2).
pub const COUNTRY_HEADER: &str = "x-pharox-country";

/// The keys a username may carry, in the order the README lists them.
pub const USERNAME_KEYS: [&str; 7] = [
    "pool", "country", "city", "asn", "session", "ttl", "selector",
];

/// The longest username read, in bytes.
pub const MAX_USERNAME_BYTES: usize = 512;

/// A client's request, as its username and headers spell it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The pool (`pool-NAME`).
    pub pool: Option<String>,
    /// `country-CC`.
    pub country: Option<String>,
    /// `city-NAME`, with `_` standing for a space (`city-new_york`).
    pub city: Option<String>,
    /// `asn-N`.
    pub asn: Option<u32>,
    /// `session-KEY`: the sticky session.
    pub session: Option<String>,
    /// `ttl-SECS`: how long the session is remembered after this use.
    pub session_ttl: Option<Duration>,
    /// `selector-NAME` (`selector-least_used`).
    pub selector: Option<Selector>,
}

/// A username or header the gateway cannot route by; answered 407 (SOCKS5:
/// a failed authentication) with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A key the gateway does not know.
    #[error(
        "unknown username key {key:?}: the keys are pool, country, city, asn, session, ttl, selector"
    )]
    UnknownKey {
        /// The key, as written (cut to 40 characters).
        key: String,
    },
    /// A key with no value after it.
    #[error("username key {key:?} has no value")]
    MissingValue {
        /// The key.
        key: &'static str,
    },
    /// A key given twice.
    #[error("username key {key:?} is given twice")]
    Repeated {
        /// The key.
        key: &'static str,
    },
    /// A value that does not parse.
    #[error("username key {key:?}: {reason}")]
    BadValue {
        /// The key (or header).
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// No pool named, and no default pool.
    #[error(
        "no pool: name one in the username (pool-NAME) or the X-Pharox-Pool header; this gateway has no default pool"
    )]
    NoPool,
}

impl Route {
    /// Reads a username: hyphen-separated `key-value` pairs, each value one
    /// token (so a pool whose name has a hyphen is named by the
    /// `X-Pharox-Pool` header or the default pool instead: the username
    /// `pool-eu-residential` names the unknown key `residential`). An empty
    /// username asks for nothing.
    pub fn parse_username(username: &str) -> Result<Self, RouteError> {
        let mut route = Self::default();
        if username.is_empty() {
            return Ok(route);
        }
        if username.len() > MAX_USERNAME_BYTES {
            return Err(RouteError::BadValue {
                key: "username",
                reason: "is longer than 512 bytes",
            });
        }
        let mut tokens = username.split('-');
        while let Some(token) = tokens.next() {
            let key = known_key(token).ok_or_else(|| RouteError::UnknownKey {
                key: token.chars().take(40).collect(),
            })?;
            let Some(first) = tokens.next().filter(|v| !v.is_empty()) else {
                return Err(RouteError::MissingValue { key });
            };
            route.set(key, first)?;
        }
        Ok(route)
    }

    /// Fills what the username left open from the `X-Pharox-*` headers
    /// (`header` looks one up by its lower-case name).
    pub fn fill_from_headers<'h>(
        &mut self,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<(), RouteError> {
        if self.pool.is_none()
            && let Some(pool) = header(POOL_HEADER)
        {
            self.pool = Some(pool.trim().to_owned());
        }
        if self.session.is_none()
            && let Some(session) = header(SESSION_HEADER)
        {
            self.session = Some(session.trim().to_owned());
        }
        if self.country.is_none()
            && let Some(country) = header(COUNTRY_HEADER)
        {
            self.country = Some(country_code("X-Pharox-Country", country.trim())?);
        }
        Ok(())
    }

    /// The lease request for this route, from `default_pool` when it names
    /// none, for `consumer`, each lease held for `ttl` unless renewed, and
    /// never one of the proxies in `exclude` (those a request already
    /// tried: a predicate, so only retries take the slower path).
    pub fn lease_request(
        &self,
        default_pool: Option<&str>,
        consumer: &str,
        ttl: Duration,
        exclude: &[ProxyId],
    ) -> Result<LeaseRequest, RouteError> {
        if self.session_ttl.is_some() && self.session.is_none() {
            return Err(RouteError::BadValue {
                key: "ttl",
                reason: "is the session's TTL: it needs a session (session-KEY)",
            });
        }
        let pool = self
            .pool
            .as_deref()
            .or(default_pool)
            .ok_or(RouteError::NoPool)?;
        let mut filter = ProxyFilter::new();
        if let Some(country) = &self.country {
            filter = filter.country(country.clone());
        }
        if let Some(city) = &self.city {
            filter = filter.city(city.clone());
        }
        if let Some(asn) = self.asn {
            filter = filter.asn(asn);
        }
        if !exclude.is_empty() {
            let tried = exclude.to_vec();
            filter = filter.predicate(move |proxy| !tried.contains(&proxy.id));
        }
        let mut request = LeaseRequest::new(pool)
            .consumer(consumer)
            .ttl(ttl)
            .filter(filter);
        if let Some(selector) = self.selector {
            request = request.selector(selector);
        }
        if let Some(session) = &self.session {
            request = request.session(session.clone());
            if let Some(ttl) = self.session_ttl {
                request = request.session_ttl(ttl);
            }
        }
        Ok(request)
    }

    fn set(&mut self, key: &'static str, value: &str) -> Result<(), RouteError> {
        let repeated = match key {
            "pool" => self.pool.replace(value.to_owned()).is_some(),
            "country" => self.country.replace(country_code(key, value)?).is_some(),
            "city" => self.city.replace(value.replace('_', " ")).is_some(),
            "asn" => {
                let asn = value.parse::<u32>().map_err(|_| RouteError::BadValue {
                    key,
                    reason: "must be a number",
                })?;
                self.asn.replace(asn).is_some()
            }
            "session" => self.session.replace(value.to_owned()).is_some(),
            "ttl" => {
                let secs =
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or(RouteError::BadValue {
                            key,
                            reason: "must be a whole number of seconds, more than 0",
                        })?;
                self.session_ttl
                    .replace(Duration::from_secs(secs))
                    .is_some()
            }
            "selector" => {
                let selector = value.parse::<Selector>().map_err(|_| RouteError::BadValue {
                    key,
                    reason: "must be one of first_available, least_used, round_robin, lowest_latency, random",
                })?;
                self.selector.replace(selector).is_some()
            }
            _ => {
                return Err(RouteError::UnknownKey {
                    key: key.to_owned(),
                });
            }
        };
        if repeated {
            return Err(RouteError::Repeated { key });
        }
        Ok(())
    }
}

/// The known key `token` is, if any (case-insensitive).
fn known_key(token: &str) -> Option<&'static str> {
    USERNAME_KEYS
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(token))
}

/// A two-letter country code, upper-cased.
fn country_code(key: &'static str, value: &str) -> Result<String, RouteError> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(RouteError::BadValue {
            key,
            reason: "must be a two-letter country code",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_username_carries_every_key() {
        let route = Route::parse_username(
            "pool-residential-country-de-city-new_york-asn-3320-session-abc-ttl-600-selector-least_used",
        )
        .unwrap();
        assert_eq!(
            route,
            Route {
                pool: Some("residential".into()),
                country: Some("DE".into()),
                city: Some("new york".into()),
                asn: Some(3320),
                session: Some("abc".into()),
                session_ttl: Some(Duration::from_secs(600)),
                selector: Some(Selector::LeastUsed),
            }
        );
        assert_eq!(Route::parse_username("").unwrap(), Route::default());
    }

    #[test]
    fn bad_usernames_name_the_key() {
        let unknown = Route::parse_username("pool-x-country-us-colour-red").unwrap_err();
        assert_eq!(
            unknown,
            RouteError::UnknownKey {
                key: "colour".into()
            }
        );
        assert!(unknown.to_string().contains("\"colour\""), "{unknown}");
        assert_eq!(
            Route::parse_username("pool-eu-residential").unwrap_err(),
            RouteError::UnknownKey {
                key: "residential".into()
            }
        );
        assert_eq!(
            Route::parse_username("country").unwrap_err(),
            RouteError::MissingValue { key: "country" }
        );
        assert_eq!(
            Route::parse_username("session-a-session-b").unwrap_err(),
            RouteError::Repeated { key: "session" }
        );
        for (username, key) in [
            ("country-usa", "country"),
            ("asn-x", "asn"),
            ("ttl-0", "ttl"),
            ("selector-best", "selector"),
        ] {
            match Route::parse_username(username).unwrap_err() {
                RouteError::BadValue { key: k, .. } => assert_eq!(k, key, "{username}"),
                other => panic!("{username}: {other:?}"),
            }
        }
    }

    #[test]
    fn headers_fill_what_the_username_leaves_open() {
        let mut route = Route::parse_username("session-kept").unwrap();
        route
            .fill_from_headers(|name| match name {
                POOL_HEADER => Some("web"),
                SESSION_HEADER => Some("ignored"),
                COUNTRY_HEADER => Some("us"),
                _ => None,
            })
            .unwrap();
        assert_eq!(route.pool.as_deref(), Some("web"));
        assert_eq!(route.session.as_deref(), Some("kept"));
        assert_eq!(route.country.as_deref(), Some("US"));
        assert_eq!(
            Route::default()
                .lease_request(None, "c", Duration::from_secs(1), &[])
                .unwrap_err(),
            RouteError::NoPool
        );
        let request = Route::default()
            .lease_request(Some("fallback"), "c", Duration::from_secs(1), &[])
            .unwrap();
        assert_eq!(request.pool(), "fallback");
        let lonely_ttl = Route::parse_username("pool-web-ttl-60").unwrap();
        match lonely_ttl
            .lease_request(None, "c", Duration::from_secs(1), &[])
            .unwrap_err()
        {
            RouteError::BadValue { key, .. } => assert_eq!(key, "ttl"),
            other => panic!("{other:?}"),
        }
    }
}
