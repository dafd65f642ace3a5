"""Runbook targets in Kubernetes: what a backup/restore Job sees of a Middleware.

The Middleware is read from the API and resolved with the default catalog plus every
MiddlewareCatalog (as the operator does: in a Job, the ones the operator passed in the
``MOORAGE_CATALOGS`` env, since a namespaced ServiceAccount cannot list cluster-scoped catalogs),
members are dialled at their per-pod DNS names and the password comes from the deployment's
credentials Secret. The Job's ServiceAccount may read exactly these (deploy/rbac.yaml, ClusterRole
``moorage-backup-job``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from backups.jobs import CATALOGS_ENV
from backups.runbook import Target
from middleware.catalog import Catalog, merge_catalogs
from middleware.engines.base import Connection, Engine
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError
from middleware.kube.builders import INSTANCE_LABEL, NAME_LABEL, credentials_secret_name
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec, load_middleware, resolve

API_VERSION = "moorage.io/v1alpha1"
PASSWORD_KEY = "password"


def catalogs_from_env(raw: str) -> list[dict[str, Any]]:
    """The MiddlewareCatalog documents of ``CATALOGS_ENV`` (``backups.jobs.catalogs_value``)."""
    try:
        documents = json.loads(raw)
    except ValueError as exc:
        raise MoorageError(f"{CATALOGS_ENV} is not JSON: {exc}") from None
    if not isinstance(documents, list) or not all(
        isinstance(d, dict) and isinstance((d.get("metadata") or {}).get("name"), str) for d in documents
    ):
        raise MoorageError(f"{CATALOGS_ENV} must be a JSON list of MiddlewareCatalogs with metadata.name")
    return documents


def merged_catalog(rt: KubernetesRuntime, environ: Mapping[str, str] | None = None) -> Catalog:
    """The default catalog with every MiddlewareCatalog layered on top (as the operator resolves):
    those of ``CATALOGS_ENV`` when set (a Job), else listed from the API."""
    raw = (os.environ if environ is None else environ).get(CATALOGS_ENV)
    return merge_catalogs(catalogs_from_env(raw) if raw is not None else rt.catalogs())


def applied_manifest(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Middleware as the user wrote it (status and server-managed metadata dropped): what a
    backup keeps as its source spec."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": "Middleware",
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
        "spec": dict(body.get("spec") or {}),
    }


class KubernetesTargets:
    def __init__(self, runtime: KubernetesRuntime, *, cluster_domain: str = "cluster.local") -> None:
        self.runtime = runtime
        self.cluster_domain = cluster_domain

    def get(self, namespace: str, name: str) -> Target:
        body = self.runtime.get(API_VERSION, "Middleware", namespace, name)
        if body is None:
            raise MoorageError(f"Middleware {namespace}/{name} not found")
        manifest = applied_manifest(body)
        spec = resolve(load_middleware(manifest), merged_catalog(self.runtime))
        engine = get_engine(spec.engine)
        secret = credentials_secret_name(spec)
        password = self.runtime.secret_value(namespace, secret, PASSWORD_KEY)
        if password is None:
            raise MoorageError(
                f"Middleware {namespace}/{name}: Secret {secret} has no {PASSWORD_KEY!r} key "
                "(the operator creates it on the first reconcile)"
            )
        return Target(
            namespace=namespace,
            name=name,
            spec=spec,
            engine=engine,
            conn=self._connection(spec, engine, password),
            manifest=manifest,
        )

    def _connection(self, spec: ResolvedSpec, engine: Engine, password: str) -> Connection:
        labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name}
        pods = {p["metadata"]["name"]: p for p in self.runtime.pods(spec.namespace, labels)}
        manifests = engine.render(spec, cluster_domain=self.cluster_domain)
        return self.runtime.connection(spec, engine, manifests, pods, password, self.cluster_domain)

    @contextmanager
    def scratch(self, manifest: dict[str, Any]) -> Iterator[Target]:
        # A scratch Middleware in the cluster needs the operator to provision it, wait for Ready
        # and purge it afterwards; from inside a Job that is not wired yet.
        raise MoorageError(
            "backup verify --deep needs a scratch deployment, which only the local runtime can start "
            "for now; run it with --runtime local, or verify checksums only (without --deep)"
        )
        yield  # pragma: no cover  (makes this a generator for @contextmanager)
