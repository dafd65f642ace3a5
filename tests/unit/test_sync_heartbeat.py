"""The heartbeat behind `lagSeconds` (sync/heartbeat.py): its key lands in the workload's share,
passes its filter, and the lag and write decisions from the two copies of it."""

from __future__ import annotations

from dataclasses import replace

from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.models.sync import RedisEndpointKind, SyncFilter
from sync import heartbeat
from sync.plan import RedisTopology, Shard, plan, standalone

CLUSTER = RedisTopology(
    RedisEndpointKind.CLUSTER,
    tuple(
        Shard(Endpoint(f"src-{i}", 6379), (), (r,))
        for i, r in enumerate([(0, 5460), (5461, 10922), (10923, 16383)])
    ),
)
TARGET = standalone(Endpoint("dst", 6379))


def test_the_key_of_a_cluster_workload_hashes_into_its_shards_slots() -> None:
    workloads = plan("orders", CLUSTER, TARGET)
    keys = [heartbeat.key(w) for w in workloads]
    assert len(set(keys)) == 3
    for workload, key in zip(workloads, keys, strict=True):
        assert key is not None and key.startswith(b"__moorage_sync__:heartbeat:orders:orders-shard-")
        lo, hi = workload.source_slots[0]
        assert lo <= key_slot(key) <= hi


def test_a_filter_of_allowed_prefixes_still_carries_the_heartbeat_a_blocking_one_drops_it() -> None:
    (workload,) = plan("orders", standalone(Endpoint("src", 6379)), TARGET)
    assert heartbeat.key(workload) == b"__moorage_sync__:heartbeat:orders:orders"
    # The plan lets the heartbeat through a filter of allowed prefixes (examples/redis-sync.yaml).
    (only_users,) = plan(
        "orders", standalone(Endpoint("src", 6379)), TARGET, SyncFilter(allow_key_prefixes=["user:"])
    )
    assert only_users.filter.allow_key_prefixes == ["user:", "__moorage_sync__:heartbeat:"]
    assert heartbeat.key(only_users) == b"__moorage_sync__:heartbeat:orders:orders"
    # A workload whose filter does not pass the key (built without the plan) writes none.
    assert heartbeat.key(replace(workload, filter=SyncFilter(allow_key_prefixes=["user:"]))) is None
    blocked = replace(workload, filter=SyncFilter(block_key_prefixes=["__moorage"]))
    assert heartbeat.key(blocked) is None
    assert heartbeat.database(replace(workload, filter=SyncFilter(allow_dbs=[3, 2]))) == 2
    assert heartbeat.database(workload) == 0


def test_lag_and_when_to_beat() -> None:
    # Nothing written yet: no lag known, write one.
    assert heartbeat.lag_seconds(None, None, 100.0) is None and heartbeat.due(None, None)
    # Arrived: caught up to it, and the next one may go out.
    assert heartbeat.lag_seconds(90.0, 90.0, 100.0) == 0.0 and heartbeat.due(90.0, 90.0)
    # Not arrived (an older one, or none, on the target): at least that old, and no new one yet, so
    # the value on the source stays the oldest undelivered heartbeat.
    assert heartbeat.lag_seconds(90.0, 80.0, 100.0) == 10.0 and not heartbeat.due(90.0, 80.0)
    assert heartbeat.lag_seconds(90.0, None, 100.0) == 10.0 and not heartbeat.due(90.0, None)
    # A clock step backwards never gives a negative lag.
    assert heartbeat.lag_seconds(90.0, None, 80.0) == 0.0
