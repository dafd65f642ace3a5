"""Redis on real pods, through the operator only: cluster (scale, failover, mass restart) and sentinel.

Each scenario runs with a writer in a pod; a write it saw acknowledged must be there at the end.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.cluster import SMALL, LocalCluster, wait_for
from tests.e2e.redis_clients import (
    acknowledged,
    cluster_client,
    missing_keys,
    node_client,
    pod_addresses,
    start_writer,
    stop_writer,
    wait_for_acks,
)

pytestmark = pytest.mark.e2e

CLUSTER = "orders"
SENTINEL = "sessions"


def _members(mw: dict) -> dict[str, dict]:
    return {m["name"]: m for m in (mw.get("status") or {}).get("members", [])}


def test_cluster_ready_and_checked_by_redis_cli(local_cluster: LocalCluster, module_namespace: str) -> None:
    local_cluster.create_middleware(
        module_namespace,
        CLUSTER,
        {
            "engine": "redis",
            "topology": "cluster",
            "shards": 3,
            "replicas": 2,
            "resources": SMALL,
            "storage": {"size": "256Mi"},
        },
    )
    mw = local_cluster.wait_ready(module_namespace, CLUSTER, timeout=420)
    members = _members(mw)
    assert len(members) == 6
    assert sorted(m["role"] for m in members.values()) == ["master"] * 3 + ["replica"] * 3
    assert mw["status"]["version"] == "7.0"
    # redis-cli's own check, run inside a member pod against the pod DNS names.
    check = local_cluster.exec(
        module_namespace,
        f"{CLUSTER}-shard-0-0",
        [
            "redis-cli",
            "--cluster",
            "check",
            f"{CLUSTER}-shard-0-0.{CLUSTER}-headless.{module_namespace}.svc.cluster.local:6379",
        ],
        container="redis",
    )
    assert "[OK] All 16384 slots covered." in check, check
    assert "[ERR]" not in check, check


def test_cluster_scales_out_and_in_while_a_pod_writes(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    """Out through `moorage scale --runtime kubernetes` (it returns once the operator has applied the
    new spec and it is Ready), in through a plain spec patch: the same operator path either way."""
    writer = start_writer(local_cluster, module_namespace, CLUSTER, CLUSTER, cluster_mode=True)
    generation = local_cluster.middleware(module_namespace, CLUSTER)["metadata"]["generation"]
    refused = local_cluster.moorage("scale", CLUSTER, "-n", module_namespace, "--shards", "0")
    assert refused.returncode != 0 and "spec.shards" in refused.stderr, refused.stderr
    assert local_cluster.middleware(module_namespace, CLUSTER)["metadata"]["generation"] == generation
    done = local_cluster.moorage("scale", CLUSTER, "-n", module_namespace, "--shards", "4", "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["phase"] == "Ready" and {m.get("shard") for m in doc["members"]} == {0, 1, 2, 3}, doc
    mw = local_cluster.middleware(module_namespace, CLUSTER)
    assert mw["status"]["observedGeneration"] == generation + 1
    assert {m.get("shard") for m in _members(mw).values()} == {0, 1, 2, 3}
    client = cluster_client(local_cluster, module_namespace, CLUSTER)
    assert len(client.get_primaries()) == 4

    local_cluster.patch_middleware(module_namespace, CLUSTER, {"shards": 3})
    mw = local_cluster.wait_ready(module_namespace, CLUSTER, timeout=420, generation_at_least=generation + 2)
    assert {m.get("shard") for m in _members(mw).values()} == {0, 1, 2}
    # Its StatefulSet is pruned; the pods then end within their grace period.
    wait_for(
        "shard 3's pods to go",
        lambda: not local_cluster.pods(module_namespace, "moorage.io/shard=3"),
        120,
        interval=2,
    )
    pvcs = [
        p.metadata.name
        for p in local_cluster.core.list_namespaced_persistent_volume_claim(module_namespace).items
    ]
    assert any("shard-3" in name for name in pvcs), "shard 3's PVCs must be kept (never deleted unasked)"

    acked = stop_writer(local_cluster, module_namespace, writer)
    assert len(acked) > 50
    client = cluster_client(local_cluster, module_namespace, CLUSTER)
    assert missing_keys(client, acked) == []
    local_cluster.core.delete_namespaced_pod(writer, module_namespace, grace_period_seconds=0)


def test_deleted_master_pod_is_replaced_by_its_replica(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    before = _members(local_cluster.middleware(module_namespace, CLUSTER))
    master = next(name for name, m in before.items() if m["role"] == "master" and m.get("shard") == 1)
    replica = next(name for name, m in before.items() if m["role"] == "replica" and m.get("shard") == 1)
    client = cluster_client(local_cluster, module_namespace, CLUSTER)
    keys = [f"k-failover-{i}" for i in range(300)]
    for key in keys:
        client.set(key, "v" + key[1:])
    # Replication is asynchronous: WAIT makes each master's replica hold the writes before the crash.
    for node in client.get_primaries():
        assert node.redis_connection.execute_command("WAIT", 1, 5000) >= 1
    # As `kubectl delete pod` does it (a drain, a rolling restart): the master hands over first.
    uids = local_cluster.delete_pods(module_namespace, [master], graceful=True)

    def promoted() -> bool:
        members = _members(local_cluster.middleware(module_namespace, CLUSTER))
        return members.get(replica, {}).get("role") == "master"

    wait_for(f"{replica} promoted in status", promoted, 180, interval=2)
    local_cluster.wait_replaced(module_namespace, uids)

    def rejoined_as_replica() -> bool:
        old = _members(local_cluster.middleware(module_namespace, CLUSTER)).get(master, {})
        return old.get("role") == "replica" and bool(old.get("healthy"))

    wait_for(f"{master} back as a healthy replica in status", rejoined_as_replica, 120, interval=2)
    local_cluster.wait_ready(module_namespace, CLUSTER, timeout=300)
    assert missing_keys(cluster_client(local_cluster, module_namespace, CLUSTER), keys) == []


def test_all_pods_deleted_at_once_the_cluster_heals_by_itself(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    client = cluster_client(local_cluster, module_namespace, CLUSTER)
    keys = [f"k-mass-{i}" for i in range(500)]
    for key in keys:
        client.set(key, "v" + key[1:])
    for node in client.get_primaries():
        # AOF is fsynced every second: let it reach disk before the crash.
        node.redis_connection.execute_command("BGREWRITEAOF")
    wait_for(
        "AOF rewrites",
        lambda: all(
            n.redis_connection.info("persistence")["aof_rewrite_in_progress"] == 0
            for n in client.get_primaries()
        ),
        60,
    )
    old_ips = set(pod_addresses(local_cluster, module_namespace, CLUSTER).values())
    pods = [
        p.metadata.name for p in local_cluster.pods(module_namespace, f"app.kubernetes.io/instance={CLUSTER}")
    ]
    uids = local_cluster.delete_pods(module_namespace, pods)
    local_cluster.wait_replaced(module_namespace, uids, timeout=300)
    new_ips = set(pod_addresses(local_cluster, module_namespace, CLUSTER).values())
    assert new_ips != old_ips, "the pods came back on their old IPs: this would not test stale addresses"

    def cluster_ok() -> bool:
        password = local_cluster.password(module_namespace, CLUSTER)
        return all(node_client(ip, password).cluster("info")["cluster_state"] == "ok" for ip in new_ips)

    # Nobody edits the spec: the operator's observation heals it.
    wait_for("cluster_state ok on every member", cluster_ok, 300, interval=3)
    local_cluster.wait_ready(module_namespace, CLUSTER, timeout=300)
    assert missing_keys(cluster_client(local_cluster, module_namespace, CLUSTER), keys) == []


def test_cluster_rolling_restart_through_the_cli_nothing_lost(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    """`moorage restart --runtime kubernetes` on a Redis cluster while a pod writes: replicas' pods
    first, then each master switched over to a restarted replica of its own shard (CLUSTER FAILOVER,
    coordinated) before its pod is evicted; every pod replaced, every acknowledged write kept."""
    ns = module_namespace
    writer = start_writer(local_cluster, ns, CLUSTER, CLUSTER, cluster_mode=True)
    selector = f"app.kubernetes.io/instance={CLUSTER}"
    before = {p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, selector)}
    masters_before = {
        n for n, m in _members(local_cluster.middleware(ns, CLUSTER)).items() if m["role"] == "master"
    }

    done = local_cluster.moorage("restart", CLUSTER, "-n", ns, "-o", "json", timeout=1500)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["phase"] == "Ready" and all(m["healthy"] for m in doc["members"]), doc
    after = {p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, selector)}
    assert set(after) == set(before) and all(after[n] != before[n] for n in before), (before, after)
    masters_after = {m["name"] for m in doc["members"] if m["role"] == "master"}
    assert masters_after.isdisjoint(masters_before), (masters_before, masters_after)  # switched over first
    last = local_cluster.middleware(ns, CLUSTER)["status"]["lastOperation"]
    assert (last["action"], last["result"]) == ("restart", "Succeeded"), last

    acked = stop_writer(local_cluster, ns, writer)
    assert len(acked) > 50
    assert missing_keys(cluster_client(local_cluster, ns, CLUSTER), acked) == []
    local_cluster.core.delete_namespaced_pod(writer, ns, grace_period_seconds=0)


def test_sentinel_follows_a_deleted_master(local_cluster: LocalCluster, module_namespace: str) -> None:
    local_cluster.create_middleware(
        module_namespace,
        SENTINEL,
        {
            "engine": "redis",
            "topology": "sentinel",
            "replicas": 3,
            "sentinels": 3,
            "resources": SMALL,
            "storage": {"size": "256Mi"},
        },
    )
    mw = local_cluster.wait_ready(module_namespace, SENTINEL, timeout=420)
    members = _members(mw)
    master = next(name for name, m in members.items() if m["role"] == "master")
    writer = start_writer(local_cluster, module_namespace, SENTINEL, f"{SENTINEL}-master", cluster_mode=False)

    def master_service_pod() -> str | None:
        endpoints = local_cluster.core.read_namespaced_endpoints(f"{SENTINEL}-master", module_namespace)
        addresses = [a for s in (endpoints.subsets or []) for a in (s.addresses or [])]
        return addresses[0].target_ref.name if len(addresses) == 1 else None

    assert master_service_pod() == master
    wait_for_acks(local_cluster, module_namespace, writer, 10)
    # As `kubectl delete pod` does it: the master's preStop asks the sentinels for a failover.
    local_cluster.delete_pods(module_namespace, [master], graceful=True)

    def new_master() -> str | None:
        current = _members(local_cluster.middleware(module_namespace, SENTINEL))
        name = next((n for n, m in current.items() if m["role"] == "master" and m.get("healthy")), None)
        return name if name and name != master else None

    promoted = wait_for("a new master in status", new_master, 180, interval=2)
    wait_for("the -master Service to follow", lambda: master_service_pod() == promoted, 120, interval=2)
    local_cluster.wait_ready(module_namespace, SENTINEL, timeout=300)
    # Writes go on through the same Service name once it follows the new master.
    wait_for_acks(
        local_cluster, module_namespace, writer, acknowledged(local_cluster, module_namespace, writer) + 10
    )

    # A planned switchover asked of the operator through the CLI: the sentinels pick the new master.
    done = local_cluster.moorage("switchover", SENTINEL, "-n", module_namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    switched = next(m["name"] for m in json.loads(done.stdout)["members"] if m["role"] == "master")
    assert switched != promoted
    wait_for("the -master Service to follow the switchover", lambda: master_service_pod() == switched, 120)
    wait_for_acks(
        local_cluster, module_namespace, writer, acknowledged(local_cluster, module_namespace, writer) + 10
    )
    acked = stop_writer(local_cluster, module_namespace, writer)
    password = local_cluster.password(module_namespace, SENTINEL)
    ip = local_cluster.core.read_namespaced_pod(switched, module_namespace).status.pod_ip
    # The handover pauses writes until a replica has them all: nothing acknowledged is lost.
    lost = missing_keys(node_client(ip, password), acked)
    if lost:  # what happened around the loss, for the next one to read
        sentinels = [
            p.metadata.name
            for p in local_cluster.pods(
                module_namespace,
                f"app.kubernetes.io/instance={SENTINEL},app.kubernetes.io/component=sentinel",
            )
        ]
        logs = "\n".join(
            f"--- {p}\n{local_cluster.pod_log(module_namespace, p, 'sentinel')[-3000:]}" for p in sentinels
        )
        raise AssertionError(
            f"{len(lost)} acknowledged writes lost in a failover and a switchover: {lost[:10]}..{lost[-3:]} "
            f"(master {master}, promoted {promoted}, switched {switched})\n"
            f"{local_cluster.describe(module_namespace)}\n{logs}"
        )
