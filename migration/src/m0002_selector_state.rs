//! The shared round-robin cursor.

use sea_orm_migration::prelude::*;

/// `pool_selector_state`, as in the Python reference's
/// `0002_selector_state.sql`: one cursor per pool and strategy, shared by
/// every worker and process.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// `last_proxy_id` has no foreign key: a cursor pointing at a deleted proxy
/// still orders the next pick correctly (the next id after it).
const UP: &str = r#"
CREATE TABLE pool_selector_state (
    pool_id       uuid NOT NULL,
    strategy      text NOT NULL,
    last_proxy_id uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pool_selector_state_pkey PRIMARY KEY (pool_id, strategy),
    CONSTRAINT pool_selector_state_pool_id_fkey FOREIGN KEY (pool_id)
        REFERENCES proxy_pool (id) ON DELETE CASCADE
);
"#;

const DOWN: &str = "DROP TABLE IF EXISTS pool_selector_state;";

sql_migration!();
