"""The backup manifest: ``manifest.json`` in each backup folder, written after every object.

It is the only thing that makes a folder a backup: listing reads manifests, restore reads the
objects it names and checks each one's size and sha256 against it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from backups.errors import BackupError
from middleware.engines.base import DumpOrigin
from middleware.models.common import WireModel

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ObjectEntry(WireModel):
    name: str = Field(description="File name inside the backup folder.")
    key: str = Field(description="Full S3 key.")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    meta: dict[str, Any] = Field(default_factory=dict, description="Engine metadata the loader needs.")


class BackupManifest(WireModel):
    schema_version: int = SCHEMA_VERSION
    backup_id: str
    kind: Literal["backup", "safety-snapshot"] = "backup"
    namespace: str
    middleware: str
    engine: str
    version: str
    topology: str
    shards: int = Field(ge=0)
    objects: list[ObjectEntry]
    inventory: dict[str, int] = Field(default_factory=dict, description="Counts at dump time.")
    started_at: datetime
    finished_at: datetime
    duration_seconds: float = Field(ge=0)
    source_spec: dict[str, Any]
    tool_versions: dict[str, str] = Field(default_factory=dict)
    restore_id: str | None = Field(default=None, description="Safety snapshots: the restore that took it.")
    location: str = Field(description="s3://bucket/prefix/namespace/middleware/backup-id/")

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema version {value} is newer than this Moorage reads ({SCHEMA_VERSION}); "
                "upgrade Moorage to read this backup"
            )
        return value

    @field_validator("objects")
    @classmethod
    def _unique_names(cls, value: list[ObjectEntry]) -> list[ObjectEntry]:
        seen: set[str] = set()
        for entry in value:
            if entry.name in seen:
                raise ValueError(f"object name {entry.name!r} appears twice")
            seen.add(entry.name)
        return value

    @property
    def size_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def origin(self) -> DumpOrigin:
        return DumpOrigin(
            engine=self.engine,
            version=self.version,
            topology=self.topology,
            shards=self.shards,
            meta={
                "inventory": dict(self.inventory),
                "sourceSpec": self.source_spec,
                "toolVersions": dict(self.tool_versions),
                "objects": [{"name": o.name, **o.meta} for o in self.objects],
            },
        )

    def combined_sha256(self) -> str:
        """One checksum of the whole backup (for status): sha256 over the sorted "name:sha256" lines."""
        lines = sorted(f"{o.name}:{o.sha256}" for o in self.objects)
        return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()

    def entry(self, name: str) -> ObjectEntry:
        for entry in self.objects:
            if entry.name == name:
                return entry
        raise BackupError(f"backup {self.backup_id} has no object {name!r}")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> BackupManifest:
        return cls.model_validate_json(data)
