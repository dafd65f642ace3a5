"""A same-shape load by replication: the target's own RDB loader reads the dump.

When the target is one master (standalone, or a sentinel deployment's master) and the dump is one
RDB object, copying key by key is the slow way: the target can read the RDB itself about as fast as
a ``redis-server`` opening the file. So this process plays, for one full resync, a master that has
exactly the dump's dataset:

1. it listens on the address it reaches the target from (the target must be able to connect back:
   true on one host and in a flat pod network, not through a port-forward);
2. sets the target's ``masterauth`` to a one-time token (the only way in; its prefix also marks a
   master left following a load that died, for ``release_interrupted_load``) and its
   ``repl-diskless-load`` to ``disabled``, has the sentinels hold failovers, and sends it
   ``REPLICAOF <us>``;
3. answers the target's handshake (PING, AUTH, REPLCONF, PSYNC) with ``+FULLRESYNC`` and streams
   the stored object as a diskless payload (``$EOF:<mark>``), so nothing is staged here; the
   target writes it to a temporary file and keeps serving its own data meanwhile;
4. sends the end mark, which makes the target load the file, only after the stored object's
   checksum and the RDB's own CRC64 held (Redis 7 terminates on an RDB it cannot parse);
5. waits until the target has loaded it (``master_link_status:up``): while it is a replica nothing
   expires, so its key count then is exactly the dump's;
6. always ends with ``REPLICAOF NO ONE``, the target's own settings back and the sentinels' hold
   released.

If the target never connects, or ends the sync itself (no room for its temporary file, say), the
caller falls back to the key-by-key load (``Unavailable``). A stored object that fails a checksum
is never completed: without its mark the target discards what it received and still holds its
own data.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO

import anycrc
import hiredis
import redis

from middleware.endpoints import Endpoint
from middleware.engines.base import Progress
from middleware.engines.redis import live
from middleware.errors import OperationError

log = logging.getLogger(__name__)

CHUNK = 4 << 20
# How long the target gets to connect back after REPLICAOF: a refused or filtered path is a fallback
# to the key-by-key load, not a failure, so this stays short.
CONNECT_BACK_TIMEOUT = 10.0
# The handshake is a few round trips; the payload's socket writes block while the target is slow.
HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0
# Waiting for the target to load: as long as it is loading (or still receiving), no limit; a target
# that neither loads nor links up for this long has given up.
STALL_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
# A master pings its replicas (repl-ping-replica-period is 10 s by default); a replica that hears
# nothing for repl-timeout (60 s) drops the link, which a long load must not trip.
PING_INTERVAL = 5.0
MARK_LENGTH = 40
# The one-time masterauth of a load starts with this: a master found following someone with such
# a masterauth was left so by a load that did not finish (``release_interrupted_load``).
TOKEN_PREFIX = "moorage-load-"
_CRC64 = anycrc.Model("CRC64-REDIS")


class Unavailable(Exception):
    """The target could not take the dump by replication; the key-by-key load can still run."""


@dataclass(frozen=True)
class Loaded:
    """Keys per db the target held after its own load (exactly the RDB's), and keys per db with a
    TTL (any of them may expire once the target is a master again)."""

    keys: dict[int, int]
    expiring: dict[int, int]


# Given how long to hold (seconds), keeps the target from being failed over meanwhile.
FailoverHold = Callable[[float], AbstractContextManager[None]]
# Holds last at least this long, and as long as a transfer and load at this rate would take.
MIN_HOLD = 600.0
SLOWEST_LOAD_BYTES_PER_S = 5e6


@contextlib.contextmanager
def _nothing_to_hold(seconds: float) -> Iterator[None]:
    yield


def load_by_replication(
    target: Endpoint,
    password: str | None,
    payload: BinaryIO,
    *,
    size: int,
    progress: Progress,
    hold_failover: FailoverHold = _nothing_to_hold,
) -> Loaded:
    """Make ``target`` load ``payload`` (one RDB) by a full resync from this process."""
    if target.tls is not None:
        # With tls-replication the target would dial this process over TLS, as a member of its
        # own deployment: that would take serving a certificate of its CA from here.
        raise Unavailable(f"{target.address} replicates over TLS, which this loader does not serve")
    control = live.connect(target, password, socket_timeout=SEND_TIMEOUT)
    try:
        role = control.execute_command("ROLE")
        if not role or role[0] != "master":
            raise Unavailable(f"{target.address} is not a master (role {role[0] if role else '?'})")
        here = _local_address(target)
        # The target authenticates to us with a token only this load knows (its own masterauth is
        # what it needs towards its real master after a failover).
        token = TOKEN_PREFIX + secrets.token_hex(32)
        with (
            _listener(here) as listener,
            _configured(control, "masterauth", token),
            # Received into a temporary file, parsed only once complete: the target keeps serving
            # its own data until then, and never parses bytes whose checksums were not checked
            # (Redis 7 terminates on an RDB it cannot parse, whether read from disk or a socket).
            _configured(control, "repl-diskless-load", "disabled"),
            hold_failover(max(MIN_HOLD, size / SLOWEST_LOAD_BYTES_PER_S)),
            _following(control, listener.getsockname()),
        ):
            replica = _accept(listener, token, target)
            with contextlib.closing(replica):
                _serve_full_resync(replica, payload, size, progress)
                return _wait_loaded(control, replica, target, size, progress)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise Unavailable(f"{target.address}: {live.describe_error(error, password)}") from None
    finally:
        control.close()


def release_interrupted_load(endpoint: Endpoint, password: str | None) -> Endpoint | None:
    """A master left following this module's one-shot master by a load whose process died before
    its clean-up: told apart for certain by its ``masterauth``, still the load's token (nothing else
    sets a value with that prefix), and its link to that master down. It takes its role back
    (``REPLICAOF NO ONE``) and its own ``masterauth``; returns the address it followed, or None
    when it is not such a node."""

    def state(client: redis.Redis) -> tuple[live.NodeRole, str]:
        role = live.parse_role(endpoint, client.role())
        return role, str(client.config_get("masterauth").get("masterauth") or "")

    role, masterauth = live.call(endpoint, password, state)
    if not role.is_replica or role.master is None or not masterauth.startswith(TOKEN_PREFIX):
        return None
    if role.link in ("sync", "connected"):
        # Linked to the load's process: a load in progress (the operator's periodic heal may run
        # meanwhile), not an interrupted one, whose master is gone and never links.
        return None
    log.warning(
        "redis %s still follows %s for a restore that did not finish: making it a master again",
        endpoint.address,
        role.master.address,
    )

    def release(client: redis.Redis) -> None:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.config_set("masterauth", password or "")

    live.call(endpoint, password, release)
    return role.master


def _local_address(target: Endpoint) -> str:
    """The address this process reaches the target from: the one the target can reach back."""
    try:
        with socket.create_connection((target.host, target.port), timeout=5.0) as probe:
            return str(probe.getsockname()[0])
    except OSError as error:
        raise Unavailable(f"cannot reach {target.address}: {error}") from None


@contextlib.contextmanager
def _listener(host: str) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(1)
        yield listener
    finally:
        listener.close()


@contextlib.contextmanager
def _configured(control: redis.Redis, name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` on the target while inside, its own value put back whatever happens."""
    original = str(control.config_get(name).get(name) or "")
    control.config_set(name, value)
    try:
        yield
    finally:
        _always(lambda: control.config_set(name, original), f"putting {name} back")


@contextlib.contextmanager
def _following(control: redis.Redis, address: tuple[Any, ...]) -> Iterator[None]:
    control.execute_command("REPLICAOF", address[0], address[1])
    try:
        yield
    finally:
        _always(lambda: _promote(control), "REPLICAOF NO ONE")


def _promote(control: redis.Redis) -> None:
    # A target still loading answers -LOADING to everything: it becomes a master once it is done.
    deadline = time.monotonic() + STALL_TIMEOUT
    while True:
        try:
            control.execute_command("REPLICAOF", "NO", "ONE")
            return
        except redis.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_INTERVAL)


def _always(step: Callable[[], object], what: str) -> None:
    """A clean-up step that must be tried even after a failure, and must not hide it."""
    try:
        step()
    except (redis.RedisError, OSError) as error:
        log.error("redis load by replication: %s failed: %s", what, error)


def _accept(listener: socket.socket, token: str, target: Endpoint) -> socket.socket:
    """The target's connection (the first one to authenticate with the token)."""
    deadline = time.monotonic() + CONNECT_BACK_TIMEOUT
    host, port = listener.getsockname()[:2]
    here = f"{host}:{port}"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(
                f"{target.address} did not connect back to {here} within {CONNECT_BACK_TIMEOUT:.0f}s "
                "(not reachable from the target: a port-forward, or a network policy)"
            )
        listener.settimeout(remaining)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(HANDSHAKE_TIMEOUT)
        if _handshake(conn, token):
            return conn
        conn.close()


def _handshake(conn: socket.socket, token: str) -> bool:
    """Answer a replica's handshake up to its PSYNC; False (and nothing served) without the token."""
    reader = hiredis.Reader()
    authenticated = False
    while True:
        request = reader.gets()
        if request is False:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return False
            if not chunk:
                return False
            reader.feed(chunk)
            continue
        if not isinstance(request, list) or not request:
            return False
        name = bytes(request[0]).upper()
        if name == b"PING":
            conn.sendall(b"+PONG\r\n" if authenticated else b"-NOAUTH Authentication required.\r\n")
        elif name == b"AUTH":
            authenticated = secrets.compare_digest(bytes(request[-1]), token.encode())
            if not authenticated:
                conn.sendall(b"-WRONGPASS invalid password\r\n")
                return False
            conn.sendall(b"+OK\r\n")
        elif not authenticated:
            conn.sendall(b"-NOAUTH Authentication required.\r\n")
            return False
        elif name == b"REPLCONF":
            conn.sendall(b"+OK\r\n")
        elif name in (b"PSYNC", b"SYNC"):
            return True
        else:
            conn.sendall(b"-ERR only a replica's handshake is served here\r\n")


def _serve_full_resync(conn: socket.socket, payload: BinaryIO, size: int, progress: Progress) -> None:
    """The payload as a diskless transfer; its end mark (what makes the target load it) is sent
    only after the stored object's checksum (checked by the source as its last byte is read) and
    the RDB's own CRC64 both held. Errors reading the payload are raised as they are."""
    replid = secrets.token_hex(20)
    mark = secrets.token_hex(MARK_LENGTH // 2).encode()
    conn.settimeout(SEND_TIMEOUT)
    checksum = RdbChecksum()
    _send(conn, b"+FULLRESYNC %s 0\r\n$EOF:%s\r\n" % (replid.encode(), mark))
    sent = 0
    while chunk := payload.read(CHUNK):
        checksum.feed(chunk)
        _send(conn, chunk)
        sent += len(chunk)
        progress("sending the RDB to the target", sent, max(size, sent))
    checksum.verify()
    _send(conn, mark)


def _send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError as error:
        raise Unavailable(f"the target ended the transfer: {error}") from None


class RdbChecksum:
    """An RDB's own integrity, checked as it streams: the ``REDIS`` magic, and the CRC64 (Jones,
    as Redis computes it) of every byte before the last 8, which hold it (zero when the server that
    wrote it had ``rdbchecksum no``). Redis itself only finds a bad checksum after parsing, and a
    bad structure before that ends the process: this catches a file corrupted before it was stored
    (the store's own checksum would match it) while the target has not parsed a byte."""

    TAIL = 8

    def __init__(self) -> None:
        self._crc: int | None = None
        self._tail = b""
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < 5:
            self._head += chunk[: 5 - len(self._head)]
        data = self._tail + chunk
        body, self._tail = data[: -self.TAIL], data[-self.TAIL :]
        if body:
            self._crc = _CRC64.calc(body) if self._crc is None else _CRC64.calc(body, self._crc)

    def verify(self) -> None:
        if self._head != b"REDIS" or len(self._tail) < self.TAIL:
            raise OperationError("the stored object is not an RDB file (no REDIS header)")
        stored = int.from_bytes(self._tail, "little")
        if stored and stored != (self._crc or 0):
            raise OperationError(
                "the RDB's own CRC64 does not match its content: it was corrupt before it was stored"
            )


def _wait_loaded(
    control: redis.Redis, replica: socket.socket, target: Endpoint, size: int, progress: Progress
) -> Loaded:
    """Until the target has loaded the payload and links up; its key counts then (nothing expires on
    a replica, so they are the RDB's). Progress: the bytes the target has parsed so far."""
    replica.setblocking(False)
    stalled_since = time.monotonic()
    pinged = time.monotonic()
    while True:
        _drain(replica, target)
        if time.monotonic() - pinged > PING_INTERVAL:
            with contextlib.suppress(BlockingIOError):
                replica.send(b"*1\r\n$4\r\nPING\r\n")
            pinged = time.monotonic()
        try:
            info = control.info("replication")
        except redis.BusyLoadingError:
            stalled_since = time.monotonic()
            time.sleep(POLL_INTERVAL)
            continue
        if info.get("master_link_status") == "up":
            progress("the target is loading the RDB", size, size)
            return _counts(control.info("keyspace"))
        if int(info.get("master_sync_in_progress", 0)):
            stalled_since = time.monotonic()
            with contextlib.suppress(redis.RedisError):
                loading = control.info("persistence")
                if int(loading.get("loading", 0)):
                    parsed = int(loading.get("loading_loaded_bytes", 0))
                    progress("the target is loading the RDB", min(parsed, size), size)
        elif time.monotonic() - stalled_since > STALL_TIMEOUT:
            raise Unavailable(
                f"{target.address} neither loaded the RDB nor linked up in {STALL_TIMEOUT:.0f}s"
            )
        time.sleep(POLL_INTERVAL)


def _drain(replica: socket.socket, target: Endpoint) -> None:
    """Read the target's REPLCONF ACKs; its closing the connection means it gave the sync up."""
    while True:
        try:
            chunk = replica.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            raise Unavailable(f"{target.address} dropped the sync: {error}") from None
        if not chunk:
            raise Unavailable(f"{target.address} ended the sync (its log says why)")


def _counts(keyspace: dict[str, Any]) -> Loaded:
    keys: dict[int, int] = {}
    expiring: dict[int, int] = {}
    for name, value in keyspace.items():
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict):
            db = int(name[2:])
            if int(value.get("keys", 0)):
                keys[db] = int(value["keys"])
            if int(value.get("expires", 0)):
                expiring[db] = int(value["expires"])
    return Loaded(keys, expiring)
