"""Engine-agnostic orchestration of a deployment's lifecycle on any Runtime (used by the CLI).

up: resolve → runtime.apply → wait for members → engine.bootstrap → wait until observed Ready.
Changes to an existing deployment go to engine.scale (shape) or engine.reconfigure (parameters).
The desired manifest is recorded only after the change succeeded, so a failed change is retried
from the old shape by running the same command again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from middleware import provisioning, restarting, scaling
from middleware.catalog import Catalog, load_default_catalog
from middleware.engines.base import (
    WAL_ARCHIVING_CONDITION,
    Connection,
    Engine,
    Member,
    Observation,
    Progress,
    ReconfigureReport,
    member_statuses,
    no_progress,
    wal_archiving_condition,
)
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, NotReady, OperationError
from middleware.models.middleware import Middleware, MiddlewareStatus, Phase
from middleware.runtime.base import Runtime
from middleware.spec import ResolvedSpec, check_change, load_middleware, resolve

T = TypeVar("T")
# A rolling restart waiting on an unhealthy deployment whose members all run heals it this often.
HEAL_INTERVAL = 5.0


@dataclass(frozen=True)
class LifecycleSettings:
    """Deadlines for the blocking CLI flow (the operator never blocks: it retries instead)."""

    member_start_timeout: float = 30.0
    ready_timeout: float = 90.0
    poll_interval: float = 0.25


@dataclass
class Deployment:
    middleware: Middleware
    spec: ResolvedSpec
    engine: Engine


class Lifecycle:
    def __init__(
        self,
        runtime: Runtime,
        catalog: Catalog | None = None,
        settings: LifecycleSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.catalog = catalog or load_default_catalog()
        self.settings = settings or LifecycleSettings()

    # -- reading --------------------------------------------------------------------------------
    def prepare(self, manifest: dict[str, Any]) -> Deployment:
        """Validate everything before anything starts: an invalid spec starts nothing."""
        middleware = load_middleware(manifest)
        spec = resolve(middleware, self.catalog)
        engine = get_engine(spec.engine)
        return Deployment(middleware, spec, engine)

    def existing(self, namespace: str, name: str) -> Deployment:
        manifest = self.runtime.applied_manifest(namespace, name)
        if manifest is None and self.runtime.has_data(namespace, name):
            raise MoorageError(
                f"{namespace}/{name} is stopped with its data kept: `moorage up -f FILE` starts it again, "
                f"`moorage down {name} --purge` deletes it"
            )
        if manifest is None:
            raise MoorageError(f"no Middleware {namespace}/{name}: create it with `moorage up -f FILE`")
        return self.prepare(manifest)

    def connection(self, deployment: Deployment, *extra: Deployment) -> Connection:
        members: dict[str, Member] = {}
        for each in (deployment, *extra):
            for member in self.runtime.members(each.spec, each.engine):
                members.setdefault(member.plan.name, member)
        return Connection(list(members.values()), self.runtime.password(deployment.spec))

    # -- up -------------------------------------------------------------------------------------
    def up(self, manifest: dict[str, Any], progress: Progress = no_progress) -> MiddlewareStatus:
        wanted = self.prepare(manifest)
        spec = wanted.spec
        previous_manifest = self.runtime.applied_manifest(spec.namespace, spec.name)
        if previous_manifest is None:
            return self._create(wanted, manifest, progress)
        previous = self.prepare(previous_manifest)
        check_change(previous.spec, spec, wanted.engine)
        if scaling.shape(previous.spec) != scaling.shape(spec):
            self._scale(previous, wanted, progress)
        converged = self._provision(wanted, previous.spec.parameters, progress)
        self.runtime.record_manifest(spec, manifest)
        # archive_mode (spec.backup.walArchiving turned on or off) only changes with a restart, as
        # on Kubernetes, where the changed pod template rolls the pods.
        if converged.reconfigured.needs_restart or previous.spec.wal_archiving != spec.wal_archiving:
            # Rolled out at once, as the operator does: a value written to the config but not in
            # effect would otherwise wait for whatever restart comes next, unnoticed.
            return self.restart(spec.namespace, spec.name, progress)
        return self._wait_ready(wanted, progress)

    def _create(self, wanted: Deployment, manifest: dict[str, Any], progress: Progress) -> MiddlewareStatus:
        self._provision(wanted, None, progress)
        self.runtime.record_manifest(wanted.spec, manifest)
        return self._wait_ready(wanted, progress)

    def _provision(
        self, deployment: Deployment, applied_parameters: dict[str, str] | None, progress: Progress
    ) -> provisioning.Converged:
        """``middleware.provisioning``'s step, the operator's too, until it converges: members up wave
        by wave, bootstrap, observation, changed parameters applied live and written to the configs."""
        spec, engine = deployment.spec, deployment.engine
        self._save(spec, Phase.PROVISIONING, "StartingMembers", "starting members")
        port = _LocalMembers(self, progress)

        def step() -> scaling.Wait | provisioning.Converged:
            try:
                return provisioning.provision_step(port, spec, engine, applied_parameters, progress)
            except provisioning.StepFailed as failed:
                if isinstance(failed.cause, NotReady):
                    # Not yet (a member that accepts connections while still starting up): what
                    # the operator's retry does, bounded here by the start timeout.
                    return scaling.Wait(f"{failed.stage.value} not possible yet", str(failed.cause))
                raise failed.cause from None  # the engine's own error, as the user knows it

        return self._until_done(step)

    def _until_done(self, step: Callable[[], scaling.Wait | T]) -> T:
        """Call a non-blocking step until it is done; it may wait this long for the same thing (a wave
        of members, say), and the deadline moves on whenever what it waits for changes."""
        waited_for, deadline = "", 0.0
        while isinstance(result := step(), scaling.Wait):
            if result.reason != waited_for:
                waited_for, deadline = result.reason, time.monotonic() + self.settings.member_start_timeout
            elif time.monotonic() > deadline:
                detail = f" ({result.detail})" if result.detail else ""
                raise NotReady(f"members did not start in time: {result.reason}{detail}")
            time.sleep(self.settings.poll_interval)
        return result

    def _wait_ready(self, deployment: Deployment, progress: Progress) -> MiddlewareStatus:
        last: list[Observation] = []

        def ready() -> bool:
            observation = deployment.engine.observe(deployment.spec, self.connection(deployment))
            last[:] = [observation]
            progress(
                "waiting until ready", sum(m.healthy for m in observation.members), len(observation.members)
            )
            return observation.ready

        try:
            self._poll(ready, self.settings.ready_timeout, "not ready in time")
        except NotReady:
            status = self._status_from(deployment, last[0]) if last else None
            if status is not None:
                self.runtime.save_status(deployment.spec.namespace, deployment.spec.name, status.to_wire())
            reason = f"{last[0].reason}: {last[0].message}" if last else "no observation"
            raise OperationError(f"{deployment.spec.name} did not become ready: {reason}") from None
        status = self._status_from(deployment, last[0])
        self.runtime.save_status(deployment.spec.namespace, deployment.spec.name, status.to_wire())
        return status

    def _poll(self, check: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            if time.monotonic() > deadline:
                raise NotReady(message)
            time.sleep(self.settings.poll_interval)

    # -- changes --------------------------------------------------------------------------------
    def _scale(self, previous: Deployment, wanted: Deployment, progress: Progress) -> None:
        spec, engine = wanted.spec, wanted.engine
        self._save(spec, Phase.UPDATING, "Scaling", scaling.describe_change(previous.spec, spec))
        port = _LocalMembers(self, progress)
        self._until_done(lambda: scaling.scale_step(port, previous.spec, spec, engine, progress))
        wanted_names = {m.name for m in engine.members(spec)}
        leaving = [m for m in previous.engine.members(previous.spec) if m.name not in wanted_names]
        if leaving:
            self.runtime.retire(spec, engine, leaving)

    def scale(
        self,
        namespace: str,
        name: str,
        *,
        shards: int | None = None,
        replicas: int | None = None,
        progress: Progress = no_progress,
    ) -> MiddlewareStatus:
        manifest = self.existing(namespace, name).middleware.to_wire()
        manifest.pop("status", None)
        if shards is not None:
            manifest["spec"]["shards"] = shards
        if replicas is not None:
            manifest["spec"]["replicas"] = replicas
        return self.up(manifest, progress)

    def set_parameters(
        self, namespace: str, name: str, parameters: dict[str, str], progress: Progress = no_progress
    ) -> ReconfigureReport:
        """Live parameters are applied to every member at once; those that need a restart are
        written to the config and rolled out by a rolling restart (``restart``) before returning."""
        deployment = self.existing(namespace, name)
        manifest = deployment.middleware.to_wire()
        manifest.pop("status", None)
        manifest["spec"]["parameters"] = {**manifest["spec"].get("parameters", {}), **parameters}
        wanted = self.prepare(manifest)  # validates the new values before touching anything
        check_change(deployment.spec, wanted.spec, wanted.engine)
        converged = self._provision(wanted, deployment.spec.parameters, progress)
        # Recorded before the restart: the restart starts every member from the recorded manifest.
        self.runtime.record_manifest(wanted.spec, manifest)
        if converged.reconfigured.needs_restart:
            self.restart(namespace, name, progress)
        else:
            self._save_observed(wanted, converged.observation)
        return converged.reconfigured

    def switchover(self, namespace: str, name: str, target: str | None = None) -> MiddlewareStatus:
        deployment = self.existing(namespace, name)
        deployment.engine.switchover(deployment.spec, self.connection(deployment), target)
        # The old primary was fenced (stopped): starting it again lets it rejoin as a replica.
        return self._reconcile(deployment)

    def failover(self, namespace: str, name: str) -> MiddlewareStatus:
        deployment = self.existing(namespace, name)
        deployment.engine.failover(deployment.spec, self.connection(deployment))
        return self._reconcile(deployment)

    def restart(
        self, namespace: str, name: str, progress: Progress = no_progress, timeout: float = 600.0
    ) -> MiddlewareStatus:
        """Rolling restart, one member at a time in ``middleware.rolling``'s order, by the step the
        operator runs too (``middleware.restarting``): each member's process is stopped and started
        again with its data, the primary last after a switchover; ``timeout`` bounds each wait."""
        deployment = self.existing(namespace, name)
        spec, engine = deployment.spec, deployment.engine
        port = _LocalRestarts(self, deployment)
        total = len(engine.members(spec))
        deadline = time.monotonic() + timeout
        heal_after = time.monotonic() + HEAL_INTERVAL
        while (step := restarting.restart_step(port, spec, engine)).outcome != restarting.Outcome.FINISHED:
            progress("rolling restart", len(port.restarted), total)
            if step.outcome != restarting.Outcome.WAITING:
                deadline = time.monotonic() + timeout
                continue
            snapshot, observed = step.snapshot, step.snapshot.observation
            all_up = observed is not None and all(snapshot.up.get(m.name, False) for m in observed.members)
            if all_up and time.monotonic() >= heal_after:
                # Everyone runs yet it is not healthy (an old primary restarted fenced, as a
                # standby of nobody): the same heal as `up` and the operator's timer.
                heal_after = time.monotonic() + HEAL_INTERVAL
                with contextlib.suppress(MoorageError):
                    engine.bootstrap(spec, snapshot.conn)
            if time.monotonic() > deadline:
                raise OperationError(f"rolling restart stopped after {timeout:.0f}s: {step.message}")
            time.sleep(0.5)
        progress("rolling restart", len(port.restarted), total)
        return self._reconcile(deployment)

    def _reconcile(self, deployment: Deployment) -> MiddlewareStatus:
        manifest = deployment.middleware.to_wire()
        manifest.pop("status", None)
        return self.up(manifest)

    # -- status ---------------------------------------------------------------------------------
    def status(self, namespace: str, name: str) -> MiddlewareStatus:
        deployment = self.existing(namespace, name)
        observation = deployment.engine.observe(deployment.spec, self.connection(deployment))
        return self._save_observed(deployment, observation)

    def _save_observed(self, deployment: Deployment, observation: Observation) -> MiddlewareStatus:
        status = self._status_from(deployment, observation)
        self.runtime.save_status(deployment.spec.namespace, deployment.spec.name, status.to_wire())
        return status

    def _status_from(self, deployment: Deployment, observation: Observation) -> MiddlewareStatus:
        spec = deployment.spec
        metrics = self.runtime.metrics_addresses(spec, deployment.engine)
        status = MiddlewareStatus(
            observed_generation=spec.generation,
            members=member_statuses(observation, metrics),
            endpoints=observation.endpoints,
            version=spec.version,
        )
        previous = self.runtime.load_status(spec.namespace, spec.name)
        if previous:
            status.conditions = MiddlewareStatus.model_validate(previous).conditions
        status.set_condition("Provisioned", True, "MembersRunning", f"{len(observation.members)} members")
        status.set_condition("Ready", observation.ready, observation.reason, observation.message)
        degraded = not all(m.healthy for m in observation.members)
        status.set_condition(
            "Degraded", degraded, "MembersUnhealthy" if degraded else "AllMembersHealthy", observation.message
        )
        archiving = wal_archiving_condition(observation)
        if archiving is not None:
            status.set_condition(WAL_ARCHIVING_CONDITION, *archiving)
        status.phase = (
            Phase.READY
            if observation.ready and not degraded
            else (Phase.DEGRADED if observation.ready else Phase.PROVISIONING)
        )
        status.phase_reason = observation.reason
        return status

    def _save(self, spec: ResolvedSpec, phase: Phase, reason: str, message: str) -> None:
        stored = self.runtime.load_status(spec.namespace, spec.name)
        status = MiddlewareStatus.model_validate(stored) if stored else MiddlewareStatus()
        status.phase, status.phase_reason = phase, reason
        status.set_condition("Progressing", True, reason, message)
        self.runtime.save_status(spec.namespace, spec.name, status.to_wire())

    def down(self, namespace: str, name: str, *, purge: bool) -> None:
        self.runtime.delete(namespace, name, purge=purge)


@dataclass
class _LocalRestarts:
    """``middleware.restarting.RestartPort`` over the local runtime: a member restarts as its process
    stopped and started again with its data; this port remembers which it restarted."""

    lifecycle: Lifecycle
    deployment: Deployment
    restarted: set[str] = field(default_factory=set)

    def snapshot(self, spec: ResolvedSpec, engine: Engine) -> restarting.Snapshot:
        conn = self.lifecycle.connection(self.deployment)
        up = {m.plan.name: m.up for m in conn.members}
        return restarting.observe_members(spec, engine, conn, up, frozenset(self.restarted))

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        plan = next(m for m in engine.members(spec) if m.name == name)
        self.lifecycle.runtime.retire(spec, engine, [plan])
        self.lifecycle.runtime.start_member(spec, engine, name)
        self.restarted.add(name)
        return None

    def switched_over(self, spec: ResolvedSpec, engine: Engine, snapshot: restarting.Snapshot) -> None:
        # A switchover may fence the old primary (PostgreSQL stops it); in a pod the kubelet starts
        # it again, here this does: that start is its restart.
        for plan in engine.members(spec):
            if self.lifecycle.runtime.member_exited(spec, plan):
                self.lifecycle.runtime.start_member(spec, engine, plan.name)
                self.restarted.add(plan.name)


@dataclass
class _LocalMembers:
    """``middleware.scaling.MembersPort`` over the local runtime: members are processes, started wave
    by wave (a wave once every member of the waves before it is up). A member this port started that
    has exited again is an error, not restarted in a loop."""

    lifecycle: Lifecycle
    progress: Progress
    started: set[str] = field(default_factory=set)
    rejoined: set[str] = field(default_factory=set)

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        runtime = self.lifecycle.runtime
        planned = engine.members(spec)
        for wave in engine.start_waves(spec):
            for member in wave:
                if member.name in self.started and runtime.member_exited(spec, member):
                    tail = runtime.member_log_tail(spec, member)
                    raise OperationError(
                        f"member {member.name} exited right after start; its log ends:\n{tail}"
                    )
            # Applied even when all run: members' files rendered from every member's address (a
            # ZooKeeper member's dynamic config, ports in a kept config) follow the current shape.
            started = runtime.apply(spec, engine, wave, self.connection(spec, engine))
            self.started.update(m.name for m in started)
            up = {m.plan.name for m in runtime.members(spec, engine) if m.up}
            self.progress("starting members", len(up & {m.name for m in planned}), len(planned))
            waiting = [m.name for m in wave if m.name not in up]
            if waiting:
                return waiting
        return []

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        return Connection(self.lifecycle.runtime.members(spec, engine), self.lifecycle.runtime.password(spec))

    def persist_parameters(self, spec: ResolvedSpec, engine: Engine, changed: dict[str, str]) -> None:
        # Each member's config is written once and then kept (CONFIG REWRITE, sentinel state):
        # changed values are written into it line by line.
        self.lifecycle.runtime.update_config(spec, engine, changed)

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        # Once per `up`: a member its restart did not bring back is for the user to look at (its
        # log), not to be restarted in a loop until the start timeout.
        if name in self.rejoined:
            return "it was restarted once already in this run and still does not follow (see its log)"
        # Stopped only: the next step's bring_up starts it through the engine's preparation (the
        # rewind), which a plain start_member skips.
        plan = next(m for m in engine.members(spec) if m.name == name)
        self.lifecycle.runtime.retire(spec, engine, [plan])
        self.started.discard(name)
        self.rejoined.add(name)
        return None
