//! The [`ApiKeyStore`] port on the `api_key` table (m0013): hashes only,
//! timestamps from the database's clock, one statement per call.

use async_trait::async_trait;
use pharox_domain::{ApiKeyHash, ApiKeyId, ApiKeyRecord, ApiKeyScope, ApiKeySelector, NewApiKey};
use pharox_ports::{ApiKeyStore, StorageError, StorageResult};
use sea_orm::sqlx;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PostgresStorage;
use crate::error::map_sqlx;

/// The columns every statement returns, in [`Row`]'s order.
const COLUMNS: &str = "id, name, scope, key_hash, created_at, revoked_at";

type Row = (
    Uuid,
    Option<String>,
    String,
    Vec<u8>,
    OffsetDateTime,
    Option<OffsetDateTime>,
);

#[async_trait]
impl ApiKeyStore for PostgresStorage {
    async fn create_api_key(&self, key: &NewApiKey) -> StorageResult<ApiKeyRecord> {
        key.validate()?;
        let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_key (id, name, scope, key_hash) VALUES ($1, $2, $3, $4) \
             RETURNING {COLUMNS}"
        )))
        .bind(key.id.as_uuid())
        .bind(key.name.as_deref())
        .bind(key.scope.as_str())
        .bind(key.key_hash.as_bytes().as_slice())
        .fetch_one(self.pg_pool())
        .await
        .map_err(|e| map_sqlx("storing an API key", e))?;
        record(row)
    }

    async fn list_api_keys(&self) -> StorageResult<Vec<ApiKeyRecord>> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_key ORDER BY created_at, id"
        )))
        .fetch_all(self.pg_pool())
        .await
        .map_err(|e| map_sqlx("listing API keys", e))?;
        rows.into_iter().map(record).collect()
    }

    async fn revoke_api_key(&self, which: &ApiKeySelector) -> StorageResult<ApiKeyRecord> {
        let query = match which {
            // Revoking twice keeps the first time.
            ApiKeySelector::Id(id) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE api_key SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
                 RETURNING {COLUMNS}"
            )))
            .bind(id.as_uuid()),
            ApiKeySelector::Name(name) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE api_key SET revoked_at = now() \
                 WHERE name = $1 AND revoked_at IS NULL RETURNING {COLUMNS}"
            )))
            .bind(name.clone()),
        };
        let row: Option<Row> = query
            .fetch_optional(self.pg_pool())
            .await
            .map_err(|e| map_sqlx("revoking an API key", e))?;
        match row {
            Some(row) => record(row),
            None => Err(StorageError::not_found("api key", which)),
        }
    }

    async fn find_active_api_key(&self, hash: &ApiKeyHash) -> StorageResult<Option<ApiKeyRecord>> {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_key WHERE key_hash = $1 AND revoked_at IS NULL"
        )))
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(self.pg_pool())
        .await
        .map_err(|e| map_sqlx("looking up an API key", e))?;
        row.map(record).transpose()
    }
}

/// A row as a record; a row the CHECKs should have kept out is a backend
/// error, not a panic.
fn record(row: Row) -> StorageResult<ApiKeyRecord> {
    let (id, name, scope, key_hash, created_at, revoked_at) = row;
    let corrupt = |what: &str| StorageError::Backend {
        message: format!("api_key {id}: stored {what} is not valid"),
        source: None,
    };
    Ok(ApiKeyRecord {
        id: ApiKeyId::from(id),
        name,
        scope: scope.parse::<ApiKeyScope>().map_err(|_| corrupt("scope"))?,
        key_hash: ApiKeyHash::from_slice(&key_hash).ok_or_else(|| corrupt("key_hash"))?,
        created_at,
        revoked_at,
    })
}
