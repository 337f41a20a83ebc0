//! Indexes that serve each scalar filter in each selector's order.

use sea_orm_migration::prelude::*;

/// An acquire filtered on one of `source`, `country`, `city`, `isp` or
/// `asn` used to walk the selector's index (m0008, m0009,
/// `proxy_available_idx`) and check the filter on every row it visited: a
/// value few proxies have (or none) walked most of the pool. Each of these
/// indexes holds the proxies of a pool with one value of the column in one
/// selector order, so the walk starts at the first matching proxy and stops
/// at the last one:
///
/// - `(pool_id, column, id)`: first_available and round_robin;
/// - `(pool_id, column, last_latency_ms NULLS LAST, id)`: lowest_latency;
/// - `(pool_id, column, checked_at NULLS FIRST, id)`: least_used's walk to
///   the first idle proxy;
/// - `(pool_id, column, pick_key, id)`: random's walks from a random key
///   (m0010). (When this migration was written random's acquire redrew
///   `pick_key`, a non-HOT update that writes every index of `proxy`; it
///   keeps keys fixed now, and only the predicate path still redraws.)
///
/// One index per (column, order) rather than a read of the matching proxies
/// and a sort: a prepared acquire runs a generic plan after five
/// executions, which does not know whether the value is common or rare; an
/// index in the selector's order is the cheapest plan for either, so the
/// generic plan is bounded too.
///
/// None of these columns changes on the hot path (acquire and release
/// write `current_leases` only), so those updates stay HOT. The cost is on
/// inserts (an import writes 20 more index entries per proxy) and on health
/// checks that change `last_latency_ms` or `checked_at` (already non-HOT
/// since m0008/m0009; they now write these indexes too).
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
CREATE INDEX IF NOT EXISTS proxy_source_idx
    ON proxy (pool_id, source, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_country_idx
    ON proxy (pool_id, country, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_city_idx
    ON proxy (pool_id, city, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_isp_idx
    ON proxy (pool_id, isp, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_asn_idx
    ON proxy (pool_id, asn, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_source_latency_idx
    ON proxy (pool_id, source, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_country_latency_idx
    ON proxy (pool_id, country, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_city_latency_idx
    ON proxy (pool_id, city, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_isp_latency_idx
    ON proxy (pool_id, isp, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_asn_latency_idx
    ON proxy (pool_id, asn, last_latency_ms ASC NULLS LAST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_source_checked_idx
    ON proxy (pool_id, source, checked_at ASC NULLS FIRST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_country_checked_idx
    ON proxy (pool_id, country, checked_at ASC NULLS FIRST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_city_checked_idx
    ON proxy (pool_id, city, checked_at ASC NULLS FIRST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_isp_checked_idx
    ON proxy (pool_id, isp, checked_at ASC NULLS FIRST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_asn_checked_idx
    ON proxy (pool_id, asn, checked_at ASC NULLS FIRST, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_source_pick_idx
    ON proxy (pool_id, source, pick_key, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_country_pick_idx
    ON proxy (pool_id, country, pick_key, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_city_pick_idx
    ON proxy (pool_id, city, pick_key, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_isp_pick_idx
    ON proxy (pool_id, isp, pick_key, id) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS proxy_asn_pick_idx
    ON proxy (pool_id, asn, pick_key, id) WHERE status = 'active';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS proxy_source_idx;
DROP INDEX IF EXISTS proxy_country_idx;
DROP INDEX IF EXISTS proxy_city_idx;
DROP INDEX IF EXISTS proxy_isp_idx;
DROP INDEX IF EXISTS proxy_asn_idx;
DROP INDEX IF EXISTS proxy_source_latency_idx;
DROP INDEX IF EXISTS proxy_country_latency_idx;
DROP INDEX IF EXISTS proxy_city_latency_idx;
DROP INDEX IF EXISTS proxy_isp_latency_idx;
DROP INDEX IF EXISTS proxy_asn_latency_idx;
DROP INDEX IF EXISTS proxy_source_checked_idx;
DROP INDEX IF EXISTS proxy_country_checked_idx;
DROP INDEX IF EXISTS proxy_city_checked_idx;
DROP INDEX IF EXISTS proxy_isp_checked_idx;
DROP INDEX IF EXISTS proxy_asn_checked_idx;
DROP INDEX IF EXISTS proxy_source_pick_idx;
DROP INDEX IF EXISTS proxy_country_pick_idx;
DROP INDEX IF EXISTS proxy_city_pick_idx;
DROP INDEX IF EXISTS proxy_isp_pick_idx;
DROP INDEX IF EXISTS proxy_asn_pick_idx;
"#;

sql_migration!();
