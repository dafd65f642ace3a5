"""Redis Cluster hash-slot arithmetic and the rebalance planner. Pure: no I/O, no clock.

Slot ranges are inclusive ``(first, last)`` pairs, as ``CLUSTER ADDSLOTSRANGE`` and ``CLUSTER NODES``
spell them. The planner works on any set of slot numbers, so tests can reason about tiny universes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

TOTAL_SLOTS = 16384

SlotRange = tuple[int, int]


@dataclass(frozen=True)
class SlotMove:
    """Move ``slots`` (ascending) from master ``source`` to master ``target`` (node ids)."""

    source: str
    target: str
    slots: tuple[int, ...]

    @property
    def ranges(self) -> list[SlotRange]:
        return compress(self.slots)

    def __str__(self) -> str:
        return (
            f"{self.source[:8]} -> {self.target[:8]}: {len(self.slots)} slots ({format_ranges(self.ranges)})"
        )


def compress(slots: Iterable[int]) -> list[SlotRange]:
    """Sorted, merged inclusive ranges covering exactly ``slots`` (duplicates are ignored)."""
    ranges: list[SlotRange] = []
    for slot in sorted(set(slots)):
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges


def expand(ranges: Iterable[SlotRange]) -> list[int]:
    """Every slot in ``ranges``, ascending and without duplicates."""
    return sorted({slot for first, last in ranges for slot in range(first, last + 1)})


def format_ranges(ranges: Iterable[SlotRange]) -> str:
    """``0-5460,5461`` style: what an operator reads in logs and status."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def allocate_slots(shards: int, total: int = TOTAL_SLOTS) -> list[SlotRange]:
    """One contiguous range per shard, sizes differing by at most one (larger ones first).

    The same split ``redis-cli --cluster create`` makes, so clusters created by either look alike.
    """
    if shards < 1:
        raise ValueError("a cluster needs at least one shard")
    if shards > total:
        raise ValueError(f"{shards} shards cannot share {total} slots")
    base, extra = divmod(total, shards)
    ranges: list[SlotRange] = []
    first = 0
    for index in range(shards):
        size = base + (1 if index < extra else 0)
        ranges.append((first, first + size - 1))
        first += size
    return ranges


def target_counts(current: Mapping[str, Collection[int]], masters: Collection[str]) -> dict[str, int]:
    """How many slots each of ``masters`` should own once balanced.

    Everyone gets ``total // n``; the ``total % n`` extra slots go to the masters that already hold
    the most, which is what makes the plan move as little as possible (ties broken by id so the
    plan is deterministic).
    """
    if not masters:
        raise ValueError("cannot balance slots over zero masters")
    total = sum(len(slots) for slots in current.values())
    base, extra = divmod(total, len(masters))
    by_size = sorted(masters, key=lambda node: (-len(current.get(node, ())), node))
    return {node: base + (1 if rank < extra else 0) for rank, node in enumerate(by_size)}


def _check_ownership(current: Mapping[str, Collection[int]]) -> None:
    seen: dict[int, str] = {}
    for node, slots in current.items():
        for slot in slots:
            if slot in seen:
                raise ValueError(f"slot {slot} is owned by both {seen[slot]} and {node}")
            seen[slot] = node


def plan_rebalance(current: Mapping[str, Collection[int]], masters: Iterable[str]) -> list[SlotMove]:
    """Moves that leave ``masters`` with an even share of every owned slot, moving as few as possible.

    ``current`` maps each master id to the slots it owns now (masters without slots may be absent).
    ``masters`` is the set that should own slots afterwards: ids not in ``current`` are new, empty
    masters; ids in ``current`` but not in ``masters`` are being drained and end with zero slots.

    Donors give away their lowest slots (keeping what stays contiguous where it was); moves are
    ordered drains first, then by size, so the cluster sheds departing masters early.
    """
    _check_ownership(current)
    targets = sorted(set(masters))
    quota = target_counts(current, targets)
    drained = sorted(node for node, slots in current.items() if node not in quota and slots)

    donors: list[tuple[str, list[int]]] = []
    for node in drained:
        donors.append((node, sorted(current[node])))
    surplus = [
        (node, sorted(current.get(node, ()))) for node in targets if len(current.get(node, ())) > quota[node]
    ]
    surplus.sort(key=lambda item: (-(len(item[1]) - quota[item[0]]), item[0]))
    donors += [(node, slots[: len(slots) - quota[node]]) for node, slots in surplus]

    receivers = [(node, quota[node] - len(current.get(node, ()))) for node in targets]
    receivers = [(node, need) for node, need in receivers if need > 0]
    receivers.sort(key=lambda item: (-item[1], item[0]))

    moves: list[SlotMove] = []
    receiver_index = 0
    for source, give in donors:
        position = 0
        while position < len(give):
            if receiver_index >= len(receivers):  # cannot happen when quotas add up; guard the invariant
                raise AssertionError("rebalance plan has slots left without a receiver")
            target, need = receivers[receiver_index]
            chunk = give[position : position + need]
            moves.append(SlotMove(source=source, target=target, slots=tuple(chunk)))
            position += len(chunk)
            need -= len(chunk)
            if need:
                receivers[receiver_index] = (target, need)
            else:
                receiver_index += 1
    return moves


def apply_moves(current: Mapping[str, Collection[int]], moves: Sequence[SlotMove]) -> dict[str, set[int]]:
    """The ownership after ``moves``; raises if a move takes a slot its source does not own."""
    result = {node: set(slots) for node, slots in current.items()}
    for move in moves:
        owned = result.setdefault(move.source, set())
        missing = [slot for slot in move.slots if slot not in owned]
        if missing:
            raise ValueError(f"{move.source} does not own slots {format_ranges(compress(missing))}")
        owned.difference_update(move.slots)
        result.setdefault(move.target, set()).update(move.slots)
    return result


def is_balanced(current: Mapping[str, Collection[int]], masters: Collection[str]) -> bool:
    """Every master in ``masters`` holds ``n`` or ``n + 1`` slots and nobody else holds any."""
    if any(slots for node, slots in current.items() if node not in masters):
        return False
    sizes = [len(current.get(node, ())) for node in masters]
    return bool(sizes) and max(sizes) - min(sizes) <= 1


def uncovered(current: Mapping[str, Collection[int]], total: int = TOTAL_SLOTS) -> list[SlotRange]:
    """Slots in ``0..total-1`` that nobody owns."""
    owned: set[int] = set()
    for slots in current.values():
        owned.update(slots)
    return compress(slot for slot in range(total) if slot not in owned)
