//! Fewer and smaller lease indexes, for a cheaper acquire and release.

use sea_orm_migration::prelude::*;

/// Every acquire inserts a lease row and every release writes a new version
/// of it (never a HOT update: `status` is in the partial indexes'
/// predicates), so each index on `lease` costs on both. This migration:
///
/// - drops `lease_active_expiry_idx (expires_at) WHERE status = 'active'`:
///   `lease_active_pool_expiry_idx (pool_id, expires_at)` has the same rows,
///   serves acquire's per-pool reclaim exactly, and `cleanup_expired` can
///   scan it whole (it holds only active leases, so that scan does not grow
///   with history);
/// - makes `lease_consumer_id_idx` partial on active leases (the question
///   asked of it is "the leases a consumer holds"): a release then no longer
///   inserts into it. Deleting a consumer (no pharox call does) finds its
///   finished leases for the cascade without it.
///
/// `lease_proxy_id_idx` stays full: deleting a proxy cascades to all of its
/// leases, finished ones included.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
DROP INDEX IF EXISTS lease_active_expiry_idx;
DROP INDEX IF EXISTS lease_consumer_id_idx;
CREATE INDEX lease_consumer_id_idx ON lease (consumer_id) WHERE status = 'active';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS lease_consumer_id_idx;
CREATE INDEX lease_consumer_id_idx ON lease (consumer_id);
CREATE INDEX IF NOT EXISTS lease_active_expiry_idx ON lease (expires_at) WHERE status = 'active';
"#;

sql_migration!();
