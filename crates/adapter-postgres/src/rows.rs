//! Decoding rows into domain values.

use std::sync::Arc;

use pharox_domain::{
    Credentials, HealthRecord, Lease, LeaseId, LeaseSession, LeaseStatus, Proxy, ProxyHealth,
    ProxyProtocol, ProxyStatus, ProxyUsage,
};
use pharox_ports::{AcquireRequest, StorageError};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{Column as _, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::bad_row;

/// What `proxy.checked_at` holds for a proxy never health-checked: the Unix
/// epoch, not NULL.
///
/// Python pharox 0.11 requires a time in that column (its model raises on
/// NULL, and its first_available puts NULLs first, so one such row failed
/// every Python acquire from the pool). The epoch sorts before every real
/// check, so "never checked first" orderings are unchanged; it reads back
/// as `checked_at: None`, and so does a NULL (rows from before `m0007`).
/// `m0007` turned the stored NULLs into this value.
pub(crate) const NEVER_CHECKED: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

/// The columns of a row in the order the SQL lists them, read by position.
///
/// By position, not by name: a name lookup hashes and compares the name for
/// every column, which for acquire's result (then 30 columns) was a tenth of
/// the client's CPU per acquire+release. The SQL lists are constants of this
/// crate ([`crate::sql::PROXY_COLUMNS`], [`crate::sql::LEASE_COLUMN_NAMES`],
/// [`crate::sql::LEASE_RESULT_COLUMN_NAMES`]); debug
/// builds (every test) check each name against the position read.
struct Columns<'r> {
    row: &'r PgRow,
    base: usize,
}

impl<'r> Columns<'r> {
    fn at(row: &'r PgRow, base: usize) -> Self {
        Self { row, base }
    }

    fn get<T>(&self, offset: usize, column: &'static str) -> Result<T, StorageError>
    where
        T: sea_orm::sqlx::Decode<'r, sea_orm::sqlx::Postgres>
            + sea_orm::sqlx::Type<sea_orm::sqlx::Postgres>,
    {
        let index = self.base + offset;
        debug_assert_eq!(
            self.row.columns().get(index).map(|c| c.name()),
            Some(column),
            "column {index} of the row"
        );
        self.row
            .try_get(index)
            .map_err(|e| crate::error::map_sqlx("reading a row", e))
    }
}

/// A value of a row read by column name (rows of statements other than the
/// proxy and lease ones).
fn get<'r, T>(row: &'r PgRow, column: &'static str) -> Result<T, StorageError>
where
    T: sea_orm::sqlx::Decode<'r, sea_orm::sqlx::Postgres>
        + sea_orm::sqlx::Type<sea_orm::sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| crate::error::map_sqlx("reading a row", e))
}

/// Lease statuses: `expired` is what the Python reference's cleanup writes.
pub(crate) fn lease_status(s: &str) -> Result<LeaseStatus, StorageError> {
    match s {
        "active" => Ok(LeaseStatus::Active),
        "released" | "expired" => Ok(LeaseStatus::Released),
        _ => Err(bad_row("lease.status")),
    }
}

/// A proxy from a row that starts with the columns of
/// [`crate::sql::PROXY_COLUMNS`].
pub(crate) fn proxy(row: &PgRow) -> Result<Proxy, StorageError> {
    proxy_at(row, 0)
}

/// A proxy from the columns of [`crate::sql::PROXY_COLUMNS`], starting at
/// column `base`.
fn proxy_at(row: &PgRow, base: usize) -> Result<Proxy, StorageError> {
    let c = Columns::at(row, base);
    let port: i32 = c.get(3, "port")?;
    let protocol: String = c.get(4, "protocol")?;
    let status: String = c.get(5, "status")?;
    let credentials: Option<String> = c.get(6, "credentials")?;
    let credentials = match credentials.as_deref().map(str::trim) {
        None | Some("null") => None,
        Some(json) => Some(
            serde_json::from_str::<Credentials>(json).map_err(|_| bad_row("proxy.credentials"))?,
        ),
    };
    let asn: Option<i64> = c.get(13, "asn")?;
    let max_concurrency: Option<i32> = c.get(14, "max_concurrency")?;
    let current_leases: i32 = c.get(15, "current_leases")?;
    let consecutive_failures: i32 = c.get(18, "consecutive_failures")?;
    let last_http_status: Option<i32> = c.get(21, "last_http_status")?;
    let consecutive_cooldowns: i32 = c.get(24, "consecutive_cooldowns")?;
    Ok(Proxy {
        id: c.get::<Uuid>(0, "id")?.into(),
        pool_id: c.get::<Uuid>(1, "pool_id")?.into(),
        host: c.get(2, "host")?,
        port: u16::try_from(port).map_err(|_| bad_row("proxy.port"))?,
        protocol: protocol
            .parse::<ProxyProtocol>()
            .map_err(|_| bad_row("proxy.protocol"))?,
        status: status
            .parse::<ProxyStatus>()
            .map_err(|_| bad_row("proxy.status"))?,
        credentials,
        source: c.get(7, "source")?,
        country: c.get(8, "country")?,
        city: c.get(9, "city")?,
        isp: c.get(12, "isp")?,
        asn: asn
            .map(u32::try_from)
            .transpose()
            .map_err(|_| bad_row("proxy.asn"))?,
        latitude: c.get(10, "latitude")?,
        longitude: c.get(11, "longitude")?,
        max_concurrency: max_concurrency
            .map(u32::try_from)
            .transpose()
            .map_err(|_| bad_row("proxy.max_concurrency"))?,
        current_leases: u32::try_from(current_leases.max(0)).unwrap_or(0),
        checked_at: c
            .get::<Option<OffsetDateTime>>(16, "checked_at")?
            .filter(|t| *t != NEVER_CHECKED),
        created_at: c.get(17, "created_at")?,
        health: ProxyHealth {
            consecutive_failures: u32::try_from(consecutive_failures.max(0)).unwrap_or(0),
            last_latency_ms: c.get(19, "last_latency_ms")?,
            last_error: c.get(20, "last_error")?,
            last_http_status: last_http_status
                .map(u16::try_from)
                .transpose()
                .map_err(|_| bad_row("proxy.last_http_status"))?,
        },
        usage: ProxyUsage {
            error_score: c.get(22, "error_score")?,
            cooldown_until: c.get(23, "cooldown_until")?,
            consecutive_cooldowns: u32::try_from(consecutive_cooldowns.max(0)).unwrap_or(0),
        },
    })
}

/// A stored lease from a row of the `lease_*` columns
/// ([`crate::sql::LEASE_COLUMN_NAMES`], as [`crate::sql::lease_columns`]
/// lists them) followed by the proxy columns.
pub(crate) fn lease(row: &PgRow) -> Result<Lease, StorageError> {
    let c = Columns::at(row, 0);
    let proxy = proxy_at(row, crate::sql::LEASE_COLUMN_NAMES.len())?;
    let status: String = c.get(4, "lease_status")?;
    let pool_name: String = c.get(2, "lease_pool_name")?;
    Ok(Lease {
        id: c.get::<Uuid>(0, "lease_id")?.into(),
        proxy_id: proxy.id,
        pool_id: c.get::<Uuid>(1, "lease_pool_id")?.into(),
        pool_name: Arc::from(pool_name),
        consumer_id: c.get::<Uuid>(3, "lease_consumer_id")?.into(),
        status: lease_status(&status)?,
        acquired_at: c.get::<OffsetDateTime>(5, "lease_acquired_at")?,
        expires_at: c.get::<OffsetDateTime>(6, "lease_expires_at")?,
        released_at: c.get(7, "lease_released_at")?,
        proxy: Arc::new(proxy),
        session: None,
    })
}

/// The lease an acquire made, from its result row
/// ([`crate::sql::LEASE_RESULT_COLUMN_NAMES`], then the proxy's columns), or
/// `None` if the row says nothing was leased (the proxy columns are NULL).
/// The row carries only what the database decided; the rest comes from the
/// request and the id the caller bound as `$4`.
pub(crate) fn acquired_lease(
    row: &PgRow,
    id: LeaseId,
    request: &AcquireRequest,
) -> Result<Option<Lease>, StorageError> {
    let c = Columns::at(row, 0);
    let base = crate::sql::LEASE_RESULT_COLUMN_NAMES.len();
    let proxy_id: Option<Uuid> = c.get(base, "id")?;
    if proxy_id.is_none() {
        return Ok(None);
    }
    let proxy = proxy_at(row, base)?;
    // A session acquire's row ends with whether the session moved
    // (`crate::usage_sql::session_acquire_statement`).
    let moved_at = base + crate::usage_sql::PROXY_COLUMN_COUNT;
    let session = match &request.session {
        Some(session) => Some(LeaseSession {
            key: session.key.clone(),
            moved: if row.columns().len() > moved_at {
                c.get(moved_at, "session_moved")?
            } else {
                false
            },
        }),
        None => None,
    };
    Ok(Some(Lease {
        id,
        proxy_id: proxy.id,
        pool_id: proxy.pool_id,
        pool_name: Arc::from(request.pool_name.as_str()),
        consumer_id: request.consumer_id,
        status: LeaseStatus::Active,
        acquired_at: c.get(0, "lease_acquired_at")?,
        expires_at: c.get(1, "lease_expires_at")?,
        released_at: None,
        proxy: Arc::new(proxy),
        session,
    }))
}

/// A health record from [`crate::sql::HEALTH_COLUMNS`].
pub(crate) fn health_record(row: &PgRow) -> Result<HealthRecord, StorageError> {
    let protocol: String = get(row, "protocol")?;
    let before: String = get(row, "status_before")?;
    let after: String = get(row, "status_after")?;
    let http_status: Option<i32> = get(row, "http_status")?;
    Ok(HealthRecord {
        id: get::<Uuid>(row, "id")?.into(),
        proxy_id: get::<Uuid>(row, "proxy_id")?.into(),
        checked_at: get(row, "checked_at")?,
        reachable: get(row, "reachable")?,
        latency_ms: get(row, "latency_ms")?,
        protocol: protocol
            .parse()
            .map_err(|_| bad_row("health_record.protocol"))?,
        status_before: before
            .parse()
            .map_err(|_| bad_row("health_record.status_before"))?,
        status_after: after
            .parse()
            .map_err(|_| bad_row("health_record.status_after"))?,
        http_status: http_status
            .map(u16::try_from)
            .transpose()
            .map_err(|_| bad_row("health_record.http_status"))?,
        error: get(row, "error")?,
    })
}
