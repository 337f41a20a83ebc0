//! The API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! It is generated, not written: every handler carries a
//! `#[utoipa::path]` (its route, parameters, body and statuses), the wire
//! types derive `ToSchema`, and the domain types they carry are described
//! in [`domain`]. Two modifiers add what holds for every operation by
//! construction: every 4xx/5xx body is the [`Problem`](crate::error::Problem)
//! as `application/problem+json` (that is how [`ApiError`] answers), and the
//! statuses the router's layers can give any request (408, 503, 500; 401
//! where a key is needed) are listed on each.

pub mod domain;

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pharox::domain::MAX_NAME_CHARS;
use serde_json::Value;
use utoipa::openapi::content::Content;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, PROBLEM_JSON};
use crate::routes::{health, leases, pools, proxies};

/// The security scheme for `Authorization: Bearer KEY`.
pub const BEARER: &str = "bearer";
/// The security scheme for `X-API-Key: KEY`.
pub const API_KEY: &str = "api_key";

/// The pool name the document's examples use (on every pool operation
/// but `DELETE`, so a client that tries the examples deletes nothing).
pub const EXAMPLE_POOL: &str = "eu-residential";

/// A pool name as the domain takes it (1 to 128 characters, not blank, no
/// control characters), as a pattern for the document.
pub const NAME_PATTERN: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// The schema of a pool name.
#[must_use]
pub fn pool_name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_NAME_CHARS))
        .pattern(Some(NAME_PATTERN))
        .description(Some(
            "A pool's name: 1 to 128 characters, not blank, no control characters.",
        ))
        .build()
}

/// The document's source: every operation and the schemas they use.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pharox",
        description = "The pharox lease service: lease proxies from pools, report outcomes, \
                       manage pools and proxies. Errors are RFC 9457 problems; branch on `code`."
    ),
    paths(
        health::healthz,
        health::readyz,
        document,
        crate::metrics::scrape,
        pools::list,
        pools::create,
        pools::overview,
        pools::delete,
        pools::proxies,
        pools::import,
        crate::routes::sweeps::start,
        crate::routes::sweeps::status,
        leases::acquire,
        leases::show,
        leases::release,
        leases::renew,
        leases::report,
        proxies::show,
        proxies::patch,
        proxies::delete,
        proxies::health,
    ),
    components(schemas(
        crate::error::Problem,
        domain::ProxyStatusSchema,
        domain::ProxyProtocolSchema,
        domain::SelectorSchema,
        domain::LeaseStatusSchema,
        domain::ProxyFailureKindSchema,
        domain::StatusCountsSchema,
        domain::ProxyFilterSchema,
        domain::OutcomeSchema,
        domain::ImportRowSchema,
    )),
    modifiers(&Security, &Problems),
    tags(
        (name = "leases", description = "Leasing proxies (scope lease or admin)"),
        (name = "pools", description = "Pools and their proxies (scope admin)"),
        (name = "proxies", description = "Single proxies (scope admin)"),
        (name = "probes", description = "Liveness, readiness and this document (no key)"),
    )
)]
pub struct ApiDoc;

/// The document, as served.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, with its link objects' keys in camelCase as
/// OpenAPI has them (utoipa 5 writes `operation_id` and `request_body`).
pub fn openapi_json() -> Result<Value, serde_json::Error> {
    let mut doc = serde_json::to_value(openapi())?;
    let responses = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(Value::as_object_mut)
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response.get_mut("links").and_then(Value::as_object_mut);
        for link in links.into_iter().flat_map(|l| l.values_mut()) {
            if let Some(link) = link.as_object_mut() {
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_owned(), value);
                    }
                }
            }
        }
    }
    Ok(doc)
}

/// `GET /openapi.json`: the API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "probes",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")),
)]
pub async fn document() -> Response {
    static DOCUMENT: LazyLock<Result<Vec<u8>, String>> = LazyLock::new(|| {
        openapi_json()
            .and_then(|doc| serde_json::to_vec(&doc))
            .map_err(|e| e.to_string())
    });
    match &*DOCUMENT {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes.clone(),
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("the OpenAPI document: {e}")).into_response(),
    }
}

/// Adds the two ways to present a key.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// Lists the statuses any request can get, gives every error response the
/// problem body, and every `{pool}` the domain's rule for names.
struct Problems;

/// What the router's layers can answer to any request.
const EVERY_OPERATION: [(u16, &str); 3] = [
    (
        408,
        "request_timeout: the request took longer than the server allows",
    ),
    (
        503,
        "overloaded: too many requests in flight; or storage_unavailable",
    ),
    (500, "internal: anything else (logged, answered opaquely)"),
];

impl Modify for Problems {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                describe_pool_names(operation);
                add_problems(operation);
            }
        }
    }
}

/// Gives every `{pool}` path parameter the domain's rule for pool names.
fn describe_pool_names(operation: &mut Operation) {
    let pools = operation
        .parameters
        .iter_mut()
        .flatten()
        .filter(|p| p.name == "pool" && p.parameter_in == ParameterIn::Path);
    for parameter in pools {
        parameter.schema = Some(pool_name().into());
    }
}

fn add_problems(operation: &mut Operation) {
    let needs_key = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let responses = &mut operation.responses.responses;
    let unauthorized = (
        401,
        "unauthorized: no API key, or one the server does not know",
    );
    for (status, description) in EVERY_OPERATION
        .into_iter()
        .chain(needs_key.then_some(unauthorized))
    {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    }
    for (status, response) in responses.iter_mut() {
        if let (false, RefOr::T(response)) = (status.starts_with(['1', '2', '3']), response) {
            response.content.clear();
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name("Problem"))),
            );
        }
    }
}
