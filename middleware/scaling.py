"""The shape change (shards, replicas, sentinels) of a deployment, once for every runtime.

The members of both shapes must be up while the engine moves data: the widest shape (each count at
its larger value) is brought up first, so on a scale-out the new members start and on a scale-in the
leaving ones are still there. Once they are all up, ``engine.scale(old, new)`` moves slots, replicas
or ensemble members (idempotent, so a retry after a crash converges). Only then may the caller stop
the members the new shape no longer has (the local runtime retires them, the operator prunes their
StatefulSets; data is kept either way).

``scale_step`` never waits: it returns ``Wait`` when members are not up yet. The CLI on the local
runtime calls it again until it returns the engine's report; the operator turns ``Wait`` into
``kopf.TemporaryError`` and is called again by kopf. Each runtime supplies a ``MembersPort``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from middleware.engines.base import Connection, Engine, Progress, Report, no_progress
from middleware.spec import ResolvedSpec


class MembersPort(Protocol):
    """What a shape change needs of a runtime."""

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        """Start (or ask the platform for) every planned member of ``spec`` that is not running,
        without waiting; returns the names of those not up yet, empty when all are. Members already
        running are left alone. Raises ``OperationError`` when a member cannot start at all."""
        ...

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        """A connection holding every planned member of ``spec`` that exists."""
        ...


@dataclass(frozen=True)
class Wait:
    """Not done yet: call the step again later. ``reason`` names what is waited for (a caller
    bounds the wait for the same reason); ``detail`` is the latest word on it."""

    reason: str
    detail: str = ""


def waiting_for(members: list[str], before: str = "", after: str = "") -> Wait | None:
    """A wait naming the members not up yet (the first five), or None when there are none."""
    if not members:
        return None
    shown = ", ".join(members[:5]) + (f" and {len(members) - 5} more" if len(members) > 5 else "")
    return Wait(f"{before}waiting for {shown}{after}")


def widest(old: ResolvedSpec, new: ResolvedSpec) -> ResolvedSpec:
    """``new`` with each count at the larger of the two: its members are those of both shapes."""
    return dataclasses.replace(
        new,
        shards=max(old.shards, new.shards),
        replicas=max(old.replicas, new.replicas),
        sentinels=max(old.sentinels, new.sentinels),
    )


def shape(spec: ResolvedSpec) -> tuple[int, int, int]:
    return (spec.shards, spec.replicas, spec.sentinels)


def describe_change(old: ResolvedSpec, new: ResolvedSpec) -> str:
    def fmt(counts: tuple[int, int, int]) -> str:
        return "/".join(str(n) for n in counts)

    return f"shards/replicas/sentinels {fmt(shape(old))} -> {fmt(shape(new))}"


def scale_step(
    port: MembersPort,
    previous: ResolvedSpec,
    wanted: ResolvedSpec,
    engine: Engine,
    progress: Progress = no_progress,
) -> Wait | Report:
    """One non-blocking step from ``previous``'s shape to ``wanted``'s: ``Wait`` while members of
    the widest shape are not up, else the engine's report once the data is where ``wanted`` needs it.
    Engine failures propagate (NotReady for "try again", OperationError for a refusal)."""
    wide = widest(previous, wanted)
    wait = waiting_for(
        port.bring_up(wide, engine), f"{describe_change(previous, wanted)}: ", " before moving data"
    )
    if wait is not None:
        return wait
    return engine.scale(previous, wanted, port.connection(wide, engine), progress)
