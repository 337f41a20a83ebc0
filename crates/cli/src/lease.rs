//! `pharox lease`: leasing by hand (acquire, report, release, renew, list,
//! cleanup). The use cases live in the library ([`ProxyManager`]); this
//! module parses flags and prints.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use pharox::{
    Lease, LeaseId, LeaseRequest, Operator, Outcome, ProxyFailureKind, ProxyFilter, ProxyManager,
    Selector, TargetHost,
};
use serde_json::json;

use crate::error::CliError;
use crate::operate::{
    Db, bad, capacity, print_json_or, print_table, print_value, rfc3339, status_counts, ttl_of,
    unknown_pool, usage,
};
use crate::output::{self, outln};

/// Flags of `pharox lease`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
    #[command(flatten)]
    db: Db,
}

/// What a use of a leased proxy came to, as `--outcome` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutcomeKind {
    /// The request went through.
    Success,
    /// The proxy failed (refused, timed out, bad credentials, bad reply).
    ProxyFailure,
    /// The target site blocked the proxy (needs --target).
    Blocked,
    /// The site failed; the proxy is not to blame.
    TargetError,
}

/// How the proxy failed, as `--failure` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailureKind {
    ConnectRefused,
    Timeout,
    ProxyAuth,
    Protocol,
    Other,
}

impl From<FailureKind> for ProxyFailureKind {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::ConnectRefused => Self::ConnectRefused,
            FailureKind::Timeout => Self::Timeout,
            FailureKind::ProxyAuth => Self::ProxyAuth,
            FailureKind::Protocol => Self::Protocol,
            FailureKind::Other => Self::Other,
        }
    }
}

/// The flags that describe an outcome.
#[derive(Debug, Args)]
struct OutcomeFlags {
    /// The site the request went to (a host name).
    #[arg(long)]
    target: Option<String>,
    /// The HTTP status the site answered with (blocked, target-error).
    #[arg(long)]
    http_status: Option<u16>,
    /// How the proxy failed (proxy-failure; default other).
    #[arg(long, value_enum)]
    failure: Option<FailureKind>,
    /// How long the request took, in milliseconds (success).
    #[arg(long)]
    latency_ms: Option<f64>,
}

impl OutcomeFlags {
    /// The outcome `kind` with these flags; a flag that does not apply to
    /// the kind, or a missing `--target` for `blocked`, is refused by name.
    fn outcome(&self, kind: OutcomeKind) -> Result<Outcome, CliError> {
        let target = self
            .target
            .as_deref()
            .map(TargetHost::new)
            .transpose()
            .map_err(|e| usage("target", &e.reason))?;
        let refuse = |flag: &'static str, kinds: &str| {
            Err(usage(flag, &format!("applies only to --outcome {kinds}")))
        };
        if self.http_status.is_some()
            && !matches!(kind, OutcomeKind::Blocked | OutcomeKind::TargetError)
        {
            return refuse("http-status", "blocked or target-error");
        }
        if self.failure.is_some() && kind != OutcomeKind::ProxyFailure {
            return refuse("failure", "proxy-failure");
        }
        if self.latency_ms.is_some() && kind != OutcomeKind::Success {
            return refuse("latency-ms", "success");
        }
        if target.is_some() && kind == OutcomeKind::ProxyFailure {
            return refuse("target", "success, blocked or target-error");
        }
        let outcome = match kind {
            OutcomeKind::Success => Outcome::Success {
                target,
                latency_ms: self.latency_ms,
            },
            OutcomeKind::ProxyFailure => {
                Outcome::proxy_failure(self.failure.unwrap_or(FailureKind::Other).into())
            }
            OutcomeKind::Blocked => Outcome::Blocked {
                target: target.ok_or_else(|| {
                    usage(
                        "target",
                        "is required with --outcome blocked (the site that blocked)",
                    )
                })?,
                http_status: self.http_status,
            },
            OutcomeKind::TargetError => Outcome::TargetError {
                target,
                http_status: self.http_status,
            },
        };
        outcome.validate().map_err(|e| {
            let flag = match e.field.as_ref() {
                "outcome.latency_ms" => "latency-ms",
                _ => "http-status",
            };
            usage(flag, &e.reason)
        })?;
        Ok(outcome)
    }

    fn is_empty(&self) -> bool {
        self.target.is_none()
            && self.http_status.is_none()
            && self.failure.is_none()
            && self.latency_ms.is_none()
    }
}

/// Flags of `pharox lease acquire`.
#[derive(Debug, Args)]
struct AcquireFlags {
    /// The pool.
    #[arg(long)]
    pub(crate) pool: String,
    /// Who holds the lease.
    #[arg(long, default_value = pharox::DEFAULT_CONSUMER)]
    pub(crate) consumer: String,
    /// Seconds the lease holds the proxy.
    #[arg(long, default_value_t = pharox::DEFAULT_TTL.as_secs())]
    pub(crate) ttl: u64,
    /// Only proxies matching this filter (its JSON form).
    #[arg(long)]
    pub(crate) filter: Option<String>,
    /// first_available, round_robin, random, least_used, lowest_latency.
    #[arg(long)]
    pub(crate) selector: Option<String>,
    /// A sticky session: the proxy this key used last, while it
    /// qualifies; shared with every worker using the key.
    #[arg(long)]
    pub(crate) session: Option<String>,
    /// Seconds the session is remembered after this use (default 600).
    #[arg(long, requires = "session")]
    pub(crate) session_ttl: Option<u64>,
    /// The site the lease is for: proxies banned for it are skipped.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Print only the proxy URL (for `curl -x "$(...)"`).
    #[arg(long)]
    pub(crate) url_only: bool,
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Lease a proxy and print its URL with credentials.
    Acquire(AcquireFlags),
    /// Report what a use of a held lease came to (several per lease).
    Report {
        /// The lease's id.
        #[arg(value_name = "LEASE_ID")]
        id: String,
        /// success, proxy-failure, blocked or target-error.
        #[arg(long, value_enum)]
        outcome: OutcomeKind,
        #[command(flatten)]
        flags: OutcomeFlags,
    },
    /// Release a lease, optionally with the outcome of its last use.
    Release {
        /// The lease's id.
        #[arg(value_name = "LEASE_ID")]
        id: String,
        /// success, proxy-failure, blocked or target-error.
        #[arg(long, value_enum)]
        outcome: Option<OutcomeKind>,
        #[command(flatten)]
        flags: OutcomeFlags,
    },
    /// Extend a lease to now + TTL.
    Renew {
        /// The lease's id.
        #[arg(value_name = "LEASE_ID")]
        id: String,
        /// Seconds from now.
        #[arg(long, default_value_t = pharox::DEFAULT_TTL.as_secs())]
        ttl: u64,
    },
    /// List the active leases of a pool.
    List {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// Only this consumer's.
        #[arg(long)]
        consumer: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Reclaim every expired lease; prints how many.
    Cleanup,
}

/// The lease-request flags of `lease acquire`, checked before the database
/// is opened.
fn lease_request(flags: &AcquireFlags) -> Result<LeaseRequest, CliError> {
    let AcquireFlags {
        pool,
        consumer,
        ttl,
        filter,
        selector,
        session,
        session_ttl,
        target,
        ..
    } = flags;
    let (filter, selector, session, target) = (
        filter.as_deref(),
        selector.as_deref(),
        session.as_deref(),
        target.as_deref(),
    );
    let (ttl, session_ttl) = (*ttl, *session_ttl);
    let mut request = LeaseRequest::new(pool.as_str())
        .consumer(consumer.as_str())
        .ttl(ttl_of(ttl)?);
    if let Some(json) = filter {
        request =
            request.filter(ProxyFilter::from_json(json).map_err(|e| usage("filter", &e.reason))?);
    }
    if let Some(selector) = selector {
        request = request.selector(
            selector
                .parse::<Selector>()
                .map_err(|e| usage("selector", &e.reason))?,
        );
    }
    if let Some(key) = session {
        pharox::SessionKey::new(key).map_err(|e| usage("session", &e.reason))?;
        request = request.session(key);
    }
    if let Some(secs) = session_ttl {
        let ttl = Duration::from_secs(secs);
        pharox::domain::validate_ttl(ttl).map_err(|e| usage("session-ttl", &e.reason))?;
        request = request.session_ttl(ttl);
    }
    if let Some(host) = target {
        TargetHost::new(host).map_err(|e| usage("target", &e.reason))?;
        request = request.target(host);
    }
    Ok(request)
}

/// Runs `pharox lease`.
pub async fn lease(args: LeaseArgs) -> Result<(), CliError> {
    let json = args.db.json;
    // Flags first: a bad flag is refused before the database is opened.
    let command = args.command;
    let outcome = match &command {
        LeaseCommand::Report { outcome, flags, .. } => Some(flags.outcome(*outcome)?),
        LeaseCommand::Release {
            outcome: Some(kind),
            flags,
            ..
        } => Some(flags.outcome(*kind)?),
        LeaseCommand::Release {
            outcome: None,
            flags,
            ..
        } if !flags.is_empty() => {
            return Err(usage(
                "outcome",
                "is required with --target, --http-status, --failure or --latency-ms",
            ));
        }
        _ => None,
    };
    let request = match &command {
        LeaseCommand::Acquire(flags) => Some(lease_request(flags)?),
        _ => None,
    };
    let storage = args.db.storage().await?;
    let manager = ProxyManager::from_arc(Arc::clone(&storage));
    match command {
        LeaseCommand::Acquire(AcquireFlags { pool, url_only, .. }) => {
            let Some(request) = request else {
                return Err(usage("pool", "is required"));
            };
            let Some(lease) = manager.acquire(request).await? else {
                let operator = Operator::new(storage);
                return Err(match operator.overview(&pool).await {
                    Ok(o) => CliError::Other(format!(
                        "no proxy available in pool {pool} ({} proxies: {}; {} active leases, capacity {})",
                        o.proxies,
                        status_counts(&o),
                        o.active_leases,
                        capacity(&o)
                    )),
                    Err(_) => unknown_pool(&operator, &pool).await,
                });
            };
            let url = lease.proxy.connect_url();
            let expires = rfc3339(lease.expires_at);
            if url_only {
                return output::print(|out| {
                    outln!(out, "{url}");
                    Ok(())
                })
                .map_err(Into::into);
            }
            let session_moved = lease.session.as_ref().map(|s| s.moved);
            let value = json!({
                "lease_id": lease.id,
                "proxy_id": lease.proxy_id,
                "proxy_url": url,
                "expires_at": expires,
                "session_moved": session_moved,
            });
            print_json_or(json, &value, || {
                let mut text = format!(
                    "lease_id   {}\nproxy_url  {url}\nexpires_at {expires}",
                    lease.id
                );
                if let Some(moved) = session_moved {
                    text.push_str(if moved {
                        "\nsession    moved to this proxy"
                    } else {
                        "\nsession    kept its proxy (or is new)"
                    });
                }
                text
            })
        }
        LeaseCommand::Report { id, .. } => {
            let id = lease_id(&id)?;
            let Some(outcome) = outcome else {
                return Err(usage("outcome", "is required"));
            };
            let proxy = manager.report(id, &outcome).await?;
            let until = proxy.usage.cooldown_until.map(rfc3339);
            let value = json!({
                "lease_id": id,
                "proxy_id": proxy.id,
                "outcome": outcome.kind(),
                "error_score": proxy.usage.error_score,
                "cooldown_until": until,
            });
            print_json_or(json, &value, || {
                format!(
                    "reported {} for lease {id}: proxy {} error score {}{}",
                    outcome.kind(),
                    proxy.id,
                    proxy.usage.error_score,
                    until
                        .as_deref()
                        .map_or_else(String::new, |u| format!(", cooling down until {u}"))
                )
            })
        }
        LeaseCommand::Release { id, .. } => {
            let id = lease_id(&id)?;
            let reported = outcome.as_ref().map(Outcome::kind);
            let released = manager
                .release_with_outcome(id, outcome.clone())
                .await?
                .was_released();
            let value = json!({
                "lease_id": id,
                "released": released,
                "outcome": if released { reported } else { None },
            });
            print_json_or(json, &value, || match (released, reported) {
                (true, Some(kind)) => format!("released lease {id} with outcome {kind}"),
                (true, None) => format!("released lease {id}"),
                (false, Some(_)) => {
                    format!("lease {id} was already released; the outcome was not applied")
                }
                (false, None) => format!("lease {id} was already released"),
            })
        }
        LeaseCommand::Renew { id, ttl } => {
            let id = lease_id(&id)?;
            let ttl = ttl_of(ttl)?;
            let lease = storage.get_lease(id).await?;
            let lease = manager.renew(&lease, ttl).await?;
            let expires = rfc3339(lease.expires_at);
            print_json_or(
                json,
                &json!({"lease_id": id, "expires_at": expires}),
                || format!("lease {id} now expires at {expires}"),
            )
        }
        LeaseCommand::List {
            pool,
            consumer,
            limit,
        } => {
            let leases = match storage.list_leases(&pool, consumer.as_deref(), limit).await {
                Err(pharox::StorageError::NotFound { .. }) => {
                    return Err(unknown_pool(&Operator::new(storage), &pool).await);
                }
                other => other?,
            };
            if json {
                let list: Vec<_> = leases.iter().map(lease_json).collect();
                return print_value(&serde_json::Value::Array(list));
            }
            let rows = leases
                .iter()
                .map(|l| {
                    vec![
                        l.id.to_string(),
                        l.proxy.to_string(),
                        l.consumer_id.to_string(),
                        rfc3339(l.acquired_at),
                        rfc3339(l.expires_at),
                    ]
                })
                .collect();
            print_table(
                &[
                    "LEASE_ID",
                    "PROXY",
                    "CONSUMER_ID",
                    "ACQUIRED_AT",
                    "EXPIRES_AT",
                ],
                rows,
            )
        }
        LeaseCommand::Cleanup => {
            let reclaimed = storage.cleanup_expired().await?;
            print_json_or(json, &json!({"reclaimed": reclaimed}), || {
                format!("reclaimed {reclaimed} expired leases")
            })
        }
    }
}

fn lease_id(s: &str) -> Result<LeaseId, CliError> {
    s.parse()
        .map_err(|_| bad("LEASE_ID", "is not a valid UUID"))
}

fn lease_json(l: &Lease) -> serde_json::Value {
    json!({
        "lease_id": l.id,
        "proxy_id": l.proxy_id,
        "proxy": l.proxy.to_string(),
        "consumer_id": l.consumer_id,
        "acquired_at": rfc3339(l.acquired_at),
        "expires_at": rfc3339(l.expires_at),
    })
}
