//! Pools, consumers, proxies, leases and health records.

use sea_orm_migration::prelude::*;

/// The tables of the Python pharox 0.11 schema, with the Rust additions.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Column names and text encodings follow the Python reference. Additions
/// (`consecutive_failures`, `last_latency_ms`, `last_error`,
/// `last_http_status`, `proxy_health_record.http_status`) are nullable or
/// defaulted, so inserts written for the Python schema still work.
const UP: &str = r#"
CREATE TABLE proxy_pool (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT proxy_pool_name_key UNIQUE (name)
);

CREATE TABLE consumer (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT consumer_name_key UNIQUE (name)
);

-- fillfactor leaves room on each page so the current_leases updates of the
-- acquire/release hot path stay HOT (no index is touched: current_leases is
-- not indexed and the status does not change).
CREATE TABLE proxy (
    id                   uuid PRIMARY KEY,
    pool_id              uuid NOT NULL,
    host                 text NOT NULL,
    port                 integer NOT NULL,
    protocol             text NOT NULL,
    status               text NOT NULL DEFAULT 'active',
    credentials          json,
    source               text,
    country              text,
    city                 text,
    latitude             double precision,
    longitude            double precision,
    isp                  text,
    asn                  bigint,
    max_concurrency      integer,
    current_leases       integer NOT NULL DEFAULT 0,
    checked_at           timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_latency_ms      double precision,
    last_error           text,
    last_http_status     integer,
    CONSTRAINT proxy_pool_id_fkey FOREIGN KEY (pool_id)
        REFERENCES proxy_pool (id) ON DELETE CASCADE,
    CONSTRAINT proxy_port_check CHECK (port BETWEEN 1 AND 65535),
    CONSTRAINT proxy_current_leases_check CHECK (current_leases >= 0),
    CONSTRAINT proxy_max_concurrency_check
        CHECK (max_concurrency IS NULL OR max_concurrency >= 1),
    CONSTRAINT proxy_capacity_check
        CHECK (max_concurrency IS NULL OR current_leases <= max_concurrency),
    CONSTRAINT proxy_latitude_check
        CHECK (latitude IS NULL OR (latitude >= -90 AND latitude <= 90)),
    CONSTRAINT proxy_longitude_check
        CHECK (longitude IS NULL OR (longitude >= -180 AND longitude <= 180)),
    CONSTRAINT proxy_asn_check CHECK (asn IS NULL OR (asn >= 0 AND asn <= 4294967295)),
    CONSTRAINT proxy_consecutive_failures_check CHECK (consecutive_failures >= 0)
) WITH (fillfactor = 70);

-- Listing a pool's proxies, and the cascade from proxy_pool.
CREATE INDEX proxy_pool_id_idx ON proxy (pool_id, id);
-- Acquire: the leasable proxies of one pool, in id order.
CREATE INDEX proxy_available_idx ON proxy (pool_id, id) WHERE status = 'active';

-- lease.pool_id has no foreign key on purpose: a lease always belongs to a
-- proxy of that pool (proxies never move between pools), so deleting a pool
-- already cascades to its leases through proxy, and a second key check on
-- every lease insert would make all workers share-lock the one pool row.
CREATE TABLE lease (
    id          uuid PRIMARY KEY,
    proxy_id    uuid NOT NULL,
    pool_id     uuid NOT NULL,
    consumer_id uuid NOT NULL,
    pool_name   text NOT NULL,
    status      text NOT NULL DEFAULT 'active',
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    CONSTRAINT lease_proxy_id_fkey FOREIGN KEY (proxy_id)
        REFERENCES proxy (id) ON DELETE CASCADE,
    CONSTRAINT lease_consumer_id_fkey FOREIGN KEY (consumer_id)
        REFERENCES consumer (id) ON DELETE CASCADE
);

-- Acquire reclaims the expired active leases of one pool.
CREATE INDEX lease_active_pool_expiry_idx ON lease (pool_id, expires_at)
    WHERE status = 'active';
-- cleanup_expired: every expired active lease, whatever the pool. Partial,
-- so its cost does not grow with the number of finished leases.
CREATE INDEX lease_active_expiry_idx ON lease (expires_at) WHERE status = 'active';
CREATE INDEX lease_consumer_id_idx ON lease (consumer_id);
-- The leases of a proxy, and the cascade from proxy.
CREATE INDEX lease_proxy_id_idx ON lease (proxy_id);

CREATE TABLE proxy_health_record (
    id            uuid PRIMARY KEY,
    proxy_id      uuid NOT NULL,
    checked_at    timestamptz NOT NULL,
    reachable     boolean NOT NULL,
    latency_ms    double precision,
    protocol      text NOT NULL,
    status_before text NOT NULL,
    status_after  text NOT NULL,
    error         text,
    http_status   integer,
    CONSTRAINT proxy_health_record_proxy_id_fkey FOREIGN KEY (proxy_id)
        REFERENCES proxy (id) ON DELETE CASCADE
);

CREATE INDEX proxy_health_record_proxy_checked_idx
    ON proxy_health_record (proxy_id, checked_at DESC);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS proxy_health_record;
DROP TABLE IF EXISTS lease;
DROP TABLE IF EXISTS proxy;
DROP TABLE IF EXISTS consumer;
DROP TABLE IF EXISTS proxy_pool;
"#;

sql_migration!();
