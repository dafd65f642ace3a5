"""Real redis-server data nodes and sentinels on 127.0.0.1 for the Sentinel integration tests.

Each process gets a fresh directory (sentinel rewrites its config file), runs in the foreground
(``daemonize no``) in its own session, and is stopped by its own PID: SIGTERM, then SIGKILL after a
deadline. ``SentinelHarness.stop_all`` is meant for a fixture finalizer; an atexit hook catches what
an interrupted run leaves behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import pytest
import redis

from middleware.endpoints import Endpoint

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
T = TypeVar("T")

_RUNNING: set[RedisProcess] = set()


def _binary(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)


def require_binaries() -> tuple[str, str]:
    """Paths of redis-server and redis-sentinel, or a loud, actionable skip."""
    server = _binary("redis-server")
    if server is None:
        pytest.skip("redis-server not found: run `make setup` (apt-get install redis-server redis-sentinel)")
    sentinel = _binary("redis-sentinel")
    if sentinel is None:
        pytest.skip("redis-sentinel not found: run `make setup` (apt-get install redis-sentinel)")
    return server, sentinel


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisProcess:
    """One redis-server (data node) or redis-sentinel process; port and directory survive restarts."""

    def __init__(
        self,
        name: str,
        root: Path,
        kind: Literal["data", "sentinel"],
        binary: str,
        password: str | None,
        *,
        config_file: bool = True,
    ) -> None:
        self.name = name
        self.kind = kind
        self.binary = binary
        self.password = password
        self.config_file = config_file
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=False)
        self.conf = self.dir / ("sentinel.conf" if kind == "sentinel" else "redis.conf")
        self.log = self.dir / "server.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_once = False

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(HOST, self.port)

    @property
    def auth(self) -> str | None:
        return self.password

    def _directives(self) -> list[tuple[str, str]]:
        base = [
            ("port", str(self.port)),
            ("bind", HOST),
            ("dir", str(self.dir)),
            ("daemonize", "no"),
            ("protected-mode", "no"),
            ("logfile", '""'),
        ]
        if self.kind == "sentinel":
            # As in the pods: sentinels require the same password and use it towards their peers.
            return base + ([("requirepass", _quote(self.password))] if self.password else [])
        base += [
            ("save", '""'),
            ("appendonly", "no"),
            # 7.0 defaults to diskless sync with a 5 s delay; replicas should sync at once.
            ("repl-diskless-sync", "yes"),
            ("repl-diskless-sync-delay", "0"),
        ]
        if self.password:
            base += [("requirepass", _quote(self.password)), ("masterauth", _quote(self.password))]
        return base

    def _command(self) -> list[str]:
        if self.config_file:
            return [self.binary, str(self.conf)]
        args = [self.binary]
        for key, value in self._directives():
            args += [f"--{key}", "" if value == '""' else value.strip('"')]
        return args

    def start(self) -> RedisProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running")
        attempts = 1 if self.started_once else 5
        for _ in range(attempts):
            if not self.started_once:
                # Another test (or helper) may grab the port between probe and bind: retry with a new one.
                self.port = free_port()
                if self.config_file:
                    self.conf.write_text("".join(f"{k} {v}\n" for k, v in self._directives()))
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self._command(),
                    cwd=self.dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            _RUNNING.add(self)
            if self._wait_ready():
                self.started_once = True
                return self
            self.stop()
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with self.client(socket_timeout=0.5) as client:
                    if client.ping():
                        return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    def client(self, **kw: float) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.auth,
            decode_responses=True,
            socket_timeout=kw.get("socket_timeout", 5.0),
            socket_connect_timeout=1.0,
        )

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> bool:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
        if not self._signal_and_wait(signal.SIGTERM, timeout):
            self._signal_and_wait(signal.SIGKILL, timeout)
        _RUNNING.discard(self)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save, no goodbye to replicas or sentinels."""
        self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)
        _RUNNING.discard(self)

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        process.kill()


@dataclass
class Deployment:
    master: RedisProcess
    replicas: list[RedisProcess]
    sentinels: list[RedisProcess]

    @property
    def data(self) -> list[RedisProcess]:
        return [self.master, *self.replicas]

    @property
    def data_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.data]

    @property
    def replica_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.replicas]

    @property
    def sentinel_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.sentinels]

    def by_endpoint(self, endpoint: Endpoint) -> RedisProcess:
        return next(p for p in [*self.data, *self.sentinels] if p.endpoint == endpoint)


class SentinelHarness:
    def __init__(self, root: Path, password: str | None) -> None:
        self.server, self.sentinel_binary = require_binaries()
        self.root = root
        self.password = password
        self.processes: list[RedisProcess] = []

    def data_node(self, name: str, *, config_file: bool = True) -> RedisProcess:
        process = RedisProcess(name, self.root, "data", self.server, self.password, config_file=config_file)
        self.processes.append(process)
        return process.start()

    def sentinel(self, name: str) -> RedisProcess:
        process = RedisProcess(name, self.root, "sentinel", self.sentinel_binary, self.password)
        self.processes.append(process)
        return process.start()

    def deployment(self, replicas: int = 2, sentinels: int = 3) -> Deployment:
        """Unwired processes: every data node starts as an empty master, sentinels monitor nothing."""
        return Deployment(
            master=self.data_node("data-0"),
            replicas=[self.data_node(f"data-{i}") for i in range(1, replicas + 1)],
            sentinels=[self.sentinel(f"sentinel-{i}") for i in range(sentinels)],
        )

    def stop_all(self) -> None:
        errors: list[str] = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{process.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


def wait_until(
    probe: Callable[[], T], accept: Callable[[T], bool], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``probe`` until ``accept`` holds; bounded, and the failure shows the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            last_error = None
            if accept(last):
                return last
        except Exception as exc:  # a node mid-restart; keep polling until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}; last: {last!r}; error: {last_error!r}"
    )


def logs(processes: Iterable[RedisProcess]) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in processes)
