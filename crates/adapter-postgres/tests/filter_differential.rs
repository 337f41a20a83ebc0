//! Differential test of the filter compiler: random filter trees over random
//! proxies select exactly the same proxies in PostgreSQL
//! (`PostgresStorage::list_matching`) as `ProxyFilter::matches_without_predicates`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use pharox_domain::{Proxy, ProxyFilter, ProxyPool, ProxyProtocol};
use pharox_ports::ProxyStorage;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PLACES: [(f64, f64); 5] = [
    (48.8566, 2.3522),
    (51.5074, -0.1278),
    (-34.6037, -58.3816),
    (0.0, 0.0),
    (-33.8688, 151.2093),
];

fn text(options: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::sample::select(options).prop_map(str::to_owned))
}

#[derive(Debug, Clone)]
struct ProxySpec {
    source: Option<String>,
    country: Option<String>,
    city: Option<String>,
    isp: Option<String>,
    asn: Option<u32>,
    at: Option<(usize, f64, f64)>,
}

fn proxy_spec() -> impl Strategy<Value = ProxySpec> {
    (
        text(&["feed-a", "feed-b"]),
        text(&["AR", "DE", "US"]),
        text(&["Rosario", "Berlin"]),
        text(&["NetA", "NetB"]),
        proptest::option::of(1u32..4),
        proptest::option::of((
            0..PLACES.len(),
            prop_oneof![Just(0.0), Just(5e-7), Just(-9e-7), Just(2e-6), -0.5f64..0.5],
            prop_oneof![Just(0.0), Just(5e-7), Just(2e-6), -0.5f64..0.5],
        )),
    )
        .prop_map(|(source, country, city, isp, asn, at)| ProxySpec {
            source,
            country,
            city,
            isp,
            asn,
            at,
        })
}

fn leaf() -> impl Strategy<Value = ProxyFilter> {
    (
        text(&["feed-a", "feed-b"]),
        text(&["AR", "DE", "US"]),
        text(&["Rosario", "Berlin"]),
        text(&["NetA", "NetB"]),
        proptest::option::of(1u32..4),
        proptest::option::of((
            0..PLACES.len(),
            proptest::option::of(prop_oneof![
                Just(0.001),
                Just(1.0),
                Just(60.0),
                Just(400.0),
                Just(12_000.0),
                Just(20_100.0)
            ]),
        )),
        any::<Option<bool>>(),
    )
        .prop_map(|(source, country, city, isp, asn, geo, predicate)| {
            let mut f = ProxyFilter::new();
            f.source = source;
            f.country = country;
            f.city = city;
            f.isp = isp;
            f.asn = asn;
            if let Some((place, radius)) = geo {
                let (lat, lon) = PLACES[place];
                f = match radius {
                    Some(r) => f.near(lat, lon, r),
                    None => f.at(lat, lon),
                };
            }
            if let Some(verdict) = predicate {
                f = f.predicate(move |_| verdict);
            }
            f
        })
}

fn filter_tree() -> impl Strategy<Value = ProxyFilter> {
    leaf().prop_recursive(3, 24, 3, |inner| {
        (
            leaf(),
            proptest::collection::vec(inner.clone(), 0..3),
            proptest::collection::vec(inner.clone(), 0..3),
            proptest::collection::vec(inner, 0..3),
        )
            .prop_map(|(mut node, all_of, any_of, none_of)| {
                node.all_of = all_of;
                node.any_of = any_of;
                node.none_of = none_of;
                node
            })
    })
}

#[test]
fn compiled_filters_select_exactly_what_the_domain_matches() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = rt.block_on(common::schema());
    let storage = schema.storage().clone();
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(proxy_spec(), 0..14),
        filter_tree(),
    );
    let result = runner.run(&strategy, |(specs, filter)| {
        prop_assume!(filter.validate().is_ok());
        let (want, got) = rt.block_on(async {
            let pool = storage
                .save_pool(&ProxyPool::new(format!("diff-{}", uuid::Uuid::new_v4())).unwrap())
                .await
                .unwrap();
            let proxies: Vec<Proxy> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut b = Proxy::builder(
                        pool.id,
                        "10.3.0.1",
                        u16::try_from(1000 + i).unwrap(),
                        ProxyProtocol::Http,
                    );
                    if let Some(v) = &s.source {
                        b = b.source(v.clone());
                    }
                    if let Some(v) = &s.country {
                        b = b.country(v.clone());
                    }
                    if let Some(v) = &s.city {
                        b = b.city(v.clone());
                    }
                    if let Some(v) = &s.isp {
                        b = b.isp(v.clone());
                    }
                    if let Some(v) = s.asn {
                        b = b.asn(v);
                    }
                    if let Some((place, dlat, dlon)) = s.at {
                        let (lat, lon) = PLACES[place];
                        b = b.location(lat + dlat, lon + dlon);
                    }
                    b.build().unwrap()
                })
                .collect();
            let saved = storage.add_proxies(&proxies).await.unwrap();
            let want: BTreeSet<_> = saved
                .iter()
                .filter(|p| filter.matches_without_predicates(p))
                .map(|p| p.id)
                .collect();
            let got: BTreeSet<_> = storage
                .list_matching(pool.id, &filter)
                .await
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect();
            storage.delete_pool(pool.id).await.unwrap();
            (want, got)
        });
        prop_assert_eq!(want, got, "filter {:?}", filter);
        Ok(())
    });
    rt.block_on(schema.drop_schema()).unwrap();
    result.unwrap();
}
