//! Pure domain types and rules of pharox.
//!
//! Everything here is plain data and pure functions: no async, no I/O, no
//! database or runtime crates. Values that come from outside (a proxy, a pool
//! name, a filter, a lease TTL) are checked by the `validate`/`build` methods
//! and rejected with a [`ValidationError`] that names the field and the reason.
//!
//! ```
//! use pharox_domain::{PoolId, Proxy, ProxyFilter, ProxyProtocol};
//!
//! let pool = PoolId::new();
//! let proxy = Proxy::from_url(pool, "socks5://user:p%40ss@[2001:db8::1]:1080")?
//!     .country("AR")
//!     .build()?;
//! assert_eq!(proxy.protocol, ProxyProtocol::Socks5);
//! assert_eq!(proxy.connect_url(), "socks5://user:p%40ss@[2001:db8::1]:1080");
//! // Display and Debug never show credentials.
//! assert_eq!(proxy.to_string(), "socks5://[2001:db8::1]:1080");
//!
//! let filter = ProxyFilter::new().country("AR").none_of([ProxyFilter::new().isp("BadNet")]);
//! assert!(filter.matches(&proxy));
//! # Ok::<(), pharox_domain::ValidationError>(())
//! ```
//!
//! This crate has no cargo features.

mod api_key;
mod error;
mod filter;
mod health;
mod ids;
mod import;
mod lease;
mod names;
mod overview;
mod pool;
mod proxy;
mod retry;
mod selector;
mod session;
mod stats;
mod usage;

pub use api_key::{
    ApiKeyHash, ApiKeyRecord, ApiKeyScope, ApiKeySelector, MAX_API_KEY_NAME_CHARS, NewApiKey,
    validate_api_key_name,
};
pub use error::ValidationError;
pub use filter::{
    EARTH_RADIUS_KM, GEO_EXACT_TOLERANCE_DEG, MAX_FILTER_DEPTH, MAX_FILTER_NODES, Predicate,
    ProxyFilter, haversine_km,
};
pub use health::{
    HealthCheckOptions, HealthCheckResult, HealthOutcome, HealthPolicy, HealthRecord,
    MAX_HEALTH_ATTEMPTS, ProxyHealth,
};
pub use ids::{ApiKeyId, ConsumerId, HealthRecordId, LeaseId, PoolId, ProxyId};
pub use import::{
    IMPORT_COLUMNS, ImportDefaults, ImportPlan, ImportReport, InvalidLine, MaxConcurrency,
    ParsedLine, ParsedList, ProxyEntry, ProxyKey, ProxyListFormat, parse_asn, parse_proxy_json,
    parse_proxy_json_values, parse_proxy_list, plan_import,
};
pub use lease::{
    Lease, LeaseStatus, MAX_LEASE_TTL, from_unix_micros, now_micros, truncate_to_micros,
    unix_micros, unix_micros_now, validate_ttl,
};
pub use names::{MAX_NAME_CHARS, validate_name};
pub use overview::{CheckedRange, LatencySummary, PoolOverview, percentile_cont};
pub use pool::{Consumer, ProxyPool};
pub use proxy::{Credentials, Proxy, ProxyBuilder, ProxyProtocol, ProxyStatus};
pub use retry::RetryPolicy;
pub use selector::Selector;
pub use session::{LeaseSession, MAX_SESSION_KEY_CHARS, SessionKey, SessionRequest};
pub use stats::PoolStats;
pub use usage::{
    BanChange, MAX_COOLDOWN, MAX_TARGET_CHARS, Outcome, ProxyFailureKind, ProxyUsage, TargetBan,
    TargetBanState, TargetHost, UsageChange, UsagePolicy,
};
