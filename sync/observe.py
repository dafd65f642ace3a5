"""Live observation for the supervisor: a side's topology, a master's offset, redis-shake's status.

The operator decides *where* a side is (a Middleware's members through the runtime's address seam,
or the addresses in the spec); this module asks the servers themselves, so the plan and the samples
are what Redis reports now, not what was rendered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis import client as redis_client
from middleware.engines.redis.client import SlotRange
from middleware.errors import NotReady, OperationError
from middleware.models.sync import RedisEndpointKind
from sync.plan import RedisTopology, Shard, standalone, topology_from_cluster, topology_from_sentinel
from sync.supervisor import ShakeStatus, parse_status

# The status document is small; anything larger is not redis-shake's and is not read further.
MAX_STATUS_BYTES = 1 << 20
# Pod IPs are dialled directly: an HTTP(S)_PROXY in the operator's environment must not see them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def observe_topology(
    kind: RedisEndpointKind,
    *,
    data_nodes: Sequence[Endpoint],
    sentinels: Sequence[Endpoint] = (),
    master_name: str | None = None,
    password: str | None = None,
) -> RedisTopology:
    """One side as its servers report it now. Raises NotReady when it cannot be observed (yet)."""
    try:
        if kind is RedisEndpointKind.CLUSTER:
            view = redis_client.observe_cluster(data_nodes, password)
            if not view.nodes and view.unreachable:
                # Say which nodes and why (a pod DNS name that does not resolve where this runs),
                # not that the cluster has no masters.
                reasons = "; ".join(f"{e.address}: {why}" for e, why in list(view.unreachable.items())[:3])
                raise NotReady(f"no node of the cluster answers from here ({reasons})")
            if view.open_slots:
                raise NotReady("slots are being migrated; the shards are not stable yet")
            return topology_from_cluster(view)
        if kind is RedisEndpointKind.SENTINEL:
            if not sentinels or not master_name:
                raise NotReady("a sentinel side needs its sentinels and master name")
            sview = redis_client.observe_sentinel(
                sentinels, master_name, password, sentinel_password=password, data_nodes=data_nodes
            )
            if sview.master_down or sview.failover_in_progress:
                raise NotReady(f"sentinel master {master_name!r} is down or failing over")
            return topology_from_sentinel(sview, sentinels)
        if len(data_nodes) != 1:
            raise NotReady(f"a standalone side has exactly one address, got {len(data_nodes)}")
        return standalone(data_nodes[0])
    except ValueError as exc:
        # topology_from_* raise ValueError for a cluster without slots or sentinels without a master.
        raise NotReady(str(exc)) from None
    except (OperationError, redis.RedisError) as exc:
        raise NotReady(redis_client.describe_error(exc, password)) from None


def master_offset(endpoint: Endpoint, password: str | None) -> int | None:
    """``master_repl_offset`` of ``endpoint``; None when it does not answer."""
    try:
        info: dict[str, Any] = redis_client.call(
            endpoint, password, lambda c: c.info("replication"), attempts=1
        )
    except (NotReady, OperationError, redis.RedisError):
        return None
    value = info.get("master_repl_offset")
    return int(value) if isinstance(value, int) else None


@dataclass(frozen=True)
class Consumer:
    """One replication consumer of a node as the node reports it (``INFO replication`` slaveN):
    a replica, or redis-shake's sync reader, which announces its ``status_port`` as its
    ``listening-port`` and ACKs the offset it has received every 100 ms (redis-shake v4,
    ``internal/reader/sync_standalone_reader.go``)."""

    host: str
    port: int
    state: str
    offset: int  # the last offset it ACKed: what it has received, from the source's point of view

    @property
    def online(self) -> bool:
        return self.state == "online"


def parse_consumers(info: Mapping[str, Any]) -> list[Consumer]:
    """The ``slaveN`` entries of a parsed ``INFO replication`` (redis-py turns each into a dict)."""
    found = []
    for key, value in info.items():
        if not (key.startswith("slave") and key[5:].isdigit() and isinstance(value, Mapping)):
            continue
        try:
            found.append(
                Consumer(str(value["ip"]), int(value["port"]), str(value["state"]), int(value["offset"]))
            )
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entry is not a consumer we can measure
    return found


def replication_view(endpoint: Endpoint, password: str | None) -> tuple[int, list[Consumer]] | None:
    """``endpoint``'s ``master_repl_offset`` and its consumers; None when it does not answer."""
    try:
        info: dict[str, Any] = redis_client.call(
            endpoint, password, lambda c: c.info("replication"), attempts=1
        )
    except (NotReady, OperationError, redis.RedisError):
        return None
    offset = info.get("master_repl_offset")
    return (int(offset) if isinstance(offset, int) else 0), parse_consumers(info)


def saving(endpoint: Endpoint, password: str | None) -> bool | None:
    """Whether ``endpoint`` is running a BGSAVE or AOF rewrite of its own; None when it does not answer.
    A full sync cannot attach to such a BGSAVE and waits for the next one (redis-shake #973)."""
    try:
        info: dict[str, Any] = redis_client.call(
            endpoint, password, lambda c: c.info("persistence"), attempts=1
        )
    except (NotReady, OperationError, redis.RedisError):
        return None
    return bool(info.get("rdb_bgsave_in_progress")) or bool(info.get("aof_rewrite_in_progress"))


def shake_consumer(consumers: Sequence[Consumer], port: int, host: str | None = None) -> Consumer | None:
    """redis-shake's connection among a node's consumers: the one announcing ``port`` (its status
    port), from ``host`` when the reader's address is known (several syncs may read one node).

    Across clusters the source may see redis-shake behind SNAT (a node or egress IP, not the pod's):
    when no entry comes from ``host``, the entries announcing ``port`` are still taken if they all
    come from one address; from several, which one is ours is unknowable, and None is returned."""
    on_port = [c for c in consumers if c.port == port]
    matches = [c for c in on_port if host is None or c.host == host]
    if not matches and len({c.host for c in on_port}) == 1:
        matches = on_port
    if not matches:
        return None
    # A restarted reader can linger as a stale entry until the node drops it: the furthest one is live.
    return max(matches, key=lambda c: (c.online, c.offset))


def shard_now(
    topology: RedisTopology, master: Endpoint, reader: Endpoint, slots: Sequence[SlotRange]
) -> Shard | None:
    """The live shard a workload planned on (``master``, ``reader``, ``slots``) belongs to: the one
    that still holds either node (after a failover they swap roles), else the one owning its first
    slot range (after both nodes are gone)."""
    for shard in topology.shards:
        nodes = {shard.master, *(r.endpoint for r in shard.replicas)}
        if master in nodes or reader in nodes:
            return shard
    if slots:
        first = slots[0][0]
        for shard in topology.shards:
            if any(lo <= first <= hi for lo, hi in shard.slots):
                return shard
    return topology.shards[0] if topology.kind is not RedisEndpointKind.CLUSTER else None


def fetch_status(host: str, port: int, timeout: float = 2.0) -> ShakeStatus | None:
    """redis-shake's status JSON at ``http://host:port/``; None when it does not answer or is not
    a JSON object (the supervisor counts silent samples)."""
    url = f"http://{host}:{port}/"
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            raw = response.read(MAX_STATUS_BYTES + 1)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    if len(raw) > MAX_STATUS_BYTES:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    return parse_status(document) if isinstance(document, dict) else None
