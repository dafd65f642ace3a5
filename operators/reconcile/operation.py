"""Day-2 operations asked through the ``operation.moorage.io/request`` annotation: Switchover and Failover.

The handler runs a request once: it reads the request, checks whether ``status.lastOperation``
already holds its outcome (a resumed operator, a repeated event), asks the engine to do it over a
connection to the pods as they are, relabels roles at once so the Services follow the new primary,
and records the outcome with an Event. "Not yet" (no replica caught up, no primary to switch from) is
a ``kopf.TemporaryError`` until ``operation_timeout``; a refusal (a standalone has no replica, the
named member is not a replica) is recorded as Failed with the engine's reason and never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from middleware.engines import metrics as exporters
from middleware.engines.base import Engine
from middleware.errors import MoorageError, NotReady, SpecError
from middleware.models.common import now_precise, now_rfc3339
from middleware.models.middleware import MiddlewareStatus, OperationStatus
from middleware.operations import (
    FINISHED,
    OPERATION_ANNOTATION,
    Action,
    OperationRequest,
    Result,
    request_id,
    restore_hold,
    rollout_id,
)
from middleware.restarting import Outcome, Snapshot, observe_members, restart_step
from middleware.runtime.kubernetes import KubernetesRuntime, member_up
from middleware.spec import ResolvedSpec
from operators.kube import context
from operators.reconcile import events, observe
from operators.reconcile import status as st
from operators.settings import OperatorConfig

log = logging.getLogger(__name__)


def requested(body: Mapping[str, Any]) -> str | None:
    return ((body.get("metadata") or {}).get("annotations") or {}).get(OPERATION_ANNOTATION)


def run(body: kopf.Body, patch: MutableMapping[str, Any], config: OperatorConfig) -> None:
    raw = requested(body)
    if raw is None:
        return
    status = st.load(body)
    previous = status.last_operation
    try:
        request = OperationRequest.parse(raw)
    except SpecError as error:
        ident = request_id(raw)
        if previous is None or previous.id != ident or previous.result not in FINISHED:
            _finish(body, patch, OperationStatus(id=ident, action="?", result=Result.FAILED), str(error))
        return
    if previous is not None and previous.id == request.id and previous.result in FINISHED:
        return  # done before (a resumed operator, a repeated event): a request runs once
    started = previous.started_at if previous is not None and previous.id == request.id else None
    record = OperationStatus(
        id=request.id,
        action=request.action.value,
        target=request.target,
        result=Result.RUNNING,
        started_at=started or now_rfc3339(),
    )
    if not st.is_provisioned(status):
        _wait(body, patch, record, "the Middleware is not provisioned yet", config)
        return
    held_by = restore_hold(body["metadata"])
    if held_by is not None:
        _wait(body, patch, record, f"restore {held_by} holds the members", config)
        return
    rt = context.runtime()
    try:
        decoded = context.decode(body, rt)
    except SpecError as error:
        _finish(body, patch, record, f"the spec is invalid: {error}")
        return
    spec, engine = decoded.spec, decoded.engine
    conn, pods = observe.live_connection(rt, spec, engine, config)
    if started is None:
        events.normal(body, reason=_reason(request.action, "Started"), message=_describe(request))
    if request.action == Action.RESTART:
        _restart_step(body, patch, status, record, spec, engine, config)
        return
    try:
        if request.action == Action.SWITCHOVER:
            report = engine.switchover(spec, conn, request.target)
        else:
            report = engine.failover(spec, conn)
    except NotReady as error:
        _wait(body, patch, record, str(error), config)
        return
    except MoorageError as error:
        _finish(body, patch, record, str(error))
        return
    # The Services select pods by role: relabel now rather than at the next timer pass. The old
    # primary may be restarting (fenced); the timer labels it once it answers.
    message = "; ".join(report.actions) or "nothing to do"
    try:
        observed_at = now_precise()
        observation, relabelled = observe.observe(rt, spec, engine, conn, pods)
    except Exception as exc:  # the operation is done; the timer will observe again
        log.info("observing %s/%s after %s failed: %s", spec.namespace, spec.name, request.action, exc)
    else:
        if relabelled:
            events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))
        st.observed(
            status, observation, observed_at, exporters.pod_addresses(spec, engine, observation.members)
        )
        record.observed_at = observed_at
        st.write(patch, status)
    _finish(body, patch, record, message, result=Result.SUCCEEDED)


def _restart_step(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: MiddlewareStatus,
    record: OperationStatus,
    spec: ResolvedSpec,
    engine: Engine,
    config: OperatorConfig,
) -> None:
    """One step of a rolling restart (``middleware.restarting``, the step the CLI loops locally),
    then "call me again". A member is restarted by evicting its pod (the Eviction API honours the
    PodDisruptionBudget; the operator may not delete pods). A member counts as restarted when its pod
    was created after the operation started, so the step needs no memory of its own and survives an
    operator restart."""
    rt = context.runtime()
    port = _PodRestarts(rt, config, record.started_at or "")
    observed_at = now_precise()
    step = restart_step(port, spec, engine)
    # Each member may take a while to come back: the time allowed grows with their number.
    allowed = config.operation_timeout * max(1, len(port.pods))
    if step.outcome == Outcome.WAITING:
        _wait(body, patch, record, step.message, config, allowed)
        return
    if step.outcome == Outcome.FINISHED:
        assert step.snapshot.observation is not None
        relabelled = observe.label_roles(rt, spec, step.snapshot.observation, port.pods)
        if relabelled:
            events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))
        observation = step.snapshot.observation
        st.observed(
            status, observation, observed_at, exporters.pod_addresses(spec, engine, observation.members)
        )
        record.observed_at = observed_at
        st.restarted_since_pending(status, observe.creation_times(port.pods))
        st.write(patch, status)
        _finish(body, patch, record, step.message, result=Result.SUCCEEDED)
        return
    if step.outcome == Outcome.SWITCHED_OVER:
        events.normal(body, reason="RestartSwitchover", message=f"{record.id}: {'; '.join(step.actions)}")
    else:
        events.normal(body, reason="RestartingMember", message=f"{record.id}: {step.message}")
    _again(patch, record, step.message, config.member_retry)


@dataclass
class _PodRestarts:
    """``middleware.restarting.RestartPort`` over pods: restarted = created after ``started``."""

    rt: KubernetesRuntime
    config: OperatorConfig
    started: str
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def snapshot(self, spec: ResolvedSpec, engine: Engine) -> Snapshot:
        conn, self.pods = observe.live_connection(self.rt, spec, engine, self.config)
        up = {name: _serving(engine, pod) for name, pod in self.pods.items()}
        restarted = frozenset(
            name
            for name, pod in self.pods.items()
            if str((pod.get("metadata") or {}).get("creationTimestamp") or "") >= self.started
        )
        return observe_members(spec, engine, conn, up, restarted)

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        if not self.rt.evict_pod(spec.namespace, name):
            return f"the PodDisruptionBudget does not allow evicting {name} now"
        return None

    def switched_over(self, spec: ResolvedSpec, engine: Engine, snapshot: Snapshot) -> None:
        observe.observe(self.rt, spec, engine, snapshot.conn, self.pods)  # the Services follow now


def request_rollout(body: kopf.Body, patch: MutableMapping[str, Any], status: MiddlewareStatus) -> bool:
    """While ``PendingRestart`` is True, ask for a rolling restart the way a user would: a request in
    the annotation, so it runs through the handler above with its status, Events and refusals."""
    request = rollout_request(requested(body), status)
    if request is None:
        return False
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[OPERATION_ANNOTATION] = request.to_annotation()
    pending = status.condition(st.PENDING_RESTART)
    why = pending.message if pending is not None else ""
    events.normal(body, reason="RestartRequested", message=f"{request.id}: rolling restart: {why}")
    return True


def rollout_request(raw: str | None, status: MiddlewareStatus) -> OperationRequest | None:
    """The rolling restart to ask for, if any. One per pending change (the id comes from the
    condition's transition time), so one that failed is not retried in a loop: its reason stays in
    ``lastOperation`` and ``moorage restart`` tries again. A request of the user's (``raw``, the
    annotation) that has not finished is never replaced; the next pass asks once it has."""
    pending = status.condition(st.PENDING_RESTART)
    if pending is None or pending.status != "True":
        return None
    ident = rollout_id(pending.last_transition_time)
    previous = status.last_operation
    if previous is not None and previous.id == ident:
        return None  # asked for already: running, or finished and not to be repeated
    if raw is not None and (
        previous is None or previous.id != request_id(raw) or previous.result not in FINISHED
    ):
        return None
    return OperationRequest(id=ident, action=Action.RESTART)


def _serving(engine: Engine, pod: Mapping[str, Any]) -> bool:
    # A pod being deleted may still report Ready until its containers stop: it is not back yet.
    return member_up(engine, pod) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def _again(patch: MutableMapping[str, Any], record: OperationStatus, message: str, delay: float) -> None:
    """Still Running: say so with ``message`` and have kopf call the handler again after ``delay``."""
    record.message = message
    _put(patch, record)
    raise kopf.TemporaryError(f"operation {record.id}: {message}", delay=delay)


def _wait(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    record: OperationStatus,
    why: str,
    config: OperatorConfig,
    allowed: float | None = None,
) -> None:
    """Not possible yet: Running with the reason, tried again; Failed once it has waited too long."""
    waited = _seconds_since(record.started_at)
    if waited >= (allowed or config.operation_timeout):
        _finish(body, patch, record, f"gave up after {waited:.0f}s: {why}")
        return
    _again(patch, record, f"waiting: {why}", config.operation_retry)


def _finish(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    record: OperationStatus,
    message: str,
    result: Result = Result.FAILED,
) -> None:
    record.result = result
    record.message = message
    record.finished_at = now_rfc3339()
    _put(patch, record)
    reason = _reason(record.action, "Succeeded" if result == Result.SUCCEEDED else "Failed")
    post = events.normal if result == Result.SUCCEEDED else events.warning
    post(body, reason=reason, message=f"{record.id}: {message}")


def _put(patch: MutableMapping[str, Any], record: OperationStatus) -> None:
    # Every key, unset ones as null: a merge patch keeps what it omits, and the previous request's
    # target or finishedAt must not show under this one.
    patch.setdefault("status", {})["lastOperation"] = record.model_dump(by_alias=True, mode="json")


def _reason(action: str, outcome: str) -> str:
    return f"{action.capitalize() if action in {a.value for a in Action} else 'Operation'}{outcome}"


def _describe(request: OperationRequest) -> str:
    to = f" to {request.target}" if request.target else ""
    return f"{request.id}: {request.action.value}{to}"


def _seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - then).total_seconds()
