"""The last spec the operator brought the deployment to, kept in an annotation on the Middleware.

Shape changes (shards, replicas, sentinels) and parameter changes are driven by comparing the new
spec with this one, the way the local lifecycle compares with its recorded manifest. It is written
only after a step succeeded, so a failed or interrupted change is retried from what is really
running; a scale that finished records its new shape at once, so a retry never moves data twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from middleware.errors import SpecError
from middleware.operations import APPLIED_SPEC_ANNOTATION
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec
from operators.kube import context

ANNOTATION = APPLIED_SPEC_ANNOTATION
SHAPE_KEYS = ("shards", "replicas", "sentinels")


@dataclass
class Applied:
    wire: dict[str, Any]  # the spec as written by the user (what is stored)
    spec: ResolvedSpec


def load(body: Mapping[str, Any], rt: KubernetesRuntime) -> Applied | None:
    """The recorded spec, resolved; None before the first success (or for an unreadable record,
    which is then treated as unknown: no scale or prune is inferred from it)."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not raw:
        return None
    try:
        wire = json.loads(raw)
        if not isinstance(wire, dict):
            return None
        resolved = context.decode({**body, "spec": wire}, rt).spec
    except (ValueError, SpecError):
        return None
    return Applied(wire=wire, spec=resolved)


def record(patch: MutableMapping[str, Any], wire: Mapping[str, Any]) -> None:
    metadata = patch.setdefault("metadata", {})
    metadata.setdefault("annotations", {})[ANNOTATION] = json.dumps(dict(wire), sort_keys=True)


def with_shape_of(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``previous`` with the shape fields of ``new``: what runs right after a scale, before the rest
    of the new spec (parameters) has been applied."""
    merged = dict(previous)
    for key in SHAPE_KEYS:
        if key in new:
            merged[key] = new[key]
        else:
            merged.pop(key, None)
    return merged
