"""Shape changes (shards, replicas, sentinels) in the order the data needs, never sleeping.

The members of both shapes must be up while the engine moves data: the widest shape (each count at
its larger value) is applied first, so on a scale-out the new pods start and on a scale-in the
leaving ones are still there. Once they are all Ready, ``engine.scale(old, new)`` moves slots or
replicas (idempotent, so a retry after a crash converges); only then does the caller apply the new,
smaller render and prune what it no longer contains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, MutableMapping
from typing import Any, NoReturn

import kopf

from middleware.engines.base import Engine
from middleware.models.middleware import MiddlewareStatus
from middleware.runtime.kubernetes import KubernetesApiError, KubernetesRuntime, pod_ready
from middleware.spec import ResolvedSpec
from operators.reconcile import applied, events, observe
from operators.reconcile import status as st
from operators.settings import OperatorConfig

Retry = Callable[[str, float], NoReturn]


def widest(old: ResolvedSpec, new: ResolvedSpec) -> ResolvedSpec:
    return dataclasses.replace(
        new,
        shards=max(old.shards, new.shards),
        replicas=max(old.replicas, new.replicas),
        sentinels=max(old.sentinels, new.sentinels),
    )


def drive(
    rt: KubernetesRuntime,
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: MiddlewareStatus,
    previous: applied.Applied,
    spec: ResolvedSpec,
    engine: Engine,
    password: str,
    config: OperatorConfig,
    retry: Retry,
) -> applied.Applied:
    """Bring the members from ``previous``'s shape to ``spec``'s; returns the record to continue
    from (the previous spec with the new shape). Raises kopf.TemporaryError while not done yet."""
    old_shape, new_shape = applied.shape(previous.spec), applied.shape(spec)
    change = f"shards/replicas/sentinels {_fmt(old_shape)} -> {_fmt(new_shape)}"
    wide = widest(previous.spec, spec)
    manifests = engine.render(wide, cluster_domain=config.cluster_domain)
    try:
        for manifest in manifests:
            rt.apply(manifest, owner=body)
    except KubernetesApiError as exc:
        st.api_refused(status, "ApplyFailed", str(exc))
        events.warning(body, reason="ApplyFailed", message=str(exc))
        retry(str(exc), config.api_error_retry)

    pods = observe.pods_by_name(rt, wide)
    planned = engine.members(wide)
    waiting = [m.name for m in planned if m.name not in pods or not pod_ready(pods[m.name])]
    if waiting:
        message = f"{change}: waiting for {', '.join(waiting[:5])} to be Ready before moving data"
        if st.progressing(status, "Scaling", message):
            events.normal(body, reason="Scaling", message=message)
        retry(message, config.member_retry)

    st.progressing(status, "Scaling", f"{change}: moving data")
    conn = observe.connection(rt, wide, engine, manifests, pods, password, config.cluster_domain)
    try:
        report = engine.scale(previous.spec, spec, conn)
    except Exception as exc:  # network, a member still loading, a refusal: all retried the same way
        message = f"{change} failed: {type(exc).__name__}: {exc}"
        if st.scale_failed(status, message):
            events.warning(body, reason="ScaleFailed", message=message)
        retry(message, config.bootstrap_retry)
    actions = "; ".join(report.actions) or "nothing to move"
    events.normal(body, reason="Scaled", message=f"{change}: {actions}")
    # Recorded now: the data is where the new shape wants it, and a retry of a later step (apply,
    # prune, bootstrap) must not scale again from the old shape.
    wire = applied.with_shape_of(previous.wire, dict(body.get("spec") or {}))
    applied.record(patch, wire)
    return applied.Applied(
        wire=wire,
        spec=dataclasses.replace(
            previous.spec, shards=spec.shards, replicas=spec.replicas, sentinels=spec.sentinels
        ),
    )


def _fmt(shape: tuple[int, int, int]) -> str:
    return "/".join(str(n) for n in shape)
