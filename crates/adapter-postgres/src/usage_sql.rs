//! The SQL of issue 13: what keeps cooling proxies and proxies banned for a
//! target out of every acquire, the sticky-session acquire, and the reads
//! and writes of a proxy's usage and its bans that outcome reports run.
//!
//! Kept apart from [`crate::sql`]: the acquire statements there take these
//! conditions as part of their candidate filter, so their builders are
//! unchanged.

use pharox_domain::{Selector, TargetHost};

use crate::sql::{self, Arg, Binds, CONSUMER_EXISTS, HAS_EXPIRED_LEASE, IN_POOL, Lock, POOL_ID};

/// Proxy `p` is not cooling down now (`ProxyUsage::is_cooling_down_at`:
/// the end is exclusive). Tested on the rows the selector's index walk
/// visits; the column has no index, so acquire's and release's updates of
/// `current_leases` stay HOT.
const NOT_COOLING_DOWN: &str = "(p.cooldown_until IS NULL OR p.cooldown_until <= now())";

/// [`leasable`] of the empty filter (`TRUE`) without a target: the
/// candidate condition of the cached unfiltered acquire statements.
pub(crate) const UNFILTERED_LEASABLE: &str =
    "(p.cooldown_until IS NULL OR p.cooldown_until <= now()) AND TRUE";

/// The candidate condition of an acquire (and of `find_available`): the
/// compiled filter `filter_sql`, and the proxy not cooling down; with a
/// target, also not banned for it now. The ban test probes
/// `proxy_target_ban`'s primary key `(proxy_id, target)` once per visited
/// row, so it keeps a walk as bounded as it was. The target is bound (the
/// next parameter of `binds`), never formatted in.
pub(crate) fn leasable(filter_sql: &str, target: Option<&TargetHost>, binds: &mut Binds) -> String {
    let mut condition = format!("{NOT_COOLING_DOWN} AND {filter_sql}");
    if let Some(target) = target {
        let placeholder = binds.push(Arg::Text(target.as_str().to_owned()));
        // A scalar subquery, not NOT EXISTS: the planner turns NOT EXISTS
        // into an anti-join, and chose a merge join that read the ban
        // table's index from its start up to the walk's first proxy (7,000
        // entries in the guard with a round-robin cursor mid-pool). A
        // scalar subquery stays a per-row probe of the primary key (at
        // most one row: the key is (proxy_id, target)).
        condition.push_str(&format!(
            " AND NOT COALESCE((SELECT b.until > now() FROM proxy_target_ban b \
             WHERE b.proxy_id = p.id AND b.target = {placeholder}), FALSE)"
        ));
    }
    condition
}

/// How many columns [`sql::PROXY_COLUMNS`] lists (a session acquire's
/// `session_moved` follows them).
pub(crate) const PROXY_COLUMN_COUNT: usize = 25;

/// The one-statement acquire under a sticky session: [`sql::acquire_statement`]
/// with the session's proxy tried first. `key` and `ttl` are the
/// placeholders of the session key and its TTL in microseconds (pushed on
/// the statement's binds after the filter's); other parameters as in
/// `acquire_statement`. Extra CTEs:
///
/// - `sess`: the session's proxy, if the session (pool, key) is known and
///   not expired.
/// - `bound`: that proxy, if it is a candidate for this request, locked
///   with a **waiting** `FOR UPDATE` (not `SKIP LOCKED`): concurrent
///   acquirers of one session queue on it and each re-checks its capacity
///   after the wait, so they all get it while capacity allows, and none
///   moves the session only because another was leasing it at that instant.
/// - `chosen`: `bound` if it has a row, else the selector's `pick`, whose
///   candidates all require `NOT EXISTS (SELECT 1 FROM bound)` (a one-time
///   filter: the pick's walk does not run when the session's proxy is
///   taken).
/// - `sess_up`: the session upserted to the proxy just leased, expiring
///   `ttl` from now; nothing when nothing was leased (the session stays as
///   it was). `ON CONFLICT DO UPDATE` waits for a concurrent upsert of the
///   same key and then overwrites it, so racing acquirers never see a
///   unique violation.
///
/// The result adds `session_moved` after the proxy columns: whether a live
/// session pointed at another proxy.
///
/// Built from `acquire_statement`'s text by replacing its `pick` with
/// `chosen` at its three uses (checked by `session_statement_is_built` for
/// every selector), so the selectors' picks stay written once.
pub(crate) fn session_acquire_statement(
    selector: Selector,
    filter_sql: &str,
    lock: Lock,
    key: &str,
    ttl: &str,
) -> String {
    let inner = sql::acquire_statement(
        selector,
        &format!("{filter_sql} AND NOT EXISTS (SELECT 1 FROM bound)"),
        lock,
    );
    let head = format!(
        "WITH sess AS (SELECT s.proxy_id FROM proxy_session s \
           WHERE s.pool_id = {POOL_ID} AND s.session_key = {key} AND s.expires_at > now()), \
         bound AS (SELECT p.id FROM proxy p \
           WHERE p.id = (SELECT proxy_id FROM sess) AND {IN_POOL} AND p.status = 'active' \
             AND (p.max_concurrency IS NULL OR p.current_leases < p.max_concurrency \
                  OR {HAS_EXPIRED_LEASE}) \
             AND {CONSUMER_EXISTS} AND {filter_sql} \
           FOR UPDATE OF p), "
    );
    let body = inner.strip_prefix("WITH ").unwrap_or(&inner);
    let body = body
        .replacen(
            ", bumped AS (",
            ", chosen AS (SELECT id FROM bound UNION ALL (SELECT id FROM pick) LIMIT 1), \
             bumped AS (",
            1,
        )
        .replacen(
            "WHERE p.id = (SELECT id FROM pick)",
            "WHERE p.id = (SELECT id FROM chosen)",
            1,
        );
    let final_select = body
        .rfind(" SELECT now() AS lease_acquired_at")
        .unwrap_or(body.len());
    let (ctes, select) = body.split_at(final_select);
    let select = select.replacen(
        " FROM pick LEFT JOIN bumped p ON TRUE",
        ", (s.proxy_id IS NOT NULL AND s.proxy_id IS DISTINCT FROM p.id) AS session_moved \
         FROM chosen LEFT JOIN bumped p ON TRUE LEFT JOIN sess s ON TRUE",
        1,
    );
    format!(
        "{head}{ctes}, sess_up AS (\
           INSERT INTO proxy_session (pool_id, session_key, proxy_id, expires_at, updated_at) \
           SELECT b.pool_id, {key}, b.id, now() + {ttl}::float8 * interval '1 microsecond', now() \
           FROM bumped b \
           ON CONFLICT (pool_id, session_key) DO UPDATE SET proxy_id = EXCLUDED.proxy_id, \
             expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at){select}"
    )
}

/// The proxy a live session (pool named `$1`, key `$2`) is bound to, for
/// the predicate path (a transaction of several statements already).
pub(crate) const SESSION_PROXY: &str = "SELECT s.proxy_id FROM proxy_session s \
     WHERE s.pool_id = (SELECT id FROM proxy_pool WHERE name = $1) \
       AND s.session_key = $2 AND s.expires_at > now()";

/// The predicate path's check of a session's proxy: proxy `$2` if it is a
/// candidate (the candidate conditions of `sql::candidates_statement` after
/// its reclaim, `filter_sql` with binds after `$3`), locked with a waiting
/// `FOR UPDATE`, as in [`session_acquire_statement`]. `$3` is the row limit
/// (1), so the parameters line up with the candidates statement's.
pub(crate) fn session_candidate_statement(filter_sql: &str) -> String {
    format!(
        "SELECT {} FROM proxy p \
         WHERE p.id = $2 AND {IN_POOL} AND p.status = 'active' \
           AND (p.max_concurrency IS NULL OR p.current_leases < p.max_concurrency) \
           AND {filter_sql} LIMIT $3 FOR UPDATE OF p",
        sql::PROXY_COLUMNS
    )
}

/// Binds session (pool `$1`, key `$2`) to proxy `$3`, expiring `$4`
/// microseconds from now.
pub(crate) const UPSERT_SESSION: &str = "INSERT INTO proxy_session \
       (pool_id, session_key, proxy_id, expires_at, updated_at) \
     SELECT p.pool_id, $2, p.id, now() + $4::float8 * interval '1 microsecond', now() \
     FROM proxy p WHERE p.id = $3 AND p.pool_id = (SELECT id FROM proxy_pool WHERE name = $1) \
     ON CONFLICT (pool_id, session_key) DO UPDATE SET proxy_id = EXCLUDED.proxy_id, \
       expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at";

/// The first statement of an outcome report's transaction: locks lease `$1`
/// (`FOR NO KEY UPDATE`, the lock its own write of `outcomes_applied`
/// needs: a shared lock would let two reports both hold it and then
/// deadlock upgrading it; a racing release waits for the report, and the
/// report sees whether the lease is still active) and then its proxy
/// (`FOR UPDATE`), in
/// that order (the adapter's lock order: lease rows before proxy rows), and
/// reads the proxy, the ban of target `$2` (NULL for none), the lease's
/// status and `outcomes_applied`, and the database's `now()`. No row: no
/// such lease (or its proxy is gone).
pub(crate) fn report_read_statement() -> String {
    format!(
        "WITH l AS (SELECT proxy_id, status, outcomes_applied FROM lease WHERE id = $1 \
           FOR NO KEY UPDATE) \
         SELECT {}, (SELECT status FROM l) AS lease_status, \
           (SELECT outcomes_applied FROM l) AS outcomes_applied, now() AS now, \
           b.until AS ban_until, b.consecutive AS ban_consecutive \
         FROM proxy p LEFT JOIN proxy_target_ban b ON b.proxy_id = p.id AND b.target = $2 \
         WHERE p.id = (SELECT proxy_id FROM l) FOR UPDATE OF p",
        sql::PROXY_COLUMNS
    )
}

/// The write of an outcome: proxy `$1` gets its new usage (`$2` score, `$3`
/// cooldown end, `$4` consecutive cooldowns), lease `$5` counts one more
/// applied outcome, and the ban of target `$6` is set (`$7` = 1: to `$8`
/// until, `$9` consecutive), cleared (`$7` = 2) or left (`$7` = 0). Returns
/// the proxy as it is afterwards.
pub(crate) fn outcome_write_statement() -> String {
    format!(
        "WITH counted AS (UPDATE lease SET outcomes_applied = outcomes_applied + 1 WHERE id = $5), \
         ban_set AS (INSERT INTO proxy_target_ban (proxy_id, target, until, consecutive) \
           SELECT $1, $6, $8, $9 WHERE $7 = 1 \
           ON CONFLICT (proxy_id, target) DO UPDATE \
           SET until = EXCLUDED.until, consecutive = EXCLUDED.consecutive), \
         ban_cleared AS (DELETE FROM proxy_target_ban WHERE $7 = 2 AND proxy_id = $1 AND target = $6) \
         UPDATE proxy p SET error_score = $2, cooldown_until = $3, consecutive_cooldowns = $4 \
         WHERE p.id = $1 RETURNING {}",
        sql::PROXY_COLUMNS
    )
}

/// The bans of proxy `$1` that hold now, by target.
pub(crate) const ACTIVE_BANS: &str = "SELECT target, until, consecutive FROM proxy_target_ban \
     WHERE proxy_id = $1 AND until > now() ORDER BY target";

/// Expired sessions go (a session is never read after its `expires_at`;
/// deleting them keeps the table the size of the sessions in use).
pub(crate) const DELETE_EXPIRED_SESSIONS: &str =
    "DELETE FROM proxy_session WHERE expires_at <= now()";

#[cfg(test)]
mod tests {
    use pharox_domain::{ProxyFilter, Selector, TargetHost};

    use super::*;
    use crate::sql::{Predicates, compile_filter};

    #[test]
    fn unfiltered_leasable_is_what_leasable_builds() {
        let mut binds = Binds::after(4);
        let filter = compile_filter(&ProxyFilter::new(), Predicates::AsTrue, &mut binds);
        assert_eq!(leasable(&filter, None, &mut binds), UNFILTERED_LEASABLE);
        assert!(binds.args.is_empty());
    }

    #[test]
    fn the_target_is_bound_after_the_filter() {
        let mut binds = Binds::after(4);
        let filter = compile_filter(
            &ProxyFilter::new().country("AR"),
            Predicates::AsTrue,
            &mut binds,
        );
        let target = TargetHost::new("Example.COM").unwrap();
        let condition = leasable(&filter, Some(&target), &mut binds);
        assert!(condition.contains("b.target = $6"), "{condition}");
        assert!(!condition.contains("example.com"), "{condition}");
        assert_eq!(binds.args[1], Arg::Text("example.com".to_owned()));
    }

    #[test]
    fn session_statement_is_built() {
        for selector in Selector::ALL {
            for lock in [Lock::SkipLocked, Lock::Wait] {
                let statement =
                    session_acquire_statement(selector, UNFILTERED_LEASABLE, lock, "$5", "$6");
                for part in [
                    "WITH sess AS (",
                    "chosen AS (SELECT id FROM bound UNION ALL (SELECT id FROM pick) LIMIT 1)",
                    "WHERE p.id = (SELECT id FROM chosen)",
                    "sess_up AS (",
                    "AS session_moved FROM chosen LEFT JOIN bumped p ON TRUE",
                ] {
                    assert_eq!(
                        statement.matches(part).count(),
                        1,
                        "{selector} {lock:?}: {part} in {statement}"
                    );
                }
                assert!(!statement.contains("FROM pick LEFT JOIN"), "{statement}");
                assert_eq!(statement.matches("WITH ").count(), 1, "{statement}");
            }
        }
    }
}
