"""Small status transactions on ``MiddlewareStatus``: each sets phase, reason and the conditions of
one situation, and says whether a condition changed (so the caller posts an Event only then)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import ValidationError

from middleware.engines.base import (
    WAL_ARCHIVING_CONDITION,
    Observation,
    member_statuses,
    wal_archiving_condition,
)
from middleware.errors import SpecError
from middleware.models.middleware import MiddlewareStatus, Phase

PROVISIONED = "Provisioned"
READY = "Ready"
DEGRADED = "Degraded"
PROGRESSING = "Progressing"
PENDING_RESTART = "PendingRestart"


def load(body: Mapping[str, Any]) -> MiddlewareStatus:
    """The status as stored; an unreadable one (hand-edited) starts over rather than blocking."""
    try:
        return MiddlewareStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return MiddlewareStatus()


def write(patch: MutableMapping[str, Any], status: MiddlewareStatus) -> None:
    wire = status.to_wire()
    # Only the operation handler writes lastOperation (operation.record): a timer holding a body read
    # before an operation finished must not put the old record back.
    wire.pop("lastOperation", None)
    # Keys the model left out (None) are cleared explicitly: a merge patch keeps what it omits.
    for key in ("phaseReason", "version", "credentialsSecret"):
        wire.setdefault(key, None)
    patch["status"] = wire


def _set(status: MiddlewareStatus, phase: Phase, reason: str) -> None:
    status.phase = phase.value
    status.phase_reason = reason


def invalid_spec(status: MiddlewareStatus, error: SpecError) -> bool:
    _set(status, Phase.FAILED, "InvalidSpec")
    message = f"{error.field}: {error.reason}"
    changed = status.set_condition(PROVISIONED, False, "InvalidSpec", message)
    status.set_condition(READY, False, "InvalidSpec", message)
    return changed


def waiting_for_members(
    status: MiddlewareStatus,
    ready: int,
    planned: int,
    waiting: list[str],
    failing: Mapping[str, str] | None = None,
) -> bool:
    """Members not Ready yet. ``failing``: member -> what its pod says is wrong (a crash loop, an
    image that cannot be pulled, unschedulable): reason ``MemberFailing``, the problems in the message."""
    reason = "MemberFailing" if failing else "WaitingForMembers"
    _set(status, Phase.PROVISIONING, reason)
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    message = f"{ready}/{planned} members ready; waiting for {shown}"
    if failing:
        message += "; " + "; ".join(f"{name}: {problem}" for name, problem in sorted(failing.items()))
    changed = status.set_condition(PROVISIONED, False, reason, message.split(";")[0])
    changed = status.set_condition(READY, False, reason, message) or changed
    return changed


def applying(status: MiddlewareStatus, phase: Phase, reason: str, message: str) -> bool:
    _set(status, phase, reason)
    return status.set_condition(PROVISIONED, False, reason, message)


def progressing(status: MiddlewareStatus, reason: str, message: str) -> bool:
    """A change under way (a scale): the deployment stays provisioned and serving meanwhile."""
    _set(status, Phase.UPDATING, reason)
    return status.set_condition(PROGRESSING, True, reason, message)


def held_by_restore(status: MiddlewareStatus, restore_id: str) -> bool:
    """A point-in-time restore in place works on the members' volumes: the operator waits."""
    _set(status, Phase.UPDATING, "RestoreInProgress")
    message = (
        f"restore {restore_id} holds the members (their data is being replaced); the operator "
        f"resumes when it ends (`moorage restore status {restore_id}`)"
    )
    return status.set_condition(PROGRESSING, True, "RestoreInProgress", message)


def restore_released(status: MiddlewareStatus) -> bool:
    """The hold is gone: a Progressing condition a restore set says so (the observation then
    writes the phase)."""
    progressing = status.condition(PROGRESSING)
    if progressing is None or progressing.reason != "RestoreInProgress" or progressing.status != "True":
        return False
    return status.set_condition(PROGRESSING, False, "RestoreEnded", "the restore released the members")


def settled(status: MiddlewareStatus) -> None:
    """The spec is fully applied: a Progressing condition, where there is one, says so."""
    if status.condition(PROGRESSING) is not None:
        status.set_condition(PROGRESSING, False, "Reconciled", "the spec is applied")


def scale_failed(status: MiddlewareStatus, message: str) -> bool:
    _set(status, Phase.DEGRADED, "ScaleFailed")
    changed = status.set_condition(PROGRESSING, True, "ScaleFailed", message)
    status.set_condition(DEGRADED, True, "ScaleFailed", message)
    return changed


def reconfigure_failed(status: MiddlewareStatus, message: str) -> bool:
    _set(status, Phase.DEGRADED, "ReconfigureFailed")
    changed = status.set_condition(PROGRESSING, True, "ReconfigureFailed", message)
    status.set_condition(DEGRADED, True, "ReconfigureFailed", message)
    return changed


def pending_restart(status: MiddlewareStatus, message: str) -> bool:
    found = status.condition(PENDING_RESTART)
    if found is not None and found.status == "True" and found.message != message:
        # A newer change: its clock starts now, or pods restarted before it would clear it.
        status.conditions = [c for c in status.conditions if c.type != PENDING_RESTART]
    return status.set_condition(PENDING_RESTART, True, "ParametersNeedRestart", message)


def restarted_since_pending(status: MiddlewareStatus, pod_creation_times: list[str]) -> bool:
    """Clear PendingRestart once every member's pod was created after it was set (RFC 3339 UTC
    timestamps of one format compare as strings). Returns whether it was cleared."""
    found = status.condition(PENDING_RESTART)
    if found is None or found.status != "True" or not pod_creation_times:
        return False
    if min(pod_creation_times) < found.last_transition_time:
        return False
    status.set_condition(PENDING_RESTART, False, "Restarted", "every member restarted with the parameters")
    return True


def storage_refused(status: MiddlewareStatus, error: SpecError) -> bool:
    _set(status, Phase.FAILED, "StorageShrinkRefused")
    changed = status.set_condition(
        PROVISIONED, False, "StorageShrinkRefused", f"{error.field}: {error.reason}"
    )
    status.set_condition(DEGRADED, True, "StorageShrinkRefused", f"{error.field}: {error.reason}")
    return changed


def api_refused(status: MiddlewareStatus, reason: str, message: str) -> bool:
    _set(status, Phase.DEGRADED, reason)
    changed = status.set_condition(PROVISIONED, False, reason, message)
    status.set_condition(DEGRADED, True, reason, message)
    return changed


def bootstrap_failed(status: MiddlewareStatus, message: str) -> bool:
    _set(status, Phase.DEGRADED, "BootstrapFailed")
    changed = status.set_condition(PROVISIONED, False, "BootstrapFailed", message)
    status.set_condition(READY, False, "BootstrapFailed", message)
    status.set_condition(DEGRADED, True, "BootstrapFailed", message)
    return changed


def observe_failed(status: MiddlewareStatus, message: str) -> bool:
    _set(status, Phase.DEGRADED, "ObserveFailed")
    changed = status.set_condition(READY, False, "ObserveFailed", message)
    status.set_condition(DEGRADED, True, "ObserveFailed", message)
    return changed


def observed(
    status: MiddlewareStatus,
    observation: Observation,
    observed_at: str | None = None,
    metrics: Mapping[str, str] | None = None,
) -> bool:
    """After a bootstrap or a timer's observation: members, roles, endpoints, Ready/Degraded.
    ``observed_at``: when that observation began (``now_precise`` taken before it); ``metrics``:
    each member's exporter address, by member name."""
    if observed_at is not None:
        status.observed_at = observed_at
    status.members = member_statuses(observation, metrics or {})
    status.endpoints = dict(observation.endpoints)
    message = observation.message or observation.reason
    status.set_condition(PROVISIONED, True, "Bootstrapped", "members up and bootstrapped")
    if observation.ready:
        _set(status, Phase.READY, observation.reason)
        changed = status.set_condition(READY, True, observation.reason, message)
        status.set_condition(DEGRADED, False, observation.reason, message)
    else:
        _set(status, Phase.DEGRADED, observation.reason)
        changed = status.set_condition(READY, False, observation.reason, message)
        status.set_condition(DEGRADED, True, observation.reason, message)
    archiving = wal_archiving_condition(observation)
    if archiving is not None:
        changed = status.set_condition(WAL_ARCHIVING_CONDITION, *archiving) or changed
    return changed


def is_provisioned(status: MiddlewareStatus) -> bool:
    condition = status.condition(PROVISIONED)
    return condition is not None and condition.status == "True"
