"""How `moorage scale|set --runtime kubernetes` reads the operator's progress from the Middleware alone
(operators/cli/operations.spec_change_state): every state the operator can leave it in."""

from __future__ import annotations

import json
from typing import Any

from middleware.operations import APPLIED_SPEC_ANNOTATION, rollout_id
from operators.cli.operations import spec_change_state

SPEC = {
    "engine": "postgresql",
    "topology": "replication",
    "replicas": 3,
    "parameters": {"max_connections": "250"},
}
PENDING_SINCE = "2026-12-04T22:00:00Z"


def _body(
    *, observed: int = 4, applied: dict[str, Any] | None = SPEC, phase: str = "Ready", **status: Any
) -> dict[str, Any]:
    annotations = {APPLIED_SPEC_ANNOTATION: json.dumps(applied)} if applied is not None else {}
    return {
        "metadata": {"generation": 4, "annotations": annotations},
        "spec": SPEC,
        "status": {"observedGeneration": observed, "phase": phase, "phaseReason": phase, **status},
    }


def _pending(status: str = "True") -> list[dict[str, str]]:
    return [
        {
            "type": "PendingRestart",
            "status": status,
            "message": "max_connections",
            "lastTransitionTime": PENDING_SINCE,
        }
    ]


def test_an_older_generation_is_not_the_answer() -> None:
    state = spec_change_state(_body(observed=3), 4)
    assert not state.done and not state.failed and "generation 4" in state.message


def test_a_spec_not_yet_applied_is_waited_for_even_if_the_phase_still_reads_ready() -> None:
    state = spec_change_state(_body(applied={**SPEC, "replicas": 2}), 4)
    assert not state.done and not state.failed and state.message.startswith("applying")


def test_an_invalid_spec_fails_with_the_operators_words() -> None:
    conditions = [{"type": "Provisioned", "status": "False", "message": "spec.replicas: must be at least 2"}]
    state = spec_change_state(_body(phase="Failed", phaseReason="InvalidSpec", conditions=conditions), 4)
    assert state.failed and "spec.replicas: must be at least 2" in state.message


def test_a_pending_restart_is_waited_for_until_its_rollout_finishes() -> None:
    state = spec_change_state(_body(conditions=_pending()), 4)
    assert not state.done and not state.failed and "about to start" in state.message
    running = {"id": rollout_id(PENDING_SINCE), "result": "Running", "message": "restarting replica db-2"}
    state = spec_change_state(_body(conditions=_pending(), lastOperation=running), 4)
    assert not state.done and "restarting replica db-2" in state.message


def test_a_failed_rollout_of_this_change_fails_but_an_older_one_does_not() -> None:
    failed = {"id": rollout_id(PENDING_SINCE), "result": "Failed", "message": "gave up after 600s"}
    state = spec_change_state(_body(conditions=_pending(), lastOperation=failed), 4)
    assert state.failed and "gave up after 600s" in state.message
    older = {**failed, "id": rollout_id("2026-12-01T10:00:00Z")}
    state = spec_change_state(_body(conditions=_pending(), lastOperation=older), 4)
    assert not state.failed and not state.done


def test_applied_ready_and_nothing_pending_is_done() -> None:
    assert spec_change_state(_body(conditions=_pending("False")), 4).done
    assert not spec_change_state(_body(phase="Degraded"), 4).done


def test_a_rollout_still_running_is_waited_for_after_pending_restart_cleared() -> None:
    running = {"id": rollout_id(PENDING_SINCE), "result": "Running", "message": "waiting for db-1 to be up"}
    state = spec_change_state(_body(conditions=_pending("False"), lastOperation=running), 4)
    assert not state.done and "db-1" in state.message
    finished = {**running, "result": "Succeeded"}
    assert spec_change_state(_body(conditions=_pending("False"), lastOperation=finished), 4).done


def test_waiting_for_ready_says_why_the_operator_sees_it_not_ready() -> None:
    failing = {
        "type": "Ready",
        "status": "False",
        "reason": "ObserveFailed",
        "message": "observing the members failed: NotReady: no primary",
    }
    state = spec_change_state(_body(phase="Degraded", conditions=[failing]), 4)
    assert not state.done and not state.failed
    assert (
        state.message
        == "waiting for Ready: Degraded (Degraded: observing the members failed: NotReady: no primary)"
    )
