"""Live operations on a Redis Cluster over redis-py: observe, create, heal, reshard, scale, fail over.

This module is the public surface; the code lives next to it, split by what a reviewer reads
together (imports point one way only, ``cluster_view`` at the bottom):

- ``cluster_view``: ``CLUSTER NODES``/``INFO`` parsing, the merged ``ClusterView``, the per-operation
  session and the polling waits;
- ``cluster_moves``: moving slots with their keys in the resharding order, closing open slots;
- ``cluster_create``: joining members, creating the cluster, healing it after restarts;
- ``cluster_migrate``: moving slots on request, rebalancing, adding and removing shards;
- ``cluster_replicas``: attaching and removing replicas, failover.

Shared by the Kubernetes operator and the local runtime: every function takes the members'
``Endpoint``s (pod DNS names, or 127.0.0.1 ports locally) and the password, and nothing else.

Ground rules:
- Everything is idempotent and resumable. A rerun on a healthy cluster changes nothing; a rerun after
  a crash finishes the job (half-moved slots are closed by ``fix_open_slots`` before anything moves).
- Every wait polls with a short interval and a deadline, and fails with ``NotReady`` naming what
  was still missing. Passwords never reach a log line or an exception message.
- Slot moves follow the documented resharding order, so concurrent client writes are never lost.
"""

from __future__ import annotations

from middleware.engines.redis.cluster_create import REMEET_AFTER, create_cluster, heal_cluster, resolve_ipv4
from middleware.engines.redis.cluster_migrate import (
    SETTLE_TIMEOUT,
    add_shards,
    migrate_slots,
    rebalance_cluster,
    remove_shards,
)
from middleware.engines.redis.cluster_moves import (
    KEYS_PER_MIGRATE,
    MIGRATE_TIMEOUT_MS,
    SLOTS_PER_BATCH,
    fix_open_slots,
)
from middleware.engines.redis.cluster_replicas import (
    MANUAL_FAILOVER_RETRY,
    failover,
    promote,
    set_replicas,
    wait_for_failover,
)
from middleware.engines.redis.cluster_view import (
    BULK_SOCKET_TIMEOUT,
    DEFAULT_TIMEOUT,
    POLL_INTERVAL,
    SLOTS,
    ClusterNode,
    ClusterReport,
    ClusterView,
    NodeEntry,
    NodeReport,
    OpenSlot,
    Progress,
    Role,
    observe_cluster,
    parse_cluster_nodes,
    parse_info,
    wait_for_cluster_ok,
)

__all__ = [
    "BULK_SOCKET_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "KEYS_PER_MIGRATE",
    "MANUAL_FAILOVER_RETRY",
    "MIGRATE_TIMEOUT_MS",
    "POLL_INTERVAL",
    "REMEET_AFTER",
    "SETTLE_TIMEOUT",
    "SLOTS",
    "SLOTS_PER_BATCH",
    "ClusterNode",
    "ClusterReport",
    "ClusterView",
    "NodeEntry",
    "NodeReport",
    "OpenSlot",
    "Progress",
    "Role",
    "add_shards",
    "create_cluster",
    "failover",
    "fix_open_slots",
    "heal_cluster",
    "migrate_slots",
    "observe_cluster",
    "parse_cluster_nodes",
    "parse_info",
    "promote",
    "rebalance_cluster",
    "remove_shards",
    "resolve_ipv4",
    "set_replicas",
    "wait_for_cluster_ok",
    "wait_for_failover",
]
