//! `pharox serve`: the HTTP lease service, and with `--gateway-listen` the
//! rotating forward proxy beside it on the same manager, keys and metrics.
//! This module only chooses the storage (PostgreSQL from `--database-url`,
//! else the in-memory storage seeded from `--pool NAME --proxies FILE`),
//! binds the listeners and stops on SIGTERM/SIGINT; the API is
//! `pharox_server`'s, the proxy `pharox_gateway`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pharox::upkeep::{self, SweepPools, UpkeepEvent};
use pharox::{ApiKeyAdmin, ProxyManager};
use pharox_adapter_dialer::TokioDialer;
use pharox_gateway::{Gateway, GatewayFlags, GatewayMetrics};
use pharox_server::config::ConfigError;
use pharox_server::{AppState, HealthSweeps, ServerArgs, ServerMetrics};
use tokio::sync::oneshot;

use crate::error::CliError;
use crate::gateway::{RunningGateway, bind, gateway_config};
use crate::health::{SweepFlags, describe_process};
use crate::operate::usage;
use crate::output::errln;
use crate::signals::Signals;
use crate::stores::{StorageArgs, open_storage};

/// Flags of `pharox serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storage: StorageArgs,
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
    /// Also run the rotating forward proxy (as `pharox gateway`) on this
    /// address, on the same pools, keys and metrics; its header timeout is
    /// --header-timeout.
    #[arg(long, value_name = "ADDR", help_heading = "Gateway")]
    gateway_listen: Option<SocketAddr>,
    /// With --gateway-listen: serve SOCKS5 too, on this address.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "gateway_listen",
        help_heading = "Gateway"
    )]
    gateway_socks_listen: Option<SocketAddr>,
    /// What the gateway does with a request (with --gateway-listen).
    #[command(flatten, next_help_heading = "Gateway")]
    gateway: GatewayFlags,
}

/// Runs `pharox serve` until SIGTERM or SIGINT, then lets requests in
/// flight finish within `--shutdown-timeout` and returns (exit code 0).
///
/// With `--database-url` the keys in the database (`pharox apikey`) are
/// accepted besides the static ones, so the server starts without static
/// keys; in memory, at least one static key is required.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let keys = if args.storage.database_url.is_some() {
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
    let gateway_listeners: Vec<SocketAddr> = args
        .gateway_listen
        .into_iter()
        .chain(args.gateway_socks_listen)
        .collect();
    let gateway_config = match args.gateway_listen {
        Some(_) => Some(gateway_config(
            &args.gateway,
            args.server.header_timeout,
            &gateway_listeners,
        )?),
        None => None,
    };
    let mut signals = Signals::install()?;
    let stores = open_storage(&args.storage, "pharox serve").await?;
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
    let gateway_metrics = GatewayMetrics::new(metrics.recorder());
    let state = match stores.keys {
        Some(store) => AppState::with_stored_keys(
            Arc::clone(&manager),
            keys,
            Arc::new(ApiKeyAdmin::new(store).with_cache_ttl(key_cache)),
            limits,
        ),
        None => AppState::new(Arc::clone(&manager), keys, limits),
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
    // The gateway leases through the server's manager, accepts its keys
    // (the stored ones through the same cache) and records into its registry.
    let mut gateway = match (gateway_config, args.gateway_listen) {
        (Some(config), Some(addr)) => {
            let (http, local) = bind(addr, "gateway-listen").await?;
            errln!("pharox serve: gateway listening on http://{local}");
            let socks = match args.gateway_socks_listen {
                Some(addr) => {
                    let (socks, local) = bind(addr, "gateway-socks-listen").await?;
                    errln!("pharox serve: gateway socks5 on socks5://{local}");
                    Some(socks)
                }
                None => None,
            };
            let gateway = Gateway::with_metrics(
                manager,
                Arc::new(TokioDialer::new()),
                state.key_ring().clone(),
                config,
                gateway_metrics,
            );
            Some(RunningGateway::start(gateway, http, socks))
        }
        _ => None,
    };

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
        ended = async {
            match &mut gateway {
                Some(gateway) => gateway.ended().await,
                None => std::future::pending().await,
            }
        } => {
            // The gateway never stops on its own: only when it failed.
            ended?;
            return Err(CliError::Other("the gateway stopped".to_owned()));
        }
    };
    errln!(
        "pharox serve: {}: finishing requests in flight (up to {:.1} s)",
        signal.name(),
        shutdown_timeout.as_secs_f64()
    );
    let _ = stop.send(());
    if let Some(gateway) = &gateway {
        gateway.stop();
    }
    // Requests in flight finish, tunnels close and their leases are
    // released, background sweeps stop gently (results being written are
    // written) and leader locks are released, all within the shutdown
    // timeout.
    let stopping = async move {
        let proxied = async {
            match &mut gateway {
                Some(gateway) => gateway.ended().await,
                None => Ok(()),
            }
        };
        let (served, proxied) = tokio::join!(server, proxied);
        tokio::join!(upkeep.stop(), state.shutdown());
        proxied.map(|()| served)
    };
    match tokio::time::timeout(shutdown_timeout, stopping).await {
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(CliError::Other(format!("the server stopped: {e}"))),
        Ok(Ok(Err(e))) => Err(CliError::Other(format!("the server failed: {e}"))),
        Err(_) => {
            tracing::warn!("requests still in flight at the shutdown timeout were cut off");
            errln!("pharox serve: shutdown timeout reached; requests still in flight were cut off");
            Ok(())
        }
    }
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
