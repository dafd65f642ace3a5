"""Redis on real pods, through the operator only: cluster (scale, failover, mass restart) and sentinel.

Each scenario runs with a writer in a pod; a write it saw acknowledged must be there at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import SMALL, LocalCluster, wait_for
from tests.e2e.redis_clients import (
    cluster_client,
    missing_keys,
    node_client,
    pod_addresses,
    start_writer,
    stop_writer,
)

pytestmark = pytest.mark.e2e

CLUSTER = "orders"
SENTINEL = "sessions"


@pytest.fixture(scope="module")
def redis_ns(local_cluster: LocalCluster) -> Iterator[str]:
    name = local_cluster.new_namespace("e2e-redis")
    try:
        yield name
    finally:
        local_cluster.delete_namespace(name)


def _members(mw: dict) -> dict[str, dict]:
    return {m["name"]: m for m in (mw.get("status") or {}).get("members", [])}


def test_cluster_ready_and_checked_by_redis_cli(local_cluster: LocalCluster, redis_ns: str) -> None:
    local_cluster.create_middleware(
        redis_ns,
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
    mw = local_cluster.wait_ready(redis_ns, CLUSTER, timeout=420)
    members = _members(mw)
    assert len(members) == 6
    assert sorted(m["role"] for m in members.values()) == ["master"] * 3 + ["replica"] * 3
    assert mw["status"]["version"] == "7.0"
    # redis-cli's own check, run inside a member pod against the pod DNS names.
    check = local_cluster.exec(
        redis_ns,
        f"{CLUSTER}-shard-0-0",
        [
            "redis-cli",
            "--cluster",
            "check",
            f"{CLUSTER}-shard-0-0.{CLUSTER}-headless.{redis_ns}.svc.cluster.local:6379",
        ],
        container="redis",
    )
    assert "[OK] All 16384 slots covered." in check, check
    assert "[ERR]" not in check, check


def test_cluster_scales_out_and_in_while_a_pod_writes(local_cluster: LocalCluster, redis_ns: str) -> None:
    writer = start_writer(local_cluster, redis_ns, CLUSTER, CLUSTER, cluster_mode=True)
    generation = local_cluster.middleware(redis_ns, CLUSTER)["metadata"]["generation"]
    local_cluster.patch_middleware(redis_ns, CLUSTER, {"shards": 4})
    mw = local_cluster.wait_ready(redis_ns, CLUSTER, timeout=420, generation_at_least=generation + 1)
    assert {m.get("shard") for m in _members(mw).values()} == {0, 1, 2, 3}
    client = cluster_client(local_cluster, redis_ns, CLUSTER)
    assert len(client.get_primaries()) == 4

    local_cluster.patch_middleware(redis_ns, CLUSTER, {"shards": 3})
    mw = local_cluster.wait_ready(redis_ns, CLUSTER, timeout=420, generation_at_least=generation + 2)
    assert {m.get("shard") for m in _members(mw).values()} == {0, 1, 2}
    # Its StatefulSet is pruned; the pods then end within their grace period.
    wait_for(
        "shard 3's pods to go",
        lambda: not local_cluster.pods(redis_ns, "moorage.io/shard=3"),
        120,
        interval=2,
    )
    pvcs = [
        p.metadata.name for p in local_cluster.core.list_namespaced_persistent_volume_claim(redis_ns).items
    ]
    assert any("shard-3" in name for name in pvcs), "shard 3's PVCs must be kept (never deleted unasked)"

    acked = stop_writer(local_cluster, redis_ns, writer)
    assert len(acked) > 50
    client = cluster_client(local_cluster, redis_ns, CLUSTER)
    assert missing_keys(client, acked) == []
    local_cluster.core.delete_namespaced_pod(writer, redis_ns, grace_period_seconds=0)


def test_deleted_master_pod_is_replaced_by_its_replica(local_cluster: LocalCluster, redis_ns: str) -> None:
    before = _members(local_cluster.middleware(redis_ns, CLUSTER))
    master = next(name for name, m in before.items() if m["role"] == "master" and m.get("shard") == 1)
    replica = next(name for name, m in before.items() if m["role"] == "replica" and m.get("shard") == 1)
    client = cluster_client(local_cluster, redis_ns, CLUSTER)
    keys = [f"k-failover-{i}" for i in range(300)]
    for key in keys:
        client.set(key, "v" + key[1:])
    # Replication is asynchronous: WAIT makes each master's replica hold the writes before the crash.
    for node in client.get_primaries():
        assert node.redis_connection.execute_command("WAIT", 1, 5000) >= 1
    # As `kubectl delete pod` does it (a drain, a rolling restart): the master hands over first.
    uids = local_cluster.delete_pods(redis_ns, [master], graceful=True)

    def promoted() -> bool:
        members = _members(local_cluster.middleware(redis_ns, CLUSTER))
        return members.get(replica, {}).get("role") == "master"

    wait_for(f"{replica} promoted in status", promoted, 180, interval=2)
    local_cluster.wait_replaced(redis_ns, uids)

    def rejoined_as_replica() -> bool:
        old = _members(local_cluster.middleware(redis_ns, CLUSTER)).get(master, {})
        return old.get("role") == "replica" and bool(old.get("healthy"))

    wait_for(f"{master} back as a healthy replica in status", rejoined_as_replica, 120, interval=2)
    local_cluster.wait_ready(redis_ns, CLUSTER, timeout=300)
    assert missing_keys(cluster_client(local_cluster, redis_ns, CLUSTER), keys) == []


def test_all_pods_deleted_at_once_the_cluster_heals_by_itself(
    local_cluster: LocalCluster, redis_ns: str
) -> None:
    client = cluster_client(local_cluster, redis_ns, CLUSTER)
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
    old_ips = set(pod_addresses(local_cluster, redis_ns, CLUSTER).values())
    pods = [p.metadata.name for p in local_cluster.pods(redis_ns, f"app.kubernetes.io/instance={CLUSTER}")]
    uids = local_cluster.delete_pods(redis_ns, pods)
    local_cluster.wait_replaced(redis_ns, uids, timeout=300)
    new_ips = set(pod_addresses(local_cluster, redis_ns, CLUSTER).values())
    assert new_ips != old_ips, "the pods came back on their old IPs: this would not test stale addresses"

    def cluster_ok() -> bool:
        password = local_cluster.password(redis_ns, CLUSTER)
        return all(node_client(ip, password).cluster("info")["cluster_state"] == "ok" for ip in new_ips)

    # Nobody edits the spec: the operator's observation heals it.
    wait_for("cluster_state ok on every member", cluster_ok, 300, interval=3)
    local_cluster.wait_ready(redis_ns, CLUSTER, timeout=300)
    assert missing_keys(cluster_client(local_cluster, redis_ns, CLUSTER), keys) == []


def test_sentinel_follows_a_deleted_master(local_cluster: LocalCluster, redis_ns: str) -> None:
    local_cluster.create_middleware(
        redis_ns,
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
    mw = local_cluster.wait_ready(redis_ns, SENTINEL, timeout=420)
    members = _members(mw)
    master = next(name for name, m in members.items() if m["role"] == "master")
    writer = start_writer(local_cluster, redis_ns, SENTINEL, f"{SENTINEL}-master", cluster_mode=False)

    def master_service_pod() -> str | None:
        endpoints = local_cluster.core.read_namespaced_endpoints(f"{SENTINEL}-master", redis_ns)
        addresses = [a for s in (endpoints.subsets or []) for a in (s.addresses or [])]
        return addresses[0].target_ref.name if len(addresses) == 1 else None

    assert master_service_pod() == master
    # As `kubectl delete pod` does it: the master's preStop asks the sentinels for a failover.
    local_cluster.delete_pods(redis_ns, [master], graceful=True)

    def new_master() -> str | None:
        current = _members(local_cluster.middleware(redis_ns, SENTINEL))
        name = next((n for n, m in current.items() if m["role"] == "master" and m.get("healthy")), None)
        return name if name and name != master else None

    promoted = wait_for("a new master in status", new_master, 180, interval=2)
    wait_for("the -master Service to follow", lambda: master_service_pod() == promoted, 120, interval=2)
    local_cluster.wait_ready(redis_ns, SENTINEL, timeout=300)
    acked = stop_writer(local_cluster, redis_ns, writer)
    password = local_cluster.password(redis_ns, SENTINEL)
    ip = local_cluster.core.read_namespaced_pod(promoted, redis_ns).status.pod_ip
    # The handover pauses writes until a replica has them all: nothing acknowledged is lost.
    lost = missing_keys(node_client(ip, password), acked)
    assert len(acked) > 50
    assert lost == [], f"{len(lost)} acknowledged writes lost in a sentinel failover: {lost[:10]}"
