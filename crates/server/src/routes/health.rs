//! `GET /healthz` (the process answers) and `GET /readyz` (the storage
//! answers too); no key needed.

use axum::Json;
use axum::extract::State;
use pharox::StorageError;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// A pool name no one uses: looking it up costs one indexed read.
const PROBE_POOL: &str = "pharox-readyz-probe";

/// `GET /healthz`: `{"status": "ok"}` while the process serves.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: `{"status": "ready"}` when the storage answers a read,
/// else 503 `storage_unavailable`.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.manager().storage().get_pool_by_name(PROBE_POOL).await {
        Ok(_) | Err(StorageError::NotFound { .. }) => Ok(Json(json!({"status": "ready"}))),
        Err(e @ (StorageError::Unavailable { .. } | StorageError::Transient { .. })) => {
            Err(ApiError::Unavailable(e))
        }
        Err(e) => Err(ApiError::Unavailable(StorageError::Unavailable {
            message: e.to_string(),
            source: None,
        })),
    }
}
