"""What every reconcile step starts from: the runtime (one per process) and the decoded spec."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from middleware.catalog import Catalog, merge_catalogs
from middleware.engines.base import Engine
from middleware.engines.registry import get_engine
from middleware.errors import SpecError
from middleware.kube.builders import INSTANCE_LABEL, NAME_LABEL
from middleware.runtime.kubernetes import AddressResolver, KubernetesRuntime, pod_dns_address
from middleware.spec import ResolvedSpec, load_middleware, manifest_of, resolve
from operators.settings import FIELD_MANAGER, operator_config

_lock = threading.Lock()
_runtimes: dict[str, KubernetesRuntime] = {}
# Other clusters' APIs, per kubeconfig Secret (namespace, name, key): (resourceVersion, runtime).
_remote: dict[tuple[str, str, str], tuple[str, KubernetesRuntime]] = {}
# Test seam (see KubernetesRuntime): how a member's pod DNS name becomes an address to dial.
address_resolver: AddressResolver = pod_dns_address


def runtime() -> KubernetesRuntime:
    """One runtime per kubeconfig (tests point the same process at several control planes)."""
    key = os.environ.get("KUBECONFIG", "")
    with _lock:
        found = _runtimes.get(key)
        if found is None:
            found = KubernetesRuntime.from_environment(
                field_manager=FIELD_MANAGER, connections=operator_config().handler_threads
            )
            _runtimes[key] = found
        found.resolve_address = address_resolver
        return found


def remote_runtime(secret: tuple[str, str, str], resource_version: str, kubeconfig: str) -> KubernetesRuntime:
    """The runtime for another cluster whose kubeconfig is key ``secret[2]`` of Secret ``secret[1]``
    in namespace ``secret[0]``. Keyed by the Secret's resourceVersion, so a rotated kubeconfig (new
    token, new CA) is used from the next reconcile on; the client of the old version is closed.
    Raises KubeconfigError (never quoting the document) when it cannot be used."""
    with _lock:
        cached = _remote.get(secret)
        if cached is not None and cached[0] == resource_version:
            found = cached[1]
        else:
            found = KubernetesRuntime.from_kubeconfig(kubeconfig, field_manager=FIELD_MANAGER)
            _remote[secret] = (resource_version, found)
            if cached is not None:
                cached[1].close()
        found.resolve_address = address_resolver
        return found


@dataclass
class Decoded:
    body: Mapping[str, Any]
    spec: ResolvedSpec
    engine: Engine


# The operator's MiddlewareCatalogs as its watch has them (a kopf index, filled before any handler
# runs), for the cluster of the kubeconfig it was set under. Read instead of listing them from the API
# on every decode: at 500 Middlewares created at once that list was a tenth of each reconcile's time.
_catalog_index: tuple[str, Mapping[str, Iterable[Mapping[str, Any]]]] | None = None
# The merge of the last catalog set seen, by (name, resourceVersion): merging parses every document.
_merged: tuple[tuple[tuple[str, str], ...], Catalog] | None = None


def use_catalog_index(index: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Serve this cluster's catalogs from ``index`` (MiddlewareCatalog name -> its documents) from
    now on; the cluster is the one $KUBECONFIG names now (the operator's own)."""
    global _catalog_index
    with _lock:
        _catalog_index = (os.environ.get("KUBECONFIG", ""), index)


def _indexed_catalogs(rt: KubernetesRuntime) -> list[Mapping[str, Any]] | None:
    """The operator's watched MiddlewareCatalogs in name order, when ``rt`` is the operator's own
    runtime; None otherwise (the CLI, another cluster: they list)."""
    with _lock:
        indexed = _catalog_index
        if indexed is None or _runtimes.get(indexed[0]) is not rt:
            return None
    index = indexed[1]
    try:
        return [document for name in sorted(index) for document in index[name]]
    except (RuntimeError, KeyError):  # changed by the watch mid-read (another thread): list instead
        return None


def catalog_documents(rt: KubernetesRuntime) -> list[Mapping[str, Any]]:
    """Every MiddlewareCatalog of ``rt``'s cluster, in name order."""
    indexed = _indexed_catalogs(rt)
    return indexed if indexed is not None else list(rt.catalogs())


def catalog(rt: KubernetesRuntime) -> Catalog:
    """The default catalog with every MiddlewareCatalog layered on top, in name order."""
    global _merged
    documents = _indexed_catalogs(rt)
    if documents is None:
        return merge_catalogs(rt.catalogs())
    key = tuple((str(d["metadata"]["name"]), str(d["metadata"].get("resourceVersion"))) for d in documents)
    with _lock:
        merged = _merged
    if merged is not None and merged[0] == key:
        return merged[1]
    result = merge_catalogs(documents)
    with _lock:
        _merged = (key, result)
    return result


def decode(body: Mapping[str, Any], rt: KubernetesRuntime, with_catalog: Catalog | None = None) -> Decoded:
    """Validate everything before anything is applied; raises SpecError naming the field.
    ``with_catalog`` instead of ``rt``'s catalogs (a Middleware read from another cluster)."""
    middleware = load_middleware(manifest_of(body))
    spec = resolve(middleware, with_catalog if with_catalog is not None else catalog(rt))
    if spec.tls:
        # The pods would need the certificates mounted and every client of ours (Jobs, probes,
        # exporters, redis-shake) told: refused rather than run in plaintext against the spec.
        raise SpecError("spec.tls.enabled", "not yet on Kubernetes (so far on the local runtime only)")
    return Decoded(body=body, spec=spec, engine=get_engine(spec.engine))


def pods_by_name(rt: KubernetesRuntime, spec: ResolvedSpec) -> dict[str, dict[str, Any]]:
    """The deployment's pods by name (every component's), as the API has them now."""
    labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name}
    return {p["metadata"]["name"]: p for p in rt.pods(spec.namespace, labels)}
