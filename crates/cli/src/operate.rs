//! `pharox pool` and `pharox proxy`: operating pools from the command line
//! (leases are in [`crate::lease`]). The use cases live in the library
//! ([`Operator`]); this module parses flags and prints, and holds the
//! printing helpers the operating commands share.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use pharox::{Operator, PoolOverview, Proxy, ProxyFilter, ProxyId, ProxyStatus, ProxyStorage};
use serde_json::json;

use crate::database_url::DatabaseUrl;
use crate::error::CliError;
use crate::migrate::{open_checked, required_url};
use crate::output::{self, outln};

/// The database flag every operating command takes.
#[derive(Debug, Args)]
pub struct Db {
    /// The database, as postgres://user:pass@host:5432/db
    #[arg(
        long,
        env = "PHAROX_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    database_url: Option<DatabaseUrl>,
    /// Print exactly one JSON document on stdout instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Db {
    pub(crate) async fn operator(&self) -> Result<Operator, CliError> {
        Ok(Operator::new(self.storage().await?))
    }

    pub(crate) async fn storage(&self) -> Result<Arc<dyn ProxyStorage>, CliError> {
        let url = required_url(self.database_url.as_ref())?;
        Ok(Arc::new(open_checked(url, 2, false).await?))
    }

    /// The database's API keys (`pharox apikey`).
    pub(crate) async fn api_key_store(&self) -> Result<Arc<dyn pharox::ApiKeyStore>, CliError> {
        let url = required_url(self.database_url.as_ref())?;
        Ok(Arc::new(open_checked(url, 2, false).await?))
    }
}

/// Flags of `pharox pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
    #[command(flatten)]
    pub(crate) db: Db,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Create a pool.
    Create {
        /// The pool's name.
        name: String,
        /// Free text for operators.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the pools.
    List,
    /// Show a pool's overview: counts, leases, capacity, latency, checks.
    Show {
        /// The pool's name.
        name: String,
    },
    /// Delete a pool with its proxies, leases and health history.
    Delete {
        /// The pool's name.
        name: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// Flags of `pharox proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: ProxyCommand,
    #[command(flatten)]
    pub(crate) db: Db,
}

#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Import a proxy list (text, CSV or JSON Lines) into a pool: new
    /// proxies are added, those already there (same protocol, host, port
    /// and user) updated; any bad line means nothing is written unless
    /// --skip-invalid is given.
    Import(crate::import::ImportArgs),
    /// List the proxies of a pool.
    List {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// Only proxies with this status (active, inactive, slow, banned).
        #[arg(long)]
        status: Option<String>,
        /// Only proxies in this country.
        #[arg(long)]
        country: Option<String>,
        /// Only proxies matching this filter (its JSON form).
        #[arg(long)]
        filter: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one proxy.
    Show {
        /// The proxy's id.
        #[arg(value_name = "PROXY_ID")]
        id: String,
    },
    /// Set a proxy's status by hand (a ban is never lifted by health checks).
    SetStatus {
        /// The proxy's id.
        #[arg(value_name = "PROXY_ID")]
        id: String,
        /// active, inactive or banned.
        #[arg(value_name = "STATUS")]
        status: String,
    },
    /// Remove proxies with their leases and health history.
    Remove {
        /// The proxies' ids.
        #[arg(value_name = "PROXY_ID", required = true)]
        ids: Vec<String>,
    },
}

/// Runs `pharox pool`.
pub async fn pool(args: PoolArgs) -> Result<(), CliError> {
    let operator = Operator::new(args.db.storage().await?);
    let json = args.db.json;
    match args.command {
        PoolCommand::Create { name, description } => {
            let pool = operator.create_pool(&name, description.as_deref()).await?;
            print_json_or(json, &json!({"pool": pool.name, "id": pool.id}), || {
                format!("created pool {} ({})", pool.name, pool.id)
            })
        }
        PoolCommand::List => {
            let pools = operator.pools().await?;
            if json {
                return print_value(&serde_json::to_value(&pools).map_err(other)?);
            }
            let rows = pools
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.id.to_string(),
                        p.description.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["NAME", "ID", "DESCRIPTION"], rows)
        }
        PoolCommand::Show { name } => {
            let overview = match operator.overview(&name).await {
                Err(pharox::PharoxError::Storage(pharox::StorageError::NotFound { .. })) => {
                    return Err(unknown_pool(&operator, &name).await);
                }
                other => other?,
            };
            if json {
                return print_value(&serde_json::to_value(&overview).map_err(other)?);
            }
            output::print(|out| {
                for line in overview_lines(&overview) {
                    outln!(out, "{line}");
                }
                Ok(())
            })?;
            Ok(())
        }
        PoolCommand::Delete { name, yes } => {
            if !yes {
                crate::prompt::confirm(&format!(
                    "delete pool {name} with all its proxies, leases and health history?"
                ))?;
            }
            let pool = operator.delete_pool(&name).await?;
            print_json_or(json, &json!({"deleted": pool.name, "id": pool.id}), || {
                format!("deleted pool {}", pool.name)
            })
        }
    }
}

/// Runs `pharox proxy`.
pub async fn proxy(args: ProxyArgs) -> Result<(), CliError> {
    let json = args.db.json;
    // Each command opens the database itself: an import checks its input
    // first.
    let db = &args.db;
    match args.command {
        ProxyCommand::Import(import) => crate::import::run(import, db).await,
        ProxyCommand::List {
            pool,
            status,
            country,
            filter,
            limit,
        } => {
            let operator = db.operator().await?;
            let status = status
                .map(|s| s.parse::<ProxyStatus>())
                .transpose()
                .map_err(|e| usage("status", &e.reason))?;
            let mut filter = match filter {
                Some(json) => {
                    ProxyFilter::from_json(&json).map_err(|e| usage("filter", &e.reason))?
                }
                None => ProxyFilter::new(),
            };
            if let Some(country) = country {
                filter = filter.country(country);
            }
            let proxies = match operator.proxies(&pool, status, &filter, limit).await {
                Err(pharox::PharoxError::Storage(pharox::StorageError::NotFound { .. })) => {
                    return Err(unknown_pool(&operator, &pool).await);
                }
                other => other?,
            };
            if json {
                let list: Vec<_> = proxies.iter().map(proxy_json).collect();
                return print_value(&serde_json::Value::Array(list));
            }
            let rows = proxies.iter().map(proxy_row).collect();
            print_table(
                &[
                    "ID",
                    "URL",
                    "STATUS",
                    "COUNTRY",
                    "CITY",
                    "MAX",
                    "LEASES",
                    "LATENCY_MS",
                    "FAILURES",
                    "LAST_ERROR",
                    "CHECKED_AT",
                ],
                rows,
            )
        }
        ProxyCommand::Show { id } => {
            let id = proxy_id(&id)?;
            let operator = db.operator().await?;
            let proxy = operator.proxy(id).await?;
            let bans = operator.target_bans(id).await?;
            if json {
                let mut value = proxy_json(&proxy);
                value["target_bans"] = bans
                    .iter()
                    .map(|b| json!({"target": b.target, "until": rfc3339(b.until)}))
                    .collect();
                return print_value(&value);
            }
            let mut row = proxy_row(&proxy);
            row.push(proxy.usage.error_score.to_string());
            row.push(opt(proxy.usage.cooldown_until.map(rfc3339)));
            row.push(if bans.is_empty() {
                "-".to_owned()
            } else {
                bans.iter()
                    .map(|b| format!("{} until {}", b.target, rfc3339(b.until)))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let names = [
                "id",
                "url",
                "status",
                "country",
                "city",
                "max_leases",
                "current_leases",
                "last_latency_ms",
                "failure_streak",
                "last_error",
                "checked_at",
                "error_score",
                "cooldown_until",
                "target_bans",
            ];
            output::print(|out| {
                for (name, value) in names.iter().zip(row) {
                    outln!(out, "{name:<16} {value}");
                }
                Ok(())
            })?;
            Ok(())
        }
        ProxyCommand::SetStatus { id, status } => {
            let id = proxy_id(&id)?;
            let status = match status.trim().to_ascii_lowercase().as_str() {
                "active" => ProxyStatus::Active,
                "inactive" => ProxyStatus::Inactive,
                "banned" => ProxyStatus::Banned,
                _ => return Err(bad("STATUS", "must be active, inactive or banned")),
            };
            let operator = db.operator().await?;
            let proxy = operator.set_status(id, status).await?;
            print_json_or(json, &proxy_json(&proxy), || {
                format!("proxy {} is now {}", proxy.id, proxy.status)
            })
        }
        ProxyCommand::Remove { ids } => {
            let ids = ids
                .iter()
                .map(|s| proxy_id(s))
                .collect::<Result<Vec<_>, _>>()?;
            let operator = db.operator().await?;
            operator.remove_proxies(&ids).await?;
            let removed: Vec<String> = ids.iter().map(ToString::to_string).collect();
            print_json_or(json, &json!({"removed": removed}), || {
                format!("removed {} proxies", removed.len())
            })
        }
    }
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

pub(crate) fn usage(flag: &'static str, reason: &str) -> CliError {
    CliError::Usage {
        flag,
        reason: reason.to_owned(),
    }
}

pub(crate) fn bad(name: &'static str, reason: &str) -> CliError {
    CliError::BadArgument {
        name,
        reason: reason.to_owned(),
    }
}

fn proxy_id(s: &str) -> Result<ProxyId, CliError> {
    s.parse()
        .map_err(|_| bad("PROXY_ID", "is not a valid UUID"))
}

pub(crate) fn ttl_of(secs: u64) -> Result<Duration, CliError> {
    let ttl = Duration::from_secs(secs);
    pharox::domain::validate_ttl(ttl).map_err(|e| usage("ttl", &e.reason))?;
    Ok(ttl)
}

/// The error for an unknown pool, naming the pools close to it.
pub(crate) async fn unknown_pool(operator: &Operator, name: &str) -> CliError {
    let close = match operator.pool_or_close_names(name).await {
        Ok(Err(close)) => close,
        _ => Vec::new(),
    };
    if close.is_empty() {
        CliError::Other(format!("pool {name} does not exist"))
    } else {
        CliError::Other(format!(
            "pool {name} does not exist; did you mean {}?",
            close.join(", ")
        ))
    }
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn proxy_row(p: &Proxy) -> Vec<String> {
    vec![
        p.id.to_string(),
        p.url_without_password(),
        p.status.to_string(),
        opt(p.country.as_deref()),
        opt(p.city.as_deref()),
        p.max_concurrency
            .map_or_else(|| "unlimited".to_owned(), |m| m.to_string()),
        p.current_leases.to_string(),
        opt(p.health.last_latency_ms.map(|l| format!("{l:.1}"))),
        p.health.consecutive_failures.to_string(),
        opt(p.health.last_error.as_deref()),
        opt(p.checked_at.map(rfc3339)),
    ]
}

fn proxy_json(p: &Proxy) -> serde_json::Value {
    json!({
        "id": p.id,
        "pool_id": p.pool_id,
        "url": p.url_without_password(),
        "status": p.status,
        "country": p.country,
        "city": p.city,
        "max_concurrency": p.max_concurrency,
        "current_leases": p.current_leases,
        "last_latency_ms": p.health.last_latency_ms,
        "consecutive_failures": p.health.consecutive_failures,
        "last_error": p.health.last_error,
        "checked_at": p.checked_at.map(rfc3339),
        "error_score": p.usage.error_score,
        "cooldown_until": p.usage.cooldown_until.map(rfc3339),
    })
}

pub(crate) fn status_counts(o: &PoolOverview) -> String {
    o.by_status
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn capacity(o: &PoolOverview) -> String {
    o.capacity
        .map_or_else(|| "unlimited".to_owned(), |c| c.to_string())
}

fn overview_lines(o: &PoolOverview) -> Vec<String> {
    vec![
        format!("pool                 {}", o.pool),
        format!("proxies              {} ({})", o.proxies, status_counts(o)),
        format!("leased proxies       {}", o.leased_proxies),
        format!("active leases        {}", o.active_leases),
        format!("cooling down         {}", o.cooling_down),
        format!("capacity             {}", capacity(o)),
        format!("expired unreclaimed  {}", o.expired_unreclaimed),
        format!(
            "latency p50/p95 ms   {} / {}",
            opt(o.latency_ms.p50.map(|v| format!("{v:.1}"))),
            opt(o.latency_ms.p95.map(|v| format!("{v:.1}")))
        ),
        format!(
            "checked_at           oldest {}, newest {}",
            opt(o.checked_at.oldest.map(rfc3339)),
            opt(o.checked_at.newest.map(rfc3339))
        ),
    ]
}

pub(crate) fn print_value(value: &serde_json::Value) -> Result<(), CliError> {
    output::print(|out| {
        outln!(out, "{value}");
        Ok(())
    })?;
    Ok(())
}

pub(crate) fn print_json_or(
    json: bool,
    value: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        return print_value(value);
    }
    let text = text();
    output::print(|out| {
        outln!(out, "{text}");
        Ok(())
    })?;
    Ok(())
}

/// Plain columns, each as wide as its widest cell.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    output::print(|out| {
        outln!(
            out,
            "{}",
            line(header.iter().map(|h| (*h).to_owned()).collect())
        );
        for row in rows {
            outln!(out, "{}", line(row));
        }
        Ok(())
    })?;
    Ok(())
}
