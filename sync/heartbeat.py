"""Lag in seconds from a heartbeat key (redis-shake reports bytes only, upstream #363).

The supervisor writes ``__moorage_sync__:heartbeat:<sync>:<workload>`` with the current time on the
workload's source shard master, and reads it back on the target, where redis-shake delivers it like
any other write. A new heartbeat is written only once the target holds the previous one, so the
value on the source is always the oldest heartbeat not yet delivered:

- target == source: everything written up to that heartbeat has arrived; lag 0 (to within the
  supervision period, which is how often a new heartbeat goes out);
- otherwise the write made at that time has not arrived: the lag is at least ``now - value``.

The key is in the workload's share: for a cluster source its hash tag puts it in the shard's first
slot range (a key of another shard's slots would be synced by that shard's workload, or, if the
source routed it, refused). A filter of allowed prefixes lets it through (``sync.plan.with_heartbeat``);
one that blocks it means no heartbeat is written (None),
and it expires after ``TTL_SECONDS`` so a stopped sync leaves nothing behind for long.
"""

from __future__ import annotations

from dataclasses import replace

import redis
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.redis import client as redis_client
from middleware.errors import MoorageError
from sync.plan import HEARTBEAT_PREFIX as PREFIX
from sync.plan import ShakeWorkload
from sync.share import passes
from sync.verify import RedisURL, Side

TTL_SECONDS = 3600
# A paused source (a cutover's CLIENT PAUSE WRITE) holds the SET: give up quickly instead.
TIMEOUT = 1.0


def key(workload: ShakeWorkload) -> bytes | None:
    """The workload's heartbeat key; None when its filter would not sync any such key."""
    base = f"{PREFIX}:{workload.sync}:{workload.name}"
    if workload.source_slots:
        lo, hi = workload.source_slots[0]
        found = next(
            (f"{base}:{{{n}}}" for n in range(1 << 16) if lo <= key_slot(f"{base}:{{{n}}}".encode()) <= hi),
            None,
        )
        if found is None:
            return None
        base = found
    encoded = base.encode()
    return encoded if passes(encoded, workload.filter) else None


def database(workload: ShakeWorkload) -> int:
    allowed = workload.filter.allow_dbs
    return 0 if not allowed or 0 in allowed else min(allowed)


def lag_seconds(source_value: float | None, target_value: float | None, now: float) -> float | None:
    """Seconds the target is behind, from the heartbeat on the source and on the target (see the
    module docstring); None when no heartbeat has been written yet."""
    if source_value is None:
        return None
    if target_value is not None and target_value >= source_value:
        return 0.0
    return max(0.0, now - source_value)


def due(source_value: float | None, target_value: float | None) -> bool:
    """A new heartbeat goes out when there is none, or the target holds the last one."""
    return source_value is None or (target_value is not None and target_value >= source_value)


def _number(raw: object) -> float | None:
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    try:
        return float(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def read_source(
    master: Endpoint, name: bytes, db: int, username: str | None, password: str | None
) -> float | None:
    try:
        return _number(
            redis_client.call(
                master,
                password,
                lambda c: c.get(name),
                attempts=1,
                username=username,
                db=db,
                socket_timeout=TIMEOUT,
            )
        )
    except (MoorageError, redis.RedisError):
        return None


def write_source(
    master: Endpoint, name: bytes, db: int, username: str | None, password: str | None, now: float
) -> bool:
    try:
        redis_client.call(
            master,
            password,
            lambda c: c.set(name, f"{now:.3f}", ex=TTL_SECONDS),
            attempts=1,
            username=username,
            db=db,
            socket_timeout=TIMEOUT,
        )
    except (MoorageError, redis.RedisError):
        return False
    return True


def read_target(target: RedisURL, name: bytes, db: int) -> float | None:
    """The heartbeat as the target holds it (a cluster target: on the node owning its slot)."""
    side = Side("target", replace(target, db=db), socket_timeout=TIMEOUT)
    try:
        side.discover()
        return _number(side.run(side.owner(name), lambda c: c.get(name)))
    except (MoorageError, redis.RedisError):
        return None
    finally:
        side.close()
