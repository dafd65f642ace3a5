"""The slot allocator and the rebalance planner (pure functions, no Redis)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

import pytest

from middleware.engines.redis.slots import (
    TOTAL_SLOTS,
    SlotMove,
    allocate_slots,
    apply_moves,
    compress,
    expand,
    format_ranges,
    is_balanced,
    plan_rebalance,
    target_counts,
    uncovered,
)


def layout(shards: int) -> dict[str, set[int]]:
    return {f"m{index}": set(expand([rng])) for index, rng in enumerate(allocate_slots(shards))}


def moved(moves: list[SlotMove]) -> int:
    return sum(len(move.slots) for move in moves)


def brute_force_minimum(current: Mapping[str, set[int]], masters: list[str]) -> int:
    """Fewest slots any even final layout must move: try every way of handing out the extras."""
    total = sum(len(slots) for slots in current.values())
    base, extra = divmod(total, len(masters))
    best = None
    for lucky in itertools.combinations(masters, extra):
        quota = {node: base + (node in lucky) for node in masters}
        cost = sum(len(slots) for node, slots in current.items() if node not in quota)
        cost += sum(max(0, len(current.get(node, ())) - quota[node]) for node in masters)
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


# --- ranges ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "ranges"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([3, 1, 2], [(1, 3)]),
        ([0, 1, 2, 7, 9, 10, 10], [(0, 2), (7, 7), (9, 10)]),
        (range(TOTAL_SLOTS), [(0, TOTAL_SLOTS - 1)]),
    ],
)
def test_compress_and_expand_round_trip(slots: list[int], ranges: list[tuple[int, int]]) -> None:
    assert compress(slots) == ranges
    assert expand(ranges) == sorted(set(slots))


def test_format_ranges_reads_like_cluster_nodes() -> None:
    assert format_ranges([(0, 5460), (5461, 5461), (7, 9)]) == "0-5460,5461,7-9"
    assert format_ranges([]) == ""


# --- allocation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 5, 7, 10, 16, 100, 1000, TOTAL_SLOTS])
def test_allocation_covers_every_slot_once_and_evenly(shards: int) -> None:
    ranges = allocate_slots(shards)
    assert len(ranges) == shards
    covered = [slot for first, last in ranges for slot in range(first, last + 1)]
    assert covered == list(range(TOTAL_SLOTS)), "contiguous, ascending, each slot exactly once"
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_allocation_matches_redis_cli_for_three_shards() -> None:
    assert allocate_slots(3) == [(0, 5461), (5462, 10922), (10923, 16383)]


@pytest.mark.parametrize("shards", [0, -1, TOTAL_SLOTS + 1])
def test_allocation_rejects_impossible_shard_counts(shards: int) -> None:
    with pytest.raises(ValueError):
        allocate_slots(shards)


# --- planner ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8])
def test_balanced_layout_plans_no_moves(shards: int) -> None:
    current = layout(shards)
    assert is_balanced(current, list(current))
    assert plan_rebalance(current, current) == []


@pytest.mark.parametrize(("before", "added"), [(1, 1), (3, 1), (3, 2), (3, 3), (4, 1), (5, 3), (6, 10)])
def test_adding_empty_masters_balances_with_minimal_moves(before: int, added: int) -> None:
    current = layout(before)
    masters = [*current, *(f"new{i}" for i in range(added))]
    moves = plan_rebalance(current, masters)
    after = apply_moves(current, moves)
    assert sorted(slot for slots in after.values() for slot in slots) == list(range(TOTAL_SLOTS))
    sizes = [len(after.get(node, ())) for node in masters]
    assert max(sizes) - min(sizes) <= 1
    assert all(move.source in current and move.target.startswith("new") for move in moves)
    assert moved(moves) == brute_force_minimum(current, masters)
    assert plan_rebalance(after, masters) == [], "planning again on the result is a no-op"


@pytest.mark.parametrize(("before", "drained"), [(2, 1), (4, 1), (4, 2), (5, 2), (7, 3)])
def test_draining_masters_end_with_zero_slots(before: int, drained: int) -> None:
    current = layout(before)
    leaving = sorted(current)[:drained]
    staying = [node for node in current if node not in leaving]
    moves = plan_rebalance(current, staying)
    after = apply_moves(current, moves)
    assert all(not after[node] for node in leaving)
    assert sorted(slot for slots in after.values() for slot in slots) == list(range(TOTAL_SLOTS))
    sizes = [len(after[node]) for node in staying]
    assert max(sizes) - min(sizes) <= 1
    assert all(move.target in staying for move in moves)
    assert moved(moves) == brute_force_minimum(current, staying)
    assert moved(moves) >= sum(len(current[node]) for node in leaving)
    # Drains are planned first so a departing master is emptied before the survivors even out.
    first_targets = moves[: len(leaving)]
    assert {move.source for move in first_targets} <= set(leaving)


def test_drain_and_add_at_once() -> None:
    current = layout(3)
    masters = ["m1", "m2", "fresh"]
    after = apply_moves(current, plan_rebalance(current, masters))
    assert not after["m0"]
    assert is_balanced(after, masters)


def test_uneven_layout_moves_only_the_excess() -> None:
    current = {"a": set(range(0, 10)), "b": set(range(10, 12)), "c": set()}
    moves = plan_rebalance(current, ["a", "b", "c"])
    assert moved(moves) == 6  # a: 10 -> 4, b: 2 -> 4, c: 0 -> 4
    assert [(m.source, m.target) for m in moves] == [("a", "c"), ("a", "b")]
    assert is_balanced(apply_moves(current, moves), ["a", "b", "c"])


def test_the_extra_slots_stay_where_they_already_are() -> None:
    # 7 slots over 2 masters: one keeps 4. Balanced already (4/3): nothing may move either way.
    assert plan_rebalance({"a": {0, 1, 2}, "b": {3, 4, 5, 6}}, ["a", "b"]) == []


def test_donors_give_contiguous_low_slots() -> None:
    current = layout(1)
    (move,) = plan_rebalance(current, ["m0", "x"])
    assert move.ranges == [(0, TOTAL_SLOTS // 2 - 1)]
    assert str(move).startswith("m0 -> x: 8192 slots (0-8191)")


@pytest.mark.parametrize("seed", range(25))
def test_random_layouts_are_balanced_minimally(seed: int) -> None:
    rnd = random.Random(seed)
    universe = list(range(rnd.randint(1, 60)))
    nodes = [f"n{i}" for i in range(rnd.randint(1, 6))]
    current: dict[str, set[int]] = {node: set() for node in nodes}
    for slot in universe:
        current[rnd.choice(nodes)].add(slot)
    masters = rnd.sample(nodes, rnd.randint(1, len(nodes))) + [f"new{i}" for i in range(rnd.randint(0, 3))]
    moves = plan_rebalance(current, masters)
    after = apply_moves(current, moves)
    assert sorted(slot for slots in after.values() for slot in slots) == universe
    assert is_balanced(after, masters)
    assert moved(moves) == brute_force_minimum(current, masters)
    assert all(move.slots and move.source != move.target for move in moves)
    assert plan_rebalance(after, masters) == []


def test_plan_is_deterministic() -> None:
    current = layout(3)
    assert plan_rebalance(current, ["m0", "m1", "m2", "x", "y"]) == plan_rebalance(
        dict(reversed(list(current.items()))), ["y", "x", "m2", "m1", "m0"]
    )


def test_target_counts_favour_current_holders() -> None:
    assert target_counts({"a": {1, 2, 3}, "b": {4}}, ["a", "b", "c"]) == {"a": 2, "b": 1, "c": 1}


def test_planner_rejects_double_ownership_and_no_masters() -> None:
    with pytest.raises(ValueError, match="slot 3"):
        plan_rebalance({"a": {1, 3}, "b": {3}}, ["a", "b"])
    with pytest.raises(ValueError):
        plan_rebalance({"a": {1}}, [])


def test_apply_moves_refuses_slots_the_source_lacks() -> None:
    with pytest.raises(ValueError, match="does not own"):
        apply_moves({"a": {1}}, [SlotMove("a", "b", (1, 2))])


def test_uncovered_lists_the_holes() -> None:
    assert uncovered({"a": set(range(0, 100)), "b": set(range(200, TOTAL_SLOTS))}) == [(100, 199)]
    assert uncovered(layout(3)) == []
