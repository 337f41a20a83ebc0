//! What reported outcomes make of a proxy (error score, cooldown), bans of
//! a proxy per target site, and sticky sessions (issue 13).

use sea_orm_migration::prelude::*;

/// Additive, so Python pharox 0.11 keeps reading and inserting: the three
/// proxy columns are defaulted or nullable (Python's inserts leave them
/// out; its reads never select them), and the two tables are new.
///
/// No index on the proxy columns: acquire and release update only
/// `current_leases`, and `report_outcome` updates only these columns, so
/// all of those updates stay HOT. The acquire statements test
/// `cooldown_until` on the rows the selector's index walk visits.
///
/// `lease.outcomes_applied` counts the outcomes applied under a lease, in
/// the transaction that applies each: when the reply to that transaction's
/// COMMIT is lost, the count tells whether it committed, so an outcome is
/// neither applied twice by a retry nor reported failed while applied.
///
/// `proxy_target_ban` is probed by its primary key `(proxy_id, target)`
/// once per visited row by an acquire that names a target (an anti-join).
/// `proxy_session` has no foreign key to `proxy_pool`: deleting a pool
/// deletes its proxies, whose cascade deletes the sessions bound to them,
/// and an FK to the pool would make every session upsert key-share lock the
/// one pool row that all of the pool's acquirers share (the reason
/// `lease.pool_id` has none either). `proxy_session_proxy_idx` serves the
/// cascade from `proxy`.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
ALTER TABLE proxy
    ADD COLUMN IF NOT EXISTS error_score double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cooldown_until timestamptz NULL,
    ADD COLUMN IF NOT EXISTS consecutive_cooldowns integer NOT NULL DEFAULT 0;

ALTER TABLE lease
    ADD COLUMN IF NOT EXISTS outcomes_applied integer NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS proxy_target_ban (
    proxy_id uuid NOT NULL REFERENCES proxy (id) ON DELETE CASCADE,
    target text NOT NULL,
    until timestamptz NOT NULL,
    consecutive integer NOT NULL DEFAULT 1,
    PRIMARY KEY (proxy_id, target)
);

CREATE TABLE IF NOT EXISTS proxy_session (
    pool_id uuid NOT NULL,
    session_key text NOT NULL,
    proxy_id uuid NOT NULL REFERENCES proxy (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, session_key)
);

CREATE INDEX IF NOT EXISTS proxy_session_proxy_idx ON proxy_session (proxy_id);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS proxy_session;
DROP TABLE IF EXISTS proxy_target_ban;
ALTER TABLE lease DROP COLUMN IF EXISTS outcomes_applied;
ALTER TABLE proxy
    DROP COLUMN IF EXISTS consecutive_cooldowns,
    DROP COLUMN IF EXISTS cooldown_until,
    DROP COLUMN IF EXISTS error_score;
"#;

sql_migration!();
