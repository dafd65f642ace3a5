"""What a user sees when a member can never start: the Middleware's status names the member and
the reason the pod gives, instead of a silent wait."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e


def test_an_unschedulable_member_is_named_with_the_schedulers_reason(
    local_cluster: LocalCluster, namespace: str
) -> None:
    # More CPU than the node has: the scheduler says so on the pod.
    local_cluster.create_middleware(
        namespace,
        "toobig",
        {
            "engine": "redis",
            "topology": "standalone",
            "resources": {"cpu": "64", "memory": "128Mi"},
            "storage": {"size": "64Mi"},
        },
    )

    def failing_for_cpu() -> dict:
        status = local_cluster.middleware(namespace, "toobig").get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if status.get("phaseReason") != "MemberFailing" or ready is None:
            raise AssertionError(f"phaseReason {status.get('phaseReason')!r}")
        # The scheduler's first verdict can be about the volume claim not yet bound by the provisioner;
        # it tries again once the claim is bound, and that verdict is about the CPU.
        if "Insufficient cpu" not in ready["message"]:
            raise AssertionError(ready["message"])
        return ready

    ready = wait_for("MemberFailing naming the scheduler's CPU verdict", failing_for_cpu, 180, interval=2)
    assert ready["status"] == "False"
    assert "toobig-0: Unschedulable" in ready["message"], ready["message"]
    events = local_cluster.kubectl(
        "-n", namespace, "get", "events", "--field-selector", "reason=MemberFailing"
    )
    assert "toobig-0" in events
