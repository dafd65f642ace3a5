"""From a user's ``Middleware`` to a fully resolved spec: every default filled in from the catalog.

Everything downstream (renderers, runtimes, live operations) works on ``ResolvedSpec`` only, so
defaults and validation live in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from middleware.catalog import Catalog, load_default_catalog, validate_parameters
from middleware.errors import SpecError
from middleware.models.common import Resources, Storage
from middleware.models.middleware import DeletionPolicy, Middleware, RecoverySource, Topology

if TYPE_CHECKING:
    from middleware.engines.base import Engine


@dataclass(frozen=True)
class ResolvedSpec:
    name: str
    namespace: str
    engine: str
    version: str
    image: str
    topology: str
    replicas: int
    shards: int
    sentinels: int
    resources: Resources
    storage: Storage
    parameters: dict[str, str]
    extensions: tuple[str, ...]
    deletion_policy: str
    components: tuple[str, ...]
    # Parameters the catalog marks as applied live; the rest need a restart of the members.
    dynamic_parameters: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)
    generation: int | None = None
    # Continuous WAL archiving to the backup repository (spec.backup.walArchiving), and that
    # repository (the BackupRepository named by spec.backup.repository.name).
    wal_archiving: bool = False
    archive_repository: str | None = None
    wal_compression: str = "zstd"  # spec.backup.walCompression
    # spec.recovery: created from another Middleware's archive, at a point in time.
    recovery: RecoverySource | None = None
    # spec.monitoring.enabled: an exporter beside every member whose engine has one; in pods, a
    # sidecar from the catalog's exporter image (None: no sidecar).
    metrics: bool = True
    exporter_image: str | None = None
    # spec.tls.enabled: members serve TLS only, with the deployment's CA (middleware/tls.py).
    tls: bool = False

    @property
    def is_cluster(self) -> bool:
        return self.topology == Topology.CLUSTER

    def shard_indexes(self) -> range:
        return range(self.shards)


def load_middleware(document: dict[str, Any]) -> Middleware:
    """Parse a manifest; pydantic errors become one SpecError naming the first bad field."""
    try:
        return Middleware.model_validate(document)
    except ValidationError as error:
        raise spec_error_from(error) from None


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


def spec_error_from(error: ValidationError) -> SpecError:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(document)"
    message = first["msg"].removeprefix("Value error, ")
    return SpecError(location, message)


def resolve(middleware: Middleware, catalog: Catalog | None = None) -> ResolvedSpec:
    catalog = catalog or load_default_catalog()
    spec = middleware.spec
    engine = catalog.engine(spec.engine)
    version = engine.version(spec.version)
    if version is None:
        known = ", ".join(v.version for v in engine.versions)
        raise SpecError(
            "spec.version", f"unknown version {spec.version!r} of {engine.name} (catalog has: {known})"
        )
    topology = engine.topology(spec.topology)
    if topology is None:
        known = ", ".join(str(t.name) for t in engine.topologies)
        raise SpecError(
            "spec.topology", f"{spec.topology!r} is not offered for {engine.name} (offered: {known})"
        )
    plan_name = spec.plan or engine.default_plan
    plan = engine.plan(plan_name)
    if plan is None:
        known = ", ".join(p.name for p in engine.plans)
        raise SpecError("spec.plan", f"unknown plan {plan_name!r} (catalog has: {known})")

    replicas = spec.replicas if spec.replicas is not None else topology.default_replicas
    if replicas < topology.min_replicas:
        raise SpecError("spec.replicas", f"must be at least {topology.min_replicas} for {spec.topology}")
    shards = 1
    if topology.default_shards is not None:
        shards = spec.shards if spec.shards is not None else topology.default_shards
        if topology.min_shards is not None and shards < topology.min_shards:
            raise SpecError("spec.shards", f"must be at least {topology.min_shards} for {spec.topology}")
    sentinels = 0
    if topology.default_sentinels is not None:
        sentinels = spec.sentinels if spec.sentinels is not None else topology.default_sentinels

    resources = spec.resources or Resources(cpu=plan.cpu, memory=plan.memory)
    resources = resources.model_copy(
        update={
            "cpu_limit": resources.cpu_limit or resources.cpu,
            "memory_limit": resources.memory_limit or resources.memory,
        }
    )
    storage = spec.storage or Storage(size=plan.storage)
    parameters = validate_parameters(engine, str(spec.topology), spec.parameters)
    wal_archiving = bool(spec.backup and spec.backup.wal_archiving)
    if wal_archiving and str(spec.engine) not in WAL_ARCHIVING_ENGINES:
        raise SpecError(
            "spec.backup.walArchiving",
            f"{spec.engine} has no write-ahead log to archive "
            f"(offered for: {', '.join(WAL_ARCHIVING_ENGINES)})",
        )
    if spec.recovery is not None and str(spec.engine) not in WAL_ARCHIVING_ENGINES:
        raise SpecError("spec.recovery", f"{spec.engine} has no write-ahead log to recover from")
    metrics = spec.monitoring is None or spec.monitoring.enabled
    tls = bool(spec.tls and spec.tls.enabled)
    if tls and (str(spec.engine), str(spec.topology)) not in TLS_TOPOLOGIES:
        offered = ", ".join(f"{engine} {topology}" for engine, topology in TLS_TOPOLOGIES)
        raise SpecError(
            "spec.tls.enabled", f"not yet for {spec.engine} {spec.topology} (offered so far for: {offered})"
        )
    return ResolvedSpec(
        name=middleware.metadata.name,
        namespace=middleware.metadata.namespace,
        engine=str(spec.engine),
        version=version.version,
        image=spec.image or version.image,
        topology=str(spec.topology),
        replicas=replicas,
        shards=shards,
        sentinels=sentinels,
        resources=resources,
        storage=storage,
        parameters=parameters,
        extensions=tuple(spec.extensions),
        deletion_policy=str(spec.deletion_policy or DeletionPolicy.RETAIN),
        components=tuple(topology.components),
        dynamic_parameters=frozenset(p.name for p in engine.parameters if p.dynamic),
        labels=dict(middleware.metadata.labels),
        generation=middleware.metadata.generation,
        wal_archiving=wal_archiving,
        archive_repository=spec.backup.repository.name if spec.backup and wal_archiving else None,
        wal_compression=str(spec.backup.wal_compression) if spec.backup else "zstd",
        recovery=spec.recovery,
        metrics=metrics,
        exporter_image=engine.exporter_image if metrics else None,
        tls=tls,
    )


IMMUTABLE_FIELDS = ("engine", "topology")
# (engine, topology) with spec.tls so far; the local runtime only (the operator refuses it for now).
TLS_TOPOLOGIES = (("redis", "standalone"), ("redis", "sentinel"))
WAL_ARCHIVING_ENGINES = ("postgresql",)


def check_change(old: ResolvedSpec, new: ResolvedSpec, engine: Engine) -> None:
    """Changes no runtime can carry out, refused before anything is touched (SpecError naming the
    field): the immutable fields, then the engine's own rules (``Engine.check_change``). The same
    check for ``moorage up``/``set``/``scale`` and for the operator's update handler."""
    for name in IMMUTABLE_FIELDS:
        if getattr(old, name) != getattr(new, name):
            raise SpecError(
                f"spec.{name}",
                f"cannot change from {getattr(old, name)!r} to {getattr(new, name)!r} "
                "(create a new Middleware and restore a backup into it)",
            )
    if old.tls != new.tls:
        # The members' configs would change under clients of ours that already speak the other way;
        # turning TLS on in place (a rolling restart with both ports for a while) is not built yet.
        raise SpecError(
            "spec.tls.enabled",
            f"cannot change from {old.tls} to {new.tls} on an existing deployment yet "
            "(create a new Middleware and restore a backup into it)",
        )
    if old.recovery != new.recovery:
        raise SpecError(
            "spec.recovery",
            "is read at creation only (the data has been recovered): "
            "create a new Middleware to recover again",
        )
    engine.check_change(old, new)
