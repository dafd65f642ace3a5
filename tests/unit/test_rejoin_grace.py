"""When the operator may evict a member's pod so that it rejoins (operators/reconcile/observe.py):
never within REJOIN_GRACE of its container's last start, so a member on its way back is not evicted
in a loop. The eviction itself goes through the real API server in the e2e tier; these cases return
before any API call (``rt`` is None here, and would fail if used)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from middleware.spec import ResolvedSpec
from operators.reconcile.observe import REJOIN_GRACE, container_started_at, restart_to_rejoin
from tests.unit.manifests import middleware_spec

SPEC: ResolvedSpec = middleware_spec(
    "db", "shop", {"engine": "postgresql", "topology": "replication", "replicas": 3}
)


def _pod(*started: datetime) -> dict[str, Any]:
    return {
        "status": {
            "containerStatuses": [
                {"name": f"c{i}", "state": {"running": {"startedAt": t.strftime("%Y-%m-%dT%H:%M:%SZ")}}}
                for i, t in enumerate(started)
            ]
        }
    }


def test_the_latest_container_start_counts() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    assert container_started_at(
        _pod(now - timedelta(hours=1), now - timedelta(seconds=5))
    ) == now - timedelta(seconds=5)
    assert container_started_at({"status": {}}) is None


def test_a_member_back_a_moment_ago_is_not_evicted() -> None:
    recent = datetime.now(UTC) - timedelta(seconds=5)
    why = restart_to_rejoin(None, SPEC, {"db-2": _pod(recent)}, "db-2")  # type: ignore[arg-type]
    assert why is not None and why.startswith("its container started") and f"{REJOIN_GRACE:.0f}s" in why


def test_a_member_without_a_pod_is_not_evicted() -> None:
    assert restart_to_rejoin(None, SPEC, {}, "db-2") == "it has no pod yet"  # type: ignore[arg-type]
