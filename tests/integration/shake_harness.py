"""The real redis-shake for the sync tests: where the binary is, and processes of it run by hand.

The binary is the one ``hack/build-redis-shake.sh`` (``make redis-shake``) builds from the vendored
v4.2.0 source, found the way the local runner finds it (``sync.local_runner.find_binary``:
``$MOORAGE_REDIS_SHAKE``, the build cache, ``PATH``). Without it the tests that need it skip, naming
the script; with ``MOORAGE_SHAKE_REQUIRED=1`` (``make test``) they fail instead.

``ShakeProcess`` runs one redis-shake on a rendered ``shake.toml`` (as a user following ``moorage sync
plan`` would), in its own session, and stops it by its own PID: SIGINT twice (redis-shake v4.2.0
ignores SIGTERM, upstream #1001), then SIGKILL. ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) freeze the
real process: its status port stops answering and it stops ACKing to the source.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sync.local_runner import LocalSyncError, cached_binary, find_binary
from sync.observe import fetch_status
from sync.supervisor import AOF_PHASE, ShakeStatus

REQUIRED_ENV = "MOORAGE_SHAKE_REQUIRED"
STOP_TIMEOUT = 10.0
_RUNNING: set[ShakeProcess] = set()


def shake_binary() -> str:
    """The real redis-shake, or a skip (a failure with ``MOORAGE_SHAKE_REQUIRED=1``) naming the script
    that builds it."""
    try:
        return find_binary()
    except LocalSyncError:
        reason = (
            f"redis-shake not found (not in $MOORAGE_REDIS_SHAKE, not at {cached_binary()}, not on PATH): "
            "run `hack/build-redis-shake.sh` (`make redis-shake`; ~40 s once, from the vendored source)"
        )
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRED_ENV}=1 makes this a failure instead of a skip")
        pytest.skip(reason)


def status_port_base(count: int = 3) -> int:
    """A port P with P .. P+count-1 free, for redis-shake status ports (``--status-port-base``).
    redis-shake binds its status port on every interface, so they are probed there."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count <= 65536 and all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


class ShakeProcess:
    """One real redis-shake on ``config`` (its ``advanced.status_port`` must be set), run in the
    config's directory."""

    def __init__(self, binary: str, config: Path) -> None:
        import tomllib

        self.binary = binary
        self.config = config.resolve()
        self.status_port = int(tomllib.loads(self.config.read_text())["advanced"]["status_port"])
        self.output = self.config.parent / "redis-shake.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def __hash__(self) -> int:
        return id(self)

    def start(self) -> ShakeProcess:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config)],
                cwd=self.config.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> ShakeStatus | None:
        """Its status document as the supervisor parses it (None: the port did not answer)."""
        return fetch_status("127.0.0.1", self.status_port, timeout=2.0)

    def document(self) -> dict[str, Any]:
        """Its raw status JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/", timeout=2.0) as response:
            document: dict[str, Any] = json.loads(response.read())
        return document

    def wait_streaming(self, timeout: float = 120.0) -> ShakeStatus:
        """Until its full sync is done and written: ``syncing aof``."""
        deadline = time.monotonic() + timeout
        last: ShakeStatus | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(
                    f"redis-shake exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"
                )
            last = self.status()
            if last is not None and last.phase == AOF_PHASE:
                return last
            time.sleep(0.2)
        raise AssertionError(f"redis-shake not streaming after {timeout}s (last: {last}):\n{self.log_tail()}")

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc is None:
            return
        # SIGINT twice (the first starts a graceful stop that waits for the source's next bytes, the
        # second exits at once), then SIGKILL; SIGCONT wakes a paused one to handle them.
        for wait in (1.0, timeout):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
                os.kill(self.proc.pid, signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _RUNNING.discard(self)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _RUNNING.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_RUNNING):
        with contextlib.suppress(Exception):
            process.kill()
