//! The pool endpoints (scope `admin`): list, create, overview, delete; a
//! pool's proxies, listed and imported.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pharox::admin::{ImportOptions, import_proxies};
use pharox::{
    ImportDefaults, ProxyFilter, ProxyListFormat, ProxyProtocol, ProxyStatus, parse_proxy_json,
    parse_proxy_list,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, RawBody, is_json};
use crate::openapi::domain::{ImportRowSchema, ProxyProtocolSchema, ProxyStatusSchema};
use crate::routes::page;
use crate::state::AppState;
use crate::wire::{CreatePoolBody, ImportBody, OverviewBody, Page, PageQuery, PoolBody, ProxyBody};

/// `GET /v1/pools?limit=&cursor=`: pools by name.
#[utoipa::path(
    get,
    path = "/v1/pools",
    operation_id = "list_pools",
    tag = "pools",
    params(PageQuery),
    responses(
        (status = 200, description = "Pools by name", body = Page<PoolBody>),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    _: AdminCaller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<PoolBody>>, ApiError> {
    let mut pools = state.operator().pools().await?;
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(page(
        &pools,
        &query,
        |p| p.name.clone(),
        |p| PoolBody::from(p),
    )?))
}

/// `POST /v1/pools` `{name, description?}`: 201 with the pool; 409 when
/// the name is taken.
#[utoipa::path(
    post,
    path = "/v1/pools",
    operation_id = "create_pool",
    tag = "pools",
    request_body = CreatePoolBody,
    responses(
        (status = 201, description = "The new pool", body = PoolBody,
            links(
                ("show" = (operation_id = "show_pool", parameters(("pool" = "$response.body#/name")))),
                ("import" = (operation_id = "import_proxies", parameters(("pool" = "$response.body#/name")))),
                ("proxies" = (operation_id = "list_pool_proxies", parameters(("pool" = "$response.body#/name")))),
                ("lease" = (operation_id = "acquire_lease", parameters(("pool" = "$response.body#/name")))),
            ),
        ),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 409, description = "conflict: the name is taken"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: the body is not JSON"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    _: AdminCaller,
    ApiJson(body): ApiJson<CreatePoolBody>,
) -> Result<(StatusCode, Json<PoolBody>), ApiError> {
    let pool = state
        .operator()
        .create_pool(&body.name, body.description.as_deref())
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::Invalid { field, reason } if field == "pool.name" => ApiError::Invalid {
                field: "name".into(),
                reason,
            },
            other => other,
        })?;
    Ok((StatusCode::CREATED, Json(PoolBody::from(&pool))))
}

/// `GET /v1/pools/{pool}`: the pool's overview (counts by status, leases,
/// capacity, latency percentiles), as `pharox pool show` prints it.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}",
    operation_id = "show_pool",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential")),
    responses(
        (status = 200, description = "The pool's overview", body = OverviewBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn overview(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
) -> Result<Json<OverviewBody>, ApiError> {
    let overview = state.operator().overview(&pool).await?;
    Ok(Json(OverviewBody::from(&overview)))
}

/// `DELETE /v1/pools/{pool}`: 204; the pool goes with its proxies, leases
/// and health history.
#[utoipa::path(
    delete,
    path = "/v1/pools/{pool}",
    operation_id = "delete_pool",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name")),
    responses(
        (status = 204, description = "Deleted, with its proxies, leases and history"),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.operator().delete_pool(&pool).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?status=&limit=&cursor=` of a pool's proxy list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProxiesQuery {
    /// Only proxies with this status.
    #[param(value_type = Option<ProxyStatusSchema>)]
    pub status: Option<ProxyStatus>,
    /// Items per page: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Where the page starts: the `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// `GET /v1/pools/{pool}/proxies?status=&limit=&cursor=`: proxies by id,
/// without passwords.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/proxies",
    operation_id = "list_pool_proxies",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential"), ProxiesQuery),
    responses(
        (status = 200, description = "Proxies by id, without passwords", body = Page<ProxyBody>,
            links(
                ("show" = (operation_id = "show_proxy", parameters(("id" = "$response.body#/items/0/id")))),
                ("patch" = (operation_id = "patch_proxy", parameters(("id" = "$response.body#/items/0/id")))),
                ("health" = (operation_id = "proxy_health", parameters(("id" = "$response.body#/items/0/id")))),
            ),
        ),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 422, description = "invalid_request: `field` names the bad input"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn proxies(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
    ApiQuery(query): ApiQuery<ProxiesQuery>,
) -> Result<Json<Page<ProxyBody>>, ApiError> {
    let proxies = state
        .operator()
        .proxies(&pool, query.status, &ProxyFilter::default(), usize::MAX)
        .await?;
    let paging = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    Ok(Json(page(
        &proxies,
        &paging,
        |p| p.id.to_string(),
        |p| ProxyBody::from(p),
    )?))
}

/// `?protocol=&dry_run=&skip_invalid=` of an import.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The protocol of lines without a scheme.
    #[param(value_type = Option<ProxyProtocolSchema>)]
    pub protocol: Option<ProxyProtocol>,
    /// Report what would happen; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Write the good lines even when some are bad.
    #[serde(default)]
    pub skip_invalid: bool,
}

/// `POST /v1/pools/{pool}/proxies`: imports a list. The body is a JSON
/// array of proxy objects (`application/json`), CSV with a header
/// (`text/csv`), JSON lines (`application/x-ndjson`) or one proxy a line
/// (`text/plain`). All or nothing: any bad line gives 422 `invalid_lines`
/// with every bad line listed, and nothing is written (unless
/// `skip_invalid=true`).
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/proxies",
    operation_id = "import_proxies",
    tag = "pools",
    params(("pool" = String, Path, description = "The pool's name", example = "eu-residential"), ImportQuery),
    request_body(
        description = "A proxy list, in the format its content type names",
        content(
            (Vec<ImportRowSchema> = "application/json",
                example = json!([{"host": "192.0.2.10", "port": 8080, "country": "AR"}])),
            (String = "text/csv", example = json!("host,port,country\n192.0.2.11,8080,AR\n")),
            (String = "application/x-ndjson",
                example = json!("{\"url\": \"http://192.0.2.12:8080\"}\n")),
            (String = "text/plain", example = json!("http://user:pass@192.0.2.13:3128\n")),
        ),
    ),
    responses(
        (status = 200, description = "What the import did (or would do)", body = ImportBody),
        (status = 403, description = "forbidden: a lease key on an admin endpoint"),
        (status = 404, description = "pool_not_found"),
        (status = 413, description = "payload_too_large"),
        (status = 415, description = "unsupported_media_type: not one of the list formats"),
        (status = 422, description = "invalid_lines (every bad line in `invalid`, nothing written), or invalid_request"),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn import(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(pool): Path<String>,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: RawBody,
) -> Result<Json<ImportBody>, ApiError> {
    let text = std::str::from_utf8(&body.bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("is not UTF-8 (first bad byte at {})", e.valid_up_to()),
        )
    })?;
    let defaults = ImportDefaults {
        protocol: query.protocol,
        ..ImportDefaults::default()
    };
    let parsed = match body.media_type.as_deref() {
        Some(json) if is_json(json) => parse_proxy_json(text, &defaults)?,
        Some("text/csv") => parse_proxy_list(text, ProxyListFormat::Csv, &defaults)?,
        Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => {
            parse_proxy_list(text, ProxyListFormat::Jsonl, &defaults)?
        }
        None | Some("text/plain") => parse_proxy_list(text, ProxyListFormat::Text, &defaults)?,
        Some(_) => {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, text/csv, application/x-ndjson or text/plain",
            ));
        }
    };
    let options = ImportOptions {
        dry_run: query.dry_run,
        skip_invalid: query.skip_invalid,
    };
    let report = import_proxies(state.manager().storage().as_ref(), &pool, parsed, options).await?;
    if !report.invalid.is_empty() && !query.skip_invalid {
        return Err(ApiError::InvalidLines(report.invalid));
    }
    Ok(Json(ImportBody::from(&report)))
}
