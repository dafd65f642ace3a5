"""The shared rolling-restart step (``middleware.restarting``), with the runtime port held in memory.

The step's engine work (a switchover) runs on real servers in the integration tests (the local
runtime's `moorage restart` of a sentinel deployment, PostgreSQL's restart-only parameter rolled
out primary last) and on real pods in the e2e tier; here what the step does with a snapshot.
"""

from __future__ import annotations

from middleware.engines.base import Connection, Engine, Observation, ObservedMember
from middleware.engines.registry import get_engine
from middleware.restarting import Outcome, Snapshot, restart_step
from middleware.spec import ResolvedSpec
from tests.unit.manifests import middleware_spec

SPEC = middleware_spec("coord", "shop", {"engine": "zookeeper", "topology": "ensemble", "replicas": 3})
MEMBERS = ["coord-0", "coord-1", "coord-2"]


class InMemoryRestarts:
    def __init__(
        self, *, up: set[str], restarted: set[str], leader: str = "coord-0", refuse: str | None = None
    ):
        self.up, self.restarted, self.leader, self.refuse = up, restarted, leader, refuse
        self.asked: list[str] = []
        self.observable = True

    def snapshot(self, spec: ResolvedSpec, engine: Engine) -> Snapshot:
        conn = Connection([], None)
        if not self.observable:
            return Snapshot(conn, None, {}, frozenset(), "connection refused")
        members = [
            ObservedMember(
                name, f"{name}:2181", "leader" if name == self.leader else "follower", name in self.up
            )
            for name in MEMBERS
        ]
        observation = Observation(members, ready=self.up == set(MEMBERS), reason="test")
        return Snapshot(conn, observation, {n: n in self.up for n in MEMBERS}, frozenset(self.restarted))

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        self.asked.append(name)
        if name == self.refuse:
            return f"the PodDisruptionBudget does not allow evicting {name} now"
        self.restarted.add(name)
        return None

    def switched_over(self, spec: ResolvedSpec, engine: Engine, snapshot: Snapshot) -> None:
        raise AssertionError("no switchover expected here")


def test_followers_restart_one_at_a_time_highest_first() -> None:
    port = InMemoryRestarts(up=set(MEMBERS), restarted=set())
    step = restart_step(port, SPEC, get_engine("zookeeper"))
    assert step.outcome == Outcome.RESTARTING
    assert port.asked == ["coord-2"]
    assert step.message == "restarting follower coord-2; 0/3 restarted"


def test_a_member_down_is_waited_for_and_named() -> None:
    port = InMemoryRestarts(up={"coord-0", "coord-1"}, restarted={"coord-2"})
    step = restart_step(port, SPEC, get_engine("zookeeper"))
    assert step.outcome == Outcome.WAITING
    assert "coord-2" in step.message and "1/3 restarted" in step.message
    assert port.asked == []


def test_a_refused_eviction_is_a_wait_with_its_reason() -> None:
    port = InMemoryRestarts(up=set(MEMBERS), restarted=set(), refuse="coord-2")
    step = restart_step(port, SPEC, get_engine("zookeeper"))
    assert step.outcome == Outcome.WAITING
    assert step.message == "the PodDisruptionBudget does not allow evicting coord-2 now"


def test_unobservable_members_are_a_wait_that_says_why() -> None:
    port = InMemoryRestarts(up=set(MEMBERS), restarted=set())
    port.observable = False
    step = restart_step(port, SPEC, get_engine("zookeeper"))
    assert step.outcome == Outcome.WAITING
    assert step.message == "observing the members: connection refused"


def test_every_member_restarted_and_healthy_is_finished() -> None:
    port = InMemoryRestarts(up=set(MEMBERS), restarted=set(MEMBERS))
    step = restart_step(port, SPEC, get_engine("zookeeper"))
    assert step.outcome == Outcome.FINISHED
    assert (step.restarted, step.members) == (3, 3)
    assert port.asked == []
