"""Plan the redis-shake workloads of a ``RedisSync``: pure, observed topology in, workloads out.

As in the DCE scenario, a cluster source gets one workload per shard (each reads one shard and
writes to the whole target), a sentinel or standalone source gets one. Each workload reads from a
healthy replica of its shard when there is one: PSYNC from a replica works (chained replication)
and spares the primary the fork of a full sync. Replicas share their master's replication offsets,
so lag is still measured against the master's ``master_repl_offset``.

The writer side records how the target is addressed. A sentinel target is written at the master
resolved *now*, and the master name and sentinels are kept so the supervisor notices a target
failover and re-plans (redis-shake writes to a fixed address and otherwise keeps hitting the old,
now read-only, master: redis-shake #833).

``reverse`` plans the recovery direction of DCE: the target becomes the source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from middleware.endpoints import Endpoint
from middleware.engines.redis.client import ClusterView, SentinelView, SlotRange
from middleware.errors import SpecError
from middleware.models.sync import RedisEndpointKind, SyncDirection, SyncFilter

# Workload names become Deployment names and label values: DNS-1123 labels, at most 63 characters.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63


@dataclass(frozen=True)
class Replica:
    endpoint: Endpoint
    healthy: bool


@dataclass(frozen=True)
class Shard:
    master: Endpoint
    replicas: tuple[Replica, ...] = ()
    slots: tuple[SlotRange, ...] = ()  # cluster only


@dataclass(frozen=True)
class RedisTopology:
    """One side as observed: one shard for standalone/sentinel, every shard for a cluster."""

    kind: RedisEndpointKind
    shards: tuple[Shard, ...]
    sentinels: tuple[Endpoint, ...] = ()
    master_name: str | None = None

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("a topology has at least one shard")
        if self.kind is not RedisEndpointKind.CLUSTER and len(self.shards) != 1:
            raise ValueError(f"a {self.kind} topology has exactly one shard")
        if self.kind is RedisEndpointKind.SENTINEL and not (self.sentinels and self.master_name):
            raise ValueError("a sentinel topology needs its sentinels and master name")

    @property
    def masters(self) -> tuple[Endpoint, ...]:
        return tuple(shard.master for shard in self.shards)


def topology_from_cluster(view: ClusterView) -> RedisTopology:
    """The shards of an observed cluster: masters owning slots, in slot order, with their replicas."""
    masters = sorted(
        (node for node in view.masters if node.slots and node.endpoint is not None), key=lambda n: n.slots
    )
    shards = []
    for node in masters:
        assert node.endpoint is not None
        replicas = tuple(
            Replica(r.endpoint, r.healthy) for r in view.replicas_of(node.id) if r.endpoint is not None
        )
        shards.append(Shard(node.endpoint, replicas, node.slots))
    if not shards:
        raise ValueError("the cluster has no master owning slots")
    return RedisTopology(RedisEndpointKind.CLUSTER, tuple(shards))


def topology_from_sentinel(view: SentinelView, sentinels: Sequence[Endpoint]) -> RedisTopology:
    """The master the sentinels agree on now, with the replicas they list."""
    if view.master is None:
        raise ValueError(f"sentinels do not agree on a master for {view.master_name!r}")
    replicas = tuple(Replica(r.endpoint, r.healthy) for r in view.replicas)
    return RedisTopology(
        RedisEndpointKind.SENTINEL,
        (Shard(view.master, replicas),),
        sentinels=tuple(sentinels),
        master_name=view.master_name,
    )


def renamed(topology: RedisTopology, rename: Callable[[Endpoint], Endpoint]) -> RedisTopology:
    """``topology`` with every address passed through ``rename``: a side in another cluster reports
    its members by names that resolve only there, and the caller knows where they answer from here."""
    shards = tuple(
        Shard(
            rename(shard.master),
            tuple(Replica(rename(r.endpoint), r.healthy) for r in shard.replicas),
            shard.slots,
        )
        for shard in topology.shards
    )
    return replace(topology, shards=shards, sentinels=tuple(rename(s) for s in topology.sentinels))


def standalone(endpoint: Endpoint) -> RedisTopology:
    return RedisTopology(RedisEndpointKind.STANDALONE, (Shard(endpoint),))


@dataclass(frozen=True)
class WriterTarget:
    """Where a workload writes. ``addresses``: every master for a cluster (redis-shake needs one and
    discovers the rest), the master resolved at plan time for sentinel, the node for standalone."""

    kind: RedisEndpointKind
    addresses: tuple[Endpoint, ...]
    master_name: str | None = None
    sentinels: tuple[Endpoint, ...] = ()

    @property
    def cluster(self) -> bool:
        return self.kind is RedisEndpointKind.CLUSTER

    @property
    def address(self) -> Endpoint:
        return self.addresses[0]


@dataclass(frozen=True)
class ShakeWorkload:
    name: str
    sync: str
    direction: SyncDirection
    shard: int | None  # index of the source shard, None for a one-shard source
    reader: Endpoint
    reads_replica: bool
    source_master: Endpoint  # what lag is measured against, and what a source failover changes
    source_slots: tuple[SlotRange, ...]
    writer: WriterTarget
    filter: SyncFilter = field(default_factory=SyncFilter)


def _reader(shard: Shard) -> tuple[Endpoint, bool]:
    healthy = sorted(r.endpoint for r in shard.replicas if r.healthy)
    return (healthy[0], True) if healthy else (shard.master, False)


def _writer(target: RedisTopology) -> WriterTarget:
    if target.kind is RedisEndpointKind.CLUSTER:
        return WriterTarget(target.kind, target.masters)
    return WriterTarget(
        target.kind, (target.shards[0].master,), master_name=target.master_name, sentinels=target.sentinels
    )


def _check_name(name: str) -> str:
    if len(name) > MAX_NAME or not _DNS_LABEL.match(name):
        raise SpecError(
            "metadata.name", f"workload name {name!r} is not a DNS label of at most {MAX_NAME} chars"
        )
    return name


def _check_filter(source: RedisTopology, target: RedisTopology, filter_: SyncFilter) -> None:
    if RedisEndpointKind.CLUSTER in (source.kind, target.kind) and any(db != 0 for db in filter_.allow_dbs):
        raise SpecError("spec.filter.allowDbs", "a Redis Cluster only has database 0")
    overlap = set(filter_.allow_key_prefixes) & set(filter_.block_key_prefixes)
    if overlap:
        raise SpecError("spec.filter", f"prefixes both allowed and blocked: {sorted(overlap)}")


HEARTBEAT_PREFIX = "__moorage_sync__:heartbeat"
"""The keys the supervisor writes on the source to measure lag in seconds (``sync.heartbeat``)."""


def with_heartbeat(filter_: SyncFilter) -> SyncFilter:
    """The filter the workloads run with: the user's, plus the heartbeat keys when it allows only
    some prefixes. Without them a filtered sync (the common case of moving some tenants) would have
    no lag in seconds at all. A blocked prefix that covers them still wins: the user said so."""
    if not filter_.allow_key_prefixes or any(
        HEARTBEAT_PREFIX.startswith(prefix) for prefix in filter_.allow_key_prefixes
    ):
        return filter_
    return filter_.model_copy(
        update={"allow_key_prefixes": [*filter_.allow_key_prefixes, f"{HEARTBEAT_PREFIX}:"]}
    )


def plan(
    sync: str,
    source: RedisTopology,
    target: RedisTopology,
    filter_: SyncFilter | None = None,
    *,
    direction: SyncDirection = SyncDirection.FORWARD,
) -> list[ShakeWorkload]:
    """The workloads that replicate ``source`` into ``target`` (``direction`` only names them)."""
    if direction is SyncDirection.STOPPED:
        return []
    filter_ = filter_ or SyncFilter()
    _check_filter(source, target, filter_)
    filter_ = with_heartbeat(filter_)
    if set(source.masters) & set(target.masters):
        raise SpecError("spec.target", "source and target are the same Redis")
    base = sync if direction is SyncDirection.FORWARD else f"{sync}-reverse"
    writer = _writer(target)
    workloads = []
    for index, shard in enumerate(source.shards):
        one = len(source.shards) == 1 and source.kind is not RedisEndpointKind.CLUSTER
        reader, reads_replica = _reader(shard)
        workloads.append(
            ShakeWorkload(
                name=_check_name(base if one else f"{base}-shard-{index}"),
                sync=sync,
                direction=direction,
                shard=None if one else index,
                reader=reader,
                reads_replica=reads_replica,
                source_master=shard.master,
                source_slots=shard.slots,
                writer=writer,
                filter=filter_,
            )
        )
    return workloads


def plan_direction(
    sync: str,
    source: RedisTopology,
    target: RedisTopology,
    filter_: SyncFilter | None,
    direction: SyncDirection,
) -> list[ShakeWorkload]:
    """What should run for ``spec.direction``: forward, reverse (target into source), or nothing."""
    if direction is SyncDirection.REVERSE:
        return reverse(sync, source, target, filter_)
    return plan(sync, source, target, filter_, direction=direction)


def reverse(
    sync: str, source: RedisTopology, target: RedisTopology, filter_: SyncFilter | None = None
) -> list[ShakeWorkload]:
    """Recovery as in DCE: the forward workloads are stopped and the target is replicated back."""
    return plan(sync, target, source, filter_, direction=SyncDirection.REVERSE)
