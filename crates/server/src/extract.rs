//! Extractors that answer bad input with [`ApiError`] (422 naming the
//! field, 413 for a body over the limit, 415 for a wrong media type)
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body (`application/json`, or no content type).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// A JSON object body that may be absent: an empty body (or JSON `null`)
/// gives `None`.
#[derive(Debug)]
pub struct MaybeJson<T>(pub Option<T>);

/// The raw body and its media type, for endpoints that take several.
#[derive(Debug)]
pub struct RawBody {
    /// The `Content-Type`'s media type, lower-case, without parameters.
    pub media_type: Option<String>,
    /// The body.
    pub bytes: Bytes,
}

/// A query string, rejected as 422 naming the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let media_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let limit = state.limits().body_limit;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(limit),
                _ => ApiError::invalid("body", "could not be read"),
            })?;
        Ok(Self { media_type, bytes })
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match MaybeJson::<T>::from_request(req, state).await? {
            MaybeJson(Some(value)) => Ok(Self(value)),
            MaybeJson(None) => Err(ApiError::invalid("body", "is required (a JSON object)")),
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = RawBody::from_request(req, state).await?;
        if let Some(media_type) = &body.media_type
            && !is_json(media_type)
        {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        if is_null(&body.bytes) {
            return Ok(Self(None));
        }
        match body.bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Ok(Self(None)),
            // serde would also read a struct from an array: refuse that here.
            Some(b'{') => {}
            Some(_) => return Err(ApiError::invalid("body", "must be a JSON object")),
        }
        parse_json(&body.bytes).map(|v| Self(Some(v)))
    }
}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| {
                let text = e.body_text();
                let reason = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                ApiError::invalid("query", reason)
            })
    }
}

/// Whether a body is JSON `null`, surrounded by whitespace or not.
fn is_null(bytes: &[u8]) -> bool {
    bytes.trim_ascii() == b"null"
}

/// Whether a media type is JSON (`application/json`, `application/*+json`).
#[must_use]
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// Parses JSON; an error names the field by its path (`filter.any_of[0].asn`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = match path.as_str() {
            "." | "?" => "body".to_owned(),
            _ => path,
        };
        ApiError::invalid(field, e.into_inner().to_string())
    })
}
