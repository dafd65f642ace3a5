"""A rolling restart, decided one step at a time: the same decision for the local runtime (which
restarts a member's process) and for Kubernetes (which deletes its pod), so the order is written once.

The order is the field's (CloudNativePG, KubeBlocks): every member that is not a primary first, one
at a time, each back and the deployment healthy before the next; then the primary is switched over
to a member already restarted, which makes it a replica that is restarted like the others. An engine
that cannot switch over (ZooKeeper, Redis standalone) has its primary restarted last, as it is.

``next_step`` is pure: what is restarted and what is up comes from the caller, who also carries the
step out. Called again after every step, it never repeats one: a member restarted is recorded by
the caller (a pod created after the operation started, a process the CLI restarted itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# Roles that take writes, per engine: PostgreSQL and MongoDB primary, Redis master, ZooKeeper leader.
PRIMARY_ROLES = frozenset({"primary", "master", "leader"})


class StepKind(StrEnum):
    WAIT = "wait"
    RESTART = "restart"
    SWITCHOVER = "switchover"
    DONE = "done"


@dataclass(frozen=True)
class MemberState:
    name: str
    role: str
    up: bool  # running and answering (a Ready pod, a live process)
    restarted: bool  # since the operation started
    shard: int | None = None
    healthy: bool = True  # in its role as the engine observes it (a replica streaming)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    member: str | None = None
    target: str | None = None  # switchover: the member to promote, when the engine needs one named
    reason: str = ""


def next_step(members: Sequence[MemberState], healthy: bool) -> Step:
    """What to do next. ``healthy``: the engine observes the deployment Ready (every member in its
    role, replication streaming), which is what a next restart may safely take away from."""
    down = [m.name for m in members if not m.up]
    if down:
        return Step(StepKind.WAIT, reason=f"waiting for {', '.join(down)} to be up")
    pending = [m for m in members if not m.restarted]
    if not healthy:
        # A member not restarted yet that is itself unhealthy is restarted next rather than waited
        # for: a PostgreSQL primary fenced by the switchover comes back in its old pod with the old
        # settings, and a standby whose max_connections is below its new primary's pauses recovery
        # until it restarts. Restarting a broken member cannot make things worse.
        broken = sorted(
            (m for m in pending if not m.healthy and m.role not in PRIMARY_ROLES),
            key=lambda m: _order(m.name),
        )
        if broken:
            member = broken[-1]
            return Step(
                StepKind.RESTART, member.name, reason=f"restarting unhealthy {member.role} {member.name}"
            )
        return Step(StepKind.WAIT, reason="waiting for the deployment to be healthy again")
    if not pending:
        return Step(StepKind.DONE, reason=f"{len(members)} members restarted")
    # Highest name first, like a StatefulSet rollout; primaries after everything else.
    others = sorted((m for m in pending if m.role not in PRIMARY_ROLES), key=lambda m: _order(m.name))
    if others:
        member = others[-1]
        return Step(StepKind.RESTART, member.name, reason=f"restarting {member.role} {member.name}")
    primary = sorted(pending, key=lambda m: _order(m.name))[-1]
    target = None
    if primary.shard is not None:
        # A sharded engine (Redis cluster) promotes a replica of the same shard, named.
        target = next(
            (m.name for m in members if m.shard == primary.shard and m.name != primary.name and m.restarted),
            None,
        )
    return Step(
        StepKind.SWITCHOVER,
        primary.name,
        target=target,
        reason=f"switching over from {primary.role} {primary.name} before restarting it",
    )


def _order(name: str) -> tuple[str, int]:
    """``db-shard-1-10`` after ``db-shard-1-9``: the trailing ordinal compared as a number."""
    stem, _, ordinal = name.rpartition("-")
    return (stem, int(ordinal)) if ordinal.isdigit() else (name, -1)
