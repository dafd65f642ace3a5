"""Bringing a deployment to its spec (``up``, the operator's create/update pass), once for every runtime.

One non-blocking step: every planned member up (``Wait`` while one is not) -> the engine's bootstrap
(PostProvision: idempotent, so it forms, heals and promotes only what is missing) -> the engine's
observation (RoleProbe) -> members the observation says rejoin only by a restart with their data
restarted through the port (``Wait`` again) -> parameters that changed since the last applied spec,
applied live by the engine and persisted by the runtime. The result says what happened; the caller
decides what to show (the CLI's progress and status file, the operator's conditions and Events) and
what comes next (a rolling restart for parameters that only take effect after one).

The CLI on the local runtime calls the step until it is done (a start timeout per thing waited for);
the operator turns ``Wait`` into ``kopf.TemporaryError`` and is called again by kopf. A failure of
the engine's work carries the stage it happened in (``StepFailed``), so the operator can name it in
its conditions; the CLI shows the engine's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from middleware.engines.base import (
    Connection,
    Engine,
    Observation,
    Progress,
    ReconfigureReport,
    Report,
    no_progress,
)
from middleware.errors import MoorageError
from middleware.scaling import MembersPort, Wait, waiting_for
from middleware.spec import ResolvedSpec

T = TypeVar("T")


class ProvisionPort(MembersPort, Protocol):
    """What bringing a deployment to its spec needs of a runtime, beyond starting members."""

    def persist_parameters(self, spec: ResolvedSpec, engine: Engine, changed: dict[str, str]) -> None:
        """Make parameter values the engine just applied survive a restart (the local runtime
        writes them into each member's kept config; on Kubernetes the re-rendered ConfigMap already
        holds them)."""
        ...

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        """Restart ``name`` with its data (its start prepares it: PostgreSQL rewinds a member whose
        history diverged); the reason when not now (a disruption budget, a member that restarted
        a moment ago and may still be catching up), else None."""
        ...


class Stage(StrEnum):
    BOOTSTRAP = "bootstrap"
    OBSERVE = "observe"
    RECONFIGURE = "reconfigure"


class StepFailed(MoorageError):
    """The engine's work failed at ``stage``; ``cause`` is the engine's own error (network, a member
    still loading, a refusal). Every stage is idempotent: the step may simply be called again."""

    def __init__(self, stage: Stage, cause: Exception, what: str = "") -> None:
        self.stage, self.cause = stage, cause
        super().__init__(f"{what or stage.value} failed: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class Converged:
    """Every member up, bootstrapped and observed, changed parameters applied."""

    bootstrap: Report
    observation: Observation
    reconfigured: ReconfigureReport = field(default_factory=ReconfigureReport)
    # Parameters removed from the spec: the running value stays until a restart (and even then an
    # engine may keep it: see docs/operations.md), so they are reported, never silently dropped.
    removed_parameters: tuple[str, ...] = ()

    @property
    def pending_restart(self) -> list[str]:
        """Parameters written but not in effect until the members restart."""
        return sorted({*self.reconfigured.needs_restart, *self.removed_parameters})


def changed_parameters(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """Parameters set to a new value (or newly set)."""
    return {k: v for k, v in new.items() if old.get(k) != v}


def provision_step(
    port: ProvisionPort,
    spec: ResolvedSpec,
    engine: Engine,
    applied_parameters: Mapping[str, str] | None = None,
    progress: Progress = no_progress,
) -> Wait | Converged:
    """One non-blocking step towards ``spec``: ``Wait`` while planned members are not up, else the
    engine's bootstrap, observation and the live change of every parameter that differs from
    ``applied_parameters`` (the last applied spec's; None for a new deployment: nothing to change).
    Raises ``StepFailed`` when the engine's work fails, ``OperationError`` when a member cannot start."""
    wait = waiting_for(port.bring_up(spec, engine))
    if wait is not None:
        return wait
    conn = port.connection(spec, engine)
    progress("bootstrapping", 0, 1)
    bootstrap = _run(Stage.BOOTSTRAP, "bootstrap", lambda: engine.bootstrap(spec, conn, progress))
    progress("bootstrapping", 1, 1)
    observation = _run(Stage.OBSERVE, "observing the members", lambda: engine.observe(spec, conn))
    rejoining = rejoin(port, spec, engine, observation)
    if rejoining is not None:
        return rejoining
    if applied_parameters is None:
        return Converged(bootstrap, observation)
    changed = changed_parameters(applied_parameters, spec.parameters)
    removed = tuple(sorted(set(applied_parameters) - set(spec.parameters)))
    reconfigured = ReconfigureReport()
    if changed:
        reconfigured = _run(
            Stage.RECONFIGURE,
            f"applying parameters {', '.join(sorted(changed))}",
            lambda: _reconfigure(port, spec, engine, conn, changed),
        )
    return Converged(bootstrap, observation, reconfigured, removed)


def rejoin(port: ProvisionPort, spec: ResolvedSpec, engine: Engine, observation: Observation) -> Wait | None:
    """Restart the members the engine says follow the others only after a restart with their data
    (``Observation.restart_to_rejoin``); a wait naming them, or None when there are none."""
    if not observation.restart_to_rejoin:
        return None
    words = []
    for name in observation.restart_to_rejoin:
        refused = port.restart_member(spec, engine, name)
        words.append(f"{name} not restarted now: {refused}" if refused else f"{name} restarted")
    names = ", ".join(observation.restart_to_rejoin)
    return Wait(f"restarting {names} to rejoin", f"{observation.message} ({'; '.join(words)})")


def _reconfigure(
    port: ProvisionPort, spec: ResolvedSpec, engine: Engine, conn: Connection, changed: dict[str, str]
) -> ReconfigureReport:
    report = engine.reconfigure(spec, conn, changed)
    port.persist_parameters(spec, engine, changed)
    return report


def _run(stage: Stage, what: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except Exception as exc:  # the engine's refusals and its clients' network and protocol errors
        raise StepFailed(stage, exc, what) from exc
