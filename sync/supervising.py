"""One supervision pass over a sync's redis-shake workloads, once for every runtime.

Per workload: what the runtime sees of it (``Seen``: running, still starting, exited, restarted in
place), one more ``Sample`` in its history, ``supervisor.decide`` over the recent samples, then
``judge`` corrects the decision with what only the runtime knows (a workload still starting is not
stalled; one that exited is started again unless it is crash-looping; one restarted in place over a
share it did not empty needs a fresh start; one reading a master moves to a replica once one is
healthy). The pass then acts through the port: a re-plan first (restarts wait for the next pass,
decided again on the new plan), else the restarts, each unless the runtime holds it (the target's
sentinels name no master, a back-off after quick failures).

The operator's timer runs it over Deployments (``operators/reconcile/sync.py``: a restart rolls the
pod, a re-plan applies new configs); ``moorage sync`` over local processes (``sync/local_runner.py``:
a restart kills and respawns, a re-plan rewrites configs). Each supplies a ``WorkloadsPort``.
"""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from middleware.endpoints import Endpoint
from middleware.errors import MoorageError
from sync.observe import shard_now
from sync.plan import RedisTopology, ShakeWorkload
from sync.supervisor import Action, Decision, Policy, Sample, State, decide

# Samples kept per workload: enough for every window ``decide`` looks at.
HISTORY = 32


class Liveness(StrEnum):
    RUNNING = "running"
    # The platform is starting it (a pod scheduling, pulling its image): its silence is expected.
    STARTING = "starting"
    # Gone, and nothing but the supervisor starts it again (a local process).
    EXITED = "exited"
    # Restarted by the platform (a container restart in its pod) without emptying its share first:
    # that restart was a full sync over the keys its previous run wrote.
    RESTARTED_IN_PLACE = "restarted in place"


@dataclass(frozen=True)
class Seen:
    liveness: Liveness
    detail: str = ""


class WorkloadsPort(Protocol):
    """What supervising sync workloads needs of a runtime."""

    def sides(self) -> tuple[RedisTopology | None, RedisTopology | None]:
        """The source and the target as observed now (None: not observable this pass)."""
        ...

    def seen(self, workload: ShakeWorkload) -> Seen: ...

    def history(self, workload: ShakeWorkload) -> MutableSequence[Sample]:
        """This workload's samples, oldest first, kept between passes by the port."""
        ...

    def sample(
        self, workload: ShakeWorkload, seen: Seen, source: RedisTopology | None, target: RedisTopology | None
    ) -> Sample: ...

    def heartbeat(self, workload: ShakeWorkload, source_master: Endpoint) -> float | None:
        """Lag in seconds from the workload's heartbeat key (a new one written when due, if the
        port writes heartbeats); None when no key applies or a side cannot be read."""
        ...

    def restarts_held(self) -> str | None:
        """Why no workload may be restarted or re-planned now (None: they may)."""
        ...

    def backing_off(self, workload: ShakeWorkload, reason: str) -> str | None:
        """Why this workload's restart waits (a back-off after quick failures), or None."""
        ...

    def restart(self, workload: ShakeWorkload, reason: str) -> None:
        """Start it again from an emptied share (a full resync). Raises ``NotRestarted`` when it
        could not (the next pass decides again)."""
        ...

    def replan(self, replans: Sequence[tuple[ShakeWorkload, Decision]]) -> list[str]:
        """Plan again from the topology observed now and put the new plan in place."""
        ...


class NotRestarted(MoorageError):
    pass


@dataclass(frozen=True)
class Verdict:
    workload: ShakeWorkload
    seen: Seen
    decision: Decision
    heartbeat_lag: float | None = None


@dataclass(frozen=True)
class Pass:
    verdicts: list[Verdict]
    acted: list[str] = field(default_factory=list)
    restarted: dict[str, str] = field(default_factory=dict)  # workload -> reason, restarted this pass
    replanned: bool = False


def judge(workload: ShakeWorkload, decision: Decision, seen: Seen, source: RedisTopology | None) -> Decision:
    """``decide``'s decision corrected with what the runtime sees of the workload."""
    if decision.action is Action.REPLAN:
        return decision
    if seen.liveness is Liveness.STARTING and decision.action is Action.RESTART:
        # No process yet (scheduling, image pull): silence is expected, a restart cannot help.
        decision = Decision(State.UNKNOWN, Action.NONE, f"not running yet ({seen.detail or 'starting'})")
    if seen.liveness is Liveness.EXITED:
        if decision.state is State.CRASH_LOOPING:
            return decision
        return replace(decision, action=Action.RESTART, reason=seen.detail or "the process exited")
    if decision.action is Action.NONE and not workload.reads_replica and source is not None:
        # Planned onto the master because no replica was healthy then (right after a failover the
        # replicas are still re-attaching): move off it as soon as one is.
        shard = shard_now(source, workload.source_master, workload.reader, workload.source_slots)
        if shard is not None and any(r.healthy for r in shard.replicas):
            return replace(
                decision,
                action=Action.REPLAN,
                reason=f"a replica of {shard.master} is healthy again: reading it instead of the master",
            )
    if decision.action is Action.NONE and seen.liveness is Liveness.RESTARTED_IN_PLACE:
        return replace(
            decision,
            action=Action.RESTART,
            reason=f"redis-shake {seen.detail or 'restarted in place'}: a full sync over a share not "
            "emptied first",
        )
    return decision


def supervise_step(
    port: WorkloadsPort, workloads: Sequence[ShakeWorkload], policy: Policy, *, act: bool = True
) -> Pass:
    """Sample, decide and (with ``act``) act once. Without ``act`` (a status read) nothing is
    restarted or re-planned and the decisions are only reported."""
    source, target = port.sides()
    verdicts: list[Verdict] = []
    for workload in workloads:
        seen = port.seen(workload)
        history = port.history(workload)
        history.append(port.sample(workload, seen, source, target))
        while len(history) > HISTORY:
            del history[0]
        decision = judge(workload, decide(workload, list(history), policy), seen, source)
        beats = None
        if seen.liveness is Liveness.RUNNING and source is not None:
            beats = port.heartbeat(workload, history[-1].source_master or workload.source_master)
        verdicts.append(Verdict(workload, seen, decision, beats))
    if not act:
        return Pass(verdicts)
    replans = [(v.workload, v.decision) for v in verdicts if v.decision.action is Action.REPLAN]
    restarts = [v for v in verdicts if v.decision.action is Action.RESTART]
    if not (replans or restarts):
        return Pass(verdicts)
    held = port.restarts_held()
    if held is not None:
        return Pass(verdicts, acted=[held])
    if replans:
        return Pass(verdicts, acted=port.replan(replans), replanned=True)
    acted: list[str] = []
    restarted: dict[str, str] = {}
    for verdict in restarts:
        reason = verdict.decision.reason
        waiting = port.backing_off(verdict.workload, reason)
        if waiting is not None:
            acted.append(waiting)
            continue
        try:
            port.restart(verdict.workload, reason)
        except NotRestarted as exc:
            acted.append(f"{verdict.workload.name}: not restarted: {exc}")
            continue
        acted.append(f"{verdict.workload.name}: restarted (full resync): {reason}")
        restarted[verdict.workload.name] = reason
    return Pass(verdicts, acted, restarted)
