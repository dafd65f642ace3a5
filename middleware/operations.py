"""Day-2 operations asked of a Middleware through its API: the request a user (or ``moorage
switchover``) writes into an annotation, and the record the operator keeps in ``status.lastOperation``.

Why an annotation with an id: an operation is an event, not a desired state, so it has no place in
``spec``; the id makes a request run once (a repeat of the same id is a no-op, a new id is a new
request) and lets the caller find the outcome of *its* request in the status. This follows the
field's practice of asking operators for switchovers through the API (CloudNativePG's plugin patches
the Cluster, KubeBlocks creates an OpsRequest) rather than reaching into pods.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from middleware.errors import SpecError

# Not under "moorage.io/": kopf treats every annotation under its storage prefix as its own and
# leaves it out of the diff, so a change there would never reach a handler.
OPERATION_ANNOTATION = "operation.moorage.io/request"
ANNOTATION_FIELD = f"metadata.annotations[{OPERATION_ANNOTATION}]"
# The spec the operator last brought the deployment to (written once a change is complete); kopf may
# ignore it, it is the operator's own record. A client waits for it to equal the spec it wrote.
APPLIED_SPEC_ANNOTATION = "moorage.io/applied-spec"
# Set by a point-in-time restore in place (the restore's id) while it works on the members' volumes
# with the StatefulSet scaled down: the operator leaves the deployment alone until it is gone (no
# apply would scale the StatefulSet back up, no heal would promote a member that is still
# recovering). Outside kopf's storage prefix for the same reason as the operation request.
RESTORE_HOLD_ANNOTATION = "hold.moorage.io/restore"
# The id of the rolling restart the operator asks for itself when parameters need a restart.
ROLLOUT_ID_PREFIX = "parameters-"


def rollout_id(pending_since: str) -> str:
    """The rolling restart for the PendingRestart condition set at ``pending_since`` (RFC 3339): one
    per pending change, so the operator and a client waiting on it name the same request."""
    return ROLLOUT_ID_PREFIX + "".join(ch for ch in pending_since if ch.isalnum())


# An id is what the caller matches the status against: short, printable, no surprises in a log.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Action(StrEnum):
    SWITCHOVER = "switchover"
    FAILOVER = "failover"
    RESTART = "restart"  # rolling: one member at a time, the primary last after a switchover


class Result(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


FINISHED = frozenset({Result.SUCCEEDED, Result.FAILED})


@dataclass(frozen=True)
class OperationRequest:
    id: str
    action: Action
    target: str | None = None

    @classmethod
    def new(cls, action: Action, target: str | None = None) -> OperationRequest:
        return cls(id=secrets.token_hex(6), action=action, target=target)

    def to_annotation(self) -> str:
        document: dict[str, str] = {"id": self.id, "action": self.action.value}
        if self.target is not None:
            document["target"] = self.target
        return json.dumps(document, sort_keys=True)

    @classmethod
    def parse(cls, raw: str) -> OperationRequest:
        """The annotation's JSON document; SpecError naming the field and what is wrong."""
        try:
            document = json.loads(raw)
        except ValueError:
            raise SpecError(ANNOTATION_FIELD, 'not JSON; expected {"id": ..., "action": ...}') from None
        if not isinstance(document, dict):
            raise SpecError(ANNOTATION_FIELD, "must be a JSON object")
        unknown = sorted(set(document) - {"id", "action", "target"})
        if unknown:
            raise SpecError(ANNOTATION_FIELD, f"unknown key(s) {', '.join(unknown)}")
        ident = document.get("id")
        if not isinstance(ident, str) or not _ID.match(ident):
            raise SpecError(f"{ANNOTATION_FIELD}.id", "required: 1-63 letters, digits, '.', '_' or '-'")
        action = document.get("action")
        if action not in {a.value for a in Action}:
            choices = ", ".join(a.value for a in Action)
            raise SpecError(f"{ANNOTATION_FIELD}.action", f"{action!r} is not one of {choices}")
        target = document.get("target")
        if target is not None and (not isinstance(target, str) or not target):
            raise SpecError(f"{ANNOTATION_FIELD}.target", "must be a member name")
        if target is not None and action == Action.FAILOVER:
            raise SpecError(
                f"{ANNOTATION_FIELD}.target", "failover promotes the most advanced replica; name none"
            )
        if target is not None and action == Action.RESTART:
            raise SpecError(
                f"{ANNOTATION_FIELD}.target", "a rolling restart restarts every member; name none"
            )
        return cls(id=ident, action=Action(action), target=target)


def request_id(raw: str | None) -> str:
    """The id of a request, even an invalid one, so its refusal can be matched; "" when unreadable."""
    try:
        document = json.loads(raw or "")
    except ValueError:
        return ""
    ident = document.get("id") if isinstance(document, dict) else None
    return ident if isinstance(ident, str) and _ID.match(ident) else ""


def restore_hold(metadata: Mapping[str, Any]) -> str | None:
    """The id of the restore holding this Middleware (``RESTORE_HOLD_ANNOTATION``), if any."""
    value = (metadata.get("annotations") or {}).get(RESTORE_HOLD_ANNOTATION)
    return str(value) if value else None
