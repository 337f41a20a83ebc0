//! The proxy endpoints (scope `admin`): show, switch status, remove, and
//! the health history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pharox::ProxyId;

use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::page_bounds;
use crate::state::AppState;
use crate::wire::{HealthRecordBody, PageQuery, PatchProxyBody, ProxyBody, ProxyHealthBody};

/// `GET /v1/proxies/{id}`.
#[utoipa::path(
    get,
    path = "/v1/proxies/{id}",
    operation_id = "show_proxy",
    tag = "proxies",
    params(("id" = uuid::Uuid, Path, description = "The proxy's id")),
    responses(
        (status = 200, description = "The proxy, without its password", body = ProxyBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "proxy_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ProxyBody>, ApiError> {
    let proxy = state.operator().proxy(parse_proxy_id(&id)?).await?;
    Ok(Json(ProxyBody::from(&proxy)))
}

/// `PATCH /v1/proxies/{id}` `{status}`: sets the status by hand.
#[utoipa::path(
    patch,
    path = "/v1/proxies/{id}",
    operation_id = "patch_proxy",
    tag = "proxies",
    params(("id" = uuid::Uuid, Path, description = "The proxy's id")),
    request_body = PatchProxyBody,
    responses(
        (status = 200, description = "The proxy, with its new status", body = ProxyBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "proxy_not_found"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn patch(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchProxyBody>,
) -> Result<Json<ProxyBody>, ApiError> {
    let proxy = state
        .operator()
        .set_status(parse_proxy_id(&id)?, body.status)
        .await?;
    Ok(Json(ProxyBody::from(&proxy)))
}

/// `DELETE /v1/proxies/{id}`: 204; its leases and health history go too.
#[utoipa::path(
    delete,
    path = "/v1/proxies/{id}",
    operation_id = "delete_proxy",
    tag = "proxies",
    params(("id" = uuid::Uuid, Path, description = "The proxy's id")),
    responses(
        (status = 204, description = "Removed, with its leases and health history"),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "proxy_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .operator()
        .remove_proxies(&[parse_proxy_id(&id)?])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/proxies/{id}/health?limit=&cursor=`: its health checks, newest
/// first.
#[utoipa::path(
    get,
    path = "/v1/proxies/{id}/health",
    operation_id = "proxy_health",
    tag = "proxies",
    params(("id" = uuid::Uuid, Path, description = "The proxy's id"), PageQuery),
    responses(
        (status = 200, description = "Its health checks, newest first", body = ProxyHealthBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "proxy_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn health(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ProxyHealthBody>, ApiError> {
    let id = parse_proxy_id(&id)?;
    let proxy = state.operator().proxy(id).await?;
    let (limit, offset) = page_bounds(&query)?;
    let records = state
        .manager()
        .storage()
        .list_health_records(id, offset + limit + 1)
        .await?;
    let more = records.len() > offset + limit;
    Ok(Json(ProxyHealthBody {
        proxy_id: proxy.id.to_string(),
        status: proxy.status,
        consecutive_failures: proxy.health.consecutive_failures,
        records: records
            .iter()
            .skip(offset)
            .take(limit)
            .map(HealthRecordBody::from)
            .collect(),
        next_cursor: more.then(|| (offset + limit).to_string()),
    }))
}

fn parse_proxy_id(id: &str) -> Result<ProxyId, ApiError> {
    id.parse::<ProxyId>()
        .map_err(|_| ApiError::invalid("proxy_id", "must be a UUID"))
}
