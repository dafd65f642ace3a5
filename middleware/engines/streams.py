"""Streams between the engines' dumps and loads and the repository.

Reading ahead (``read_ahead``): an iterator run by a thread a bounded number of items ahead of its
consumer. Loads read from one server (or the repository) and write into another; each side mostly
waits on its own peer, so reading the next item while the current one is written overlaps the two,
and memory stays bounded by ``depth`` items. Used by the Redis load (key batches from the scratch
server) and the PostgreSQL load (archive chunks from the repository, ahead of ``pg_restore``).

``ChunkStream``: the dumps produce their objects as generators of byte chunks (COPY lines, BSON
documents, znode records); the repository uploads readable streams.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterator[T], depth: int, name: str) -> Generator[T, None, None]:
    """The items of ``items``, produced by a thread (named ``name``) up to ``depth`` items ahead.
    The thread owns ``items`` until this generator ends (close it, e.g. with
    ``contextlib.closing``, when stopping early); an error raised there is raised here, after the
    items before it."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False  # the consumer stopped: nobody will take it

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed over, raised in the consumer
            put(error)
            return
        put(_DONE)

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


class ChunkStream(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks; closing it closes the iterator (a
    generator's ``finally`` then runs: a cursor closed on the server, a child process reaped)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        super().close()
