"""Python pharox 0.11 workers on a pool the Rust adapter seeded.

Driven by ``tests/python_interop/``; not a test runner of its own. It
connects through libpq's environment (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGPASSWORD``, ``PGDATABASE``, ``PGSSLMODE``, and ``PGOPTIONS`` with the test
schema's ``search_path``), so no password is ever on its command line.

Standard input: ``{"passwords": {"<proxy id>": "<password>"}}``, the
passwords the Rust side wrote, so that they are compared here and never
printed.

Standard output, one JSON object per line:

1. ``{"event": "read", ...}``: what Python's ``PostgresStorage`` read back of
   every Rust-written row (pools, proxies, health records, stats, a
   ``find_available_proxy`` per selector) and every call that raised;
2. ``{"event": "working"}``: the workers start now;
3. ``{"event": "stopped", ...}``: the workers' counts (acquired, released,
   misses, ``ProxyUnavailableError``) and errors,
   and the leases ``list_leases`` validated afterwards (Rust's included).

Exception messages are reduced to their type and first line (pydantic's to
field paths and error types, without the input), so no password is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

from pydantic import ValidationError
from sqlalchemy import create_engine, text

from pharox import (
    LeaseStatus,
    ProxyFilters,
    ProxyManager,
    ProxyUnavailableError,
    SelectorStrategy,
    acquire_proxy_async,
    release_proxy_async,
)
from pharox.storage.postgres import PostgresStorage

MAX_ERRORS = 20

# Python 0.11's lowest_latency selector cannot run on PostgreSQL at all, on
# its own schema as on ours: it locks with ``FOR UPDATE SKIP LOCKED`` (no
# ``OF proxy``) across a ``LEFT OUTER JOIN LATERAL`` of the latest health
# record, which PostgreSQL refuses with "FOR UPDATE cannot be applied to the
# nullable side of an outer join". It is tried once and reported on its own;
# the workers use the other selectors.
BROKEN_IN_PYTHON = {SelectorStrategy.LOWEST_LATENCY}


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line and flush it, so the Rust side sees it at once."""
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


def describe(error: BaseException) -> str:
    """An exception's type and first line, without any input values."""
    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        return f"ValidationError({error.title}): " + "; ".join(parts)
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0][:300] if first else ''}"


def proxy_json(proxy: Any, passwords: Dict[str, str]) -> Dict[str, Any]:
    """A proxy as Python read it, with its password compared, not shown."""
    credentials = None
    if proxy.credentials is not None:
        credentials = {
            "user": proxy.credentials.user,
            "password_matches": passwords.get(str(proxy.id))
            == proxy.credentials.password,
        }
    return {
        "id": str(proxy.id),
        "pool_id": str(proxy.pool_id),
        "host": str(proxy.host),
        "port": proxy.port,
        "protocol": proxy.protocol.value,
        "status": proxy.status.value,
        "checked_at": proxy.checked_at.isoformat(),
        "credentials": credentials,
        "source": proxy.source,
        "country": proxy.country,
        "city": proxy.city,
        "latitude": proxy.latitude,
        "longitude": proxy.longitude,
        "isp": proxy.isp,
        "asn": proxy.asn,
        "max_concurrency": proxy.max_concurrency,
        "current_leases": proxy.current_leases,
    }


def read_everything(
    storage: PostgresStorage, pool_name: str, passwords: Dict[str, str]
) -> Dict[str, Any]:
    """Read every kind of row through Python's storage and model validation."""
    out: Dict[str, Any] = {"errors": [], "found": {}, "health": {}, "last_health": {}}

    def attempt(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - every failure is reported
            out["errors"].append(f"{what}: {describe(error)}")
            return None

    pools = attempt("list_pools", storage.list_pools) or []
    pool = next((p for p in pools if p.name == pool_name), None)
    if pool is None:
        out["errors"].append(f"list_pools has no pool named {pool_name!r}")
        return out
    again = attempt("get_pool", lambda: storage.get_pool(str(pool.id)))
    out["pool"] = {
        "id": str(pool.id),
        "name": pool.name,
        "description": pool.description,
        "get_pool_agrees": again == pool,
    }

    proxies = attempt("list_proxies", lambda: storage.list_proxies(str(pool.id))) or []
    out["proxies"] = [proxy_json(p, passwords) for p in proxies]
    for proxy in proxies:
        one = attempt(f"get_proxy {proxy.id}", lambda: storage.get_proxy(str(proxy.id)))
        if one is not None and one != proxy:
            out["errors"].append(f"get_proxy {proxy.id} differs from list_proxies")
        records = attempt(
            f"list_health_records {proxy.id}",
            lambda: storage.list_health_records(proxy.id),
        )
        if records:
            out["health"][str(proxy.id)] = [
                {
                    "reachable": r.reachable,
                    "latency_ms": r.latency_ms,
                    "protocol": r.protocol.value,
                    "status_before": r.status_before.value if r.status_before else None,
                    "status_after": r.status_after.value,
                    "error": r.error,
                }
                for r in records
            ]
        last = attempt(
            f"get_last_health_result {proxy.id}",
            lambda: storage.get_last_health_result(proxy.id),
        )
        if last is not None:
            out["last_health"][str(proxy.id)] = {
                "status": last.status.value,
                "latency_ms": last.latency_ms,
            }

    stats = attempt("get_pool_stats", lambda: storage.get_pool_stats(pool_name))
    if stats is not None:
        out["stats"] = stats.model_dump(mode="json", exclude={"collected_at"})
    # Each selector's query and the model validation of the row it picks,
    # without leasing (find_available_proxy only locks for its own
    # transaction).
    out["broken_in_python"] = {}
    for selector in SelectorStrategy:
        if selector in BROKEN_IN_PYTHON:
            try:
                found = storage.find_available_proxy(pool_name, None, selector)
                out["broken_in_python"][selector.value] = None
            except Exception as error:  # noqa: BLE001
                found = None
                out["broken_in_python"][selector.value] = describe(error)
        else:
            found = attempt(
                f"find_available_proxy {selector.value}",
                lambda: storage.find_available_proxy(pool_name, None, selector),
            )
        out["found"][selector.value] = str(found.id) if found else None
    found = attempt(
        "find_available_proxy country=AR",
        lambda: storage.find_available_proxy(pool_name, ProxyFilters(country="AR")),
    )
    out["found"]["country=AR"] = str(found.id) if found else None
    return out


async def work(
    manager: ProxyManager,
    storage: PostgresStorage,
    pool_name: str,
    workers: int,
    seconds: float,
    lease_seconds: int,
) -> Dict[str, Any]:
    """Acquire, read and release in a loop on every worker until the deadline."""
    counts: Counter = Counter()
    errors: List[str] = []
    selectors = [s for s in SelectorStrategy if s not in BROKEN_IN_PYTHON]
    deadline = time.monotonic() + seconds

    def failed(what: str, error: BaseException) -> None:
        counts["errors"] += 1
        if len(errors) < MAX_ERRORS:
            errors.append(f"{what}: {describe(error)}")

    async def worker(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            selector = selectors[(index + n) % len(selectors)]
            n += 1
            try:
                lease = await acquire_proxy_async(
                    manager, pool_name, f"py-worker-{index}", lease_seconds, None, selector
                )
            except ProxyUnavailableError:
                # Python 0.11 picks a proxy in one transaction and leases it
                # in the next; another worker may fill it in between, and
                # create_lease then raises instead of picking again.
                counts["unavailable"] += 1
                continue
            except Exception as error:  # noqa: BLE001
                failed(f"acquire ({selector.value})", error)
                continue
            if lease is None:
                counts["misses"] += 1
                continue
            counts["acquired"] += 1
            counts[f"acquired_{selector.value}"] += 1
            try:
                held = await asyncio.to_thread(storage.get_lease, str(lease.id))
                if held is None or held.status != LeaseStatus.ACTIVE:
                    counts["errors"] += 1
                    errors.append(f"held lease {lease.id} does not read as active")
                await release_proxy_async(manager, lease)
                counts["released"] += 1
            except Exception as error:  # noqa: BLE001
                failed("get_lease/release", error)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return {"counts": dict(counts), "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--lease-seconds", type=int, default=60)
    parser.add_argument("--rust-consumer", required=True)
    args = parser.parse_args()
    passwords: Dict[str, str] = json.load(sys.stdin).get("passwords", {})

    # Every connection parameter comes from libpq's environment.
    engine = create_engine(
        "postgresql+psycopg://",
        pool_size=args.workers + 2,
        max_overflow=4,
    )
    storage = PostgresStorage(engine)
    manager = ProxyManager(storage)
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()

    read = read_everything(storage, args.pool, passwords)
    emit("read", schema=schema, **read)

    emit("working")
    result = asyncio.run(
        work(
            manager,
            storage,
            args.pool,
            args.workers,
            args.seconds,
            args.lease_seconds,
        )
    )

    leases: Optional[Dict[str, Any]] = None
    lease_errors: List[str] = []
    try:
        rows = storage.list_leases()
        leases = {
            "total": len(rows),
            "active": sum(1 for r in rows if r.status == LeaseStatus.ACTIVE),
            "rust": sum(1 for r in rows if str(r.consumer_id) == args.rust_consumer),
        }
    except Exception as error:  # noqa: BLE001
        lease_errors.append(f"list_leases: {describe(error)}")
    emit("stopped", leases=leases, lease_errors=lease_errors, **result)
    engine.dispose()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001
        emit("crash", error=describe(error))
        sys.exit(2)
