//! `lease.consumer_id` without a foreign key (acquire checks the consumer
//! itself, without locking its row), and a consumer index that no other
//! query mistakes for a list of active leases.

use sea_orm_migration::prelude::*;

/// A foreign key makes every lease insert take a `FOR KEY SHARE` lock on the
/// referenced consumer row. Workers usually share one consumer (the
/// manager's default), so concurrent acquires lock the same row: each lock
/// rewrites that row's `xmax`, concurrent holders turn it into a MultiXact
/// (SLRU pages, WAL records), and every acquire dirties the consumer's page.
/// Measured with 8 workers: a MultiXact for most acquires.
///
/// Acquire now checks that the consumer exists in the same statement (an
/// index probe, no lock) and leases nothing otherwise, so an unknown
/// consumer still gets "consumer not found". pharox never deletes
/// consumers; a consumer deleted by hand leaves its leases in place (they
/// expire or are released as usual) instead of cascading to them, which
/// the cascade did without fixing `proxy.current_leases` anyway.
///
/// `lease_consumer_id_idx` becomes `(consumer_id) WHERE status = 'active'
/// AND consumer_id IS NOT NULL`. The added term is always true (the column
/// is NOT NULL) and a query on a consumer (`consumer_id = $1`) implies it,
/// but a query that only says `status = 'active'` does not. Without it, when
/// `lease` was empty at its last `ANALYZE`, PostgreSQL took a full scan of
/// this index as the cheapest way to find "active leases" for acquire's
/// expired-lease probe and kept that plan while the table grew.
///
/// Down restores the constraint as m0001 made it and the index as m0003 did.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
ALTER TABLE lease DROP CONSTRAINT IF EXISTS lease_consumer_id_fkey;
DROP INDEX IF EXISTS lease_consumer_id_idx;
CREATE INDEX lease_consumer_id_idx ON lease (consumer_id)
    WHERE status = 'active' AND consumer_id IS NOT NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS lease_consumer_id_idx;
CREATE INDEX lease_consumer_id_idx ON lease (consumer_id) WHERE status = 'active';
ALTER TABLE lease ADD CONSTRAINT lease_consumer_id_fkey FOREIGN KEY (consumer_id)
    REFERENCES consumer (id) ON DELETE CASCADE;
"#;

sql_migration!();
