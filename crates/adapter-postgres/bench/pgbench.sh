#!/usr/bin/env bash
# The acquire+release cycle of PostgresStorage as plain SQL under pgbench:
# the same one-statement acquire (first_available, no filter) and the same
# one-statement release, prepared (-M prepared, like sqlx's statement cache).
#
#   KEEP_SCHEMA=1 cargo run --release -p pharox-adapter-postgres \
#       --example acquire_release -- 1 1          # prints "kept schema X"
#   SCHEMA=X crates/adapter-postgres/bench/pgbench.sh [seconds]
#
# Connection: the usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE),
# default 127.0.0.1:5432 as postgres.
set -euo pipefail
: "${SCHEMA:?set SCHEMA to a schema made by the acquire_release example (KEEP_SCHEMA=1)}"
secs="${1:-10}"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGDATABASE="${PGDATABASE:-postgres}"
here="$(cd "$(dirname "$0")" && pwd)"
consumer="$(psql -Atc "SELECT id FROM \"$SCHEMA\".consumer WHERE name = 'bench'")"
for clients in 1 8; do
  PGOPTIONS="-c search_path=$SCHEMA" pgbench -n -M prepared -f "$here/cycle.sql" \
    -D consumer="$consumer" -c "$clients" -j "$clients" -T "$secs" \
    | grep -E "^(tps|number of failed|latency average)" | sed "s/^/clients=$clients /"
done
