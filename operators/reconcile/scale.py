"""Shape changes on Kubernetes: ``middleware.scaling``'s step over the cluster, never sleeping.

The flow (widest shape up, then ``engine.scale``) is ``middleware.scaling.scale_step``, shared with
the local runtime; this module is its Kubernetes port (apply the widest render, report the pods not
Ready) and the kopf glue: status, Events, ``kopf.TemporaryError`` while not done, and the applied
record once the data has moved. The caller then applies the new, smaller render and prunes what it
no longer contains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, MutableMapping
from typing import Any, NoReturn

import kopf

from middleware.engines.base import Connection, Engine
from middleware.models.middleware import MiddlewareStatus
from middleware.runtime.kubernetes import KubernetesApiError, KubernetesRuntime, pod_ready
from middleware.scaling import Wait, describe_change, scale_step
from middleware.spec import ResolvedSpec
from operators.reconcile import applied, archiving, events, observe
from operators.reconcile import status as st
from operators.settings import OperatorConfig

Retry = Callable[[str, float], NoReturn]


@dataclasses.dataclass
class KubernetesMembers:
    """``middleware.scaling.MembersPort`` over the cluster: members are pods of StatefulSets."""

    rt: KubernetesRuntime
    owner: kopf.Body
    password: str
    cluster_domain: str
    recovery_base_backup: str | None = None

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        for manifest in archiving.render(
            self.rt, spec, engine, self.cluster_domain, self.recovery_base_backup
        ):
            self.rt.apply(manifest, owner=self.owner)
        pods = observe.pods_by_name(self.rt, spec)
        return [m.name for m in engine.members(spec) if m.name not in pods or not pod_ready(pods[m.name])]

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        manifests = engine.render(spec, cluster_domain=self.cluster_domain)
        pods = observe.pods_by_name(self.rt, spec)
        return observe.connection(self.rt, spec, engine, manifests, pods, self.password, self.cluster_domain)


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
    change = describe_change(previous.spec, spec)
    port = KubernetesMembers(rt, body, password, config.cluster_domain, status.recovery_base_backup)
    try:
        step = scale_step(port, previous.spec, spec, engine)
    except KubernetesApiError as exc:
        st.api_refused(status, "ApplyFailed", str(exc))
        events.warning(body, reason="ApplyFailed", message=str(exc))
        retry(str(exc), config.api_error_retry)
    except Exception as exc:  # network, a member still loading, a refusal: all retried the same way
        message = f"{change} failed: {type(exc).__name__}: {exc}"
        if st.scale_failed(status, message):
            events.warning(body, reason="ScaleFailed", message=message)
        retry(message, config.bootstrap_retry)
    if isinstance(step, Wait):
        if st.progressing(status, "Scaling", step.reason):
            events.normal(body, reason="Scaling", message=step.reason)
        retry(step.reason, config.member_retry)
    actions = "; ".join(step.actions) or "nothing to move"
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
