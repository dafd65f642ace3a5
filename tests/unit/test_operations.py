"""The operation request annotation: what a user or the CLI writes, and every way it can be wrong
(each refused with the field and the reason, never half-understood)."""

from __future__ import annotations

import json

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
