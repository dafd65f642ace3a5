"""Real engine processes on 127.0.0.1 for integration tests: the pattern later engines reuse.

- ``require_binary`` skips loudly (with the command that fixes it) when a binary is missing.
- ``free_port`` binds 127.0.0.1:0; nothing ever listens on another interface.
- ``RedisProcess`` runs ``redis-server`` (a cluster node, a plain data node, or a sentinel) in the
  foreground (``daemonize no``) in its own directory and session, waits for PING, and is stopped by
  its own PID: SIGTERM, then SIGKILL after a deadline. ``kill()`` simulates a crash, ``restart()``
  brings the same node (same dir, config, nodes.conf, AOF) back, optionally on new ports, which is
  what a pod rescheduled with a new IP looks like to its peers.
- ``RedisNodes`` owns a group of processes and stops them all; an atexit hook catches whatever an
  interrupted run leaves behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from middleware.endpoints import Endpoint

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 5
T = TypeVar("T")

_RUNNING: set[RedisProcess] = set()


def local_member_records(state_dir: Path, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    """What the local runtime records of a deployment's members (``pid``, ``ports``, ``exporter``),
    read from its state file: the PIDs the fault tests signal and the ports they wait on."""
    state = json.loads((state_dir / namespace / name / "state.json").read_text())
    return dict(state["members"])


def require_binary(name: str, apt_package: str) -> str:
    """The binary's path, or a skip that says exactly how to get it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        pytest.skip(f"{name} not found: run `make setup` (apt-get install {apt_package})")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair(offset: int = 10000) -> int:
    """A port P with P + ``offset`` free too (for configs that rely on Redis's default bus port)."""
    for _ in range(200):
        port = free_port()
        if port + offset < 65536 and _bindable(port + offset):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisProcess:
    """One redis-server; its directory (config, nodes.conf, AOF) survives restarts, its ports may not.

    ``cluster=True`` makes a cluster node, ``sentinel=True`` a sentinel (``binary`` is then
    redis-sentinel), neither a plain data node. ``config_file=False`` passes the directives on the
    command line instead, so the server runs without a config file (CONFIG REWRITE fails). ``extra``
    directives, written as in redis.conf, override or add to the defaults.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        binary: str,
        *,
        cluster: bool = False,
        password: str | None,
        sentinel: bool = False,
        config_file: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        if sentinel and (cluster or not config_file):
            raise ValueError("a sentinel is never a cluster node and always needs its config file")
        self.name = name
        self.binary = binary
        self.cluster = cluster
        self.sentinel = sentinel
        self.config_file = config_file
        self.password = password
        self.extra = dict(extra or {})
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=False)
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log = self.dir / "server.log"
        self.port = 0
        self.bus_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"RedisProcess({self.name}, {HOST}:{self.port}, running={self.running})"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(HOST, self.port)

    def _directives(self) -> dict[str, str]:
        """Directive -> value as written in a config file (quoted where needed)."""
        directives = {
            "port": str(self.port),
            "bind": HOST,
            "dir": _quote(str(self.dir)),
            "daemonize": "no",
            "protected-mode": "no",
            "logfile": '""',
        }
        if self.sentinel:
            # As in the pods: sentinels require the same password and use it towards their peers.
            if self.password:
                directives["requirepass"] = _quote(self.password)
            return directives | self.extra
        directives |= {
            "save": '""',
            "appendonly": "yes",
            "enable-debug-command": "local",
            # 7.0 defaults to diskless sync after a 5 s delay; replicas should sync at once.
            "repl-diskless-sync": "yes",
            "repl-diskless-sync-delay": "0",
        }
        if self.cluster:
            directives |= {
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                # Explicit, so nothing depends on port + 10000 being free.
                "cluster-port": str(self.bus_port),
                "cluster-node-timeout": "2000",
                "cluster-announce-hostname": HOST,
                "cluster-preferred-endpoint-type": "hostname",
            }
        if self.password:
            directives |= {"requirepass": _quote(self.password), "masterauth": _quote(self.password)}
        return directives | self.extra

    def _config(self) -> str:
        return "".join(f"{key} {value}\n" for key, value in self._directives().items())

    def _command(self) -> list[str]:
        if self.config_file:
            return [self.binary, str(self.conf)]
        args = [self.binary]
        for key, value in self._directives().items():
            # Unquoted here: redis-server quotes command-line values itself.
            args += [f"--{key}", *shlex.split(value)]
        return args

    def start(self, *, new_ports: bool = False) -> RedisProcess:
        """Start (or start again). Ports are picked on the first start or when ``new_ports``.

        The config file is written only then: otherwise what the server rewrote (CONFIG REWRITE,
        sentinel state) or a test edited survives the restart, as a pod's config volume would.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        pick = new_ports or not self.port
        for _ in range(START_ATTEMPTS if pick else 1):
            if pick:
                # Another process may take a port between probe and bind: then retry with new ones.
                self.port = free_port()
                self.bus_port = free_port()
                if self.config_file:
                    self.conf.write_text(self._config())
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
            except redis.BusyLoadingError:
                pass  # replaying the AOF after a restart
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    def client(self, *, socket_timeout: float = 5.0) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=1.0,
            protocol=2,
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
        """SIGTERM (a clean shutdown that flushes the AOF), then SIGKILL after ``timeout``."""
        if not self._signal_and_wait(signal.SIGTERM, timeout):
            self._signal_and_wait(signal.SIGKILL, timeout)
        _RUNNING.discard(self)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown, no goodbye to peers."""
        self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)
        _RUNNING.discard(self)

    def restart(self, *, new_ports: bool = False) -> RedisProcess:
        self.stop()
        return self.start(new_ports=new_ports)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class RedisNodes:
    """Starts redis-server processes under one root and guarantees they are all stopped."""

    def __init__(self, root: Path, *, password: str | None = None) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.root = root
        self.password = password
        self.processes: list[RedisProcess] = []

    def add(self, name: str, *, binary: str | None = None, **options: Any) -> RedisProcess:
        """Start one more process in the group (``options`` as for ``RedisProcess``)."""
        process = RedisProcess(name, self.root, binary or self.binary, password=self.password, **options)
        self.processes.append(process)
        return process.start()

    def start(self, count: int, *, cluster: bool = True, prefix: str = "node") -> list[RedisProcess]:
        return [self.add(f"{prefix}-{len(self.processes)}", cluster=cluster) for _ in range(count)]

    def by_endpoint(self, endpoint: Endpoint) -> RedisProcess:
        return next(p for p in self.processes if p.endpoint == endpoint)

    def stop_all(self) -> None:
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{process.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def logs(self) -> str:
        return logs(self.processes)


def logs(processes: Iterable[RedisProcess]) -> str:
    return "\n".join(f"--- {p.name} ({p.port}) ---\n{p.log_tail()}" for p in processes)


def start_redis_nodes(
    tmp_path: Path, count: int, *, cluster: bool, password: str | None
) -> tuple[RedisNodes, list[RedisProcess]]:
    """Start ``count`` nodes; the caller must ``stop_all()`` the returned group (or use ``redis_nodes``)."""
    nodes = RedisNodes(tmp_path, password=password)
    try:
        return nodes, nodes.start(count, cluster=cluster)
    except BaseException:
        nodes.stop_all()
        raise


@contextlib.contextmanager
def redis_nodes(
    tmp_path: Path, count: int, *, cluster: bool, password: str | None
) -> Iterator[tuple[RedisNodes, list[RedisProcess]]]:
    nodes, started = start_redis_nodes(tmp_path, count, cluster=cluster, password=password)
    try:
        yield nodes, started
    finally:
        nodes.stop_all()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        process.kill()


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
