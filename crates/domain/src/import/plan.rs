//! The import plan: parsed entries matched against a pool's proxies, and
//! the report of what an import did.

use super::*;

/// What an import writes and what it counts, computed from the pool's
/// proxies and the parsed entries without touching storage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportPlan {
    /// Proxies to write: new ones with fresh ids, changed ones with their
    /// stored ids. Each key appears once.
    pub proxies: Vec<Proxy>,
    /// How many of `proxies` are new.
    pub added: usize,
    /// How many of `proxies` change a proxy already in the pool.
    pub updated: usize,
    /// Entries that change nothing: superseded by a later line with the
    /// same [`ProxyKey`], or naming a proxy that is already as they say.
    pub skipped: usize,
    /// Entries that could not be turned into a valid proxy.
    pub invalid: Vec<InvalidLine>,
}

/// Matches `entries` against `existing` (the proxies of pool `pool_id`) by
/// [`ProxyKey`].
///
/// An entry whose key is in the pool updates that proxy, keeping its id (so
/// its leases and health history stay); otherwise it adds a proxy. When
/// several entries have one key, the last one wins and the earlier ones are
/// counted as skipped. An update that would change nothing is skipped too,
/// so that re-importing a list rewrites (and locks) only the proxies it
/// changes. When the pool already holds several proxies with one key, the
/// first of `existing` is the one updated.
#[must_use]
pub fn plan_import(pool_id: PoolId, existing: &[Proxy], entries: &[ParsedLine]) -> ImportPlan {
    let mut stored: HashMap<ProxyKey, &Proxy> = HashMap::with_capacity(existing.len());
    for proxy in existing {
        stored.entry(ProxyKey::of(proxy)).or_insert(proxy);
    }
    let keys: Vec<ProxyKey> = entries.iter().map(|p| p.entry.key()).collect();
    // The last line of each key wins; the winners are written in input order.
    let mut winner: HashMap<&ProxyKey, usize> = HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        winner.insert(key, i);
    }
    let mut plan = ImportPlan {
        proxies: Vec::with_capacity(winner.len()),
        skipped: entries.len() - winner.len(),
        ..ImportPlan::default()
    };
    for (i, (parsed, key)) in entries.iter().zip(&keys).enumerate() {
        if winner.get(key) != Some(&i) {
            continue;
        }
        let result = match stored.get(key) {
            Some(proxy) => parsed.entry.apply_to(proxy).map(|updated| {
                if updated == **proxy {
                    plan.skipped += 1;
                    None
                } else {
                    plan.updated += 1;
                    Some(updated)
                }
            }),
            None => parsed.entry.to_new_proxy(pool_id).map(|added| {
                plan.added += 1;
                Some(added)
            }),
        };
        match result {
            Ok(Some(proxy)) => plan.proxies.push(proxy),
            Ok(None) => {}
            Err(error) => plan.invalid.push(InvalidLine {
                line: parsed.line,
                error,
            }),
        }
    }
    plan
}

/// What an import did (or, in a dry run, would do). Serialises as
/// `{"added": N, "updated": N, "skipped": N, "invalid": [{"line": N,
/// "error": "..."}], "dry_run": bool}`.
///
/// When `invalid` is not empty and invalid lines were not to be skipped,
/// nothing was written and the counts are 0 (all or nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImportReport {
    /// Proxies added to the pool.
    pub added: usize,
    /// Proxies already in the pool that were changed.
    pub updated: usize,
    /// Lines that changed nothing: superseded by a later line for the same
    /// proxy, or naming a proxy that was already as they say.
    pub skipped: usize,
    /// Lines rejected, in line order.
    pub invalid: Vec<InvalidLine>,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
}
