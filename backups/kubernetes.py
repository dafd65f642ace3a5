"""Runbook targets in Kubernetes: what a backup/restore Job sees of a Middleware.

The Middleware is read from the API and resolved with the default catalog plus every
MiddlewareCatalog (as the operator does), members are dialled at their per-pod DNS names and the
password comes from the deployment's credentials Secret. The Job's ServiceAccount may read exactly
these (deploy/rbac.yaml, ClusterRole ``moorage-backup-job``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from backups.runbook import Target
from middleware.catalog import Catalog, load_default_catalog
from middleware.catalog.catalog import parse_catalog
from middleware.engines.base import Connection, Engine, Member
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, SpecError
from middleware.kube.builders import INSTANCE_LABEL, NAME_LABEL, credentials_secret_name
from middleware.runtime.kubernetes import KubernetesRuntime, pod_ready
from middleware.spec import ResolvedSpec, load_middleware, resolve

API_VERSION = "moorage.io/v1alpha1"
PASSWORD_KEY = "password"


def merged_catalog(rt: KubernetesRuntime) -> Catalog:
    """The default catalog with every MiddlewareCatalog layered on top, in name order."""
    merged = load_default_catalog()
    for document in sorted(rt.catalogs(), key=lambda d: d["metadata"]["name"]):
        name = document["metadata"]["name"]
        try:
            merged = merged.with_overrides(parse_catalog(document.get("spec") or {}))
        except SpecError as exc:
            raise SpecError(f"MiddlewareCatalog {name} {exc.field}", exc.reason) from None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise SpecError(f"MiddlewareCatalog {name}", str(exc).splitlines()[0]) from None
    return merged


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
        """Every planned member at ``<pod>.<headless>.<ns>.svc.<domain>`` on the port its
        StatefulSet's main container declares first; up means the pod is Ready."""
        labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name}
        pods = {p["metadata"]["name"]: p for p in self.runtime.pods(spec.namespace, labels)}
        manifests = engine.render(spec, cluster_domain=self.cluster_domain)
        workloads = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "StatefulSet"}
        members = []
        for plan in engine.members(spec):
            workload = workloads[plan.workload]["spec"]
            port = int(workload["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])
            host = f"{plan.name}.{workload['serviceName']}.{spec.namespace}.svc.{self.cluster_domain}"
            pod = pods.get(plan.name)
            endpoint = self.runtime.member_endpoint(plan.name, host, port)
            members.append(Member(plan=plan, endpoint=endpoint, up=pod is not None and pod_ready(pod)))
        return Connection(members=members, password=password)

    @contextmanager
    def scratch(self, manifest: dict[str, Any]) -> Iterator[Target]:
        # A scratch Middleware in the cluster needs the operator to provision it, wait for Ready
        # and purge it afterwards; from inside a Job that is not wired yet.
        raise MoorageError(
            "backup verify --deep needs a scratch deployment, which only the local runtime can start "
            "for now; run it with --runtime local, or verify checksums only (without --deep)"
        )
        yield  # pragma: no cover  (makes this a generator for @contextmanager)
