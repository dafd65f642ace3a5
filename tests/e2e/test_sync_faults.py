"""Sync supervision under the operator on real pods, with a writer running on the source the whole
time: the faults of the field reports (issue: a dead reader restarted against the same address, a
target failover leaving every workload writing to a replica) made for real, one after the other:

1. the source fails over (``CLUSTER FAILOVER`` on a replica of shard 0): that shard's workload is
   re-planned;
2. the pod a workload reads from is killed (deleted, grace 0);
3. the target fails over (``SENTINEL FAILOVER``): the writes follow the new master;
4. a redis-shake pod is killed;
5. a redis-shake process stalls (SIGSTOP): supervision sees no progress and rolls its pod;
6. redis-shake is killed inside its container (SIGKILL, what the OOM killer sends): the kubelet
   restarts it in place, supervision rolls the pod so its share is emptied first;
7. the source restarts with its data (every pod deleted at once).

After each, every write the source acknowledged so far must reach the target's master of the
moment. At the end the writer stops and ``moorage sync cutover`` (pause, drain, ``sync verify``,
stop) must find 0 differences. The other faults (a stall, a 30 s network cut, the source restarting
with its data, a reshard) are proven on real servers by the local runtime's supervision, which is
the same decision code (``tests/integration/test_sync_local.py``); a TCP cut between pods needs a
network policy engine this node does not run (docs/TESTING.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.cluster import GROUP, SMALL, VERSION, LocalCluster, wait_for
from tests.e2e.dba import dba_account, in_a_dba_pod
from tests.e2e.redis_clients import (
    acknowledged,
    missing_keys,
    node_client,
    start_writer,
    stop_writer,
    wait_for_acks,
)

pytestmark = pytest.mark.e2e

SOURCE, TARGET, SYNC = "shop", "standby", "shop-to-standby"
SHAKE_IMAGE = "localhost/moorage/redis-shake:v4.2.0"
ARRIVAL_TIMEOUT = 240


def _members(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(cluster.middleware(namespace, name)["status"]["members"])


def _ip(cluster: LocalCluster, namespace: str, pod: str) -> str:
    return str(cluster.core.read_namespaced_pod(pod, namespace).status.pod_ip)


def _target_master_ip(cluster: LocalCluster, namespace: str) -> str | None:
    """The target's master as its data nodes say (ROLE), not as a status that may lag a failover."""
    password = cluster.password(namespace, TARGET)
    for pod in cluster.pods(
        namespace, f"app.kubernetes.io/instance={TARGET},app.kubernetes.io/component=data"
    ):
        if not pod.status.pod_ip:
            continue
        try:
            with node_client(pod.status.pod_ip, password) as client:
                if client.execute_command("ROLE")[0] == "master":
                    return str(pod.status.pod_ip)
        except Exception:  # a member restarting: ask the others
            continue
    return None


def _workloads(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    body: Any = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", SYNC)
    return {w["name"]: w for w in (body.get("status") or {}).get("workloads") or []}


def _container_process(pod: str, executable: str) -> int:
    """The node's PID of ``executable`` in ``pod`` (a container's process is a process of this
    machine, its HOSTNAME the pod's name)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0] == executable.encode() and f"HOSTNAME={pod}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no {executable} process of pod {pod} on this node")


def _more_acks(cluster: LocalCluster, namespace: str, writer: str, count: int = 100) -> None:
    """``count`` more acknowledged writes from now: the source takes writes after the fault."""
    wait_for_acks(cluster, namespace, writer, acknowledged(cluster, namespace, writer) + count)


def _all_healthy(cluster: LocalCluster, namespace: str) -> bool:
    workloads = _workloads(cluster, namespace)
    pods = cluster.pods(namespace, "app.kubernetes.io/name=redis-shake")
    ready = [
        p for p in pods if p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
    ]
    states = {w["state"] for w in workloads.values()}
    return len(workloads) == 3 and states == {"Healthy"} and len(pods) == len(ready) == 3


def _all_acked_arrive(cluster: LocalCluster, namespace: str, writer: str, after: str) -> None:
    acked = [
        line.split()[1] for line in cluster.pod_log(namespace, writer).splitlines() if line.startswith("ack ")
    ]
    assert acked, "the writer has no acknowledged write"

    def arrived() -> bool:
        ip = _target_master_ip(cluster, namespace)
        if ip is None:
            return False
        with node_client(ip, cluster.password(namespace, TARGET)) as client:
            return missing_keys(client, acked) == []

    wait_for(
        f"the {len(acked)} writes acknowledged so far on the target ({after})", arrived, ARRIVAL_TIMEOUT, 2
    )


def test_sync_survives_source_and_target_failovers_and_killed_pods_with_a_writer_running(
    local_cluster: LocalCluster, namespace: str
) -> None:
    ns = namespace
    local_cluster.create_middleware(
        ns,
        SOURCE,
        {
            "engine": "redis",
            "topology": "cluster",
            "shards": 3,
            "replicas": 2,
            "resources": SMALL,
            "storage": {"size": "256Mi"},
        },
    )
    local_cluster.create_middleware(
        ns,
        TARGET,
        {
            "engine": "redis",
            "topology": "sentinel",
            "replicas": 2,
            "sentinels": 3,
            "resources": SMALL,
            "storage": {"size": "256Mi"},
        },
    )
    local_cluster.wait_ready(ns, SOURCE, timeout=420)
    local_cluster.wait_ready(ns, TARGET, timeout=420)
    local_cluster.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RedisSync",
            "metadata": {"name": SYNC, "namespace": ns},
            "spec": {
                "source": {"middleware": {"name": SOURCE}},
                "target": {"middleware": {"name": TARGET}},
                "image": SHAKE_IMAGE,
                "resources": {"cpu": "100m", "memory": "128Mi"},
            },
        },
        ns,
    )
    wait_for(
        "three workloads syncing",
        lambda: (
            len(w := _workloads(local_cluster, ns)) == 3
            and all(x["state"] not in ("Pending", "") for x in w.values())
        ),
        300,
        interval=2,
    )
    writer = start_writer(local_cluster, ns, SOURCE, SOURCE, cluster_mode=True)
    wait_for_acks(local_cluster, ns, writer, 200)
    _all_acked_arrive(local_cluster, ns, writer, "before any fault")

    # 1. The source fails over: shard 0's replica takes over; its workload is re-planned.
    shard0 = f"{SYNC}-shard-0"
    replica0 = next(
        m["name"] for m in _members(local_cluster, ns, SOURCE) if m["shard"] == 0 and m["role"] == "replica"
    )
    restarts_before = _workloads(local_cluster, ns)[shard0]["restarts"]
    with node_client(_ip(local_cluster, ns, replica0), local_cluster.password(ns, SOURCE)) as client:
        assert client.execute_command("CLUSTER", "FAILOVER")

    def replanned() -> dict[str, Any] | None:
        workload = _workloads(local_cluster, ns)[shard0]
        moved = workload["restarts"] > restarts_before and "now reading" in str(workload["lastRestartReason"])
        return workload if moved else None

    moved = wait_for(f"{shard0} re-planned after the source failover", replanned, 180, interval=2)
    assert "master" in moved["lastRestartReason"], moved
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after the source failover")

    # 2. The pod a workload reads from is killed.
    shard1 = f"{SYNC}-shard-1"
    reader = _workloads(local_cluster, ns)[shard1]["source"].split(".")[0].split(":")[0]
    assert reader.startswith(SOURCE), reader
    killed = local_cluster.delete_pods(ns, [reader])
    local_cluster.wait_replaced(ns, killed)
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, f"after {reader}, which {shard1} read, was killed")

    # 3. The target fails over: the workloads write to the new master.
    old_master = _target_master_ip(local_cluster, ns)
    sentinel = next(
        p.status.pod_ip
        for p in local_cluster.pods(
            ns, f"app.kubernetes.io/instance={TARGET},app.kubernetes.io/component=sentinel"
        )
    )
    password = local_cluster.password(ns, TARGET)
    with redis.Redis(host=sentinel, port=26379, password=password, socket_timeout=5) as client:
        assert client.execute_command("SENTINEL", "FAILOVER", TARGET)
    wait_for(
        "the target's new master",
        lambda: (ip := _target_master_ip(local_cluster, ns)) is not None and ip != old_master,
        120,
        interval=1,
    )
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after the target failover")

    # 4. A redis-shake pod is killed.
    (shake,) = local_cluster.pods(ns, f"app.kubernetes.io/component={SYNC}-shard-2")
    local_cluster.delete_pods(ns, [shake.metadata.name])
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after a redis-shake pod was killed")

    # 5. A redis-shake process stalls (SIGSTOP from the node: the container's process is the
    # node's): no progress while the source writes; supervision rolls its pod.
    shard1_restarts = _workloads(local_cluster, ns)[shard1]["restarts"]
    (stalled_pod,) = local_cluster.pods(ns, f"app.kubernetes.io/component={shard1}")
    frozen = _container_process(stalled_pod.metadata.name, "/app/redis-shake")
    os.kill(frozen, signal.SIGSTOP)
    try:
        restarted = wait_for(
            f"{shard1} restarted by supervision while frozen",
            lambda: (w := _workloads(local_cluster, ns)[shard1])["restarts"] > shard1_restarts and w,
            300,
            interval=2,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)
    assert "no progress" in restarted["lastRestartReason"] or "silent" in restarted["lastRestartReason"], (
        restarted
    )
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after a stalled redis-shake was restarted")

    # 6. redis-shake killed inside its container (SIGKILL from the node, what the OOM killer sends):
    # the kubelet restarts it in the same pod, over a share its first run filled; supervision rolls
    # the pod so the share is emptied first (its clear-share init container).
    shard2 = f"{SYNC}-shard-2"
    shard2_restarts = _workloads(local_cluster, ns)[shard2]["restarts"]
    (oom_pod,) = local_cluster.pods(ns, f"app.kubernetes.io/component={shard2}")
    os.kill(_container_process(oom_pod.metadata.name, "/app/redis-shake"), signal.SIGKILL)
    rolled = wait_for(
        f"{shard2}'s pod rolled after redis-shake restarted inside it",
        lambda: (w := _workloads(local_cluster, ns)[shard2])["restarts"] > shard2_restarts and w,
        300,
        interval=2,
    )
    assert "restarted in its pod" in rolled["lastRestartReason"], rolled
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after redis-shake was killed inside its pod")

    # 7. The source restarts with its data: every pod of the cluster deleted at once.
    source_pods = [p.metadata.name for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={SOURCE}")]
    local_cluster.wait_replaced(ns, local_cluster.delete_pods(ns, source_pods))
    _more_acks(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after every source pod restarted")

    # The end: nothing acknowledged lost, and the cutover's verify finds no difference. The cutover
    # runs where the Redis pods and their DNS names are reachable, as docs/operations.md tells a
    # DBA: in a pod of Moorage's image, as a ServiceAccount bound to the moorage-dba roles.
    acked = stop_writer(local_cluster, ns, writer)
    _all_acked_arrive(local_cluster, ns, writer, "after the writer stopped")
    # A DBA cuts over a sync that is streaming again: every workload Healthy, its pod Ready.
    wait_for("every workload Healthy again", lambda: _all_healthy(local_cluster, ns), 300, interval=2)
    with dba_account(local_cluster, ns) as account:
        report = in_a_dba_pod(
            local_cluster,
            ns,
            account,
            f"moorage sync cutover {SYNC} -n {ns} --yes --unpause -o json",
            diagnostics=("redissyncs",),
        )
    assert report["ok"] is True and report["step"] == "done", report
    assert report["verify"]["equal"] is True, report["verify"]
    assert len(acked) >= 1000
    sync = local_cluster.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "redissyncs", SYNC)
    assert sync["spec"]["direction"] == "Stopped"
