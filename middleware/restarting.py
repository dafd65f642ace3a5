"""A rolling restart carried out one step at a time, once for every runtime.

``middleware.rolling.next_step`` decides what comes next from the members' states; ``restart_step``
takes a snapshot through a ``RestartPort``, asks it, and does that step: nothing yet (``WAITING``),
a switchover away from the primary (the engine's own, over the snapshot's connection), or one
member restarted through the port. The CLI on the local runtime calls it until it reports
``FINISHED`` (the port restarts processes and remembers which); the operator calls it once per pass
and is called again by kopf (the port evicts pods, and a member counts as restarted when its pod
was created after the operation started, so no memory is needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from middleware.engines.base import Connection, Engine, Observation
from middleware.errors import MoorageError, NotReady, OperationError
from middleware.rolling import MemberState, Step, StepKind, next_step
from middleware.spec import ResolvedSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """The members and what the engine observes of them; ``observation`` is None when it could not
    observe them (``problem`` says why)."""

    conn: Connection
    observation: Observation | None
    up: Mapping[str, bool]
    restarted: frozenset[str]
    problem: str = ""


class RestartPort(Protocol):
    def snapshot(self, spec: ResolvedSpec, engine: Engine) -> Snapshot:
        """The members now (``observe_members`` builds it from what the runtime sees)."""
        ...

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        """Start restarting ``name`` with its data; the reason when it may not be now (a disruption
        budget), else None."""
        ...

    def switched_over(self, spec: ResolvedSpec, engine: Engine, snapshot: Snapshot) -> None:
        """After a switchover: the local runtime starts an old primary the engine fenced (stopped),
        which is its restart; the operator relabels roles so the Services follow the new primary."""
        ...


def observe_members(
    spec: ResolvedSpec, engine: Engine, conn: Connection, up: Mapping[str, bool], restarted: frozenset[str]
) -> Snapshot:
    """A snapshot of the members a runtime sees, with what the engine observes of them."""
    try:
        observation: Observation | None = engine.observe(spec, conn)
        problem = ""
    except MoorageError as error:
        observation, problem = None, str(error)
    return Snapshot(conn, observation, up, restarted, problem)


class Outcome(StrEnum):
    WAITING = "waiting"  # nothing could be done now; call again later
    SWITCHED_OVER = "switched-over"
    RESTARTING = "restarting"  # a member was asked to restart
    FINISHED = "finished"


@dataclass(frozen=True)
class RestartProgress:
    outcome: Outcome
    message: str
    snapshot: Snapshot
    restarted: int = 0
    members: int = 0
    actions: list[str] = field(default_factory=list)


def restart_step(port: RestartPort, spec: ResolvedSpec, engine: Engine) -> RestartProgress:
    snapshot = port.snapshot(spec, engine)
    if snapshot.observation is None:
        why = f"observing the members: {snapshot.problem or 'no answer'}"
        return RestartProgress(Outcome.WAITING, why, snapshot)
    observation = snapshot.observation
    states = [
        MemberState(
            m.name,
            m.role,
            snapshot.up.get(m.name, False),
            m.name in snapshot.restarted,
            m.shard,
            m.healthy,
        )
        for m in observation.members
    ]
    done, total = sum(1 for s in states if s.restarted), len(states)
    step = next_step(states, observation.ready)

    def progress(outcome: Outcome, message: str, actions: list[str] | None = None) -> RestartProgress:
        return RestartProgress(outcome, message, snapshot, done, total, actions or [])

    if step.kind == StepKind.WAIT:
        return progress(Outcome.WAITING, f"{step.reason} ({done}/{total} restarted)")
    if step.kind == StepKind.DONE:
        return progress(Outcome.FINISHED, step.reason)
    assert step.member is not None
    if step.kind == StepKind.SWITCHOVER:
        switched = _switch_over(port, spec, engine, snapshot, step)
        if isinstance(switched, str):
            return progress(Outcome.WAITING, switched)
        if switched is not None:
            message = "; ".join(switched)
            return progress(
                Outcome.SWITCHED_OVER, f"switched over ({message}); {done}/{total} restarted", switched
            )
    refusal = port.restart_member(spec, engine, step.member)
    if refusal is not None:
        return progress(Outcome.WAITING, refusal)
    return progress(Outcome.RESTARTING, f"{step.reason}; {done}/{total} restarted")


def _switch_over(
    port: RestartPort, spec: ResolvedSpec, engine: Engine, snapshot: Snapshot, step: Step
) -> list[str] | str | None:
    """The switchover's actions; a reason to wait (a replica still catching up); None when this
    engine cannot switch over (ZooKeeper, a standalone), so its primary restarts as it is."""
    try:
        report = engine.switchover(spec, snapshot.conn, step.target)
    except NotReady as error:
        return f"switchover before restarting {step.member}: {error}"
    except OperationError as error:
        log.info("%s/%s: no switchover (%s); restarting %s", spec.namespace, spec.name, error, step.member)
        return None
    port.switched_over(spec, engine, snapshot)
    return report.actions or ["switched over"]
