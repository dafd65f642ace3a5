"""Storage expansion: volumeClaimTemplates cannot be changed in place (kubernetes #68737).

Growing is done the way operators do it: patch every existing PVC's requested storage (the CSI
resizer does the rest), delete the StatefulSet with ``propagationPolicy=Orphan`` so its pods keep
running, then apply it again with the new template: the new StatefulSet adopts the orphaned pods.
Shrinking is impossible for PVCs and refused up front, with a condition naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from middleware.errors import SpecError
from middleware.models.common import quantity_to_number
from middleware.runtime.kubernetes import KubernetesRuntime


@dataclass
class Growth:
    statefulset: str
    template: str
    old: str
    new: str
    labels: dict[str, str]


class StorageBusy(Exception):
    """A StatefulSet is being recreated for new volumeClaimTemplates: retry shortly."""


def _size(template: dict[str, Any]) -> str:
    return str(template["spec"]["resources"]["requests"]["storage"])


def plan(rt: KubernetesRuntime, manifests: Iterable[dict[str, Any]]) -> list[Growth]:
    """What must grow. Raises SpecError for a shrink and StorageBusy while a recreate is underway."""
    growth: list[Growth] = []
    for manifest in manifests:
        if manifest["kind"] != "StatefulSet":
            continue
        meta = manifest["metadata"]
        live = rt.get("apps/v1", "StatefulSet", meta["namespace"], meta["name"])
        if live is None:
            continue
        if live["metadata"].get("deletionTimestamp"):
            raise StorageBusy(f"StatefulSet {meta['name']} is being deleted (its pods are kept)")
        current = {t["metadata"]["name"]: t for t in live["spec"].get("volumeClaimTemplates") or []}
        for template in manifest["spec"].get("volumeClaimTemplates") or []:
            name = template["metadata"]["name"]
            if name not in current:
                continue
            old, new = _size(current[name]), _size(template)
            if quantity_to_number(new) < quantity_to_number(old):
                raise SpecError(
                    "spec.storage.size",
                    f"cannot shrink volume {name!r} of StatefulSet {meta['name']} from {old} to {new}: "
                    "PersistentVolumeClaims only grow (set it back to at least "
                    f"{old}, or restore a backup into a new Middleware)",
                )
            if quantity_to_number(new) > quantity_to_number(old):
                labels = dict(template["metadata"].get("labels") or {})
                growth.append(Growth(meta["name"], name, old, new, labels))
    return growth


def grow(rt: KubernetesRuntime, namespace: str, growth: list[Growth]) -> list[str]:
    """Patch the claims, then orphan-delete each StatefulSet concerned. Returns what was done.
    Idempotent: a claim already at the new size is left alone, so a retry after a partial run
    continues where it stopped."""
    actions = []
    for item in growth:
        for claim in rt.claims_of(namespace, item.template, item.statefulset, item.labels):
            requested = claim["spec"]["resources"]["requests"]["storage"]
            if quantity_to_number(requested) < quantity_to_number(item.new):
                rt.resize_claim(namespace, claim["metadata"]["name"], item.new)
                actions.append(f"PVC {claim['metadata']['name']} {requested} -> {item.new}")
    for statefulset in sorted({item.statefulset for item in growth}):
        if rt.orphan_delete_statefulset(namespace, statefulset):
            actions.append(f"StatefulSet {statefulset} deleted with its pods orphaned, to be recreated")
    return actions
