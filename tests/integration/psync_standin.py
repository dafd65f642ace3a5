"""A STAND-IN for redis-shake's sync reader, for tests only: no redis-shake binary can be installed
on these machines (the Go module proxy refuses every RedisShake module path).

It speaks to the source exactly what redis-shake v4's reader does at the replication level
(``internal/reader/sync_standalone_reader.go``): ``REPLCONF listening-port <status port>``,
``PSYNC ? -1``, read the RDB, read the command stream and ``REPLCONF ACK <received offset>`` every
100 ms. So the source lists it among its consumers with the announced port and the ACKed offset, as
it lists redis-shake. It does NOT write anything anywhere: it moves no data. Tests that need the
target filled fill it themselves and say so.

``stall()`` stops reading and ACKing (redis-shake's silent stall, #956); ``close()`` disconnects.
"""

from __future__ import annotations

import socket
import threading
import time

from middleware.endpoints import Endpoint


def _command(*parts: str | int) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class PsyncStandIn:
    def __init__(self, node: Endpoint, announce_port: int, password: str | None = None) -> None:
        self.node = node
        self.announce_port = announce_port
        self.offset = 0  # replication offset received so far
        self._sock = socket.create_connection((node.host, node.port), timeout=10)
        self._buffer = b""  # bytes read from the socket, not consumed yet (one reader, no makefile)
        self._stalled = threading.Event()
        self._closed = threading.Event()
        if password:
            self._request(_command("AUTH", password))
        self._request(_command("REPLCONF", "listening-port", announce_port))
        self._sock.sendall(_command("PSYNC", "?", "-1"))
        self._thread = threading.Thread(target=self._run, name=f"psync-standin-{node}", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        data = self._sock.recv(1 << 16)
        if not data:
            raise ConnectionError("source closed the replication link")
        self._buffer += data

    def _readline(self) -> bytes:
        while b"\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def _request(self, command: bytes) -> bytes:
        self._sock.sendall(command)
        reply = self._readline()
        if not reply.startswith(b"+"):
            raise RuntimeError(f"{self.node}: {reply!r}")
        return reply

    def _line(self) -> bytes:
        while True:
            line = self._readline()
            if line.strip():  # the master sends bare newlines as keepalives before the payload
                return line

    def _run(self) -> None:
        try:
            full = self._line()  # +FULLRESYNC <replid> <offset>
            self.offset = int(full.split()[2])
            header = self._line()  # $<length> (disk-based: we did not offer the EOF capability)
            remaining = int(header[1:].strip())
            while remaining > len(self._buffer):
                remaining -= len(self._buffer)
                self._buffer = b""
                self._fill()
            # What follows the RDB in the buffer is already the command stream.
            self.offset += len(self._buffer) - remaining
            self._buffer = b""
            self._sock.settimeout(0.1)
            last_ack = 0.0
            while not self._closed.is_set():
                if self._stalled.is_set():
                    time.sleep(0.05)
                    continue
                try:
                    data = self._sock.recv(1 << 16)
                    if not data:
                        return
                    self.offset += len(data)
                except TimeoutError:
                    pass
                if time.monotonic() - last_ack >= 0.1:
                    self._sock.sendall(_command("REPLCONF", "ACK", self.offset))
                    last_ack = time.monotonic()
        except (OSError, ValueError, ConnectionError):
            return

    def stall(self) -> None:
        self._stalled.set()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()
