//! Filters: scalar fields, composition (any_of, all_of, none_of), Rust
//! predicates and geography select exactly the matching proxies, with every
//! selector and in find_available.

use std::collections::BTreeSet;

use pharox_domain::{ConsumerId, Proxy, ProxyFilter, ProxyId, ProxyPool, Selector};

use super::support::*;
use crate::ContractFixture;

async fn filter_pool(fx: &ContractFixture, prefix: &str) -> (ProxyPool, ConsumerId, [Proxy; 3]) {
    let pool = new_pool(fx, prefix).await;
    let consumer = new_consumer(fx, prefix).await;
    let a = save(
        fx,
        proxy(&pool, 1)
            .source("feed-a")
            .country("AR")
            .city("Rosario")
            .isp("NetA")
            .asn(100)
            .max_concurrency(1),
    )
    .await;
    let b = save(
        fx,
        proxy(&pool, 2)
            .source("feed-b")
            .country("DE")
            .city("Berlin")
            .isp("NetB")
            .asn(200)
            .max_concurrency(1),
    )
    .await;
    let c = save(
        fx,
        proxy(&pool, 3)
            .source("feed-a")
            .country("DE")
            .city("Munich")
            .isp("NetA")
            .asn(300)
            .max_concurrency(1),
    )
    .await;
    (pool, consumer, [a, b, c])
}

async fn check_filters(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    cases: Vec<(&str, ProxyFilter, BTreeSet<ProxyId>)>,
) {
    for (what, filter, want) in cases {
        for selector in Selector::ALL {
            let got = lease_all(fx, pool, consumer, &filter, selector).await;
            assert_eq!(got, want, "filter {what} with selector {selector}");
        }
        let peek = store(fx)
            .find_available(&pool.name, &filter, Selector::FirstAvailable)
            .await
            .expect("find_available");
        assert_eq!(
            peek.map(|p| p.id),
            want.first().copied(),
            "find_available with filter {what}"
        );
    }
}

/// Scalar filters (source, country, city, isp, asn, and combinations) lease
/// exactly the matching proxies, with every selector. Matching is exact and
/// case-sensitive.
pub async fn scalar_filters_select_exactly_the_matches(fx: &ContractFixture) {
    let (pool, consumer, [a, b, c]) = filter_pool(fx, "scalar").await;
    let cases = vec![
        ("empty", ProxyFilter::new(), ids(&[&a, &b, &c])),
        (
            "source",
            ProxyFilter::new().source("feed-a"),
            ids(&[&a, &c]),
        ),
        ("country", ProxyFilter::new().country("AR"), ids(&[&a])),
        (
            "country lower-case",
            ProxyFilter::new().country("ar"),
            ids(&[]),
        ),
        ("city", ProxyFilter::new().city("Munich"), ids(&[&c])),
        ("isp", ProxyFilter::new().isp("NetB"), ids(&[&b])),
        ("asn", ProxyFilter::new().asn(300), ids(&[&c])),
        (
            "country and isp",
            ProxyFilter::new().country("DE").isp("NetA"),
            ids(&[&c]),
        ),
        ("no match", ProxyFilter::new().country("FR"), ids(&[])),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}

/// any_of / all_of / none_of compose, and Rust predicates work at the root
/// and nested (also inside none_of).
pub async fn composite_filters_with_predicates(fx: &ContractFixture) {
    let (pool, consumer, [a, b, c]) = filter_pool(fx, "composite").await;
    let b_port = b.port;
    let cases = vec![
        (
            "any_of",
            ProxyFilter::new().any_of([
                ProxyFilter::new().country("AR"),
                ProxyFilter::new().city("Munich"),
            ]),
            ids(&[&a, &c]),
        ),
        (
            "all_of",
            ProxyFilter::new().all_of([
                ProxyFilter::new().country("DE"),
                ProxyFilter::new().asn(300),
            ]),
            ids(&[&c]),
        ),
        (
            "none_of",
            ProxyFilter::new().none_of([ProxyFilter::new().isp("NetA")]),
            ids(&[&b]),
        ),
        (
            "nested",
            ProxyFilter::new().source("feed-a").any_of([
                ProxyFilter::new().all_of([ProxyFilter::new().country("DE")]),
                ProxyFilter::new().asn(200),
            ]),
            ids(&[&c]),
        ),
        (
            "root predicate",
            ProxyFilter::new().predicate(move |p| p.port == b_port),
            ids(&[&b]),
        ),
        (
            "predicate inside none_of",
            ProxyFilter::new().none_of([ProxyFilter::new().predicate(|p| p.asn == Some(100))]),
            ids(&[&b, &c]),
        ),
        (
            "predicate inside any_of",
            ProxyFilter::new().any_of([
                ProxyFilter::new().predicate(|p| p.city.as_deref() == Some("Rosario")),
                ProxyFilter::new().isp("NetB"),
            ]),
            ids(&[&a, &b]),
        ),
        (
            "predicate and scalar",
            ProxyFilter::new()
                .country("DE")
                .predicate(|p| p.asn.is_some_and(|asn| asn > 250)),
            ids(&[&c]),
        ),
        (
            "predicate rejecting all",
            ProxyFilter::new().predicate(|_| false),
            ids(&[]),
        ),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}

/// Geo filters: exact point (within 1e-6 degrees) and radius by haversine
/// distance; proxies without coordinates never match.
pub async fn geo_filters_exact_and_radius(fx: &ContractFixture) {
    let pool = new_pool(fx, "geo").await;
    let consumer = new_consumer(fx, "geo").await;
    let paris = save(
        fx,
        proxy(&pool, 1).location(48.8566, 2.3522).max_concurrency(1),
    )
    .await;
    let london = save(
        fx,
        proxy(&pool, 2)
            .location(51.5074, -0.1278)
            .max_concurrency(1),
    )
    .await;
    let baires = save(
        fx,
        proxy(&pool, 3)
            .location(-34.6037, -58.3816)
            .max_concurrency(1),
    )
    .await;
    let _nowhere = save(fx, proxy(&pool, 4).max_concurrency(1)).await;
    let cases = vec![
        (
            "exact Paris",
            ProxyFilter::new().at(48.8566, 2.3522),
            ids(&[&paris]),
        ),
        (
            "exact, off by 1e-4 degrees",
            ProxyFilter::new().at(48.8567, 2.3522),
            ids(&[]),
        ),
        (
            "400 km of Paris (London is ~344 km)",
            ProxyFilter::new().near(48.8566, 2.3522, 400.0),
            ids(&[&paris, &london]),
        ),
        (
            "300 km of Paris",
            ProxyFilter::new().near(48.8566, 2.3522, 300.0),
            ids(&[&paris]),
        ),
        (
            "50 km of Buenos Aires",
            ProxyFilter::new().near(-34.6, -58.4, 50.0),
            ids(&[&baires]),
        ),
        (
            "whole planet",
            ProxyFilter::new().near(0.0, 0.0, 20_100.0),
            ids(&[&paris, &london, &baires]),
        ),
        (
            "none_of near Paris",
            ProxyFilter::new()
                .near(0.0, 0.0, 20_100.0)
                .none_of([ProxyFilter::new().near(48.8566, 2.3522, 400.0)]),
            ids(&[&baires]),
        ),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}
