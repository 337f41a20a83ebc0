//! Sticky sessions, and outcomes applied to a proxy's usage and to its bans
//! per target.

use super::*;

/// Where a sticky session points, and until when it is remembered.
#[derive(Clone, Copy)]
pub(super) struct Session {
    proxy_id: ProxyId,
    /// Forgotten from this microsecond on (exclusive, like a lease).
    expires_us: i64,
}

/// Sessions are swept of expired ones when the map reaches this size (and
/// then twice the size it had left), so the sweep's cost is amortised.
pub(super) const SESSION_SWEEP_MIN: usize = 1024;

impl PoolState {
    /// The proxy session `key` points at, unless it is unknown or expired
    /// at `now_us`.
    pub(crate) fn session_proxy(&self, key: &SessionKey, now_us: i64) -> Option<ProxyId> {
        self.sessions
            .get(key)
            .filter(|s| now_us < s.expires_us)
            .map(|s| s.proxy_id)
    }

    /// Points session `key` at `proxy_id` until `expires_us`, sweeping
    /// expired sessions when the map has grown enough.
    pub(crate) fn bind_session(
        &mut self,
        key: &SessionKey,
        proxy_id: ProxyId,
        expires_us: i64,
        now_us: i64,
    ) {
        let session = Session {
            proxy_id,
            expires_us,
        };
        if let Some(bound) = self.sessions.get_mut(key) {
            *bound = session;
            return;
        }
        if self.sessions.len() >= self.session_sweep_at {
            self.sessions.retain(|_, s| now_us < s.expires_us);
            self.session_sweep_at = (2 * self.sessions.len()).max(SESSION_SWEEP_MIN);
        }
        self.sessions.insert(key.clone(), session);
    }

    /// Applies `outcome` at `now` under `policy` to slot `idx`'s usage and
    /// the ban of the outcome's target; returns a copy of the proxy after.
    pub(crate) fn apply_outcome(
        &mut self,
        idx: u32,
        outcome: &Outcome,
        policy: &UsagePolicy,
        now: OffsetDateTime,
    ) -> Option<Proxy> {
        let slot = self.slots.get_mut(idx as usize).and_then(Option::as_mut)?;
        let target = outcome.target();
        let ban = target.and_then(|t| slot.bans.get(t));
        let change = policy.apply_outcome(&slot.proxy.usage, ban, outcome, now);
        if change.usage != slot.proxy.usage {
            // Usage is in no index key, so no index moves.
            Arc::make_mut(&mut slot.proxy).usage = change.usage;
            if let Some(until) = change.usage.cooldown_until {
                self.cooling_until_us = self.cooling_until_us.max(crate::micros(until));
            }
        }
        match (change.ban, target) {
            (BanChange::Set(state), Some(target)) => {
                self.bans_until_us = self.bans_until_us.max(crate::micros(state.until));
                slot.bans.insert(target.clone(), state);
            }
            (BanChange::Clear, Some(target)) => {
                slot.bans.remove(target);
            }
            _ => {}
        }
        Some(slot.copy())
    }
}
