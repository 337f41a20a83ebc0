use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{PoolId, ProxyHealth, ProxyId, ProxyUsage, ValidationError};

/// Characters left as they are in the user-info part of a URL (RFC 3986
/// "unreserved"); everything else is percent-encoded.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest host name accepted (RFC 1035).
const MAX_HOST_CHARS: usize = 253;

/// How a client talks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Plain HTTP forward proxy (absolute-form requests; CONNECT for TLS targets).
    Http,
    /// An HTTP proxy used for HTTPS: targets are reached through a `CONNECT`
    /// tunnel. (The HTTP probe can also speak TLS to the proxy itself; see
    /// its `HttpsProxyMode`.)
    Https,
    /// SOCKS version 4.
    Socks4,
    /// SOCKS version 5.
    Socks5,
}

impl ProxyProtocol {
    /// Every protocol, in a stable order.
    pub const ALL: [Self; 4] = [Self::Http, Self::Https, Self::Socks4, Self::Socks5];

    /// The lower-case name used in URLs and storage (`"socks5"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Socks4 => "socks4",
            Self::Socks5 => "socks5",
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyProtocol {
    type Err = ValidationError;

    /// Parses the lower-case name; the remote-DNS spellings `socks4a` and
    /// `socks5h` are accepted as their base protocol.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            "socks4" | "socks4a" => Ok(Self::Socks4),
            "socks5" | "socks5h" => Ok(Self::Socks5),
            _ => Err(ValidationError::new(
                "protocol",
                "must be one of http, https, socks4, socks5",
            )),
        }
    }
}

/// Whether a proxy may be leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyStatus {
    /// Working: the only status that is leased.
    Active,
    /// Failing health checks, or switched off.
    Inactive,
    /// Working but slower than the health check's threshold.
    Slow,
    /// Blocked by an operator; never lifted by a health check.
    Banned,
}

impl ProxyStatus {
    /// Every status, in a stable order.
    pub const ALL: [Self; 4] = [Self::Active, Self::Inactive, Self::Slow, Self::Banned];

    /// The lower-case name used in storage (`"active"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Slow => "slow",
            Self::Banned => "banned",
        }
    }
}

impl fmt::Display for ProxyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyStatus {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            "slow" => Ok(Self::Slow),
            "banned" => Ok(Self::Banned),
            _ => Err(ValidationError::new(
                "status",
                "must be one of active, inactive, slow, banned",
            )),
        }
    }
}

/// User name and password for a proxy. Never shown by `Debug`.
///
/// Serialises as `{"user": ..., "password": ...}` (the storage encoding); do
/// not serialise it into logs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credentials {
    /// User name.
    #[serde(rename = "user")]
    pub username: String,
    /// Password.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Checks that neither part is blank. The error names the field only.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.username.trim().is_empty() {
            return Err(ValidationError::new(
                "credentials.user",
                "must not be blank",
            ));
        }
        if self.password.is_empty() {
            return Err(ValidationError::new(
                "credentials.password",
                "must not be blank",
            ));
        }
        if self
            .username
            .chars()
            .chain(self.password.chars())
            .any(char::is_control)
        {
            return Err(ValidationError::new(
                "credentials",
                "must not contain control characters",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// A proxy server in a pool, with what it is (address, protocol, location,
/// provider) and its leasing state.
///
/// Construct one with [`Proxy::builder`] or [`Proxy::from_url`], which
/// validate; storage adapters call [`Proxy::validate`] on everything they save.
/// `Display` gives the URL without credentials; `Debug` redacts them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Identity.
    pub id: ProxyId,
    /// The pool this proxy belongs to.
    pub pool_id: PoolId,
    /// IP address (IPv6 without brackets) or host name.
    pub host: String,
    /// TCP port, 1..=65535.
    pub port: u16,
    /// How to talk to it.
    pub protocol: ProxyProtocol,
    /// Whether it may be leased.
    pub status: ProxyStatus,
    /// Optional user name and password.
    pub credentials: Option<Credentials>,
    /// Where the proxy came from (a provider or feed).
    pub source: Option<String>,
    /// Country code or name.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Internet service provider.
    pub isp: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Latitude in degrees, -90..=90.
    pub latitude: Option<f64>,
    /// Longitude in degrees, -180..=180.
    pub longitude: Option<f64>,
    /// How many leases it may carry at once; `None` means unlimited.
    pub max_concurrency: Option<u32>,
    /// How many active leases it carries now (kept by the storage).
    pub current_leases: u32,
    /// When a health check last ran through it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub checked_at: Option<OffsetDateTime>,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// What the latest health checks found.
    #[serde(default)]
    pub health: ProxyHealth,
    /// What reported outcomes made of it: error score and cooldown (kept by
    /// the storage, like `current_leases`; see [`crate::UsagePolicy`]).
    #[serde(default)]
    pub usage: ProxyUsage,
}

impl Proxy {
    /// Starts building a proxy in `pool_id` at `host:port`. Status defaults to
    /// active and concurrency to unlimited; [`ProxyBuilder::build`] validates.
    pub fn builder(
        pool_id: PoolId,
        host: impl Into<String>,
        port: u16,
        protocol: ProxyProtocol,
    ) -> ProxyBuilder {
        let mut host = host.into();
        // Accept a bracketed IPv6 literal; store it bare.
        if host.starts_with('[') && host.ends_with(']') && host.len() > 2 {
            host = host[1..host.len() - 1].to_owned();
        }
        ProxyBuilder {
            proxy: Self {
                id: ProxyId::new(),
                pool_id,
                host,
                port,
                protocol,
                status: ProxyStatus::Active,
                credentials: None,
                source: None,
                country: None,
                city: None,
                isp: None,
                asn: None,
                latitude: None,
                longitude: None,
                max_concurrency: None,
                current_leases: 0,
                checked_at: None,
                created_at: crate::lease::now_micros(),
                health: ProxyHealth::default(),
                usage: ProxyUsage::default(),
            },
        }
    }

    /// Parses a proxy URL such as `socks5://user:p%40ss@[2001:db8::1]:1080`
    /// into a builder. The port is required; user and password are
    /// percent-decoded. A trailing `/` is allowed, any other path is not.
    pub fn from_url(pool_id: PoolId, url: &str) -> Result<ProxyBuilder, ValidationError> {
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| ValidationError::new("url", "must look like scheme://host:port"))?;
        let protocol: ProxyProtocol = scheme
            .parse()
            .map_err(|e: ValidationError| e.within("url"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(ValidationError::new(
                "url",
                "must not have a path, query or fragment",
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let credentials = userinfo.map(parse_userinfo).transpose()?;
        let (host, port) = split_host_port(hostport)?;
        let mut builder = Self::builder(pool_id, host, port, protocol);
        builder.proxy.credentials = credentials;
        Ok(builder)
    }

    /// The host as it goes into a URL: IPv6 literals in brackets.
    #[must_use]
    pub fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// The URL to connect through, credentials included and percent-encoded
    /// (`socks5://user:p%40ss@[2001:db8::1]:1080`). It contains the password:
    /// hand it to a client, never to a log.
    #[must_use]
    pub fn connect_url(&self) -> String {
        self.url_with_userinfo(|c| {
            format!(
                "{}:{}",
                utf8_percent_encode(&c.username, USERINFO),
                utf8_percent_encode(&c.password, USERINFO)
            )
        })
    }

    /// The URL with the user name and without the password
    /// (`http://user@10.0.0.1:8080`): what operators are shown, since the
    /// user name tells apart proxies on one address (and providers often
    /// put a session or a country in it). Without credentials it is the
    /// [`Display`](fmt::Display) form.
    #[must_use]
    pub fn url_without_password(&self) -> String {
        self.url_with_userinfo(|c| utf8_percent_encode(&c.username, USERINFO).to_string())
    }

    /// `scheme://USERINFO@host:port` with what `userinfo` makes of the
    /// credentials, or the [`Display`](fmt::Display) form without them.
    fn url_with_userinfo(&self, userinfo: impl FnOnce(&Credentials) -> String) -> String {
        match &self.credentials {
            Some(c) => format!(
                "{}://{}@{}:{}",
                self.protocol,
                userinfo(c),
                self.url_host(),
                self.port
            ),
            None => self.to_string(),
        }
    }

    /// Whether the proxy may take one more lease now: active and below its
    /// concurrency limit.
    #[must_use]
    pub fn has_capacity(&self) -> bool {
        self.status == ProxyStatus::Active
            && self
                .max_concurrency
                .is_none_or(|max| self.current_leases < max)
    }

    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_host(&self.host)?;
        if self.port == 0 {
            return Err(ValidationError::new("port", "must be between 1 and 65535"));
        }
        if let Some(credentials) = &self.credentials {
            credentials.validate()?;
        }
        crate::names::validate_optional_text([
            ("source", &self.source),
            ("country", &self.country),
            ("city", &self.city),
            ("isp", &self.isp),
        ])?;
        validate_coordinates(self.latitude, self.longitude)?;
        if self.max_concurrency == Some(0) {
            return Err(ValidationError::new(
                "max_concurrency",
                "must be at least 1 (leave it empty for unlimited)",
            ));
        }
        Ok(())
    }
}

/// Checks that latitude and longitude are finite, in range and given together.
pub(crate) fn validate_coordinates(
    latitude: Option<f64>,
    longitude: Option<f64>,
) -> Result<(), ValidationError> {
    if let Some(lat) = latitude
        && !(lat.is_finite() && (-90.0..=90.0).contains(&lat))
    {
        return Err(ValidationError::new(
            "latitude",
            "must be a finite number in [-90, 90]",
        ));
    }
    if let Some(lon) = longitude
        && !(lon.is_finite() && (-180.0..=180.0).contains(&lon))
    {
        return Err(ValidationError::new(
            "longitude",
            "must be a finite number in [-180, 180]",
        ));
    }
    if latitude.is_some() != longitude.is_some() {
        return Err(ValidationError::new(
            "latitude",
            "latitude and longitude go together",
        ));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<(), ValidationError> {
    if host.trim().is_empty() {
        return Err(ValidationError::new("host", "must not be blank"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.chars().count() > MAX_HOST_CHARS {
        return Err(ValidationError::new(
            "host",
            "must be at most 253 characters",
        ));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.trim_end_matches('.').split('.').all(valid_label) {
        return Err(ValidationError::new(
            "host",
            "must be an IP address or a host name",
        ));
    }
    Ok(())
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, ValidationError> {
    let (user, password) = userinfo.split_once(':').ok_or_else(|| {
        ValidationError::new("url.credentials", "must be user:password when given")
    })?;
    let decode = |field: &'static str, raw: &str| {
        percent_decode_str(raw)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ValidationError::new(field, "is not valid percent-encoded UTF-8"))
    };
    Ok(Credentials::new(
        decode("url.credentials.user", user)?,
        decode("url.credentials.password", password)?,
    ))
}

fn split_host_port(hostport: &str) -> Result<(String, u16), ValidationError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| ValidationError::new("url.host", "unclosed '[' in IPv6 address"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ValidationError::new(
                "url.host",
                "is not a valid IPv6 address",
            ));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| ValidationError::new("url.port", "is required"))?;
        (host, port)
    } else {
        hostport
            .rsplit_once(':')
            .ok_or_else(|| ValidationError::new("url.port", "is required"))?
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ValidationError::new("url.port", "must be a number between 1 and 65535"))?;
    Ok((host.to_owned(), port))
}

impl fmt::Display for Proxy {
    /// The URL without credentials, such as `http://10.0.0.1:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.protocol, self.url_host(), self.port)
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("id", &self.id)
            .field("pool_id", &self.pool_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("status", &self.status)
            .field("credentials", &self.credentials)
            .field("source", &self.source)
            .field("country", &self.country)
            .field("city", &self.city)
            .field("isp", &self.isp)
            .field("asn", &self.asn)
            .field("latitude", &self.latitude)
            .field("longitude", &self.longitude)
            .field("max_concurrency", &self.max_concurrency)
            .field("current_leases", &self.current_leases)
            .field("checked_at", &self.checked_at)
            .field("health", &self.health)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Proxy`] field by field; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct ProxyBuilder {
    proxy: Proxy,
}

macro_rules! string_setter {
    ($($(#[$doc:meta])* $name:ident),*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.proxy.$name = Some(value.into());
            self
        }
    )*};
}

impl ProxyBuilder {
    string_setter!(
        /// Sets where the proxy came from.
        source,
        /// Sets the country.
        country,
        /// Sets the city.
        city,
        /// Sets the ISP.
        isp
    );

    /// Uses this id instead of a fresh one.
    pub fn id(mut self, id: ProxyId) -> Self {
        self.proxy.id = id;
        self
    }

    /// Sets the status (default active).
    pub fn status(mut self, status: ProxyStatus) -> Self {
        self.proxy.status = status;
        self
    }

    /// Sets user name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.proxy.credentials = Some(Credentials::new(username, password));
        self
    }

    /// Sets the autonomous system number.
    pub fn asn(mut self, asn: u32) -> Self {
        self.proxy.asn = Some(asn);
        self
    }

    /// Sets latitude and longitude in degrees.
    pub fn location(mut self, latitude: f64, longitude: f64) -> Self {
        self.proxy.latitude = Some(latitude);
        self.proxy.longitude = Some(longitude);
        self
    }

    /// Limits concurrent leases (at least 1).
    pub fn max_concurrency(mut self, max: u32) -> Self {
        self.proxy.max_concurrency = Some(max);
        self
    }

    /// Validates and returns the proxy.
    pub fn build(self) -> Result<Proxy, ValidationError> {
        self.proxy.validate()?;
        Ok(self.proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolId {
        PoolId::new()
    }

    #[test]
    fn url_round_trip_with_ipv6_and_encoded_password() {
        let proxy = Proxy::from_url(pool(), "socks5://user:p%40ss@[2001:db8::1]:1080")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(proxy.host, "2001:db8::1");
        assert_eq!(proxy.port, 1080);
        assert_eq!(proxy.credentials.as_ref().unwrap().password, "p@ss");
        assert_eq!(
            proxy.connect_url(),
            "socks5://user:p%40ss@[2001:db8::1]:1080"
        );
        assert_eq!(proxy.to_string(), "socks5://[2001:db8::1]:1080");
        assert_eq!(
            proxy.url_without_password(),
            "socks5://user@[2001:db8::1]:1080"
        );
    }

    #[test]
    fn credentials_never_in_debug_or_display() {
        let proxy = Proxy::builder(pool(), "10.0.0.1", 8080, ProxyProtocol::Http)
            .credentials("alice", "hunter2-secret")
            .build()
            .unwrap();
        let debug = format!("{proxy:?}");
        assert!(!debug.contains("hunter2-secret"), "{debug}");
        assert!(!debug.contains("alice"), "{debug}");
        assert!(!proxy.to_string().contains("hunter2"));
        assert!(!proxy.url_without_password().contains("hunter2"));
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let err = |b: ProxyBuilder| b.build().unwrap_err().field.into_owned();
        let b = || Proxy::builder(pool(), "10.0.0.1", 8080, ProxyProtocol::Http);
        assert_eq!(
            err(Proxy::builder(pool(), " ", 1, ProxyProtocol::Http)),
            "host"
        );
        assert_eq!(
            err(Proxy::builder(pool(), "a b", 1, ProxyProtocol::Http)),
            "host"
        );
        assert_eq!(
            err(Proxy::builder(pool(), "h", 0, ProxyProtocol::Http)),
            "port"
        );
        assert_eq!(err(b().credentials("", "x")), "credentials.user");
        assert_eq!(err(b().credentials("u", "")), "credentials.password");
        assert_eq!(err(b().location(91.0, 0.0)), "latitude");
        assert_eq!(err(b().location(0.0, f64::NAN)), "longitude");
        assert_eq!(err(b().max_concurrency(0)), "max_concurrency");
        assert_eq!(err(b().country("  ")), "country");
    }

    #[test]
    fn url_parse_errors() {
        for (url, field) in [
            ("10.0.0.1:80", "url"),
            ("ftp://10.0.0.1:80", "url.protocol"),
            ("http://10.0.0.1", "url.port"),
            ("http://10.0.0.1:70000", "url.port"),
            ("http://[::1:80", "url.host"),
            ("http://user@10.0.0.1:80", "url.credentials"),
            ("http://10.0.0.1:80/path", "url"),
        ] {
            let e = Proxy::from_url(pool(), url).unwrap_err();
            assert_eq!(e.field, field, "{url}: {e}");
        }
        // socks5h is accepted as socks5 (remote DNS is a probe option).
        let p = Proxy::from_url(pool(), "socks5h://example.com:1080/")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(p.protocol, ProxyProtocol::Socks5);
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for p in ProxyProtocol::ALL {
            assert_eq!(p.as_str().parse::<ProxyProtocol>().unwrap(), p);
        }
        for s in ProxyStatus::ALL {
            assert_eq!(s.as_str().parse::<ProxyStatus>().unwrap(), s);
        }
    }

    #[test]
    fn capacity_follows_status_and_limit() {
        let mut p = Proxy::builder(pool(), "h", 1, ProxyProtocol::Http)
            .max_concurrency(2)
            .build()
            .unwrap();
        assert!(p.has_capacity());
        p.current_leases = 2;
        assert!(!p.has_capacity());
        p.current_leases = 0;
        p.status = ProxyStatus::Slow;
        assert!(!p.has_capacity());
    }
}
