//! Compiling filters and selectors to SQL, and the statements built from
//! them. Every value goes in as a bind parameter; only fixed SQL text and
//! parameter numbers are ever formatted into a statement.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use pharox_domain::Selector;

mod filter;
mod pick;

use filter::is_keyed;
pub(crate) use filter::{Arg, Binds, Predicates, compile_acquire_filter, compile_filter, matches};
pub(crate) use pick::RANDOM_WINDOW;
use pick::{least_used_pick, random_pick, redraw, round_robin_pick};

/// How a candidate query locks the rows it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// No lock (find_available).
    None,
    /// `FOR UPDATE SKIP LOCKED`: rows other acquirers are claiming are passed
    /// over instead of waited for. The fast path.
    SkipLocked,
    /// `FOR UPDATE`: wait for rows other acquirers hold, then re-check them.
    /// The fallback when SKIP LOCKED found nothing: a proxy with spare
    /// capacity may have been skipped only because someone else was leasing
    /// it at that instant.
    Wait,
}

impl Lock {
    fn clause(self) -> &'static str {
        match self {
            Self::None => "",
            Self::SkipLocked => " FOR UPDATE OF p SKIP LOCKED",
            Self::Wait => " FOR UPDATE OF p",
        }
    }
}

/// The ORDER BY of a selector. `n` is the SQL for the number of the
/// proxy's leases that are being reclaimed (0 when none are); the round-robin
/// order needs the cursor joined as `st`.
pub(crate) fn order_by(selector: Selector, n: &str) -> String {
    match selector {
        // pool_id first: see IN_POOL.
        Selector::FirstAvailable => "p.pool_id, p.id".to_owned(),
        Selector::LeastUsed => {
            format!("p.current_leases - {n}, p.checked_at ASC NULLS FIRST, p.id")
        }
        // pool_id first, as for first_available: the order of
        // `proxy_latency_idx` (m0008), so the pick reads it instead of
        // sorting the pool.
        Selector::LowestLatency => "p.pool_id, p.last_latency_ms ASC NULLS LAST, p.id".to_owned(),
        // The order of `proxy_pick_idx` (m0010), from which random's pick
        // starts at a random key and wraps ([`random_pick`]).
        Selector::Random => "p.pool_id, p.pick_key, p.id".to_owned(),
        Selector::RoundRobin => "COALESCE(p.id <= st.last_proxy_id, FALSE), p.id".to_owned(),
    }
}

/// The proxy columns, for `RETURNING` and `SELECT` lists over alias `p`.
pub(crate) const PROXY_COLUMNS: &str = "p.id, p.pool_id, p.host, p.port, p.protocol, p.status, \
     p.credentials::text AS credentials, p.source, p.country, p.city, p.latitude, p.longitude, \
     p.isp, p.asn, p.max_concurrency, p.current_leases, p.checked_at, p.created_at, \
     p.consecutive_failures, p.last_latency_ms, p.last_error, p.last_http_status, \
     p.error_score, p.cooldown_until, p.consecutive_cooldowns";

/// The lease columns in the order [`lease_columns`] lists them (and
/// [`crate::rows::lease`] reads them), before the proxy's.
pub(crate) const LEASE_COLUMN_NAMES: [&str; 8] = [
    "id",
    "pool_id",
    "pool_name",
    "consumer_id",
    "status",
    "acquired_at",
    "expires_at",
    "released_at",
];

/// The lease columns over alias `alias`, prefixed `lease_`.
pub(crate) fn lease_columns(alias: &str) -> String {
    let mut s = String::new();
    for col in LEASE_COLUMN_NAMES {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{alias}.{col} AS lease_{col}");
    }
    s
}

/// The round-robin cursor of the pool whose id is the SQL `pool_id`.
fn cursor_cte(pool_id: &str) -> String {
    format!(
        "st AS (SELECT last_proxy_id FROM pool_selector_state \
         WHERE pool_id = {pool_id} AND strategy = 'round_robin')"
    )
}

/// Pool id from the pool name in `$1`.
pub(crate) const POOL_ID: &str = "(SELECT id FROM proxy_pool WHERE name = $1)";

/// Proxy `p` is in the pool named `$1`, as a range on `pool_id` rather than
/// an equality, on purpose.
///
/// With `pool_id = X`, PostgreSQL treats `pool_id` as a constant and
/// first_available's `ORDER BY p.pool_id, p.id` as `ORDER BY p.id`, which
/// the primary key also delivers. When the statistics show one big pool
/// (most rows share one `pool_id`), it may then walk `proxy_pkey` in id
/// order and filter on the pool, which for a pool whose ids sort after the
/// big one (UUIDv7 ids: a pool created later) reads the whole big pool on
/// every acquire. A range keeps the ordering on `(pool_id, id)`, which only
/// the pool indexes deliver, and selects exactly the same rows.
pub(crate) const IN_POOL: &str = "p.pool_id >= (SELECT id FROM proxy_pool WHERE name = $1) \
     AND p.pool_id <= (SELECT id FROM proxy_pool WHERE name = $1)";

/// Whether the consumer `$2` exists. Acquire leases nothing otherwise (and
/// then reports "consumer not found"); `lease.consumer_id` has no foreign
/// key since m0004, because the key-share lock it takes on the one consumer
/// row that workers share made concurrent acquires contend (MultiXacts).
/// Uncorrelated, so PostgreSQL evaluates it once per statement.
pub(crate) const CONSUMER_EXISTS: &str = "EXISTS (SELECT 1 FROM consumer c WHERE c.id = $2)";

/// Upsert of the round-robin cursor to the proxy just leased (`b`).
const ADVANCE_CURSOR: &str = ", cur AS (\
    INSERT INTO pool_selector_state (pool_id, strategy, last_proxy_id, created_at, updated_at) \
    SELECT b.pool_id, 'round_robin', b.id, now(), now() FROM bumped b \
    ON CONFLICT (pool_id, strategy) DO UPDATE \
    SET last_proxy_id = EXCLUDED.last_proxy_id, updated_at = EXCLUDED.updated_at)";

/// Insert of the lease for the proxy just bumped (`b`). No `RETURNING`: the
/// result computes the lease's columns itself ([`LEASE_RESULT_COLUMNS`]).
const INSERT_LEASE: &str = ", ins AS (\
         INSERT INTO lease (id, proxy_id, pool_id, consumer_id, pool_name, status, acquired_at, expires_at) \
         SELECT $4, b.id, b.pool_id, $2, $1, 'active', now(), now() + $3::float8 * interval '1 microsecond' \
         FROM bumped b)";

/// The columns an acquire returns before the proxy's ([`PROXY_COLUMNS`]
/// over the bumped proxy `p`): the two the database decides, in the
/// expressions [`INSERT_LEASE`] stores (`now()` is the transaction's
/// timestamp, so the values are the stored ones). Everything else about the
/// new lease the caller already knows: its id (`$4`), pool name (`$1`),
/// consumer (`$2`), pool (the proxy's), status (active). The proxy columns
/// are NULL when `p` is missing, i.e. nothing was leased (a data-modifying
/// CTE runs whether or not it is read, so `ins` inserted exactly when `p` is
/// there).
///
/// Why so few: every result column costs the server a type lookup, a tuple
/// descriptor entry and a projection step per execution. Returning the
/// lease's row (`RETURNING *` joined to the proxy) cost ~15 % of the
/// server's CPU per acquire+release at 8 pgbench clients; returning the five
/// known lease columns besides these two, another 4.5 % of its instructions
/// (callgrind, one client).
const LEASE_RESULT_COLUMNS: &str = "now() AS lease_acquired_at, \
     now() + $3::float8 * interval '1 microsecond' AS lease_expires_at";

/// The names of [`LEASE_RESULT_COLUMNS`], in order (for
/// [`crate::rows::acquired_lease`]).
pub(crate) const LEASE_RESULT_COLUMN_NAMES: [&str; 2] = ["lease_acquired_at", "lease_expires_at"];

fn final_select() -> String {
    format!(" SELECT {LEASE_RESULT_COLUMNS}, {PROXY_COLUMNS} FROM bumped p")
}

/// Whether proxy `p` has an active lease past its expiry (probe on
/// `lease_active_pool_expiry_idx`; only evaluated for proxies at capacity,
/// since every OR stops at its first true operand).
///
/// `OFFSET 0` keeps it a per-row probe: without it PostgreSQL may turn the
/// EXISTS into a hashed subplan that reads every active lease of every pool
/// once per statement, which it does when statistics say `lease` is empty.
///
/// It must read `lease_active_pool_expiry_idx`, whatever the statistics
/// say (they say nothing useful when `lease` was empty at its last
/// `ANALYZE`): `(x.proxy_id = p.id) IS TRUE` is not an index condition, so
/// `lease_proxy_id_idx` (every lease the proxy ever had) does not apply, and
/// the predicate of `lease_consumer_id_idx` (m0004) is not implied.
pub(crate) const HAS_EXPIRED_LEASE: &str = "EXISTS (SELECT 1 FROM lease x \
     WHERE x.pool_id = p.pool_id AND (x.proxy_id = p.id) IS TRUE \
       AND x.status = 'active' AND x.expires_at <= now() OFFSET 0)";

/// The one-statement acquire of the common path, which reclaims nothing.
/// Parameters as in [`reclaiming_acquire_statement`].
///
/// A proxy is a candidate when it has capacity **or** holds an expired
/// lease (which holds no capacity), so the selector sees exactly the
/// candidates the reclaiming statement would. The picked proxy is then
/// leased only if it has capacity without any reclaim (`bumped` re-checks
/// that on the newest row version). The result:
///
/// - no row: nothing to lease (or everything skipped as locked);
/// - a row with the proxy columns NULL: the pick is at capacity and holds expired
///   leases; nothing was written, and the caller runs
///   [`reclaiming_acquire_statement`], which reclaims them;
/// - otherwise the lease, as from [`reclaiming_acquire_statement`].
///
/// least_used orders by `current_leases` minus the proxy's expired leases
/// (`ex`, read-only), as the reclaiming statement does after its reclaim.
pub(crate) fn acquire_statement(selector: Selector, filter_sql: &str, lock: Lock) -> String {
    let rr = selector == Selector::RoundRobin;
    let least_used = selector == Selector::LeastUsed;
    let mut ctes: Vec<String> = Vec::new();
    if rr {
        ctes.push(cursor_cte(POOL_ID));
    }
    if least_used {
        ctes.push(format!(
            "ex AS (SELECT proxy_id, count(*)::int AS n FROM lease \
             WHERE pool_id = {POOL_ID} AND status = 'active' AND expires_at <= now() \
             GROUP BY proxy_id)"
        ));
    }
    let mut sql = String::from("WITH ");
    for cte in &ctes {
        let _ = write!(sql, "{cte}, ");
    }
    let candidate = format!(
        "p.status = 'active' \
         AND (p.max_concurrency IS NULL OR p.current_leases < p.max_concurrency \
              OR {HAS_EXPIRED_LEASE}) \
         AND {CONSUMER_EXISTS} AND {filter_sql}"
    );
    if rr {
        sql.push_str(&round_robin_pick("p.id", "", &candidate, lock));
    } else if selector == Selector::Random {
        sql.push_str(&random_pick("p.id", "", &candidate, lock));
    } else if least_used {
        sql.push_str(&least_used_pick(&candidate, lock));
    } else {
        let _ = write!(
            sql,
            "pick AS (\
               SELECT p.id FROM proxy p \
               WHERE {IN_POOL} AND {candidate} \
               ORDER BY {order} LIMIT 1{lock})",
            // Not least_used (its pick is above), so the order reads no `ex`.
            order = order_by(selector, "0"),
            lock = lock.clause(),
        );
    }
    let _ = write!(
        sql,
        ", bumped AS (\
           UPDATE proxy p SET current_leases = p.current_leases + 1 \
           WHERE p.id = (SELECT id FROM pick) \
             AND (p.max_concurrency IS NULL OR p.current_leases < p.max_concurrency) \
           RETURNING p.*)",
    );
    sql.push_str(INSERT_LEASE);
    if rr {
        sql.push_str(ADVANCE_CURSOR);
    }
    let _ = write!(
        sql,
        " SELECT {LEASE_RESULT_COLUMNS}, {PROXY_COLUMNS} FROM pick LEFT JOIN bumped p ON TRUE"
    );
    sql
}

/// The candidate condition of an acquire with no filter and no target:
/// what [`crate::usage_sql::leasable`] makes of the empty filter.
const UNFILTERED: &str = crate::usage_sql::UNFILTERED_LEASABLE;

/// [`acquire_statement`] without a filter and with `SKIP LOCKED`, the
/// statement of nearly every acquire, built once per selector.
///
/// Formatting its ~2 KB for every call and handing sqlx a borrowed `&str`
/// (which it copies into a new `Arc<str>`) cost client CPU on the hottest
/// path; an `Arc<str>` clone costs a reference count.
pub(crate) fn unfiltered_acquire_statement(selector: Selector) -> Arc<str> {
    static STATEMENTS: LazyLock<Vec<(Selector, Arc<str>)>> = LazyLock::new(|| {
        Selector::ALL
            .into_iter()
            .map(|s| {
                (
                    s,
                    Arc::from(acquire_statement(s, UNFILTERED, Lock::SkipLocked)),
                )
            })
            .collect()
    });
    STATEMENTS.iter().find(|(s, _)| *s == selector).map_or_else(
        || Arc::from(acquire_statement(selector, UNFILTERED, Lock::SkipLocked)),
        |(_, statement)| Arc::clone(statement),
    )
}

/// The one-statement acquire that reclaims: used when
/// [`acquire_statement`] picked a proxy held only by expired leases. Fixed
/// parameters: `$1` pool name, `$2`
/// consumer id, `$3` TTL in microseconds, `$4` new lease id; the filter's
/// binds follow (`Binds::after(4)`).
///
/// 1. `reclaimed`: this pool's expired active leases become released.
/// 2. `rc`: how many were reclaimed per proxy. Every CTE sees the snapshot
///    taken before the statement, in which those leases still count in
///    `current_leases`, so capacity is `current_leases - rc.n`.
/// 3. `pick`: the first candidate in selector order, locked with
///    `FOR UPDATE SKIP LOCKED` (rows another acquirer is claiming are
///    skipped, not waited for). The lock re-reads the newest row version
///    and re-checks the WHERE clause against it.
/// 4. `bumped`: the picked proxy gets `+1 - rc.n`; `unreclaimed` gives the
///    other proxies with reclaimed leases their `-rc.n` (a statement may
///    change a row only once, so the picked proxy's two changes are one).
/// 5. `ins`: the lease, timestamps from the database clock.
/// 6. `cur` (round robin): the cursor moves to the picked proxy.
pub(crate) fn reclaiming_acquire_statement(
    selector: Selector,
    filter_sql: &str,
    lock: Lock,
) -> String {
    let rr = selector == Selector::RoundRobin;
    let mut sql = format!(
        "WITH reclaimed AS (\
           UPDATE lease l SET status = 'released', released_at = now() \
           WHERE l.pool_id = {POOL_ID} AND l.status = 'active' AND l.expires_at <= now() \
           RETURNING l.proxy_id), \
         rc AS (SELECT proxy_id, count(*)::int AS n FROM reclaimed GROUP BY proxy_id)"
    );
    if rr {
        let _ = write!(sql, ", {}", cursor_cte(POOL_ID));
    }
    let candidate = format!(
        "p.status = 'active' \
         AND (p.max_concurrency IS NULL OR p.current_leases - COALESCE(rc.n, 0) < p.max_concurrency) \
         AND {CONSUMER_EXISTS} AND {filter_sql}"
    );
    let columns = "p.id, COALESCE(rc.n, 0) AS n";
    let joins = "LEFT JOIN rc ON rc.proxy_id = p.id";
    if rr {
        let _ = write!(
            sql,
            ", {}",
            round_robin_pick(columns, joins, &candidate, lock)
        );
    } else if selector == Selector::Random {
        let _ = write!(sql, ", {}", random_pick(columns, joins, &candidate, lock));
    } else {
        let _ = write!(
            sql,
            ", pick AS (\
               SELECT {columns} FROM proxy p {joins} \
               WHERE {IN_POOL} AND {candidate} \
               ORDER BY {order} LIMIT 1{lock})",
            order = order_by(selector, "COALESCE(rc.n, 0)"),
            lock = lock.clause(),
        );
    }
    let _ = write!(
        sql,
        ", bumped AS (\
           UPDATE proxy p SET current_leases = p.current_leases - (SELECT n FROM pick) + 1 \
           WHERE p.id = (SELECT id FROM pick) RETURNING p.*), \
         unreclaimed AS (\
           UPDATE proxy p SET current_leases = p.current_leases - rc.n \
           FROM rc WHERE p.id = rc.proxy_id \
             AND p.id IS DISTINCT FROM (SELECT id FROM pick))",
    );
    sql.push_str(INSERT_LEASE);
    if rr {
        sql.push_str(ADVANCE_CURSOR);
    }
    sql.push_str(&final_select());
    sql
}

/// Reclaims the expired active leases of the pool named `$1` (the first
/// statement of the predicate path's transaction).
pub(crate) const RECLAIM_POOL: &str = "WITH reclaimed AS (\
       UPDATE lease l SET status = 'released', released_at = now() \
       WHERE l.pool_id = (SELECT id FROM proxy_pool WHERE name = $1) \
         AND l.status = 'active' AND l.expires_at <= now() \
       RETURNING l.proxy_id), \
     rc AS (SELECT proxy_id, count(*)::int AS n FROM reclaimed GROUP BY proxy_id) \
     UPDATE proxy p SET current_leases = p.current_leases - rc.n FROM rc WHERE p.id = rc.proxy_id";

/// Releases every expired active lease (`cleanup_expired`), set-based over
/// the partial index of active leases (`lease_active_pool_expiry_idx`, read
/// whole: it holds only active leases); returns the count.
pub(crate) const CLEANUP_EXPIRED: &str = "WITH reclaimed AS (\
       UPDATE lease l SET status = 'released', released_at = now() \
       WHERE l.status = 'active' AND l.expires_at <= now() \
       RETURNING l.proxy_id), \
     rc AS (SELECT proxy_id, count(*)::int AS n FROM reclaimed GROUP BY proxy_id), \
     fix AS (UPDATE proxy p SET current_leases = p.current_leases - rc.n \
             FROM rc WHERE p.id = rc.proxy_id) \
     SELECT count(*)::bigint FROM reclaimed";

/// A batch of candidates, in selector order. Fixed parameters: `$1` pool
/// name, `$2` ids already looked at (uuid[]), `$3` batch size, `$4` the
/// random selector's start key (float8 in `[0, 1)`, the same for every batch
/// of one call; bound for every selector, read only by random); the
/// filter's binds follow (`Binds::after(CANDIDATES_FIXED_PARAMS)`). `lock`
/// adds `FOR UPDATE SKIP LOCKED` (acquire's predicate path, after
/// [`RECLAIM_POOL`] in the same transaction); without it (find_available)
/// leases past their expiry are subtracted the way acquire would reclaim
/// them, and the result has an `expired` column.
///
/// random walks `proxy_pick_idx` from `$4`, then from the pool's smallest
/// key ([`random_candidates`]), instead of sorting the pool by `random()`.
/// The claim that follows gives the leased proxy a new key
/// ([`REDRAW_PICK_KEY`]), as the one-statement acquire does. find_available
/// leases nothing, so it redraws no key: each call returns the candidate
/// after a random point, whose chance is its gap (a peek, not a lease).
pub(crate) fn candidates_statement(selector: Selector, filter_sql: &str, lock: Lock) -> String {
    let rr = selector == Selector::RoundRobin;
    let lock_clause = lock.clause();
    let lock = lock != Lock::None;
    let mut ctes: Vec<String> = Vec::new();
    if !lock {
        ctes.push(format!(
            "rc AS (SELECT proxy_id, count(*)::int AS n FROM lease \
             WHERE pool_id = {POOL_ID} AND status = 'active' AND expires_at <= now() \
             GROUP BY proxy_id)"
        ));
    }
    if rr {
        ctes.push(cursor_cte(POOL_ID));
    }
    let n = if lock { "0" } else { "COALESCE(rc.n, 0)" };
    let rc_join = if lock {
        ""
    } else {
        "LEFT JOIN rc ON rc.proxy_id = p.id"
    };
    let condition = format!(
        "p.status = 'active' \
         AND (p.max_concurrency IS NULL OR p.current_leases - {n} < p.max_concurrency) \
         AND p.id <> ALL($2::uuid[]) \
         AND {filter_sql}"
    );
    if selector == Selector::Random {
        ctes.extend(random_candidates(rc_join, &condition, lock_clause));
        return format!(
            "WITH {} SELECT {PROXY_COLUMNS}, {n} AS expired \
             FROM (SELECT 0 AS part, * FROM walk_next UNION ALL SELECT 1, * FROM walk_first) c \
             JOIN proxy p ON p.id = c.id {rc_join} \
             ORDER BY c.part, c.pick_key, c.id",
            ctes.join(", ")
        );
    }
    let mut sql = String::new();
    if !ctes.is_empty() {
        let _ = write!(sql, "WITH {} ", ctes.join(", "));
    }
    let _ = write!(
        sql,
        "SELECT {PROXY_COLUMNS}, {n} AS expired FROM proxy p {rc_join} {st_join} \
         WHERE {IN_POOL} AND {condition} \
         ORDER BY {order} LIMIT $3{lock_clause}",
        st_join = if rr { "LEFT JOIN st ON TRUE" } else { "" },
        order = order_by(selector, n),
    );
    sql
}

/// The fixed parameters of [`candidates_statement`] (`$1` to `$4`).
pub(crate) const CANDIDATES_FIXED_PARAMS: usize = 4;

/// The two walks of random's [`candidates_statement`] on `proxy_pick_idx`:
/// `walk_next` up to `$3` candidates at or after the start key `$4`,
/// `walk_first` as many more as that left room for, from the pool's
/// smallest key up to `$4` (the wrap-around; it reads nothing when
/// `walk_next` filled the batch, so it locks nothing either). Both return
/// the id and the key, for the batch's order.
fn random_candidates(rc_join: &str, condition: &str, lock: &str) -> [String; 2] {
    [
        format!(
            "walk_next AS (\
               SELECT p.id, p.pick_key FROM proxy p {rc_join} \
               WHERE (p.pool_id, p.pick_key) >= ({POOL_ID}, $4::float8) \
                 AND p.pool_id <= {POOL_ID} AND {condition} \
               ORDER BY p.pool_id, p.pick_key, p.id LIMIT $3{lock})"
        ),
        format!(
            "walk_first AS (\
               SELECT p.id, p.pick_key FROM proxy p {rc_join} \
               WHERE {IN_POOL} AND p.pick_key < $4::float8 AND {condition} \
               ORDER BY p.pool_id, p.pick_key, p.id \
               LIMIT $3 - (SELECT count(*) FROM walk_next){lock})"
        ),
    ]
}

/// Leases one proxy already locked by this transaction. Fixed parameters as
/// in [`acquire_statement`], plus `$5` the proxy id.
pub(crate) fn claim_statement(selector: Selector) -> String {
    let mut sql = format!(
        "WITH bumped AS (\
         UPDATE proxy p SET current_leases = p.current_leases + 1{redraw} \
         WHERE p.id = $5 AND p.pool_id = (SELECT id FROM proxy_pool WHERE name = $1) \
           AND {CONSUMER_EXISTS} \
         RETURNING p.*)",
        redraw = redraw(selector),
    );
    sql.push_str(INSERT_LEASE);
    if selector == Selector::RoundRobin {
        sql.push_str(ADVANCE_CURSOR);
    }
    sql.push_str(&final_select());
    sql
}

/// Every proxy of the pool with id `$1` that the filter selects, whatever its
/// status or load, by id. Filter binds follow `$1` (`Binds::after(1)`).
pub(crate) fn matching_statement(filter_sql: &str) -> String {
    format!(
        "SELECT {PROXY_COLUMNS} FROM proxy p WHERE p.pool_id = $1 AND {filter_sql} ORDER BY p.id"
    )
}

/// `'active'`, bound as a parameter (`status = $n`) by the statements that
/// find one lease by its primary key (release, renew).
///
/// Their plans are prepared once per connection. Had they a literal
/// `status = 'active'`, it would imply the predicate of the partial lease
/// indexes, and when `lease` was empty at its last `VACUUM`/`ANALYZE` (a new
/// database, a pool just deleted) every plan costs the same, so PostgreSQL
/// may serve a lookup by key with a full scan of a partial index (seen:
/// `lease_consumer_id_idx`) and keep that plan while the table grows. A
/// parameter implies no predicate, so the primary key is the only index
/// that applies.
pub(crate) const ACTIVE: &str = "active";

/// The release statement around an extra condition on the lease row.
macro_rules! release_statement {
    ($extra:literal) => {
        concat!(
            "WITH rel AS (\
               UPDATE lease SET status = 'released', released_at = now() \
               WHERE id = $1 AND status = $2",
            $extra,
            " RETURNING proxy_id, pool_id, consumer_id, acquired_at, released_at), \
             dec AS (\
               UPDATE proxy p SET current_leases = GREATEST(p.current_leases - 1, 0) \
               WHERE p.id = (SELECT proxy_id FROM rel)) \
             SELECT proxy_id, pool_id, consumer_id, acquired_at, released_at FROM rel"
        )
    };
}

/// Releases lease `$1` if its status is `$2` ([`ACTIVE`]) and gives its proxy the capacity
/// back, in one statement. One row when this statement released it; none
/// when the lease is not active (already released, reclaimed, or unknown:
/// the caller then reads the lease to tell which). The proxy is only
/// decremented through `rel`'s row, so a lease is given back once.
///
/// Its transaction commits without waiting for the WAL flush: the
/// `set_config(.., true)` on the released row sets `synchronous_commit` for
/// this statement's own (implicit) transaction only, with no extra round
/// trip (see `PostgresConfig::durable_release` for why that is safe).
pub(crate) const RELEASE: &str =
    release_statement!(" AND set_config('synchronous_commit', 'off', true) = 'off'");

/// [`RELEASE`] with a synchronous commit (`durable_release`).
pub(crate) const RELEASE_DURABLE: &str = release_statement!("");

/// Pool occupancy; leases past their expiry do not count (acquire would
/// reclaim them).
pub(crate) const POOL_STATS: &str = "WITH pool AS (SELECT id, name FROM proxy_pool WHERE name = $1), \
     ex AS (SELECT proxy_id, count(*)::int AS n FROM lease \
            WHERE pool_id = (SELECT id FROM pool) AND status = 'active' AND expires_at <= now() \
            GROUP BY proxy_id) \
     SELECT pool.id, pool.name, \
       count(p.id)::bigint AS total, \
       (count(p.id) FILTER (WHERE p.status = 'active'))::bigint AS active, \
       (count(p.id) FILTER (WHERE p.status = 'active' AND (p.max_concurrency IS NULL \
            OR p.current_leases - COALESCE(ex.n, 0) < p.max_concurrency) \
            AND (p.cooldown_until IS NULL OR p.cooldown_until <= now())))::bigint AS available, \
       (count(p.id) FILTER (WHERE p.status = 'active' \
            AND p.cooldown_until > now()))::bigint AS cooling, \
       (count(p.id) FILTER (WHERE p.current_leases - COALESCE(ex.n, 0) > 0))::bigint AS leased, \
       COALESCE(sum(GREATEST(p.current_leases - COALESCE(ex.n, 0), 0)), 0)::bigint AS leases \
     FROM pool LEFT JOIN proxy p ON p.pool_id = pool.id LEFT JOIN ex ON ex.proxy_id = p.id \
     GROUP BY pool.id, pool.name";

/// Columns of `proxy_health_record` in the order `health_record_from_row`
/// reads them.
pub(crate) const HEALTH_COLUMNS: &str = "id, proxy_id, checked_at, reachable, latency_ms, protocol, \
     status_before, status_after, error, http_status";

#[cfg(test)]
mod tests;
