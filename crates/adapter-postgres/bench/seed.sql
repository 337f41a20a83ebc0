-- Pool "pgbench" with 1000 single-slot proxies and consumer "pgbench", on a
-- schema made by `pharox migrate up`; like `pharox bench` seeds its pool:
-- ids in insertion order (pharox ids are UUIDv7, so the first proxies in id
-- order sit together on the first heap pages) and the same kind of metadata.
-- Re-running starts over (deleting the pool deletes its proxies and leases).
DELETE FROM proxy_pool WHERE name = 'pgbench';
INSERT INTO proxy_pool (id, name) VALUES (gen_random_uuid(), 'pgbench');
INSERT INTO consumer (id, name) VALUES (gen_random_uuid(), 'pgbench')
    ON CONFLICT (name) DO NOTHING;
INSERT INTO proxy (id, pool_id, host, port, protocol, source, country, city,
                   latitude, longitude, isp, asn, max_concurrency)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       (SELECT id FROM proxy_pool WHERE name = 'pgbench'),
       '10.0.' || (i / 256) || '.' || (i % 256), 8000 + i % 1000, 'http',
       CASE WHEN i % 2 = 0 THEN 'feed-a' ELSE 'feed-b' END, 'DE', 'Berlin',
       52.52 + (i % 100) * 0.004, 13.405 - (i % 100) * 0.004,
       'isp-' || (i % 4), 64500 + i % 4, 1
FROM generate_series(0, 999) AS i;
-- History: a database in use has finished leases. Without any, VACUUM
-- ANALYZE leaves the lease table at zero pages and zero rows, and the
-- generic plans that prepared statements settle on after five executions
-- scan it sequentially (even the release by primary key) while it grows.
INSERT INTO lease (id, proxy_id, pool_id, consumer_id, pool_name, status,
                   acquired_at, expires_at, released_at)
SELECT gen_random_uuid(), p.id, p.pool_id, (SELECT id FROM consumer WHERE name = 'pgbench'),
       'pgbench', 'released', now() - interval '1 hour', now() - interval '55 minutes',
       now() - interval '59 minutes'
FROM proxy p, generate_series(1, 10) AS g
WHERE p.pool_id = (SELECT id FROM proxy_pool WHERE name = 'pgbench');
