"""Small status transactions on ``MiddlewareStatus``: each sets phase, reason and the conditions of
one situation, and says whether a condition changed (so the caller posts an Event only then)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import ValidationError

from middleware.engines.base import Observation
from middleware.errors import SpecError
from middleware.models.middleware import MemberStatus, MiddlewareStatus, Phase

PROVISIONED = "Provisioned"
READY = "Ready"
DEGRADED = "Degraded"


def load(body: Mapping[str, Any]) -> MiddlewareStatus:
    """The status as stored; an unreadable one (hand-edited) starts over rather than blocking."""
    try:
        return MiddlewareStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return MiddlewareStatus()


def write(patch: MutableMapping[str, Any], status: MiddlewareStatus) -> None:
    wire = status.to_wire()
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


def waiting_for_members(status: MiddlewareStatus, ready: int, planned: int, waiting: list[str]) -> bool:
    _set(status, Phase.PROVISIONING, "WaitingForMembers")
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    message = f"{ready}/{planned} members ready; waiting for {shown}"
    changed = status.set_condition(PROVISIONED, False, "WaitingForMembers", message.split(";")[0])
    status.set_condition(READY, False, "WaitingForMembers", message)
    return changed


def applying(status: MiddlewareStatus, phase: Phase, reason: str, message: str) -> bool:
    _set(status, phase, reason)
    return status.set_condition(PROVISIONED, False, reason, message)


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


def observed(status: MiddlewareStatus, observation: Observation) -> bool:
    """After a bootstrap or a timer's observation: members, roles, endpoints, Ready/Degraded."""
    status.members = [
        MemberStatus(name=m.name, address=m.address, role=m.role, healthy=m.healthy, shard=m.shard)
        for m in observation.members
    ]
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
    return changed


def is_provisioned(status: MiddlewareStatus) -> bool:
    condition = status.condition(PROVISIONED)
    return condition is not None and condition.status == "True"
