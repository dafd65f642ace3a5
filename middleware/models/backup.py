"""``BackupRepository``, ``MiddlewareBackup`` and ``MiddlewareRestore`` resources.

The data paths behind them live in the ``backups`` package; these are only the API shapes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from middleware.models.common import (
    CustomResource,
    LocalObjectReference,
    ObjectMeta,
    ResourceStatus,
    WireModel,
)


class ServerSideEncryption(WireModel):
    algorithm: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = Field(default=None, description="Only with aws:kms.")


class CredentialsSecret(WireModel):
    name: str = Field(description="Secret in the repository's namespace.")
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


class BackupRepositorySpec(WireModel):
    endpoint: str | None = Field(default=None, description="S3 endpoint URL; AWS when unset.")
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    region: str = "us-east-1"
    force_path_style: bool = True
    credentials: CredentialsSecret | None = None
    server_side_encryption: ServerSideEncryption | None = None


class BackupRepository(CustomResource):
    KIND: ClassVar[str] = "BackupRepository"
    PLURAL: ClassVar[str] = "backuprepositories"
    SHORT_NAMES: ClassVar[list[str]] = ["mwrepo"]
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Bucket", "string", ".spec.bucket", "S3 bucket"),
        ("Phase", "string", ".status.phase", "Reachable or not"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["BackupRepository"] = "BackupRepository"
    metadata: ObjectMeta
    spec: BackupRepositorySpec
    status: ResourceStatus | None = None


class BackupMethod(StrEnum):
    LOGICAL = "Logical"
    BASE = "Base"


class MiddlewareBackupSpec(WireModel):
    middleware: LocalObjectReference
    repository: LocalObjectReference
    method: BackupMethod = Field(
        default=BackupMethod.LOGICAL,
        description=(
            "Logical: a streamed dump of every engine (restorable into another shape). Base: PostgreSQL "
            "with spec.backup.walArchiving only, a physical base backup taken in the primary's pod, "
            "where point-in-time recovery starts."
        ),
    )


class MiddlewareBackupStatus(ResourceStatus):
    backup_id: str | None = None
    location: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None


class MiddlewareBackup(CustomResource):
    KIND: ClassVar[str] = "MiddlewareBackup"
    PLURAL: ClassVar[str] = "middlewarebackups"
    SHORT_NAMES: ClassVar[list[str]] = ["mwbak"]
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Middleware", "string", ".spec.middleware.name", "Source"),
        ("Phase", "string", ".status.phase", "Lifecycle phase"),
        ("Size", "integer", ".status.sizeBytes", "Bytes stored"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["MiddlewareBackup"] = "MiddlewareBackup"
    metadata: ObjectMeta
    spec: MiddlewareBackupSpec
    status: MiddlewareBackupStatus | None = None


class RestoreAction(StrEnum):
    PLAN = "Plan"
    APPLY = "Apply"
    ROLLBACK = "Rollback"
    DISCARD = "Discard"


class SafetyCopy(StrEnum):
    """How an Apply keeps what it overwrites (backups.runbook.SafetyCopy on the wire)."""

    AUTO = "Auto"
    ASIDE = "Aside"
    SNAPSHOT = "Snapshot"


class MiddlewareRestoreSpec(WireModel):
    repository: LocalObjectReference
    backup_id: str = Field(min_length=1)
    target: LocalObjectReference = Field(description="Middleware to restore into.")
    action: RestoreAction = Field(
        default=RestoreAction.APPLY,
        description="Plan: only report what would change. Apply: safety copy, restore, verify. "
        "Rollback: return the target to its state before the newest Apply of this backup into it. "
        "Discard: delete the data that Apply set aside in the target (no rollback after it).",
    )
    safety_copy: SafetyCopy = Field(
        default=SafetyCopy.AUTO,
        description="Apply: how the data overwritten is kept for a rollback. Aside: renamed inside "
        "the target (PostgreSQL; no time whatever the size, its space until a Discard). Snapshot: "
        "a full dump to the repository first. Auto: Aside where the engine can, else Snapshot.",
    )


class MiddlewareRestoreStatus(ResourceStatus):
    restore_id: str | None = None
    safety_snapshot: str | None = Field(
        default=None,
        description="Backup id of the pre-restore snapshot (with the data set aside: of the roles only).",
    )
    safety_copy: str | None = Field(
        default=None, description="aside or snapshot: how the Apply kept the data."
    )
    aside_discarded: bool = Field(default=False, description="The data set aside was deleted (Discard).")
    plan: dict[str, int] | None = Field(default=None, description="What is overwritten, with counts.")
    rolled_back: bool = False
    started_at: str | None = None
    finished_at: str | None = None


class MiddlewareRestore(CustomResource):
    KIND: ClassVar[str] = "MiddlewareRestore"
    PLURAL: ClassVar[str] = "middlewarerestores"
    SHORT_NAMES: ClassVar[list[str]] = ["mwrestore"]
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Target", "string", ".spec.target.name", "Target Middleware"),
        ("Backup", "string", ".spec.backupId", "Backup restored"),
        ("Action", "string", ".spec.action", "Plan, Apply or Rollback"),
        ("Phase", "string", ".status.phase", "Lifecycle phase"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["MiddlewareRestore"] = "MiddlewareRestore"
    metadata: ObjectMeta
    spec: MiddlewareRestoreSpec
    status: MiddlewareRestoreStatus | None = None
