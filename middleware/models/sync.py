"""The ``RedisSync`` resource: cross-cluster Redis replication with supervised redis-shake workloads."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from middleware.models.common import (
    CustomResource,
    NamespacedReference,
    ObjectMeta,
    Resources,
    ResourceStatus,
    SecretKeyReference,
    WireModel,
)


class RedisEndpointKind(StrEnum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


KUBECONFIG_NEEDS_MIDDLEWARE = "kubeconfig is only valid with middleware (addresses are dialled as given)"


class RedisSyncSide(WireModel):
    middleware: NamespacedReference | None = Field(default=None, description="A Moorage Middleware.")
    addresses: list[str] | None = Field(default=None, description="host:port list, when not a Middleware.")
    kind: RedisEndpointKind | None = Field(default=None, description="Required with addresses.")
    sentinel_master_name: str | None = None
    password: SecretKeyReference | None = None
    kubeconfig: SecretKeyReference | None = Field(
        default=None,
        description=(
            "Secret key (in the RedisSync's namespace) holding a kubeconfig of another cluster where this "
            "side's middleware lives: its Middleware, pods and credentials Secret are read there and its "
            "members dialled at their pod IPs (routable pod networks needed). Embedded credentials only: "
            "token or client-certificate-data + client-key-data; exec, auth-provider, file paths refused."
        ),
    )

    @model_validator(mode="after")
    def _one_of(self) -> RedisSyncSide:
        if (self.middleware is None) == (self.addresses is None):
            raise ValueError("exactly one of middleware or addresses must be set")
        if self.addresses is not None and self.kind is None:
            raise ValueError("kind is required with addresses")
        if self.kubeconfig is not None and self.middleware is None:
            raise ValueError(KUBECONFIG_NEEDS_MIDDLEWARE)
        return self


class SyncFilter(WireModel):
    allow_key_prefixes: list[str] = Field(default_factory=list)
    block_key_prefixes: list[str] = Field(default_factory=list)
    allow_dbs: list[int] = Field(default_factory=list)


class SyncDirection(StrEnum):
    FORWARD = "Forward"
    REVERSE = "Reverse"
    STOPPED = "Stopped"


class ShakeVersion(StrEnum):
    V4 = "v4"
    V3 = "v3"


V3_TAKES_NO_FILTER = "redis-shake v3 takes filters as Lua scripts, not config keys: use v4 for key/db filters"


class RedisSyncSpec(WireModel):
    source: RedisSyncSide
    target: RedisSyncSide
    filter: SyncFilter | None = None
    direction: SyncDirection = Field(
        default=SyncDirection.FORWARD, description="Reverse replicates target into source (recovery)."
    )
    image: str | None = None
    shake_version: ShakeVersion = Field(
        default=ShakeVersion.V4,
        description="The config format of the image's redis-shake: v4, or v3 (no filters, no status port: "
        "supervised from the source's side only).",
    )
    resources: Resources | None = None

    @model_validator(mode="after")
    def _v3_has_no_filter(self) -> RedisSyncSpec:
        if self.shake_version == ShakeVersion.V3 and self.filter is not None:
            raise ValueError(V3_TAKES_NO_FILTER)
        return self


class SyncWorkloadStatus(WireModel):
    name: str
    source: str
    state: str
    lag_bytes: int | None = Field(
        default=None, description="Bytes the source master is ahead of what redis-shake received."
    )
    lag_seconds: float | None = Field(
        default=None,
        description="How far behind the target is, in seconds: from the heartbeat key the operator "
        "writes on the source shard and reads back on the target (lagSecondsFrom: heartbeat), else "
        "lagBytes divided by the source's recent write rate (lagSecondsFrom: rate).",
    )
    lag_seconds_from: str | None = Field(default=None, description="heartbeat or rate.")
    write_lag_bytes: int | None = Field(
        default=None, description="Bytes the source master is ahead of what redis-shake has written."
    )
    restarts: int = 0
    last_restart_reason: str | None = None


class RedisSyncStatus(ResourceStatus):
    workloads: list[SyncWorkloadStatus] = Field(default_factory=list)
    consistent: bool | None = None
    last_verified_at: str | None = None


class RedisSync(CustomResource):
    KIND: ClassVar[str] = "RedisSync"
    PLURAL: ClassVar[str] = "redissyncs"
    SHORT_NAMES: ClassVar[list[str]] = ["rsync"]
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Direction", "string", ".spec.direction", "Forward, Reverse or Stopped"),
        ("Phase", "string", ".status.phase", "Lifecycle phase"),
        ("Consistent", "boolean", ".status.consistent", "Last verify result"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["RedisSync"] = "RedisSync"
    metadata: ObjectMeta
    spec: RedisSyncSpec
    status: RedisSyncStatus | None = None
