"""The backup manifest: wire format, checksums, origin, and what it refuses."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from backups.errors import BackupError
from backups.manifest import BackupManifest, ObjectEntry

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def manifest(**overrides: Any) -> BackupManifest:
    fields: dict[str, Any] = {
        "backup_id": "cache-20261123t235100z-ab12",
        "namespace": "shop",
        "middleware": "cache",
        "engine": "redis",
        "version": "7.0",
        "topology": "cluster",
        "shards": 2,
        "objects": [
            ObjectEntry(
                name="shard-0.rdb", key="p/shop/cache/x/shard-0.rdb", size=10, sha256=SHA_A, meta={"shard": 0}
            ),
            ObjectEntry(
                name="shard-1.rdb", key="p/shop/cache/x/shard-1.rdb", size=32, sha256=SHA_B, meta={"shard": 1}
            ),
        ],
        "inventory": {"keys": 42},
        "started_at": datetime(2026, 11, 23, 23, 51, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 23, 23, 52, tzinfo=UTC),
        "duration_seconds": 60.0,
        "source_spec": {"engine": "redis", "topology": "cluster"},
        "tool_versions": {"moorage": "0.1.0"},
        "location": "s3://bucket/p/shop/cache/cache-20261123t235100z-ab12/",
    }
    fields.update(overrides)
    return BackupManifest(**fields)


def test_json_round_trip_uses_camel_case() -> None:
    original = manifest()
    wire = json.loads(original.to_json())
    assert wire["backupId"] == original.backup_id
    assert wire["schemaVersion"] == 1 and wire["kind"] == "backup"
    assert wire["objects"][0] == {
        "name": "shard-0.rdb",
        "key": "p/shop/cache/x/shard-0.rdb",
        "size": 10,
        "sha256": SHA_A,
        "meta": {"shard": 0},
    }
    assert "restoreId" not in wire  # None fields are left out
    assert BackupManifest.from_json(original.to_json()) == original


def test_size_and_combined_checksum() -> None:
    m = manifest()
    assert m.size_bytes == 42
    expected = hashlib.sha256(f"shard-0.rdb:{SHA_A}\nshard-1.rdb:{SHA_B}\n".encode()).hexdigest()
    assert m.combined_sha256() == expected
    # Independent of object order, dependent on every object checksum.
    assert manifest(objects=list(reversed(m.objects))).combined_sha256() == expected
    changed = [m.objects[0], m.objects[1].model_copy(update={"sha256": SHA_A})]
    assert manifest(objects=changed).combined_sha256() != expected


def test_origin_carries_what_compatibility_checks_need() -> None:
    origin = manifest().origin()
    assert (origin.engine, origin.version, origin.topology, origin.shards) == ("redis", "7.0", "cluster", 2)
    assert origin.meta["inventory"] == {"keys": 42}
    assert origin.meta["objects"] == [
        {"name": "shard-0.rdb", "shard": 0},
        {"name": "shard-1.rdb", "shard": 1},
    ]


def test_entry_lookup_names_the_missing_object() -> None:
    assert manifest().entry("shard-1.rdb").size == 32
    with pytest.raises(BackupError, match=r"no object 'shard-9\.rdb'"):
        manifest().entry("shard-9.rdb")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schema_version": 2}, "newer than this Moorage reads"),
        ({"kind": "snapshot"}, "kind"),
        (
            {
                "objects": [
                    ObjectEntry(name="a", key="k1", size=1, sha256=SHA_A),
                    ObjectEntry(name="a", key="k2", size=1, sha256=SHA_B),
                ]
            },
            "'a' appears twice",
        ),
        ({"shards": -1}, "shards"),
    ],
)
def test_invalid_manifests_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        manifest(**overrides)


def test_object_checksum_must_be_a_sha256() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ObjectEntry(name="a", key="k", size=1, sha256="abc")


def test_unknown_fields_are_refused() -> None:
    wire = json.loads(manifest().to_json())
    wire["extraField"] = 1
    with pytest.raises(ValidationError, match="extraField"):
        BackupManifest.model_validate(wire)
