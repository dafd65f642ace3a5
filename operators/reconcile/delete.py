"""Deletion through our finalizer, honouring ``spec.deletionPolicy``.

Everything rendered carries an owner reference and is garbage-collected after the finalizer is
removed. PVCs (the StatefulSets retain them) and the credentials Secret (created without an owner
reference) are not: ``Retain`` (the default) keeps them, so a Middleware of the same name comes back
with its data and password; ``Delete`` removes them here.

The finalizer is ours, not kopf's: the create/update/resume handler adds it in its own patch, and the
operator-wide observe loop (``observe_loop``) runs ``finalize`` for a Middleware being deleted. With
kopf's (which any kopf timer or mandatory Delete handler makes it keep) kopf spends a whole event
cycle adding it before the first handler runs: a third of the time to a new Middleware's first
status at 500 of them (docs/operator.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from middleware.kube.builders import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from middleware.runtime.kubernetes import KubernetesApiError
from operators import metrics
from operators.kube import context
from operators.reconcile import applied, events

FINALIZER = "moorage.io/deletion-policy"
API_VERSION = "moorage.io/v1alpha1"


def protected(body: Mapping[str, Any]) -> bool:
    return FINALIZER in ((body.get("metadata") or {}).get("finalizers") or [])


def deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def protect(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    """Add the finalizer in the handler's own patch, unless it is there or the Middleware is going
    (a finalizer cannot be added then). kopf applies it as a JSON patch tested against the
    resourceVersion, so another controller's finalizer written meanwhile is never overwritten."""
    if protected(body) or deleting(body):
        return

    def add(raw: kopf.RawBody) -> None:
        finalizers = cast(dict[str, Any], raw).setdefault("metadata", {}).setdefault("finalizers", [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)

    patch.fns.append(add)


def finalize(body: kopf.Body) -> bool:
    """For a Middleware being deleted: honour its deletionPolicy, then take the finalizer off.
    False when the finalizer list changed meanwhile (the next look tries again)."""
    delete(body)
    return release(body)


def release(body: Mapping[str, Any]) -> bool:
    meta = body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        return True
    at = finalizers.index(FINALIZER)
    # Tested by position and value: a merge patch would replace the whole list and could drop a
    # finalizer another controller added since this body was read.
    ops = [
        {"op": "test", "path": f"/metadata/finalizers/{at}", "value": FINALIZER},
        {"op": "remove", "path": f"/metadata/finalizers/{at}"},
    ]
    try:
        context.runtime().json_patch(API_VERSION, "Middleware", meta["namespace"], meta["name"], ops)
    except KubernetesApiError as exc:
        if exc.status == 422:
            return False
        raise
    return True


def delete(body: kopf.Body) -> None:
    rt = context.runtime()
    meta, spec = body["metadata"], body.get("spec") or {}
    namespace, name, engine = meta["namespace"], meta["name"], str(spec.get("engine", ""))
    labels = {NAME_LABEL: engine, INSTANCE_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}
    claims = rt.claims(namespace, labels)
    secrets = rt.list_objects("v1", "Secret", namespace, labels)
    if spec.get("deletionPolicy", "Retain") == "Delete":
        # The StatefulSets first, so none recreates a pod (and its claim) while claims go away.
        for sts in rt.list_objects("apps/v1", "StatefulSet", namespace, labels):
            rt.delete("apps/v1", "StatefulSet", namespace, sts["metadata"]["name"], propagation="Background")
        for claim in claims:
            rt.delete("v1", "PersistentVolumeClaim", namespace, claim["metadata"]["name"])
        for secret in secrets:
            rt.delete("v1", "Secret", namespace, secret["metadata"]["name"])
        events.normal(
            body,
            reason="DataDeleted",
            message=f"deletionPolicy Delete: deleted {len(claims)} PVCs and {len(secrets)} Secrets",
        )
    else:
        kept = [c["metadata"]["name"] for c in claims] + [s["metadata"]["name"] for s in secrets]
        events.normal(
            body,
            reason="DataRetained",
            message=f"deletionPolicy Retain: kept {', '.join(kept) or 'nothing (none created yet)'}",
        )
    metrics.forget(namespace, name, engine)
    applied.forget_applied(str(meta.get("uid") or ""))
