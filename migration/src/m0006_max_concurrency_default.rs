//! `proxy.max_concurrency` defaults to 1, as in the Python schema.

use sea_orm_migration::prelude::*;

/// The Python pharox 0.11 schema declares `max_concurrency ... DEFAULT 1`;
/// ours kept the column nullable (NULL: no limit) but had no default, so an
/// insert that leaves the column out made an unlimited proxy where the
/// Python side would have made a single-slot one. pharox's own inserts name
/// the column, so only other writers (SQL by hand, the Python side, the
/// SeaORM entity with the column `NotSet`) see the difference.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
ALTER TABLE proxy ALTER COLUMN max_concurrency SET DEFAULT 1;
"#;

const DOWN: &str = r#"
ALTER TABLE proxy ALTER COLUMN max_concurrency DROP DEFAULT;
"#;

sql_migration!();
