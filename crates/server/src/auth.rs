//! API keys and their scopes: parsing `SCOPE:KEY` lists, checking a
//! request's key in constant time against them and then against the keys
//! in storage (when the server has one), and the extractors handlers take
//! ([`LeaseCaller`], [`AdminCaller`]).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

/// The listed keys, the caller a key stands for, and the list's errors
/// (shared with the gateway).
pub use pharox::api_keys::{ApiKeys, Caller, KeyListError, MAX_KEY_CHARS, MIN_KEY_CHARS};
/// What a key may do: `lease` (the lease endpoints) or `admin` (everything).
pub use pharox::domain::ApiKeyScope as Scope;

/// A caller with a key of either scope: for the lease endpoints.
#[derive(Debug, Clone)]
pub struct LeaseCaller(pub Caller);

/// A caller with an `admin` key: for everything else.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for LeaseCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(authenticate(&parts.headers, state).await?))
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticate(&parts.headers, state).await?;
        match caller.scope {
            Scope::Admin => Ok(Self(caller)),
            Scope::Lease => Err(ApiError::Forbidden("the admin endpoints")),
        }
    }
}

/// The key from `Authorization: Bearer KEY` or `X-API-Key: KEY`: one of
/// the static keys (compared in constant time), else a stored key not
/// revoked (looked up by its hash, through the per-process cache of
/// [`ApiKeyAdmin`](pharox::ApiKeyAdmin)).
async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
    let presented = bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    });
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized);
    };
    state
        .key_ring()
        .authenticate(presented)
        .await?
        .ok_or(ApiError::Unauthorized)
}
