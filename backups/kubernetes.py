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
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backups import pitr, pitr_drill, pitr_pods
from backups.jobs import CATALOGS_ENV
from backups.repository import Repository
from backups.runbook import Target
from backups.store import RepositoryConfig, S3Store
from middleware.catalog import Catalog, merge_catalogs
from middleware.engines.base import Connection, Engine, Progress, no_progress
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, SpecError
from middleware.kube.builders import INSTANCE_LABEL, NAME_LABEL, credentials_secret_name
from middleware.models.backup import BackupRepositorySpec
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec, load_middleware, resolve

if TYPE_CHECKING:
    import psycopg

API_VERSION = "moorage.io/v1alpha1"
PASSWORD_KEY = "password"
# Marks a Middleware made by `backup verify --deep`: `kubectl get mw -l moorage.io/scratch` finds
# one left behind by a CLI that was killed before it could delete it.
SCRATCH_LABEL = "moorage.io/scratch"
SCRATCH_READY_TIMEOUT_SECONDS = 900.0
SCRATCH_POLL_SECONDS = 2.0


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


def open_repository(rt: KubernetesRuntime, namespace: str, name: str) -> Repository:
    """The BackupRepository ``name`` with the keys of its credentials Secret (read by the operator,
    which never passes them on: Jobs get them as secretKeyRef)."""
    found = rt.get(API_VERSION, "BackupRepository", namespace, name)
    if found is None:
        raise MoorageError(f"BackupRepository {namespace}/{name} not found")
    spec = BackupRepositorySpec.model_validate(found.get("spec") or {})
    credentials: dict[str, str] = {}
    if spec.credentials is not None:
        ref = spec.credentials
        for key in (ref.access_key_id_key, ref.secret_access_key_key):
            value = rt.secret_value(namespace, ref.name, key)
            if value is not None:
                credentials[key] = value
    return Repository(S3Store(RepositoryConfig.from_spec(spec, credentials)))


class KubernetesTargets:
    def __init__(
        self,
        runtime: KubernetesRuntime,
        *,
        cluster_domain: str = "cluster.local",
        scratch_namespace: str | None = None,
        scratch_timeout: float = SCRATCH_READY_TIMEOUT_SECONDS,
        progress: Progress = no_progress,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runtime = runtime
        self.cluster_domain = cluster_domain
        self.scratch_namespace = scratch_namespace
        self.scratch_timeout = scratch_timeout
        self.progress = progress
        self.clock = clock
        self.sleep = sleep

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
    def scratch(self, manifest: dict[str, Any], purpose: str = "verify") -> Iterator[Target]:
        """A scratch Middleware created through the API, provisioned by the operator like any other
        (so a deep verify also proves the operator can bring this backup's shape up), waited for
        until Ready, and deleted on exit with its PVCs and Secret (``deletionPolicy: Delete``,
        which the scratch manifest always carries). Placed in ``scratch_namespace``, else in the
        backup's own namespace, where a DBA's rights already are."""
        meta = manifest["metadata"]
        namespace = self.scratch_namespace or meta["namespace"]
        name = meta["name"]
        body = {
            **manifest,
            "metadata": {
                **meta,
                "namespace": namespace,
                "labels": {**meta.get("labels", {}), SCRATCH_LABEL: purpose},
            },
        }
        if body["spec"].get("deletionPolicy") != "Delete":
            raise MoorageError("a scratch Middleware must have deletionPolicy Delete (its data goes with it)")
        if self.runtime.create(body) is None:
            raise MoorageError(
                f"Middleware {namespace}/{name} already exists: not a scratch deployment of ours"
            )
        try:
            self._wait_ready(namespace, name)
            yield self.get(namespace, name)
        finally:
            self.runtime.delete(API_VERSION, "Middleware", namespace, name)

    def _wait_ready(self, namespace: str, name: str) -> None:
        """Until the operator reports the scratch Middleware Ready for its generation. Failed (an
        invalid spec: nothing will change) stops at once; otherwise ``scratch_timeout`` seconds."""
        deadline = self.clock() + self.scratch_timeout
        while True:
            body = self.runtime.get(API_VERSION, "Middleware", namespace, name)
            if body is None:
                raise MoorageError(f"scratch Middleware {namespace}/{name} disappeared before it was Ready")
            status = body.get("status") or {}
            phase, reason = status.get("phase"), status.get("phaseReason")
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            current = status.get("observedGeneration") == body["metadata"].get("generation")
            if current and phase == "Ready":
                return
            self.progress(f"scratch {name}: {phase or 'Pending'}", 0, 1)
            if current and phase == "Failed":
                raise MoorageError(
                    f"scratch Middleware {namespace}/{name} failed: {reason}: {ready.get('message', '')}"
                )
            if self.clock() > deadline:
                raise MoorageError(
                    f"scratch Middleware {namespace}/{name} not Ready after {self.scratch_timeout:.0f}s "
                    f"(phase {phase or 'none'}, {reason or 'no reason yet'}: {ready.get('message', '')}); "
                    "is the operator running, and is there room for its pods?"
                )
            self.sleep(SCRATCH_POLL_SECONDS)


def take_base_backup(
    rt: KubernetesRuntime,
    repository: Repository,
    namespace: str,
    name: str,
    *,
    name_as: str | None = None,
    keep: tuple[int, int | None] | None = None,
    cluster_domain: str = "cluster.local",
    timeout: float = 6 * 3600,
) -> tuple[pitr.BaseBackup, list[str]]:
    """A physical base backup of an archiving PostgreSQL Middleware, taken inside its primary's pod
    (barman reads the data directory, which only that pod has): the primary as the engine reports
    it, the archive checked against its system identifier, then barman-cloud-backup over pods/exec.
    ``name_as``: the backup's name; ``keep`` (keepLast, keepDays): the retention applied after it,
    in the same pod. Returns the backup and the ids retention deleted."""
    target = KubernetesTargets(rt, cluster_domain=cluster_domain).get(namespace, name)
    if not target.spec.wal_archiving:
        raise SpecError(
            "spec.backup.walArchiving",
            f"is off for {namespace}/{name}: a base backup without archived WAL recovers to itself only",
        )
    primary = _primary(target)
    endpoint = target.conn.endpoint(primary)
    system_id = pitr.server_system_id(endpoint.host, endpoint.port, target.conn.password or "")
    archive = pitr.WalArchive(repository.config, namespace, name)

    def run_in_primary(command: list[str]) -> tuple[int, str]:
        return rt.exec_in_pod(namespace, primary, pitr_pods.POSTGRES_CONTAINER, command, timeout)

    taken = pitr_pods.take_base_backup_in_pod(
        repository.store, archive, system_id, run_in_primary, name=name_as
    )
    if keep is None:
        return taken, []
    keep_last, keep_days = keep
    pruned = pitr_pods.prune_base_backups_in_pod(
        repository.store, archive, run_in_primary, keep_last=keep_last, keep_days=keep_days
    )
    return taken, pruned


def _primary(target: Target) -> str:
    """The member (pod) the engine reports as the one writable primary."""
    primaries = [m for m in target.engine.observe(target.spec, target.conn).members if m.role == "primary"]
    if len(primaries) != 1:
        raise MoorageError(
            f"{target.namespace}/{target.name} has no single writable primary (found {len(primaries)})"
        )
    return primaries[0].name


def _primary_connection(target: Target) -> psycopg.Connection[Any]:
    """The superuser on the primary the engine reports, through its pod's DNS name."""
    import psycopg  # with its first use: the operator imports this module whatever the engines it runs

    endpoint = target.conn.endpoint(_primary(target))
    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user="postgres",
        password=target.conn.password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    )


@dataclass
class KubernetesDrillSource:
    """``backups.pitr_drill.DrillSource`` for a Middleware in a cluster."""

    target: Target

    def connect(self) -> psycopg.Connection[Any]:
        return _primary_connection(self.target)

    def timeline(self) -> int | None:
        return None  # spec.recovery follows the archive's latest timeline


@dataclass
class KubernetesRecovered:
    target: Target
    recovery_seconds: float

    def connect(self) -> psycopg.Connection[Any]:
        return _primary_connection(self.target)


def drill_scratch(
    targets: KubernetesTargets, source: Target
) -> Callable[[pitr_drill.DrillRecovery], AbstractContextManager[KubernetesRecovered]]:
    """Scratch Middlewares for drills of ``source``: its spec as one standalone member without the
    backup policy, recovered
    by its own pods from the source's archive (``spec.recovery``, the moment and the base backup of
    the drill), in the source's namespace, deleted with its data afterwards. The time measured runs
    from the creation until the operator reports it Ready (the pods start, restore and replay)."""
    repository = source.spec.archive_repository
    if repository is None:
        raise SpecError(
            "spec.backup.walArchiving", f"is off for {source.namespace}/{source.name}: no archive to drill"
        )

    @contextmanager
    def scratch(recovery: pitr_drill.DrillRecovery) -> Iterator[KubernetesRecovered]:
        assert recovery.target.time is not None
        spec = pitr_drill.scratch_spec(dict(source.manifest.get("spec") or {}))
        spec.update(
            recovery={
                "source": source.name,
                "repository": {"name": repository},
                "backupId": recovery.base_backup,
                "targetTime": recovery.target.time.isoformat(),
            },
        )
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "Middleware",
            "metadata": {
                "name": f"drill-{secrets.token_hex(3)}",
                "namespace": source.namespace,
                "labels": {"moorage.io/drill": recovery.drill_id},
            },
            "spec": spec,
        }
        clock = time.monotonic()
        with targets.scratch(manifest, purpose="drill") as target:
            yield KubernetesRecovered(target, time.monotonic() - clock)

    return scratch


@dataclass
class KubernetesDrills:
    """``runbook.Drills`` in a cluster: the source's primary through its pod DNS name, a scratch
    Middleware with ``spec.recovery`` as the recovered copy (what ``moorage backup drill NAME
    --runtime kubernetes`` runs, by hand or in the operator's drill Job)."""

    targets: KubernetesTargets
    progress: Progress = no_progress

    def last_started(self, repository: Repository, namespace: str, name: str) -> datetime | None:
        return pitr_drill.last_drill_started(repository, namespace, name)

    def run(self, repository: Repository, namespace: str, name: str) -> dict[str, Any]:
        target = self.targets.get(namespace, name)
        scratch = drill_scratch(self.targets, target)
        return pitr_drill.run_drill(
            repository, namespace, name, KubernetesDrillSource(target), scratch, progress=self.progress
        )
