//! `pharox serve`: the HTTP lease service. This module only chooses the
//! storage (PostgreSQL from `--database-url`, else the in-memory storage
//! seeded from `--pool NAME --proxies FILE`), binds the listener and stops
//! on SIGTERM/SIGINT; the API is `pharox_server`'s.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use pharox::admin::{ImportOptions, import_proxies};
use pharox::{
    ImportDefaults, MemoryStorage, Operator, ProxyManager, ProxyProtocol, ProxyStorage,
    parse_proxy_list,
};
use pharox_server::config::ConfigError;
use pharox_server::{AppState, ServerArgs, ServerMetrics};
use tokio::sync::oneshot;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::import::{format_of, list_error, read_input};
use crate::migrate::open_checked;
use crate::operate::usage;
use crate::output::errln;
use crate::signals::Signals;

/// Flags of `pharox serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// PostgreSQL to serve from, as postgres://user:pass@host:5432/db
    /// (several replicas may share one); without it, an in-memory storage.
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<DatabaseUrl>,
    /// Database connections to keep (with --database-url).
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// In memory: create this pool at start.
    #[arg(long, conflicts_with = "database_url")]
    pool: Option<String>,
    /// In memory: import this proxy list into --pool at start (text, csv or
    /// jsonl, by extension; as `pharox proxy import`).
    #[arg(
        long,
        value_name = "FILE",
        requires = "pool",
        conflicts_with = "database_url"
    )]
    proxies: Option<PathBuf>,
    /// The scheme of list lines that have none: http, https, socks4, socks5.
    #[arg(long, requires = "proxies")]
    protocol: Option<String>,
}

/// Runs `pharox serve` until SIGTERM or SIGINT, then lets requests in
/// flight finish within `--shutdown-timeout` and returns (exit code 0).
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let keys = args.server.api_keys().map_err(config_error)?;
    let limits = args.server.limits().map_err(config_error)?;
    let shutdown_timeout = args.server.shutdown_timeout().map_err(config_error)?;
    let mut signals = Signals::install()?;
    let storage = open_storage(&args).await?;
    let metrics = ServerMetrics::new();
    let manager = Arc::new(ProxyManager::from_arc(storage).with_observer(metrics.observer()));
    let state = AppState::new(manager, keys, limits).with_metrics(metrics);
    let listen = args.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    // One line on stderr, so a supervisor (or a test) learns the port.
    errln!("pharox serve: listening on http://{local}");
    tracing::info!(%local, "listening");

    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(pharox_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let signal = tokio::select! {
        signal = signals.recv() => signal,
        ended = &mut server => {
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(CliError::Other(format!("the server stopped: {e}"))),
                Err(e) => Err(CliError::Other(format!("the server failed: {e}"))),
            };
        }
    };
    errln!(
        "pharox serve: {}: finishing requests in flight (up to {:.1} s)",
        signal.name(),
        shutdown_timeout.as_secs_f64()
    );
    let _ = stop.send(());
    match tokio::time::timeout(shutdown_timeout, server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(CliError::Other(format!("the server stopped: {e}"))),
        Ok(Err(e)) => Err(CliError::Other(format!("the server failed: {e}"))),
        Err(_) => {
            tracing::warn!("requests still in flight at the shutdown timeout were cut off");
            errln!("pharox serve: shutdown timeout reached; requests still in flight were cut off");
            Ok(())
        }
    }
}

/// PostgreSQL (schema checked), or memory seeded from the flags.
async fn open_storage(args: &ServeArgs) -> Result<Arc<dyn ProxyStorage>, CliError> {
    if let Some(url) = &args.database_url {
        return Ok(Arc::new(
            open_checked(url, args.max_connections, false).await?,
        ));
    }
    let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
    let Some(pool) = &args.pool else {
        return Ok(storage);
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
        errln!(
            "pharox serve: pool {pool}: {} proxies in memory",
            report.added
        );
    }
    Ok(storage)
}

fn config_error(e: ConfigError) -> CliError {
    match e {
        ConfigError::Invalid { flag, reason } => usage(flag, reason),
        ConfigError::NoKeys => usage(
            "api-keys-file",
            "or PHAROX_API_KEYS is required: SCOPE:KEY,... (scopes lease, admin)",
        ),
        ConfigError::Keys(e) => CliError::Usage {
            flag: "api-keys-file",
            reason: format!("(or PHAROX_API_KEYS) {e}"),
        },
        e @ ConfigError::KeyFile { .. } => CliError::Other(e.to_string()),
    }
}
