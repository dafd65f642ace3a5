"""Cross-cluster Redis sync on real pods (the DCE scenario): a 3-shard cluster replicated into a
sentinel deployment by one real redis-shake pod per source shard, under the operator, as
examples/redis-sync.yaml asks for it (its key filter included): keys under its prefixes written
before and during the sync arrive, others never do, lag is reported in seconds."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import GROUP, SMALL, VERSION, LocalCluster, wait_for
from tests.e2e.redis_clients import cluster_client, missing_keys, node_client
from tests.example_files import document

pytestmark = pytest.mark.e2e

SOURCE, TARGET, SYNC = "orders", "replica", "orders-to-replica"
EXAMPLE = document("redis-sync.yaml", "RedisSync")
USERS, SESSIONS = EXAMPLE["spec"]["filter"]["allowKeyPrefixes"]


def _target_master(cluster: LocalCluster, namespace: str) -> object:
    mw = cluster.middleware(namespace, TARGET)
    master = next(m["name"] for m in mw["status"]["members"] if m["role"] == "master")
    ip = cluster.core.read_namespaced_pod(master, namespace).status.pod_ip
    return node_client(ip, cluster.password(namespace, TARGET))


def test_cluster_into_sentinel_through_real_redis_shake_pods(
    local_cluster: LocalCluster, namespace: str
) -> None:
    local_cluster.create_middleware(
        namespace,
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
        namespace,
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
    local_cluster.wait_ready(namespace, SOURCE, timeout=420)
    local_cluster.wait_ready(namespace, TARGET, timeout=420)
    source = cluster_client(local_cluster, namespace, SOURCE)
    before = [f"{USERS}before-{i}" for i in range(2000)]
    for key in before:
        source.set(key, "v" + key[1:])
    # Lists: a full sync over a share that was not emptied appends them a second time (#921).
    lists = [f"{SESSIONS}list-{i}" for i in range(60)]
    for key in lists:
        source.rpush(key, *range(5))
    filtered_out = [f"cache:{i}" for i in range(200)]  # no allowed prefix: never copied
    for key in filtered_out:
        source.set(key, "x")

    # The example as a user applies it, with this test's Middleware names; its own image, filter
    # and direction. Smaller requests than its 250m: the node also runs both deployments.
    sync = document("redis-sync.yaml", "RedisSync")
    sync["metadata"]["name"] = SYNC
    sync["spec"]["source"]["middleware"]["name"] = SOURCE
    sync["spec"]["target"]["middleware"]["name"] = TARGET
    sync["spec"]["resources"] = {"cpu": "100m", "memory": "128Mi"}
    local_cluster.apply(sync, namespace)

    def workloads_running() -> list | None:
        deployments = local_cluster.apps.list_namespaced_deployment(
            namespace, label_selector="app.kubernetes.io/name=redis-shake"
        ).items
        ready = [d for d in deployments if (d.status.ready_replicas or 0) == 1]
        return deployments if len(deployments) == 3 and len(ready) == 3 else None

    wait_for("three redis-shake pods Ready (one per source shard)", workloads_running, 300, interval=2)
    target = _target_master(local_cluster, namespace)
    wait_for(
        "the keys written before the sync on the target",
        lambda: missing_keys(target, before) == [],
        180,
        interval=2,
    )

    during = [f"{SESSIONS}during-{i}" for i in range(500)]
    for key in during:
        source.set(key, "v" + key[1:])
    wait_for(
        "the keys written during the sync on the target",
        lambda: missing_keys(target, during) == [],
        120,
        interval=2,
    )

    def status_reports_heartbeat_lag() -> list | None:
        sync = local_cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "redissyncs", SYNC
        )
        workloads = (sync.get("status") or {}).get("workloads") or []
        beating = [w for w in workloads if w.get("lagSecondsFrom") == "heartbeat"]
        return workloads if len(workloads) == 3 and len(beating) == 3 else None

    # Lag in seconds from the heartbeat key the operator writes on each source shard and reads back
    # on the target (redis-shake itself reports bytes only).
    workloads = wait_for("status.workloads with heartbeat lag", status_reports_heartbeat_lag, 180, interval=2)
    assert all(w["state"] for w in workloads), workloads
    assert all(0 <= w["lagSeconds"] < 60 for w in workloads), workloads
    assert all(target.llen(key) == 5 for key in lists)

    # A redis-shake pod deleted (a drain, an eviction): its replacement is a full sync, which its
    # clear-share init container makes over an emptied share; no list is appended twice.
    (old,) = local_cluster.pods(namespace, f"app.kubernetes.io/component={SYNC}-shard-0")
    local_cluster.core.delete_namespaced_pod(old.metadata.name, namespace)

    def replaced() -> str | None:
        pods = [
            p
            for p in local_cluster.pods(namespace, f"app.kubernetes.io/component={SYNC}-shard-0")
            if p.metadata.uid != old.metadata.uid and p.status.phase == "Running"
        ]
        ready = [p for p in pods if all(c.ready for c in (p.status.container_statuses or []))]
        return ready[0].metadata.name if ready else None

    new_pod = wait_for("shard 0's redis-shake pod replaced and Ready", replaced, 180, interval=2)
    cleared = local_cluster.pod_log(namespace, new_pod, container="clear-share")
    assert "emptied its share" in cleared, cleared
    after = [f"{USERS}after-{i}" for i in range(300)]
    for key in after:
        source.set(key, "v" + key[1:])
    wait_for("the keys written after the pod came back", lambda: missing_keys(target, after) == [], 120, 2)
    assert {key: target.llen(key) for key in lists} == dict.fromkeys(lists, 5)
    assert target.exists(*filtered_out) == 0, "keys outside the example's filter were copied"

    local_cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "redissyncs", SYNC, {"spec": {"direction": "Stopped"}}
    )
    wait_for(
        "the workloads removed on Stopped",
        lambda: (
            not local_cluster.apps.list_namespaced_deployment(
                namespace, label_selector="app.kubernetes.io/name=redis-shake"
            ).items
        ),
        120,
        interval=2,
    )
    # Every key the test wrote, and nothing else but the operator's heartbeat keys (one per shard).
    keys = set(target.scan_iter(count=1000))
    heartbeats = {k for k in keys if k.startswith("__moorage_sync__:heartbeat:")}
    assert len(heartbeats) == 3, heartbeats
    assert keys - heartbeats == set(before) | set(during) | set(after) | set(lists)
