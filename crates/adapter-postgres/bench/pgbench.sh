#!/usr/bin/env bash
# pgbench baselines for the acquire+release cycle, on one database:
#
#   minimal  the floor: one claim-and-insert-lease statement plus one release
#            statement on two bare tables (minimal_setup.sql, minimal_cycle.sql)
#   schema   the same minimal pair on the pharox tables themselves (their
#            indexes, foreign keys and CHECKs), pool of seed.sql
#   adapter  PostgresStorage's own two statements, first_available without a
#            filter (cycle.sql: the common-path acquire and the release), on
#            the pharox schema with the pool of seed.sql
#
# Each run starts from fresh tables with history rows, then VACUUM ANALYZE.
#
#   pharox migrate up --database-url "postgres://postgres@127.0.0.1:5432/DB?sslmode=disable"
#   PGDATABASE=DB crates/adapter-postgres/bench/pgbench.sh [seconds] [clients...]
#
# Connection: the usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE,
# PGSSLMODE; default 127.0.0.1:5432, postgres, sslmode=disable: use the same
# TLS setting as the pharox bench URL). pgbench runs -M prepared, like sqlx's
# statement cache. Prints one line per run: which, clients, cycles/s, failed.
set -euo pipefail
secs="${1:-5}"
shift || true
clients=("${@:-1 8}")
read -r -a clients <<<"${clients[*]}"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" \
  PGDATABASE="${PGDATABASE:-postgres}" PGSSLMODE="${PGSSLMODE:-disable}"
here="$(cd "$(dirname "$0")" && pwd)"
run() { # name script clients
  psql -qX -v ON_ERROR_STOP=1 -f "$here/seed.sql" -f "$here/minimal_setup.sql" 2>/dev/null
  psql -qX -c "VACUUM ANALYZE"
  local consumer out
  consumer="$(psql -AtX -c "SELECT id FROM consumer WHERE name = 'pgbench'")"
  out="$(pgbench -n -M prepared -f "$2" -D consumer="$consumer" -D pool=pgbench -D active=active \
    -c "$3" -j "$3" -T "$secs" 2>&1)"
  printf '%-8s clients=%s cycles/s=%s failed=%s\n' "$1" "$3" \
    "$(awk '/^tps/ {printf "%.0f", $3}' <<<"$out")" \
    "$(awk '/number of failed/ {print $5}' <<<"$out")"
}
for c in "${clients[@]}"; do
  run minimal "$here/minimal_cycle.sql" "$c"
  run schema "$here/schema_minimal_cycle.sql" "$c"
  run adapter "$here/cycle.sql" "$c"
done
