"""ZooKeeper on real pods, through the operator only: an ensemble scales 3 -> 5 -> 3 by dynamic
reconfig while a client in a pod writes; quorum is never lost and no acknowledged write is."""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient

from tests.e2e.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

NAME = "coord"
ZK_IMAGE = "localhost/moorage/zookeeper:3.8"
RESOURCES = {"cpu": "200m", "memory": "384Mi"}

# One long zkCli session fed a create every 100 ms: "Created /e2e/kN" is an acknowledged write,
# and any loss of quorum shows as a connection loss in its output.
WRITER = r"""
( echo "create /e2e x"
  i=0
  while [ ! -e /tmp/stop ]; do i=$((i+1)); echo "create /e2e/k$i v$i"; sleep 0.1; done
  echo "quit" ) | zkCli.sh -server "$SERVERS" 2>&1 \
  | grep -E --line-buffered 'Created|KeeperErrorCode|Disconnected|Expired'
echo "stopped"
sleep 3600
"""


def test_ensemble_scales_3_5_3_while_a_pod_writes(local_cluster: LocalCluster, module_namespace: str) -> None:
    local_cluster.create_middleware(
        module_namespace,
        NAME,
        {
            "engine": "zookeeper",
            "topology": "ensemble",
            "replicas": 3,
            "resources": RESOURCES,
            "storage": {"size": "256Mi"},
        },
    )
    mw = local_cluster.wait_ready(module_namespace, NAME, timeout=480)
    assert sorted(m["role"] for m in mw["status"]["members"]) == ["follower", "follower", "leader"]
    # The members that stay through the whole scale: a disconnection is then a real loss of service,
    # not the client's own server leaving.
    servers = ",".join(
        f"{NAME}-{i}.{NAME}-headless.{module_namespace}.svc.cluster.local:2181" for i in range(3)
    )
    local_cluster.run_pod(module_namespace, "writer", ZK_IMAGE, WRITER, env={"SERVERS": servers})
    wait_for(
        "the writer's first write",
        lambda: "Created /e2e/k" in local_cluster.pod_log(module_namespace, "writer"),
        180,
    )

    generation = mw["metadata"]["generation"]
    local_cluster.patch_middleware(module_namespace, NAME, {"replicas": 5})
    mw = local_cluster.wait_ready(module_namespace, NAME, timeout=480, generation_at_least=generation + 1)
    assert len(mw["status"]["members"]) == 5
    local_cluster.patch_middleware(module_namespace, NAME, {"replicas": 3})
    mw = local_cluster.wait_ready(module_namespace, NAME, timeout=480, generation_at_least=generation + 2)
    assert len(mw["status"]["members"]) == 3

    local_cluster.exec(module_namespace, "writer", ["touch", "/tmp/stop"])
    wait_for("the writer to stop", lambda: "stopped" in local_cluster.pod_log(module_namespace, "writer"), 60)
    log = local_cluster.pod_log(module_namespace, "writer")
    acked = {line.split()[-1] for line in log.splitlines() if line.startswith("Created /e2e/k")}
    assert len(acked) > 30, log[-2000:]
    assert "Disconnected" not in log and "Expired" not in log, f"quorum lost while scaling:\n{log[-2000:]}"

    ip = local_cluster.core.read_namespaced_service(NAME, module_namespace).spec.cluster_ip
    zk = KazooClient(hosts=f"{ip}:2181", timeout=10)
    zk.start(timeout=30)
    try:
        stored = {f"/e2e/{child}" for child in zk.get_children("/e2e")}
    finally:
        zk.stop()
    assert acked - stored == set(), f"acknowledged writes lost: {sorted(acked - stored)[:20]}"
