//! [`ApiError`]: every failure of the API, answered as an RFC 9457 problem
//! (`application/problem+json`) with a stable `code`.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pharox::{InvalidLine, PharoxError, StorageError, ValidationError};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request failed. Each variant has one HTTP status and one stable
/// `code` (see [`ApiError::code`]); clients branch on the code, not on the
/// human-readable `detail`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key, or one the server does not know (401, `unauthorized`).
    #[error("a valid API key is required (Authorization: Bearer KEY, or X-API-Key)")]
    Unauthorized,
    /// The key's scope does not allow this endpoint (403, `forbidden`).
    #[error("this API key's scope does not allow {0}")]
    Forbidden(&'static str),
    /// The lease was acquired with another API key (403, `not_lease_holder`).
    #[error("lease {0} is held by another API key or consumer")]
    NotLeaseHolder(String),
    /// Input rejected; `field` names what was wrong (422, `invalid_request`).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, dotted for nested ones (`filter.all.0.country`).
        field: Cow<'static, str>,
        /// Why.
        reason: Cow<'static, str>,
    },
    /// A proxy list with bad lines; nothing was written (422, `invalid_lines`).
    #[error("{} invalid lines; nothing was imported", .0.len())]
    InvalidLines(Vec<InvalidLine>),
    /// The request body is larger than the server accepts (413,
    /// `payload_too_large`).
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body's media type is not one this endpoint reads (415,
    /// `unsupported_media_type`).
    #[error("unsupported content type; this endpoint takes {0}")]
    UnsupportedMediaType(&'static str),
    /// Something named does not exist (404, `<entity>_not_found`, e.g.
    /// `pool_not_found`).
    #[error("{entity} {key} not found")]
    NotFound {
        /// What kind of thing: pool, proxy, lease, route.
        entity: &'static str,
        /// Its name or id.
        key: String,
    },
    /// The route exists, but not for this method (405, `method_not_allowed`).
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// No proxy of the pool qualifies (409, `no_proxy_available`).
    #[error("no proxy available in pool {0}")]
    NoProxyAvailable(String),
    /// The lease was released or expired (409, `lease_not_active`).
    #[error("lease {0} is no longer active")]
    LeaseNotActive(String),
    /// A health sweep of the pool is running already (409, `sweep_running`).
    #[error("a health sweep of pool {pool} is running{}", .holder.as_deref().map(|h| format!(", held by {h}")).unwrap_or_default())]
    SweepRunning {
        /// The pool.
        pool: String,
        /// Who runs it, as it described itself (when known).
        holder: Option<String>,
    },
    /// The server was started without what this endpoint needs (501,
    /// `not_configured`), e.g. health sweeps on a library-built server.
    #[error("{0} is not configured on this server")]
    NotConfigured(&'static str),
    /// A conflicting state, e.g. a pool name that is taken (409, `conflict`).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Too many requests in flight (503, `overloaded`).
    #[error("the server is at its limit of concurrent requests; try again shortly")]
    Overloaded,
    /// The request took longer than the server allows (408, `request_timeout`).
    #[error("the request took too long")]
    Timeout,
    /// The storage cannot be reached now (503, `storage_unavailable`); the
    /// cause is logged, not answered.
    #[error("storage unavailable")]
    Unavailable(#[source] StorageError),
    /// Anything else (500, `internal`); logged, answered opaquely.
    #[error("internal error")]
    Internal(String),
}

/// The body of an error: RFC 9457 members plus `code` and, when they apply,
/// `field` and `invalid`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:pharox:problem:<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The stable, machine-readable code.
    #[schema(value_type = String, example = "pool_not_found")]
    pub code: Cow<'static, str>,
    /// The field that was wrong, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rejected lines of a proxy list, for `invalid_lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Vec<ProblemLine>>,
}

/// One rejected line of an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemLine {
    /// 1-based line (or array element) number.
    pub line: usize,
    /// The field that was wrong.
    pub field: String,
    /// Why (never a value from the input).
    pub reason: String,
}

impl ApiError {
    /// The HTTP status of this error.
    #[must_use]
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::NotLeaseHolder(_) => StatusCode::FORBIDDEN,
            Self::Invalid { .. } | Self::InvalidLines(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoProxyAvailable(_)
            | Self::LeaseNotActive(_)
            | Self::SweepRunning { .. }
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotConfigured(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Overloaded | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients branch on.
    #[must_use]
    pub fn code(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotLeaseHolder(_) => "not_lease_holder",
            Self::Invalid { .. } => "invalid_request",
            Self::InvalidLines(_) => "invalid_lines",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::NotFound { entity, .. } => return Cow::Owned(format!("{entity}_not_found")),
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::NoProxyAvailable(_) => "no_proxy_available",
            Self::LeaseNotActive(_) => "lease_not_active",
            Self::SweepRunning { .. } => "sweep_running",
            Self::NotConfigured(_) => "not_configured",
            Self::Conflict(_) => "conflict",
            Self::Overloaded => "overloaded",
            Self::Timeout => "request_timeout",
            Self::Unavailable(_) => "storage_unavailable",
            Self::Internal(_) => "internal",
        })
    }

    /// An invalid input, naming the field.
    pub fn invalid(
        field: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The problem document this error is answered with.
    #[must_use]
    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        let code = self.code();
        Problem {
            kind: format!("urn:pharox:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            field: match self {
                Self::Invalid { field, .. } => Some(field.to_string()),
                _ => None,
            },
            invalid: match self {
                Self::InvalidLines(lines) => Some(
                    lines
                        .iter()
                        .map(|l| ProblemLine {
                            line: l.line,
                            field: l.error.field.to_string(),
                            reason: l.error.reason.to_string(),
                        })
                        .collect(),
                ),
                _ => None,
            },
            code,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Invalid(v) => v.into(),
            StorageError::NotFound { entity, key } => Self::NotFound { entity, key },
            StorageError::Conflict(what) => Self::Conflict(what),
            StorageError::LeaseNotActive(id) => Self::LeaseNotActive(id.to_string()),
            e @ (StorageError::Unavailable { .. } | StorageError::Transient { .. }) => {
                Self::Unavailable(e)
            }
            e @ StorageError::Backend { .. } => Self::Internal(e.to_string()),
        }
    }
}

impl From<PharoxError> for ApiError {
    fn from(e: PharoxError) -> Self {
        match e {
            PharoxError::Invalid(v) => v.into(),
            PharoxError::Storage(s) => s.into(),
            PharoxError::NoProxyAvailable { pool } => Self::NoProxyAvailable(pool),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // 5xx: the cause goes to the log, the client gets the status and code only.
        match &self {
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "storage unavailable");
            }
            Self::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            _ => {}
        }
        let status = self.status_code();
        let body = match serde_json::to_vec(&self.problem()) {
            Ok(body) => body,
            Err(_) => br#"{"code":"internal"}"#.to_vec(),
        };
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}
