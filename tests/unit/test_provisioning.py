"""The shared provisioning step (``middleware.provisioning``), with the runtime port held in memory and
the engine's live work recorded by a stand-in (named ``RecordingEngine``).

The engine's real work (bootstrap, observe, reconfigure) runs against real servers in the integration
tests (the local runtime's ``moorage up`` / ``set`` of every engine) and on real pods in the e2e tier,
both through this step; here only what the step decides: wait while members are not up, which
parameters changed or were removed, which stage a failure belongs to, and that a changed value is
persisted only after the engine applied it.
"""

from __future__ import annotations

from typing import Any

import pytest

from middleware.engines.base import Connection, Engine, Observation, Progress, ReconfigureReport, Report
from middleware.engines.registry import get_engine
from middleware.errors import OperationError
from middleware.provisioning import Converged, Stage, StepFailed, changed_parameters, provision_step
from middleware.scaling import Wait
from middleware.spec import ResolvedSpec
from tests.unit.manifests import middleware_spec

SPEC = middleware_spec(
    "db",
    "shop",
    {
        "engine": "postgresql",
        "topology": "replication",
        "replicas": 2,
        "parameters": {"work_mem": "8MB", "max_connections": "200"},
    },
)


class RecordingEngine:
    """The PostgreSQL engine's plan (members, names), with its live work recorded instead of run."""

    def __init__(
        self,
        fail_at: Stage | None = None,
        needs_restart: frozenset[str] = frozenset(),
        restart_to_rejoin: tuple[str, ...] = (),
    ) -> None:
        self.real = get_engine("postgresql")
        self.calls: list[str] = []
        self.fail_at, self.needs_restart = fail_at, needs_restart
        self.restart_to_rejoin = restart_to_rejoin

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _maybe_fail(self, stage: Stage) -> None:
        self.calls.append(stage.value)
        if self.fail_at is stage:
            raise ConnectionRefusedError(f"{stage.value}: connection refused")

    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress) -> Report:
        self._maybe_fail(Stage.BOOTSTRAP)
        return Report(changed=True, actions=["promoted db-0"])

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        self._maybe_fail(Stage.OBSERVE)
        if self.restart_to_rejoin:
            message = "; ".join(f"{n} is replica and not healthy: diverged" for n in self.restart_to_rejoin)
            return Observation(
                [],
                ready=False,
                reason="NotReady",
                message=message,
                restart_to_rejoin=list(self.restart_to_rejoin),
            )
        return Observation([], ready=True, reason="Ready")

    def reconfigure(self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]) -> ReconfigureReport:
        self._maybe_fail(Stage.RECONFIGURE)
        return ReconfigureReport(
            applied_live={k: v for k, v in changed.items() if k not in self.needs_restart},
            needs_restart={k: v for k, v in changed.items() if k in self.needs_restart},
        )


class InMemoryMembers:
    """A runtime port whose members are up when a test says so; records what was persisted."""

    def __init__(self, up: set[str]) -> None:
        self.up = up
        self.persisted: list[dict[str, str]] = []
        self.restarted: list[str] = []
        self.refusals: dict[str, str] = {}

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        return [m.name for m in engine.members(spec) if m.name not in self.up]

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        return Connection([], "secret")

    def persist_parameters(self, spec: ResolvedSpec, engine: Engine, changed: dict[str, str]) -> None:
        self.persisted.append(dict(changed))

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        self.restarted.append(name)
        return self.refusals.get(name)


def all_up() -> InMemoryMembers:
    return InMemoryMembers({m.name for m in get_engine("postgresql").members(SPEC)})


def test_waits_for_members_not_up_and_touches_no_engine() -> None:
    engine = RecordingEngine()
    step = provision_step(InMemoryMembers({"db-0"}), SPEC, engine, None)  # type: ignore[arg-type]
    assert isinstance(step, Wait)
    assert "db-1" in step.reason and "db-0" not in step.reason
    assert engine.calls == []


def test_a_new_deployment_is_bootstrapped_and_observed_with_no_parameter_change() -> None:
    engine, port = RecordingEngine(), all_up()
    step = provision_step(port, SPEC, engine, None)  # type: ignore[arg-type]
    assert isinstance(step, Converged)
    assert engine.calls == ["bootstrap", "observe"]
    assert step.bootstrap.actions == ["promoted db-0"] and step.observation.ready
    assert port.persisted == [] and step.pending_restart == []


def test_changed_parameters_are_applied_then_persisted_and_removed_ones_reported() -> None:
    engine, port = RecordingEngine(needs_restart=frozenset({"max_connections"})), all_up()
    assert "shared_buffers" not in SPEC.parameters  # the spec fills in every default
    applied = {**SPEC.parameters, "work_mem": "4MB", "max_connections": "100", "shared_buffers": "256MB"}
    step = provision_step(port, SPEC, engine, applied)  # type: ignore[arg-type]
    assert isinstance(step, Converged)
    assert engine.calls == ["bootstrap", "observe", "reconfigure"]
    assert port.persisted == [{"work_mem": "8MB", "max_connections": "200"}]
    assert step.reconfigured.applied_live == {"work_mem": "8MB"}
    assert step.removed_parameters == ("shared_buffers",)
    assert step.pending_restart == ["max_connections", "shared_buffers"]


def test_unchanged_parameters_do_not_reach_the_engine() -> None:
    engine, port = RecordingEngine(), all_up()
    step = provision_step(port, SPEC, engine, dict(SPEC.parameters))  # type: ignore[arg-type]
    assert isinstance(step, Converged)
    assert "reconfigure" not in engine.calls and port.persisted == []


@pytest.mark.parametrize("stage", list(Stage))
def test_a_failure_names_its_stage_and_keeps_the_engines_error(stage: Stage) -> None:
    engine, port = RecordingEngine(fail_at=stage), all_up()
    with pytest.raises(StepFailed) as failed:
        provision_step(port, SPEC, engine, {"work_mem": "4MB"})  # type: ignore[arg-type]
    assert failed.value.stage is stage
    assert isinstance(failed.value.cause, ConnectionRefusedError)
    assert "connection refused" in str(failed.value)
    assert engine.calls[-1] == stage.value
    assert port.persisted == []  # nothing persisted that the engine did not apply


def test_a_member_that_cannot_start_is_the_ports_error_not_a_stage() -> None:
    class Crashing(InMemoryMembers):
        def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
            raise OperationError("member db-1 exited right after start")

    with pytest.raises(OperationError, match="db-1 exited"):
        provision_step(Crashing(set()), SPEC, RecordingEngine(), None)  # type: ignore[arg-type]


def test_changed_parameters_counts_new_and_different_values_only() -> None:
    assert changed_parameters({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {"b": "3", "c": "4"}


def test_members_that_rejoin_only_by_a_restart_are_restarted_and_waited_for_before_any_parameter() -> None:
    engine, port = RecordingEngine(restart_to_rejoin=("db-1",)), all_up()
    step = provision_step(port, SPEC, engine, {**SPEC.parameters, "work_mem": "4MB"})  # type: ignore[arg-type]
    assert isinstance(step, Wait)
    assert port.restarted == ["db-1"]
    assert step.reason == "restarting db-1 to rejoin"
    assert "db-1 is replica and not healthy: diverged" in step.detail and "db-1 restarted" in step.detail
    assert "reconfigure" not in engine.calls and port.persisted == []


def test_a_restart_the_port_refuses_now_is_named_in_the_wait() -> None:
    engine, port = RecordingEngine(restart_to_rejoin=("db-1",)), all_up()
    port.refusals["db-1"] = "its container started 5s ago"
    step = provision_step(port, SPEC, engine, None)  # type: ignore[arg-type]
    assert isinstance(step, Wait)
    assert "db-1 not restarted now: its container started 5s ago" in step.detail
