"""FerretDB on 127.0.0.1 for the MongoDB data-path tests: a MongoDB-compatible server, NOT a mongod.

FerretDB (built from its Go module by ``make ferretdb`` / ``hack/build-ferretdb.sh``) speaks the
MongoDB wire protocol and stores data with its SQLite handler in a directory of its own. With
``repl_set_name`` it answers ``hello`` as the primary of a one-member replica set, so pymongo's
replica-set client (server discovery, read preferences, ``w: majority``) runs against it too; it
does not replicate anything. With ``password`` it runs FerretDB's (experimental) SCRAM
authentication with a user ``admin`` in ``admin`` (the user Moorage's MongoDB engine connects as);
without, there is no access control at all.

Each process runs in its own directory and session, on ports from ``free_port()``, with the debug
HTTP listener off and telemetry disabled, and is stopped by its own PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from middleware.endpoints import Endpoint
from middleware.engines.mongodb.config import ADMIN_USER
from tests.integration.harness import HOST, free_port

FERRETDB_VERSION = "v1.24.2"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3
REQUIRED_ENV = "MOORAGE_FERRETDB_REQUIRED"

_RUNNING: set[FerretDBProcess] = set()


def ferretdb_binary() -> str:
    """The cached FerretDB binary; a skip (or, with MOORAGE_FERRETDB_REQUIRED=1, a failure) that
    says how to build it when it is missing."""
    explicit = os.environ.get("MOORAGE_FERRETDB")
    cache = Path(os.environ.get("MOORAGE_FERRETDB_CACHE", Path.home() / ".cache" / "moorage" / "ferretdb"))
    path = Path(explicit) if explicit else cache / FERRETDB_VERSION / "ferretdb"
    if not os.access(path, os.X_OK):
        reason = (
            f"FerretDB {FERRETDB_VERSION} is not built at {path}: run `make ferretdb` (a few minutes once)"
        )
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRED_ENV}=1 makes this a failure instead of a skip")
        pytest.skip(reason)
    return str(path)


class FerretDBProcess:
    def __init__(
        self,
        binary: str,
        root: Path,
        name: str,
        *,
        repl_set_name: str | None = None,
        password: str | None = None,
    ) -> None:
        self.binary = binary
        self.name = name
        self.dir = root / name
        self.data = self.dir / "data"
        self.log = self.dir / "ferretdb.log"
        self.repl_set_name = repl_set_name
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"FerretDBProcess({self.name}, port={self.port})"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(HOST, self.port)

    def _command(self) -> list[str]:
        command = [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data}/",
            f"--listen-addr={HOST}:{self.port}",
            # The debug listener defaults to a fixed port (8088): two instances would collide.
            "--debug-addr=-",
            "--telemetry=disable",
            f"--state-dir={self.dir}",
            "--log-level=WARN",
        ]
        if self.repl_set_name:
            command.append(f"--repl-set-name={self.repl_set_name}")
        if self.password is not None:
            command += ["--test-enable-new-auth", "--setup-database=admin", f"--setup-username={ADMIN_USER}"]
        return command

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            # In the environment, not on the command line that `ps` shows.
            env["FERRETDB_SETUP_PASSWORD"] = self.password
        return env

    def start(self) -> FerretDBProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        for _ in range(START_ATTEMPTS):
            # Another process may take the port between probe and bind: then retry with a new one.
            self.port = free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self._command(),
                    cwd=self.dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._env(),
                    start_new_session=True,
                )
            _RUNNING.add(self)
            if self._wait_ready():
                return self
            self.stop()
            if "address already in use" not in self.log.read_text(errors="replace").lower():
                break
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with self.client(timeout_ms=500) as client:
                    client.admin.command("ping")
                    return True
            except PyMongoError:
                time.sleep(0.1)
        return False

    def client(self, *, timeout_ms: int = 5000) -> MongoClient[dict[str, object]]:
        """A direct client to this server (as ``admin`` when it has a password), for seeding and
        reading back in tests."""
        credentials: dict[str, Any] = {}
        if self.password is not None:
            credentials = {"username": ADMIN_USER, "password": self.password, "authSource": "admin"}
        return MongoClient(
            HOST,
            self.port,
            directConnection=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            **credentials,
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    continue
        _RUNNING.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        process.stop()
