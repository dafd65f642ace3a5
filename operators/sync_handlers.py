"""RedisSync handlers: importing this module registers them (``kopf run -m operators.main -m
operators.sync_handlers``). Thin: time and count, then ``operators.reconcile.sync`` does the work."""

from __future__ import annotations

from typing import Any

import kopf

from operators import metrics
from operators.reconcile import sync
from operators.settings import GROUP, VERSION, operator_config

SYNCS = (GROUP, VERSION, "redissyncs")


@kopf.on.resume(*SYNCS)
@kopf.on.create(*SYNCS)
@kopf.on.update(*SYNCS, field="spec")
def reconcile_sync(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
    with metrics.reconcile_timer("RedisSync", str(reason)) as outcome:
        sync.reconcile(body, patch, outcome, operator_config())


@kopf.timer(
    *SYNCS,
    interval=operator_config().sync_supervise_interval,
    initial_delay=operator_config().sync_supervise_interval,
)
def supervise_sync(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with metrics.reconcile_timer("RedisSync", "supervise"):
        sync.tick(body, patch, operator_config())


@kopf.on.delete(*SYNCS, optional=True)
def forget_sync(body: kopf.Body, **_: Any) -> None:
    # The Deployments and Secrets go with their owner reference; only in-memory state is ours.
    sync.forget(body)
