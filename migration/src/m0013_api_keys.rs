//! `api_key`: the HTTP service's API keys, stored as SHA-256 hashes only
//! (issue 14), so that every `pharox serve` replica on one database accepts
//! the keys `pharox apikey create` makes and refuses revoked ones.

use sea_orm_migration::prelude::*;

/// Additive: a new table Python pharox 0.11 never reads.
///
/// `key_hash` is unique (`api_key_key_hash_key`): the server looks a
/// presented key up by its hash through that index, one probe. A name is
/// unique among keys not revoked (`api_key_active_name_idx`, partial), so
/// `pharox apikey revoke NAME` means one key and a name can be reused after
/// its key is revoked. Revoked rows stay, for the listing.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const UP: &str = r#"
CREATE TABLE IF NOT EXISTS api_key (
    id uuid PRIMARY KEY,
    name text NULL CHECK (name IS NULL OR char_length(name) BETWEEN 1 AND 64),
    scope text NOT NULL CHECK (scope IN ('lease', 'admin')),
    key_hash bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz NULL,
    CONSTRAINT api_key_key_hash_key UNIQUE (key_hash)
);
CREATE UNIQUE INDEX IF NOT EXISTS api_key_active_name_idx ON api_key (name)
    WHERE revoked_at IS NULL AND name IS NOT NULL;
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS api_key;
"#;

sql_migration!();
