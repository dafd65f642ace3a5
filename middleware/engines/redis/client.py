"""The Redis engine's public client surface for the layers above it (``sync/``, ``backups/``,
``operators/``): per-node calls with bounded retries, raw RESP connections for streaming, the cluster
and sentinel observations, slot ranges and the topology's names. Everything else in this package is
the engine's own business and may change shape freely; an import-linter contract keeps the layers
above on this module ("Layers above use the Redis engine through its client surface")."""

from __future__ import annotations

from middleware.engines.redis.cluster import ClusterView, observe_cluster
from middleware.engines.redis.live import NETWORK_ERRORS, call, connect, describe_error
from middleware.engines.redis.resp import Command, RespConnection, RespError, open_connection, pack
from middleware.engines.redis.sentinel import SentinelView, observe_sentinel
from middleware.engines.redis.slots import TOTAL_SLOTS, SlotRange, expand
from middleware.engines.redis.topology import DATA_COMPONENT, SENTINEL_COMPONENT, sentinel_master_name

__all__ = [
    "DATA_COMPONENT",
    "NETWORK_ERRORS",
    "SENTINEL_COMPONENT",
    "TOTAL_SLOTS",
    "ClusterView",
    "Command",
    "RespConnection",
    "RespError",
    "SentinelView",
    "SlotRange",
    "call",
    "connect",
    "describe_error",
    "expand",
    "observe_cluster",
    "observe_sentinel",
    "open_connection",
    "pack",
    "sentinel_master_name",
]
