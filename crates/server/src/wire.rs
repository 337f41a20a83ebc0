//! The JSON that crosses HTTP: request bodies and responses of the API,
//! built from domain values with `From`. Domain `Proxy` and `Lease` are
//! never serialised here (they carry passwords); only [`LeaseBody`] carries
//! a proxy's password, inside `proxy_url`.
//!
//! Each type derives `ToSchema`, so the OpenAPI document (`GET
//! /openapi.json`, [`crate::openapi`]) is made from these very types; the
//! domain types they carry are described by [`crate::openapi::domain`].

use std::collections::BTreeMap;

use pharox::{
    HealthRecord, ImportReport, Lease, LeaseStatus, Outcome, PoolOverview, Proxy, ProxyFilter,
    ProxyPool, ProxyProtocol, ProxyStatus, Selector,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::openapi::domain::{
    LeaseStatusSchema, ProxyFilterSchema, ProxyProtocolSchema, ProxyStatusSchema, SelectorSchema,
    StatusCountsSchema,
};
use crate::openapi::pool_name;

/// `POST /v1/pools/{pool}/leases`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"consumer": "worker-1", "ttl_seconds": 60, "selector": "least_used"}))]
pub struct AcquireBody {
    /// The client's consumer name under its key (default `default`).
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub consumer: Option<String>,
    /// Lease time-to-live in seconds (default 300, at most 30 days).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_seconds: Option<u64>,
    /// Only proxies matching this filter tree (the domain's JSON form).
    #[schema(value_type = Option<ProxyFilterSchema>)]
    pub filter: Option<ProxyFilter>,
    /// first_available (default), least_used, round_robin, lowest_latency, random.
    #[schema(value_type = Option<SelectorSchema>)]
    pub selector: Option<Selector>,
    /// A sticky session: its key, or `{key, ttl_seconds?}`.
    pub session: Option<SessionBody>,
    /// The site the lease is for: proxies banned for it are skipped.
    #[schema(min_length = 1, max_length = 253, pattern = r"\S")]
    pub target: Option<String>,
}

/// A session in a lease request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SessionBody {
    /// Just the key (the session TTL is the server's default).
    Key(String),
    /// The key and how long the session is remembered after this use.
    Full {
        /// The session key.
        key: String,
        /// Seconds the session is remembered.
        ttl_seconds: Option<u64>,
    },
}

/// `POST /v1/leases/{id}/renew`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl_seconds": 120}))]
pub struct RenewBody {
    /// New time-to-live from now, in seconds (at most 30 days).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_seconds: u64,
}

/// `POST /v1/leases/{id}/release` (optional) and `/outcomes`: the domain
/// outcome's JSON form, e.g. `{"kind": "success", "latency_ms": 120}`,
/// `{"kind": "proxy_failure", "failure": "timeout"}`,
/// `{"kind": "blocked", "target": "shop.example", "http_status": 429}`.
pub type OutcomeBody = Outcome;

/// A lease as its holder sees it, with the URL to connect through.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseBody {
    /// The lease's id.
    pub lease_id: String,
    /// The leased proxy's id.
    pub proxy_id: String,
    /// The pool's name.
    pub pool: String,
    /// `scheme://user:password@host:port`: the one place a password is sent.
    pub proxy_url: String,
    /// http, https, socks4 or socks5.
    #[schema(value_type = ProxyProtocolSchema)]
    pub protocol: ProxyProtocol,
    /// The proxy's host.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// active or released.
    #[schema(value_type = LeaseStatusSchema)]
    pub status: LeaseStatus,
    /// When the lease was made (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    /// When it ends unless renewed (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was released, if it was.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub released_at: Option<OffsetDateTime>,
    /// The proxy's country, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The proxy's city, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// With a session: whether it moved to a new proxy with this lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_moved: Option<bool>,
}

impl From<&Lease> for LeaseBody {
    fn from(lease: &Lease) -> Self {
        let proxy = &lease.proxy;
        Self {
            lease_id: lease.id.to_string(),
            proxy_id: lease.proxy_id.to_string(),
            pool: lease.pool_name.to_string(),
            proxy_url: proxy.connect_url(),
            protocol: proxy.protocol,
            host: proxy.host.clone(),
            port: proxy.port,
            status: lease.status,
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
            released_at: lease.released_at,
            country: proxy.country.clone(),
            city: proxy.city.clone(),
            session_moved: lease.session.as_ref().map(|s| s.moved),
        }
    }
}

/// The answer to a release.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseBody {
    /// The lease.
    pub lease_id: String,
    /// `released` when this call ended it, `already_released` otherwise.
    pub result: ReleaseResult,
    /// When it was released, when known.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub released_at: Option<OffsetDateTime>,
}

/// Whether a release call ended the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseResult {
    /// This call released it.
    Released,
    /// It was released before (by an earlier call, or by expiry).
    AlreadyReleased,
}

/// A proxy's standing after an outcome report.
#[derive(Debug, Serialize, ToSchema)]
pub struct StandingBody {
    /// The proxy.
    pub proxy_id: String,
    /// Its status.
    #[schema(value_type = ProxyStatusSchema)]
    pub status: ProxyStatus,
    /// Penalties minus credits.
    pub error_score: f64,
    /// Until when it is skipped, if cooling down.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown_until: Option<OffsetDateTime>,
}

impl From<&Proxy> for StandingBody {
    fn from(proxy: &Proxy) -> Self {
        Self {
            proxy_id: proxy.id.to_string(),
            status: proxy.status,
            error_score: proxy.usage.error_score,
            cooldown_until: proxy.usage.cooldown_until,
        }
    }
}

/// `POST /v1/pools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "us-datacenter", "description": "US datacenter proxies"}))]
pub struct CreatePoolBody {
    /// The pool's name: 1 to 128 characters, not blank, no control
    /// characters.
    #[schema(schema_with = pool_name)]
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
}

/// A pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolBody {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&ProxyPool> for PoolBody {
    fn from(pool: &ProxyPool) -> Self {
        Self {
            id: pool.id.to_string(),
            name: pool.name.clone(),
            description: pool.description.clone(),
            created_at: pool.created_at,
        }
    }
}

/// `GET /v1/pools/{pool}`: the operator's overview of a pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewBody {
    /// The pool's name.
    pub pool: String,
    /// Its id.
    pub pool_id: String,
    /// Proxies in it.
    pub proxies: u64,
    /// Proxies per status (every status present).
    #[schema(value_type = StatusCountsSchema)]
    pub by_status: BTreeMap<ProxyStatus, u64>,
    /// Proxies with at least one active lease.
    pub leased_proxies: u64,
    /// Active leases.
    pub active_leases: u64,
    /// Active proxies in a cooldown that has not ended (never leased).
    pub cooling_down: u64,
    /// Sum of the proxies' max concurrency; absent when any is unlimited.
    pub capacity: Option<u64>,
    /// Leases past their expiry not reclaimed yet.
    pub expired_unreclaimed: u64,
    /// Median latest latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latest latency, ms.
    pub latency_p95_ms: Option<f64>,
    /// Oldest health check.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_check: Option<OffsetDateTime>,
    /// Newest health check.
    #[serde(with = "time::serde::rfc3339::option")]
    pub newest_check: Option<OffsetDateTime>,
}

impl From<&PoolOverview> for OverviewBody {
    fn from(o: &PoolOverview) -> Self {
        Self {
            pool: o.pool.clone(),
            pool_id: o.pool_id.to_string(),
            proxies: o.proxies,
            by_status: o.by_status.clone(),
            leased_proxies: o.leased_proxies,
            active_leases: o.active_leases,
            cooling_down: o.cooling_down,
            capacity: o.capacity,
            expired_unreclaimed: o.expired_unreclaimed,
            latency_p50_ms: o.latency_ms.p50,
            latency_p95_ms: o.latency_ms.p95,
            oldest_check: o.checked_at.oldest,
            newest_check: o.checked_at.newest,
        }
    }
}

/// A proxy as the admin API shows it: the user name, never the password.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyBody {
    /// Its id.
    pub id: String,
    /// Its pool's id.
    pub pool_id: String,
    /// `scheme://user@host:port`, no password.
    pub url: String,
    /// http, https, socks4 or socks5.
    #[schema(value_type = ProxyProtocolSchema)]
    pub protocol: ProxyProtocol,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The user name, if it has credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// active, inactive, slow or banned.
    #[schema(value_type = ProxyStatusSchema)]
    pub status: ProxyStatus,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// ASN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Leases it may carry at once; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Leases it carries now.
    pub current_leases: u32,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// Latest reachable latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_latency_ms: Option<f64>,
    /// Outcome error score.
    pub error_score: f64,
    /// Cooling down until.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown_until: Option<OffsetDateTime>,
    /// Last health check.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub checked_at: Option<OffsetDateTime>,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&Proxy> for ProxyBody {
    fn from(p: &Proxy) -> Self {
        Self {
            id: p.id.to_string(),
            pool_id: p.pool_id.to_string(),
            url: p.url_without_password(),
            protocol: p.protocol,
            host: p.host.clone(),
            port: p.port,
            username: p.credentials.as_ref().map(|c| c.username.clone()),
            status: p.status,
            country: p.country.clone(),
            city: p.city.clone(),
            isp: p.isp.clone(),
            asn: p.asn,
            source: p.source.clone(),
            max_concurrency: p.max_concurrency,
            current_leases: p.current_leases,
            consecutive_failures: p.health.consecutive_failures,
            last_latency_ms: p.health.last_latency_ms,
            error_score: p.usage.error_score,
            cooldown_until: p.usage.cooldown_until,
            checked_at: p.checked_at,
            created_at: p.created_at,
        }
    }
}

/// `PATCH /v1/proxies/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": "inactive"}))]
pub struct PatchProxyBody {
    /// The status to set by hand (a ban set here is never lifted by checks).
    #[schema(value_type = ProxyStatusSchema)]
    pub status: ProxyStatus,
}

/// One health check of a proxy.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthRecordBody {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// Whether the proxy answered.
    pub reachable: bool,
    /// How fast, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Status before the check.
    #[schema(value_type = ProxyStatusSchema)]
    pub status_before: ProxyStatus,
    /// Status after it.
    #[schema(value_type = ProxyStatusSchema)]
    pub status_after: ProxyStatus,
    /// HTTP status seen through the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&HealthRecord> for HealthRecordBody {
    fn from(r: &HealthRecord) -> Self {
        Self {
            checked_at: r.checked_at,
            reachable: r.reachable,
            latency_ms: r.latency_ms,
            status_before: r.status_before,
            status_after: r.status_after,
            http_status: r.http_status,
            error: r.error.clone(),
        }
    }
}

/// `GET /v1/proxies/{id}/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyHealthBody {
    /// The proxy.
    pub proxy_id: String,
    /// Its status now.
    #[schema(value_type = ProxyStatusSchema)]
    pub status: ProxyStatus,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// Its checks, newest first (one page).
    pub records: Vec<HealthRecordBody>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The answer to an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportBody {
    /// Proxies added.
    pub added: usize,
    /// Proxies changed.
    pub updated: usize,
    /// Lines that changed nothing.
    pub skipped: usize,
    /// Whether nothing was written.
    pub dry_run: bool,
}

impl From<&ImportReport> for ImportBody {
    fn from(r: &ImportReport) -> Self {
        Self {
            added: r.added,
            updated: r.updated,
            skipped: r.skipped,
            dry_run: r.dry_run,
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `?limit=&cursor=` of every list: `limit` 1 to 1000 (default 100),
/// `cursor` the `next_cursor` of the page before.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Where the page starts: the `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// `POST /v1/pools/{pool}/health-sweeps`: the sweep that was started.
#[derive(Debug, Serialize, ToSchema)]
pub struct SweepStartedBody {
    /// The pool being swept.
    pub pool: String,
    /// How many proxies the sweep covers.
    pub proxies: usize,
    /// When it started (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Who runs it: this server, as it describes itself to other sweeps.
    pub holder: String,
}

/// `GET /v1/pools/{pool}/health-sweeps`: whether a sweep of the pool runs
/// now (started by any replica, the upkeep or `pharox health check`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SweepStatusBody {
    /// The pool.
    pub pool: String,
    /// Whether a sweep of it is running.
    pub running: bool,
    /// Who runs it, as it described itself (when one runs and it is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// The body of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeBody {
    /// `ok` (the process serves) or `ready` (the storage answers too).
    pub status: ProbeStatus,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// The process serves (`/healthz`).
    Ok,
    /// The storage answers a read (`/readyz`).
    Ready,
}
