//! `pharox bench serve`: the HTTP lease service measured over loopback.
//!
//! The server (`pharox_server::serve`) runs in this process on
//! 127.0.0.1:0 over a seeded pool, in memory or on PostgreSQL; a load
//! generator of its own drives it over `--connections` keep-alive HTTP/1.1
//! connections (hyper's client, one request at a time per connection, as a
//! worker does). Two phases of `--duration` each, back to back on the same
//! server and connections: `GET /healthz` (the HTTP round trip alone), then
//! acquire + release pairs (`POST /v1/pools/{pool}/leases`, `POST
//! /v1/leases/{id}/release`). `--idle-connections N` then opens N more
//! connections that each make one request and stay open, and reports the
//! process's resident memory with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pharox::{MemoryStorage, ProxyManager, ProxyPool, ProxyStorage};
use pharox_server::{ApiKeys, AppState, Limits};
use serde_json::json;
use tokio::net::TcpStream;

use crate::error::CliError;
use crate::limits;
use crate::output::{self, outln};

/// The most connections a run may open (load and idle ones each).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Flags of `pharox bench serve`.
#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Keep-alive connections driving the server, each one request at a
    /// time (1 to 10,000).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Seconds each phase (healthz, then acquire+release) lasts.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Proxies in the seeded pool (max concurrency 1 each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Serve from PostgreSQL (a fresh pool, removed afterwards) instead of
    /// the in-memory storage.
    #[cfg(feature = "postgres")]
    #[arg(long, env = "PHAROX_DATABASE_URL", hide_env_values = true)]
    database_url: Option<crate::database_url::DatabaseUrl>,
    /// Database connections of the server (with --database-url; default:
    /// --connections, at most 64).
    #[cfg(feature = "postgres")]
    #[arg(long)]
    max_db_connections: Option<usize>,
    /// After the phases, open this many more connections that make one
    /// request each and stay open, and report resident memory with them.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Print one JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

/// A key for the run only: made up per run, never printed.
fn run_key() -> String {
    format!("bench-{}", uuid::Uuid::new_v4().simple())
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    /// Completed units (requests for healthz, pairs for leases).
    done: u64,
    /// Failed requests (transport errors, unexpected statuses).
    errors: u64,
    /// Lease requests answered 409 (no proxy free).
    misses: u64,
    /// Latency of each unit, microseconds.
    latencies_us: Vec<u64>,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Phase {
    fn merge(&mut self, other: Phase) {
        self.done += other.done;
        self.errors += other.errors;
        self.misses += other.misses;
        self.latencies_us.extend(other.latencies_us);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn per_sec(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn percentile_ms(&mut self, q: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        self.latencies_us.sort_unstable();
        let rank = (q * (self.latencies_us.len() - 1) as f64).round() as usize;
        Some(self.latencies_us[rank] as f64 / 1000.0)
    }
}

/// Runs the HTTP benchmark.
pub async fn run(args: ServeBenchArgs) -> Result<(), CliError> {
    limits::count("connections", args.connections, MAX_CONNECTIONS)?;
    limits::count("proxies", args.proxies, limits::MAX_PROXIES)?;
    if args.idle_connections > MAX_CONNECTIONS {
        return Err(CliError::Usage {
            flag: "idle-connections",
            reason: format!("must be at most {MAX_CONNECTIONS}"),
        });
    }
    let duration = limits::seconds("duration", args.duration, limits::MAX_DURATION_SECS)?;
    let (storage, storage_name) = open_storage(&args).await?;
    let pool_name = format!("bench-serve-{:012x}", uuid::Uuid::new_v4().as_u128() >> 80);
    let outcome = measure(&args, duration, &storage, &pool_name).await;
    // The pool goes, with its leases, whatever happened.
    if let Ok(pool) = storage.get_pool_by_name(&pool_name).await
        && let Err(e) = storage.delete_pool(pool.id).await
    {
        tracing::warn!(error = %e, pool = %pool_name, "could not remove the benchmark's pool");
    }
    let mut measured = outcome?;
    let healthz_per_sec = measured.healthz.per_sec();
    let pairs_per_sec = measured.pairs.per_sec();
    // A pair is two requests: the lease logic's share of the round trip.
    let ratio = pairs_per_sec / (healthz_per_sec / 2.0).max(f64::EPSILON);
    let errors = measured.healthz.errors + measured.pairs.errors;
    let p50 = measured.pairs.percentile_ms(0.5);
    let p99 = measured.pairs.percentile_ms(0.99);
    let printed = if args.json {
        let report = json!({
            "storage": storage_name,
            "connections": args.connections,
            "duration_secs": duration.as_secs_f64(),
            "proxies": args.proxies,
            "pairs_per_sec": pairs_per_sec,
            "healthz_requests_per_sec": healthz_per_sec,
            "pairs_vs_half_healthz": ratio,
            "pair_p50_ms": p50,
            "pair_p99_ms": p99,
            "misses": measured.pairs.misses,
            "errors": errors,
            "idle_connections": args.idle_connections,
            "rss_mib": measured.rss_mib,
        });
        output::print(|stdout| {
            outln!(stdout, "{report}");
            Ok(())
        })
    } else {
        output::print(|stdout| {
            outln!(
                stdout,
                "pharox bench serve: {storage_name}, {} connections, {} proxies, {:.1} s per phase",
                args.connections,
                args.proxies,
                duration.as_secs_f64()
            );
            outln!(
                stdout,
                "  GET /healthz        {healthz_per_sec:>12.0} requests/s"
            );
            outln!(
                stdout,
                "  acquire + release  {pairs_per_sec:>12.0} pairs/s  ({:.2} of healthz/2; pair p50 {} ms, p99 {} ms)",
                ratio,
                p50.map_or("-".into(), |v| format!("{v:.2}")),
                p99.map_or("-".into(), |v| format!("{v:.2}")),
            );
            outln!(
                stdout,
                "  misses {}, errors {errors}",
                measured.pairs.misses
            );
            if let Some(rss) = measured.rss_mib {
                outln!(
                    stdout,
                    "  resident memory with {} idle connections: {rss:.1} MiB",
                    args.idle_connections
                );
            }
            Ok(())
        })
    };
    printed?;
    if errors > 0 {
        let first = measured
            .pairs
            .first_error
            .or(measured.healthz.first_error)
            .unwrap_or_default();
        return Err(CliError::OperationsFailed { errors, first });
    }
    Ok(())
}

struct Measured {
    healthz: Phase,
    pairs: Phase,
    rss_mib: Option<f64>,
}

#[cfg(feature = "postgres")]
async fn open_storage(
    args: &ServeBenchArgs,
) -> Result<(Arc<dyn ProxyStorage>, &'static str), CliError> {
    if let Some(url) = &args.database_url {
        let connections = args
            .max_db_connections
            .unwrap_or_else(|| args.connections.min(64));
        limits::count("max-db-connections", connections, 1000)?;
        let storage = crate::migrate::open_for_bench(url, connections, false).await?;
        return Ok((storage, "postgres"));
    }
    Ok((Arc::new(MemoryStorage::new()), "memory"))
}

#[cfg(not(feature = "postgres"))]
async fn open_storage(
    _args: &ServeBenchArgs,
) -> Result<(Arc<dyn ProxyStorage>, &'static str), CliError> {
    Ok((Arc::new(MemoryStorage::new()), "memory"))
}

async fn measure(
    args: &ServeBenchArgs,
    duration: Duration,
    storage: &Arc<dyn ProxyStorage>,
    pool_name: &str,
) -> Result<Measured, CliError> {
    let pool = storage.save_pool(&ProxyPool::new(pool_name)?).await?;
    let proxies = crate::seed::proxies(pool.id, args.proxies, 1)?;
    storage.add_proxies(&proxies).await?;
    drop(proxies);

    let key = run_key();
    let keys = ApiKeys::parse(&format!("lease:{key}"))
        .map_err(|e| CliError::Other(format!("the benchmark's key: {e}")))?;
    let limits = Limits {
        max_concurrency: (args.connections + args.idle_connections).max(1024),
        ..Limits::default()
    };
    let manager = Arc::new(ProxyManager::from_arc(Arc::clone(storage)));
    let state = AppState::new(manager, keys, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("cannot read the listening address: {e}")))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pharox_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));

    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(connect(addr).await?);
    }
    let target = Arc::new(Target {
        authority: addr.to_string(),
        key,
        acquire_path: format!("/v1/pools/{pool_name}/leases"),
    });
    let (healthz, senders) = phase(senders, duration, Arc::clone(&target), Work::Healthz).await;
    let (pairs, senders) = phase(senders, duration, Arc::clone(&target), Work::Pairs).await;

    let mut idle = Vec::with_capacity(args.idle_connections);
    for _ in 0..args.idle_connections {
        let mut sender = connect(addr).await?;
        // One request, so each is a served keep-alive connection, not
        // just an accepted socket.
        let _ = request(&mut sender, &target, Method::GET, "/healthz").await;
        idle.push(sender);
    }
    let rss_mib = (args.idle_connections > 0).then(resident_mib).flatten();
    drop(idle);
    drop(senders);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(Measured {
        healthz,
        pairs,
        rss_mib,
    })
}

struct Target {
    authority: String,
    key: String,
    acquire_path: String,
}

#[derive(Debug, Clone, Copy)]
enum Work {
    Healthz,
    Pairs,
}

async fn connect(addr: std::net::SocketAddr) -> Result<SendRequest<Empty<Bytes>>, CliError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| CliError::Other(format!("cannot connect to the server: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CliError::Other(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request; the status and the body.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &target.authority)
        .header("x-api-key", &target.key)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Runs `work` on every connection until `duration` has passed.
async fn phase(
    senders: Vec<SendRequest<Empty<Bytes>>>,
    duration: Duration,
    target: Arc<Target>,
    work: Work,
) -> (Phase, Vec<SendRequest<Empty<Bytes>>>) {
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(senders.len());
    for sender in senders {
        let done = Arc::clone(&done);
        let target = Arc::clone(&target);
        tasks.push(tokio::spawn(drive(sender, target, work, done)));
    }
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    let mut total = Phase::default();
    let mut senders = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((phase, sender)) => {
                total.merge(phase);
                senders.push(sender);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = started.elapsed();
    (total, senders)
}

async fn drive(
    mut sender: SendRequest<Empty<Bytes>>,
    target: Arc<Target>,
    work: Work,
    done: Arc<AtomicBool>,
) -> (Phase, SendRequest<Empty<Bytes>>) {
    let mut phase = Phase::default();
    let fail = |phase: &mut Phase, why: String| {
        phase.errors += 1;
        phase.first_error.get_or_insert(why);
    };
    while !done.load(Ordering::Relaxed) {
        let began = Instant::now();
        match work {
            Work::Healthz => match request(&mut sender, &target, Method::GET, "/healthz").await {
                Ok((StatusCode::OK, _)) => phase.done += 1,
                Ok((status, _)) => fail(&mut phase, format!("GET /healthz: {status}")),
                Err(e) => {
                    fail(&mut phase, format!("GET /healthz: {e}"));
                    break;
                }
            },
            Work::Pairs => {
                let acquired =
                    request(&mut sender, &target, Method::POST, &target.acquire_path).await;
                let lease_id = match acquired {
                    Ok((StatusCode::CREATED, body)) => match lease_id_of(&body) {
                        Some(id) => id,
                        None => {
                            fail(&mut phase, "a lease without lease_id".into());
                            continue;
                        }
                    },
                    Ok((StatusCode::CONFLICT, _)) => {
                        phase.misses += 1;
                        continue;
                    }
                    Ok((status, _)) => {
                        fail(&mut phase, format!("acquire: {status}"));
                        continue;
                    }
                    Err(e) => {
                        fail(&mut phase, format!("acquire: {e}"));
                        break;
                    }
                };
                let path = format!("/v1/leases/{lease_id}/release");
                match request(&mut sender, &target, Method::POST, &path).await {
                    Ok((StatusCode::OK, _)) => {
                        phase.done += 1;
                        phase
                            .latencies_us
                            .push(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Ok((status, _)) => fail(&mut phase, format!("release: {status}")),
                    Err(e) => {
                        fail(&mut phase, format!("release: {e}"));
                        break;
                    }
                }
            }
        }
    }
    (phase, sender)
}

fn lease_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("lease_id")?.as_str().map(str::to_owned)
}

/// This process's resident memory (Linux `/proc/self/status` VmRSS), MiB.
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
