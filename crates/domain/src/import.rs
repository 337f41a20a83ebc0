//! Proxy lists as operators import them: text, CSV and JSON Lines (and a JSON
//! array) parsed into validated entries with per-line errors, and the pure
//! plan that matches them against a pool's proxies.
//!
//! Parsing never stops at a bad line: every line is either a [`ParsedLine`]
//! or an [`InvalidLine`] naming the field and the reason, so an operator sees
//! every problem at once. Only problems that spoil the whole input (a bad CSV
//! header, bad defaults, a JSON body that is not an array) are an `Err`.
//! Error messages never contain a password, nor any other value read from
//! the input; they name fields and columns only.
//!
//! Address validation is [`Proxy::from_url`]'s: every form (a URL, a bare
//! `host:port[:user:pass]`, CSV or JSON `host`/`port` columns) is handed to
//! it, so URL rules are written once.
//!
//! ```
//! use pharox_domain::{ImportDefaults, ProxyListFormat, ProxyProtocol, parse_proxy_list};
//!
//! let defaults = ImportDefaults {
//!     protocol: Some(ProxyProtocol::Http),
//!     country: Some("AR".into()),
//!     ..ImportDefaults::default()
//! };
//! let input = "# provider list\nsocks5://u:p%40ss@[2001:db8::1]:1080\n10.0.0.1:8080:user:secret\n10.0.0.2:99999\n";
//! let list = parse_proxy_list(input, ProxyListFormat::Text, &defaults)?;
//! assert_eq!(list.entries.len(), 2);
//! assert_eq!(list.entries[0].entry.credentials.as_ref().unwrap().password, "p@ss");
//! assert_eq!(list.entries[1].entry.protocol, ProxyProtocol::Http);
//! assert_eq!(list.invalid[0].line, 4);
//! assert_eq!(list.invalid[0].error.field, "port");
//! # Ok::<(), pharox_domain::ValidationError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    Credentials, PoolId, Proxy, ProxyBuilder, ProxyProtocol, ProxyStatus, ValidationError,
};
use columns::{Column, Record, parse_csv};
use formats::{parse_jsonl, parse_text};
pub use formats::{parse_proxy_json, parse_proxy_json_values};
pub use plan::{ImportPlan, ImportReport, plan_import};

/// The columns of a CSV list and the keys of a JSON Lines (or JSON array)
/// list, in the order the docs list them.
pub const IMPORT_COLUMNS: [&str; 14] = [
    "url",
    "host",
    "port",
    "protocol",
    "username",
    "password",
    "country",
    "city",
    "source",
    "isp",
    "asn",
    "latitude",
    "longitude",
    "max_concurrency",
];

/// How a proxy list is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyListFormat {
    /// One proxy a line: `scheme://[user:pass@]host:port` (IPv6 in
    /// brackets, credentials percent-encoded), `user:pass@host:port`, bare
    /// `host:port`, or the providers' `host:port:user:pass` (credentials
    /// taken as they are). Lines without a scheme take
    /// [`ImportDefaults::protocol`]. Blank lines and lines starting with `#`
    /// are ignored.
    #[default]
    Text,
    /// Comma-separated values with a header row naming any of
    /// [`IMPORT_COLUMNS`] (case-insensitive), in any order. Each row gives
    /// either `url` or `host` and `port`. Empty cells are absent. Quoted
    /// fields follow RFC 4180; blank lines and lines starting with `#` are
    /// ignored.
    Csv,
    /// One JSON object a line, with the keys of [`IMPORT_COLUMNS`]; `null`
    /// is absent. Blank lines are ignored.
    Jsonl,
}

impl ProxyListFormat {
    /// Every format, in a stable order.
    pub const ALL: [Self; 3] = [Self::Text, Self::Csv, Self::Jsonl];

    /// The lower-case name (`"csv"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for ProxyListFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyListFormat {
    type Err = ValidationError;

    /// Parses `text`, `csv` or `jsonl` (also `txt` and `ndjson`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(Self::Text),
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            _ => Err(ValidationError::new(
                "format",
                "must be one of text, csv, jsonl",
            )),
        }
    }
}

/// How many leases a proxy may carry at once, as an import gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxConcurrency {
    /// At most this many.
    Limited(NonZeroU32),
    /// No limit.
    Unlimited,
}

impl MaxConcurrency {
    /// The value of [`Proxy::max_concurrency`]: `None` for unlimited.
    #[must_use]
    pub const fn limit(self) -> Option<u32> {
        match self {
            Self::Limited(n) => Some(n.get()),
            Self::Unlimited => None,
        }
    }
}

impl fmt::Display for MaxConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limited(n) => write!(f, "{n}"),
            Self::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for MaxConcurrency {
    type Err = ValidationError;

    /// Parses a whole number of at least 1, or `unlimited`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(Self::Unlimited);
        }
        s.parse::<NonZeroU32>().map(Self::Limited).map_err(|_| {
            ValidationError::new(
                "max_concurrency",
                "must be a whole number of at least 1, or unlimited",
            )
        })
    }
}

/// Parses an autonomous system number: `13335` or `AS13335`.
pub fn parse_asn(value: &str) -> Result<u32, ValidationError> {
    let value = value.trim();
    let digits = value
        .strip_prefix("AS")
        .or_else(|| value.strip_prefix("as"))
        .unwrap_or(value);
    digits.parse::<u32>().map_err(|_| {
        ValidationError::new(
            "asn",
            "must be a whole number between 0 and 4294967295 (optionally prefixed AS)",
        )
    })
}

/// Values for what a line does not say. A value a line gives overrides its
/// default. `None` everywhere (the `Default`) adds nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportDefaults {
    /// The protocol of lines that have no scheme (`host:port`,
    /// `host:port:user:pass`, CSV rows without `protocol`). Without it such
    /// lines are invalid rather than guessed.
    pub protocol: Option<ProxyProtocol>,
    /// Country of every proxy whose line gives none.
    pub country: Option<String>,
    /// City of every proxy whose line gives none.
    pub city: Option<String>,
    /// Source of every proxy whose line gives none.
    pub source: Option<String>,
    /// ISP of every proxy whose line gives none.
    pub isp: Option<String>,
    /// ASN of every proxy whose line gives none.
    pub asn: Option<u32>,
    /// Concurrency limit of every proxy whose line gives none.
    pub max_concurrency: Option<MaxConcurrency>,
    /// Status of every imported proxy: active or inactive. `None` makes new
    /// proxies active and leaves the status of proxies already in the pool
    /// as it is (so a re-import never lifts a ban or a health verdict).
    pub status: Option<ProxyStatus>,
}

impl ImportDefaults {
    /// Checks every default: text values not blank, status active or
    /// inactive.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(status) = self.status
            && !matches!(status, ProxyStatus::Active | ProxyStatus::Inactive)
        {
            return Err(ValidationError::new(
                "status",
                "must be active or inactive for an import",
            ));
        }
        // The text rules are the proxy's own: check them on a stand-in.
        let stand_in = Proxy::builder(nil_pool(), "127.0.0.1", 1, ProxyProtocol::Http);
        self.apply(stand_in, &LineMeta::default())?.build()?;
        Ok(())
    }

    /// Sets on `builder` what `meta` gives, else what the defaults give.
    fn apply(
        &self,
        builder: ProxyBuilder,
        meta: &LineMeta,
    ) -> Result<ProxyBuilder, ValidationError> {
        let mut builder = builder;
        if let Some(v) = meta.country.as_ref().or(self.country.as_ref()) {
            builder = builder.country(v.clone());
        }
        if let Some(v) = meta.city.as_ref().or(self.city.as_ref()) {
            builder = builder.city(v.clone());
        }
        if let Some(v) = meta.source.as_ref().or(self.source.as_ref()) {
            builder = builder.source(v.clone());
        }
        if let Some(v) = meta.isp.as_ref().or(self.isp.as_ref()) {
            builder = builder.isp(v.clone());
        }
        if let Some(asn) = meta.asn.or(self.asn) {
            builder = builder.asn(asn);
        }
        match (meta.latitude, meta.longitude) {
            (Some(lat), Some(lon)) => builder = builder.location(lat, lon),
            (None, None) => {}
            _ => {
                return Err(ValidationError::new(
                    "latitude",
                    "latitude and longitude go together",
                ));
            }
        }
        if let Some(MaxConcurrency::Limited(n)) = meta.max_concurrency.or(self.max_concurrency) {
            builder = builder.max_concurrency(n.get());
        }
        if let Some(status) = self.status {
            builder = builder.status(status);
        }
        Ok(builder)
    }
}

/// One proxy as a list gives it, validated, not yet in a pool.
///
/// `None` means the line (and the defaults) did not give the field: a new
/// proxy then gets the usual default (active, unlimited, no metadata), and
/// a proxy already in the pool keeps what it has. An import never clears a
/// field. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyEntry {
    /// How to talk to it.
    pub protocol: ProxyProtocol,
    /// IP address (IPv6 without brackets) or host name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name and password; the user name is part of the proxy's
    /// identity ([`ProxyKey`]).
    pub credentials: Option<Credentials>,
    /// Status to set.
    pub status: Option<ProxyStatus>,
    /// Where the proxy came from.
    pub source: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Internet service provider.
    pub isp: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Latitude and longitude in degrees.
    pub location: Option<(f64, f64)>,
    /// Concurrency limit to set.
    pub max_concurrency: Option<MaxConcurrency>,
}

impl ProxyEntry {
    /// Which proxy of a pool this entry is: protocol, host, port, user name.
    #[must_use]
    pub fn key(&self) -> ProxyKey {
        ProxyKey::new(
            self.protocol,
            &self.host,
            self.port,
            self.credentials.as_ref().map(|c| c.username.as_str()),
        )
    }

    /// A new proxy in `pool_id` with a fresh id, validated.
    pub fn to_new_proxy(&self, pool_id: PoolId) -> Result<Proxy, ValidationError> {
        let mut builder = Proxy::builder(pool_id, self.host.clone(), self.port, self.protocol);
        if let Some(c) = &self.credentials {
            builder = builder.credentials(c.username.clone(), c.password.clone());
        }
        if let Some(status) = self.status {
            builder = builder.status(status);
        }
        if let Some(v) = &self.source {
            builder = builder.source(v.clone());
        }
        if let Some(v) = &self.country {
            builder = builder.country(v.clone());
        }
        if let Some(v) = &self.city {
            builder = builder.city(v.clone());
        }
        if let Some(v) = &self.isp {
            builder = builder.isp(v.clone());
        }
        if let Some(asn) = self.asn {
            builder = builder.asn(asn);
        }
        if let Some((lat, lon)) = self.location {
            builder = builder.location(lat, lon);
        }
        if let Some(max) = self.max_concurrency.and_then(MaxConcurrency::limit) {
            builder = builder.max_concurrency(max);
        }
        builder.build()
    }

    /// `existing` updated with what this entry gives, validated. The id,
    /// pool, creation time, leases and health stay; fields the entry does
    /// not give stay as they are.
    pub fn apply_to(&self, existing: &Proxy) -> Result<Proxy, ValidationError> {
        let mut proxy = existing.clone();
        proxy.protocol = self.protocol;
        proxy.host.clone_from(&self.host);
        proxy.port = self.port;
        if self.credentials.is_some() {
            proxy.credentials.clone_from(&self.credentials);
        }
        if let Some(status) = self.status {
            proxy.status = status;
        }
        self.set_metadata(&mut proxy);
        proxy.validate()?;
        Ok(proxy)
    }

    /// Reads an entry back from a proxy built by the parser; `status` and
    /// `max_concurrency` say whether those were given (a proxy's defaults
    /// cannot tell).
    fn from_built(
        proxy: Proxy,
        status: Option<ProxyStatus>,
        max_concurrency: Option<MaxConcurrency>,
    ) -> Self {
        Self {
            protocol: proxy.protocol,
            host: proxy.host,
            port: proxy.port,
            credentials: proxy.credentials,
            status,
            source: proxy.source,
            country: proxy.country,
            city: proxy.city,
            isp: proxy.isp,
            asn: proxy.asn,
            location: proxy.latitude.zip(proxy.longitude),
            max_concurrency,
        }
    }

    fn set_metadata(&self, proxy: &mut Proxy) {
        let set = |target: &mut Option<String>, value: &Option<String>| {
            if value.is_some() {
                target.clone_from(value);
            }
        };
        set(&mut proxy.source, &self.source);
        set(&mut proxy.country, &self.country);
        set(&mut proxy.city, &self.city);
        set(&mut proxy.isp, &self.isp);
        if let Some(asn) = self.asn {
            proxy.asn = Some(asn);
        }
        if let Some((lat, lon)) = self.location {
            proxy.latitude = Some(lat);
            proxy.longitude = Some(lon);
        }
        if let Some(max) = self.max_concurrency {
            proxy.max_concurrency = max.limit();
        }
    }
}

/// What makes two proxies of a pool the same one for an import: protocol,
/// host, port and user name. Host names compare case-insensitively and IP
/// addresses by value (`2001:DB8::1` is `2001:db8:0::1`). `Debug` hides the
/// user name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyKey {
    protocol: ProxyProtocol,
    host: String,
    port: u16,
    username: Option<String>,
}

impl ProxyKey {
    /// The key of a proxy with these parts.
    #[must_use]
    pub fn new(protocol: ProxyProtocol, host: &str, port: u16, username: Option<&str>) -> Self {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => bare.trim_end_matches('.').to_ascii_lowercase(),
        };
        Self {
            protocol,
            host,
            port,
            username: username.map(str::to_owned),
        }
    }

    /// The key of a stored proxy.
    #[must_use]
    pub fn of(proxy: &Proxy) -> Self {
        Self::new(
            proxy.protocol,
            &proxy.host,
            proxy.port,
            proxy.credentials.as_ref().map(|c| c.username.as_str()),
        )
    }
}

impl fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyKey")
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A line of the input that gave a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// 1-based line number (for a JSON array: 1-based position of the
    /// element).
    pub line: usize,
    /// What it gave.
    pub entry: ProxyEntry,
}

/// A line of the input that was rejected. Serialises as
/// `{"line": N, "error": "invalid port: must be ..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidLine {
    /// 1-based line number (for a JSON array: 1-based position of the
    /// element).
    pub line: usize,
    /// The field and the reason; never a value from the input.
    #[serde(serialize_with = "display")]
    pub error: ValidationError,
}

/// A parsed proxy list: the good lines and the bad ones, each in input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedList {
    /// Lines that gave a proxy.
    pub entries: Vec<ParsedLine>,
    /// Lines that were rejected.
    pub invalid: Vec<InvalidLine>,
}

impl ParsedList {
    fn push(&mut self, line: usize, result: Result<ProxyEntry, ValidationError>) {
        match result {
            Ok(entry) => self.entries.push(ParsedLine { line, entry }),
            Err(error) => self.invalid.push(InvalidLine { line, error }),
        }
    }
}

/// Parses a proxy list written in `format`, applying `defaults`.
///
/// Returns every good line and every bad one (see the module docs). The
/// error is for the whole input: invalid `defaults` (field as in
/// [`ImportDefaults`]) or a CSV header that names an unknown or repeated
/// column, or neither `url` nor `host` (field `csv.header`).
pub fn parse_proxy_list(
    input: &str,
    format: ProxyListFormat,
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    defaults.validate()?;
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    match format {
        ProxyListFormat::Text => Ok(parse_text(input, defaults)),
        ProxyListFormat::Csv => parse_csv(input, defaults),
        ProxyListFormat::Jsonl => Ok(parse_jsonl(input, defaults)),
    }
}

/// A PoolId for proxies that are only being validated.
fn nil_pool() -> PoolId {
    PoolId(Uuid::nil())
}

/// Serialises an error as its message (`invalid port: ...`).
fn display<S: Serializer>(error: &ValidationError, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(error)
}

/// The per-line values that are not the address.
#[derive(Debug, Default)]
struct LineMeta {
    country: Option<String>,
    city: Option<String>,
    source: Option<String>,
    isp: Option<String>,
    asn: Option<u32>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    max_concurrency: Option<MaxConcurrency>,
}

/// Turns an address builder and a line's values into a validated entry.
fn finish(
    address: ProxyBuilder,
    meta: &LineMeta,
    defaults: &ImportDefaults,
) -> Result<ProxyEntry, ValidationError> {
    let proxy = defaults.apply(address, meta)?.build()?;
    let max_concurrency = meta.max_concurrency.or(defaults.max_concurrency);
    Ok(ProxyEntry::from_built(
        proxy,
        defaults.status,
        max_concurrency,
    ))
}

/// Parses `scheme://...` through [`Proxy::from_url`].
fn url_address(url: &str) -> Result<ProxyBuilder, ValidationError> {
    Proxy::from_url(nil_pool(), url)
}

/// Builds an address from its parts through [`Proxy::from_url`], so that a
/// bare `host:port` is checked exactly as a URL is. Credentials are taken
/// as they are (encoded here, decoded again by `from_url`). Errors name the
/// parts (`port`), not the URL this builds (`url.port`).
fn parts_address(
    protocol: Option<ProxyProtocol>,
    host: &str,
    port: &str,
    credentials: Option<(&str, &str)>,
) -> Result<ProxyBuilder, ValidationError> {
    let protocol = protocol.ok_or_else(missing_protocol)?;
    if host.is_empty() {
        return Err(ValidationError::new("host", "is required"));
    }
    if host.contains(['@', '/', '?', '#', ' ']) {
        return Err(ValidationError::new(
            "host",
            "must be an IP address or a host name",
        ));
    }
    if port.is_empty() {
        return Err(ValidationError::new("port", "is required"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::new(
            "port",
            "must be a number between 1 and 65535",
        ));
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let userinfo = match credentials {
        Some((user, password)) => format!(
            "{}:{}@",
            utf8_percent_encode(user, NON_ALPHANUMERIC),
            utf8_percent_encode(password, NON_ALPHANUMERIC)
        ),
        None => String::new(),
    };
    Proxy::from_url(nil_pool(), &format!("{protocol}://{userinfo}{host}:{port}"))
        .map_err(unprefix_url)
}

fn missing_protocol() -> ValidationError {
    ValidationError::new(
        "protocol",
        "is required for a proxy without a scheme (give one per line or as a default)",
    )
}

/// Names the part (`port`) rather than the URL built from the parts
/// (`url.port`).
fn unprefix_url(e: ValidationError) -> ValidationError {
    match e.field.strip_prefix("url.") {
        Some(part) => ValidationError::new(part.to_owned(), e.reason),
        None => e,
    }
}

mod columns;
mod formats;
mod plan;
#[cfg(test)]
mod tests;
