#!/usr/bin/env python3
"""Lease a proxy from `pharox serve`, use it, report how it went, release it.

Only the standard library: copy this file into a worker in any project.

    PHAROX_URL=http://127.0.0.1:8080 PHAROX_API_KEY=... PHAROX_POOL=p \
        python3 lease.py https://example.com/

Settings come from the environment:

- PHAROX_URL      the service (default http://127.0.0.1:8080)
- PHAROX_API_KEY  a key of scope `lease` (or `admin`)
- PHAROX_POOL     the pool to lease from (default `default`)
- PHAROX_COUNTRY  optional: lease only a proxy of this country
- PHAROX_WAIT_MS  how long to wait for a free proxy before giving up
                  (default 2000; the server caps it with --max-wait-ms)

The target URL is the first argument. The script prints one JSON line
describing what happened and exits 0 when the fetch through the proxy
succeeded, 1 when it failed (the failure is still reported and the lease
released), 2 when no proxy was free, 3 on any other service error.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Statuses a target answers when it blocks a proxy rather than failing.
BLOCKED_STATUSES = {401, 403, 407, 429}


class ServiceError(Exception):
    """An answer of the lease service other than success (an RFC 9457 problem)."""

    def __init__(self, status, problem):
        self.status = status
        self.code = problem.get("code", "unknown")
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class LeaseClient:
    """The four calls a worker needs, over `urllib` with no proxy of its own."""

    def __init__(self, base_url, api_key, timeout=30):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        # The service is reached directly, never through HTTP(S)_PROXY.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.api_key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            try:
                problem = json.loads(error.read() or b"{}")
            except ValueError:
                problem = {}
            raise ServiceError(error.code, problem) from None
        return json.loads(raw) if raw else None

    def acquire(self, pool, ttl_seconds=60, filter=None, target=None, wait_ms=0):
        """A lease (a dict with `lease_id`, `proxy_url`, ...); raises ServiceError 409 when none is free."""
        body = {"ttl_seconds": ttl_seconds}
        if filter:
            body["filter"] = filter
        if target:
            body["target"] = target
        query = f"?wait_ms={wait_ms}" if wait_ms else ""
        return self._call("POST", f"/v1/pools/{urllib.parse.quote(pool, safe='')}/leases{query}", body)

    def report(self, lease_id, outcome):
        """Records an outcome; returns the proxy's standing."""
        return self._call("POST", f"/v1/leases/{lease_id}/outcomes", outcome)

    def release(self, lease_id, outcome=None):
        """Ends the lease (releasing twice is not an error)."""
        return self._call("POST", f"/v1/leases/{lease_id}/release", outcome)


def fetch_through(proxy_url, url, timeout=20):
    """GETs `url` through the leased proxy; returns (HTTP status, body bytes)."""
    handler = urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url})
    opener = urllib.request.build_opener(handler)
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def main():
    if len(sys.argv) != 2:
        print("usage: lease.py TARGET_URL", file=sys.stderr)
        return 3
    url = sys.argv[1]
    target = urllib.parse.urlsplit(url).hostname
    client = LeaseClient(
        os.environ.get("PHAROX_URL", "http://127.0.0.1:8080"),
        os.environ.get("PHAROX_API_KEY", ""),
    )
    pool = os.environ.get("PHAROX_POOL", "default")
    country = os.environ.get("PHAROX_COUNTRY")
    try:
        lease = client.acquire(
            pool,
            ttl_seconds=60,
            filter={"country": country} if country else None,
            target=target,
            wait_ms=int(os.environ.get("PHAROX_WAIT_MS", "2000")),
        )
    except ServiceError as error:
        print(json.dumps({"error": error.code, "status": error.status}))
        return 2 if error.code == "no_proxy_available" else 3

    lease_id = lease["lease_id"]
    outcome = None
    try:
        started = time.monotonic()
        try:
            status, body = fetch_through(lease["proxy_url"], url)
        except OSError as error:  # refused, timed out, the proxy failed
            outcome = {"kind": "proxy_failure", "failure": "other"}
            summary = {"lease_id": lease_id, "proxy_id": lease["proxy_id"], "error": str(error)}
        else:
            latency_ms = int((time.monotonic() - started) * 1000)
            if 200 <= status < 400:
                outcome = {"kind": "success", "target": target, "latency_ms": latency_ms}
            elif status in BLOCKED_STATUSES:
                outcome = {"kind": "blocked", "target": target, "http_status": status}
            else:
                outcome = {"kind": "target_error", "target": target, "http_status": status}
            summary = {
                "lease_id": lease_id,
                "proxy_id": lease["proxy_id"],
                "http_status": status,
                "bytes": len(body),
            }
        # Report first (the proxy's standing comes back), then release.
        standing = client.report(lease_id, outcome)
        summary["outcome"] = outcome["kind"]
        summary["error_score"] = standing["error_score"]
    finally:
        # Always give the proxy back, even when the fetch or the report failed.
        released = client.release(lease_id)
    summary["released"] = released["result"]
    print(json.dumps(summary))
    return 0 if outcome["kind"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
