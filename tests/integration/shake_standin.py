#!/usr/bin/env python3
"""A STAND-IN EXECUTABLE for the redis-shake v4 binary, for tests only: no redis-shake binary can be
installed on these machines (the Go module proxy refuses every RedisShake module path), and the
local runner (``sync/local_runner.py``) manages redis-shake *processes*, which needs a process.

Invoked as redis-shake is, ``shake_standin.py shake.toml``, it reads the same config keys
(``sync_reader.address`` / ``password``, ``advanced.status_port``), connects a ``PsyncStandIn`` to
the reader announcing the status port (so the source lists it among its replication consumers, with
the offset it ACKs, exactly as it lists redis-shake), and serves a status JSON document shaped like
redis-shake v4's on 127.0.0.1:<status_port> until SIGTERM. It moves NO data: tests that need the
target filled fill it themselves.

Stall switch (redis-shake's silent stall, #956): SIGUSR1, or ``MOORAGE_SHAKE_STANDIN_STALL=1`` in
its environment, makes it stop reading and ACKing while its status port keeps answering with a
frozen offset.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script, outside pytest

from middleware.endpoints import Endpoint
from tests.integration.psync_standin import PsyncStandIn

STALL_ENV = "MOORAGE_SHAKE_STANDIN_STALL"


class ShakeStandIn(PsyncStandIn):
    """``PsyncStandIn`` that also tracks the RDB it receives, for the phase in its status document."""

    def __init__(self, node: Endpoint, announce_port: int, password: str | None) -> None:
        self.rdb_total: int | None = None
        self.rdb_received = 0
        self.stalled = False
        super().__init__(node, announce_port, password)

    def _line(self) -> bytes:
        line = super()._line()
        if line.startswith(b"$") and self.rdb_total is None:
            self.rdb_total = int(line[1:].strip())
            self.rdb_received = len(self._buffer)  # what came with the header
        return line

    def _fill(self) -> None:
        before = len(self._buffer)
        super()._fill()
        if self.rdb_total is not None:
            self.rdb_received += len(self._buffer) - before

    def stall(self) -> None:
        self.stalled = True
        super().stall()

    @property
    def phase(self) -> str:
        if self.rdb_total is None:
            return "hand shaking"
        return "syncing aof" if self.rdb_received >= self.rdb_total else "receiving rdb"

    def document(self, address: str) -> dict[str, Any]:
        """What redis-shake v4's status port serves, for its one standalone reader."""
        rdb = min(self.rdb_received, self.rdb_total or 0)
        aof = self.phase == "syncing aof"
        return {
            "start_time": "",
            "consistent": aof,
            "stand_in": "tests/integration/shake_standin.py, not redis-shake",
            "reader": {
                "name": f"reader_{address.replace(':', '_')}",
                "address": address,
                "status": self.phase,
                "rdb_file_size_bytes": self.rdb_total or 0,
                "rdb_received_bytes": rdb,
                "rdb_sent_bytes": rdb,
                "aof_received_offset": self.offset if aof else 0,
                "aof_sent_offset": self.offset if aof else 0,
            },
            "writer": [{"name": "writer_stand_in", "unanswered_bytes": 0, "unanswered_entries": 0}],
        }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: shake_standin.py shake.toml", file=sys.stderr)
        return 2
    config = tomllib.loads(Path(argv[1]).read_text())
    reader = config["sync_reader"]
    address = str(reader["address"])
    status_port = int(config["advanced"]["status_port"])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    holder: dict[str, ShakeStandIn] = {}
    stall_requested = threading.Event()

    def on_usr1(*_: Any) -> None:
        stall_requested.set()
        if "standin" in holder:
            holder["standin"].stall()

    signal.signal(signal.SIGUSR1, on_usr1)

    class Status(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            standin = holder.get("standin")
            document = standin.document(address) if standin else {"reader": {"status": "hand shaking"}}
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    # The status port first, as redis-shake: a port in use fails the process before it reads.
    server = ThreadingHTTPServer(("127.0.0.1", status_port), Status)
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    standin = ShakeStandIn(Endpoint.parse(address), status_port, reader.get("password") or None)
    holder["standin"] = standin
    print(f"stand-in for redis-shake: reading {address}, status port {status_port}", flush=True)
    if os.environ.get(STALL_ENV) == "1" or stall_requested.is_set():
        standin.stall()
    while not done.wait(1.0):
        pass
    server.shutdown()
    standin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
