//! A random key per proxy and an index on it, for the random selector.

use sea_orm_migration::prelude::*;

/// random acquires a uniformly chosen leasable proxy. Without an index,
/// every acquire sorted the whole pool by `random()` (~28 pairs/s at
/// 100,000 proxies). With a random `pick_key` per proxy and an index on
/// `(pool_id, pick_key, id)` over the active proxies, acquire draws a
/// uniform point and walks the index from there to the first leasable
/// proxy (wrapping to the pool's start), and gives the proxy it leases a new
/// key (see `sql::random_pick` in the adapter for why that makes the pick
/// uniform).
///
/// The column is `NOT NULL DEFAULT random()`, so rows Python pharox 0.11
/// inserts (it does not know the column) get a key too, and existing rows
/// get one each when the column is added. A volatile default makes
/// PostgreSQL rewrite the table while it adds the column (an exclusive lock
/// for as long as copying `proxy` takes); the alternative, a nullable
/// column filled in batches, would leave NULL keys the pick has to treat
/// specially.
///
/// Cost: the random selector's acquire changes an indexed column, so its
/// update of the proxy is no longer HOT (new entries in every index of
/// `proxy`). The other selectors never write `pick_key`, and release does
/// not either, so their updates stay HOT.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
ALTER TABLE proxy ADD COLUMN IF NOT EXISTS pick_key double precision NOT NULL DEFAULT random();
CREATE INDEX IF NOT EXISTS proxy_pick_idx
    ON proxy (pool_id, pick_key, id) WHERE status = 'active';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS proxy_pick_idx;
ALTER TABLE proxy DROP COLUMN IF EXISTS pick_key;
"#;

sql_migration!();
