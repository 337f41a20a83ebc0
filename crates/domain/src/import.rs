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

/// Parses a JSON array of objects with the keys of [`IMPORT_COLUMNS`] (the
/// body an HTTP API takes). Each element's `line` is its 1-based position.
/// The error is for the whole input: invalid `defaults`, or a body that is
/// not a JSON array (field `json`).
pub fn parse_proxy_json(
    input: &str,
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    let values: Vec<Value> = serde_json::from_str(input).map_err(|e| {
        ValidationError::new(
            "json",
            format!(
                "must be a JSON array of objects ({} at line {} column {})",
                json_problem(&e),
                e.line(),
                e.column()
            ),
        )
    })?;
    parse_proxy_json_values(&values, defaults)
}

/// As [`parse_proxy_json`], for elements already decoded.
pub fn parse_proxy_json_values(
    values: &[Value],
    defaults: &ImportDefaults,
) -> Result<ParsedList, ValidationError> {
    defaults.validate()?;
    let mut list = ParsedList::default();
    for (i, value) in values.iter().enumerate() {
        list.push(i + 1, json_entry(value, defaults));
    }
    Ok(list)
}

/// What an import writes and what it counts, computed from the pool's
/// proxies and the parsed entries without touching storage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportPlan {
    /// Proxies to write: new ones with fresh ids, changed ones with their
    /// stored ids. Each key appears once.
    pub proxies: Vec<Proxy>,
    /// How many of `proxies` are new.
    pub added: usize,
    /// How many of `proxies` change a proxy already in the pool.
    pub updated: usize,
    /// Entries that change nothing: superseded by a later line with the
    /// same [`ProxyKey`], or naming a proxy that is already as they say.
    pub skipped: usize,
    /// Entries that could not be turned into a valid proxy.
    pub invalid: Vec<InvalidLine>,
}

/// Matches `entries` against `existing` (the proxies of pool `pool_id`) by
/// [`ProxyKey`].
///
/// An entry whose key is in the pool updates that proxy, keeping its id (so
/// its leases and health history stay); otherwise it adds a proxy. When
/// several entries have one key, the last one wins and the earlier ones are
/// counted as skipped. An update that would change nothing is skipped too,
/// so that re-importing a list rewrites (and locks) only the proxies it
/// changes. When the pool already holds several proxies with one key, the
/// first of `existing` is the one updated.
#[must_use]
pub fn plan_import(pool_id: PoolId, existing: &[Proxy], entries: &[ParsedLine]) -> ImportPlan {
    let mut stored: HashMap<ProxyKey, &Proxy> = HashMap::with_capacity(existing.len());
    for proxy in existing {
        stored.entry(ProxyKey::of(proxy)).or_insert(proxy);
    }
    let keys: Vec<ProxyKey> = entries.iter().map(|p| p.entry.key()).collect();
    // The last line of each key wins; the winners are written in input order.
    let mut winner: HashMap<&ProxyKey, usize> = HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        winner.insert(key, i);
    }
    let mut plan = ImportPlan {
        proxies: Vec::with_capacity(winner.len()),
        skipped: entries.len() - winner.len(),
        ..ImportPlan::default()
    };
    for (i, (parsed, key)) in entries.iter().zip(&keys).enumerate() {
        if winner.get(key) != Some(&i) {
            continue;
        }
        let result = match stored.get(key) {
            Some(proxy) => parsed.entry.apply_to(proxy).map(|updated| {
                if updated == **proxy {
                    plan.skipped += 1;
                    None
                } else {
                    plan.updated += 1;
                    Some(updated)
                }
            }),
            None => parsed.entry.to_new_proxy(pool_id).map(|added| {
                plan.added += 1;
                Some(added)
            }),
        };
        match result {
            Ok(Some(proxy)) => plan.proxies.push(proxy),
            Ok(None) => {}
            Err(error) => plan.invalid.push(InvalidLine {
                line: parsed.line,
                error,
            }),
        }
    }
    plan
}

/// What an import did (or, in a dry run, would do). Serialises as
/// `{"added": N, "updated": N, "skipped": N, "invalid": [{"line": N,
/// "error": "..."}], "dry_run": bool}`.
///
/// When `invalid` is not empty and invalid lines were not to be skipped,
/// nothing was written and the counts are 0 (all or nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImportReport {
    /// Proxies added to the pool.
    pub added: usize,
    /// Proxies already in the pool that were changed.
    pub updated: usize,
    /// Lines that changed nothing: superseded by a later line for the same
    /// proxy, or naming a proxy that was already as they say.
    pub skipped: usize,
    /// Lines rejected, in line order.
    pub invalid: Vec<InvalidLine>,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
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

fn parse_text(input: &str, defaults: &ImportDefaults) -> ParsedList {
    let mut list = ParsedList::default();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        list.push(
            i + 1,
            text_address(line, defaults).and_then(|a| finish(a, &LineMeta::default(), defaults)),
        );
    }
    list
}

/// One text line: a URL, `user:pass@host:port`, `host:port` or
/// `host:port:user:pass` (IPv6 hosts in brackets).
fn text_address(line: &str, defaults: &ImportDefaults) -> Result<ProxyBuilder, ValidationError> {
    if line.contains("://") {
        return url_address(line);
    }
    // `user:pass@host:port` is a URL without its scheme, unless the line
    // is the providers' `host:port:user:pass` with an '@' in the password.
    let provider_form = line.starts_with('[')
        || line
            .split(':')
            .nth(1)
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if line.contains('@') && !provider_form {
        let protocol = defaults.protocol.ok_or_else(missing_protocol)?;
        return url_address(&format!("{protocol}://{line}")).map_err(unprefix_url);
    }
    let (host, rest) = if line.starts_with('[') {
        let close = line
            .find(']')
            .ok_or_else(|| ValidationError::new("host", "unclosed '[' in IPv6 address"))?;
        (&line[..=close], &line[close + 1..])
    } else {
        match line.find(':') {
            Some(colon) => (&line[..colon], &line[colon..]),
            None => (line, ""),
        }
    };
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| ValidationError::new("port", "is required"))?;
    let (port, credentials) = match rest.split_once(':') {
        None => (rest, None),
        Some((port, userpass)) => {
            let (user, password) = userpass.split_once(':').ok_or_else(|| {
                ValidationError::new("credentials", "must be host:port:user:password when given")
            })?;
            (port, Some((user, password)))
        }
    };
    if !host.starts_with('[') && line.contains("::") && !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::new(
            "host",
            "an IPv6 address must be in brackets, as [2001:db8::1]:8080",
        ));
    }
    parts_address(defaults.protocol, host, port, credentials)
}

/// A CSV column or JSON key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Url,
    Host,
    Port,
    Protocol,
    Username,
    Password,
    Country,
    City,
    Source,
    Isp,
    Asn,
    Latitude,
    Longitude,
    MaxConcurrency,
}

impl Column {
    const ALL: [Self; 14] = [
        Self::Url,
        Self::Host,
        Self::Port,
        Self::Protocol,
        Self::Username,
        Self::Password,
        Self::Country,
        Self::City,
        Self::Source,
        Self::Isp,
        Self::Asn,
        Self::Latitude,
        Self::Longitude,
        Self::MaxConcurrency,
    ];

    fn named(name: &str) -> Option<Self> {
        IMPORT_COLUMNS
            .iter()
            .position(|c| *c == name)
            .map(|i| Self::ALL[i])
    }

    fn name(self) -> &'static str {
        IMPORT_COLUMNS[self as usize]
    }
}

/// The values of one CSV row or JSON object, by column; `None` when absent
/// or empty.
#[derive(Debug, Default)]
struct Record {
    values: [Option<String>; 14],
}

impl Record {
    /// Stores a value; every value but the password is trimmed, and an empty
    /// one is absent.
    fn set(&mut self, column: Column, value: &str) {
        let value = if column == Column::Password {
            value
        } else {
            value.trim()
        };
        self.values[column as usize] = (!value.is_empty()).then(|| value.to_owned());
    }

    fn get(&self, column: Column) -> Option<&str> {
        self.values[column as usize].as_deref()
    }

    fn parsed<T>(
        &self,
        column: Column,
        parse: impl FnOnce(&str) -> Result<T, ValidationError>,
    ) -> Result<Option<T>, ValidationError> {
        self.get(column).map(parse).transpose()
    }

    fn coordinate(&self, column: Column) -> Result<Option<f64>, ValidationError> {
        self.parsed(column, |v| {
            v.parse::<f64>()
                .map_err(|_| ValidationError::new(column.name(), "must be a number of degrees"))
        })
    }

    fn entry(&self, defaults: &ImportDefaults) -> Result<ProxyEntry, ValidationError> {
        let address = match self.get(Column::Url) {
            Some(url) => {
                if let Some(other) = [
                    Column::Host,
                    Column::Port,
                    Column::Protocol,
                    Column::Username,
                    Column::Password,
                ]
                .into_iter()
                .find(|c| self.get(*c).is_some())
                {
                    return Err(ValidationError::new(
                        other.name(),
                        "must be empty when url is given (the url holds it)",
                    ));
                }
                url_address(url)?
            }
            None => {
                let host = self
                    .get(Column::Host)
                    .ok_or_else(|| ValidationError::new("host", "is required (or give url)"))?;
                let port = self.get(Column::Port).unwrap_or("");
                let protocol = self
                    .parsed(Column::Protocol, ProxyProtocol::from_str)?
                    .or(defaults.protocol);
                let credentials = match (self.get(Column::Username), self.get(Column::Password)) {
                    (None, None) => None,
                    (Some(user), Some(password)) => Some((user, password)),
                    (None, Some(_)) => {
                        return Err(ValidationError::new(
                            "username",
                            "is required when a password is given",
                        ));
                    }
                    (Some(_), None) => {
                        return Err(ValidationError::new(
                            "password",
                            "is required when a username is given",
                        ));
                    }
                };
                parts_address(protocol, host, port, credentials)?
            }
        };
        let text = |c: Column| self.get(c).map(str::to_owned);
        let meta = LineMeta {
            country: text(Column::Country),
            city: text(Column::City),
            source: text(Column::Source),
            isp: text(Column::Isp),
            asn: self.parsed(Column::Asn, parse_asn)?,
            latitude: self.coordinate(Column::Latitude)?,
            longitude: self.coordinate(Column::Longitude)?,
            max_concurrency: self.parsed(Column::MaxConcurrency, MaxConcurrency::from_str)?,
        };
        finish(address, &meta, defaults)
    }
}

fn parse_csv(input: &str, defaults: &ImportDefaults) -> Result<ParsedList, ValidationError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::Headers)
        .comment(Some(b'#'))
        .from_reader(input.as_bytes());
    // The input is a &str, so reading cannot fail on I/O or UTF-8.
    let header = reader
        .headers()
        .map_err(|_| ValidationError::new("csv.header", "cannot be read"))?
        .clone();
    let mut list = ParsedList::default();
    if header.is_empty() {
        return Ok(list);
    }
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        // Name the column by position, not by its text: a list without a
        // header would put a proxy (and its password) there.
        let column = Column::named(&name.to_ascii_lowercase()).ok_or_else(|| {
            ValidationError::new(
                "csv.header",
                format!(
                    "column {} is not one of {} (is the header row missing?)",
                    i + 1,
                    IMPORT_COLUMNS.join(", ")
                ),
            )
        })?;
        if columns.contains(&column) {
            return Err(ValidationError::new(
                "csv.header",
                format!("names the column {:?} twice", column.name()),
            ));
        }
        columns.push(column);
    }
    if !columns.contains(&Column::Url) && !columns.contains(&Column::Host) {
        return Err(ValidationError::new(
            "csv.header",
            "must name a url or a host column",
        ));
    }
    // csv numbers a record from where its read began, which is before any
    // blank or comment lines it skipped: find the record's first line in
    // the bytes it consumed instead.
    let mut start = reader.position().clone();
    let mut row = csv::StringRecord::new();
    loop {
        let read = reader.read_record(&mut row);
        let end = reader.position().clone();
        let line = first_record_line(input, &start, &end);
        let progressed = end.byte() > start.byte();
        start = end;
        let entry = match read {
            Ok(false) => break,
            // Reading a &str cannot fail; never loop on a reader that is stuck.
            Err(_) if !progressed => break,
            // A whitespace-only or indented comment line is no record.
            Ok(true) if row.get(0).is_some_and(|f| f.trim_start().starts_with('#')) => continue,
            Ok(true) if row.len() == 1 && row.get(0).is_some_and(|f| f.trim().is_empty()) => {
                continue;
            }
            Ok(true) if row.len() != columns.len() => Err(ValidationError::new(
                "csv",
                format!(
                    "the row has {} fields and the header {}",
                    row.len(),
                    columns.len()
                ),
            )),
            Ok(true) => {
                let mut record = Record::default();
                for (column, value) in columns.iter().zip(&row) {
                    record.set(*column, value);
                }
                record.entry(defaults)
            }
            Err(_) => Err(ValidationError::new("csv", "the row cannot be read")),
        };
        list.push(line, entry);
    }
    Ok(list)
}

/// The 1-based line of the record read between `start` and `end`: the
/// first line there that is neither empty nor a `#` comment.
fn first_record_line(input: &str, start: &csv::Position, end: &csv::Position) -> usize {
    let line = usize::try_from(start.line()).unwrap_or(usize::MAX);
    let span = usize::try_from(start.byte())
        .ok()
        .zip(usize::try_from(end.byte()).ok())
        .and_then(|(from, to)| input.get(from..to))
        .unwrap_or("");
    let skipped = span
        .split_inclusive('\n')
        .take_while(|l| {
            let content = l.trim_end_matches(['\n', '\r']);
            content.is_empty() || content.starts_with('#')
        })
        .count();
    line.saturating_add(skipped)
}

fn parse_jsonl(input: &str, defaults: &ImportDefaults) -> ParsedList {
    let mut list = ParsedList::default();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let entry = serde_json::from_str::<Value>(line)
            .map_err(|e| {
                ValidationError::new(
                    "json",
                    format!("{} at column {}", json_problem(&e), e.column()),
                )
            })
            .and_then(|value| json_entry(&value, defaults));
        list.push(i + 1, entry);
    }
    list
}

/// What kind of JSON error this is, without the input's text.
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Data => "unexpected type",
        serde_json::error::Category::Io => "read error",
    }
}

fn json_entry(value: &Value, defaults: &ImportDefaults) -> Result<ProxyEntry, ValidationError> {
    let object = value
        .as_object()
        .ok_or_else(|| ValidationError::new("json", "must be an object"))?;
    let mut record = Record::default();
    for (key, value) in object {
        let column = Column::named(key).ok_or_else(|| {
            ValidationError::new(
                key.clone(),
                format!("is not a known key (known: {})", IMPORT_COLUMNS.join(", ")),
            )
        })?;
        match value {
            Value::Null => {}
            Value::String(s) => record.set(column, s),
            Value::Number(n) => record.set(column, &n.to_string()),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
                return Err(ValidationError::new(
                    column.name(),
                    "must be a string or a number",
                ));
            }
        }
    }
    record.entry(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> ImportDefaults {
        ImportDefaults {
            protocol: Some(ProxyProtocol::Http),
            ..ImportDefaults::default()
        }
    }

    fn parse(input: &str, format: ProxyListFormat) -> ParsedList {
        parse_proxy_list(input, format, &http()).unwrap()
    }

    /// The single entry of a one-line input.
    fn one(input: &str, format: ProxyListFormat) -> ProxyEntry {
        let list = parse(input, format);
        assert!(list.invalid.is_empty(), "{:?}", list.invalid);
        assert_eq!(list.entries.len(), 1);
        list.entries.into_iter().next().unwrap().entry
    }

    /// The (line, field) of each invalid line.
    fn errors(input: &str, format: ProxyListFormat) -> Vec<(usize, String)> {
        parse(input, format)
            .invalid
            .into_iter()
            .map(|i| (i.line, i.error.field.into_owned()))
            .collect()
    }

    fn password(entry: &ProxyEntry) -> &str {
        &entry.credentials.as_ref().unwrap().password
    }

    #[test]
    fn formats_parse_and_print() {
        for format in ProxyListFormat::ALL {
            assert_eq!(format.as_str().parse::<ProxyListFormat>().unwrap(), format);
            assert_eq!(format.to_string(), format.as_str());
        }
        assert_eq!(
            " CSV ".parse::<ProxyListFormat>().unwrap(),
            ProxyListFormat::Csv
        );
        assert_eq!(
            "ndjson".parse::<ProxyListFormat>().unwrap(),
            ProxyListFormat::Jsonl
        );
        assert_eq!(
            "xml".parse::<ProxyListFormat>().unwrap_err().field,
            "format"
        );
    }

    #[test]
    fn max_concurrency_and_asn_parse() {
        assert_eq!(
            "unlimited".parse::<MaxConcurrency>().unwrap(),
            MaxConcurrency::Unlimited
        );
        assert_eq!("UNLIMITED".parse::<MaxConcurrency>().unwrap().limit(), None);
        assert_eq!("4".parse::<MaxConcurrency>().unwrap().limit(), Some(4));
        assert_eq!("4".parse::<MaxConcurrency>().unwrap().to_string(), "4");
        for bad in ["0", "-1", "many", "1.5", ""] {
            assert_eq!(
                bad.parse::<MaxConcurrency>().unwrap_err().field,
                "max_concurrency",
                "{bad}"
            );
        }
        assert_eq!(parse_asn("13335").unwrap(), 13335);
        assert_eq!(parse_asn("AS13335").unwrap(), 13335);
        assert_eq!(parse_asn("as7").unwrap(), 7);
        for bad in ["-1", "AS", "4294967296", "12a"] {
            assert_eq!(parse_asn(bad).unwrap_err().field, "asn", "{bad}");
        }
    }

    #[test]
    fn text_urls_with_ipv6_and_encoded_credentials() {
        let e = one(
            "socks5://us%3Aer:p%40ss%3Aw@[2001:db8::1]:1080\n",
            ProxyListFormat::Text,
        );
        assert_eq!(e.protocol, ProxyProtocol::Socks5);
        assert_eq!(e.host, "2001:db8::1");
        assert_eq!(e.port, 1080);
        assert_eq!(e.credentials.as_ref().unwrap().username, "us:er");
        assert_eq!(password(&e), "p@ss:w");
        // The scheme of a line wins over the default protocol.
        let e = one("https://10.0.0.1:443/", ProxyListFormat::Text);
        assert_eq!(e.protocol, ProxyProtocol::Https);
        assert!(e.credentials.is_none());
    }

    #[test]
    fn text_bare_and_provider_forms_take_the_default_protocol() {
        let e = one("10.0.0.1:8080", ProxyListFormat::Text);
        assert_eq!(
            (e.protocol, e.host.as_str(), e.port),
            (ProxyProtocol::Http, "10.0.0.1", 8080)
        );
        // host:port:user:pass takes credentials as they are (a ':' may
        // follow in the password; '%' is not decoded).
        let e = one(
            "proxy.example.com:3128:alice:s%40:cr@t",
            ProxyListFormat::Text,
        );
        assert_eq!(e.host, "proxy.example.com");
        assert_eq!(e.credentials.as_ref().unwrap().username, "alice");
        assert_eq!(password(&e), "s%40:cr@t");
        let e = one("[2001:db8::2]:3128:bob:pw", ProxyListFormat::Text);
        assert_eq!((e.host.as_str(), e.port), ("2001:db8::2", 3128));
        assert_eq!(password(&e), "pw");
        let e = one("[::1]:1080", ProxyListFormat::Text);
        assert_eq!(e.host, "::1");
        // user:pass@host:port is a URL without its scheme: decoded.
        let e = one("bob:p%40ss@10.0.0.3:8000", ProxyListFormat::Text);
        assert_eq!(password(&e), "p@ss");
    }

    #[test]
    fn text_ignores_blank_lines_and_comments_and_numbers_lines() {
        let list = parse(
            "# header comment\n\n   \nhttp://10.0.0.1:80\r\n  # indented comment\n10.0.0.2:81\n",
            ProxyListFormat::Text,
        );
        assert!(list.invalid.is_empty());
        let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 6]);
        assert!(parse("", ProxyListFormat::Text).entries.is_empty());
        // A byte-order mark is not part of the first line.
        assert_eq!(
            one("\u{feff}10.0.0.1:80", ProxyListFormat::Text).host,
            "10.0.0.1"
        );
    }

    #[test]
    fn text_errors_name_the_field_and_the_line() {
        let input = "ftp://10.0.0.1:21\n\
                     http://10.0.0.1:0\n\
                     10.0.0.1:99999\n\
                     http://:8080\n\
                     :8080\n\
                     10.0.0.1\n\
                     10.0.0.1:80:useronly\n\
                     2001:db8::1:8080\n\
                     [2001:db8::1:8080\n\
                     [zz]:80\n\
                     http://10.0.0.1:80/path\n\
                     bad host:80\n\
                     10.0.0.1:80::pw\n\
                     10.0.0.1:80:user:\n\
                     10.0.0.1:http\n";
        assert_eq!(
            errors(input, ProxyListFormat::Text),
            [
                (1, "url.protocol".to_owned()),
                (2, "url.port".to_owned()),
                (3, "port".to_owned()),
                (4, "host".to_owned()),
                (5, "host".to_owned()),
                (6, "port".to_owned()),
                (7, "credentials".to_owned()),
                (8, "host".to_owned()),
                (9, "host".to_owned()),
                (10, "host".to_owned()),
                (11, "url".to_owned()),
                (12, "host".to_owned()),
                (13, "credentials.user".to_owned()),
                (14, "credentials.password".to_owned()),
                (15, "port".to_owned()),
            ]
        );
    }

    #[test]
    fn bare_lines_without_a_protocol_are_invalid_not_guessed() {
        let list = parse_proxy_list(
            "10.0.0.1:80\nu:p@10.0.0.1:80\nsocks5://10.0.0.1:1080",
            ProxyListFormat::Text,
            &ImportDefaults::default(),
        )
        .unwrap();
        let fields: Vec<_> = list
            .invalid
            .iter()
            .map(|i| (i.line, &*i.error.field))
            .collect();
        assert_eq!(fields, [(1, "protocol"), (2, "protocol")]);
        assert_eq!(list.entries.len(), 1);
    }

    #[test]
    fn errors_never_echo_a_password() {
        let secret = "hunter2-SECRET";
        let inputs = [
            (
                format!("http://user:{secret}@bad host:80"),
                ProxyListFormat::Text,
            ),
            (format!("10.0.0.1:0:user:{secret}"), ProxyListFormat::Text),
            (
                format!("http://user:{secret}%FF@10.0.0.1:80"),
                ProxyListFormat::Text,
            ),
            (
                format!("host,port,password\n10.0.0.1,80,{secret}"),
                ProxyListFormat::Csv,
            ),
            (
                format!("host,port,username,password\n10.0.0.1,x,u,{secret}"),
                ProxyListFormat::Csv,
            ),
            (
                format!("url\nhttp://u:{secret}@10.0.0.1"),
                ProxyListFormat::Csv,
            ),
            (
                format!("{{\"url\": \"http://u:{secret}@10.0.0.1:0\"}}"),
                ProxyListFormat::Jsonl,
            ),
            (
                format!("{{\"host\": \"h\", \"port\": 1, \"password\": \"{secret}\"}}"),
                ProxyListFormat::Jsonl,
            ),
            (
                format!("{{\"url\": \"http://u:{secret}@10.0.0.1:1\", \"colour\": 1}}"),
                ProxyListFormat::Jsonl,
            ),
            (
                format!("{{\"password\": \"{secret}\" oops"),
                ProxyListFormat::Jsonl,
            ),
        ];
        // A CSV list without its header row: the whole input is rejected,
        // without naming the "columns" it found.
        let e = parse_proxy_list(
            &format!("10.0.0.1,80,u,{secret}\n"),
            ProxyListFormat::Csv,
            &http(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for (input, format) in inputs {
            let list = parse(&input, format);
            assert_eq!(list.invalid.len(), 1, "{input}");
            for invalid in &list.invalid {
                let shown = format!(
                    "{} {:?} {}",
                    invalid.error,
                    invalid,
                    serde_json::to_string(invalid).unwrap()
                );
                assert!(!shown.contains("hunter2"), "{input}: {shown}");
            }
        }
        let e = one(&format!("10.0.0.1:80:u:{secret}"), ProxyListFormat::Text);
        assert!(!format!("{e:?}").contains(secret));
        assert!(!format!("{:?}", e.key()).contains("\"u\""));
    }

    #[test]
    fn defaults_apply_and_lines_override_them() {
        let defaults = ImportDefaults {
            protocol: Some(ProxyProtocol::Socks5),
            country: Some("AR".into()),
            city: Some("Rosario".into()),
            source: Some("feed".into()),
            isp: Some("NetA".into()),
            asn: Some(7),
            max_concurrency: Some(MaxConcurrency::Limited(NonZeroU32::new(3).unwrap())),
            status: Some(ProxyStatus::Inactive),
        };
        let list = parse_proxy_list(
            "host,port,country,asn,max_concurrency\n10.0.0.1,1080,,,\n10.0.0.2,1080,BR,9,unlimited\n",
            ProxyListFormat::Csv,
            &defaults,
        )
        .unwrap();
        assert!(list.invalid.is_empty(), "{:?}", list.invalid);
        let [a, b] = [&list.entries[0].entry, &list.entries[1].entry];
        assert_eq!(a.protocol, ProxyProtocol::Socks5);
        assert_eq!(a.country.as_deref(), Some("AR"));
        assert_eq!(a.city.as_deref(), Some("Rosario"));
        assert_eq!(a.source.as_deref(), Some("feed"));
        assert_eq!(a.isp.as_deref(), Some("NetA"));
        assert_eq!(a.asn, Some(7));
        assert_eq!(a.max_concurrency.and_then(MaxConcurrency::limit), Some(3));
        assert_eq!(a.status, Some(ProxyStatus::Inactive));
        assert_eq!(b.country.as_deref(), Some("BR"));
        assert_eq!(b.asn, Some(9));
        assert_eq!(b.max_concurrency, Some(MaxConcurrency::Unlimited));
        // Text lines take every default too.
        let list = parse_proxy_list("10.0.0.9:1", ProxyListFormat::Text, &defaults).unwrap();
        let proxy = list.entries[0].entry.to_new_proxy(PoolId::new()).unwrap();
        assert_eq!(proxy.max_concurrency, Some(3));
        assert_eq!(proxy.status, ProxyStatus::Inactive);
        assert_eq!(proxy.country.as_deref(), Some("AR"));
    }

    #[test]
    fn bad_defaults_reject_the_whole_input() {
        let bad = |d: ImportDefaults| {
            parse_proxy_list("10.0.0.1:80", ProxyListFormat::Text, &d)
                .unwrap_err()
                .field
                .into_owned()
        };
        assert_eq!(
            bad(ImportDefaults {
                country: Some(" ".into()),
                ..http()
            }),
            "country"
        );
        assert_eq!(
            bad(ImportDefaults {
                isp: Some(String::new()),
                ..http()
            }),
            "isp"
        );
        assert_eq!(
            bad(ImportDefaults {
                status: Some(ProxyStatus::Banned),
                ..http()
            }),
            "status"
        );
        assert_eq!(
            parse_proxy_json(
                "[]",
                &ImportDefaults {
                    status: Some(ProxyStatus::Slow),
                    ..http()
                }
            )
            .unwrap_err()
            .field,
            "status"
        );
    }

    #[test]
    fn csv_with_every_column_quotes_and_comments() {
        let input = "URL, Host ,port,protocol,username,password,country,city,source,isp,asn,latitude,longitude,max_concurrency\n\
                     # a comment row\n\
                     \n\
                     ,10.0.0.1,8080,socks5,alice,\" p,w \",AR,\"Buenos Aires\",feed,NetA,AS13335,-34.6,-58.4,5\n\
                     http://bob:p%40ss@[2001:db8::1]:3128,,,,,,,,,,,,,\n\
                     ,2001:db8::5,80,,,,,,,,,,,\n";
        let list = parse(input, ProxyListFormat::Csv);
        assert!(list.invalid.is_empty(), "{:?}", list.invalid);
        let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 5, 6]);
        let a = &list.entries[0].entry;
        assert_eq!(
            (a.protocol, a.host.as_str(), a.port),
            (ProxyProtocol::Socks5, "10.0.0.1", 8080)
        );
        assert_eq!(a.credentials.as_ref().unwrap().username, "alice");
        // Passwords are taken as they are: not trimmed, not decoded.
        assert_eq!(password(a), " p,w ");
        assert_eq!(a.city.as_deref(), Some("Buenos Aires"));
        assert_eq!(a.asn, Some(13335));
        assert_eq!(a.location, Some((-34.6, -58.4)));
        assert_eq!(a.max_concurrency.and_then(MaxConcurrency::limit), Some(5));
        let b = &list.entries[1].entry;
        assert_eq!((b.host.as_str(), password(b)), ("2001:db8::1", "p@ss"));
        // An IPv6 host column needs no brackets; the default protocol applies.
        let c = &list.entries[2].entry;
        assert_eq!(
            (c.host.as_str(), c.protocol),
            ("2001:db8::5", ProxyProtocol::Http)
        );
    }

    #[test]
    fn csv_line_numbers_survive_comments_blank_lines_and_quoted_newlines() {
        let input = "host,port,source\n\
                     \n\
                     # comment\n\
                     10.0.0.1,80,\"two\nlines\"\n\
                     \x20\x20\n\
                     \x20\x20# indented comment\n\
                     10.0.0.2,x,\n\
                     # another\n\
                     10.0.0.3,80,";
        let list = parse(input, ProxyListFormat::Csv);
        let good: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
        let bad: Vec<usize> = list.invalid.iter().map(|p| p.line).collect();
        assert_eq!((good, bad), (vec![4, 10], vec![8]));
        assert_eq!(list.entries[0].entry.source.as_deref(), Some("two\nlines"));
    }

    #[test]
    fn csv_header_errors_reject_the_whole_input() {
        for (input, reason_part) in [
            (
                "host,port,colour\n10.0.0.1,80,red\n",
                "column 3 is not one of url",
            ),
            ("host,port,HOST\n", "twice"),
            ("port,country\n80,AR\n", "url or a host"),
        ] {
            let e = parse_proxy_list(input, ProxyListFormat::Csv, &http()).unwrap_err();
            assert_eq!(e.field, "csv.header", "{input}");
            assert!(e.reason.contains(reason_part), "{input}: {e}");
        }
        // An empty file is an empty list.
        assert!(parse("", ProxyListFormat::Csv).entries.is_empty());
    }

    #[test]
    fn csv_row_errors_name_the_field_and_the_line() {
        let input = "url,host,port,protocol,username,password,asn,latitude,longitude,max_concurrency\n\
                     ,10.0.0.1,80,gopher,,,,,,\n\
                     ,10.0.0.1,,,,,,,,\n\
                     ,,80,,,,,,,\n\
                     ,10.0.0.1,80,,,,big,,,\n\
                     ,10.0.0.1,80,,,,,91,0,\n\
                     ,10.0.0.1,80,,,,,1,,\n\
                     ,10.0.0.1,80,,,,,,x,\n\
                     ,10.0.0.1,80,,,,,,,0\n\
                     ,10.0.0.1,80,,u,,,,,\n\
                     ,10.0.0.1,80,,,p,,,,\n\
                     http://10.0.0.1:80,10.0.0.1,,,,,,,,\n\
                     ,10.0.0.1,80\n\
                     ,10.0.0.1,99999,,,,,,,\n\
                     ftp://10.0.0.1:80,,,,,,,,,\n";
        assert_eq!(
            errors(input, ProxyListFormat::Csv),
            [
                (2, "protocol".to_owned()),
                (3, "port".to_owned()),
                (4, "host".to_owned()),
                (5, "asn".to_owned()),
                (6, "latitude".to_owned()),
                (7, "latitude".to_owned()),
                (8, "longitude".to_owned()),
                (9, "max_concurrency".to_owned()),
                (10, "password".to_owned()),
                (11, "username".to_owned()),
                (12, "host".to_owned()),
                (13, "csv".to_owned()),
                (14, "port".to_owned()),
                (15, "url.protocol".to_owned()),
            ]
        );
    }

    #[test]
    fn jsonl_lines_with_numbers_strings_and_nulls() {
        let input = "{\"url\": \"socks5://u:p%40ss@[::1]:1080\", \"country\": \"AR\", \"asn\": 13335, \"max_concurrency\": \"unlimited\"}\n\
                     \n\
                     {\"host\": \"10.0.0.1\", \"port\": 8080, \"protocol\": \"https\", \"username\": \"u\", \"password\": \"p%40\", \"latitude\": 1.5, \"longitude\": -2, \"max_concurrency\": 2, \"city\": null}\n\
                     {\"host\": \"10.0.0.2\", \"port\": \"81\", \"asn\": \"AS9\"}\n";
        let list = parse(input, ProxyListFormat::Jsonl);
        assert!(list.invalid.is_empty(), "{:?}", list.invalid);
        let lines: Vec<usize> = list.entries.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 3, 4]);
        let [a, b, c] = [
            &list.entries[0].entry,
            &list.entries[1].entry,
            &list.entries[2].entry,
        ];
        assert_eq!((a.host.as_str(), password(a)), ("::1", "p@ss"));
        assert_eq!(a.max_concurrency, Some(MaxConcurrency::Unlimited));
        assert_eq!(a.asn, Some(13335));
        assert_eq!(b.protocol, ProxyProtocol::Https);
        assert_eq!(password(b), "p%40");
        assert_eq!(b.location, Some((1.5, -2.0)));
        assert_eq!(b.city, None);
        assert_eq!(
            (c.port, c.asn, c.protocol),
            (81, Some(9), ProxyProtocol::Http)
        );
    }

    #[test]
    fn jsonl_errors_name_the_field_and_the_line() {
        let input = "{\"host\": \"10.0.0.1\", \"port\": 80, \"colour\": \"red\"}\n\
                     {\"host\": \"10.0.0.1\", \"port\": 80\n\
                     [1, 2]\n\
                     {\"host\": \"10.0.0.1\", \"port\": true}\n\
                     {\"host\": \"10.0.0.1\", \"port\": 80, \"asn\": -5}\n\
                     {\"host\": \"10.0.0.1\", \"port\": 80, \"max_concurrency\": 1.5}\n\
                     {\"host\": \"10.0.0.1\", \"port\": 80.5}\n\
                     {\"url\": \"http://10.0.0.1\"}\n\
                     # not JSON\n";
        assert_eq!(
            errors(input, ProxyListFormat::Jsonl),
            [
                (1, "colour".to_owned()),
                (2, "json".to_owned()),
                (3, "json".to_owned()),
                (4, "port".to_owned()),
                (5, "asn".to_owned()),
                (6, "max_concurrency".to_owned()),
                (7, "port".to_owned()),
                (8, "url.port".to_owned()),
                (9, "json".to_owned()),
            ]
        );
    }

    #[test]
    fn json_array_numbers_elements_from_one() {
        let list = parse_proxy_json(
            r#"[{"url": "http://10.0.0.1:80"}, {"host": "10.0.0.2"}, "x", {"host": "10.0.0.3", "port": 3}]"#,
            &http(),
        )
        .unwrap();
        assert_eq!(
            list.entries.iter().map(|p| p.line).collect::<Vec<_>>(),
            [1, 4]
        );
        let bad: Vec<_> = list
            .invalid
            .iter()
            .map(|i| (i.line, &*i.error.field))
            .collect();
        assert_eq!(bad, [(2, "port"), (3, "json")]);
        for body in [r#"{"url": "http://10.0.0.1:80"}"#, "[", "not json"] {
            assert_eq!(
                parse_proxy_json(body, &http()).unwrap_err().field,
                "json",
                "{body}"
            );
        }
    }

    #[test]
    fn invalid_line_serialises_as_line_and_error() {
        let list = parse("10.0.0.1:0", ProxyListFormat::Text);
        assert_eq!(
            serde_json::to_value(&list.invalid[0]).unwrap(),
            serde_json::json!({"line": 1, "error": "invalid port: must be a number between 1 and 65535"})
        );
        let report = ImportReport {
            added: 1,
            updated: 2,
            skipped: 3,
            invalid: list.invalid,
            dry_run: true,
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "added": 1, "updated": 2, "skipped": 3, "dry_run": true,
                "invalid": [{"line": 1, "error": "invalid port: must be a number between 1 and 65535"}],
            })
        );
    }

    #[test]
    fn keys_compare_hosts_by_value_and_usernames_exactly() {
        let k = |host: &str, user: Option<&str>| ProxyKey::new(ProxyProtocol::Http, host, 80, user);
        assert_eq!(k("Proxy.Example.COM", None), k("proxy.example.com", None));
        assert_eq!(k("proxy.example.com.", None), k("proxy.example.com", None));
        assert_eq!(k("2001:DB8:0::1", None), k("2001:db8::1", None));
        assert_eq!(k("[2001:db8::1]", None), k("2001:db8::1", None));
        assert_ne!(k("h", Some("Alice")), k("h", Some("alice")));
        assert_ne!(k("h", Some("alice")), k("h", None));
        assert_ne!(
            ProxyKey::new(ProxyProtocol::Http, "h", 80, None),
            ProxyKey::new(ProxyProtocol::Socks5, "h", 80, None)
        );
        assert_ne!(
            k("h", None),
            ProxyKey::new(ProxyProtocol::Http, "h", 81, None)
        );
    }

    #[test]
    fn plan_adds_updates_keeps_ids_and_skips_earlier_duplicates() {
        let pool = PoolId::new();
        let mut banned = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
            .credentials("u", "old")
            .country("AR")
            .max_concurrency(2)
            .build()
            .unwrap();
        banned.status = ProxyStatus::Banned;
        let other_user = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
            .credentials("v", "x")
            .build()
            .unwrap();
        let list = parse(
            "http://u:first@10.0.0.1:80\n\
             10.0.0.2:80\n\
             http://u:new@10.0.0.1:80\n\
             10.0.0.3:80\n\
             HTTP://10.0.0.2:80\n",
            ProxyListFormat::Text,
        );
        let plan = plan_import(pool, &[banned.clone(), other_user], &list.entries);
        assert!(plan.invalid.is_empty());
        assert_eq!((plan.added, plan.updated, plan.skipped), (2, 1, 2));
        assert_eq!(plan.proxies.len(), 3);
        // Winners in input order: line 3 (update), line 4, line 5.
        let updated = &plan.proxies[0];
        assert_eq!(updated.id, banned.id);
        assert_eq!(updated.credentials.as_ref().unwrap().password, "new");
        // Fields the line does not give are kept; no status given: the ban stays.
        assert_eq!(updated.country.as_deref(), Some("AR"));
        assert_eq!(updated.max_concurrency, Some(2));
        assert_eq!(updated.status, ProxyStatus::Banned);
        assert_eq!(updated.created_at, banned.created_at);
        assert!(
            plan.proxies[1..]
                .iter()
                .all(|p| p.pool_id == pool && p.status == ProxyStatus::Active)
        );
        assert_eq!(plan.proxies[1].host, "10.0.0.3");
        assert_eq!(plan.proxies[2].host, "10.0.0.2");
    }

    #[test]
    fn a_line_that_changes_nothing_is_skipped_not_rewritten() {
        let pool = PoolId::new();
        let list = parse("10.0.0.1:80:u:pw\n10.0.0.2:80\n", ProxyListFormat::Text);
        let first = plan_import(pool, &[], &list.entries);
        assert_eq!((first.added, first.updated, first.skipped), (2, 0, 0));
        let again = plan_import(pool, &first.proxies, &list.entries);
        assert_eq!((again.added, again.updated, again.skipped), (0, 0, 2));
        assert!(again.proxies.is_empty());
        let changed = parse("10.0.0.1:80:u:new\n10.0.0.2:80\n", ProxyListFormat::Text);
        let plan = plan_import(pool, &first.proxies, &changed.entries);
        assert_eq!((plan.added, plan.updated, plan.skipped), (0, 1, 1));
        assert_eq!(plan.proxies[0].id, first.proxies[0].id);
    }

    #[test]
    fn an_explicit_status_and_limit_apply_to_updated_proxies() {
        let pool = PoolId::new();
        let existing = Proxy::builder(pool, "10.0.0.1", 80, ProxyProtocol::Http)
            .max_concurrency(2)
            .build()
            .unwrap();
        let defaults = ImportDefaults {
            status: Some(ProxyStatus::Inactive),
            max_concurrency: Some(MaxConcurrency::Unlimited),
            ..http()
        };
        let list = parse_proxy_list("10.0.0.1:80", ProxyListFormat::Text, &defaults).unwrap();
        let plan = plan_import(pool, std::slice::from_ref(&existing), &list.entries);
        assert_eq!((plan.added, plan.updated), (0, 1));
        assert_eq!(plan.proxies[0].status, ProxyStatus::Inactive);
        assert_eq!(plan.proxies[0].max_concurrency, None);
    }
}
