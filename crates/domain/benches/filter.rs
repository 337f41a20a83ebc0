//! Filter evaluation: scalar, composite, geo radius and predicate filters,
//! on a proxy they match and one they do not.
//!
//! `cargo bench -p pharox-domain --bench filter -- --quick`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pharox_domain::{PoolId, Proxy, ProxyFilter, ProxyProtocol};

fn proxy(country: &str, city: &str, asn: u32, at: (f64, f64)) -> Proxy {
    Proxy::builder(PoolId::new(), "10.0.0.1", 8080, ProxyProtocol::Http)
        .source("feed")
        .country(country)
        .city(city)
        .isp("NetCo")
        .asn(asn)
        .location(at.0, at.1)
        .build()
        .unwrap()
}

fn filters(c: &mut Criterion) {
    let hit = proxy("DE", "Berlin", 3320, (52.52, 13.405));
    let miss = proxy("AR", "Rosario", 7303, (-32.95, -60.65));
    let cases = [
        ("scalar", ProxyFilter::new().country("DE").asn(3320)),
        (
            "composite",
            ProxyFilter::new()
                .source("feed")
                .any_of([
                    ProxyFilter::new().city("Munich"),
                    ProxyFilter::new().all_of([
                        ProxyFilter::new().country("DE"),
                        ProxyFilter::new().isp("NetCo"),
                    ]),
                ])
                .none_of([
                    ProxyFilter::new().asn(1),
                    ProxyFilter::new().city("Hamburg"),
                ]),
        ),
        ("geo_radius", ProxyFilter::new().near(52.0, 13.0, 100.0)),
        ("geo_exact", ProxyFilter::new().at(52.52, 13.405)),
        (
            "predicate",
            ProxyFilter::new()
                .country("DE")
                .predicate(|p| p.port % 2 == 0),
        ),
    ];
    let mut group = c.benchmark_group("filter");
    for (name, filter) in &cases {
        assert!(filter.matches(&hit), "{name} should match the hit proxy");
        assert!(
            !filter.matches(&miss),
            "{name} should not match the miss proxy"
        );
        group.bench_function(format!("{name}/match"), |b| {
            b.iter(|| black_box(filter).matches(black_box(&hit)));
        });
        group.bench_function(format!("{name}/miss"), |b| {
            b.iter(|| black_box(filter).matches(black_box(&miss)));
        });
    }
    group.bench_function("composite/validate", |b| {
        b.iter(|| black_box(&cases[1].1).validate());
    });
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
