//! The handlers, one module per resource, and the pagination they share.

pub mod health;
pub mod leases;
pub mod pools;
pub mod proxies;
pub mod sweeps;

use crate::error::ApiError;
use crate::wire::{Page, PageQuery};

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_PAGE_LIMIT: usize = 1000;
/// The deepest offset an offset cursor may reach (health history).
pub const MAX_OFFSET: usize = 100_000;

/// A page of `items` (sorted by `key`), starting after the item whose key
/// is `query.cursor`.
pub fn page<T, B>(
    items: &[T],
    query: &PageQuery,
    key: impl Fn(&T) -> String,
    to_body: impl Fn(&T) -> B,
) -> Result<Page<B>, ApiError> {
    let limit = limit_of(query)?;
    let start = match &query.cursor {
        Some(cursor) => items.partition_point(|item| key(item).as_str() <= cursor.as_str()),
        None => 0,
    };
    let rest = &items[start.min(items.len())..];
    let taken = &rest[..limit.min(rest.len())];
    Ok(Page {
        items: taken.iter().map(to_body).collect(),
        next_cursor: (rest.len() > limit)
            .then(|| taken.last().map(&key))
            .flatten(),
    })
}

/// `limit` and an offset from a numeric `cursor`, for lists the storage
/// gives newest first.
pub fn page_bounds(query: &PageQuery) -> Result<(usize, usize), ApiError> {
    let limit = limit_of(query)?;
    let offset = match &query.cursor {
        Some(cursor) => cursor
            .parse::<usize>()
            .ok()
            .filter(|o| *o <= MAX_OFFSET)
            .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this list gave"))?,
        None => 0,
    };
    Ok((limit, offset))
}

fn limit_of(query: &PageQuery) -> Result<usize, ApiError> {
    match query.limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=MAX_PAGE_LIMIT).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 1000")),
    }
}
