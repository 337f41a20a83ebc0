//! Decoding rows into domain values.

use std::sync::Arc;

use pharox_domain::{
    Credentials, HealthRecord, Lease, LeaseStatus, Proxy, ProxyHealth, ProxyProtocol, ProxyStatus,
};
use pharox_ports::StorageError;
use sea_orm::sqlx::Row;
use sea_orm::sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::bad_row;

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

/// A proxy from the columns of [`crate::sql::PROXY_COLUMNS`].
pub(crate) fn proxy(row: &PgRow) -> Result<Proxy, StorageError> {
    let port: i32 = get(row, "port")?;
    let protocol: String = get(row, "protocol")?;
    let status: String = get(row, "status")?;
    let credentials: Option<String> = get(row, "credentials")?;
    let credentials = match credentials.as_deref().map(str::trim) {
        None | Some("null") => None,
        Some(json) => Some(
            serde_json::from_str::<Credentials>(json).map_err(|_| bad_row("proxy.credentials"))?,
        ),
    };
    let asn: Option<i64> = get(row, "asn")?;
    let max_concurrency: Option<i32> = get(row, "max_concurrency")?;
    let current_leases: i32 = get(row, "current_leases")?;
    let consecutive_failures: i32 = get(row, "consecutive_failures")?;
    let last_http_status: Option<i32> = get(row, "last_http_status")?;
    Ok(Proxy {
        id: get::<Uuid>(row, "id")?.into(),
        pool_id: get::<Uuid>(row, "pool_id")?.into(),
        host: get(row, "host")?,
        port: u16::try_from(port).map_err(|_| bad_row("proxy.port"))?,
        protocol: protocol
            .parse::<ProxyProtocol>()
            .map_err(|_| bad_row("proxy.protocol"))?,
        status: status
            .parse::<ProxyStatus>()
            .map_err(|_| bad_row("proxy.status"))?,
        credentials,
        source: get(row, "source")?,
        country: get(row, "country")?,
        city: get(row, "city")?,
        isp: get(row, "isp")?,
        asn: asn
            .map(u32::try_from)
            .transpose()
            .map_err(|_| bad_row("proxy.asn"))?,
        latitude: get(row, "latitude")?,
        longitude: get(row, "longitude")?,
        max_concurrency: max_concurrency
            .map(u32::try_from)
            .transpose()
            .map_err(|_| bad_row("proxy.max_concurrency"))?,
        current_leases: u32::try_from(current_leases.max(0)).unwrap_or(0),
        checked_at: get(row, "checked_at")?,
        created_at: get(row, "created_at")?,
        health: ProxyHealth {
            consecutive_failures: u32::try_from(consecutive_failures.max(0)).unwrap_or(0),
            last_latency_ms: get(row, "last_latency_ms")?,
            last_error: get(row, "last_error")?,
            last_http_status: last_http_status
                .map(u16::try_from)
                .transpose()
                .map_err(|_| bad_row("proxy.last_http_status"))?,
        },
    })
}

/// A lease from the `lease_*` columns of [`crate::sql::lease_columns`] and
/// the proxy columns of the same row.
pub(crate) fn lease(row: &PgRow) -> Result<Lease, StorageError> {
    let proxy = proxy(row)?;
    let status: String = get(row, "lease_status")?;
    let pool_name: String = get(row, "lease_pool_name")?;
    Ok(Lease {
        id: get::<Uuid>(row, "lease_id")?.into(),
        proxy_id: proxy.id,
        pool_id: get::<Uuid>(row, "lease_pool_id")?.into(),
        pool_name: Arc::from(pool_name),
        consumer_id: get::<Uuid>(row, "lease_consumer_id")?.into(),
        status: lease_status(&status)?,
        acquired_at: get::<OffsetDateTime>(row, "lease_acquired_at")?,
        expires_at: get::<OffsetDateTime>(row, "lease_expires_at")?,
        released_at: get(row, "lease_released_at")?,
        proxy: Arc::new(proxy),
    })
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
