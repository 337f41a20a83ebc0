//! An index that serves the lowest_latency selector's order.

use sea_orm_migration::prelude::*;

/// lowest_latency acquires the leasable proxy with the lowest
/// `last_latency_ms` (never measured last, ties by id). Without an index in
/// that order every acquire sorted the whole pool (19 pairs/s at 100,000
/// proxies); with `(pool_id, last_latency_ms NULLS LAST, id)` over the
/// active proxies it walks the index from the fastest proxy to the first
/// one with capacity.
///
/// The hot path's writes stay HOT: acquire and release change only
/// `current_leases`, which no index holds. A health check that changes
/// `last_latency_ms` now writes a new index entry (a non-HOT update); health
/// checks are one write per proxy per probe interval, not per lease.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
CREATE INDEX IF NOT EXISTS proxy_latency_idx
    ON proxy (pool_id, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS proxy_latency_idx;
"#;

sql_migration!();
