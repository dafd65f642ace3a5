"""The one ``backup-policy`` timer runs the steps ``spec.backup`` asks for, each whatever the one
before it did (a repository that does not answer for the schedule must not stop the drills). The
steps themselves run against a real apiserver in tests/k8s/test_backup_jobs.py; here they are
replaced by recorders, to check the order and the failure handling alone."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from operators import backup_handlers


def _body(backup: dict[str, Any]) -> kopf.Body:
    return kopf.Body({"metadata": {"namespace": "ns", "name": "pg"}, "spec": {"backup": backup}})


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def step(name: str, fails: bool = False) -> Any:
        def run(*_: Any) -> None:
            calls.append(name)
            if fails:
                raise RuntimeError(f"{name} failed")

        return run

    monkeypatch.setattr(backup_handlers, "backup_schedule", step("schedule", fails=True))
    monkeypatch.setattr(backup_handlers, "recovery_proof", step("proof"))
    monkeypatch.setattr(backup_handlers, "drill_schedule", step("drill", fails=True))
    return calls


def test_every_step_the_policy_asks_for_runs_and_the_first_failure_is_raised(ran: list[str]) -> None:
    body = _body({"walArchiving": True, "drillSchedule": "0 3 * * *"})
    with pytest.raises(RuntimeError, match="schedule failed"):
        backup_handlers.backup_policy(body=body, patch=kopf.Patch())
    assert ran == ["schedule", "proof", "drill"]


def test_without_archiving_or_drills_only_the_schedule_runs(ran: list[str]) -> None:
    with pytest.raises(RuntimeError, match="schedule failed"):
        backup_handlers.backup_policy(body=_body({"schedule": "0 1 * * *"}), patch=kopf.Patch())
    assert ran == ["schedule"]
