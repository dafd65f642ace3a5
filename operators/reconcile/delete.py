"""Deletion through our finalizer, honouring ``spec.deletionPolicy``.

Everything rendered carries an owner reference and is garbage-collected after the finalizer is
removed. PVCs (the StatefulSets retain them) and the credentials Secret (created without an owner
reference) are not: ``Retain`` (the default) keeps them, so a Middleware of the same name comes back
with its data and password; ``Delete`` removes them here.
"""

from __future__ import annotations

import kopf

from middleware.kube.builders import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from operators import metrics
from operators.kube import context
from operators.reconcile import applied, events


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
