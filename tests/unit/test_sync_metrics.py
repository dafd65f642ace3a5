"""Sync lag metrics as Prometheus scrapes them from the operator's metrics port (a real HTTP server
from prometheus-client on 127.0.0.1, read with urllib)."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import REGISTRY

from operators import metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _series(text: str, name: str, workload: str) -> list[str]:
    return [
        line for line in text.splitlines() if line.startswith(name + "{") and f'workload="{workload}"' in line
    ]


def test_lag_gauges_are_exported_and_unknown_lag_removes_the_series() -> None:
    port = _free_port()
    metrics.serve(port, addr="127.0.0.1", registry=REGISTRY)
    metrics.record_sync_lag("shop", "orders", "orders-shard-0", 4096, 2.5, 8192)
    text = _scrape(port)
    assert _series(text, "moorage_sync_lag_bytes", "orders-shard-0") == [
        'moorage_sync_lag_bytes{namespace="shop",sync="orders",workload="orders-shard-0"} 4096.0'
    ]
    assert _series(text, "moorage_sync_lag_seconds", "orders-shard-0")[0].endswith(" 2.5")
    assert _series(text, "moorage_sync_write_lag_bytes", "orders-shard-0")[0].endswith(" 8192.0")

    # The source stopped answering: lag is unknown, so the series go instead of showing a stale number.
    metrics.record_sync_lag("shop", "orders", "orders-shard-0", None, None, None)
    text = _scrape(port)
    for name in ("moorage_sync_lag_bytes", "moorage_sync_lag_seconds", "moorage_sync_write_lag_bytes"):
        assert _series(text, name, "orders-shard-0") == [], name

    metrics.record_sync_lag("shop", "orders", "orders-shard-1", 0, 0.0, 0)
    metrics.count_sync_restart("shop", "orders", "orders-shard-1", "Restarted")
    text = _scrape(port)
    assert _series(text, "moorage_sync_restarts_total", "orders-shard-1")[0].endswith(" 1.0")
    metrics.forget_sync("shop", "orders", "orders-shard-1")
    assert _series(_scrape(port), "moorage_sync_lag_bytes", "orders-shard-1") == []
