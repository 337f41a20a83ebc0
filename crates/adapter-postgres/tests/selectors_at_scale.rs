//! Guard: no acquire statement reads the whole pool (issue 12).
//!
//! Seeds one pool of 100,000 proxies (one `INSERT ... SELECT
//! generate_series`), then runs `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of
//! the one-statement acquire for every selector, with the empty filter and
//! the common scalar filters, and fails when a plan touches more buffers or
//! rows than a bound far below the pool's size. A full scan of this pool
//! reads ~100,000 rows and thousands of buffers; a statement that walks an
//! index to its first leasable proxy reads a few dozen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use pharox_adapter_postgres::testing::explain_acquire;
use pharox_domain::{ProxyFilter, Selector};
use sea_orm::sqlx;
use serde_json::Value;

const PROXIES: i64 = 100_000;

/// Buffers (shared hit + read of the plan's root node, which PostgreSQL
/// counts cumulatively over every node below it, CTEs and InitPlans
/// included) one acquire may touch. (Summed over every node, as this test
/// did before, a CTE read through a chain of a dozen nodes counted a dozen
/// times: random's window pick read ~850 buffers and showed 10,580.)
const MAX_BUFFERS: i64 = 5_000;

/// Rows (produced or removed by a filter, summed over every plan node) one
/// acquire may examine.
const MAX_ROWS: i64 = 5_000;

#[derive(Debug, Default)]
struct Cost {
    buffers: i64,
    rows: i64,
}

fn walk(node: &Value, cost: &mut Cost) {
    let int = |key: &str| node.get(key).and_then(Value::as_i64).unwrap_or(0);
    let loops = int("Actual Loops").max(1);
    cost.rows += int("Actual Rows") * loops + int("Rows Removed by Filter");
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            walk(child, cost);
        }
    }
}

fn cost(plan: &Value) -> Cost {
    let root = &plan[0]["Plan"];
    let blocks = |key: &str| root.get(key).and_then(Value::as_i64).unwrap_or(0);
    let mut cost = Cost {
        buffers: blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"),
        rows: 0,
    };
    walk(root, &mut cost);
    cost
}

#[tokio::test]
async fn no_acquire_statement_reads_the_whole_pool() {
    let schema = common::schema().await;
    let db = schema.storage().pg_pool();
    let pool_id = uuid::Uuid::now_v7();
    let consumer = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO proxy_pool (id, name) VALUES ($1, 'big')")
        .bind(pool_id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO consumer (id, name) VALUES ($1, 'guard')")
        .bind(consumer)
        .execute(db)
        .await
        .unwrap();
    // Ids from a hash of the row number: scattered like random ids, but the
    // same every run, so the rows a filter walks past do not vary.
    // 20 countries, 100 cities, 4 sources, 50 ISPs/ASNs; latencies spread,
    // every tenth never measured (NULL); latency independent of the other
    // columns (a hash of the row number); max_concurrency 1.
    sqlx::query(
        "INSERT INTO proxy (id, pool_id, host, port, protocol, status, source, country, city, \
           isp, asn, max_concurrency, current_leases, checked_at, last_latency_ms) \
         SELECT md5('proxy-' || i)::uuid, $1, '10.0.' || (i / 250) || '.' || (i % 250), 8080, 'http', \
           'active', 'feed-' || (i % 4), 'C' || (i % 20), 'city-' || (i % 100), \
           'isp-' || (i % 50), 64500 + (i % 50), 1, 0, '1970-01-01 00:00:00+00', \
           CASE WHEN i % 10 = 0 THEN NULL ELSE (abs(hashtext(i::text)) % 1000)::float8 END \
         FROM generate_series(1, $2) AS i",
    )
    .bind(pool_id)
    .bind(PROXIES)
    .execute(db)
    .await
    .unwrap();
    // A round-robin cursor in the middle of the pool.
    sqlx::query(
        "INSERT INTO pool_selector_state (pool_id, strategy, last_proxy_id, created_at, updated_at) \
         SELECT $1, 'round_robin', id, now(), now() FROM proxy WHERE pool_id = $1 \
         ORDER BY id OFFSET $2 LIMIT 1",
    )
    .bind(pool_id)
    .bind(PROXIES / 2)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(db).await.unwrap();

    let filters = [
        ("no filter", ProxyFilter::new()),
        ("country", ProxyFilter::new().country("C7")),
        ("city", ProxyFilter::new().city("city-42")),
        ("source", ProxyFilter::new().source("feed-2")),
        ("isp", ProxyFilter::new().isp("isp-9")),
        ("asn", ProxyFilter::new().asn(64_509)),
    ];
    let mut failures = Vec::new();
    for selector in Selector::ALL {
        for (name, filter) in &filters {
            let plan = explain_acquire(schema.storage(), "big", consumer, selector, filter)
                .await
                .unwrap();
            let cost = cost(&plan);
            println!(
                "{selector:>15} {name:>9}: {} buffers, {} rows",
                cost.buffers, cost.rows
            );
            if cost.buffers > MAX_BUFFERS || cost.rows > MAX_ROWS {
                failures.push(format!(
                    "{selector} with {name}: {} buffers (max {MAX_BUFFERS}), {} rows (max {MAX_ROWS}): {plan}",
                    cost.buffers, cost.rows
                ));
            }
        }
    }
    schema.drop_schema().await.unwrap();
    assert!(
        failures.is_empty(),
        "statements reading the whole pool:\n{}",
        failures.join("\n")
    );
}
