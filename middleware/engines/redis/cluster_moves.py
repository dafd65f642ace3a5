"""Moving slots with their keys, in the resharding order, and closing slots a crash left open.

Slot moves follow the documented order (IMPORTING on the target, MIGRATING on the source, MIGRATE
the keys, SETSLOT NODE on target, source, then the other masters), so concurrent client writes are
never lost: a key lives in exactly one place at every step. ``fix_open_slots`` lives here rather
than with healing because closing a half-moved slot is the same key-moving work run from whatever
state an interrupted move left behind; healing, resharding and scaling all call it first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster_view import (
    DEFAULT_TIMEOUT,
    ClusterNode,
    ClusterReport,
    ClusterView,
    OpenSlot,
    Progress,
    _name,
    _Session,
    _session,
    _wait,
    log,
)
from middleware.engines.redis.live import describe_error
from middleware.engines.redis.slots import SlotMove, compress, format_ranges
from middleware.errors import NotReady, OperationError

# MIGRATE blocks the source node while it runs: keep each call short so client latency stays low.
KEYS_PER_MIGRATE = 100
# Slots opened (IMPORTING/MIGRATING) at once. Batching turns most per-slot round trips into
# pipelines; a crash leaves at most this many slots open, which fix_open_slots closes.
SLOTS_PER_BATCH = 64
MIGRATE_TIMEOUT_MS = 10_000


# --- keys and slots --------------------------------------------------------------------------------


@dataclass
class _Moves:
    """The addresses MIGRATE needs: how a source node reaches a target node."""

    view: ClusterView

    def endpoint(self, node_id: str) -> Endpoint:
        node = self.view.node(node_id)
        if node is None or node.endpoint is None:
            raise NotReady(f"node {node_id[:8]} has no known address")
        return node.endpoint

    def migrate_to(self, node_id: str) -> tuple[str, int]:
        # The gossiped IP is what the cluster bus already reaches; the announced name is a fallback.
        node = self.view.node(node_id)
        if node is None:
            raise NotReady(f"node {node_id[:8]} is not in the cluster")
        if node.ip_endpoint is not None:
            return node.ip_endpoint.host, node.ip_endpoint.port
        if node.announced is not None:
            return node.announced.host, node.announced.port
        raise NotReady(f"node {node_id[:8]} has no known address")


def _migrate_args(
    host: str, port: int, keys: Sequence[bytes], password: str | None, *, replace: bool
) -> list[Any]:
    args: list[Any] = ["MIGRATE", host, port, "", 0, MIGRATE_TIMEOUT_MS]
    if replace:
        args.append("REPLACE")
    if password:
        args += ["AUTH", password]
    return [*args, "KEYS", *keys]


def _drain_slots(
    session: _Session,
    source: Endpoint,
    target: tuple[str, int],
    slots: Sequence[int],
    *,
    replace: bool,
    target_endpoint: Endpoint | None = None,
) -> int:
    """MIGRATE every key of ``slots`` from ``source`` to ``target``; returns how many moved.

    ``replace``: the source is the slot's owner, whose copy is the one clients see, so it wins
    over any stale copy on the target. Otherwise the source holds strays; where the target already
    has the key, the target's copy is the visible one and the stray is dropped.
    """
    moved = 0
    pending = list(slots)
    host, port = target
    while pending:
        replies = session.pipeline(
            source, [("CLUSTER", "GETKEYSINSLOT", s, KEYS_PER_MIGRATE) for s in pending], binary=True
        )
        batches: list[tuple[int, list[bytes]]] = []
        for slot, reply in zip(pending, replies, strict=True):
            if isinstance(reply, Exception):
                raise session._wrap(source, reply)
            if reply:
                batches.append((slot, list(reply)))
        if not batches:
            return moved
        results = session.pipeline(
            source,
            [_migrate_args(host, port, keys, session.password, replace=replace) for _, keys in batches],
            binary=True,
        )
        for (slot, keys), result in zip(batches, results, strict=True):
            if not isinstance(result, Exception) or "NOKEY" in str(result):
                moved += len(keys)
                continue
            if "BUSYKEY" in str(result) and not replace and target_endpoint is not None:
                moved += _settle_busy_keys(session, source, target_endpoint, target, slot, keys)
                continue
            raise OperationError(
                f"MIGRATE of slot {slot} from {source.address} to {host}:{port} failed: "
                f"{describe_error(result, session.password)} (slot left open; fix_open_slots resumes it)"
            )
        pending = [slot for slot, _ in batches]
    return moved


def _asking(client: redis.Redis, *args: Any) -> Any:
    # ASKING lets a key command through on a node that imports, rather than owns, the slot.
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*args)
    return pipe.execute()[-1]


def _settle_busy_keys(
    session: _Session,
    source: Endpoint,
    target: Endpoint,
    address: tuple[str, int],
    slot: int,
    keys: Sequence[bytes],
) -> int:
    """Keys that exist on both sides: the target's copy is visible to clients, the source's is a stray."""

    def on(endpoint: Endpoint, *args: Any) -> Any:
        def send(client: redis.Redis) -> Any:
            return _asking(client, *args)

        return session.run(endpoint, send, binary=True)

    settled = 0
    for key in keys:
        if not on(source, "EXISTS", key):
            settled += 1  # moved by the MIGRATE that reported the busy ones
            continue
        if on(target, "EXISTS", key):
            on(source, "DEL", key)
            log.warning(
                "slot %d: dropped a stale duplicate key on %s (the visible copy wins)", slot, source.address
            )
            continue
        on(source, *_migrate_args(*address, [key], session.password, replace=False))
        settled += 1
    return settled


def _setslot_all(
    session: _Session, endpoint: Endpoint, slots: Sequence[int], *state: str, strict: bool = True
) -> list[tuple[int, str]]:
    """SETSLOT for many slots in one round trip; returns the refusals when not ``strict``."""
    replies = session.pipeline(endpoint, [("CLUSTER", "SETSLOT", slot, *state) for slot in slots])
    errors = [
        (slot, describe_error(reply, session.password))
        for slot, reply in zip(slots, replies, strict=True)
        if isinstance(reply, Exception)
    ]
    if errors and strict:
        slot, error = errors[0]
        raise OperationError(
            f"CLUSTER SETSLOT {slot} {' '.join(state[:1])} refused by {endpoint.address}: {error}"
            + (f" (and {len(errors) - 1} more slots)" if len(errors) > 1 else "")
        )
    return errors


def _move_batch(
    session: _Session,
    moves: _Moves,
    source_id: str,
    target_id: str,
    slots: Sequence[int],
    others: Sequence[Endpoint],
) -> int:
    source, target = moves.endpoint(source_id), moves.endpoint(target_id)
    # Target first: from the moment the source answers ASK, the target must accept the key.
    _setslot_all(session, target, slots, "IMPORTING", source_id)
    _setslot_all(session, source, slots, "MIGRATING", target_id)
    keys = _drain_slots(session, source, moves.migrate_to(target_id), slots, replace=True)
    _setslot_all(session, target, slots, "NODE", target_id)
    refused = _setslot_all(session, source, slots, "NODE", target_id, strict=False)
    if refused:
        # Gossip may have beaten us: the target's bumped epoch already took the slots away (and an
        # emptied master turns into a replica of the new owner, refusing SETSLOT). Nothing to do then.
        owners = session.report(source).owners()
        again = [slot for slot, _ in refused if owners.get(slot) != target_id]
        if again:
            # A key written between the last GETKEYSINSLOT and SETSLOT: move it and try once more.
            keys += _drain_slots(session, source, moves.migrate_to(target_id), again, replace=True)
            _setslot_all(session, source, again, "NODE", target_id)
    for other in others:
        if other in (source, target):
            continue
        try:
            # Gossip would carry the target's bumped epoch anyway; telling everyone now shortens the
            # window in which clients get bounced between stale owners.
            _setslot_all(session, other, slots, "NODE", target_id, strict=False)
        except NotReady as exc:
            log.warning("could not tell %s about moved slots: %s", other.address, exc)
    return keys


def _execute_moves(
    session: _Session,
    view: ClusterView,
    plan: Sequence[SlotMove],
    report: ClusterReport,
    progress: Progress | None,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> None:
    total = sum(len(move.slots) for move in plan)
    if not total:
        return
    moves = _Moves(view)
    masters = [n.endpoint for n in view.masters if n.endpoint is not None and n.reachable]
    started = time.monotonic()
    done = 0
    if progress:
        progress(0, total)
    for move in plan:
        keys = 0
        for start in range(0, len(move.slots), slots_per_batch):
            batch = move.slots[start : start + slots_per_batch]
            keys += _move_batch(session, moves, move.source, move.target, batch, masters)
            done += len(batch)
            report.moved_slots += len(batch)
            if progress:
                progress(done, total)
        report.moved_keys += keys
        report.act(
            f"moved {len(move.slots)} slots ({format_ranges(move.ranges)}, {keys} keys) from "
            f"{moves.endpoint(move.source).address} to {moves.endpoint(move.target).address}"
        )
    report.move_seconds += time.monotonic() - started


# --- open slots ------------------------------------------------------------------------------------


def fix_open_slots(
    endpoints: Sequence[Endpoint], password: str | None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterReport:
    """Close every MIGRATING/IMPORTING slot so each has one owner and no key is lost.

    Per slot: if the owner is migrating to a reachable master, the move is finished (that is where
    the interrupted reshard was going); otherwise it is rolled back to the owner. Keys found on any
    other master are brought to the slot's final owner. Where a key exists twice, the owner's copy
    is kept: it is the one clients have been reading and writing.
    """
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        _fix_open_slots(session, endpoints, report, timeout)
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    if report.blocked_slots:
        raise NotReady(
            f"slots {format_ranges(compress(report.blocked_slots))} stay open: a node holding their keys "
            "is unreachable; retry when it is back"
        )
    return report


def _fix_open_slots(
    session: _Session, endpoints: Sequence[Endpoint], report: ClusterReport, timeout: float
) -> None:
    view = session.view(endpoints)
    open_slots = view.open_slots
    if not open_slots:
        return
    masters = [n for n in view.masters if n.reachable and n.endpoint is not None]
    moves = _Moves(view)
    # One round trip per master for all open slots: who holds keys where.
    counts: dict[str, dict[int, int]] = {}
    for master in masters:
        assert master.endpoint is not None
        replies = session.pipeline(master.endpoint, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in open_slots])
        counts[master.id] = {
            s: int(r) for s, r in zip(open_slots, replies, strict=True) if not isinstance(r, Exception)
        }
    for slot, state in open_slots.items():
        try:
            _fix_slot(session, view, moves, slot, state, counts, masters, report)
        except NotReady as exc:
            log.warning("slot %d stays open: %s", slot, exc)
            report.blocked_slots.append(slot)
    expected_closed = [s for s in open_slots if s not in report.blocked_slots]

    def problems() -> list[str]:
        current = session.view(endpoints)
        still = [s for s in expected_closed if s in current.open_slots]
        disagree = [
            s for s in expected_closed if len({r.owners().get(s) for r in current.reports.values()}) > 1
        ]
        return [f"slots {format_ranges(compress(still))} still open"] * bool(still) + [
            f"nodes disagree on the owner of slots {format_ranges(compress(disagree))}"
        ] * bool(disagree)

    _wait("open slots to close", problems, timeout)


def _fix_slot(
    session: _Session,
    view: ClusterView,
    moves: _Moves,
    slot: int,
    state: OpenSlot,
    counts: Mapping[str, Mapping[int, int]],
    masters: Sequence[ClusterNode],
    report: ClusterReport,
) -> None:
    reachable = {m.id for m in masters}
    holders = [m.id for m in masters if counts.get(m.id, {}).get(slot, 0) > 0]
    involved = (
        set(state.migrating)
        | set(state.migrating.values())
        | set(state.importing)
        | set(state.importing.values())
    )
    for node_id in involved:
        node = view.node(node_id)
        # A node that is down may hold keys that moved to it; closing the slot now would hide them.
        if node is not None and node.id not in reachable and not node.failed and node.role == "master":
            raise NotReady(f"slot {slot}: node {_name(node)} is unreachable")

    owner_node = view.owner_of(slot)
    owner = owner_node.id if owner_node is not None and owner_node.id in reachable else None
    claimed = False
    if owner_node is not None and owner is None:
        raise NotReady(f"slot {slot}: its owner {_name(owner_node)} is unreachable")
    if owner is None:
        # Nobody owns it: the open node with the most keys claims it (redis-cli --cluster fix does too).
        candidates = [n for n in involved | set(holders) if n in reachable]
        if not candidates:
            raise NotReady(f"slot {slot}: no reachable node to take it")
        owner = max(candidates, key=lambda n: (counts.get(n, {}).get(slot, 0), n in state.importing, n))
        session.cmd(moves.endpoint(owner), "CLUSTER", "SETSLOT", slot, "STABLE")
        session.cmd(moves.endpoint(owner), "CLUSTER", "ADDSLOTS", slot)
        claimed = True
        report.act(f"slot {slot} had no owner: assigned to {moves.endpoint(owner).address}")

    destination = owner
    heading = None if claimed else state.migrating.get(owner)
    target = view.node(heading) if heading else None
    if target is not None and target.id in reachable and target.is_master and target.id != owner:
        destination = target.id
        if state.importing.get(destination) != owner:
            session.cmd(moves.endpoint(destination), "CLUSTER", "SETSLOT", slot, "IMPORTING", owner)

    open_on = set(state.migrating) | set(state.importing)
    if destination == owner and owner in state.migrating:
        # Rolling back: the owner stops redirecting misses (to a node that will not get the slot)
        # before the strays come home; where a key exists twice, the owner's copy is the live one.
        _setslot_all(session, moves.endpoint(owner), [slot], "STABLE")
    keys = 0
    for holder in holders:
        if holder == destination:
            continue
        endpoint = moves.endpoint(holder)
        if holder not in open_on and holder != owner:
            # MIGRATE is only served for open slots on a non-owner; open it so the strays can leave.
            session.cmd(endpoint, "CLUSTER", "SETSLOT", slot, "IMPORTING", owner)
            open_on.add(holder)
        keys += _drain_slots(
            session,
            endpoint,
            moves.migrate_to(destination),
            [slot],
            replace=holder == owner,
            target_endpoint=moves.endpoint(destination),
        )

    if destination != owner:
        # The resharding order: the new owner first (clears its IMPORTING), then the old owner
        # (clears MIGRATING; refused if it still had keys), then everyone else.
        _setslot_all(session, moves.endpoint(destination), [slot], "NODE", destination)
        _setslot_all(session, moves.endpoint(owner), [slot], "NODE", destination)
        for other in masters:
            if other.id not in (owner, destination):
                _setslot_all(session, moves.endpoint(other.id), [slot], "NODE", destination, strict=False)
        done = f"finished moving slot {slot} to {moves.endpoint(destination).address}"
        leftovers = open_on - {owner, destination}
    else:
        done = f"closed slot {slot} on its owner {moves.endpoint(owner).address}"
        leftovers = open_on - {owner}
    # SETSLOT NODE <other> does not clear IMPORTING on a bystander; STABLE does, and keeps the owner.
    for node_id in sorted(leftovers & reachable):
        _setslot_all(session, moves.endpoint(node_id), [slot], "STABLE", strict=False)
    report.moved_keys += keys
    report.fixed_slots.append(slot)
    report.act(f"{done} ({keys} keys moved)")
