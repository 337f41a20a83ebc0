//! `proxy.checked_at` always holds a time, so Python pharox 0.11 can read
//! every proxy row.

use sea_orm_migration::prelude::*;

/// Python pharox 0.11 declares `proxy.checked_at NOT NULL DEFAULT now()` and
/// its `Proxy` model requires a datetime: a NULL `checked_at` makes
/// `Proxy.model_validate` raise on that row. Its `first_available` orders by
/// `checked_at DESC`, where NULLs come first, so one such proxy made every
/// Python acquire from its pool fail.
///
/// The Rust side used NULL for "never checked". From now on it writes the
/// Unix epoch, `1970-01-01 00:00:00+00`, instead, and reads that value back
/// as "never checked" (`crates/adapter-postgres/src/rows.rs`). The epoch
/// sorts before every real check time, so "never checked first" orderings
/// (`ORDER BY checked_at ASC NULLS FIRST`, Python's least_used) stay as they
/// were; a Python health check overwrites it with a real time, which Rust
/// then reads as checked.
///
/// This migration fills the NULLs written so far with that value and gives
/// the column Python's default, `now()`, for inserts that leave it out (the
/// Python adapter's `save_proxy`, SQL by hand). The column stays nullable:
/// a Rust binary from before this change, still running beside a new one,
/// must be able to insert.
///
/// Down makes the epoch NULL again (what the older code reads as "never
/// checked") and drops the default.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
UPDATE proxy SET checked_at = '1970-01-01 00:00:00+00' WHERE checked_at IS NULL;
ALTER TABLE proxy ALTER COLUMN checked_at SET DEFAULT now();
"#;

const DOWN: &str = r#"
ALTER TABLE proxy ALTER COLUMN checked_at DROP DEFAULT;
UPDATE proxy SET checked_at = NULL WHERE checked_at = '1970-01-01 00:00:00+00';
"#;

sql_migration!();
