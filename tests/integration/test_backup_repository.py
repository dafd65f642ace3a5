"""The backup repository against a real S3 server (SeaweedFS, see s3_harness.py).

Faults are real too: a TCP proxy that cuts UploadPart connections mid-body, and dump streams that
raise mid-upload. No emulator is used here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from backups.errors import BackupNotFound, ChecksumMismatch, StorageError
from backups.manifest import BackupManifest
from backups.repository import Repository
from backups.store import RepositoryConfig, S3Store
from middleware.engines.base import DumpObject
from tests.integration.s3_harness import CuttingProxy, S3Server

pytestmark = pytest.mark.integration

MiB = 1 << 20
PART = 5 * MiB


class GeneratedStream(io.RawIOBase):
    """``size`` deterministic pseudo-random bytes, produced on demand (never held in memory), whose
    sha256 is computed as they are read; optionally raises after ``fail_after`` bytes."""

    def __init__(self, size: int, *, seed: bytes = b"moorage", fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.sent = 0
        self.digest = hashlib.sha256()
        self._block = hashlib.sha256(seed).digest() * ((64 << 10) // 32)  # a 64 KiB pattern
        self._counter = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise RuntimeError(f"dump stream broke after {self.sent} bytes")
        n = min(len(buffer), self.size - self.sent, len(self._block))
        if n <= 0:
            return 0
        # Vary each block so equal parts cannot hide a misplaced one.
        self._counter += 1
        block = self._counter.to_bytes(8, "big") + self._block[8:n]
        block = block[:n]
        buffer[:n] = block
        self.digest.update(block)
        self.sent += n
        return n


def dump(name: str, data: bytes, **meta: Any) -> DumpObject:
    return DumpObject(name=name, stream=io.BytesIO(data), meta=meta)


MANIFEST_FIELDS: dict[str, Any] = {
    "engine": "redis",
    "version": "7.0",
    "topology": "standalone",
    "shards": 1,
    "source_spec": {"engine": "redis", "replicas": 1},
    "inventory": {"keys": 3},
    "tool_versions": {"moorage": "0.1.0"},
}


def make_backup(
    repo: Repository, namespace: str, middleware: str, objects: dict[str, bytes], **kw: Any
) -> BackupManifest:
    writer = repo.begin(namespace, middleware, **kw)
    for name, data in objects.items():
        writer.put(dump(name, data, shard=0))
    return writer.commit(**MANIFEST_FIELDS)


@pytest.fixture
def store(s3_config: RepositoryConfig) -> S3Store:
    return S3Store(s3_config, part_size=PART)


@pytest.fixture
def repo(store: S3Store) -> Repository:
    return Repository(store)


def read_all(stream: Any) -> bytes:
    out = io.BytesIO()
    while chunk := stream.read(MiB):
        out.write(chunk)
    return out.getvalue()


# -- store ------------------------------------------------------------------------------------------


def test_multipart_round_trip_matches_sha256(store: S3Store) -> None:
    source = GeneratedStream(20 * MiB + 123)
    seen: list[int] = []
    result = store.put_stream("backups/big.bin", source, seen.append)  # type: ignore[arg-type]

    assert result.size == 20 * MiB + 123
    assert result.sha256 == source.digest.hexdigest()
    assert sum(seen) == result.size and len(seen) == 5  # 4 full parts and a short last one
    head = store.client.head_object(Bucket=store.bucket, Key="backups/big.bin")
    assert head["ETag"].strip('"').endswith("-5"), "expected a 5-part multipart object"
    with store.open("backups/big.bin") as stream:
        assert hashlib.sha256(read_all(stream)).hexdigest() == result.sha256
    assert store.pending_uploads() == []


def test_small_object_single_put_with_sse(s3_server: S3Server, s3_config: RepositoryConfig) -> None:
    sse_store = S3Store(s3_server.config(s3_config.bucket, sse_algorithm="AES256"), part_size=PART)
    result = sse_store.put_stream("one/small.bin", io.BytesIO(b"x" * 1000))
    assert result.size == 1000 and result.sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    head = sse_store.client.head_object(Bucket=sse_store.bucket, Key="one/small.bin")
    assert head["ServerSideEncryption"] == "AES256"
    assert not head["ETag"].strip('"').count("-"), "a small object must be a single PUT"
    assert sse_store.get_bytes("one/small.bin") == b"x" * 1000


def test_ensure_bucket_is_idempotent_and_keys_list_and_delete(s3_server: S3Server) -> None:
    store = S3Store(s3_server.config("t-ensure-bucket"))
    store.ensure_bucket()
    store.ensure_bucket()
    keys = [f"k/{i:04d}" for i in range(1005)]  # more keys than one DeleteObjects batch takes
    for key in keys[:3]:
        store.put_bytes(key, b"v")
    assert list(store.list_keys("k/")) == keys[:3]
    assert store.exists("k/0000") and not store.exists("k/9999")
    store.delete_keys(keys)
    assert list(store.list_keys("k/")) == []


def test_stream_error_mid_upload_aborts_the_multipart_upload(store: S3Store) -> None:
    source = GeneratedStream(20 * MiB, fail_after=7 * MiB)
    with pytest.raises(RuntimeError, match="dump stream broke"):
        store.put_stream("backups/broken.bin", source)  # type: ignore[arg-type]
    assert store.pending_uploads() == []
    assert not store.exists("backups/broken.bin")


def test_upload_memory_is_bounded_by_the_part_size(store: S3Store) -> None:
    source = GeneratedStream(64 * MiB)
    tracemalloc.start()
    try:
        result = store.put_stream("backups/huge.bin", source)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 64 * MiB and result.sha256 == source.digest.hexdigest()
    # One part buffer plus the copy made when it is joined; never anything near 64 MiB.
    assert peak < 3 * PART, f"peak traced memory {peak / MiB:.1f} MiB for {PART / MiB:.0f} MiB parts"


# -- repository -------------------------------------------------------------------------------------


def test_manifest_is_written_last_and_listing_reads_manifests(repo: Repository, store: S3Store) -> None:
    writer = repo.begin("shop", "cache")
    writer.put(dump("shard-0.rdb", b"a" * 100, shard=0, slots=[[0, 16383]]))
    writer.put(dump("shard-1.rdb", b"b" * 200, shard=1))
    assert store.exists(writer.prefix_key + "shard-0.rdb")
    assert not store.exists(writer.prefix_key + "manifest.json")
    assert repo.list_backups() == [], "a folder without manifest.json is not a backup"

    manifest = writer.commit(**MANIFEST_FIELDS, duration_seconds=1.5)
    assert manifest.duration_seconds == 1.5
    assert store.exists(writer.prefix_key + "manifest.json")
    assert [m.backup_id for m in repo.list_backups()] == [writer.backup_id]
    assert manifest.location == f"s3://{store.bucket}/backups/shop/cache/{writer.backup_id}/"
    assert manifest.size_bytes == 300
    assert [o.name for o in manifest.objects] == ["shard-0.rdb", "shard-1.rdb"]
    assert manifest.objects[0].meta == {"shard": 0, "slots": [[0, 16383]]}
    # An orphan folder (a crashed writer) is never listed either.
    store.put_bytes("backups/shop/cache/cache-orphan/shard-0.rdb", b"zzz")
    assert [m.backup_id for m in repo.list_backups("shop", "cache")] == [writer.backup_id]

    events = repo.audit_log()
    assert events[-1]["event"] == "backup-completed"
    assert events[-1]["backupId"] == writer.backup_id
    assert events[-1]["sha256"] == manifest.combined_sha256()


def test_find_and_list_across_namespaces(repo: Repository) -> None:
    one = make_backup(repo, "team-a", "cache", {"dump.rdb": b"1"})
    two = make_backup(repo, "team-b", "cache", {"dump.rdb": b"2"})
    snap = make_backup(repo, "team-b", "cache", {"dump.rdb": b"3"}, kind="safety-snapshot", restore_id="r-1")

    assert repo.find(two.backup_id).namespace == "team-b"
    assert repo.find(one.backup_id).namespace == "team-a"
    assert repo.find(snap.backup_id).restore_id == "r-1"
    assert [m.backup_id for m in repo.list_backups()] == [one.backup_id, two.backup_id, snap.backup_id]
    assert [m.backup_id for m in repo.list_backups("team-b", kind="backup")] == [two.backup_id]
    assert [m.backup_id for m in repo.list_backups(middleware="cache", kind="safety-snapshot")] == [
        snap.backup_id
    ]
    with pytest.raises(BackupNotFound, match="cache-nope"):
        repo.find("cache-nope")


def test_verify_and_source_stream_the_objects(repo: Repository) -> None:
    data = {"shard-0.rdb": b"zero" * 1000, "shard-1.rdb": b"one" * 3000}
    manifest = make_backup(repo, "shop", "cache", data)

    checked: list[int] = []
    result = repo.verify(manifest, checked.append)
    assert result.ok and result.problems == []
    assert result.bytes_checked == sum(checked) == 4000 + 9000

    source = repo.source(manifest)
    assert [(o.name, o.size, o.meta) for o in source.objects] == [
        ("shard-0.rdb", 4000, {"shard": 0}),
        ("shard-1.rdb", 9000, {"shard": 0}),
    ]
    for name, content in data.items():
        with source.open(name) as stream:
            assert read_all(stream) == content


def test_corrupted_object_fails_verify_and_read(repo: Repository, store: S3Store) -> None:
    manifest = make_backup(repo, "shop", "cache", {"a.rdb": b"A" * 5000, "b.rdb": b"B" * 5000})
    # Same size, different bytes: only the sha256 can tell.
    store.put_bytes(manifest.objects[0].key, b"X" * 5000)

    result = repo.verify(manifest)
    assert not result.ok
    assert len(result.problems) == 1 and "a.rdb" in result.problems[0]
    with pytest.raises(ChecksumMismatch, match=r"a\.rdb"), repo.source(manifest).open("a.rdb") as stream:
        read_all(stream)

    store.delete_keys([manifest.objects[1].key])
    problems = repo.verify(manifest).problems
    assert any("b.rdb" in p and "missing" in p for p in problems)


def test_s3_cut_mid_upload_aborts_and_audits_failure(
    s3_server: S3Server, s3_config: RepositoryConfig, store: S3Store, cutting_proxy: CuttingProxy
) -> None:
    via_proxy = dataclasses.replace(s3_config, endpoint=cutting_proxy.endpoint)
    repo = Repository(S3Store(via_proxy, part_size=PART, max_attempts=2))
    cutting_proxy.cut_from_part = 2  # part 1 lands, part 2 is cut on every attempt

    writer = repo.begin("shop", "cache")
    writer.put(dump("small.rdb", b"s" * 100))
    with pytest.raises(StorageError) as failure, writer:
        writer.put(DumpObject("big.rdb", GeneratedStream(12 * MiB)))  # type: ignore[arg-type]

    assert cutting_proxy.cuts >= 2, "the proxy must have cut the part on each attempt"
    message = str(failure.value)
    assert f"s3://{s3_config.bucket}/backups/shop/cache/{writer.backup_id}/big.rdb" in message
    assert failure.value.operation == "UploadPart"
    # Checked on the server directly, not through the proxy.
    assert store.pending_uploads() == [], "the multipart upload must be aborted"
    assert list(store.list_keys(writer.prefix_key)) == [], "objects written before the failure are removed"
    assert repo.list_backups() == []
    failed = [e for e in repo.audit_log() if e["event"] == "backup-failed"]
    assert [e["backupId"] for e in failed] == [writer.backup_id]
    assert "UploadPart" in failed[0]["reason"]


def test_credentials_never_in_repr_or_errors(s3_server: S3Server, s3_config: RepositoryConfig) -> None:
    assert s3_server.secret_key not in repr(s3_config)
    from_url = RepositoryConfig.from_url(
        f"s3://{s3_config.bucket}/p?endpoint={s3_server.endpoint}",
        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key},
    )
    assert s3_server.secret_key not in repr(from_url)
    assert S3Store(from_url).exists("p/nothing") is False  # the URL form reaches the server

    wrong_secret = s3_server.secret_key[::-1]
    bad = S3Store(
        RepositoryConfig(
            bucket=s3_config.bucket,
            endpoint=s3_server.endpoint,
            access_key_id=s3_server.access_key,
            secret_access_key=wrong_secret,
        ),
        max_attempts=1,
    )
    attempts: list[Callable[[], object]] = [
        lambda: bad.put_bytes("k", b"v"),
        lambda: bad.get_bytes("k"),
        lambda: list(bad.list_keys("")),
    ]
    for attempt in attempts:
        with pytest.raises(StorageError) as caught:
            attempt()
        text = str(caught.value)
        assert s3_config.bucket in text
        for secret in (wrong_secret, s3_server.access_key, s3_server.secret_key):
            assert secret not in text
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_delete_backup_removes_manifest_and_objects(repo: Repository, store: S3Store) -> None:
    keep = make_backup(repo, "shop", "cache", {"a.rdb": b"1"})
    gone = make_backup(repo, "shop", "cache", {"a.rdb": b"2", "b.rdb": b"3"})
    repo.delete_backup(gone)
    assert [m.backup_id for m in repo.list_backups()] == [keep.backup_id]
    assert list(store.list_keys(repo.folder("shop", "cache", gone.backup_id))) == []
    with pytest.raises(BackupNotFound):
        repo.find(gone.backup_id)


def test_audit_log_and_restore_records(store: S3Store) -> None:
    ticks = iter(datetime(2026, 11, 23, 23, 51, s, tzinfo=UTC) for s in range(60))
    repo = Repository(store, clock=lambda: next(ticks))
    repo.audit("restore-applied", restoreId="r-1", backupId="cache-x")
    repo.audit("restore-rolled-back", restoreId="r-1")
    repo.audit("backup-pruned", backupId="cache-y")
    log = repo.audit_log()
    assert [e["event"] for e in log] == ["restore-applied", "restore-rolled-back", "backup-pruned"]
    assert log[0]["at"] == "2026-11-23T23:51:00+00:00"
    assert [e["event"] for e in repo.audit_log(limit=2)] == ["restore-rolled-back", "backup-pruned"]

    repo.save_restore({"restoreId": "r-2", "startedAt": "2026-11-23T23:00:00Z", "phase": "Planned"})
    repo.save_restore({"restoreId": "r-1", "startedAt": "2026-11-23T22:00:00Z", "phase": "Applied"})
    repo.save_restore({"restoreId": "r-2", "startedAt": "2026-11-23T23:00:00Z", "phase": "RolledBack"})
    assert repo.load_restore("r-2")["phase"] == "RolledBack"
    assert [r["restoreId"] for r in repo.list_restores()] == ["r-1", "r-2"]
    with pytest.raises(BackupNotFound, match="r-3"):
        repo.load_restore("r-3")
