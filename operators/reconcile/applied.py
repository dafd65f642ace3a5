"""The last spec the operator brought the deployment to, kept in an annotation on the Middleware.

Shape changes (shards, replicas, sentinels) and parameter changes are driven by comparing the new
spec with this one, the way the local lifecycle compares with its recorded manifest. It is written
only after a step succeeded, so a failed or interrupted change is retried from what is really
running; a scale that finished records its new shape at once, so a retry never moves data twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
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


# What this process last server-side-applied for each Middleware (uid -> render digest, when). A pass
# that retries while members start renders the same objects every few seconds; applying them again
# changes nothing and, with hundreds of Middlewares starting at once, those no-op applies were most of
# the API server's work. Kept in memory only: a restarted operator applies everything once more.
_recent: dict[str, tuple[str, float]] = {}
_recent_lock = threading.Lock()
# Dropped once this many entries exist and theirs have expired (deleted Middlewares, long-idle ones).
_RECENT_SWEEP_AT = 1024


def render_digest(manifests: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(manifests, sort_keys=True, default=str).encode()).hexdigest()


def applied_recently(uid: str, digest: str, within: float) -> bool:
    """True when this process applied exactly this render for ``uid`` less than ``within`` seconds
    ago: drift (an object edited or deleted by hand) is still repaired, at most that much later."""
    with _recent_lock:
        found = _recent.get(uid)
    return found is not None and found[0] == digest and time.monotonic() - found[1] < within


def remember_applied(uid: str, digest: str, within: float) -> None:
    now = time.monotonic()
    with _recent_lock:
        _recent[uid] = (digest, now)
        if len(_recent) >= _RECENT_SWEEP_AT:
            for key in [k for k, (_, at) in _recent.items() if now - at >= within]:
                del _recent[key]


def forget_applied(uid: str) -> None:
    with _recent_lock:
        _recent.pop(uid, None)
