"""Dumps kept in a local directory, for engine DataDump/DataLoad tests that do not need S3.

The backups layer stores the same objects in S3 (``backups/repository.py``); here each object is a
file beside a JSON index, with its size and sha256 checked on every read like the S3 source does.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from middleware.engines.base import DumpObject, StoredObject

CHUNK = 1 << 20


class ChecksumMismatch(IOError):
    pass


class _VerifyingReader(io.RawIOBase):
    """Reads a file and raises at end of file when its sha256 or size is not the recorded one."""

    def __init__(self, path: Path, size: int, sha256: str) -> None:
        self._file = path.open("rb")
        self._hash = hashlib.sha256()
        self._read = 0
        self._size = size
        self._sha256 = sha256
        self._name = path.name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        if n:
            self._hash.update(memoryview(buffer)[:n])
            self._read += n
            return n
        if self._read != self._size or self._hash.hexdigest() != self._sha256:
            raise ChecksumMismatch(f"{self._name}: content does not match its recorded size and sha256")
        return 0

    def close(self) -> None:
        self._file.close()
        super().close()


class DirectorySource:
    """A dump saved by :func:`save_dump`, readable as a ``DataSource``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = json.loads((directory / "index.json").read_text())
        self._entries: list[dict[str, Any]] = index["objects"]

    @property
    def objects(self) -> list[StoredObject]:
        return [StoredObject(e["name"], e["size"], e["meta"]) for e in self._entries]

    def open(self, name: str) -> BinaryIO:
        entry = next(e for e in self._entries if e["name"] == name)
        reader = _VerifyingReader(self.directory / _file_name(name), entry["size"], entry["sha256"])
        return io.BufferedReader(reader, CHUNK)

    def path(self, name: str) -> Path:
        return self.directory / _file_name(name)


def _file_name(name: str) -> str:
    return name.replace("/", "__")


def save_dump(objects: Iterable[DumpObject], directory: Path) -> DirectorySource:
    """Consume a ``data_dump`` iterator object by object, in bounded chunks, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for obj in objects:
        digest = hashlib.sha256()
        size = 0
        with (directory / _file_name(obj.name)).open("wb") as out:
            try:
                while chunk := obj.stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            finally:
                obj.stream.close()
        entries.append({"name": obj.name, "size": size, "sha256": digest.hexdigest(), "meta": obj.meta})
    (directory / "index.json").write_text(json.dumps({"objects": entries}, indent=2))
    return DirectorySource(directory)
