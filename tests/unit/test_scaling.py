"""The shared shape-change step (``middleware.scaling``), with the runtime port held in memory.

The step's engine work (``engine.scale``) runs against real servers in the integration tests (local
runtime: ``test_cli_redis``, ``test_zookeeper``, ``test_postgresql``) and on real pods in the e2e
tier; here only the decisions before it: which members must be up, and waiting while they are not.
"""

from __future__ import annotations

import pytest

from middleware.engines.base import Connection, Engine
from middleware.engines.registry import get_engine
from middleware.scaling import Wait, describe_change, scale_step, shape, widest
from middleware.spec import ResolvedSpec
from tests.unit.manifests import middleware_spec


def redis_cluster(shards: int, replicas: int) -> ResolvedSpec:
    return middleware_spec(
        "cache", "shop", {"engine": "redis", "topology": "cluster", "shards": shards, "replicas": replicas}
    )


class InMemoryMembers:
    """A runtime port whose members come up only when a test says so."""

    def __init__(self, up: set[str]) -> None:
        self.up = up
        self.asked: list[tuple[int, int, int]] = []

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        self.asked.append(shape(spec))
        return [m.name for m in engine.members(spec) if m.name not in self.up]

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        raise AssertionError("no connection while members are not up")


@pytest.mark.parametrize(
    ("old", "new", "wide"),
    [((3, 1), (4, 1), (4, 1)), ((4, 1), (3, 1), (4, 1)), ((3, 1), (3, 2), (3, 2)), ((4, 2), (3, 1), (4, 2))],
)
def test_widest_holds_the_members_of_both_shapes(
    old: tuple[int, int], new: tuple[int, int], wide: tuple[int, int]
) -> None:
    engine = get_engine("redis")
    before, after = redis_cluster(*old), redis_cluster(*new)
    both = widest(before, after)
    assert (both.shards, both.replicas) == wide
    names = {m.name for m in engine.members(both)}
    assert {m.name for m in engine.members(before)} <= names
    assert {m.name for m in engine.members(after)} <= names


def test_scale_out_waits_for_the_new_members_before_moving_data() -> None:
    engine = get_engine("redis")
    before, after = redis_cluster(3, 1), redis_cluster(4, 1)
    port = InMemoryMembers({m.name for m in engine.members(before)})
    step = scale_step(port, before, after, engine)
    assert isinstance(step, Wait)
    new_members = sorted({m.name for m in engine.members(after)} - port.up)
    assert new_members and len(new_members) == len(engine.members(after)) - len(engine.members(before))
    assert all(name in step.reason for name in new_members)
    assert step.reason.startswith("shards/replicas/sentinels 3/1/0 -> 4/1/0")
    assert port.asked == [(4, 1, 0)]


def test_scale_in_brings_up_the_leaving_members_too() -> None:
    """A leaving member that is down (a crashed pod) must come back first: its slots move off it."""
    engine = get_engine("redis")
    before, after = redis_cluster(4, 1), redis_cluster(3, 1)
    leaving = sorted({m.name for m in engine.members(before)} - {m.name for m in engine.members(after)})
    port = InMemoryMembers({m.name for m in engine.members(before)} - {leaving[0]})
    step = scale_step(port, before, after, engine)
    assert isinstance(step, Wait)
    assert leaving[0] in step.reason
    assert port.asked == [(4, 1, 0)]


def test_describe_change_names_the_counts() -> None:
    assert (
        describe_change(redis_cluster(3, 1), redis_cluster(5, 2))
        == "shards/replicas/sentinels 3/1/0 -> 5/2/0"
    )
