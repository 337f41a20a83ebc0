//! The locked part of an acquire: reclaim expired leases, select a proxy
//! and grant the lease under the pool's lock.

use super::*;
use rand::RngCore;

impl MemoryStorage {
    /// The locked part of acquire: reclaim, select and grant under the
    /// pool's lock.
    pub(crate) fn grant(&self, request: &AcquireRequest) -> StorageResult<Granted> {
        // Time is kept as integer microseconds; the two instants the lease
        // shows are made once each.
        let now_us = self.clock.now_unix_micros();
        let now = instant(now_us)?;
        let expires_us = expiry_micros(now_us, request.ttl)?;
        let expires_at = from_unix_micros(expires_us).ok_or_else(ttl_too_large)?;
        let filter_empty = request.filter.is_empty();
        let predicates = !filter_empty && request.filter.has_predicate();

        let catalog = self.catalog.read();
        if !catalog.consumer_ids.contains(&request.consumer_id) {
            return Err(StorageError::not_found("consumer", request.consumer_id));
        }
        let Some(cell) = catalog.by_name.get(request.pool_name.as_str()) else {
            return Ok(Granted::Nothing);
        };
        let session_expires_us = match &request.session {
            Some(session) => Some(expiry_micros(now_us, session.ttl)?),
            None => None,
        };
        let lease_id = request.lease_id.unwrap_or_else(|| new_lease_id(now_us));
        // The catalog stays read-locked until the lease is granted, so the
        // pool cannot be deleted meanwhile.
        let mut state = cell.lock();
        // Acquires of one pool are serialised by its lock, and a lease is
        // indexed under it: a repeat with the same id sees the first one.
        if request.lease_id.is_some() && !matches!(self.leases.find(lease_id), Found::Unknown) {
            return Ok(Granted::Repeat(lease_id, cell.id));
        }
        self.reclaim(&mut state, cell, now, now_us);
        let skips = state.skips(now, now_us, request.target.as_ref());
        // A known session's proxy first, if it still qualifies; otherwise
        // the selector picks and the session moves.
        let mut moved = false;
        let mut sticky = None;
        if let Some(session) = &request.session
            && let Some(bound) = state.session_proxy(&session.key, now_us)
        {
            match state.slot_of(bound) {
                Some(idx)
                    if state.qualifies(idx, &request.filter, filter_empty, predicates, &skips) =>
                {
                    sticky = Some(idx);
                }
                _ => moved = true,
            }
        }
        let (idx, selector) = match sticky {
            // Reusing the session's proxy is no pick: a round-robin cursor
            // stays where it was.
            Some(idx) => (idx, Selector::FirstAvailable),
            None => {
                let Some(idx) = state.select(
                    &request.filter,
                    request.selector,
                    filter_empty,
                    predicates,
                    &skips,
                ) else {
                    return Ok(Granted::Nothing);
                };
                (idx, request.selector)
            }
        };
        let proxy_id = state
            .slot(idx)
            .map(|slot| slot.proxy.id)
            .ok_or_else(|| internal("selected slot is empty"))?;
        let active = ActiveLease {
            slot: idx,
            proxy_id,
            consumer_id: request.consumer_id,
            acquired_at: now,
            expires_at,
            expires_us,
        };
        let proxy = state
            .grant(idx, lease_id, active, selector)
            .ok_or_else(|| internal("granted slot is empty"))?;
        let session = match (&request.session, session_expires_us) {
            (Some(session), Some(expires_us)) => {
                state.bind_session(&session.key, proxy_id, expires_us, now_us);
                Some(LeaseSession {
                    key: session.key.clone(),
                    moved,
                })
            }
            _ => None,
        };
        // Indexed under the pool lock, so a concurrent reclaim cannot finish
        // the lease before the index knows it.
        self.leases
            .insert_active(lease_id, Arc::clone(cell), active);
        let (pool_id, pool_name) = (cell.id, Arc::clone(&state.name));
        drop(state);
        drop(catalog);
        let mut lease = lease_from(lease_id, &active, pool_id, pool_name, proxy);
        lease.session = session;
        Ok(Granted::Lease(lease))
    }
}

/// A UUIDv7 lease id stamped with the storage's clock (milliseconds), 68
/// random bits from the thread's generator and the thread's lease-index
/// shard (6 bits): no global lock, no second clock read.
fn new_lease_id(now_us: i64) -> LeaseId {
    let millis = u64::try_from(now_us / 1000).unwrap_or(0);
    // Two draws, not ten: an array of bytes is drawn a byte per word.
    let mut rng = rand::rng();
    let (high, low) = (rng.next_u64().to_le_bytes(), rng.next_u32().to_le_bytes());
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&high);
    random[8..].copy_from_slice(&low[..2]);
    crate::leases::stamp_home_shard(&mut random);
    LeaseId(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

/// What the locked part of acquire came to.
pub(crate) enum Granted {
    Lease(Lease),
    Nothing,
    /// A lease with the caller's id exists already (in this pool).
    Repeat(LeaseId, PoolId),
}

/// `now` plus `ttl` (truncated to microseconds), for an expiry.
pub(crate) fn expiry(now: OffsetDateTime, ttl: Duration) -> StorageResult<OffsetDateTime> {
    from_unix_micros(expiry_micros(micros(now), ttl)?).ok_or_else(ttl_too_large)
}

/// `now_us` plus `ttl` in microseconds, checked to stay in the range an
/// `OffsetDateTime` can show.
pub(crate) fn expiry_micros(now_us: i64, ttl: Duration) -> StorageResult<i64> {
    i64::try_from(ttl.as_micros())
        .ok()
        .and_then(|ttl_us| now_us.checked_add(ttl_us))
        .filter(|&us| from_unix_micros(us).is_some())
        .ok_or_else(ttl_too_large)
}

/// The clock's reading as an instant; a clock outside the years `time`
/// knows is an internal fault, not the caller's.
pub(crate) fn instant(us: i64) -> StorageResult<OffsetDateTime> {
    from_unix_micros(us).ok_or_else(|| internal("the clock reads outside the representable years"))
}

fn ttl_too_large() -> StorageError {
    ValidationError::new("ttl", "too large").into()
}
