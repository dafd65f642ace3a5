"""A workload's share of the target, and emptying it before a full sync.

redis-shake v4's sync reader loads the source's RDB into the target as plain commands (``SET``,
``RPUSH``, ``HSET``, ``SADD``, ``ZADD``, ``XADD``, then ``PEXPIRE``), never ``RESTORE``: its
``rdb_restore_command_behavior`` does not apply to it (upstream #921). A full sync is therefore only
correct into an *empty* share, like a Redis replica's, which flushes before loading: over keys an
earlier run wrote, a list gets its elements appended a second time, a hash, set or sorted set keeps
members the source has since removed, keys deleted on the source meanwhile stay, and a key whose type
changed makes the writer fail (``WRONGTYPE``) and redis-shake exit. Every restart is such a full sync
(v4 cannot resume).

So before Moorage starts a workload it deletes that workload's share of the target: the keys the
workload would write there, that is

- in the hash slots of its source shard (a cluster source; a standalone or sentinel source: all),
- passing its key filter (allow / block prefixes, as redis-shake's filter decides),
- in the databases it syncs (a cluster side: 0 only; else every database, or the allowed ones).

Other workloads' shares are left alone: several shards write one target at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pydantic import ValidationError
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.redis.client import SlotRange
from middleware.errors import SpecError
from middleware.models.sync import SyncFilter
from sync.plan import ShakeWorkload
from sync.verify import RedisURL, Side

BATCH = 1000


@dataclass(frozen=True)
class Share:
    """What one workload writes on the target."""

    slots: tuple[SlotRange, ...] = ()  # empty: every slot (a one-shard source)
    filter: SyncFilter = field(default_factory=SyncFilter)
    cluster_source: bool = False

    @classmethod
    def of(cls, workload: ShakeWorkload) -> Share:
        return cls(workload.source_slots, workload.filter, bool(workload.source_slots))

    def holds(self, key: bytes) -> bool:
        if self.slots:
            slot = key_slot(key)
            if not any(lo <= slot <= hi for lo, hi in self.slots):
                return False
        return passes(key, self.filter)

    def databases(self, present: Sequence[int]) -> list[int]:
        """Which of the target's non-empty databases this share covers."""
        if self.cluster_source:
            return [0] if 0 in present else []
        allowed = self.filter.allow_dbs
        return [db for db in present if not allowed or db in allowed]


def passes(key: bytes, flt: SyncFilter) -> bool:
    """redis-shake v4's key filter (``internal/filter``): allowed when no allow prefix is set or one
    matches, then refused when a block prefix matches."""
    text = key.decode("utf-8", "surrogateescape")
    if flt.allow_key_prefixes and not any(text.startswith(p) for p in flt.allow_key_prefixes):
        return False
    return not any(text.startswith(p) for p in flt.block_key_prefixes)


def _databases(side: Side) -> list[int]:
    """The target's databases that hold keys (``INFO keyspace``: db0, db3, ...)."""
    found: set[int] = set()
    for endpoint in side.masters:
        info = side.run(endpoint, lambda c: c.info("keyspace"))
        for name in info:
            if str(name).startswith("db") and str(name)[2:].isdigit():
                found.add(int(str(name)[2:]))
    return sorted(found)


def clear_share(workload: ShakeWorkload, target: RedisURL) -> int:
    """Delete ``workload``'s share of the target (see the module docstring); the number of keys
    deleted. Raises NotReady / OperationError (the target redacted) when the target cannot be read or
    written: the caller must not start the full sync then."""
    return clear(Share.of(workload), target)


def clear_from_document(text: str) -> tuple[str, RedisURL, int]:
    """Empty the share a document of ``sync.shake_config.share_document`` describes (what a
    redis-shake pod's init container runs): the workload's name, the target, the keys deleted.
    Raises SpecError for a document that is not one, as ``clear`` for the target."""
    try:
        document = json.loads(text)
        target = document["target"]
        share = Share(
            slots=tuple((int(lo), int(hi)) for lo, hi in document["slots"]),
            filter=SyncFilter.model_validate(document.get("filter") or {}),
            cluster_source=bool(document["slots"]),
        )
        url = RedisURL(
            Endpoint.parse(str(target["address"])), target.get("username"), target.get("password"), 0
        )
        workload = str(document["workload"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise SpecError("share document", f"not a share document: {type(exc).__name__}: {exc}") from None
    return workload, url, clear(share, url)


def clear(share: Share, target: RedisURL) -> int:
    """Delete the keys of ``share`` on the target; how many."""
    deleted = 0
    probe = Side("target", replace(target, db=0))
    try:
        probe.discover()
        databases = [0] if probe.cluster else share.databases(_databases(probe))
    finally:
        probe.close()
    for db in databases:
        side = Side("target", replace(target, db=db))
        try:
            side.discover()
            for endpoint in side.masters:
                for keys in side.scan(endpoint):
                    doomed = [k for k in keys if share.holds(k)]
                    for start in range(0, len(doomed), BATCH):
                        chunk = doomed[start : start + BATCH]
                        # One UNLINK per key: a cluster refuses a multi-key command across slots.
                        for reply in side.pipeline(endpoint, [(b"UNLINK", k) for k in chunk]):
                            if isinstance(reply, Exception):
                                raise side.wrap(endpoint, reply)
                            deleted += int(reply)
        finally:
            side.close()
    return deleted
