"""Sync plans for redis-shake run by hand, outside Kubernetes: plan from two Redis URLs, write one
``shake.toml`` per workload, and find those workloads again for a cutover.

This is how the sync is tried without a cluster, and how teams that run redis-shake themselves
(the situation the DCE procedure starts from) get Moorage's plan and cutover checks. Several
redis-shake processes on one host need distinct status ports: workload ``i`` gets ``base + i``, and
redis-shake announces that port to the source, which is how a cutover finds its connection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis import client as redis_client
from middleware.errors import NotReady, OperationError
from middleware.models.sync import RedisEndpointKind, SyncFilter
from sync import shake_config
from sync.cutover import Feed
from sync.observe import observe_topology
from sync.plan import RedisTopology, ShakeWorkload, plan
from sync.verify import RedisURL

DEFAULT_STATUS_PORT_BASE = 18080


def observe_url(url: RedisURL) -> RedisTopology:
    """A side given by one node's URL: the whole cluster when that node is in cluster mode, else that
    node as a standalone (a sentinel group is given as its master's URL, as for ``sync verify``)."""
    try:
        info = redis_client.call(url.endpoint, url.password, lambda c: c.info("cluster"), attempts=1)
    except (OperationError, redis.RedisError) as exc:
        raise NotReady(f"{url.redacted}: {redis_client.describe_error(exc, url.password)}") from None
    if not info.get("cluster_enabled"):
        return observe_topology(
            RedisEndpointKind.STANDALONE, data_nodes=[url.endpoint], password=url.password
        )
    # One node's view names every member, but only members that answer us count as healthy (a replica
    # is read only if it does): look again with every member as a seed.
    first = observe_topology(RedisEndpointKind.CLUSTER, data_nodes=[url.endpoint], password=url.password)
    seeds = [
        endpoint
        for shard in first.shards
        for endpoint in (shard.master, *(r.endpoint for r in shard.replicas))
    ]
    return observe_topology(RedisEndpointKind.CLUSTER, data_nodes=seeds, password=url.password)


@dataclass(frozen=True)
class ManualWorkload:
    workload: ShakeWorkload
    status_port: int
    config: Path | None = None


def plan_urls(
    name: str,
    source: RedisURL,
    target: RedisURL,
    *,
    filter_: SyncFilter | None = None,
    status_port_base: int = DEFAULT_STATUS_PORT_BASE,
    source_topology: RedisTopology | None = None,
    target_topology: RedisTopology | None = None,
) -> list[ManualWorkload]:
    """Plan from two URLs; a side already observed (the local runner's sentinel target, a source
    observed through another of its nodes) is taken as given."""
    workloads = plan(
        name, source_topology or observe_url(source), target_topology or observe_url(target), filter_
    )
    return [ManualWorkload(w, status_port_base + i) for i, w in enumerate(workloads)]


def write_configs(
    planned: Sequence[ManualWorkload], out_dir: Path, source: RedisURL, target: RedisURL
) -> list[ManualWorkload]:
    """``<out>/<workload>/shake.toml`` (mode 0600: it holds both passwords), with redis-shake's work
    directory next to it."""
    written = []
    for item in planned:
        directory = out_dir / item.workload.name
        directory.mkdir(parents=True, exist_ok=True)
        text = shake_config.render_v4(
            item.workload,
            source_password=source.password,
            target_password=target.password,
            source_username=source.username,
            target_username=target.username,
            status_port=item.status_port,
            work_dir=str((directory / "work").resolve()),
        )
        path = directory / "shake.toml"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
        written.append(ManualWorkload(item.workload, item.status_port, path))
    return written


def feeds(planned: Sequence[ManualWorkload], host: str | None = None) -> list[Feed]:
    """What a cutover checks for hand-run workloads: each reads its planned node and announces its
    own status port (``host``: where the processes run, when the sources see that address; their
    status ports are then read there too)."""
    return [
        Feed(
            m.workload.name,
            m.workload.source_master,
            m.workload.reader,
            m.status_port,
            host,
            m.status_port if host else None,
        )
        for m in planned
    ]


def reader_of(planned: Sequence[ManualWorkload]) -> dict[str, Endpoint]:
    return {m.workload.name: m.workload.reader for m in planned}
