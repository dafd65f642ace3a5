"""Pruning: objects of this Middleware that the current render no longer contains (a removed
shard's StatefulSet, its PodDisruptionBudget and Service) are deleted.

Only kinds the engines render, only objects carrying our labels and a controller reference to this
very Middleware (uid), so nothing a user or another instance made is touched. Never
PersistentVolumeClaims (``deletionPolicy`` governs data) and never Secrets (the credentials outlive
their objects on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from middleware.kube.builders import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec

POD_MONITOR = ("monitoring.coreos.com/v1", "PodMonitor")
# The StatefulSets first: their pods go before the Services and budgets that describe them.
PRUNABLE = (
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    POD_MONITOR,
)
# Kinds of optional CRDs: looked at only where the API serves them.
OPTIONAL = {POD_MONITOR}


def prune(
    rt: KubernetesRuntime,
    owner: Mapping[str, Any],
    spec: ResolvedSpec,
    manifests: Iterable[Mapping[str, Any]],
) -> list[str]:
    """Delete what is ours and not rendered; returns ``Kind/name`` of each object deleted."""
    rendered = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name, MANAGED_BY_LABEL: MANAGED_BY}
    uid = owner["metadata"]["uid"]
    deleted = []
    for api_version, kind in PRUNABLE:
        if (api_version, kind) in OPTIONAL and not rt.serves(api_version, kind):
            continue
        for obj in rt.list_objects(api_version, kind, spec.namespace, labels):
            meta = obj["metadata"]
            if (kind, meta["name"]) in rendered or meta.get("deletionTimestamp"):
                continue
            refs = meta.get("ownerReferences") or []
            if not any(r.get("uid") == uid and r.get("controller") for r in refs):
                continue
            # Background: the garbage collector removes the pods; the PVCs stay (retention Retain).
            if rt.delete(api_version, kind, spec.namespace, meta["name"], propagation="Background"):
                deleted.append(f"{kind}/{meta['name']}")
    return deleted
