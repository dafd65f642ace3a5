"""The backup repository: backup folders, manifests, the audit log and restore records in one bucket.

Layout under the configured prefix::

    <namespace>/<middleware>/<backup-id>/<object>...      the dump objects, streamed
    <namespace>/<middleware>/<backup-id>/manifest.json    written LAST: a folder without it is not a backup
    _audit/<UTC timestamp>-<event>-<id>.json              one object per event (S3 has no append)
    _restores/<restore-id>.json                           restore records, overwritten on update

Objects are read back through a verifying stream: size and sha256 are checked against the
manifest at end of stream, so a corrupt object fails its read instead of loading silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, BinaryIO, cast

from pydantic import ValidationError

from backups.errors import BackupError, BackupNotFound, ChecksumMismatch, ObjectNotFound, StorageError
from backups.manifest import MANIFEST_NAME, BackupManifest, ObjectEntry
from backups.store import READ_CHUNK, S3Store
from middleware.engines.base import DumpObject, StoredObject
from middleware.errors import SpecError

log = logging.getLogger(__name__)

AUDIT_DIR = "_audit"
RESTORES_DIR = "_restores"
KINDS = ("backup", "safety-snapshot")

_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_EVENT_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# Fields the writer sets itself; passing them to commit() is a programming error.
_WRITER_FIELDS = ("backup_id", "kind", "namespace", "middleware", "objects", "restore_id", "location")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_label(value: str, what: str) -> None:
    if not _LABEL_RE.match(value):
        raise SpecError(what, f"{value!r} must be a DNS label (lowercase letters, digits, '-', at most 63)")


@dataclass
class VerifyResult:
    ok: bool
    problems: list[str] = field(default_factory=list)
    bytes_checked: int = 0


class Repository:
    def __init__(self, store: S3Store, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.store = store
        self.config = store.config
        self._clock = clock

    # -- ids and keys -------------------------------------------------------------------------------

    @staticmethod
    def new_id(name: str, now: datetime | None = None) -> str:
        """``<name>-20261123t235100z-ab12``: sorts by time per name, a DNS label, random suffix."""
        moment = now or _utcnow()
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        stamp = moment.strftime("%Y%m%dt%H%M%Sz")
        base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "backup"
        base = base[: 63 - len(stamp) - 7].rstrip("-")
        return f"{base}-{stamp}-{secrets.token_hex(2)}"

    def _root(self) -> str:
        root = self.config.key()
        return f"{root}/" if root else ""

    def folder(self, namespace: str, middleware: str, backup_id: str) -> str:
        return self.config.key(namespace, middleware, backup_id) + "/"

    def _manifest_key(self, manifest: BackupManifest) -> str:
        return self.folder(manifest.namespace, manifest.middleware, manifest.backup_id) + MANIFEST_NAME

    # -- backups ------------------------------------------------------------------------------------

    def begin(
        self,
        namespace: str,
        middleware: str,
        *,
        backup_id: str | None = None,
        kind: str = "backup",
        restore_id: str | None = None,
    ) -> BackupWriter:
        _check_label(namespace, "namespace")
        _check_label(middleware, "middleware")
        if kind not in KINDS:
            raise SpecError("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        backup_id = backup_id or self.new_id(middleware, self._clock())
        _check_label(backup_id, "backupId")
        folder = self.folder(namespace, middleware, backup_id)
        if self.store.exists(folder + MANIFEST_NAME):
            raise BackupError(f"backup {backup_id} already exists at {self.config.location(folder)}")
        return BackupWriter(self, namespace, middleware, backup_id, kind, restore_id, self._clock())

    def _read_manifest(self, key: str) -> BackupManifest:
        try:
            return BackupManifest.from_json(self.store.get_bytes(key))
        except ValidationError as exc:
            raise BackupError(f"{self.config.location(key)} is not a valid manifest: {exc}") from None

    def _manifest_keys(self, namespace: str | None, middleware: str | None) -> list[str]:
        root = self._root()
        if namespace is not None:
            search = root + namespace + "/" + (f"{middleware}/" if middleware is not None else "")
        else:
            search = root
        keys = []
        for key in self.store.list_keys(search):
            parts = key[len(root) :].split("/")
            # <namespace>/<middleware>/<id>/manifest.json exactly; "_audit" etc. are not namespaces.
            if len(parts) != 4 or parts[3] != MANIFEST_NAME or parts[0].startswith("_"):
                continue
            if middleware is not None and parts[1] != middleware:
                continue
            keys.append(key)
        return keys

    def list_backups(
        self, namespace: str | None = None, middleware: str | None = None, *, kind: str | None = None
    ) -> list[BackupManifest]:
        """Completed backups (folders with a manifest), oldest first."""
        manifests = []
        for key in self._manifest_keys(namespace, middleware):
            try:
                manifest = self._read_manifest(key)
            except (BackupError, ObjectNotFound) as exc:
                # One unreadable (or just deleted) manifest must not hide every other backup.
                log.warning("skipping %s: %s", self.config.location(key), exc)
                continue
            if kind is None or manifest.kind == kind:
                manifests.append(manifest)
        return sorted(manifests, key=lambda m: (m.started_at, m.backup_id))

    def find(self, backup_id: str) -> BackupManifest:
        """The backup with this id, in any namespace."""
        suffix = f"/{backup_id}/{MANIFEST_NAME}"
        keys = [k for k in self._manifest_keys(None, None) if k.endswith(suffix)]
        if not keys:
            raise BackupNotFound(
                f"backup {backup_id!r} not found in {self.config.location(self._root())} "
                "(no manifest: it never completed, or was pruned)"
            )
        if len(keys) > 1:
            where = ", ".join(self.config.location(k) for k in keys)
            raise BackupError(f"backup id {backup_id!r} is ambiguous: {where}")
        return self._read_manifest(keys[0])

    def source(self, manifest: BackupManifest) -> RepositorySource:
        return RepositorySource(self.store, manifest)

    def verify(self, manifest: BackupManifest, on_bytes: Callable[[int], None] | None = None) -> VerifyResult:
        """Read every object in full and check it against the manifest."""
        result = VerifyResult(ok=True)
        source = self.source(manifest)
        for entry in manifest.objects:
            try:
                with source.open(entry.name) as stream:
                    while chunk := stream.read(READ_CHUNK):
                        result.bytes_checked += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
            except ChecksumMismatch as exc:
                result.problems.append(str(exc))
            except ObjectNotFound:
                result.problems.append(f"{entry.name}: missing ({self.config.location(entry.key)})")
        result.ok = not result.problems
        return result

    def delete_backup(self, manifest: BackupManifest) -> None:
        """Manifest first, so a half-deleted backup is never listed; then every object of the folder."""
        folder = self.folder(manifest.namespace, manifest.middleware, manifest.backup_id)
        self.store.delete_keys([folder + MANIFEST_NAME])
        keys = {o.key for o in manifest.objects}
        keys.update(self.store.list_keys(folder))
        self.store.delete_keys(sorted(keys))

    # -- audit log ----------------------------------------------------------------------------------

    def audit(self, event: str, **fields: Any) -> None:
        """Record one event; fields are stored as given (Moorage uses camelCase names)."""
        if not _EVENT_RE.match(event):
            raise ValueError(f"audit event {event!r} must be lowercase letters, digits and '-'")
        if "event" in fields or "at" in fields:
            raise ValueError("audit fields 'event' and 'at' are set by the repository")
        at = self._clock().astimezone(UTC)
        subject = str(fields.get("backupId") or fields.get("restoreId") or secrets.token_hex(4))
        subject = re.sub(r"[^A-Za-z0-9_.-]+", "-", subject)
        name = f"{at:%Y%m%dT%H%M%S.%fZ}-{event}-{subject}.json"
        record = {"event": event, "at": at.isoformat(), **fields}
        self.store.put_bytes(self.config.key(AUDIT_DIR, name), _to_json(record))

    def audit_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Events oldest first; with ``limit``, only the newest ``limit`` of them."""
        keys = sorted(self.store.list_keys(self.config.key(AUDIT_DIR) + "/"))
        if limit is not None:
            keys = keys[-limit:] if limit > 0 else []
        return [json.loads(self.store.get_bytes(k)) for k in keys]

    # -- restore records ----------------------------------------------------------------------------

    def _restore_key(self, restore_id: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]+$", restore_id):
            raise ValueError(f"restoreId {restore_id!r} must be letters, digits, '.', '_' and '-'")
        return self.config.key(RESTORES_DIR, f"{restore_id}.json")

    def save_restore(self, record: dict[str, Any]) -> None:
        restore_id = record.get("restoreId")
        if not isinstance(restore_id, str) or not restore_id:
            raise ValueError("a restore record needs a non-empty string 'restoreId'")
        self.store.put_bytes(self._restore_key(restore_id), _to_json(record))

    def load_restore(self, restore_id: str) -> dict[str, Any]:
        key = self._restore_key(restore_id)
        try:
            return cast(dict[str, Any], json.loads(self.store.get_bytes(key)))
        except ObjectNotFound:
            raise BackupNotFound(
                f"restore {restore_id!r} not found ({self.config.location(key)} does not exist)"
            ) from None

    def list_restores(self) -> list[dict[str, Any]]:
        """Every restore record, oldest first (by ``startedAt`` when recorded)."""
        records = [
            cast(dict[str, Any], json.loads(self.store.get_bytes(k)))
            for k in self.store.list_keys(self.config.key(RESTORES_DIR) + "/")
        ]
        return sorted(records, key=lambda r: (str(r.get("startedAt", "")), str(r["restoreId"])))


def _to_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True, default=str).encode()


class BackupWriter:
    """One backup being written: ``put`` each object, then ``commit`` (or ``abort``).

    As a context manager it aborts on an exception unless already committed.
    """

    def __init__(
        self,
        repo: Repository,
        namespace: str,
        middleware: str,
        backup_id: str,
        kind: str,
        restore_id: str | None,
        started_at: datetime,
    ) -> None:
        self.repo = repo
        self.namespace = namespace
        self.middleware = middleware
        self.backup_id = backup_id
        self.kind = kind
        self.restore_id = restore_id
        self.started_at = started_at
        self.prefix_key = repo.folder(namespace, middleware, backup_id)
        self.location = repo.config.location(self.prefix_key)
        self.entries: list[ObjectEntry] = []
        self._done: str | None = None  # "committed" or "aborted"

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and self._done is None:
            self.abort(f"{type(exc).__name__}: {exc}")

    def _check_open(self) -> None:
        if self._done is not None:
            raise BackupError(f"backup {self.backup_id} is already {self._done}")

    def put(self, obj: DumpObject, on_bytes: Callable[[int], None] | None = None) -> ObjectEntry:
        """Stream ``obj`` into the backup folder (and close its stream)."""
        try:
            self._check_open()
            name = obj.name
            if (
                not _OBJECT_NAME_RE.match(name)
                or name == MANIFEST_NAME
                or any(p in (".", "..") for p in name.split("/"))
            ):
                raise BackupError(
                    f"dump object name {name!r} is not allowed: letters, digits, '.', '_', '-' and '/' "
                    f"between path parts; not {MANIFEST_NAME!r}"
                )
            if any(e.name == name for e in self.entries):
                raise BackupError(f"dump object {name!r} is written twice in backup {self.backup_id}")
            result = self.repo.store.put_stream(self.prefix_key + name, obj.stream, on_bytes)
        finally:
            obj.stream.close()
        entry = ObjectEntry(name=name, key=result.key, size=result.size, sha256=result.sha256, meta=obj.meta)
        self.entries.append(entry)
        return entry

    def commit(self, **fields: Any) -> BackupManifest:
        """Write manifest.json (last: it makes the folder a backup) and audit "backup-completed".

        ``fields``: the manifest fields the writer does not know (engine, version, topology, shards,
        source_spec, and optionally inventory, tool_versions, started_at, finished_at,
        duration_seconds; the times default to the writer's start and now).
        """
        self._check_open()
        owned = sorted(set(fields) & set(_WRITER_FIELDS))
        if owned:
            raise TypeError(f"commit() got {', '.join(owned)}, which the writer sets itself")
        started_at = fields.pop("started_at", self.started_at)
        finished_at = fields.pop("finished_at", None) or self.repo._clock()
        # The caller may measure the duration with a monotonic clock (wall clocks jump).
        duration = fields.pop("duration_seconds", None)
        if duration is None:
            duration = max(0.0, (finished_at - started_at).total_seconds())
        manifest = BackupManifest(
            backup_id=self.backup_id,
            kind=self.kind,
            namespace=self.namespace,
            middleware=self.middleware,
            objects=list(self.entries),
            restore_id=self.restore_id,
            location=self.location,
            started_at=started_at,
            finished_at=finished_at,
            duration_seconds=duration,
            **fields,
        )
        self.repo.store.put_bytes(self.prefix_key + MANIFEST_NAME, manifest.to_json())
        self._done = "committed"
        audit: dict[str, Any] = {
            "backupId": self.backup_id,
            "kind": self.kind,
            "namespace": self.namespace,
            "middleware": self.middleware,
            "location": self.location,
            "objects": len(manifest.objects),
            "sizeBytes": manifest.size_bytes,
            "sha256": manifest.combined_sha256(),
        }
        if self.restore_id:
            audit["restoreId"] = self.restore_id
        self.repo.audit("backup-completed", **audit)
        return manifest

    def abort(self, reason: str) -> None:
        """Delete what was written (best effort), write no manifest, audit "backup-failed"."""
        if self._done is not None:
            return
        self._done = "aborted"
        store = self.repo.store
        try:
            store.abort_uploads(self.prefix_key)
            keys = {e.key for e in self.entries}
            keys.update(store.list_keys(self.prefix_key))
            store.delete_keys(sorted(keys))
        except StorageError as exc:
            # No manifest is written, so leftovers are never taken for a backup; prune cleans up.
            log.warning("could not remove the objects of failed backup %s: %s", self.backup_id, exc)
        fields: dict[str, Any] = {
            "backupId": self.backup_id,
            "kind": self.kind,
            "namespace": self.namespace,
            "middleware": self.middleware,
            "reason": reason,
        }
        if self.restore_id:
            fields["restoreId"] = self.restore_id
        try:
            self.repo.audit("backup-failed", **fields)
        except StorageError as exc:
            # abort runs on failure paths: raising here would hide the error that caused it.
            log.warning("could not audit the failure of backup %s: %s", self.backup_id, exc)


class RepositorySource:
    """A stored backup as a ``DataSource``: objects in manifest order, each read verified."""

    def __init__(self, store: S3Store, manifest: BackupManifest) -> None:
        self._store = store
        self.manifest = manifest

    @property
    def objects(self) -> list[StoredObject]:
        return [StoredObject(name=o.name, size=o.size, meta=dict(o.meta)) for o in self.manifest.objects]

    def open(self, name: str) -> BinaryIO:
        entry = self.manifest.entry(name)
        raw = _VerifyingReader(self._store.open(entry.key), entry, self._store.config.location(entry.key))
        return cast(BinaryIO, io.BufferedReader(raw, READ_CHUNK))


class _VerifyingReader(io.RawIOBase):
    """Passes bytes through; raises ``ChecksumMismatch`` when the size or sha256 is not the recorded one."""

    def __init__(self, stream: BinaryIO, entry: ObjectEntry, location: str) -> None:
        self._stream = stream
        self._entry = entry
        self._location = location
        self._hash = hashlib.sha256()
        self._read = 0

    def readable(self) -> bool:
        return True

    def _mismatch(self, what: str) -> ChecksumMismatch:
        return ChecksumMismatch(f"{self._entry.name} ({self._location}): {what}; the object is corrupt")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        if data:
            self._read += len(data)
            if self._read > self._entry.size:
                raise self._mismatch(f"more than the recorded {self._entry.size} bytes")
            self._hash.update(data)
            view[: len(data)] = data
            return len(data)
        if self._read != self._entry.size:
            raise self._mismatch(f"{self._read} bytes, the manifest records {self._entry.size}")
        if self._hash.hexdigest() != self._entry.sha256:
            raise self._mismatch("sha256 differs from the manifest")
        return 0

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()
