//! The storage of the long-running commands (`pharox serve`, `pharox
//! gateway`): PostgreSQL from `--database-url`, else the in-memory storage
//! seeded from `--pool NAME --proxies FILE`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use pharox::admin::{ImportOptions, import_proxies};
use pharox::ports::TaskLocks;
use pharox::{
    ApiKeyStore, ImportDefaults, MemoryStorage, MemoryTaskLocks, Operator, ProxyProtocol,
    ProxyStorage, parse_proxy_list,
};

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::import::{format_of, list_error, read_input};
use crate::migrate::open_checked;
use crate::operate::usage;
use crate::output::errln;

/// Where a long-running command keeps its pools: the storage flags.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// PostgreSQL to serve from, as postgres://user:pass@host:5432/db
    /// (several replicas may share one); without it, an in-memory storage.
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Database connections to keep (with --database-url).
    #[arg(long, default_value_t = 16)]
    pub max_connections: u32,
    /// In memory: create this pool at start.
    #[arg(long, conflicts_with = "database_url")]
    pub pool: Option<String>,
    /// In memory: import this proxy list into --pool at start (text, csv or
    /// jsonl, by extension; as `pharox proxy import`).
    #[arg(
        long,
        value_name = "FILE",
        requires = "pool",
        conflicts_with = "database_url"
    )]
    pub proxies: Option<PathBuf>,
    /// The scheme of list lines that have none: http, https, socks4, socks5.
    #[arg(long, requires = "proxies")]
    pub protocol: Option<String>,
}

/// What a long-running command runs on: the storage, the task locks of
/// its upkeep and sweeps, and the stored API keys (PostgreSQL only).
pub struct Stores {
    pub storage: Arc<dyn ProxyStorage>,
    #[cfg_attr(not(feature = "http-probe"), allow(dead_code))]
    pub locks: Arc<dyn TaskLocks>,
    pub keys: Option<Arc<dyn ApiKeyStore>>,
}

/// PostgreSQL (schema checked) with its advisory locks and API keys, or
/// memory seeded from the flags, with locks within this process and no
/// stored keys. `command` (`pharox serve`) starts the line that says how
/// many proxies were seeded.
pub async fn open_storage(args: &StorageArgs, command: &str) -> Result<Stores, CliError> {
    if let Some(url) = &args.database_url {
        let postgres = Arc::new(open_checked(url, args.max_connections, false).await?);
        return Ok(Stores {
            storage: postgres.clone(),
            locks: postgres.clone(),
            keys: Some(postgres),
        });
    }
    let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
    let locks: Arc<dyn TaskLocks> = Arc::new(MemoryTaskLocks::new());
    let Some(pool) = &args.pool else {
        return Ok(Stores {
            storage,
            locks,
            keys: None,
        });
    };
    // Check the list before anything is created.
    let parsed = match &args.proxies {
        Some(path) => {
            let protocol = args
                .protocol
                .as_deref()
                .map(str::parse::<ProxyProtocol>)
                .transpose()
                .map_err(|e| usage("protocol", &e.reason))?;
            let defaults = ImportDefaults {
                protocol,
                ..ImportDefaults::default()
            };
            let format = format_of(path);
            let input = read_input(path)?;
            Some(parse_proxy_list(&input, format, &defaults).map_err(|e| list_error(&e, format))?)
        }
        None => None,
    };
    Operator::new(Arc::clone(&storage))
        .create_pool(pool, None)
        .await
        .map_err(|e| match e {
            pharox::PharoxError::Invalid(v) => usage("pool", &v.reason),
            other => other.into(),
        })?;
    if let Some(parsed) = parsed {
        let report =
            import_proxies(storage.as_ref(), pool, parsed, ImportOptions::default()).await?;
        if !report.invalid.is_empty() {
            for line in &report.invalid {
                errln!("line {}: {}", line.line, line.error);
            }
            return Err(CliError::InvalidLines {
                invalid: report.invalid.len(),
                written: false,
            });
        }
        errln!("{command}: pool {pool}: {} proxies in memory", report.added);
    }
    Ok(Stores {
        storage,
        locks,
        keys: None,
    })
}
