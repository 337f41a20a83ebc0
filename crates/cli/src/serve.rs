//! `pharox serve`: the HTTP lease service. This module only chooses the
//! storage (PostgreSQL from `--database-url`, else the in-memory storage
//! seeded from `--pool NAME --proxies FILE`), binds the listener and stops
//! on SIGTERM/SIGINT; the API is `pharox_server`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pharox::admin::{ImportOptions, import_proxies};
use pharox::ports::TaskLocks;
use pharox::upkeep::{self, SweepPools, UpkeepEvent};
use pharox::{
    ApiKeyAdmin, ApiKeyStore, ImportDefaults, MemoryStorage, MemoryTaskLocks, Operator,
    ProxyManager, ProxyProtocol, ProxyStorage, parse_proxy_list,
};
use pharox_server::config::ConfigError;
use pharox_server::{AppState, HealthSweeps, ServerArgs, ServerMetrics};
use tokio::sync::oneshot;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::health::{SweepFlags, describe_process};
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
    /// Sweep the pools' health every SECS seconds in the background, with
    /// the sweep flags below (off by default). With several replicas on
    /// one database, one leads the sweeps and the others stand by.
    #[arg(long, value_name = "SECS")]
    health_interval: Option<f64>,
    /// The pools the background sweeps cover, comma-separated (default:
    /// every pool, as listed at each round).
    #[arg(
        long,
        value_name = "POOLS",
        value_delimiter = ',',
        requires = "health_interval"
    )]
    health_pools: Option<Vec<String>>,
    /// Reclaim expired leases every SECS seconds in the background (off by
    /// default; acquires reclaim a pool's expired leases anyway). One
    /// replica leads it.
    #[arg(long, value_name = "SECS")]
    cleanup_interval: Option<f64>,
    /// How sweeps check proxies: the background ones and those started with
    /// POST /v1/pools/{pool}/health-sweeps (as `pharox health check`).
    #[command(flatten, next_help_heading = "Health sweeps")]
    sweep: SweepFlags,
}

/// Runs `pharox serve` until SIGTERM or SIGINT, then lets requests in
/// flight finish within `--shutdown-timeout` and returns (exit code 0).
///
/// With `--database-url` the keys in the database (`pharox apikey`) are
/// accepted besides the static ones, so the server starts without static
/// keys; in memory, at least one static key is required.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let keys = if args.database_url.is_some() {
        args.server.static_api_keys()
    } else {
        args.server.api_keys()
    }
    .map_err(config_error)?;
    let limits = args.server.limits().map_err(config_error)?;
    let shutdown_timeout = args.server.shutdown_timeout().map_err(config_error)?;
    let key_cache = args.server.api_key_cache().map_err(config_error)?;
    let tls = args.server.tls().map_err(config_error)?;
    let health_interval = interval("health-interval", args.health_interval)?;
    let cleanup_interval = interval("cleanup-interval", args.cleanup_interval)?;
    let sweep = args.sweep.setup()?;
    let mut signals = Signals::install()?;
    let stores = open_storage(&args).await?;
    if health_interval.is_some() {
        tokio::select! {
            signal = signals.recv() => return Err(CliError::Interrupted(signal)),
            checked = sweep.check_target() => checked?,
        }
    }
    let holder = describe_process("pharox serve");
    let metrics = ServerMetrics::new();
    let orchestrator = sweep.orchestrator(Arc::clone(&stores.storage), Some(metrics.observer()))?;
    let manager = Arc::new(
        ProxyManager::from_arc(Arc::clone(&stores.storage)).with_observer(metrics.observer()),
    );
    let state = match stores.keys {
        Some(store) => AppState::with_stored_keys(
            manager,
            keys,
            Arc::new(ApiKeyAdmin::new(store).with_cache_ttl(key_cache)),
            limits,
        ),
        None => AppState::new(manager, keys, limits),
    }
    .with_metrics(metrics)
    .with_health_sweeps(HealthSweeps::new(
        orchestrator.clone(),
        Arc::clone(&stores.locks),
        holder.clone(),
    ));
    let mut upkeep =
        upkeep::upkeep(stores.storage, stores.locks, holder).listener(Arc::new(print_upkeep));
    if let Some(every) = health_interval {
        let pools = match args.health_pools.clone() {
            Some(names) => SweepPools::Named(names),
            None => SweepPools::All,
        };
        upkeep = upkeep.health(orchestrator, every, pools);
    }
    if let Some(every) = cleanup_interval {
        upkeep = upkeep.cleanup(every);
    }
    let listen = args.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    // One line on stderr, so a supervisor (or a test) learns the port.
    let scheme = if tls.is_some() { "https" } else { "http" };
    errln!("pharox serve: listening on {scheme}://{local}");
    tracing::info!(%local, scheme, "listening");

    let upkeep = upkeep.spawn()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    let mut server = match tls {
        Some(tls) => tokio::spawn(pharox_server::serve_tls(
            listener,
            state.clone(),
            tls,
            stopped,
        )),
        None => tokio::spawn(pharox_server::serve(listener, state.clone(), stopped)),
    };
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
    // Requests in flight finish, background sweeps stop gently (results
    // being written are written) and leader locks are released, all
    // within the shutdown timeout.
    let stopping = async move {
        let served = server.await;
        tokio::join!(upkeep.stop(), state.shutdown());
        served
    };
    match tokio::time::timeout(shutdown_timeout, stopping).await {
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

/// What a server runs on: the storage, the task locks of its upkeep and
/// sweeps, and the stored API keys (PostgreSQL only).
struct Stores {
    storage: Arc<dyn ProxyStorage>,
    locks: Arc<dyn TaskLocks>,
    keys: Option<Arc<dyn ApiKeyStore>>,
}

/// PostgreSQL (schema checked) with its advisory locks and API keys, or
/// memory seeded from the flags, with locks within this process and no
/// stored keys.
async fn open_storage(args: &ServeArgs) -> Result<Stores, CliError> {
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
        errln!(
            "pharox serve: pool {pool}: {} proxies in memory",
            report.added
        );
    }
    Ok(Stores {
        storage,
        locks,
        keys: None,
    })
}

/// An upkeep interval flag: more than 0 and at most a day.
fn interval(flag: &'static str, secs: Option<f64>) -> Result<Option<Duration>, CliError> {
    secs.map(|secs| {
        if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(usage(flag, "must be more than 0 and at most 86400 seconds"))
        }
    })
    .transpose()
}

/// The upkeep's events that an operator (or a supervisor) wants to see, one
/// line each on stderr.
fn print_upkeep(event: &UpkeepEvent) {
    match event {
        UpkeepEvent::Leading(task) => errln!("pharox serve: {task}: leading"),
        UpkeepEvent::StandingBy { task, leader } => errln!(
            "pharox serve: {task}: standing by, led by {}",
            leader.as_deref().unwrap_or("another process")
        ),
        UpkeepEvent::LostLead { task, error } => {
            errln!("pharox serve: {task}: lost the lead ({error}); standing by");
        }
        UpkeepEvent::Swept { pool, summary } => errln!(
            "pharox serve: health: swept pool {pool}: {} checked, {} failed",
            summary.checked,
            summary.failed
        ),
        UpkeepEvent::SweepSkipped { pool, holder } => errln!(
            "pharox serve: health: pool {pool} skipped, swept by {}",
            holder.as_deref().unwrap_or("another process")
        ),
        UpkeepEvent::Cleaned { reclaimed } if *reclaimed > 0 => {
            errln!("pharox serve: cleanup: {reclaimed} expired leases reclaimed");
        }
        UpkeepEvent::Failed { task, error } => errln!("pharox serve: {task}: failed: {error}"),
        _ => {}
    }
}

fn config_error(e: ConfigError) -> CliError {
    match e {
        ConfigError::Invalid { flag, reason } => usage(flag, reason),
        ConfigError::NoKeys => usage(
            "api-keys-file",
            "or PHAROX_API_KEYS is required without --database-url: SCOPE:KEY,... \
             (scopes lease, admin)",
        ),
        ConfigError::Tls(e) => CliError::Usage {
            flag: e.flag,
            reason: format!("{}: {}", e.path, e.reason),
        },
        ConfigError::Keys(e) => CliError::Usage {
            flag: "api-keys-file",
            reason: format!("(or PHAROX_API_KEYS) {e}"),
        },
        e @ ConfigError::KeyFile { .. } => CliError::Other(e.to_string()),
    }
}
