//! `GET /healthz` (the process answers) and `GET /readyz` (the storage
//! answers too); no key needed.

use axum::Json;
use axum::extract::State;
use pharox::StorageError;

use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{ProbeBody, ProbeStatus};

/// A pool name no one uses: looking it up costs one indexed read.
const PROBE_POOL: &str = "pharox-readyz-probe";

/// `GET /healthz`: `{"status": "ok"}` while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "probes",
    responses((status = 200, description = "The process serves", body = ProbeBody)),
)]
pub async fn healthz() -> Json<ProbeBody> {
    Json(ProbeBody {
        status: ProbeStatus::Ok,
    })
}

/// `GET /readyz`: `{"status": "ready"}` when the storage answers a read,
/// else 503 `storage_unavailable`.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    responses(
        (status = 200, description = "The storage answers a read", body = ProbeBody),
        (status = 503, description = "storage_unavailable: the storage cannot be reached"),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<ProbeBody>, ApiError> {
    match state.manager().storage().get_pool_by_name(PROBE_POOL).await {
        Ok(_) | Err(StorageError::NotFound { .. }) => Ok(Json(ProbeBody {
            status: ProbeStatus::Ready,
        })),
        Err(e @ (StorageError::Unavailable { .. } | StorageError::Transient { .. })) => {
            Err(ApiError::Unavailable(e))
        }
        Err(e) => Err(ApiError::Unavailable(StorageError::Unavailable {
            message: e.to_string(),
            source: None,
        })),
    }
}
