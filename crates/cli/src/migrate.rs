//! `pharox migrate`, and opening PostgreSQL for the other commands.

use std::sync::Arc;

use clap::Args;
use pharox::ProxyStorage;
use pharox::postgres::{PostgresConfig, PostgresStorage};
use pharox_migration::MigrationCommand;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::output::{self, outln};

/// Flags of `pharox migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// up, down (the latest migration), status or fresh (drops everything).
    #[arg(default_value = "up", value_parser = parse_command)]
    command: MigrationCommand,
    /// The database, as postgres://user:pass@host:5432/db?sslmode=...
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<DatabaseUrl>,
    /// Do not ask before `fresh` drops everything (required when stdin is
    /// not a terminal).
    #[arg(long)]
    yes: bool,
}

fn parse_command(value: &str) -> Result<MigrationCommand, String> {
    value
        .parse()
        .map_err(|e: pharox_migration::MigrationError| e.to_string())
}

/// Runs a migration command under the migration advisory lock.
pub async fn run(args: MigrateArgs) -> Result<(), CliError> {
    let url = required_url(args.database_url.as_ref())?;
    if matches!(args.command, MigrationCommand::Fresh) && !args.yes {
        crate::prompt::confirm(
            "drop every pharox table (all pools, proxies, leases and health history) and migrate afresh?",
        )?;
    }
    let storage = connect(url, 2).await?;
    let report = pharox_migration::run(storage.connection(), args.command)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    // What changed, or where the schema stands: never "nothing to do"
    // above a list of pending migrations.
    let changed = match (report.changed.is_empty(), report.pending.len()) {
        (false, _) => report.changed.join(", "),
        (true, 0) => "up to date".to_owned(),
        (true, pending) => format!("{pending} pending"),
    };
    storage.close().await;
    output::print(|out| {
        outln!(out, "migrate {}: {changed}", report.command);
        outln!(out, "applied: {}", list(&report.applied));
        outln!(out, "pending: {}", list(&report.pending));
        Ok(())
    })?;
    Ok(())
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The URL, or a usage error saying where it comes from.
pub fn required_url(url: Option<&DatabaseUrl>) -> Result<&DatabaseUrl, CliError> {
    url.ok_or(CliError::Usage {
        flag: "database-url",
        reason: "is required (or set PHAROX_DATABASE_URL)".to_owned(),
    })
}

/// Connects with a pool of `max_connections`.
pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> Result<PostgresStorage, CliError> {
    let config = PostgresConfig::from_dsn(url.expose())
        .map_err(|e| CliError::Usage {
            flag: "database-url",
            reason: e.to_string(),
        })?
        .with_max_connections(max_connections);
    Ok(PostgresStorage::connect(&config).await?)
}

/// Connects and checks (or, with `migrate`, applies) the schema.
pub async fn open_checked(
    url: &DatabaseUrl,
    max_connections: u32,
    migrate: bool,
) -> Result<PostgresStorage, CliError> {
    let storage = connect(url, max_connections).await?;
    if migrate {
        pharox_migration::run(storage.connection(), MigrationCommand::Up)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
    } else if !pharox_migration::schema_is_current(storage.connection())
        .await
        .map_err(|e| CliError::Other(e.to_string()))?
    {
        return Err(CliError::SchemaMissing {
            migrate_flag: false,
        });
    }
    Ok(storage)
}

/// The storage for `pharox bench --database-url`: one connection per worker
/// and two to spare.
pub async fn open_for_bench(
    url: &DatabaseUrl,
    workers: usize,
    migrate: bool,
) -> Result<Arc<dyn ProxyStorage>, CliError> {
    let connections = u32::try_from(workers).unwrap_or(u32::MAX).saturating_add(2);
    match open_checked(url, connections, migrate).await {
        Ok(storage) => Ok(Arc::new(storage)),
        Err(CliError::SchemaMissing { .. }) => Err(CliError::SchemaMissing { migrate_flag: true }),
        Err(e) => Err(e),
    }
}
