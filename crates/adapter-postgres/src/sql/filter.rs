//! Compiling a filter tree to a SQL condition with bind parameters, and
//! the tree's full semantics for the rows that condition over-selects.

use pharox_domain::{EARTH_RADIUS_KM, GEO_EXACT_TOLERANCE_DEG, ProxyFilter};
use sea_orm::sqlx::postgres::{PgArguments, Postgres};
use sea_orm::sqlx::query::Query;

/// A bind value of a compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
}

/// What a predicate node compiles to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Predicates {
    /// Every predicate counts as true (the semantics of
    /// `ProxyFilter::matches_without_predicates`).
    AsTrue,
    /// Predicates become TRUE where the node counts positively and FALSE
    /// under an odd number of `none_of`, so the SQL selects a superset of
    /// what `ProxyFilter::matches` accepts.
    Superset,
}

/// Bind values collected while compiling, numbered after the statement's
/// fixed parameters.
#[derive(Debug)]
pub(crate) struct Binds {
    offset: usize,
    pub(crate) args: Vec<Arg>,
}

impl Binds {
    /// Binds numbered from `$fixed + 1`.
    pub(crate) fn after(fixed: usize) -> Self {
        Self {
            offset: fixed,
            args: Vec::new(),
        }
    }

    /// Adds a bind value; gives its placeholder (`$n`).
    pub(crate) fn push(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.offset + self.args.len())
    }

    /// Binds the collected values onto `query`, in order.
    pub(crate) fn bind_to<'q>(
        &self,
        mut query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        for arg in &self.args {
            query = match arg {
                Arg::Text(s) => query.bind(s.clone()),
                Arg::Int(i) => query.bind(*i),
                Arg::Float(f) => query.bind(*f),
            };
        }
        query
    }
}

/// Compiles `filter` to a boolean SQL expression over the proxy alias `p`.
/// NULL-safe under `NOT`: every leaf inside a `none_of` yields TRUE or
/// FALSE, never NULL, so `NOT` there means what it means in Rust.
///
/// Scalar leaves outside every `none_of` are plain equalities
/// (`p.country = $5`), which may be NULL: above them are only AND and OR,
/// under which a NULL leaf selects exactly the rows a FALSE one would
/// (three-valued AND/OR is monotone, and WHERE drops NULL). Plain, they are
/// conditions the planner can match to an index (m0011) and treat as a
/// constant in the selector's ORDER BY; `COALESCE(..)` hides them from
/// both.
pub(crate) fn compile_filter(filter: &ProxyFilter, mode: Predicates, binds: &mut Binds) -> String {
    compile_node(filter, mode, true, false, binds)
}

/// [`compile_filter`] for the one-statement acquires
/// ([`acquire_statement`], [`reclaiming_acquire_statement`]): with
/// predicates as true, and, when the filter requires one value of an
/// indexed scalar column ([`has_indexed_leaf`]), [`KEYED_POOL`] after it.
pub(crate) fn compile_acquire_filter(filter: &ProxyFilter, binds: &mut Binds) -> String {
    let sql = compile_filter(filter, Predicates::AsTrue, binds);
    if has_indexed_leaf(filter) {
        format!("{sql} AND {KEYED_POOL}")
    } else {
        sql
    }
}

/// Whether every proxy `filter` selects has one given value of `source`,
/// `country`, `city`, `isp` or `asn`: a leaf at the top of the tree or in
/// its `all_of` children (AND all the way up), which an index of m0011 in
/// each selector order serves.
pub(crate) fn has_indexed_leaf(filter: &ProxyFilter) -> bool {
    filter.source.is_some()
        || filter.country.is_some()
        || filter.city.is_some()
        || filter.isp.is_some()
        || filter.asn.is_some()
        || filter.all_of.iter().any(has_indexed_leaf)
}

/// The pool as an equality, appended to a filter that [`has_indexed_leaf`].
///
/// The m0011 indexes lead with `(pool_id, column)`. With both as
/// equalities the btree scan starts at the first proxy of the pool with the
/// value and stops after its last one, and the planner drops both from the
/// selector's ORDER BY, which the index then delivers. Under [`IN_POOL`]'s
/// range the column's equality is not a bound the scan stops at (the
/// column before it has no equality), so a value the pool lacks read the
/// pool's index entries from that value to the pool's end. The risk
/// [`IN_POOL`] avoids (walking the primary key in id order) does not arise:
/// the m0011 index is cheaper than any walk that filters on the column.
pub(crate) const KEYED_POOL: &str = "p.pool_id = (SELECT id FROM proxy_pool WHERE name = $1)";

/// Whether `filter_sql` came from [`compile_acquire_filter`] for a filter
/// with an indexed leaf (it is built from fixed text only, so the marker is
/// exact).
pub(super) fn is_keyed(filter_sql: &str) -> bool {
    // `contains`, not `ends_with`: the usage conditions (a target's ban
    // test) may follow the compiled filter.
    filter_sql.contains(KEYED_POOL)
}

fn compile_node(
    f: &ProxyFilter,
    mode: Predicates,
    positive: bool,
    under_none_of: bool,
    binds: &mut Binds,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    let equal = |column: &str, p: String| {
        if under_none_of {
            format!("COALESCE(p.{column} = {p}, FALSE)")
        } else {
            format!("p.{column} = {p}")
        }
    };
    for (column, value) in [
        ("source", &f.source),
        ("country", &f.country),
        ("city", &f.city),
        ("isp", &f.isp),
    ] {
        if let Some(v) = value {
            let p = binds.push(Arg::Text(v.clone()));
            parts.push(equal(column, p));
        }
    }
    if let Some(asn) = f.asn {
        let p = binds.push(Arg::Int(i64::from(asn)));
        parts.push(equal("asn", p));
    }
    if let (Some(lat), Some(lon)) = (f.latitude, f.longitude) {
        let lat = binds.push(Arg::Float(lat));
        let lon = binds.push(Arg::Float(lon));
        match f.radius_km {
            Some(radius) => {
                let radius = binds.push(Arg::Float(radius));
                let r2 = binds.push(Arg::Float(2.0 * EARTH_RADIUS_KM));
                // The same haversine, in the same order of operations, as
                // pharox_domain::haversine_km (filter point first).
                parts.push(format!(
                    "(p.latitude IS NOT NULL AND p.longitude IS NOT NULL AND \
                     COALESCE({r2} * asin(least(sqrt(\
                     sin(radians(p.latitude - {lat}) / 2) * sin(radians(p.latitude - {lat}) / 2) \
                     + cos(radians({lat})) * cos(radians(p.latitude)) \
                     * (sin(radians(p.longitude - {lon}) / 2) * sin(radians(p.longitude - {lon}) / 2))\
                     ), 1)) <= {radius}, FALSE))"
                ));
            }
            None => {
                let tol = binds.push(Arg::Float(GEO_EXACT_TOLERANCE_DEG));
                parts.push(format!(
                    "(p.latitude IS NOT NULL AND p.longitude IS NOT NULL AND \
                     COALESCE(abs(p.latitude - {lat}) <= {tol} \
                     AND abs(p.longitude - {lon}) <= {tol}, FALSE))"
                ));
            }
        }
    }
    for child in &f.all_of {
        parts.push(compile_node(child, mode, positive, under_none_of, binds));
    }
    if !f.any_of.is_empty() {
        let alternatives: Vec<String> = f
            .any_of
            .iter()
            .map(|c| compile_node(c, mode, positive, under_none_of, binds))
            .collect();
        parts.push(format!("({})", alternatives.join(" OR ")));
    }
    if !f.none_of.is_empty() {
        let excluded: Vec<String> = f
            .none_of
            .iter()
            .map(|c| compile_node(c, mode, !positive, true, binds))
            .collect();
        parts.push(format!("NOT ({})", excluded.join(" OR ")));
    }
    if f.predicate.is_some() && mode == Predicates::Superset && !positive {
        parts.push("FALSE".to_owned());
    }
    if parts.is_empty() {
        "TRUE".to_owned()
    } else {
        format!("({})", parts.join(" AND "))
    }
}

/// Whether `proxy` satisfies the whole tree, predicates included, as
/// `ProxyFilter`'s docs define it. (The domain's `ProxyFilter::matches`
/// also requires `matches_without_predicates`, which counts a predicate
/// under `none_of` as true and so rejects proxies the tree accepts; the
/// predicate path tests candidates with this instead.)
pub(crate) fn matches(filter: &ProxyFilter, proxy: &pharox_domain::Proxy) -> bool {
    fn eq(want: Option<&str>, have: Option<&str>) -> bool {
        want.is_none_or(|w| have == Some(w))
    }
    let geo = match (filter.latitude, filter.longitude) {
        (Some(lat), Some(lon)) => match (proxy.latitude, proxy.longitude) {
            (Some(plat), Some(plon)) => match filter.radius_km {
                Some(radius) => pharox_domain::haversine_km(lat, lon, plat, plon) <= radius,
                None => {
                    (plat - lat).abs() <= GEO_EXACT_TOLERANCE_DEG
                        && (plon - lon).abs() <= GEO_EXACT_TOLERANCE_DEG
                }
            },
            _ => false,
        },
        _ => true,
    };
    eq(filter.source.as_deref(), proxy.source.as_deref())
        && eq(filter.country.as_deref(), proxy.country.as_deref())
        && eq(filter.city.as_deref(), proxy.city.as_deref())
        && eq(filter.isp.as_deref(), proxy.isp.as_deref())
        && filter.asn.is_none_or(|asn| proxy.asn == Some(asn))
        && geo
        && filter.all_of.iter().all(|f| matches(f, proxy))
        && (filter.any_of.is_empty() || filter.any_of.iter().any(|f| matches(f, proxy)))
        && !filter.none_of.iter().any(|f| matches(f, proxy))
        && filter.predicate.as_ref().is_none_or(|p| p.test(proxy))
}
