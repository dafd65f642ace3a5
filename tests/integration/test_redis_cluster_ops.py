"""Redis Cluster live operations (``middleware.engines.redis.cluster``) on real redis-server 7 processes.

Every cluster here runs with a password, announces hostnames, and is checked against the servers
themselves (CLUSTER NODES / COUNTKEYSINSLOT / the keys), not against our own view of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import pytest
import redis
from redis.cluster import ClusterNode as ClientNode
from redis.cluster import RedisCluster
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.redis import cluster
from middleware.engines.redis.cluster import ClusterView, parse_cluster_nodes
from middleware.engines.redis.slots import TOTAL_SLOTS
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, wait_until

pytestmark = pytest.mark.integration

DEADLINE = 60.0


# --- helpers ---------------------------------------------------------------------------------------


def endpoints(processes: Iterable[RedisProcess]) -> list[Endpoint]:
    return [p.endpoint for p in processes]


def shards_of(processes: Sequence[RedisProcess], per_shard: int = 2) -> list[list[Endpoint]]:
    return [endpoints(processes[i : i + per_shard]) for i in range(0, len(processes), per_shard)]


def raw_nodes(process: RedisProcess) -> list[cluster.NodeEntry]:
    with process.client() as client:
        return parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))


def node_id(process: RedisProcess) -> str:
    with process.client() as client:
        return str(client.execute_command("CLUSTER", "MYID"))


def slot_map(process: RedisProcess) -> dict[int, str]:
    """slot -> owner id, as this node's own CLUSTER NODES says."""
    return {
        slot: entry.id
        for entry in raw_nodes(process)
        for first, last in entry.slots
        for slot in range(first, last + 1)
    }


def client_for(process: RedisProcess) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClientNode(process.endpoint.host, process.endpoint.port)],
        password=PASSWORD,
        decode_responses=True,
        socket_timeout=5.0,
    )


def load(client: RedisCluster, prefix: str, count: int) -> list[str]:
    keys = [f"{prefix}:{i}" for i in range(count)]
    for start in range(0, count, 1000):
        pipe = client.pipeline()
        for key in keys[start : start + 1000]:
            pipe.set(key, key)
        pipe.execute()
    return keys


def missing_keys(client: RedisCluster, keys: Sequence[str]) -> list[str]:
    missing: list[str] = []
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline()
        for key in chunk:
            pipe.get(key)
        values = pipe.execute()
        missing += [k for k, v in zip(chunk, values, strict=True) if v != k]
    return missing


class Writer(threading.Thread):
    """Writes numbered keys until stopped, a count is reached, or a deadline passes; records acks."""

    def __init__(
        self, client: RedisCluster, prefix: str, limit: int = 500_000, seconds: float = 120.0
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix, self.limit = client, prefix, limit
        self.deadline = time.monotonic() + seconds
        self.acknowledged: list[str] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        for i in range(self.limit):
            if self.halt.is_set() or time.monotonic() > self.deadline:
                return
            key = f"{self.prefix}:{i}"
            try:
                self.client.set(key, key)
                self.acknowledged.append(key)
            except (redis.RedisError, AttributeError) as exc:
                # Not acknowledged, so the client would retry it; only acknowledged writes must survive.
                # AttributeError: redis-py 8.1 RedisCluster crashes on an ASK to a node missing from its
                # node cache (get_node() returns None) instead of refreshing; the write was not done.
                self.errors.append(repr(exc))
                time.sleep(0.01)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        assert not self.is_alive(), "writer thread did not stop"


def assert_healthy(view: ClusterView, masters: int) -> None:
    assert view.problems() == [], view.problems()
    assert view.cluster_state == "ok"
    assert view.slots_assigned == TOTAL_SLOTS
    assert not view.open_slots
    counts = sorted(node.slot_count for node in view.masters)
    assert len(counts) == masters, counts
    assert counts[-1] - counts[0] <= 1, f"slots not even: {counts}"


def owners_everywhere(processes: Iterable[RedisProcess]) -> list[dict[int, str]]:
    return [slot_map(p) for p in processes]


# --- tests -----------------------------------------------------------------------------------------


def test_create_idempotent_then_add_and_remove_a_shard_under_writes(redis_group: RedisNodes) -> None:
    nodes = redis_group.start(8)
    base, extra = nodes[:6], nodes[6:]
    shards = shards_of(base)

    created = cluster.create_cluster(shards, PASSWORD)
    assert created.changed
    view = cluster.observe_cluster(endpoints(base), PASSWORD)
    assert_healthy(view, masters=3)
    for shard in shards:
        master, replica = view.by_endpoint(shard[0]), view.by_endpoint(shard[1])
        assert master is not None and replica is not None
        assert master.role == "master" and replica.role == "replica" and replica.master_id == master.id
    maps = owners_everywhere(base)
    assert all(m == maps[0] for m in maps) and len(maps[0]) == TOTAL_SLOTS

    epochs = [int(p.client().cluster("info")["cluster_current_epoch"]) for p in base]
    again = cluster.create_cluster(shards, PASSWORD)
    assert not again.changed and again.actions == []
    assert owners_everywhere(base) == maps, "a rerun must not move a single slot"
    assert [int(p.client().cluster("info")["cluster_current_epoch"]) for p in base] == epochs

    client = client_for(base[0])
    keys = load(client, "seed", 20_000)

    # Scale out while a client keeps writing.
    progress: list[tuple[int, int]] = []
    writer = Writer(client_for(base[2]), "during-add")
    writer.start()
    try:
        added = cluster.add_shards(
            endpoints(base), [endpoints(extra)], PASSWORD, progress=lambda d, t: progress.append((d, t))
        )
    finally:
        writer.stop()
    assert writer.acknowledged, "the writer must have written during the reshard"
    assert added.moved_slots == TOTAL_SLOTS // 4
    assert progress[-1] == (TOTAL_SLOTS // 4, TOTAL_SLOTS // 4)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)

    view = cluster.observe_cluster(endpoints(nodes), PASSWORD)
    assert_healthy(view, masters=4)
    new_master, new_replica = view.by_endpoint(extra[0].endpoint), view.by_endpoint(extra[1].endpoint)
    assert new_master is not None and new_master.slot_count == TOTAL_SLOTS // 4
    assert new_replica is not None and new_replica.master_id == new_master.id
    client = client_for(base[0])
    assert missing_keys(client, keys + writer.acknowledged) == []
    with extra[0].client() as direct:
        assert direct.dbsize() > 0, "the new master must hold keys, not just slots"

    assert not cluster.add_shards(endpoints(base), [endpoints(extra)], PASSWORD).changed

    # Scale back in while writing.
    removed_ids = {node_id(p) for p in extra}
    writer = Writer(client_for(base[4]), "during-remove")
    writer.start()
    try:
        removed = cluster.remove_shards(endpoints(nodes), [extra[0].endpoint], PASSWORD)
    finally:
        writer.stop()
    assert writer.acknowledged
    assert removed.moved_slots == TOTAL_SLOTS // 4
    assert set(removed.forgotten) == removed_ids

    view = cluster.observe_cluster(endpoints(base), PASSWORD)
    assert_healthy(view, masters=3)
    for process in base:
        known = {entry.id for entry in raw_nodes(process)}
        assert not known & removed_ids, f"{process.name} still knows a removed node"
    for process in extra:
        (only,) = raw_nodes(process)
        assert only.myself and only.id not in removed_ids, "a removed node must be reset to a fresh identity"
        with process.client() as direct:
            assert direct.dbsize() == 0
    client = client_for(base[0])
    assert missing_keys(client, keys + writer.acknowledged) == []

    assert not cluster.remove_shards(endpoints(nodes), [extra[0].endpoint], PASSWORD).changed


def test_master_crash_promotes_its_replica_and_the_old_master_rejoins_as_replica(
    redis_group: RedisNodes,
) -> None:
    nodes = redis_group.start(6)
    cluster.create_cluster(shards_of(nodes), PASSWORD)
    client = client_for(nodes[2])
    keys = load(client, "k", 3000)
    for master in nodes[::2]:
        with master.client() as direct:
            assert direct.execute_command("WAIT", 1, 5000) == 1, "replica must have the data before the crash"

    victim, heir = nodes[0], nodes[1]
    victim_id, heir_id = node_id(victim), node_id(heir)
    victim_slots = slot_map(heir)
    victim.kill()

    promoted = cluster.wait_for_failover(endpoints(nodes), PASSWORD, victim.endpoint)
    assert promoted.id == heir_id
    view = cluster.observe_cluster(endpoints(nodes), PASSWORD)
    assert victim.endpoint in view.unreachable
    heir_node = view.node(heir_id)
    assert heir_node is not None and heir_node.role == "master"
    assert {s for s, owner in victim_slots.items() if owner == victim_id} == {
        s for s, owner in slot_map(heir).items() if owner == heir_id
    }
    assert view.cluster_state == "ok"
    assert missing_keys(client_for(nodes[2]), keys) == []

    victim.start()
    healed = cluster.heal_cluster(endpoints(nodes), PASSWORD)
    assert healed.view is not None

    def rejoined() -> ClusterView:
        return cluster.observe_cluster(endpoints(nodes), PASSWORD)

    view = wait_until(
        rejoined,
        lambda v: (n := v.node(victim_id)) is not None and n.role == "replica" and n.healthy and v.ok,
        DEADLINE,
        "the old master to rejoin as a replica",
    )
    assert view.node(victim_id).master_id == heir_id  # type: ignore[union-attr]
    assert_healthy(view, masters=3)
    assert missing_keys(client_for(nodes[4]), keys) == []


def test_heal_after_every_node_restarts_on_new_ports(redis_group: RedisNodes) -> None:
    nodes = redis_group.start(6)
    cluster.create_cluster(shards_of(nodes), PASSWORD)
    keys = load(client_for(nodes[0]), "k", 2000)
    for master in nodes[::2]:
        with master.client() as direct:
            assert direct.execute_command("WAIT", 1, 5000) == 1
    old = {node_id(p): p.port for p in nodes}

    # Everyone moves at once: the pod-IP change of a full rollout; nobody can reach anybody.
    for process in nodes:
        process.stop()
    for process in nodes:
        process.start(new_ports=True)
    assert not set(old.values()) & {p.port for p in nodes}
    for process in nodes:
        ports = {entry.id: entry.port for entry in raw_nodes(process) if not entry.myself}
        assert ports == {i: port for i, port in old.items() if i != node_id(process)}, (
            "peers still at old ports"
        )

    healed = cluster.heal_cluster(endpoints(nodes), PASSWORD)
    assert any(action.startswith("MEET") for action in healed.actions)
    view = cluster.wait_for_cluster_ok(endpoints(nodes), PASSWORD, timeout=DEADLINE)
    assert_healthy(view, masters=3)
    current = {node_id(p): p.port for p in nodes}
    for process in nodes:
        assert {e.id: e.port for e in raw_nodes(process)} == current
    assert missing_keys(client_for(nodes[3]), keys) == []

    assert not cluster.heal_cluster(endpoints(nodes), PASSWORD).changed


def keys_in_slot(slot: int, count: int, tag_start: int = 0) -> list[str]:
    """``count`` keys that all hash to ``slot`` (one hash tag found by search)."""
    tag = next(f"t{i}" for i in range(tag_start, 10_000_000) if key_slot(f"t{i}".encode()) == slot)
    return [f"{{{tag}}}:{i}" for i in range(count)]


def count_in_slot(process: RedisProcess, slot: int) -> int:
    with process.client() as client:
        return int(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))


def migrate_by_hand(source: RedisProcess, target: RedisProcess, keys: Sequence[str]) -> None:
    with source.client() as client:
        reply = client.execute_command(
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *keys
        )
        assert reply == "OK"


def test_fix_open_slots_repairs_interrupted_migrations_without_losing_keys(redis_group: RedisNodes) -> None:
    a, b, c = redis_group.start(3)
    cluster.create_cluster([[a.endpoint], [b.endpoint], [c.endpoint]], PASSWORD)
    a_id, b_id = node_id(a), node_id(b)
    client = client_for(a)
    owned_by_a = sorted(s for s, owner in slot_map(a).items() if owner == a_id)

    # 1. A reshard killed half-way: IMPORTING on b, MIGRATING on a, 20 of 50 keys moved.
    half = owned_by_a[100]
    half_keys = keys_in_slot(half, 50)
    for key in half_keys:
        client.set(key, key)
    with b.client() as direct:
        direct.execute_command("CLUSTER", "SETSLOT", half, "IMPORTING", a_id)
    with a.client() as direct:
        direct.execute_command("CLUSTER", "SETSLOT", half, "MIGRATING", b_id)
    migrate_by_hand(a, b, half_keys[:20])

    # 2. Someone cleared MIGRATING on the owner by hand: b imports keys clients can no longer see.
    stray = owned_by_a[200]
    stray_keys = keys_in_slot(stray, 30)
    for key in stray_keys:
        client.set(key, key)
    with b.client() as direct:
        direct.execute_command("CLUSTER", "SETSLOT", stray, "IMPORTING", a_id)
    with a.client() as direct:
        direct.execute_command("CLUSTER", "SETSLOT", stray, "MIGRATING", b_id)
    migrate_by_hand(a, b, stray_keys[:10])
    with a.client() as direct:
        direct.execute_command("CLUSTER", "SETSLOT", stray, "STABLE")
    # A client now rewrites one of the moved keys: it lands on the owner, the copy on b goes stale.
    client.set(stray_keys[0], "rewritten")

    before = cluster.observe_cluster([a.endpoint, b.endpoint, c.endpoint], PASSWORD)
    assert set(before.open_slots) == {half, stray}
    assert (count_in_slot(a, half), count_in_slot(b, half)) == (30, 20)
    assert (count_in_slot(a, stray), count_in_slot(b, stray)) == (21, 10)
    assert len(missing_keys(client_for(c), stray_keys[1:])) == 9, "the strays are invisible before the fix"

    fixed = cluster.fix_open_slots([a.endpoint, b.endpoint, c.endpoint], PASSWORD)
    assert sorted(fixed.fixed_slots) == sorted([half, stray])

    after = cluster.observe_cluster([a.endpoint, b.endpoint, c.endpoint], PASSWORD)
    assert after.open_slots == {}
    assert_healthy(after, masters=3)
    # The interrupted move is finished towards its target; the orphaned import goes back to the owner.
    assert {slot_map(p)[half] for p in (a, b, c)} == {b_id}
    assert {slot_map(p)[stray] for p in (a, b, c)} == {a_id}
    assert (count_in_slot(a, half), count_in_slot(b, half)) == (0, 50)
    assert (count_in_slot(a, stray), count_in_slot(b, stray)) == (30, 0)
    fresh = client_for(c)
    assert missing_keys(fresh, half_keys + stray_keys[1:]) == []
    assert fresh.get(stray_keys[0]) == "rewritten", "the owner's live copy must win over the stale stray"

    assert not cluster.fix_open_slots([a.endpoint, b.endpoint, c.endpoint], PASSWORD).changed


def test_replicas_added_promoted_and_removed(redis_group: RedisNodes) -> None:
    nodes = redis_group.start(7)
    base, spare = nodes[:6], nodes[6]
    cluster.create_cluster(shards_of(base), PASSWORD)
    keys = load(client_for(base[0]), "k", 1000)
    master, old_replica = base[0], base[1]

    added = cluster.set_replicas(endpoints(base), master.endpoint, PASSWORD, add=[spare.endpoint])
    assert added.changed
    with spare.client() as direct:
        info = direct.info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "up"
        assert direct.dbsize() == master.client().dbsize() > 0

    promoted = cluster.failover(spare.endpoint, PASSWORD)
    assert promoted.changed
    everyone = endpoints(nodes)
    view = wait_until(
        lambda: cluster.observe_cluster(everyone, PASSWORD),
        lambda v: v.ok and (n := v.by_endpoint(master.endpoint)) is not None and n.role == "replica",
        DEADLINE,
        "the old master to follow the promoted replica",
    )
    spare_node = view.by_endpoint(spare.endpoint)
    assert spare_node is not None and spare_node.role == "master" and spare_node.slot_count > 0
    assert not cluster.failover(spare.endpoint, PASSWORD).changed

    old_id = node_id(old_replica)
    removed = cluster.set_replicas(everyone, spare.endpoint, PASSWORD, remove=[old_replica.endpoint])
    assert removed.forgotten == [old_id]
    staying = [p for p in nodes if p is not old_replica]
    view = wait_until(
        lambda: cluster.observe_cluster(endpoints(staying), PASSWORD),
        lambda v: v.ok,
        DEADLINE,
        "a healthy cluster without the removed replica",
    )
    assert all(old_id not in {e.id for e in raw_nodes(p)} for p in staying)
    assert [n.endpoint for n in view.replicas_of(spare_node.id)] == [master.endpoint]
    assert missing_keys(client_for(base[2]), keys) == []


def test_observe_reports_unreachable_endpoints_instead_of_raising(redis_group: RedisNodes) -> None:
    nodes = redis_group.start(3)
    cluster.create_cluster([[p.endpoint] for p in nodes], PASSWORD)
    nobody = Endpoint("127.0.0.1", 1)  # nothing listens on port 1
    view = cluster.observe_cluster([*endpoints(nodes), nobody], PASSWORD)
    assert list(view.unreachable) == [nobody]
    assert view.cluster_state == "ok" and view.slots_assigned == TOTAL_SLOTS
    assert PASSWORD not in repr(view.unreachable)

    wrong = cluster.observe_cluster(endpoints(nodes), "not-the-password")
    assert set(wrong.unreachable) == set(endpoints(nodes))
    assert all("auth" in reason for reason in wrong.unreachable.values())
    assert wrong.cluster_state == "unknown"


def test_create_completes_a_partial_bootstrap_without_redoing_it(redis_group: RedisNodes) -> None:
    nodes = redis_group.start(6)
    shards = shards_of(nodes)
    first, known = nodes[0], nodes[2]
    # What a crashed earlier run left: one MEET done and the first shard's slots assigned.
    with first.client() as direct:
        direct.execute_command("CLUSTER", "MEET", "127.0.0.1", known.port, known.bus_port)
        direct.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5461)
    first_id = node_id(first)
    wait_until(
        lambda: {e.id for e in raw_nodes(known)}, lambda ids: first_id in ids, DEADLINE, "the first MEET"
    )

    report = cluster.create_cluster(shards, PASSWORD)
    met = [a for a in report.actions if a.startswith("MEET")]
    assert len(met) == 4 and not any(known.endpoint.address in a for a in met), met
    assigned = [a for a in report.actions if a.startswith("assigned")]
    assert assigned == [
        f"assigned slots 5462-10922 to {nodes[2].endpoint.address}",
        f"assigned slots 10923-16383 to {nodes[4].endpoint.address}",
    ]
    assert_healthy(cluster.observe_cluster(endpoints(nodes), PASSWORD), masters=3)
    assert {s for s, owner in slot_map(nodes[5]).items() if owner == first_id} == set(range(5462))
    assert not cluster.create_cluster(shards, PASSWORD).changed
