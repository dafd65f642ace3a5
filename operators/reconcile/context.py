"""What every reconcile step starts from: the runtime (one per process) and the decoded spec."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from middleware.catalog import Catalog, merge_catalogs
from middleware.engines.base import Engine
from middleware.engines.registry import get_engine
from middleware.runtime.kubernetes import AddressResolver, KubernetesRuntime, pod_dns_address
from middleware.spec import ResolvedSpec, load_middleware, resolve
from operators.settings import FIELD_MANAGER

_lock = threading.Lock()
_runtimes: dict[str, KubernetesRuntime] = {}
# Test seam (see KubernetesRuntime): how a member's pod DNS name becomes an address to dial.
address_resolver: AddressResolver = pod_dns_address


def runtime() -> KubernetesRuntime:
    """One runtime per kubeconfig (tests point the same process at several control planes)."""
    key = os.environ.get("KUBECONFIG", "")
    with _lock:
        found = _runtimes.get(key)
        if found is None:
            found = KubernetesRuntime.from_environment(field_manager=FIELD_MANAGER)
            _runtimes[key] = found
        found.resolve_address = address_resolver
        return found


@dataclass
class Decoded:
    body: Mapping[str, Any]
    spec: ResolvedSpec
    engine: Engine


def catalog(rt: KubernetesRuntime) -> Catalog:
    """The default catalog with every MiddlewareCatalog layered on top, in name order."""
    return merge_catalogs(rt.catalogs())


def manifest_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the object the models know: status and server-managed metadata are dropped."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "labels", "annotations", "generation", "uid")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": dict(body.get("spec") or {}),
    }


def decode(body: Mapping[str, Any], rt: KubernetesRuntime) -> Decoded:
    """Validate everything before anything is applied; raises SpecError naming the field."""
    middleware = load_middleware(manifest_of(body))
    spec = resolve(middleware, catalog(rt))
    return Decoded(body=body, spec=spec, engine=get_engine(spec.engine))
