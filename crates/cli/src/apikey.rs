//! `pharox apikey create|list|revoke`: the API keys `pharox serve
//! --database-url` accepts, stored in the database as hashes. The use cases
//! are [`ApiKeyAdmin`]'s; this module parses flags and prints. A created key
//! is printed once, on stdout; listings never show a key or its hash.

use clap::{Args, Subcommand};
use pharox::{ApiKeyAdmin, ApiKeyRecord, ApiKeyScope, PharoxError, StorageError};
use serde_json::json;

use crate::error::CliError;
use crate::operate::{Db, opt, print_json_or, print_table, print_value, rfc3339, usage};
use crate::output::{self, errln, outln};

/// Flags of `pharox apikey`.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    #[command(subcommand)]
    command: ApiKeyCommand,
    #[command(flatten)]
    db: Db,
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it, once (only its hash is stored).
    Create {
        /// What the key may do: lease (the lease endpoints) or admin (everything).
        #[arg(long)]
        scope: String,
        /// A name to list and revoke it by (1 to 64 of A-Z a-z 0-9 . _ -),
        /// unique among keys not revoked.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys (id, name, scope, created, revoked); never a key.
    List,
    /// Revoke a key by id or name: every server refuses it from then on
    /// (servers that cached it, within --api-key-cache-secs).
    Revoke {
        /// The key's id, or the name of a key not revoked.
        #[arg(value_name = "ID|NAME")]
        key: String,
    },
}

/// Runs `pharox apikey`.
pub async fn run(args: ApiKeyArgs) -> Result<(), CliError> {
    let json = args.db.json;
    match args.command {
        ApiKeyCommand::Create { scope, name } => {
            let scope: ApiKeyScope = scope
                .parse()
                .map_err(|_| usage("scope", "must be lease or admin"))?;
            if let Some(name) = &name {
                pharox::domain::validate_api_key_name(name)
                    .map_err(|e| usage("name", &e.reason))?;
            }
            let admin = ApiKeyAdmin::new(args.db.api_key_store().await?);
            let created = match admin.create(scope, name.as_deref()).await {
                Err(PharoxError::Storage(StorageError::Conflict(_))) => {
                    return Err(usage("name", "a key that is not revoked has this name"));
                }
                other => other?,
            };
            let record = &created.record;
            if json {
                let mut value = record_json(record);
                value["key"] = json!(created.key.expose());
                return print_value(&value);
            }
            errln!("pharox apikey: store this key now; it is not shown again");
            let name = record
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            output::print(|out| {
                outln!(out, "created {} key {}{name}", record.scope, record.id);
                outln!(out, "{}", created.key.expose());
                Ok(())
            })?;
            Ok(())
        }
        ApiKeyCommand::List => {
            let keys = ApiKeyAdmin::new(args.db.api_key_store().await?)
                .list()
                .await?;
            if json {
                return print_value(&keys.iter().map(record_json).collect());
            }
            let rows = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        opt(k.name.as_deref()),
                        k.scope.to_string(),
                        rfc3339(k.created_at),
                        opt(k.revoked_at.map(rfc3339)),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "SCOPE", "CREATED", "REVOKED"], rows)
        }
        ApiKeyCommand::Revoke { key } => {
            let admin = ApiKeyAdmin::new(args.db.api_key_store().await?);
            let record = match admin.revoke(&key).await {
                Err(PharoxError::Invalid(v)) => {
                    return Err(crate::operate::bad("ID|NAME", &v.reason));
                }
                other => other?,
            };
            print_json_or(json, &record_json(&record), || {
                format!(
                    "revoked {} key {}{}",
                    record.scope,
                    record.id,
                    record
                        .name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                )
            })
        }
    }
}

/// A key as JSON: id, name, scope, created_at, revoked_at (no hash).
fn record_json(record: &ApiKeyRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "name": record.name,
        "scope": record.scope,
        "created_at": rfc3339(record.created_at),
        "revoked_at": record.revoked_at.map(rfc3339),
    })
}
