//! Health sweeps on demand (scope `admin`): `POST` starts one sweep of a
//! pool in the background, `GET` says whether one is running. A sweep holds
//! the pool's sweep lock (`pharox::upkeep::sweep_lock_key`), the one
//! `pharox health check` and the background upkeep take, so sweeps of one
//! pool never overlap, whichever replica or process starts them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use parking_lot::Mutex;
use pharox::ports::TaskLocks;
use pharox::upkeep::{SweepStart, start_locked_sweep};
use pharox::{HealthOrchestrator, sweep_lock_key};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{SweepStartedBody, SweepStatusBody};

/// What the server needs to run health sweeps: the orchestrator (with the
/// probe and the health options the CLI chose), the locks shared with other
/// processes, and how this server names itself as a lock holder.
pub struct HealthSweeps {
    orchestrator: HealthOrchestrator,
    locks: Arc<dyn TaskLocks>,
    holder: String,
    stop: watch::Sender<bool>,
    running: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for HealthSweeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthSweeps")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl HealthSweeps {
    /// Sweeps with `orchestrator`, under `locks`, as `holder`.
    #[must_use]
    pub fn new(
        orchestrator: HealthOrchestrator,
        locks: Arc<dyn TaskLocks>,
        holder: impl Into<String>,
    ) -> Self {
        Self {
            orchestrator,
            locks,
            holder: holder.into(),
            stop: watch::channel(false).0,
            running: Mutex::new(JoinSet::new()),
        }
    }

    /// Starts a sweep of `pool` in the background; `SweepRunning` when one
    /// runs already (anywhere).
    pub async fn start(&self, pool: &str) -> Result<SweepStartedBody, ApiError> {
        if *self.stop.borrow() {
            // The server is shutting down: answer as an overloaded one would.
            return Err(ApiError::Overloaded);
        }
        let started =
            start_locked_sweep(&self.orchestrator, self.locks.as_ref(), pool, &self.holder).await?;
        let sweep = match started {
            SweepStart::Started(sweep) => sweep,
            SweepStart::Busy { holder } => {
                return Err(ApiError::SweepRunning {
                    pool: pool.to_owned(),
                    holder,
                });
            }
        };
        let body = SweepStartedBody {
            pool: sweep.pool().name.clone(),
            proxies: sweep.total(),
            started_at: OffsetDateTime::now_utc(),
            holder: self.holder.clone(),
        };
        let stop = self.stop.subscribe();
        let name = body.pool.clone();
        let mut running = self.running.lock();
        // Reap the sweeps that ended, so the set holds only running ones.
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let summary = sweep.finish(stop).await;
            tracing::info!(
                pool = %name,
                checked = summary.checked,
                failed = summary.failed,
                "health sweep finished"
            );
        });
        Ok(body)
    }

    /// Whether a sweep of `pool` runs, and who runs it.
    pub async fn status(&self, pool: &str) -> Result<SweepStatusBody, ApiError> {
        let pool = self.orchestrator.storage().get_pool_by_name(pool).await?;
        let holder = self.locks.holder(&sweep_lock_key(pool.id)).await?;
        Ok(SweepStatusBody {
            pool: pool.name,
            running: holder.is_some(),
            holder,
        })
    }

    /// Stops the sweeps this server runs (gently: results being written are
    /// written) and waits for them; no new one starts afterwards.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let mut running = std::mem::take(&mut *self.running.lock());
        while running.join_next().await.is_some() {}
    }
}

/// `POST /v1/pools/{pool}/health-sweeps`: 202 with the sweep started; 409
/// `sweep_running` when one runs already; 404 for an unknown pool.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/health-sweeps",
    operation_id = "start_health_sweep",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential")),
    responses(
        (status = 202, description = "The sweep runs in the background", body = SweepStartedBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 409, description = "sweep_running: a sweep of the pool runs already (anywhere)"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
        (status = 501, description = "not_configured: this server runs no health sweeps"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn start(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
) -> Result<(StatusCode, Json<SweepStartedBody>), ApiError> {
    let sweeps = state
        .health_sweeps()
        .ok_or(ApiError::NotConfigured("health sweeps"))?;
    Ok((StatusCode::ACCEPTED, Json(sweeps.start(&pool).await?)))
}

/// `GET /v1/pools/{pool}/health-sweeps`: whether a sweep of the pool runs.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/health-sweeps",
    operation_id = "health_sweep_status",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential")),
    responses(
        (status = 200, description = "Whether a sweep of the pool runs, and who runs it", body = SweepStatusBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
        (status = 501, description = "not_configured: this server runs no health sweeps"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn status(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
) -> Result<Json<SweepStatusBody>, ApiError> {
    let sweeps = state
        .health_sweeps()
        .ok_or(ApiError::NotConfigured("health sweeps"))?;
    Ok(Json(sweeps.status(&pool).await?))
}
