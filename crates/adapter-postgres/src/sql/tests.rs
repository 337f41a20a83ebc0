//! The compiled SQL: bind numbering, keyed conditions, and that the
//! prebuilt unfiltered statements equal the compiled ones.

use pharox_domain::ProxyFilter;

use super::filter::KEYED_POOL;
use super::*;

#[test]
fn values_are_bound_never_inlined() {
    let filter = ProxyFilter::new()
        .country("AR'; DROP TABLE proxy; --")
        .any_of([
            ProxyFilter::new().asn(7303),
            ProxyFilter::new().near(1.5, 2.5, 10.0),
        ])
        .none_of([ProxyFilter::new().isp("x").predicate(|_| true)]);
    let mut binds = Binds::after(4);
    let sql = compile_filter(&filter, Predicates::Superset, &mut binds);
    assert!(!sql.contains("DROP"), "{sql}");
    assert!(!sql.contains("7303"), "{sql}");
    assert!(sql.contains("(p.country = $5 AND"), "{sql}");
    assert_eq!(binds.args[0], Arg::Text("AR'; DROP TABLE proxy; --".into()));
    // The predicate under none_of compiles to FALSE (superset).
    assert!(sql.contains("FALSE)"), "{sql}");
    let mut binds = Binds::after(0);
    assert_eq!(
        compile_filter(&ProxyFilter::new(), Predicates::AsTrue, &mut binds),
        "TRUE"
    );
}

#[test]
fn scalar_leaves_are_plain_equalities_outside_none_of() {
    let filter = ProxyFilter::new()
        .city("Rosario")
        .all_of([ProxyFilter::new().asn(7303)])
        .none_of([ProxyFilter::new().isp("x")]);
    let mut binds = Binds::after(4);
    let sql = compile_filter(&filter, Predicates::AsTrue, &mut binds);
    assert!(sql.contains("(p.city = $5 AND (p.asn = $6)"), "{sql}");
    // Under NOT a NULL leaf must count as FALSE.
    assert!(sql.contains("NOT ((COALESCE(p.isp = $7, FALSE)))"), "{sql}");
}

#[test]
fn only_filters_with_an_indexed_leaf_get_the_keyed_pool() {
    let keyed = [
        ProxyFilter::new().source("s"),
        ProxyFilter::new().country("AR"),
        ProxyFilter::new().city("c"),
        ProxyFilter::new().isp("i"),
        ProxyFilter::new().asn(1),
        ProxyFilter::new().all_of([ProxyFilter::new().all_of([ProxyFilter::new().asn(1)])]),
    ];
    for filter in &keyed {
        let sql = compile_acquire_filter(filter, &mut Binds::after(4));
        assert!(is_keyed(&sql), "{sql}");
        for selector in [Selector::RoundRobin, Selector::FirstAvailable] {
            let statement = acquire_statement(selector, &sql, Lock::SkipLocked);
            assert!(statement.contains(KEYED_POOL), "{statement}");
        }
    }
    let unkeyed = [
        ProxyFilter::new(),
        ProxyFilter::new().near(1.0, 2.0, 3.0),
        ProxyFilter::new().any_of([ProxyFilter::new().country("AR")]),
        ProxyFilter::new().none_of([ProxyFilter::new().country("AR")]),
    ];
    for filter in &unkeyed {
        let sql = compile_acquire_filter(filter, &mut Binds::after(4));
        assert!(!is_keyed(&sql), "{sql}");
    }
    // Round robin starts a keyed scan at the cursor, not at a row
    // comparison the m0011 index cannot bound.
    let sql = compile_acquire_filter(&ProxyFilter::new().country("AR"), &mut Binds::after(4));
    let statement = acquire_statement(Selector::RoundRobin, &sql, Lock::SkipLocked);
    assert!(
        statement.contains("WHERE p.id > (SELECT last_proxy_id FROM st) AND"),
        "{statement}"
    );
    assert!(!statement.contains("(p.pool_id, p.id) >"), "{statement}");
}

#[test]
fn unfiltered_acquire_statements_are_the_built_ones() {
    for selector in Selector::ALL {
        let mut binds = Binds::after(4);
        let filter_sql = crate::usage_sql::leasable(
            &compile_filter(&ProxyFilter::new(), Predicates::AsTrue, &mut binds),
            None,
            &mut binds,
        );
        assert!(binds.args.is_empty());
        assert_eq!(
            &*unfiltered_acquire_statement(selector),
            acquire_statement(selector, &filter_sql, Lock::SkipLocked),
            "{selector}"
        );
    }
}

#[cfg(test)]
mod print {
    #[test]
    #[ignore = "prints the acquire statements for EXPLAIN"]
    fn print_acquire() {
        for selector in pharox_domain::Selector::ALL {
            println!("-- {selector}");
            println!(
                "{};",
                super::super::acquire_statement(selector, "TRUE", super::super::Lock::SkipLocked)
            );
        }
    }
}
