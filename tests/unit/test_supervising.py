"""The shared supervision pass (``sync.supervising``), with the runtime port held in memory.

What redis-shake and the Redis servers do is tested for real elsewhere: local processes in
``tests/integration/test_sync_local.py`` (restarts after a kill, re-plans after failovers, the
back-off), pods in ``tests/e2e/test_sync.py``, both through this pass. Here only its decisions:
``judge``'s corrections and which of the port's actions a pass takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from middleware.endpoints import Endpoint
from middleware.models.sync import RedisEndpointKind
from sync.plan import RedisTopology, Replica, ShakeWorkload, Shard, plan
from sync.supervising import HISTORY, Liveness, NotRestarted, Seen, judge, supervise_step
from sync.supervisor import Action, Decision, Policy, Sample, State

MASTER = Endpoint("src-0", 6379)
REPLICA = Endpoint("src-0r", 6379)
SLOTS = ((0, 16383),)


def source(replica_healthy: bool) -> RedisTopology:
    return RedisTopology(
        RedisEndpointKind.CLUSTER, (Shard(MASTER, (Replica(REPLICA, replica_healthy),), SLOTS),)
    )


TARGET = RedisTopology(RedisEndpointKind.STANDALONE, (Shard(Endpoint("dst-0", 6379)),))
(ON_REPLICA,) = plan("orders", source(True), TARGET)
(ON_MASTER,) = plan("orders", source(False), TARGET)
POLICY = Policy(stall_samples=3, crash_restarts=3, silent_samples=3)
HEALTHY = Decision(State.HEALTHY, Action.NONE, "in sync")


def test_plans_read_a_healthy_replica_else_the_master() -> None:
    assert ON_REPLICA.reads_replica and ON_REPLICA.reader == REPLICA
    assert not ON_MASTER.reads_replica and ON_MASTER.reader == MASTER


def test_a_restart_of_a_workload_still_starting_waits() -> None:
    stalled = Decision(State.STALLED, Action.RESTART, "no progress")
    judged = judge(ON_REPLICA, stalled, Seen(Liveness.STARTING, "pod phase Pending"), source(True))
    assert judged.action is Action.NONE and "pod phase Pending" in judged.reason


def test_an_exited_process_is_restarted_unless_it_is_crash_looping() -> None:
    exited = Seen(Liveness.EXITED, "the process exited (see out.log)")
    judged = judge(ON_REPLICA, HEALTHY, exited, source(True))
    assert judged.action is Action.RESTART and judged.reason == exited.detail
    looping = Decision(State.CRASH_LOOPING, Action.NONE, "restarted 3 times")
    assert judge(ON_REPLICA, looping, exited, source(True)) == looping


def test_reading_the_master_moves_to_a_replica_once_one_is_healthy() -> None:
    judged = judge(ON_MASTER, HEALTHY, Seen(Liveness.RUNNING), source(True))
    assert judged.action is Action.REPLAN and "healthy again" in judged.reason
    assert judge(ON_MASTER, HEALTHY, Seen(Liveness.RUNNING), source(False)) == HEALTHY
    assert judge(ON_REPLICA, HEALTHY, Seen(Liveness.RUNNING), source(True)) == HEALTHY


def test_a_restart_in_place_over_an_unemptied_share_needs_a_fresh_start() -> None:
    seen = Seen(Liveness.RESTARTED_IN_PLACE, "restarted in its pod (1 restarts)")
    judged = judge(ON_REPLICA, HEALTHY, seen, source(True))
    assert judged.action is Action.RESTART and "not emptied" in judged.reason


def test_a_replan_decided_from_the_samples_is_never_overridden() -> None:
    moved = Decision(State.SOURCE_FAILOVER, Action.REPLAN, "source master moved")
    for liveness in Liveness:
        assert judge(ON_REPLICA, moved, Seen(liveness), source(True)) == moved


class InMemoryWorkloads:
    """A runtime port whose workloads are as a test says; records what the pass asked of it."""

    def __init__(self, seen: dict[str, Seen], *, held: str | None = None, backoff: str | None = None) -> None:
        self.seen_as, self.held, self.backoff = seen, held, backoff
        self.histories: dict[str, list[Sample]] = {}
        self.restarted: list[tuple[str, str]] = []
        self.replanned: list[list[str]] = []
        self.refuse_restart = False
        self.source_master: Endpoint | None = MASTER

    def sides(self) -> tuple[RedisTopology | None, RedisTopology | None]:
        return source(True), TARGET

    def seen(self, workload: ShakeWorkload) -> Seen:
        return self.seen_as[workload.name]

    def history(self, workload: ShakeWorkload) -> list[Sample]:
        return self.histories.setdefault(workload.name, [])

    def sample(
        self, workload: ShakeWorkload, seen: Seen, source: RedisTopology | None, target: RedisTopology | None
    ) -> Sample:
        at = float(len(self.histories.get(workload.name, [])))
        return Sample(at=at, status=None, restarts=0, source_master=self.source_master, source_offset=None)

    def heartbeat(self, workload: ShakeWorkload, source_master: Endpoint) -> float | None:
        return 0.25

    def restarts_held(self) -> str | None:
        return self.held

    def backing_off(self, workload: ShakeWorkload, reason: str) -> str | None:
        return self.backoff

    def restart(self, workload: ShakeWorkload, reason: str) -> None:
        if self.refuse_restart:
            raise NotRestarted("port 7001 is taken")
        self.restarted.append((workload.name, reason))

    def replan(self, replans: Sequence[tuple[ShakeWorkload, Decision]]) -> list[str]:
        self.replanned.append([w.name for w, _ in replans])
        return ["re-planned"]


EXITED = {ON_REPLICA.name: Seen(Liveness.EXITED, "the process exited")}


def test_a_status_read_decides_but_never_acts() -> None:
    port = InMemoryWorkloads(EXITED)
    passed = supervise_step(port, [ON_REPLICA], POLICY, act=False)
    (verdict,) = passed.verdicts
    assert verdict.decision.action is Action.RESTART
    assert port.restarted == [] and passed.acted == []


def test_a_pass_restarts_what_it_decided_to_and_reports_it() -> None:
    port = InMemoryWorkloads(EXITED)
    passed = supervise_step(port, [ON_REPLICA], POLICY)
    assert port.restarted == [(ON_REPLICA.name, "the process exited")]
    assert passed.restarted == {ON_REPLICA.name: "the process exited"}
    assert passed.acted == [f"{ON_REPLICA.name}: restarted (full resync): the process exited"]


def test_a_refused_restart_is_reported_and_not_counted() -> None:
    port = InMemoryWorkloads(EXITED)
    port.refuse_restart = True
    passed = supervise_step(port, [ON_REPLICA], POLICY)
    assert passed.restarted == {} and passed.acted == [
        f"{ON_REPLICA.name}: not restarted: port 7001 is taken"
    ]


def test_held_restarts_and_back_off_act_on_nothing() -> None:
    held = InMemoryWorkloads(EXITED, held="target sentinels name no master")
    assert supervise_step(held, [ON_REPLICA], POLICY).acted == ["target sentinels name no master"]
    waiting = InMemoryWorkloads(EXITED, backoff="restart in 4s")
    assert supervise_step(waiting, [ON_REPLICA], POLICY).acted == ["restart in 4s"]
    assert held.restarted == [] and waiting.restarted == []


def test_a_replan_comes_first_and_restarts_wait_for_the_next_pass() -> None:
    other = dataclasses.replace(ON_MASTER, name="orders-other")
    port = InMemoryWorkloads({**EXITED, other.name: Seen(Liveness.RUNNING)})
    passed = supervise_step(port, [ON_REPLICA, other], POLICY)
    assert port.replanned == [[other.name]] and passed.replanned
    assert port.restarted == []


def test_heartbeats_only_for_running_workloads_and_history_is_bounded() -> None:
    port = InMemoryWorkloads({ON_REPLICA.name: Seen(Liveness.RUNNING)})
    for _ in range(HISTORY + 5):
        passed = supervise_step(port, [ON_REPLICA], POLICY)
    assert passed.verdicts[0].heartbeat_lag == 0.25
    assert len(port.histories[ON_REPLICA.name]) == HISTORY
    starting = InMemoryWorkloads({ON_REPLICA.name: Seen(Liveness.STARTING)})
    assert supervise_step(starting, [ON_REPLICA], POLICY).verdicts[0].heartbeat_lag is None
