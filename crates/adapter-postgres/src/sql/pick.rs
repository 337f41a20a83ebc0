//! The selectors' `pick` CTEs that walk an index instead of sorting the
//! pool: round robin from its cursor, random by rejection sampling on the
//! fixed keys (and the key redrawn on the predicate path), least used from
//! the proxies at load 0.

use super::*;

/// The round-robin `pick` (and the two CTEs it reads), over the cursor `st`:
/// the first candidate after the cursor in id order, else the first
/// candidate of the pool (wrap-around), each the start of an index range
/// scan on `(pool_id, id)`. Same order as [`order_by`]'s round robin, but
/// read from the index instead of sorting the pool: that sort cost the whole
/// pool per acquire (10 pairs/s at 100,000 proxies).
///
/// `pick_next` bounds the scan with a row comparison, which a btree on
/// `(pool_id, id)` starts at exactly (a scalar `p.id > cursor` after a
/// range on `pool_id` would only filter entries from the pool's start);
/// with no cursor the comparison is NULL and `pick_first` alone runs.
/// `pick_first` reads nothing when `pick_next` found a proxy (its NOT
/// EXISTS is evaluated once, before the scan).
///
/// A keyed `candidate` (ending in [`KEYED_POOL`]) has the pool and the
/// filter's column as equalities, so `p.id > cursor` is the third bound of
/// an m0011 `(pool_id, column, id)` index and the scan starts at it
/// exactly; the row comparison would match only that index's first column.
pub(super) fn round_robin_pick(columns: &str, joins: &str, candidate: &str, lock: Lock) -> String {
    let lock = lock.clause();
    let after_cursor = if is_keyed(candidate) {
        "p.id > (SELECT last_proxy_id FROM st)".to_owned()
    } else {
        format!(
            "(p.pool_id, p.id) > ({POOL_ID}, (SELECT last_proxy_id FROM st)) \
             AND p.pool_id <= {POOL_ID}"
        )
    };
    format!(
        "pick_next AS (\
           SELECT {columns} FROM proxy p {joins} \
           WHERE {after_cursor} AND {candidate} \
           ORDER BY p.pool_id, p.id LIMIT 1{lock}), \
         pick_first AS (\
           SELECT {columns} FROM proxy p {joins} \
           WHERE NOT EXISTS (SELECT 1 FROM pick_next) AND {IN_POOL} AND {candidate} \
           ORDER BY p.pool_id, p.id LIMIT 1{lock}), \
         pick AS (SELECT * FROM pick_next UNION ALL SELECT * FROM pick_first)"
    )
}

/// How many candidates the predicate path's random pick draws its proxy
/// from: the next ones from a random key in `proxy_pick_idx` order, of
/// which one is chosen at random and given a new key
/// ([`REDRAW_PICK_KEY`]). The one-statement pick ([`random_pick`]) keeps
/// keys fixed instead.
pub(crate) const RANDOM_WINDOW: usize = 16;

/// K of [`random_pick`]: how many candidates before a proxy its chance is
/// measured over, and how many after a random point it is chosen among.
pub(crate) const RANDOM_SPAN: usize = 16;

/// E of [`random_pick`]: how many candidates the statement's estimate of
/// a span walks (twice K, so the estimate varies half as much as the spans
/// it is set against).
pub(crate) const RANDOM_ESTIMATE: usize = 32;

/// T of [`random_pick`]: the attempts one statement makes before it falls
/// back to an unweighted choice.
pub(crate) const RANDOM_ATTEMPTS: usize = 12;

/// α of [`random_pick`]: the share of attempts accepted on average.
const RANDOM_ACCEPT: f64 = 0.4;

/// The random `pick` (and the CTEs it reads): uniform over the candidates,
/// with fixed keys, by rejection sampling on `proxy_pick_idx`. It reads a
/// bounded number of index entries (about a hundred) and writes nothing
/// but the lease, so the proxy's update stays HOT like every other
/// selector's.
///
/// Every proxy has a fixed uniform key (`pick_key`, m0010). An attempt
/// draws a point `r` and a rank `j` below K ([`RANDOM_SPAN`]) and takes the
/// `j`-th candidate at or after `r` in key order, wrapping at the pool's
/// end. Candidate `x` is reached that way when `r` falls in the K gaps
/// before it, so with chance `W(x) / K`, where `W(x)` is its key minus the
/// key of the K-th candidate before it (wrapping): the spans differ from
/// proxy to proxy (a Gamma(K) spread, about ±25 % for K = 16), so that
/// alone is not uniform. The attempt is accepted with chance `c / W(x)`,
/// which makes every candidate's chance `c / K`: the same for all. `c` is
/// α ([`RANDOM_ACCEPT`]) times the span of E ([`RANDOM_ESTIMATE`])
/// candidates after an independent point (`est`), scaled to K, so about α
/// of the attempts are accepted whatever the pool's size; a candidate whose
/// span is below `c` (about one in 300 for one statement in 1,000) is
/// accepted always and so comes out slightly rarer. The first accepted
/// attempt whose proxy is not locked wins; after T ([`RANDOM_ATTEMPTS`])
/// attempts without one (0.4 % of statements, simulated) the first
/// unlocked attempted proxy is taken unweighted.
///
/// With fewer than E candidates (`est` finds them all), `j` is drawn below
/// their number and every attempt is accepted: uniform as it stands. With
/// none, no attempt is made: `est` has walked every candidate already (as
/// any selector's miss does), and more walks would find nothing.
///
/// Each attempt reads 4, 8, 16 or 32 candidates forward (the fewest that
/// hold the `j + 1`-th: 11 on average when `j` is below K) and K backward,
/// one statement about 32 + 2.5 × 27 = 100 on average; `LIMIT 1` over the
/// attempts stops at the first accepted one. Simulated over 1,000 proxies
/// and 100,000 picks, the counts' chi-squared statistic is 991 against 999
/// degrees of freedom (uniform draws give 999 on average). K = E = 32 with
/// α = 0.5 and T = 8 gave 968 there and read about 160 candidates a
/// statement; before it, a window of 16 after `r` with the chosen proxy's
/// key redrawn on lease gave 1,494 and made every random lease a non-HOT
/// update of all 26 indexes of `proxy`. `tests/random_uniformity.rs`
/// checks the counts on the server.
pub(super) fn random_pick(columns: &str, joins: &str, candidate: &str, lock: Lock) -> String {
    let lock = lock.clause();
    let asc = "p.pool_id, p.pick_key, p.id";
    let desc = "p.pool_id DESC, p.pick_key DESC, p.id DESC";
    let k = RANDOM_SPAN;
    let e = RANDOM_ESTIMATE;
    // c's factor on the estimated span: α, scaled from E candidates to K.
    let accept = RANDOM_ACCEPT * k as f64 / e as f64;
    // Keyed (see round_robin_pick): the pool and the column are
    // equalities, so a plain bound on `pick_key` is the third column of the
    // m0011 `(pool_id, column, pick_key, id)` index; otherwise a row
    // comparison starts the `(pool_id, pick_key, id)` scan exactly.
    let keyed = is_keyed(candidate);
    // The pool's id and whether the consumer exists, looked up once for the
    // statement (`rk`) rather than in each of the dozen subqueries that
    // need them, where every lookup is an index probe of its own (about a
    // third of the buffers the statement touched).
    let pool_id = "(SELECT id FROM rk)";
    let hoisted = candidate
        .replace(POOL_ID, pool_id)
        .replace(CONSUMER_EXISTS, "(SELECT ok FROM rk)");
    let candidate = hoisted.as_str();
    let in_pool = format!("p.pool_id >= {pool_id} AND p.pool_id <= {pool_id}");
    let from = |key: &str| {
        if keyed {
            format!("p.pick_key >= {key}")
        } else {
            format!("(p.pool_id, p.pick_key) >= ({pool_id}, {key}) AND p.pool_id <= {pool_id}")
        }
    };
    let below = |key: &str| {
        if keyed {
            format!("p.pick_key < {key}")
        } else {
            format!("(p.pool_id, p.pick_key) < ({pool_id}, {key}) AND p.pool_id >= {pool_id}")
        }
    };
    // The wrap-arounds: from the pool's smallest key up to `key`, and from
    // its largest key down to `key`. Each runs only when the scan before it
    // ran out of the pool (CASE evaluates its branches lazily).
    let wrap_up = |key: &str| format!("{in_pool} AND p.pick_key < {key}");
    let wrap_down = |key: &str| format!("{in_pool} AND p.pick_key > {key}");
    // Up to K keys of candidates, as an array. A constant LIMIT, not
    // `OFFSET j`: with a parameter there PostgreSQL assumes a tenth of the
    // pool is read and sorts the pool instead of walking the index.
    let keys = |bound: &str, order: &str, limit: usize| {
        format!(
            "ARRAY(SELECT p.pick_key FROM proxy p {joins} WHERE {bound} AND {candidate} \
             ORDER BY {order} LIMIT {limit})"
        )
    };
    let est_next = keys(&from("rnd.r"), asc, e);
    let est_first = keys(&wrap_up("n.r"), asc, e);
    // An attempt needs only the first j + 1 candidates after its point:
    // read 4, 8, 16 or 32 of them as j asks (j is below K, or below E when
    // the pool has fewer than E candidates). Each branch keeps a constant
    // LIMIT, and CASE runs only the branch it takes; a shorter array still
    // means the pool ran out, so the wrap-around below reads as before.
    let nth_next = format!(
        "CASE WHEN a.j < 4 THEN {} WHEN a.j < 8 THEN {} WHEN a.j < 16 THEN {} ELSE {} END",
        keys(&from("a.r"), asc, 4),
        keys(&from("a.r"), asc, 8),
        keys(&from("a.r"), asc, 16),
        keys(&from("a.r"), asc, e),
    );
    let nth_first = keys(&wrap_up("a.r"), asc, e);
    let kth_before = keys(&below("t.key"), desc, k);
    let kth_last = keys(&wrap_down("t.key"), desc, k);
    // Found by its key: the pool as an equality, so `pick_key` is the
    // second bound of `proxy_pick_idx` (after a range on `pool_id` it would
    // only filter the pool's entries).
    let lock_one = format!(
        "LATERAL (SELECT {columns} FROM proxy p {joins} \
           WHERE p.pool_id = {pool_id} AND p.pick_key = t.key AND {candidate}{lock}) l"
    );
    // `OFFSET 0` keeps each LATERAL a subquery of its own: pulled up, its
    // expression would be copied into every reference and run once per
    // copy.
    format!(
        "rk AS MATERIALIZED (SELECT {POOL_ID} AS id, {CONSUMER_EXISTS} AS ok), \
         rnd AS MATERIALIZED (SELECT random() AS r), \
         est AS MATERIALIZED (\
           SELECT cardinality(n.keys) + cardinality(w.keys) AS m, \
             COALESCE(n.keys[{e}], w.keys[{e} - cardinality(n.keys)] + 1) - n.r AS span \
           FROM (SELECT rnd.r, {est_next} AS keys FROM rnd OFFSET 0) n, \
           LATERAL (SELECT CASE WHEN cardinality(n.keys) < {e} THEN {est_first} \
             ELSE '{{}}'::float8[] END AS keys OFFSET 0) w), \
         att AS MATERIALIZED (\
           SELECT random() AS r, floor(random() * CASE WHEN (SELECT m FROM est) < {e} \
             THEN (SELECT m FROM est) ELSE {k} END)::int AS j, \
             random() AS u \
           FROM generate_series(1, {RANDOM_ATTEMPTS}) WHERE (SELECT m FROM est) > 0), \
         tries AS (\
           SELECT a.u, x.key FROM att a, \
           LATERAL (SELECT {nth_next} AS keys OFFSET 0) f, \
           LATERAL (SELECT CASE WHEN cardinality(f.keys) > a.j THEN f.keys[a.j + 1] \
             ELSE ({nth_first})[a.j + 1 - cardinality(f.keys)] END AS key OFFSET 0) x \
           WHERE x.key IS NOT NULL), \
         judged AS (\
           SELECT t.key, CASE WHEN (SELECT m FROM est) < {e} THEN TRUE \
             ELSE t.u * (t.key - COALESCE(b.back, t.key - 1)) \
               < {accept} * (SELECT span FROM est) END AS accepted \
           FROM tries t, \
           LATERAL (SELECT {kth_before} AS keys OFFSET 0) bk, \
           LATERAL (SELECT CASE WHEN cardinality(bk.keys) = {k} THEN bk.keys[{k}] \
             ELSE ({kth_last})[{k} - cardinality(bk.keys)] - 1 END AS back OFFSET 0) b), \
         pick_accepted AS (SELECT l.* FROM judged t, {lock_one} WHERE t.accepted LIMIT 1), \
         pick_any AS (\
           SELECT l.* FROM tries t, {lock_one} \
           WHERE NOT EXISTS (SELECT 1 FROM pick_accepted) LIMIT 1), \
         pick AS (SELECT * FROM pick_accepted UNION ALL SELECT * FROM pick_any)"
    )
}

/// What the predicate path's random claim adds to the `UPDATE` that leases
/// the picked proxy: a new uniform key, so a proxy's chance (the gaps
/// before it in a window of [`RANDOM_WINDOW`]) changes over time instead
/// of staying what its key's neighbours give it.
///
/// The price: `pick_key` is indexed, so this update is not HOT. Only the
/// predicate path (filters no index serves, evaluated in Rust) pays it;
/// keys stay independent and uniform, which [`random_pick`] relies on.
const REDRAW_PICK_KEY: &str = ", pick_key = random()";

/// [`REDRAW_PICK_KEY`] for random, nothing for the other selectors.
pub(super) fn redraw(selector: Selector) -> &'static str {
    if selector == Selector::Random {
        REDRAW_PICK_KEY
    } else {
        ""
    }
}

/// The least_used `pick` of [`acquire_statement`] (with its CTEs), over
/// `ex` (the pool's expired active leases per proxy).
///
/// The least load a proxy can have is 0, so when some candidate is at 0 the
/// exact least-used pick is the first of those by `checked_at NULLS FIRST,
/// id`. They are the idle proxies (`current_leases = 0`: the first one is
/// found by walking `proxy_checked_idx` (m0009) from the oldest check, no
/// sort) and the proxies whose leases have all expired (`ex`: as many as
/// there are expired leases, read from the lease index). `pick_zero` takes
/// the first of both by that order. Only when no candidate is at load 0
/// does `pick_sorted` sort the candidates as before (a pool whose every
/// proxy is leased); its NOT EXISTS is evaluated once, before its scan.
///
/// Exact, not an approximation: a candidate at load 0 is always at least as
/// good as any other, and `pick_zero` sees every candidate at load 0.
pub(super) fn least_used_pick(candidate: &str, lock: Lock) -> String {
    let order = order_by(Selector::LeastUsed, "COALESCE(ex.n, 0)");
    let lock = lock.clause();
    format!(
        "idle AS (\
           SELECT p.id, p.checked_at FROM proxy p \
           WHERE {IN_POOL} AND p.current_leases = 0 AND {candidate} \
           ORDER BY p.pool_id, p.checked_at ASC NULLS FIRST, p.id LIMIT 1{lock}), \
         drained AS (\
           SELECT p.id, p.checked_at FROM proxy p JOIN ex ON ex.proxy_id = p.id \
           WHERE {IN_POOL} AND p.current_leases - ex.n <= 0 AND {candidate}{lock}), \
         pick_zero AS (\
           SELECT z.id FROM (SELECT * FROM idle UNION ALL SELECT * FROM drained) z \
           ORDER BY z.checked_at ASC NULLS FIRST, z.id LIMIT 1), \
         pick_sorted AS (\
           SELECT p.id FROM proxy p LEFT JOIN ex ON ex.proxy_id = p.id \
           WHERE NOT EXISTS (SELECT 1 FROM pick_zero) AND {IN_POOL} AND {candidate} \
           ORDER BY {order} LIMIT 1{lock}), \
         pick AS (SELECT id FROM pick_zero UNION ALL SELECT id FROM pick_sorted)"
    )
}
