"""The CLI's side of a day-2 operation on Kubernetes: write the request into the Middleware's
``operation.moorage.io/request`` annotation, then follow ``status.lastOperation`` until the operator has
done it, and the status until the Middleware is Ready again. A spec change (``moorage scale``, ``set``)
is a merge patch of the spec, followed until the operator has applied it (its applied-spec record
equals the spec written), rolled out any parameters needing a restart, and reports Ready. The CLI
never reaches into pods: the operator does the work, so the request, its progress and its outcome
are visible to everyone (``kubectl describe mw``) and survive the CLI being interrupted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from middleware.errors import MoorageError, OperationError
from middleware.models.common import API_VERSION
from middleware.operations import (
    APPLIED_SPEC_ANNOTATION,
    FINISHED,
    OPERATION_ANNOTATION,
    ROLLOUT_ID_PREFIX,
    OperationRequest,
    Result,
    rollout_id,
)
from middleware.runtime.kubernetes import KubernetesRuntime

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class OperationOutcome:
    message: str
    middleware: dict[str, Any]


def request_operation(
    rt: KubernetesRuntime,
    namespace: str,
    name: str,
    request: OperationRequest,
    *,
    timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> OperationOutcome:
    """Ask, wait for the outcome, then for Ready. OperationError when the operator refused or failed
    (its reason in the message); MoorageError when nothing answered within ``timeout``."""
    _get(rt, namespace, name)  # a clear "no such Middleware" before anything is written
    annotations = {"metadata": {"annotations": {OPERATION_ANNOTATION: request.to_annotation()}}}
    rt.merge_patch(API_VERSION, "Middleware", namespace, name, annotations)
    deadline = clock() + timeout
    progress(f"{request.action.value} {request.id} requested")
    while True:
        body = _get(rt, namespace, name)
        record = (body.get("status") or {}).get("lastOperation") or {}
        if record.get("id") == request.id:
            progress(f"{request.action.value}: {record.get('result')} {record.get('message') or ''}".strip())
            if record.get("result") in FINISHED:
                break
        if clock() > deadline:
            raise MoorageError(
                f"no outcome of {request.action.value} {request.id} on {namespace}/{name} after "
                f"{timeout:.0f}s: is the operator running? (kubectl -n {namespace} describe mw {name})"
            )
        time.sleep(POLL_SECONDS)
    if record.get("result") != Result.SUCCEEDED:
        raise OperationError(f"{request.action.value} of {namespace}/{name} failed: {record.get('message')}")
    message = str(record.get("message") or "")
    while True:
        status = body.get("status") or {}
        # The operator's timer runs beside its handlers: an observation begun before the operation
        # may be written after it. Its outcome is what an observation at least as new says.
        current = str(status.get("observedAt") or "") >= str(record.get("observedAt") or "")
        if status.get("phase") == "Ready" and current:
            return OperationOutcome(message=message, middleware=body)
        progress(f"done ({message}); waiting for Ready: {status.get('phase')} ({status.get('phaseReason')})")
        if clock() > deadline:
            raise MoorageError(
                f"{request.action.value} of {namespace}/{name} succeeded ({message}) but it is not "
                f"Ready after {timeout:.0f}s: {not_ready(status)}"
            )
        time.sleep(POLL_SECONDS)
        body = _get(rt, namespace, name)


def change_spec(
    rt: KubernetesRuntime,
    namespace: str,
    name: str,
    spec_patch: Mapping[str, Any],
    *,
    timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Merge ``spec_patch`` into the spec and wait until the operator has carried it out: the
    Middleware as it then is. SpecError-like refusals of the operator (InvalidSpec) and a failed
    rolling restart raise OperationError with the operator's words; MoorageError on timeout."""
    written = rt.merge_patch(API_VERSION, "Middleware", namespace, name, {"spec": dict(spec_patch)})
    if written is None:
        raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
    return follow_spec(rt, written, timeout=timeout, progress=progress, clock=clock)


def apply_middleware(
    rt: KubernetesRuntime,
    manifest: Mapping[str, Any],
    *,
    timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """``moorage up --runtime kubernetes``: create or update the Middleware (server-side apply of the
    fields the manifest sets, as the CLI's own field manager) and wait as ``change_spec`` does."""
    written = rt.apply(dict(manifest))
    return follow_spec(rt, written, timeout=timeout, progress=progress, clock=clock)


def delete_middleware(
    rt: KubernetesRuntime,
    namespace: str,
    name: str,
    *,
    purge: bool,
    timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """``moorage down --runtime kubernetes``: the same promise as locally, data kept unless ``purge``.
    ``spec.deletionPolicy`` is set to say so before the delete, since the operator's finalizer reads
    it then (Retain keeps the PVCs and credentials for a later ``up``); returns once it is gone."""
    policy = "Delete" if purge else "Retain"
    patched = rt.merge_patch(API_VERSION, "Middleware", namespace, name, {"spec": {"deletionPolicy": policy}})
    if patched is None:
        raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
    rt.delete(API_VERSION, "Middleware", namespace, name)
    deadline = clock() + timeout
    while rt.get(API_VERSION, "Middleware", namespace, name) is not None:
        progress(f"waiting for the operator to finish deleting {namespace}/{name} ({policy})")
        if clock() > deadline:
            raise MoorageError(
                f"{namespace}/{name} is still being deleted after {timeout:.0f}s: is the operator running? "
                f"(kubectl -n {namespace} describe mw {name})"
            )
        time.sleep(POLL_SECONDS)


def follow_spec(
    rt: KubernetesRuntime,
    written: Mapping[str, Any],
    *,
    timeout: float,
    progress: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Follow the Middleware ``written`` (the API's answer to a write) until the operator has
    carried out its generation (``spec_change_state``)."""
    namespace, name = written["metadata"]["namespace"], written["metadata"]["name"]
    generation = written["metadata"].get("generation")
    deadline = clock() + timeout
    body = dict(written)
    while True:
        state = spec_change_state(body, generation)
        if state.failed:
            raise OperationError(f"{namespace}/{name}: {state.message}")
        if state.done:
            return body
        progress(state.message)
        if clock() > deadline:
            raise MoorageError(
                f"{namespace}/{name} did not settle within {timeout:.0f}s: {state.message} "
                f"(kubectl -n {namespace} describe mw {name})"
            )
        time.sleep(POLL_SECONDS)
        body = _get(rt, namespace, name)


@dataclass(frozen=True)
class SpecChangeState:
    done: bool
    failed: bool
    message: str


def spec_change_state(body: Mapping[str, Any], generation: int | None) -> SpecChangeState:
    """Where the operator is with the spec of ``generation``, read from the Middleware alone."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    phase, reason = status.get("phase"), status.get("phaseReason")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return SpecChangeState(False, False, f"waiting for the operator to see generation {generation}")
    if reason == "InvalidSpec" or reason == "StorageShrinkRefused":
        message = (conditions.get("Provisioned") or {}).get("message") or reason
        return SpecChangeState(False, True, f"the operator refused the spec: {message}")
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    try:
        applied = json.loads(annotations.get(APPLIED_SPEC_ANNOTATION) or "null")
    except ValueError:
        applied = None
    if applied != (body.get("spec") or {}):
        why = (conditions.get("Progressing") or {}).get("message") or reason
        return SpecChangeState(False, False, f"applying: {phase} ({why})")
    pending = conditions.get("PendingRestart") or {}
    if pending.get("status") == "True":
        last = status.get("lastOperation") or {}
        rollout = last.get("id") == rollout_id(str(pending.get("lastTransitionTime") or ""))
        if rollout and last.get("result") == Result.FAILED:
            return SpecChangeState(
                False, True, f"the rolling restart {last.get('id')} failed: {last.get('message')}"
            )
        step = last.get("message") if rollout else "about to start"
        return SpecChangeState(False, False, f"rolling restart for {pending.get('message')}: {step}")
    last = status.get("lastOperation") or {}
    if str(last.get("id") or "").startswith(ROLLOUT_ID_PREFIX) and last.get("result") == Result.RUNNING:
        # PendingRestart clears once every pod is newer than it, a moment before the rollout's last
        # step has seen the last member back: the rollout's own outcome is the one to wait for.
        return SpecChangeState(False, False, f"rolling restart finishing: {last.get('message')}")
    if phase != "Ready":
        return SpecChangeState(False, False, f"waiting for Ready: {not_ready(status)}")
    return SpecChangeState(True, False, "Ready")


def not_ready(status: Mapping[str, Any]) -> str:
    """Phase, reason and the Ready condition's message: what a DBA needs to know why, when waiting
    ends (e.g. the failing observation's error behind ObserveFailed)."""
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    why = ready.get("message")
    return f"{status.get('phase')} ({status.get('phaseReason')}{': ' + why if why else ''})"


def _get(rt: KubernetesRuntime, namespace: str, name: str) -> dict[str, Any]:
    body = rt.get(API_VERSION, "Middleware", namespace, name)
    if body is None:
        raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
    return body
