"""Prometheus metrics of the operator, served on the metrics port by ``moorage operator``.

One module owns every metric so names stay consistent; handlers call the small functions below
instead of touching prometheus-client objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "moorage_reconcile_total",
    "Reconcile attempts by resource kind, handler and result (ok, retry, error, invalid).",
    ["kind", "handler", "result"],
)
RECONCILE_SECONDS = Histogram(
    "moorage_reconcile_duration_seconds",
    "Wall time of one reconcile attempt.",
    ["kind", "handler"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ENGINE_READY = Gauge(
    "moorage_middleware_ready",
    "1 when the engine reports the deployment Ready, 0 otherwise.",
    ["namespace", "name", "engine"],
)
MEMBERS_HEALTHY = Gauge(
    "moorage_middleware_members_healthy",
    "Members the engine observed healthy.",
    ["namespace", "name", "engine"],
)
WAL_ARCHIVING_FAILING = Gauge(
    "moorage_wal_archiving_failing",
    "1 when the primary's last WAL archive attempt failed (spec.backup.walArchiving), 0 when it succeeded.",
    ["namespace", "name"],
)
WAL_LAST_ARCHIVED = Gauge(
    "moorage_wal_last_archived_timestamp_seconds",
    "When the primary last archived a WAL segment (Unix time): alert on time() minus this.",
    ["namespace", "name"],
)
WAL_ARCHIVE_FAILURES = Gauge(
    "moorage_wal_archive_failed_count",
    "Failed archive attempts the primary counted since its statistics were reset (pg_stat_archiver).",
    ["namespace", "name"],
)

PITR_VERIFIED_POINT = Gauge(
    "moorage_pitr_verified_point_timestamp_seconds",
    "The moment the newest passed recovery drill restored (Unix time): when recovery was last proven.",
    ["namespace", "name"],
)

PITR_LAST_DRILL_OK = Gauge(
    "moorage_pitr_last_drill_ok",
    "1 when the newest recovery drill passed, 0 when it failed (alert on 0).",
    ["namespace", "name"],
)

SYNC_LAG_BYTES = Gauge(
    "moorage_sync_lag_bytes",
    "Bytes the source shard's master is ahead of what its redis-shake workload received.",
    ["namespace", "sync", "workload"],
)
SYNC_LAG_SECONDS = Gauge(
    "moorage_sync_lag_seconds",
    "The byte lag divided by the source's recent write rate (absent when the source did not write).",
    ["namespace", "sync", "workload"],
)
SYNC_WRITE_LAG_BYTES = Gauge(
    "moorage_sync_write_lag_bytes",
    "Bytes the source shard's master is ahead of what its redis-shake workload has written "
    "(from redis-shake's status; absent during the full sync).",
    ["namespace", "sync", "workload"],
)
SYNC_RESTARTS = Counter(
    "moorage_sync_restarts_total",
    "Workload restarts (full resyncs) the operator triggered, by reason (Restarted, Replanned).",
    ["namespace", "sync", "workload", "reason"],
)


@contextmanager
def reconcile_timer(kind: str, handler: str) -> Iterator[dict[str, str]]:
    """Time a reconcile and count it; set ``outcome["result"]`` to retry/error/invalid (default ok).
    An exception that escapes counts as ``error`` unless the handler set a result first."""
    outcome = {"result": "ok"}
    started = time.perf_counter()
    try:
        yield outcome
    except BaseException:
        if outcome["result"] == "ok":
            outcome["result"] = "error"
        raise
    finally:
        RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - started)
        RECONCILES.labels(kind, handler, outcome["result"]).inc()


def record_archiving(namespace: str, name: str, stat: Mapping[str, Any]) -> None:
    """From the primary's archiver statistics (``Observation.details["walArchiving"]``)."""
    WAL_ARCHIVING_FAILING.labels(namespace, name).set(1 if stat.get("failing") else 0)
    WAL_ARCHIVE_FAILURES.labels(namespace, name).set(int(stat.get("failedCount") or 0))
    archived = stat.get("lastArchivedTime")
    if archived:
        WAL_LAST_ARCHIVED.labels(namespace, name).set(datetime.fromisoformat(str(archived)).timestamp())


def record_verified_point(namespace: str, name: str, point: str) -> None:
    PITR_VERIFIED_POINT.labels(namespace, name).set(datetime.fromisoformat(point).timestamp())


def record_last_drill(namespace: str, name: str, ok: bool) -> None:
    PITR_LAST_DRILL_OK.labels(namespace, name).set(1 if ok else 0)


def record_health(namespace: str, name: str, engine: str, *, ready: bool, healthy_members: int) -> None:
    ENGINE_READY.labels(namespace, name, engine).set(1 if ready else 0)
    MEMBERS_HEALTHY.labels(namespace, name, engine).set(healthy_members)


def forget(namespace: str, name: str, engine: str) -> None:
    """Drop a deleted deployment's series so dashboards do not show it forever."""
    for gauge in (ENGINE_READY, MEMBERS_HEALTHY):
        with suppress(KeyError):
            gauge.remove(namespace, name, engine)


def record_sync_lag(
    namespace: str,
    sync: str,
    workload: str,
    lag_bytes: int | None,
    lag_seconds: float | None,
    write_lag_bytes: int | None = None,
) -> None:
    """Unknown lag removes the series rather than reporting a stale or invented number."""
    for gauge, value in (
        (SYNC_LAG_BYTES, lag_bytes),
        (SYNC_LAG_SECONDS, lag_seconds),
        (SYNC_WRITE_LAG_BYTES, write_lag_bytes),
    ):
        if value is None:
            with suppress(KeyError):
                gauge.remove(namespace, sync, workload)
        else:
            gauge.labels(namespace, sync, workload).set(value)


def count_sync_restart(namespace: str, sync: str, workload: str, reason: str) -> None:
    SYNC_RESTARTS.labels(namespace, sync, workload, reason).inc()


def forget_sync(namespace: str, sync: str, workload: str) -> None:
    for gauge in (SYNC_LAG_BYTES, SYNC_LAG_SECONDS, SYNC_WRITE_LAG_BYTES):
        with suppress(KeyError):
            gauge.remove(namespace, sync, workload)


def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    start_http_server(port, addr=addr, registry=registry)
