//! PostgreSQL storage adapter for pharox.
//!
//! [`PostgresStorage`] implements the [`ProxyStorage`](pharox_ports::ProxyStorage)
//! port on the schema of the `pharox-migration` crate, which is the Python
//! pharox 0.11 schema (a Python and a Rust worker can share one database).
//! It runs on a SeaORM connection ([`PostgresStorage::connection`]); the
//! entities of every table are in [`entities`]. The hot paths are
//! hand-written SQL on that connection's sqlx pool: acquire and release are
//! one statement (one round trip) each. See `README.md` next to this crate
//! for the design and the measurements.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
//! let config = PostgresConfig::from_env()?; // PHAROX_DATABASE_URL or PHAROX_PG_*
//! let storage = PostgresStorage::connect(&config).await?;
//! pharox_migration::run(storage.connection(), pharox_migration::MigrationCommand::Up).await?;
//! # Ok(()) }
//! ```
//!
//! This crate has no cargo features.

mod admin_queries;
mod api_keys;
mod config;
pub mod entities;
mod error;
mod hot;
mod locks;
mod outcomes;
mod rows;
mod sql;
mod storage;
pub mod testing;
mod usage_sql;

pub use config::{ConfigError, ENV_DATABASE_URL, PostgresConfig, SslMode};
pub use error::MAX_ATTEMPTS;
pub use locks::LOCK_CLASS;
pub use storage::PostgresStorage;
