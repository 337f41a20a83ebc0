//! The lease endpoints (scope `lease` or `admin`): acquire, show, release,
//! renew, report an outcome. A lease is acted on only by the key (and
//! consumer) that acquired it, or by an admin key.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pharox::{Lease, LeaseId, LeaseRequest, ReleaseOutcome, RetryPolicy, StorageError};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Caller, LeaseCaller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, MaybeJson};
use crate::openapi::domain::OutcomeSchema;
use crate::state::AppState;
use crate::wire::{
    AcquireBody, LeaseBody, OutcomeBody, ReleaseBody, ReleaseResult, RenewBody, SessionBody,
    StandingBody,
};

/// `?wait_ms=N` of an acquire.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AcquireQuery {
    /// Wait up to this many ms (at most the server's `--max-wait-ms`) for a
    /// proxy to come free before answering 409.
    #[param(minimum = 0)]
    pub wait_ms: Option<u64>,
}

/// `?consumer=NAME` of the calls on a lease: the consumer it was acquired
/// for, when that was not the default.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HolderQuery {
    /// The consumer named when acquiring (default `default`).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub consumer: Option<String>,
}

/// `POST /v1/pools/{pool}/leases`: 201 with the lease, 409 when no proxy
/// qualifies, 404 for an unknown pool.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/leases",
    operation_id = "acquire_lease",
    tag = "leases",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential"), AcquireQuery),
    request_body(content = Option<AcquireBody>, description = "What to lease; may be absent"),
    responses(
        (status = 201, description = "The lease, with the URL to connect through", body = LeaseBody,
            links(
                ("show" = (operation_id = "show_lease", parameters(("id" = "$response.body#/lease_id")))),
                ("release" = (operation_id = "release_lease", parameters(("id" = "$response.body#/lease_id")))),
                ("renew" = (operation_id = "renew_lease", parameters(("id" = "$response.body#/lease_id")))),
                ("report" = (operation_id = "report_outcome", parameters(("id" = "$response.body#/lease_id")))),
                ("proxy" = (operation_id = "show_proxy", parameters(("id" = "$response.body#/proxy_id")))),
            ),
        ),
        (status = 404, description = "pool_not_found"),
        (status = 409, description = "no_proxy_available: no proxy of the pool qualifies"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn acquire(
    State(state): State<AppState>,
    LeaseCaller(caller): LeaseCaller,
    Path(pool): Path<String>,
    ApiQuery(query): ApiQuery<AcquireQuery>,
    MaybeJson(body): MaybeJson<AcquireBody>,
) -> Result<(StatusCode, Json<LeaseBody>), ApiError> {
    let body = body.unwrap_or_default();
    let wait = match query.wait_ms {
        Some(ms) if Duration::from_millis(ms) > state.limits().max_wait => {
            return Err(ApiError::invalid(
                "wait_ms",
                format!("must be at most {}", state.limits().max_wait.as_millis()),
            ));
        }
        Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
        _ => None,
    };
    let request = lease_request(&state, &caller, &pool, body)?;
    let manager = state.manager();
    let lease = match wait {
        Some(wait) => {
            manager
                .acquire_with_retry(request, &wait_policy(wait))
                .await
        }
        None => manager.acquire(request).await,
    }
    .map_err(|e| renamed(e.into()))?;
    match lease {
        Some(lease) => {
            if !caller.is_admin() {
                state.held_leases().remember(lease.id, lease.consumer_id);
            }
            Ok((StatusCode::CREATED, Json(LeaseBody::from(&lease))))
        }
        // The storage answers "none" for an unknown pool too: tell them apart
        // on this (rarer) path only.
        None => match manager.storage().get_pool_by_name(&pool).await {
            Ok(_) => Err(ApiError::NoProxyAvailable(pool)),
            Err(e) => Err(e.into()),
        },
    }
}

/// `GET /v1/leases/{id}`.
#[utoipa::path(
    get,
    path = "/v1/leases/{id}",
    operation_id = "show_lease",
    tag = "leases",
    params(("id" = uuid::Uuid, Path, description = "The lease's id"), HolderQuery),
    responses(
        (status = 200, description = "The lease", body = LeaseBody),
        (status = 403, description = "not_lease_holder: another key's or consumer's lease"),
        (status = 404, description = "lease_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    LeaseCaller(caller): LeaseCaller,
    Path(id): Path<String>,
    ApiQuery(holder): ApiQuery<HolderQuery>,
) -> Result<Json<LeaseBody>, ApiError> {
    let lease = held_lease(&state, &caller, &id, holder.consumer.as_deref()).await?;
    Ok(Json(LeaseBody::from(&lease)))
}

/// `POST /v1/leases/{id}/release`, with an optional outcome body applied
/// atomically with the release. Releasing twice is fine
/// (`already_released`).
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/release",
    operation_id = "release_lease",
    tag = "leases",
    params(("id" = uuid::Uuid, Path, description = "The lease's id"), HolderQuery),
    request_body(content = Option<OutcomeSchema>, description = "An outcome to apply with the release; may be absent"),
    responses(
        (status = 200, description = "Released now, or before", body = ReleaseBody),
        (status = 403, description = "not_lease_holder: another key's or consumer's lease"),
        (status = 404, description = "lease_not_found"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn release(
    State(state): State<AppState>,
    LeaseCaller(caller): LeaseCaller,
    Path(id): Path<String>,
    ApiQuery(holder): ApiQuery<HolderQuery>,
    MaybeJson(outcome): MaybeJson<OutcomeBody>,
) -> Result<Json<ReleaseBody>, ApiError> {
    let lease_id = held_lease_id(&state, &caller, &id, holder.consumer.as_deref()).await?;
    let outcome = state
        .manager()
        .release_with_outcome(lease_id, outcome)
        .await
        .map_err(|e| outcome_field(e.into()))?;
    state.held_leases().forget(lease_id);
    Ok(Json(match outcome {
        ReleaseOutcome::Released(released) => ReleaseBody {
            lease_id: released.lease_id.to_string(),
            result: ReleaseResult::Released,
            released_at: Some(released.released_at),
        },
        ReleaseOutcome::AlreadyReleased {
            lease_id,
            released_at,
        } => ReleaseBody {
            lease_id: lease_id.to_string(),
            result: ReleaseResult::AlreadyReleased,
            released_at,
        },
    }))
}

/// `POST /v1/leases/{id}/renew` `{ttl_seconds}`: the lease, now ending
/// `ttl_seconds` from now; 409 when it is no longer active.
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/renew",
    operation_id = "renew_lease",
    tag = "leases",
    params(("id" = uuid::Uuid, Path, description = "The lease's id"), HolderQuery),
    request_body = RenewBody,
    responses(
        (status = 200, description = "The lease, now ending `ttl_seconds` from now", body = LeaseBody),
        (status = 403, description = "not_lease_holder: another key's or consumer's lease"),
        (status = 404, description = "lease_not_found"),
        (status = 409, description = "lease_not_active: released or expired"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn renew(
    State(state): State<AppState>,
    LeaseCaller(caller): LeaseCaller,
    Path(id): Path<String>,
    ApiQuery(holder): ApiQuery<HolderQuery>,
    ApiJson(body): ApiJson<RenewBody>,
) -> Result<Json<LeaseBody>, ApiError> {
    let lease = held_lease(&state, &caller, &id, holder.consumer.as_deref()).await?;
    let renewed = state
        .manager()
        .renew(&lease, Duration::from_secs(body.ttl_seconds))
        .await
        .map_err(|e| renamed(e.into()))?;
    Ok(Json(LeaseBody::from(&renewed)))
}

/// `POST /v1/leases/{id}/outcomes`: what a use of the lease came to; the
/// proxy's standing afterwards. 409 when the lease is no longer active.
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/outcomes",
    operation_id = "report_outcome",
    tag = "leases",
    params(("id" = uuid::Uuid, Path, description = "The lease's id"), HolderQuery),
    request_body = OutcomeSchema,
    responses(
        (status = 200, description = "The proxy's standing afterwards", body = StandingBody),
        (status = 403, description = "not_lease_holder: another key's or consumer's lease"),
        (status = 404, description = "lease_not_found"),
        (status = 409, description = "lease_not_active: released or expired"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn report(
    State(state): State<AppState>,
    LeaseCaller(caller): LeaseCaller,
    Path(id): Path<String>,
    ApiQuery(holder): ApiQuery<HolderQuery>,
    ApiJson(outcome): ApiJson<OutcomeBody>,
) -> Result<Json<StandingBody>, ApiError> {
    let lease_id = held_lease_id(&state, &caller, &id, holder.consumer.as_deref()).await?;
    let proxy = state
        .manager()
        .report(lease_id, &outcome)
        .await
        .map_err(|e| outcome_field(e.into()))?;
    Ok(Json(StandingBody::from(&proxy)))
}

/// The id of the lease `id`, if the caller may act on it (as
/// [`held_lease`]); a lease key's own lease, handed out by this server, is
/// checked without reading it (see [`HeldLeases`](crate::held::HeldLeases)).
async fn held_lease_id(
    state: &AppState,
    caller: &Caller,
    id: &str,
    consumer: Option<&str>,
) -> Result<LeaseId, ApiError> {
    let lease_id = parse_lease_id(id)?;
    if !caller.is_admin()
        && let Some(remembered) = state.held_leases().holder(lease_id)
    {
        if state.consumer_id(caller, consumer).await? != remembered {
            tracing::info!(lease = %lease_id, key = %caller.key_id, "lease call by a key that does not hold it");
            return Err(ApiError::NotLeaseHolder(lease_id.to_string()));
        }
        return Ok(lease_id);
    }
    Ok(held_lease(state, caller, id, consumer).await?.id)
}

/// The lease `id`, if the caller may act on it: an admin key always; a
/// lease key when the lease's consumer is the caller's `<key id>:<consumer>`.
/// The check goes through the storage's consumer ids, so it holds whichever
/// replica made the lease.
async fn held_lease(
    state: &AppState,
    caller: &Caller,
    id: &str,
    consumer: Option<&str>,
) -> Result<Lease, ApiError> {
    let lease_id = parse_lease_id(id)?;
    let lease = state
        .manager()
        .storage()
        .get_lease(lease_id)
        .await
        .map_err(|e| match e {
            StorageError::NotFound { .. } => ApiError::NotFound {
                entity: "lease",
                key: lease_id.to_string(),
            },
            other => other.into(),
        })?;
    if caller.is_admin() {
        return Ok(lease);
    }
    let holder = state.consumer_id(caller, consumer).await?;
    if lease.consumer_id != holder {
        tracing::info!(lease = %lease_id, key = %caller.key_id, "lease call by a key that does not hold it");
        return Err(ApiError::NotLeaseHolder(lease_id.to_string()));
    }
    Ok(lease)
}

/// A lease id from the path.
pub fn parse_lease_id(id: &str) -> Result<LeaseId, ApiError> {
    id.parse::<LeaseId>()
        .map_err(|_| ApiError::invalid("lease_id", "must be a UUID"))
}

/// The library's request for an acquire body, every field checked first.
fn lease_request(
    state: &AppState,
    caller: &Caller,
    pool: &str,
    body: AcquireBody,
) -> Result<LeaseRequest, ApiError> {
    let consumer = state.consumer_name(caller, body.consumer.as_deref())?;
    let mut request = LeaseRequest::new(pool).consumer(consumer);
    if let Some(ttl) = body.ttl_seconds {
        request = request.ttl(Duration::from_secs(ttl));
    }
    if let Some(filter) = body.filter {
        filter.validate().map_err(|e| {
            if e.field.starts_with("filter") {
                e
            } else {
                e.within("filter")
            }
        })?;
        request = request.filter(filter);
    }
    if let Some(selector) = body.selector {
        request = request.selector(selector);
    }
    match body.session {
        Some(SessionBody::Key(key)) => request = request.session(key),
        Some(SessionBody::Full { key, ttl_seconds }) => {
            request = request.session(key);
            if let Some(ttl) = ttl_seconds {
                request = request.session_ttl(Duration::from_secs(ttl));
            }
        }
        None => {}
    }
    if let Some(target) = body.target {
        request = request.target(target);
    }
    Ok(request)
}

/// How `?wait_ms` waits: 10 ms, doubling to at most 100 ms between
/// attempts, as many attempts as fit in `wait` (the last wait may end up to
/// 100 ms past it).
fn wait_policy(wait: Duration) -> RetryPolicy {
    let initial = Duration::from_millis(10);
    let cap = Duration::from_millis(100);
    let mut policy = RetryPolicy::new(1, initial, 2.0, Some(cap)).unwrap_or_default();
    let mut waited = Duration::ZERO;
    let mut attempts = 1u32;
    while waited < wait && attempts < 10_000 {
        waited += policy.delay_after(attempts);
        attempts += 1;
    }
    if let Ok(p) = RetryPolicy::new(attempts, initial, 2.0, Some(cap)) {
        policy = p;
    }
    policy
}

/// The library names durations `ttl`; the wire names them `ttl_seconds`.
fn renamed(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid { field, reason } if field == "ttl" => ApiError::Invalid {
            field: "ttl_seconds".into(),
            reason,
        },
        ApiError::Invalid { field, reason } if field == "session.ttl" => ApiError::Invalid {
            field: "session.ttl_seconds".into(),
            reason,
        },
        other => other,
    }
}

/// An outcome's own fields are named `outcome.*` by the library; the body
/// is the outcome, so the wire drops the prefix.
fn outcome_field(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid { field, reason } if field.starts_with("outcome.") => ApiError::Invalid {
            field: field.trim_start_matches("outcome.").to_owned().into(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_policy_waits_about_as_long_as_asked() {
        for ms in [1u64, 50, 1_000, 30_000] {
            let policy = wait_policy(Duration::from_millis(ms));
            let total: Duration = (1..policy.max_attempts())
                .map(|a| policy.delay_after(a))
                .sum();
            assert!(total >= Duration::from_millis(ms), "{ms}: {total:?}");
            assert!(total < Duration::from_millis(ms + 100), "{ms}: {total:?}");
        }
    }
}
