"""The ``Middleware`` resource: one deployment of one engine in one topology."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from middleware.models.common import (
    CustomResource,
    LocalObjectReference,
    ObjectMeta,
    Resources,
    ResourceStatus,
    Storage,
    WireModel,
)


class EngineName(StrEnum):
    REDIS = "redis"
    POSTGRESQL = "postgresql"
    MONGODB = "mongodb"
    ZOOKEEPER = "zookeeper"


class Topology(StrEnum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"
    REPLICATION = "replication"
    REPLICASET = "replicaset"
    ENSEMBLE = "ensemble"


# Which topologies suit which engine. The CRD carries the same rule as CEL (see crdgen), so the
# apiserver rejects a mismatch before the operator ever sees it.
ENGINE_TOPOLOGIES: dict[EngineName, tuple[Topology, ...]] = {
    EngineName.REDIS: (Topology.STANDALONE, Topology.SENTINEL, Topology.CLUSTER),
    EngineName.POSTGRESQL: (Topology.STANDALONE, Topology.REPLICATION),
    EngineName.MONGODB: (Topology.REPLICASET,),
    EngineName.ZOOKEEPER: (Topology.ENSEMBLE,),
}


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class Phase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    UPDATING = "Updating"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    DELETING = "Deleting"


class WalCompression(StrEnum):
    """How each archived WAL segment is compressed (barman's own: the restore reads any of them)."""

    ZSTD = "zstd"
    LZ4 = "lz4"
    GZIP = "gzip"
    NONE = "none"


class BackupPolicy(WireModel):
    repository: LocalObjectReference = Field(description="BackupRepository to write to.")
    schedule: str = Field(description="Cron expression (5 fields), e.g. '0 3 * * *'.")
    keep_last: int | None = Field(default=7, ge=1, description="Keep at least this many backups.")
    keep_days: int | None = Field(default=None, ge=1, description="Also keep backups younger than this.")
    suspend: bool = False
    wal_archiving: bool = Field(
        default=False,
        description=(
            "PostgreSQL only: archive every WAL segment to the repository as it fills (and at least "
            "once a minute), the base of point-in-time recovery. Fixed at creation for now."
        ),
    )
    wal_compression: WalCompression = Field(
        default=WalCompression.ZSTD,
        description=(
            "With walArchiving: compression of each archived segment (barman's, level low). zstd "
            "(the default) halves even random hex text for ~20 ms of CPU a segment: half the bytes "
            "stored and sent to the repository. Segments already archived stay as they are; a "
            "change applies to the next ones."
        ),
    )

    drill_schedule: str | None = Field(
        default=None,
        description=(
            "With walArchiving: cron expression (5 fields) of a recovery drill (a random moment of "
            "the window restored into a scratch Middleware and checked, `moorage backup drill`)."
        ),
    )

    @model_validator(mode="after")
    def _cron(self) -> BackupPolicy:
        if len(self.schedule.split()) != 5:
            raise ValueError(f"schedule {self.schedule!r} must be a 5-field cron expression")
        if self.drill_schedule is not None:
            if len(self.drill_schedule.split()) != 5:
                raise ValueError(f"drillSchedule {self.drill_schedule!r} must be a 5-field cron expression")
            if not self.wal_archiving:
                raise ValueError(
                    "drillSchedule needs walArchiving: a drill restores a moment of the WAL archive"
                )
        return self


class Monitoring(WireModel):
    enabled: bool = Field(
        default=True,
        description=(
            "A Prometheus exporter beside every member that has one (Redis, PostgreSQL), serving "
            "/metrics on the pods' 'metrics' port and the NAME-metrics Service (docs/monitoring.md)."
        ),
    )


class Tls(WireModel):
    enabled: bool = Field(
        default=False,
        description=(
            "Members accept only TLS connections (the plaintext port closed) with certificates of a "
            "CA Moorage issues for the deployment, renewed before expiry; replication between "
            "members is encrypted too. So far Redis standalone and sentinel on the local runtime "
            "(docs/security.md)."
        ),
    )


class RecoverySource(WireModel):
    """Create a PostgreSQL Middleware from another one's WAL archive, as it was at a moment."""

    source: str = Field(
        min_length=1, description="The archiving Middleware (same namespace) to recover from."
    )
    repository: LocalObjectReference = Field(description="The BackupRepository holding its archive.")
    backup_id: str | None = Field(
        default=None, description="The base backup to start from; unset: the newest one before the target."
    )
    target_time: str | None = Field(
        default=None, description="A moment with its zone, e.g. 2026-12-05T10:00:00Z."
    )
    target_lsn: str | None = Field(default=None, description="A WAL position, e.g. 0/3000090.")
    target_restore_point: str | None = Field(default=None, description="A pg_create_restore_point name.")

    @model_validator(mode="after")
    def _one_target(self) -> RecoverySource:
        given = [t for t in (self.target_time, self.target_lsn, self.target_restore_point) if t is not None]
        if len(given) > 1:
            raise ValueError(
                "give at most one of targetTime, targetLsn, targetRestorePoint (none: the latest)"
            )
        return self


ParameterValue = str | int | float | bool


class MiddlewareSpec(WireModel):
    engine: EngineName
    version: str | None = Field(default=None, description="Engine version; the catalog default if unset.")
    topology: Topology
    plan: str | None = Field(default=None, description="Catalog plan (small, medium, large).")
    shards: int | None = Field(
        default=None, ge=1, le=64, description="Redis cluster only: number of shards (masters)."
    )
    replicas: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description=(
            "Data members per shard, the primary included (standalone: 1; sentinel: 1 master + "
            "replicas-1 replicas; cluster: per shard). Maps to StatefulSet replicas."
        ),
    )
    sentinels: int | None = Field(default=None, ge=3, le=7, description="Sentinel topology only.")
    resources: Resources | None = Field(default=None, description="Overrides the plan's resources.")
    storage: Storage | None = Field(default=None, description="Overrides the plan's storage.")
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict, description="Engine parameters, checked against the catalog definition."
    )
    extensions: list[str] = Field(default_factory=list, description="e.g. ['vector'] for PostgreSQL.")
    backup: BackupPolicy | None = None
    monitoring: Monitoring | None = Field(default=None, description="Exporters on by default.")
    tls: Tls | None = Field(default=None, description="Encrypted connections to and between members.")
    recovery: RecoverySource | None = Field(
        default=None,
        description=(
            "PostgreSQL only, at creation: the data comes from another Middleware's WAL archive, "
            "recovered to targetTime/targetLsn/targetRestorePoint (or its end), with its credentials."
        ),
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="Retain keeps PVCs and the credentials Secret when the Middleware is deleted.",
    )
    image: str | None = Field(default=None, description="Overrides the catalog image for this version.")

    @model_validator(mode="after")
    def _topology_suits_engine(self) -> MiddlewareSpec:
        allowed = ENGINE_TOPOLOGIES[EngineName(self.engine)]
        if Topology(self.topology) not in allowed:
            names = ", ".join(t.value for t in allowed)
            raise ValueError(
                f"topology {self.topology!r} does not suit engine {self.engine!r} (allowed: {names})"
            )
        if self.shards is not None and self.topology != Topology.CLUSTER:
            raise ValueError("shards is only valid for topology 'cluster'")
        if self.sentinels is not None and self.topology != Topology.SENTINEL:
            raise ValueError("sentinels is only valid for topology 'sentinel'")
        if self.topology == Topology.STANDALONE and self.replicas not in (None, 1):
            raise ValueError("replicas must be 1 for topology 'standalone'")
        return self


class MemberStatus(WireModel):
    name: str
    address: str = Field(description="host:port where the member answers.")
    role: str = Field(
        description="master, replica, stale-master (claims master while the sentinels name another), "
        "sentinel, primary, leader, follower, unknown."
    )
    healthy: bool
    shard: int | None = None
    metrics: str | None = Field(
        default=None, description="host:port of the member's Prometheus exporter (GET /metrics)."
    )


class OperationStatus(WireModel):
    """The outcome of the last day-2 operation asked through the operation.moorage.io/request annotation."""

    id: str = Field(description="The request's id, as written in the annotation (empty if unreadable).")
    action: str = Field(description="switchover or failover.")
    target: str | None = Field(default=None, description="The member asked for, if any.")
    result: str = Field(description="Running, Succeeded or Failed.")
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    observed_at: str | None = Field(
        default=None,
        description="When the observation written with this outcome began (compare status.observedAt).",
    )


class MiddlewareStatus(ResourceStatus):
    members: list[MemberStatus] = Field(default_factory=list)
    endpoints: dict[str, str] = Field(
        default_factory=dict, description="Named client endpoints, e.g. master, sentinel, cluster."
    )
    version: str | None = None
    credentials_secret: str | None = None
    last_operation: OperationStatus | None = None
    last_verified_recovery_point: str | None = Field(
        default=None,
        description="spec.backup.walArchiving: the newest moment a passed recovery drill restored "
        "(`moorage backup drill`), read from the repository.",
    )
    recovery_base_backup: str | None = Field(
        default=None,
        description="spec.recovery: the base backup chosen at creation (the members recover from it).",
    )
    observed_at: str | None = Field(
        default=None,
        description=(
            "When the observation behind members, endpoints and phase began. The operator's timer "
            "runs beside its handlers, so an older observation may land after a newer one: a reader "
            "waiting for an operation's outcome waits for observedAt >= lastOperation.observedAt."
        ),
    )


class Middleware(CustomResource):
    KIND: ClassVar[str] = "Middleware"
    PLURAL: ClassVar[str] = "middlewares"
    SHORT_NAMES: ClassVar[list[str]] = ["mw"]
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Engine", "string", ".spec.engine", "Engine"),
        ("Version", "string", ".status.version", "Engine version (the catalog default when unset)"),
        ("Topology", "string", ".spec.topology", "Topology"),
        ("Phase", "string", ".status.phase", "Lifecycle phase"),
        ("Reason", "string", ".status.phaseReason", "Why the phase"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["Middleware"] = "Middleware"
    metadata: ObjectMeta
    spec: MiddlewareSpec
    status: MiddlewareStatus | None = None

    @classmethod
    def from_manifest(cls, doc: dict[str, Any]) -> Middleware:
        return cls.model_validate(doc)
