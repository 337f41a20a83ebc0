DROP TABLE IF EXISTS b_lease; DROP TABLE IF EXISTS b_proxy;
CREATE TABLE b_proxy (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), status text NOT NULL DEFAULT 'active', max_concurrency int DEFAULT 1, current_leases int NOT NULL DEFAULT 0);
CREATE TABLE b_lease (id uuid PRIMARY KEY, proxy_id uuid NOT NULL REFERENCES b_proxy(id), status text NOT NULL, acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL, released_at timestamptz);
CREATE INDEX ON b_proxy (id) WHERE status = 'active';
CREATE INDEX ON b_lease (expires_at) WHERE status = 'active';
INSERT INTO b_proxy SELECT FROM generate_series(1,1000);
-- History, as in seed.sql: without it VACUUM ANALYZE leaves b_lease empty
-- and prepared statements settle on sequential scans of it.
INSERT INTO b_lease SELECT gen_random_uuid(), id, 'released', now() - interval '1 hour', now() - interval '55 minutes', now() - interval '59 minutes' FROM b_proxy, generate_series(1, 10);
