//! The selector indexes of a pool's available proxies: their keys, the
//! random set, keeping them current as slots change, and the pick itself.

use super::*;

/// Least-used order: fewest leases, never-checked first, oldest check, id.
pub(super) type LeastKey = (u32, Option<OffsetDateTime>, ProxyId, u32);
/// Lowest-latency order: measured first, lowest latency, id.
pub(super) type LatencyKey = (bool, u64, ProxyId, u32);

/// Available slots with O(1) insert, remove and uniform pick.
#[derive(Default)]
pub(super) struct RandomSet {
    items: Vec<u32>,
    /// Position of each slot in `items`, `u32::MAX` when absent.
    pos: Vec<u32>,
}

impl RandomSet {
    fn insert(&mut self, idx: u32) {
        let i = idx as usize;
        if self.pos.len() <= i {
            self.pos.resize(i + 1, u32::MAX);
        }
        if self.pos[i] == u32::MAX {
            self.pos[i] = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
            self.items.push(idx);
        }
    }

    fn remove(&mut self, idx: u32) {
        let Some(&p) = self.pos.get(idx as usize) else {
            return;
        };
        if p == u32::MAX {
            return;
        }
        self.items.swap_remove(p as usize);
        if let Some(&moved) = self.items.get(p as usize) {
            self.pos[moved as usize] = p;
        }
        self.pos[idx as usize] = u32::MAX;
    }
}

/// Whether a slot's proxy matches `filter` (see [`PoolState::select`]).
fn matches_filter(
    slot: &mut Slot,
    filter: &ProxyFilter,
    filter_empty: bool,
    predicates: bool,
) -> bool {
    if filter_empty {
        return true;
    }
    if predicates && slot.proxy.current_leases != slot.leases {
        Arc::make_mut(&mut slot.proxy).current_leases = slot.leases;
    }
    filter.matches(&slot.proxy)
}

impl Slot {
    fn least_key(&self, idx: u32) -> LeastKey {
        (self.leases, self.proxy.checked_at, self.proxy.id, idx)
    }

    fn latency_key(&self, idx: u32) -> LatencyKey {
        let latency = self.proxy.health.last_latency_ms;
        // `+ 0.0` turns -0.0 into 0.0; non-negative floats order like their bits.
        (
            latency.is_none(),
            latency.map_or(0, |l| (l + 0.0).to_bits()),
            self.proxy.id,
            idx,
        )
    }
}

impl PoolState {
    pub(super) fn index(&mut self, idx: u32) {
        let Some(slot) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if !slot.available() {
            return;
        }
        self.by_id.insert(slot.proxy.id.0.as_u128(), idx);
        if let Some(set) = &mut self.least {
            set.insert(slot.least_key(idx));
        }
        if let Some(set) = &mut self.latency {
            set.insert(slot.latency_key(idx));
        }
        if let Some(set) = &mut self.random {
            set.insert(idx);
        }
    }

    pub(super) fn unindex(&mut self, idx: u32) {
        let Some(slot) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if !slot.available() {
            return;
        }
        self.by_id.remove(&slot.proxy.id.0.as_u128());
        if let Some(set) = &mut self.least {
            set.remove(&slot.least_key(idx));
        }
        if let Some(set) = &mut self.latency {
            set.remove(&slot.latency_key(idx));
        }
        if let Some(set) = &mut self.random {
            set.remove(idx);
        }
    }

    /// Changes a slot and moves it in every built index whose key or
    /// membership changed (and only those).
    pub(crate) fn update_slot(&mut self, idx: u32, f: impl FnOnce(&mut Slot)) {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let was = slot.available();
        let old_least = self.least.as_ref().map(|_| slot.least_key(idx));
        let old_latency = self.latency.as_ref().map(|_| slot.latency_key(idx));
        f(slot);
        let now = slot.available();
        if was != now {
            if now {
                self.by_id.insert(slot.proxy.id.0.as_u128(), idx);
                if let Some(set) = &mut self.random {
                    set.insert(idx);
                }
            } else {
                self.by_id.remove(&slot.proxy.id.0.as_u128());
                if let Some(set) = &mut self.random {
                    set.remove(idx);
                }
            }
        }
        if let (Some(set), Some(old)) = (&mut self.least, old_least) {
            let new = slot.least_key(idx);
            if was && (!now || new != old) {
                set.remove(&old);
            }
            if now && (!was || new != old) {
                set.insert(new);
            }
        }
        if let (Some(set), Some(old)) = (&mut self.latency, old_latency) {
            let new = slot.latency_key(idx);
            if was && (!now || new != old) {
                set.remove(&old);
            }
            if now && (!was || new != old) {
                set.insert(new);
            }
        }
    }

    /// Builds the index a selector walks, the first time it is used.
    fn ensure_index(&mut self, selector: Selector) {
        match selector {
            Selector::FirstAvailable | Selector::RoundRobin => {}
            Selector::LeastUsed if self.least.is_none() => {
                let set = self
                    .available_slots()
                    .map(|(i, s)| s.least_key(i))
                    .collect();
                self.least = Some(set);
            }
            Selector::LowestLatency if self.latency.is_none() => {
                let set = self
                    .available_slots()
                    .map(|(i, s)| s.latency_key(i))
                    .collect();
                self.latency = Some(set);
            }
            Selector::Random if self.random.is_none() => {
                let mut set = RandomSet::default();
                let avail: Vec<u32> = self.available_slots().map(|(i, _)| i).collect();
                for i in avail {
                    set.insert(i);
                }
                self.random = Some(set);
            }
            Selector::LeastUsed | Selector::LowestLatency | Selector::Random => {}
        }
    }

    fn available_slots(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let s = s.as_ref().filter(|s| s.available())?;
            Some((u32::try_from(i).ok()?, s))
        })
    }

    /// What an acquire at `now` (for `target`, if any) must check beyond
    /// capacity and status.
    pub(crate) fn skips<'a>(
        &self,
        now: OffsetDateTime,
        now_us: i64,
        target: Option<&'a TargetHost>,
    ) -> Skips<'a> {
        Skips {
            now,
            cooling: now_us < self.cooling_until_us,
            target: target.filter(|_| now_us < self.bans_until_us),
        }
    }

    /// Whether slot `idx` could be leased for this request: available, not
    /// skipped, matching the filter.
    pub(crate) fn qualifies(
        &mut self,
        idx: u32,
        filter: &ProxyFilter,
        filter_empty: bool,
        predicates: bool,
        skips: &Skips<'_>,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return false;
        };
        slot.available()
            && slot.passes(skips)
            && matches_filter(slot, filter, filter_empty, predicates)
    }

    /// The slot `selector` picks among available proxies matching `filter`
    /// that `skips` lets through. `filter_empty` short-cuts matching;
    /// `predicates` says whether the filter has a predicate (which must see
    /// an exact `current_leases`).
    pub(crate) fn select(
        &mut self,
        filter: &ProxyFilter,
        selector: Selector,
        filter_empty: bool,
        predicates: bool,
        skips: &Skips<'_>,
    ) -> Option<u32> {
        self.ensure_index(selector);
        let no_skips = skips.none();
        let slots = &mut self.slots;
        let mut matches = |idx: u32| -> bool {
            if filter_empty && no_skips {
                return true;
            }
            let Some(slot) = slots.get_mut(idx as usize).and_then(Option::as_mut) else {
                return false;
            };
            slot.passes(skips) && matches_filter(slot, filter, filter_empty, predicates)
        };
        let filter_empty = filter_empty && no_skips;
        match selector {
            Selector::FirstAvailable => self.by_id.values().copied().find(|&i| matches(i)),
            Selector::RoundRobin => match self.rr_cursor {
                Some(cursor) => self
                    .by_id
                    .range((Bound::Excluded(cursor), Bound::Unbounded))
                    .chain(self.by_id.range(..=cursor))
                    .map(|(_, &i)| i)
                    .find(|&i| matches(i)),
                None => self.by_id.values().copied().find(|&i| matches(i)),
            },
            Selector::LeastUsed => self
                .least
                .as_ref()?
                .iter()
                .map(|k| k.3)
                .find(|&i| matches(i)),
            Selector::LowestLatency => self
                .latency
                .as_ref()?
                .iter()
                .map(|k| k.3)
                .find(|&i| matches(i)),
            Selector::Random => {
                let items = &self.random.as_ref()?.items;
                let mut rng = rand::rng();
                if filter_empty {
                    if items.is_empty() {
                        return None;
                    }
                    return items.get(rng.random_range(0..items.len())).copied();
                }
                // Rejection sampling first (up to 128 draws): a uniform pick that matches is
                // uniform among the matches, and is cheap unless matches
                // are rare.
                if items.is_empty() {
                    return None;
                }
                for _ in 0..items.len().min(128) {
                    let i = items[rng.random_range(0..items.len())];
                    if matches(i) {
                        return Some(i);
                    }
                }
                // Rare matches: reservoir sampling, uniform, one pass.
                let mut chosen = None;
                let mut seen = 0u32;
                for &i in items {
                    if matches(i) {
                        seen += 1;
                        if rng.random_range(0..seen) == 0 {
                            chosen = Some(i);
                        }
                    }
                }
                chosen
            }
        }
    }

    /// Checks that every built index holds exactly the available slots with
    /// their current keys, and that lease counts match the active leases.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let avail: Vec<(u32, &Slot)> = self.available_slots().collect();
        let by_id: BTreeMap<u128, u32> = avail
            .iter()
            .map(|(i, s)| (s.proxy.id.0.as_u128(), *i))
            .collect();
        if by_id != self.by_id {
            return Err("by_id index differs from the available slots".into());
        }
        if let Some(set) = &self.least {
            let want: BTreeSet<LeastKey> = avail.iter().map(|(i, s)| s.least_key(*i)).collect();
            if &want != set {
                return Err("least_used index is stale".into());
            }
        }
        if let Some(set) = &self.latency {
            let want: BTreeSet<LatencyKey> = avail.iter().map(|(i, s)| s.latency_key(*i)).collect();
            if &want != set {
                return Err("lowest_latency index is stale".into());
            }
        }
        if let Some(set) = &self.random {
            let mut have = set.items.clone();
            have.sort_unstable();
            let mut want: Vec<u32> = avail.iter().map(|(i, _)| *i).collect();
            want.sort_unstable();
            if have != want {
                return Err("random index differs from the available slots".into());
            }
            for (p, &i) in set.items.iter().enumerate() {
                if set.pos.get(i as usize).copied() != u32::try_from(p).ok() {
                    return Err("random positions are stale".into());
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let n = self
                .leases
                .values()
                .filter(|l| l.slot as usize == i)
                .count();
            if n != slot.leases as usize {
                return Err(format!(
                    "proxy {} counts {} leases, {n} are active",
                    slot.proxy.id, slot.leases
                ));
            }
            if self.by_proxy.get(&slot.proxy.id) != u32::try_from(i).ok().as_ref() {
                return Err("by_proxy is stale".into());
            }
        }
        for (id, lease) in &self.leases {
            if !self
                .expiry
                .iter()
                .any(|Reverse((at, l))| l == id && *at == lease.expires_us)
            {
                return Err(format!("lease {id} has no expiry entry"));
            }
        }
        Ok(())
    }
}
