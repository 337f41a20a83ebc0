//! Database migrations of pharox, on `sea-orm-migration`.
//!
//! The schema is the one of the Python pharox 0.11 PostgreSQL adapter (same
//! table names, column names and lower-case text encodings, so a Python and
//! a Rust worker can share one database), plus a few nullable or defaulted
//! columns the Rust side keeps (health streaks, last latency/error/status).
//!
//! [`run`] is what `cargo xtask migrate` and `pharox migrate` call. It holds a
//! PostgreSQL advisory lock for the whole run, taken on the one connection of
//! a transaction, so two processes that migrate at once take turns instead of
//! racing on `CREATE TABLE`: the second one finds nothing pending.
//!
//! ```no_run
//! # async fn demo(db: &sea_orm_migration::sea_orm::DatabaseConnection)
//! # -> Result<(), pharox_migration::MigrationError> {
//! use pharox_migration::{MigrationCommand, run, schema_is_current};
//! let report = run(db, MigrationCommand::Up).await?;
//! println!("applied: {:?}", report.changed);
//! assert!(schema_is_current(db).await?);
//! # Ok(()) }
//! ```
//!
//! This crate has no cargo features.

use std::fmt;

pub use sea_orm_migration;
use sea_orm_migration::MigrationStatus;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

/// Implements `MigrationTrait` for the `Migration` of a module whose
/// migration is the SQL text of its `UP` and `DOWN` constants.
macro_rules! sql_migration {
    () => {
        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared(UP).await?;
                Ok(())
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared(DOWN).await?;
                Ok(())
            }
        }
    };
}

mod m0001_initial_schema;
mod m0002_selector_state;
mod m0003_lean_lease_indexes;
mod m0004_lease_consumer_without_fk;
mod m0005_proxy_checks_as_domains;
mod m0006_max_concurrency_default;
mod m0007_proxy_checked_at_for_python;
mod m0008_proxy_latency_index;
mod m0009_proxy_checked_index;
mod m0010_proxy_pick_key;
mod m0011_proxy_scalar_filter_indexes;
mod m0012_usage_bans_sessions;
mod m0013_api_keys;

/// The key of the PostgreSQL advisory lock held while migrating
/// (`pg_advisory_xact_lock`). Fixed, so every pharox process agrees on it.
pub const MIGRATION_LOCK_KEY: i64 = 0x7068_6172_6f78_6d67; // "pharoxmg"

/// Every pharox migration, oldest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial_schema::Migration),
            Box::new(m0002_selector_state::Migration),
            Box::new(m0003_lean_lease_indexes::Migration),
            Box::new(m0004_lease_consumer_without_fk::Migration),
            Box::new(m0005_proxy_checks_as_domains::Migration),
            Box::new(m0006_max_concurrency_default::Migration),
            Box::new(m0007_proxy_checked_at_for_python::Migration),
            Box::new(m0008_proxy_latency_index::Migration),
            Box::new(m0009_proxy_checked_index::Migration),
            Box::new(m0010_proxy_pick_key::Migration),
            Box::new(m0011_proxy_scalar_filter_indexes::Migration),
            Box::new(m0012_usage_bans_sessions::Migration),
            Box::new(m0013_api_keys::Migration),
        ]
    }
}

/// What [`run`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationCommand {
    /// Apply every pending migration.
    Up,
    /// Roll back the most recently applied migration.
    Down,
    /// Change nothing; report which migrations are applied and pending.
    Status,
    /// Drop every table of the current schema, then apply every migration.
    /// Destroys data.
    Fresh,
}

impl fmt::Display for MigrationCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Status => "status",
            Self::Fresh => "fresh",
        })
    }
}

impl std::str::FromStr for MigrationCommand {
    type Err = MigrationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "up" => Ok(Self::Up),
            "down" => Ok(Self::Down),
            "status" => Ok(Self::Status),
            "fresh" => Ok(Self::Fresh),
            other => Err(MigrationError::UnknownCommand(other.to_owned())),
        }
    }
}

/// What a [`run`] did and where the schema stands after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The command that ran.
    pub command: MigrationCommand,
    /// Migrations this run applied (`Up`, `Fresh`) or rolled back (`Down`),
    /// in the order it did so.
    pub changed: Vec<String>,
    /// Migrations applied after the run, oldest first.
    pub applied: Vec<String>,
    /// Migrations pending after the run, oldest first.
    pub pending: Vec<String>,
}

impl MigrationReport {
    /// Whether every migration is applied after the run.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Why a migration run failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database refused or failed a statement (or could not be reached).
    #[error("migration failed: {0}")]
    Database(#[from] DbErr),
    /// The command name is not one of up, down, status, fresh.
    #[error("unknown migration command {0:?} (expected up, down, status or fresh)")]
    UnknownCommand(String),
}

/// Runs `cmd` against the schema first on the connection's `search_path`,
/// holding the migration advisory lock ([`MIGRATION_LOCK_KEY`]) throughout.
///
/// Everything happens in one transaction on one pooled connection: the lock
/// is `pg_advisory_xact_lock`, so it is taken and released by the same
/// session (commit or rollback releases it; nothing can leak it into the
/// pool). Each migration runs in a savepoint of that transaction, so a
/// failing run changes nothing.
pub async fn run(
    db: &DatabaseConnection,
    cmd: MigrationCommand,
) -> Result<MigrationReport, MigrationError> {
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
    .await?;
    let before = statuses(&txn).await?;
    match cmd {
        MigrationCommand::Up => Migrator::up(&txn, None).await?,
        MigrationCommand::Down => Migrator::down(&txn, Some(1)).await?,
        MigrationCommand::Status => {}
        MigrationCommand::Fresh => Migrator::fresh(&txn).await?,
    }
    let after = statuses(&txn).await?;
    txn.commit().await?;

    let mut changed: Vec<String> = match cmd {
        MigrationCommand::Fresh => after
            .iter()
            .filter(|(_, applied)| *applied)
            .map(|(name, _)| name.clone())
            .collect(),
        _ => before
            .iter()
            .zip(&after)
            .filter(|((_, was), (_, is))| was != is)
            .map(|((name, _), _)| name.clone())
            .collect(),
    };
    if cmd == MigrationCommand::Down {
        changed.reverse();
    }
    Ok(MigrationReport {
        command: cmd,
        changed,
        applied: after
            .iter()
            .filter(|(_, applied)| *applied)
            .map(|(n, _)| n.clone())
            .collect(),
        pending: after
            .iter()
            .filter(|(_, applied)| !*applied)
            .map(|(n, _)| n.clone())
            .collect(),
    })
}

/// Whether every pharox migration is applied in the schema first on the
/// connection's `search_path`. Read-only: it creates nothing (a missing
/// schema gives `Ok(false)`), so callers can say "run `pharox migrate`"
/// instead of failing later on a missing table.
pub async fn schema_is_current(db: &DatabaseConnection) -> Result<bool, MigrationError> {
    Ok(pending_migrations(db).await?.is_empty())
}

/// The names of the migrations not yet applied, oldest first. Read-only.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, MigrationError> {
    Ok(Migrator::get_pending_migrations_read_only(db)
        .await?
        .iter()
        .map(|m| m.name().to_owned())
        .collect())
}

/// Every migration with whether it is applied, oldest first.
async fn statuses<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, bool)>, DbErr> {
    Ok(Migrator::get_migration_with_status_read_only(db)
        .await?
        .iter()
        .map(|m| (m.name().to_owned(), m.status() == MigrationStatus::Applied))
        .collect())
}
