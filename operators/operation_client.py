"""The CLI's side of a day-2 operation on Kubernetes: write the request into the Middleware's
``operation.moorage.io/request`` annotation, then follow ``status.lastOperation`` until the operator has
done it, and the status until the Middleware is Ready again. The CLI never reaches into pods: the
operator does the work, so the request, its progress and its outcome are visible to everyone
(``kubectl describe mw``) and survive the CLI being interrupted."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from middleware.errors import MoorageError, OperationError
from middleware.models.common import API_VERSION
from middleware.operations import FINISHED, OPERATION_ANNOTATION, OperationRequest, Result
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
        if status.get("phase") == "Ready":
            return OperationOutcome(message=message, middleware=body)
        progress(f"done ({message}); waiting for Ready: {status.get('phase')} ({status.get('phaseReason')})")
        if clock() > deadline:
            raise MoorageError(
                f"{request.action.value} of {namespace}/{name} succeeded ({message}) but it is not "
                f"Ready after {timeout:.0f}s: {status.get('phase')} ({status.get('phaseReason')})"
            )
        time.sleep(POLL_SECONDS)
        body = _get(rt, namespace, name)


def _get(rt: KubernetesRuntime, namespace: str, name: str) -> dict[str, Any]:
    body = rt.get(API_VERSION, "Middleware", namespace, name)
    if body is None:
        raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
    return body
