//! Deterministic proxy fixtures for benchmarks.

use pharox::{PoolId, Proxy, ProxyProtocol, ValidationError};

const COUNTRIES: [(&str, &str, f64, f64); 5] = [
    ("US", "New York", 40.7128, -74.0060),
    ("DE", "Berlin", 52.5200, 13.4050),
    ("AR", "Buenos Aires", -34.6037, -58.3816),
    ("JP", "Tokyo", 35.6762, 139.6503),
    ("BR", "Sao Paulo", -23.5505, -46.6333),
];

/// `count` proxies for `pool`, spread over five countries, four ISPs and
/// two sources, so filters in benchmarks have something to select.
pub fn proxies(
    pool: PoolId,
    count: usize,
    max_concurrency: u32,
) -> Result<Vec<Proxy>, ValidationError> {
    (0..count)
        .map(|i| {
            let (country, city, lat, lon) = COUNTRIES[i % COUNTRIES.len()];
            // Spread within ~50 km of the city so radius filters are meaningful.
            let jitter = (i % 100) as f64 * 0.004;
            Proxy::builder(
                pool,
                format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
                8000 + (i % 1000) as u16,
                ProxyProtocol::Http,
            )
            .country(country)
            .city(city)
            .isp(format!("isp-{}", i % 4))
            .asn(64_500 + (i % 4) as u32)
            .source(if i % 2 == 0 { "feed-a" } else { "feed-b" })
            .location(lat + jitter, lon - jitter)
            .max_concurrency(max_concurrency)
            .build()
        })
        .collect()
}
