#!/bin/sh
# Lease a proxy from `pharox serve`, fetch TARGET_URL through it, and
# release it with the outcome, using curl alone.
#   PHAROX_URL=http://127.0.0.1:8080 PHAROX_API_KEY=... PHAROX_POOL=p \
#     sh lease.sh https://example.com/
set -eu
target_url=$1
service=${PHAROX_URL:-http://127.0.0.1:8080}
pool=${PHAROX_POOL:-default}
api() { # METHOD PATH [JSON BODY]: the service, never through a proxy
  curl -sS --fail-with-body --noproxy '*' -X "$1" \
    -H "Authorization: Bearer $PHAROX_API_KEY" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} "$service$2"
}
field() { # NAME: a string field of the JSON on stdin
  sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

# 1. Lease: 201 with the lease, or 409 `no_proxy_available` (curl exits 22).
lease=$(api POST "/v1/pools/$pool/leases?wait_ms=2000" '{"ttl_seconds": 60}')
lease_id=$(printf '%s' "$lease" | field lease_id)
proxy_url=$(printf '%s' "$lease" | field proxy_url)

# 2. Use: the target through the leased proxy (credentials are in the URL).
status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 \
  --proxy "$proxy_url" "$target_url") || status=000
host=$(printf '%s' "$target_url" | sed 's#^[a-z]*://##; s#[:/?].*##')

# 3. Release with the outcome (recorded atomically with the release).
case $status in
  2??|3??) outcome='{"kind": "success", "target": "'$host'"}' ;;
  401|403|407|429) outcome='{"kind": "blocked", "target": "'$host'", "http_status": '$status'}' ;;
  000) outcome='{"kind": "proxy_failure", "failure": "other"}' ;;
  *) outcome='{"kind": "target_error", "target": "'$host'", "http_status": '$status'}' ;;
esac
released=$(api POST "/v1/leases/$lease_id/release" "$outcome")
echo "lease $lease_id: HTTP $status through the proxy; $(printf '%s' "$released" | field result)"
