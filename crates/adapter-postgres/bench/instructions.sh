#!/usr/bin/env bash
# Server instructions per acquire+release cycle, counted by callgrind: a
# measure that does not move with the machine's load, unlike cycles/s.
#
#   cargo build --release -p pharox-cli
#   crates/adapter-postgres/bench/instructions.sh [path/to/pharox]
#
# Starts a throwaway PostgreSQL cluster (initdb in a temporary folder, run by
# the `postgres` user when started as root, on a free port) under
# `valgrind --tool=callgrind`, which follows every backend the postmaster
# forks. Then, for each workload, runs it twice (200 and 1,200 cycles, one
# client; 1,200 and 2,200 for pharox) and reports the difference of the serving backend's instruction
# count divided by 1,000, so connection start-up, seeding and the first
# (custom) plans cancel out:
#
#   minimal  pgbench, minimal_cycle.sql (the floor's two statements)
#   schema   pgbench, schema_minimal_cycle.sql (the same on pharox tables)
#   adapter  pgbench, cycle.sql (this adapter's acquire and release)
#   pharox   `pharox bench --workers 1` (the same statements through sqlx)
#
# pgbench reads results as text and sqlx as binary, so `adapter` and `pharox`
# differ by the cost of text output. Needs valgrind, initdb/pg_ctl/pgbench
# of the server's version, and a few minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pharox="${1:-$here/../../../target/release/pharox}"
bindir="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)"
[ -x "$bindir/initdb" ] || bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
work="$(mktemp -d /tmp/pharox-instructions.XXXXXX)"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() {
  as_pg "$bindir/pg_ctl -D $work/data -m fast stop" >/dev/null 2>&1 || true
  pkill -f "callgrind.*$work/data" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
as_pg "$bindir/initdb -D $work/data -A trust -U postgres" >/dev/null
as_pg "cd $work && nohup valgrind --tool=callgrind --callgrind-out-file=$work/cg.%p \
  $bindir/postgres -D $work/data -p $port -k $work -c listen_addresses=127.0.0.1 \
  -c autovacuum=off >$work/server.log 2>&1 &"
export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=bench PGSSLMODE=disable
for _ in $(seq 1 120); do pg_isready -q && break; sleep 1; done
psql -qX -d postgres -c "CREATE DATABASE bench"
url="postgres://postgres@127.0.0.1:$port/bench?sslmode=disable"
"$pharox" migrate up --database-url "$url" >/dev/null

# The backend that did the most work since the marker (the benchmark's).
busiest_since_marker() {
  sleep 3
  for f in $(find "$work" -name 'cg.*' -newer "$work/marker"); do
    echo "$(awk '/^summary:/ {print $2}' "$f") $f"
  done | sort -n | tail -1 | cut -d' ' -f1
}
pgbench_pair() { # script cycles
  psql -qX -f "$here/seed.sql" -f "$here/minimal_setup.sql" 2>/dev/null
  psql -qX -c "VACUUM ANALYZE"
  local consumer
  consumer="$(psql -AtX -c "SELECT id FROM consumer WHERE name = 'pgbench'")"
  touch "$work/marker"
  pgbench -n -M prepared -f "$1" -D consumer="$consumer" -D pool=pgbench -D active=active \
    -c 1 -j 1 -t "$2" >/dev/null
  busiest_since_marker
}
pharox_bench() { # cycles
  psql -qX -c "VACUUM ANALYZE"
  touch "$work/marker"
  "$pharox" bench --database-url "$url" --workers 1 --iterations "$1" --json >/dev/null
  busiest_since_marker
}
per_cycle() { echo $(( ($2 - $1) / 1000 )); }
for which in minimal schema adapter; do
  case $which in
    minimal) script="$here/minimal_cycle.sql" ;;
    schema) script="$here/schema_minimal_cycle.sql" ;;
    adapter) script="$here/cycle.sql" ;;
  esac
  short="$(pgbench_pair "$script" 200)"
  long="$(pgbench_pair "$script" 1200)"
  printf '%-8s instructions/cycle=%s\n' "$which" "$(per_cycle "$short" "$long")"
done
# Seeding and removing the pool run on another connection; from 1,200
# cycles on, the worker's backend is the busiest one.
short="$(pharox_bench 1200)"
long="$(pharox_bench 2200)"
printf '%-8s instructions/cycle=%s\n' pharox "$(per_cycle "$short" "$long")"
