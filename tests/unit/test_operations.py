"""The operation request annotation: what a user or the CLI writes, and every way it can be wrong
(each refused with the field and the reason, never half-understood)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from middleware.errors import SpecError
from middleware.operations import ANNOTATION_FIELD, OPERATION_ANNOTATION, Action, OperationRequest, request_id


def test_a_request_round_trips_through_its_annotation() -> None:
    request = OperationRequest.new(Action.SWITCHOVER, "pg-2")
    assert OperationRequest.parse(request.to_annotation()) == request
    assert json.loads(request.to_annotation()) == {"id": request.id, "action": "switchover", "target": "pg-2"}


def test_new_requests_get_distinct_ids() -> None:
    assert OperationRequest.new(Action.FAILOVER).id != OperationRequest.new(Action.FAILOVER).id


def test_a_switchover_may_leave_the_target_to_the_engine() -> None:
    request = OperationRequest.parse('{"id": "a1", "action": "switchover"}')
    assert request.target is None and request.action == Action.SWITCHOVER


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ("switchover", ANNOTATION_FIELD, "not JSON"),
        ('["switchover"]', ANNOTATION_FIELD, "must be a JSON object"),
        ('{"id": "a1", "action": "switchover", "to": "x"}', ANNOTATION_FIELD, "unknown key(s) to"),
        ('{"action": "switchover"}', f"{ANNOTATION_FIELD}.id", "required"),
        ('{"id": "has space", "action": "switchover"}', f"{ANNOTATION_FIELD}.id", "required"),
        ('{"id": "a1", "action": "reboot"}', f"{ANNOTATION_FIELD}.action", "'reboot' is not one of"),
        ('{"id": "a1", "action": "restart", "target": "x"}', f"{ANNOTATION_FIELD}.target", "every member"),
        ('{"id": "a1", "action": "switchover", "target": ""}', f"{ANNOTATION_FIELD}.target", "member name"),
        ('{"id": "a1", "action": "failover", "target": "x"}', f"{ANNOTATION_FIELD}.target", "name none"),
    ],
)
def test_an_invalid_request_names_the_field_and_the_reason(raw: str, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        OperationRequest.parse(raw)
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"id": "a1", "action": "reboot"}', "a1"),  # invalid, yet its refusal can be matched
        ('{"id": "bad id"}', ""),
        ("not json", ""),
        (None, ""),
    ],
)
def test_the_id_of_even_an_invalid_request_is_found_when_readable(raw: str | None, expected: str) -> None:
    assert request_id(raw) == expected


def test_the_annotation_is_outside_kopfs_own_prefix() -> None:
    # kopf leaves every annotation under its storage prefix out of the diff it hands to handlers:
    # a request written there would never reach the operation handler.
    from operators.settings import ANNOTATION_PREFIX

    assert not OPERATION_ANNOTATION.startswith(f"{ANNOTATION_PREFIX}/")


# --- the rolling restart the operator asks for itself while PendingRestart is True -------------------

from middleware.models.middleware import MiddlewareStatus, OperationStatus  # noqa: E402
from middleware.operations import Result  # noqa: E402
from operators.reconcile.operation import rollout_request  # noqa: E402


def _pending(since: str = "2026-12-04T22:00:00Z") -> MiddlewareStatus:
    status = MiddlewareStatus()
    status.set_condition("PendingRestart", True, "ParametersNeedRestart", "max_connections")
    status.conditions[-1].last_transition_time = since
    return status


def test_no_rollout_without_a_pending_restart() -> None:
    assert rollout_request(None, MiddlewareStatus()) is None
    cleared = _pending()
    cleared.set_condition("PendingRestart", False, "Restarted", "every member restarted")
    assert rollout_request(None, cleared) is None


def test_a_pending_restart_asks_for_one_rolling_restart_named_after_it() -> None:
    request = rollout_request(None, _pending())
    assert request == OperationRequest(id="parameters-20261204T220000Z", action=Action.RESTART)
    # Valid as an annotation: the handler will accept what the operator wrote.
    assert OperationRequest.parse(request.to_annotation()) == request


@pytest.mark.parametrize("result", [Result.RUNNING, Result.SUCCEEDED, Result.FAILED])
def test_the_same_pending_change_is_asked_for_once(result: Result) -> None:
    status = _pending()
    first = rollout_request(None, status)
    assert first is not None
    status.last_operation = OperationStatus(id=first.id, action="restart", result=result)
    assert rollout_request(first.to_annotation(), status) is None


def test_a_later_change_needing_a_restart_is_asked_for_again() -> None:
    first = rollout_request(None, _pending())
    assert first is not None
    later = _pending("2026-12-04T23:00:00Z")
    later.last_operation = OperationStatus(id=first.id, action="restart", result=Result.FAILED)
    again = rollout_request(first.to_annotation(), later)
    assert again is not None and again.id == "parameters-20261204T230000Z"


def test_a_users_unfinished_request_is_never_replaced() -> None:
    status = _pending()
    users = OperationRequest(id="mine", action=Action.SWITCHOVER, target="db-1")
    assert rollout_request(users.to_annotation(), status) is None  # not even started yet
    status.last_operation = OperationStatus(id="mine", action="switchover", result=Result.RUNNING)
    assert rollout_request(users.to_annotation(), status) is None
    status.last_operation = OperationStatus(id="mine", action="switchover", result=Result.SUCCEEDED)
    assert rollout_request(users.to_annotation(), status) is not None  # finished: the rollout follows


def test_the_applied_spec_record_is_under_kopfs_prefix_so_changing_it_triggers_no_handler() -> None:
    from middleware.operations import APPLIED_SPEC_ANNOTATION
    from operators.settings import ANNOTATION_PREFIX

    assert APPLIED_SPEC_ANNOTATION.startswith(f"{ANNOTATION_PREFIX}/")


class ScriptedApi:
    """Stands in for the apiserver (named as such): answers GETs of one Middleware from a script of
    bodies, the way the operator's handler and its concurrent timer would have written them."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies, self.gets, self.patched = bodies, 0, None

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        body = self.bodies[min(self.gets, len(self.bodies) - 1)]
        self.gets += 1
        return body

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: Any) -> Any:
        self.patched = body
        return body


def test_an_operations_outcome_waits_out_an_older_observation_written_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer runs beside the operation handler: its observation, begun before the switchover, may
    land after it (old roles, phase Ready). The CLI returns only an observation at least as new."""
    from operators.cli import operations as cli_operations

    monkeypatch.setattr(cli_operations, "POLL_SECONDS", 0.0)
    request = OperationRequest.new(Action.SWITCHOVER)
    done = {
        "id": request.id,
        "action": "switchover",
        "result": "Succeeded",
        "observedAt": "2026-12-05T10:00:05.000000Z",
    }

    def body(observed_at: str, master: str) -> dict[str, Any]:
        members = [{"name": n, "role": "master" if n == master else "replica"} for n in ("c-0", "c-1")]
        status = {"phase": "Ready", "observedAt": observed_at, "members": members, "lastOperation": done}
        return {"metadata": {"name": "c"}, "status": status}

    stale = body("2026-12-05T10:00:04.900000Z", "c-0")  # the timer's, begun before the switchover
    fresh = body("2026-12-05T10:00:35.000000Z", "c-1")
    api = ScriptedApi([stale, stale, stale, fresh])
    outcome = cli_operations.request_operation(api, "ns", "c", request, timeout=30)  # type: ignore[arg-type]
    masters = [m["name"] for m in outcome.middleware["status"]["members"] if m["role"] == "master"]
    assert masters == ["c-1"] and api.gets == 4
