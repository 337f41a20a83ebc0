//! `pharox`: benchmark, migrate and health-check proxy pools.
//!
//! - `pharox bench`: concurrent acquire/release against the in-memory storage
//!   (default) or PostgreSQL (`--database-url`); `pharox bench health` for
//!   the health orchestrator with a simulated probe.
//! - `pharox migrate [up|down|status|fresh]`: the PostgreSQL schema.
//! - `pharox health check|history`: real health checks through the proxies
//!   of a pool, and a proxy's health history.
//! - `pharox serve`: the HTTP lease service (`pharox_server`), with
//!   `--gateway-listen` the rotating forward proxy beside it.
//! - `pharox gateway`: the rotating forward proxy (`pharox_gateway`): any
//!   HTTP or SOCKS5 client leases a proxy per request or tunnel.
//! - `pharox apikey create|list|revoke`: the API keys stored in the database.
//!
//! Install it with `cargo install pharox-cli` (or `cargo install --path
//! crates/cli` from a checkout); `pharox --help` lists every command.
//!
//! # Features
//!
//! - `postgres` (default): `--database-url`, `pharox migrate`, `pharox
//!   apikey` and the pool, proxy and lease commands against PostgreSQL.
//! - `http-probe` (default): `pharox health check` through real proxies.

#[cfg(feature = "postgres")]
mod apikey;
mod bench;
mod bench_health;
mod bench_serve;
#[cfg(feature = "postgres")]
mod database_url;
mod error;
#[cfg(feature = "postgres")]
mod gateway;
#[cfg(all(feature = "postgres", feature = "http-probe"))]
mod health;
#[cfg(feature = "postgres")]
mod import;
#[cfg(feature = "postgres")]
mod lease;
mod limits;
#[cfg(feature = "postgres")]
mod migrate;
#[cfg(feature = "postgres")]
mod operate;
mod output;
#[cfg(feature = "postgres")]
mod prompt;
mod seed;
#[cfg(all(feature = "postgres", feature = "http-probe"))]
mod serve;
mod signals;
#[cfg(feature = "postgres")]
mod stores;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::errln;

/// Lease proxies from pools, safely and fast.
#[derive(Debug, Parser)]
#[command(name = "pharox", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure acquire+release throughput and latency (the main job).
    Bench(bench::BenchArgs),
    /// Apply, revert or inspect the PostgreSQL schema.
    #[cfg(feature = "postgres")]
    Migrate(migrate::MigrateArgs),
    /// Create, list, show and delete pools.
    #[cfg(feature = "postgres")]
    Pool(operate::PoolArgs),
    /// Import, list, show, switch and remove proxies.
    #[cfg(feature = "postgres")]
    Proxy(operate::ProxyArgs),
    /// Acquire, release, renew and list leases; reclaim expired ones.
    #[cfg(feature = "postgres")]
    Lease(lease::LeaseArgs),
    /// Health-check the proxies of a pool, or show a proxy's history.
    #[cfg(all(feature = "postgres", feature = "http-probe"))]
    Health(health::HealthArgs),
    /// Serve the HTTP lease API (API keys required).
    #[cfg(all(feature = "postgres", feature = "http-probe"))]
    Serve(Box<serve::ServeArgs>),
    /// Run the rotating forward proxy: clients lease a proxy per request
    /// or tunnel through HTTP (and SOCKS5) proxy settings.
    #[cfg(feature = "postgres")]
    Gateway(Box<gateway::GatewayArgs>),
    /// Create, list and revoke the API keys stored in the database.
    #[cfg(feature = "postgres")]
    Apikey(apikey::ApiKeyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task on the worker threads: work it waits for
    // then wakes a busy worker instead of the parked main thread.
    let command = runtime.spawn(async move {
        match cli.command {
            Command::Bench(args) => bench::run(args).await,
            #[cfg(feature = "postgres")]
            Command::Migrate(args) => migrate::run(args).await,
            #[cfg(feature = "postgres")]
            Command::Pool(args) => operate::pool(args).await,
            #[cfg(feature = "postgres")]
            Command::Proxy(args) => operate::proxy(args).await,
            #[cfg(feature = "postgres")]
            Command::Lease(args) => lease::lease(args).await,
            #[cfg(all(feature = "postgres", feature = "http-probe"))]
            Command::Health(args) => health::run(args).await,
            #[cfg(all(feature = "postgres", feature = "http-probe"))]
            Command::Serve(args) => serve::run(*args).await,
            #[cfg(feature = "postgres")]
            Command::Gateway(args) => gateway::run(*args).await,
            #[cfg(feature = "postgres")]
            Command::Apikey(args) => apikey::run(args).await,
        }
    });
    let outcome = match runtime.block_on(command) {
        Ok(outcome) => outcome,
        Err(e) => Err(error::CliError::Other(format!("the command failed: {e}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): nothing to say.
        Err(e) if e.is_quiet() => ExitCode::from(e.exit_code()),
        // Stopped on request: a note, not an error.
        Err(e @ error::CliError::Interrupted(_)) => {
            errln!("pharox: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            errln!("error: {e}");
            if let Some(hint) = e.hint() {
                errln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr, at warn unless `RUST_LOG` says otherwise, so stdout
/// stays clean for `--json`; coloured only when stderr is a terminal.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
#[cfg(feature = "postgres")]
mod tests {
    use super::*;

    const URL: &str = "postgres://u:s3cret@db.example:5432/pharox?sslmode=disable";

    fn debug_of(args: &[&str]) -> String {
        format!("{:?}", Cli::try_parse_from(args).unwrap())
    }

    #[test]
    fn debug_of_parsed_arguments_hides_the_database_url() {
        #[allow(unused_mut)]
        let mut cases = vec![
            vec!["pharox", "bench", "--database-url", URL],
            vec!["pharox", "bench", "--database-url", URL, "--migrate"],
            vec!["pharox", "migrate", "--database-url", URL],
            vec!["pharox", "migrate", "status", "--database-url", URL],
            vec!["pharox", "apikey", "list", "--database-url", URL],
            vec!["pharox", "gateway", "--database-url", URL],
        ];
        #[cfg(feature = "http-probe")]
        cases.extend([
            vec!["pharox", "serve", "--database-url", URL],
            vec![
                "pharox",
                "health",
                "check",
                "--pool",
                "p",
                "--database-url",
                URL,
            ],
            vec![
                "pharox",
                "health",
                "history",
                "0190b0a4-6f9c-7a3e-8b1d-2c4e6f8a0b1c",
                "--database-url",
                URL,
            ],
        ]);
        for args in cases {
            let debug = debug_of(&args);
            // The URL was parsed into the arguments...
            assert!(debug.contains("DatabaseUrl("), "{args:?}: {debug}");
            // ...and nothing of it shows.
            assert!(!debug.contains("s3cret"), "{args:?}: {debug}");
            assert!(!debug.contains("db.example"), "{args:?}: {debug}");
        }
    }

    #[test]
    #[cfg(feature = "http-probe")]
    fn debug_of_serve_arguments_hides_the_api_keys() {
        let debug = debug_of(&["pharox", "serve", "--api-keys", "lease:k-0123456789abcdef"]);
        assert!(debug.contains("Secret(<redacted>)"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        let debug = debug_of(&[
            "pharox",
            "gateway",
            "--api-keys",
            "lease:k-0123456789abcdef",
        ]);
        assert!(debug.contains("Secret(<redacted>)"), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    #[test]
    #[cfg(feature = "http-probe")]
    fn serve_and_gateway_flags_do_not_clash() {
        // clap checks a command's flags once it parses (in debug builds).
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let parsed = debug_of(&[
            "pharox",
            "serve",
            "--gateway-listen",
            "127.0.0.1:0",
            "--max-connections",
            "4",
            "--max-client-connections",
            "8",
            "--header-timeout",
            "3",
        ]);
        assert!(parsed.contains("max_client_connections: 8"), "{parsed}");
    }
}
