"""An RDB snapshot read through the replication protocol, as a file-like stream.

The node is asked for a full resync (``PSYNC ? -1``), so it forks and sends a point-in-time RDB of
its dataset, exactly as it would to a new replica. The payload comes in one of two forms:

- ``$<length>\\r\\n<bytes>``: disk-based sync (the fork wrote ``dump.rdb`` first);
- ``$EOF:<40-byte mark>\\r\\n<bytes><mark>``: diskless sync (streamed from the fork; Redis 7's
  default), offered only because we announce ``REPLCONF capa eof``.

Before the header the node sends bare ``\\n`` keepalives while the fork prepares. The end mark is
found with a sliding tail of 40 bytes, so memory stays bounded by one read. The socket is closed as
soon as the payload ends: the write stream that follows it is not wanted.
"""

from __future__ import annotations

import io
import socket
from typing import Any, cast

from middleware.endpoints import Endpoint
from middleware.engines.redis.live import scrub
from middleware.errors import NotReady, OperationError

MARK_LENGTH = 40
READ_SIZE = 4 << 20
# A large disk-based snapshot is written before the first byte is sent; the keepalives arrive once
# a second meanwhile, so this only trips on a node that stopped answering.
SOCKET_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplicationRdbStream(io.RawIOBase):
    """The RDB payload of a full resync from ``endpoint``; ``transfer`` is ``disk`` or ``diskless``
    and ``offset`` the replication offset the snapshot corresponds to (from ``+FULLRESYNC``)."""

    def __init__(self, endpoint: Endpoint, password: str | None, *, timeout: float = SOCKET_TIMEOUT) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._password = password
        self._remaining: int | None = None  # disk-based: bytes still to read
        self._mark: bytes | None = None  # diskless: the end mark
        self._tail = b""  # diskless: bytes held back because they may be the start of the mark
        self._done = False
        self._pending = b""  # payload bytes read but not handed out yet (at most one read)
        self._position = 0
        self.transfer = ""
        self.offset = 0
        self.replid = ""
        self.size = 0
        try:
            self._sock = socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT)
            if endpoint.tls is not None:
                self._sock = endpoint.tls.wrap(self._sock, endpoint.host)
        except OSError as error:
            raise NotReady(f"redis {endpoint.address}: cannot connect for a snapshot: {error}") from None
        self._sock.settimeout(timeout)
        self._file = cast(io.BufferedReader, self._sock.makefile("rb", buffering=READ_SIZE))
        try:
            self._handshake()
        except BaseException:
            self._shut()
            raise

    def _fail(self, what: str) -> OperationError:
        return OperationError(f"redis {self.endpoint.address}: snapshot {scrub(what, [self._password])}")

    def _line(self) -> bytes:
        """The next protocol line, skipping the bare newlines a node sends as keepalives."""
        while True:
            line = self._file.readline(1024)
            if not line:
                raise self._fail("failed: the node closed the connection during the handshake")
            if line.strip():
                return line.rstrip(b"\r\n")

    def _expect_ok(self, what: str) -> None:
        reply = self._line()
        if not reply.startswith(b"+"):
            raise self._fail(f"refused at {what}: {reply.decode(errors='replace')}")

    def _handshake(self) -> None:
        if self._password:
            self._sock.sendall(_command("AUTH", self._password))
            self._expect_ok("AUTH")
        self._sock.sendall(_command("REPLCONF", "capa", "eof", "capa", "psync2"))
        self._expect_ok("REPLCONF capa eof")
        self._sock.sendall(_command("PSYNC", "?", "-1"))
        reply = self._line()
        if not reply.startswith(b"+FULLRESYNC"):
            # e.g. -NOMASTERLINK from a replica that is not in sync itself.
            raise self._fail(f"refused at PSYNC: {reply.decode(errors='replace')}")
        parts = reply.split()
        if len(parts) >= 3:
            self.replid = parts[1].decode()
            self.offset = int(parts[2])
        header = self._line()
        if header.startswith(b"$EOF:"):
            self._mark = header[5:]
            if len(self._mark) != MARK_LENGTH:
                raise self._fail(f"failed: unexpected diskless header {header[:60]!r}")
            self.transfer = "diskless"
        elif header.startswith(b"$"):
            try:
                self._remaining = int(header[1:])
            except ValueError:
                raise self._fail(f"failed: unexpected payload header {header[:60]!r}") from None
            self.transfer = "disk"
        else:
            raise self._fail(f"failed: unexpected reply {header[:60]!r}")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._position >= len(self._pending):
            if self._done:
                return 0
            self._pending, self._position = self._next_piece(), 0
        n = min(len(view), len(self._pending) - self._position)
        view[:n] = self._pending[self._position : self._position + n]
        self._position += n
        self.size += n
        return n

    def _next_piece(self) -> bytes:
        """The next run of payload bytes (possibly empty), read in one bounded socket read."""
        if self._mark is None:
            return self._next_disk()
        return self._next_diskless(self._mark)

    def _next_disk(self) -> bytes:
        assert self._remaining is not None
        if self._remaining == 0:
            self._finish()
            return b""
        chunk = self._file.read1(min(READ_SIZE, self._remaining))
        if not chunk:
            raise self._fail(f"failed: connection closed with {self._remaining} bytes of the RDB unread")
        self._remaining -= len(chunk)
        if self._remaining == 0:
            self._finish()
        return chunk

    def _next_diskless(self, mark: bytes) -> bytes:
        chunk = self._file.read1(READ_SIZE)
        if not chunk:
            raise self._fail("failed: connection closed before the end of the diskless RDB")
        data = self._tail + chunk
        end = data.find(mark)
        if end >= 0:
            # Whatever follows the mark is the write stream, not part of the snapshot.
            self._tail = b""
            self._finish()
            return data[:end]
        # The mark may have begun in the last bytes: hold them back until the next read decides.
        keep = min(len(data), MARK_LENGTH - 1)
        self._tail = data[len(data) - keep :]
        return data[: len(data) - keep]

    def _finish(self) -> None:
        self._done = True
        self._shut()

    def _shut(self) -> None:
        # Closing right away makes the node drop us as a replica and free our output buffer.
        try:
            self._file.close()
        finally:
            self._sock.close()

    def close(self) -> None:
        if not self.closed:
            self._shut()
        super().close()
