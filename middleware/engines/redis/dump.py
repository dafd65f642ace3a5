"""Redis DataDump / DataLoad: RDB snapshots out, keys in, across any topology.

Dump: one RDB object per shard, read through the replication protocol (``rdb_stream.py``) from a
healthy replica of the shard when there is one, else from its master. Each object is a point-in-time
snapshot of its shard (the node forks); shards are not mutually consistent.

Load, same shape (one RDB into one master): the target reads the RDB itself by replication
(``replica_load.py``). Any other shape, or when that is not possible: every object is staged to a
temporary file and opened by a scratch ``redis-server`` (no persistence, on a unix socket in a
private directory), then copied key by key with ``DUMP``/``PTTL`` and ``RESTORE ... REPLACE`` to
the target master owning the key (by hash slot on a cluster), after ``FLUSHALL`` on every target
master. So a dump of any shape loads into any shape, and a load that was interrupted is repaired by
running it again.

The topology decisions (which node is a shard's master, who owns a slot) are made by the engine and
passed in as plain endpoints; this module only moves bytes and keys.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import redis
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.base import DataSource, DumpObject, LoadReport, Progress, StoredObject, no_progress
from middleware.engines.redis import live
from middleware.engines.redis.rdb_stream import ReplicationRdbStream
from middleware.engines.redis.replica_load import FailoverHold, Unavailable, load_by_replication
from middleware.engines.redis.resp import RespConnection, RespError, pack
from middleware.engines.redis.slots import TOTAL_SLOTS, SlotRange
from middleware.engines.streams import read_ahead
from middleware.errors import NotReady, OperationError

log = logging.getLogger(__name__)

CHUNK = 4 << 20
BATCH = 1000
# Batches read from the scratch server ahead of the one being restored (memory: this many batches).
READ_AHEAD = 2
# Batches sent to the target before the oldest one's answers are read (memory: at most this many
# batches' commands held until answered).
IN_FLIGHT = 2
# A key restored with less TTL than this may be gone by the time the restore is verified.
EXPIRY_GRACE_MS = 15 * 60 * 1000
# Bulk pipelines (FLUSHALL of a large dataset, RESTORE of big values) take longer than a probe.
BULK_TIMEOUT = 120.0
SCRATCH_START_TIMEOUT = 30.0
SCRATCH_STOP_TIMEOUT = 10.0
# How long a load by replication waits for the master's replicas to take the loaded data: a full
# resync of the same RDB the master just parsed, so about as long as that load.
REPLICA_RESYNC_TIMEOUT = 120.0
# How a load reaches a target of one master: "auto" (by replication when the dump is one RDB, key by
# key otherwise or when the target cannot take it so) or "keys" (always key by key: for a network
# where the target cannot connect back to the restoring process, it saves waiting for that).
LOAD_METHOD_ENV = "MOORAGE_REDIS_LOAD"
LOAD_METHODS = ("auto", "keys")
# Enough for any db index a source could use (the catalog allows up to 64 databases).
SCRATCH_DATABASES = 64
_DB = re.compile(r"^db(\d+)$")


# --- what the engine decides ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSource:
    """Where one shard's snapshot is read: ``node`` (a healthy replica, else the master)."""

    name: str  # the object name: shard-<i>.rdb, or data.rdb
    node: Endpoint
    role: str
    shard: int | None = None
    slots: tuple[SlotRange, ...] = ()


@dataclass(frozen=True)
class LoadTarget:
    """Every master of the target; on a cluster, ``slot_owner[slot]`` indexes ``masters``.
    ``hold_failover`` keeps sentinels from failing the master over while it briefly follows this
    process (a load by replication); ``replicas`` are the master's replicas, which a load by
    replication leaves on the history from before it until they resynchronise."""

    masters: tuple[Endpoint, ...]
    slot_owner: tuple[int, ...] | None = None
    hold_failover: FailoverHold | None = None
    replicas: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        if not self.masters:
            raise NotReady("the target has no reachable master")
        if self.slot_owner is not None and len(self.slot_owner) != TOTAL_SLOTS:
            raise OperationError(f"the target cluster serves {len(self.slot_owner)}/{TOTAL_SLOTS} slots")

    @property
    def is_cluster(self) -> bool:
        return self.slot_owner is not None

    def master_for(self, key: bytes) -> int:
        return 0 if self.slot_owner is None else self.slot_owner[key_slot(key)]


# --- counts ----------------------------------------------------------------------------------------


def keyspace_counts(keyspace: Mapping[str, Any]) -> dict[int, int]:
    """``INFO keyspace`` (as redis-py parses it) or a dump's ``{"db0": keys}`` meta as
    ``{db index: keys}``, empty dbs left out."""
    counts: dict[int, int] = {}
    for name, value in keyspace.items():
        match = _DB.match(str(name))
        keys = int(value.get("keys", 0)) if isinstance(value, Mapping) else int(value)
        if match and keys:
            counts[int(match.group(1))] = keys
    return counts


def counts_by_name(per_db: Mapping[int, int]) -> dict[str, int]:
    """The shape ``data_inventory`` and ``LoadReport.counts`` share."""
    counts = {"keys": sum(per_db.values())}
    counts |= {f"db{db}/keys": n for db, n in sorted(per_db.items()) if n}
    return counts


def inventory(masters: Iterable[Endpoint], password: str | None) -> dict[str, int]:
    total: dict[int, int] = {}
    for endpoint in masters:
        keyspace = live.call(endpoint, password, lambda c: c.info("keyspace"))
        for db, n in keyspace_counts(keyspace).items():
            total[db] = total.get(db, 0) + n
    return counts_by_name(total)


# --- compatibility -------------------------------------------------------------------------------


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?", version)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def dump_facts(metas: Iterable[Mapping[str, Any]]) -> tuple[str | None, dict[int, int]]:
    """The newest Redis version and the per-db key counts recorded across a dump's objects."""
    newest: str | None = None
    per_db: dict[int, int] = {}
    for meta in metas:
        version = meta.get("redisVersion")
        parsed = _major_minor(version) if isinstance(version, str) else None
        if parsed is not None and (newest is None or parsed > (_major_minor(newest) or (0, 0))):
            newest = str(version)
        for db, n in keyspace_counts(meta.get("keyspace") or {}).items():
            per_db[db] = per_db.get(db, 0) + n
    return newest, per_db


def incompatibility(
    metas: Sequence[Mapping[str, Any]],
    *,
    target_version: str,
    target_is_cluster: bool,
    target_databases: int,
    fallback_version: str | None = None,
) -> str | None:
    """Why a dump with these object metas cannot be loaded into the target (None: it can)."""
    version, per_db = dump_facts(metas)
    version = version or fallback_version
    ours, theirs = _major_minor(target_version), _major_minor(version or "")
    if ours is not None and theirs is not None and theirs > ours:
        return (
            f"the backup was taken from Redis {version}, newer than the target's {target_version}: "
            "an older Redis cannot read its RDB format"
        )
    others = sorted(db for db in per_db if db != 0)
    if target_is_cluster and others:
        names = ", ".join(f"db{db} ({per_db[db]} keys)" for db in others)
        return f"the backup has keys outside db0 ({names}), and a Redis cluster has db0 only"
    beyond = [db for db in others if db >= target_databases]
    if beyond:
        names = ", ".join(f"db{db}" for db in beyond)
        return f"the backup has keys in {names}, the target has only {target_databases} databases"
    return None


# --- dump ----------------------------------------------------------------------------------------


def dump_shards(
    sources: Sequence[ShardSource], password: str | None, progress: Progress = no_progress
) -> Iterator[DumpObject]:
    """One object per shard, each snapshot taken only when the caller asks for it (``next``)."""
    for index, source in enumerate(sources):
        progress(f"snapshot of {source.name} from {source.role} {source.node.address}", index, len(sources))
        server = live.call(source.node, password, lambda c: c.info("server"))
        keyspace = live.call(source.node, password, lambda c: c.info("keyspace"))
        stream = ReplicationRdbStream(source.node, password)
        meta: dict[str, Any] = {
            "format": "rdb",
            "node": source.node.address,
            "role": source.role,
            "redisVersion": str(server.get("redis_version", "")),
            "masterReplOffset": stream.offset,
            "transfer": stream.transfer,
            "keyspace": {f"db{db}": n for db, n in sorted(keyspace_counts(keyspace).items())},
        }
        if source.shard is not None:
            meta["shard"] = source.shard
            meta["slots"] = [list(r) for r in source.slots]
        # BufferedReader: callers read in their own chunk sizes, the socket is read in CHUNK.
        yield DumpObject(source.name, cast(BinaryIO, io.BufferedReader(stream, CHUNK)), meta)
    progress("snapshots taken", len(sources), len(sources))


# --- load ----------------------------------------------------------------------------------------


class ScratchServer:
    """A throwaway ``redis-server`` that opens one staged RDB file; stopped by its own PID.

    It listens on a unix socket only, inside a directory only we can read, so neither the data nor
    the server is reachable by anyone else, and no port can be taken from under it.
    """

    def __init__(self, directory: Path, rdb_name: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise OperationError("restore needs redis-server on PATH to open the backup's RDB files")
        self.directory = directory
        self.socket = directory / "scratch.sock"
        self.log = directory / "scratch.log"
        command = [
            binary,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(directory),
            "--dbfilename", rdb_name,
            "--save", "",
            "--appendonly", "no",
            "--databases", str(SCRATCH_DATABASES),
            "--daemonize", "no",
            "--enable-debug-command", "local",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=BULK_TIMEOUT, protocol=2)

    def wait_loaded(self, what: str) -> None:
        deadline = time.monotonic() + SCRATCH_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise OperationError(f"{what}: redis-server could not open the RDB: {self._last_log_lines()}")
            try:
                if self.client.info("persistence").get("loading") == 0:
                    break
                # Still loading: a big RDB is allowed as long as the process lives.
                deadline = time.monotonic() + SCRATCH_START_TIMEOUT
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise OperationError(f"{what}: scratch redis-server did not start") from None
            except redis.BusyLoadingError:
                deadline = time.monotonic() + SCRATCH_START_TIMEOUT
            time.sleep(0.05)
        # Keys must not vanish behind our back while we copy: only our own reads expire them, and
        # then the final DBSIZE counts exactly the keys that were restored.
        self.client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")

    def _last_log_lines(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(line.split(" ", 4)[-1] for line in lines[-3:]) or "no log"

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(SCRATCH_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _die_with_parent() -> None:
    """Runs in the scratch server's process before exec: its own session (a Ctrl-C of the CLI is the
    CLI's to handle), and SIGKILL when the restoring process dies, so a restore that is killed
    half-way never leaves a scratch server (and a copy of the backup's data) running. Linux only;
    elsewhere the ``finally`` that stops it is the only guard."""
    os.setsid()
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class _Loader:
    target: LoadTarget
    password: str | None
    progress: Progress
    total: int
    done: int = 0
    clients: dict[tuple[int, int], RespConnection] = field(default_factory=dict)
    # Keys restored with so little TTL left that they may expire before the restore is verified.
    short_lived: dict[int, int] = field(default_factory=dict)
    # Batches sent and not yet answered, oldest first: (db, what, [(master, commands)]).
    in_flight: deque[tuple[int, str, list[tuple[int, list[Sequence[bytes]]]]]] = field(default_factory=deque)

    def client(self, master: int, db: int) -> RespConnection:
        key = (master, db)
        if key not in self.clients:
            endpoint = self.target.masters[master]
            try:
                self.clients[key] = RespConnection(endpoint, self.password, db=db, timeout=BULK_TIMEOUT)
            except RespError as error:
                raise OperationError(f"connecting to {endpoint.address}: {error}") from None
            except OSError as error:
                raise NotReady(f"connecting to {endpoint.address}: {error}") from None
        return self.clients[key]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def flush(self) -> None:
        for index, endpoint in enumerate(self.target.masters):
            try:
                self.client(index, 0).pipeline([(b"FLUSHALL",)])
            except OSError as error:
                raise NotReady(f"FLUSHALL on {endpoint.address}: {error}") from None

    def copy(self, scratch: ScratchServer, what: str) -> dict[int, int]:
        """Copy every key of the scratch server; returns keys per db that were restored."""
        per_db: dict[int, int] = {}
        for db in sorted(keyspace_counts(scratch.client.info("keyspace"))):
            with (
                RespConnection(str(scratch.socket), db=db, timeout=BULK_TIMEOUT) as source,
                # Closed (its reader stopped) before the connection is, even when a restore fails.
                contextlib.closing(_read_ahead(source)) as batches,
            ):
                for keys, replies in batches:
                    self._restore_batch(db, keys, replies, what)
                self._settle(0)
                (count,) = source.pipeline([(b"DBSIZE",)])
                per_db[db] = int(count)
        return per_db

    def _restore_batch(self, db: int, keys: list[bytes], replies: list[Any], what: str) -> None:
        by_master: dict[int, list[Sequence[bytes]]] = {}
        for i, key in enumerate(keys):
            ttl, payload = replies[2 * i], replies[2 * i + 1]
            if payload is None or ttl == -2:
                continue  # expired while we read it: not part of the data any more
            if 0 < ttl < EXPIRY_GRACE_MS:
                self.short_lived[db] = self.short_lived.get(db, 0) + 1
            restore = (b"RESTORE", key, b"%d" % max(int(ttl), 0), payload, b"REPLACE")
            by_master.setdefault(self.target.master_for(key), []).append(restore)
        # Sent to every master before any answer is read, and answered one batch later: each
        # master restores this batch while the next one is prepared (and a cluster's masters work
        # side by side). A Redis server buffers its replies rather than stop reading, so writing
        # ahead of reading cannot deadlock.
        for master, commands in by_master.items():
            try:
                self.client(master, db).send(pack(commands))
            except OSError as error:
                raise NotReady(
                    f"{what}: restoring into {self.target.masters[master].address}: {error}"
                ) from None
        self.in_flight.append((db, what, list(by_master.items())))
        self._settle(IN_FLIGHT - 1)

    def _settle(self, keep: int) -> None:
        """Read the answers of the oldest batches until at most ``keep`` are unanswered."""
        while len(self.in_flight) > keep:
            db, what, sent = self.in_flight.popleft()
            for master, commands in sent:
                endpoint = self.target.masters[master].address
                try:
                    results = self.client(master, db).receive(len(commands))
                except OSError as error:
                    raise NotReady(f"{what}: restoring into {endpoint}: {error}") from None
                failed = [
                    (c[1], r) for c, r in zip(commands, results, strict=True) if isinstance(r, Exception)
                ]
                if failed:
                    first_key, first_error = failed[0]
                    raise OperationError(
                        f"{what}: RESTORE of {len(failed)} keys into {endpoint} db{db} failed, first "
                        f"{first_key[:60]!r}: {first_error}"
                    )
                self.done += len(commands)
            self.progress("loading keys", self.done, max(self.total, self.done))


def _read_ahead(
    source: RespConnection, depth: int = READ_AHEAD
) -> Generator[tuple[list[bytes], list[Any]], None, None]:
    """Batches of keys with their PTTL and DUMP replies, read from the scratch server by a thread
    up to ``depth`` batches ahead (``streams.read_ahead``): reading the next batch overlaps
    restoring this one into the target, and memory stays bounded by ``depth`` batches. The thread
    owns ``source`` until this generator ends; an error there is raised here."""

    def batches() -> Iterator[tuple[list[bytes], list[Any]]]:
        for keys in _scan_batches(source):
            yield keys, source.pipeline([c for key in keys for c in ((b"PTTL", key), (b"DUMP", key))])

    return read_ahead(batches(), depth, "moorage-redis-read-ahead")


def _scan_batches(client: RespConnection) -> Iterator[list[bytes]]:
    cursor = b"0"
    while True:
        cursor, keys = client.pipeline([(b"SCAN", cursor, b"COUNT", b"%d" % BATCH)])[0]
        if keys:
            yield list(keys)
        if cursor == b"0":
            return


def _stage(source: DataSource, obj: StoredObject, path: Path) -> None:
    """Copy one object to a local file in bounded chunks; a checksum error raises at its end."""
    stream = source.open(obj.name)
    try:
        with path.open("wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
    finally:
        stream.close()


def load_method() -> str:
    """``$MOORAGE_REDIS_LOAD`` (default ``auto``), refused when it is not a known method."""
    method = os.environ.get(LOAD_METHOD_ENV, "auto").strip().lower() or "auto"
    if method not in LOAD_METHODS:
        raise OperationError(f"{LOAD_METHOD_ENV}={method!r}: must be one of {', '.join(LOAD_METHODS)}")
    return method


def load_dump(
    target: LoadTarget,
    password: str | None,
    source: DataSource,
    check: Callable[[Sequence[Mapping[str, Any]]], str | None],
    progress: Progress = no_progress,
    *,
    by_replication: bool = True,
) -> LoadReport:
    """Replace the target's data with the dump's: ``check`` may refuse before anything is touched.

    A dump of one RDB into a target of one master is loaded by replication (``replica_load``) unless
    ``by_replication`` is False; key by key otherwise, and whenever the target cannot take it so."""
    objects = source.objects
    reason = check([o.meta for o in objects])
    if reason is not None:
        raise OperationError(f"cannot restore this backup here: {reason}")
    report = LoadReport()
    if by_replication and len(objects) == 1 and not target.is_cluster and len(target.masters) == 1:
        try:
            return _load_by_replication(target, password, source, objects[0], progress)
        except Unavailable as why:
            log.warning("redis load by replication not possible, loading key by key: %s", why)
            report.actions.append(f"key by key: loading by replication was not possible ({why})")
    _, expected = dump_facts(o.meta for o in objects)
    loader = _Loader(target, password, progress, total=sum(expected.values()))
    per_db: dict[int, int] = {}
    try:
        loader.flush()
        report.actions.append(f"flushed {len(target.masters)} master(s)")
        for obj in objects:
            with tempfile.TemporaryDirectory(prefix="moorage-restore-") as tmp:
                directory = Path(tmp)
                directory.chmod(0o700)
                _stage(source, obj, directory / "dump.rdb")
                scratch = ScratchServer(directory, "dump.rdb")
                try:
                    scratch.wait_loaded(obj.name)
                    copied = loader.copy(scratch, obj.name)
                finally:
                    scratch.stop()
            for db, n in copied.items():
                per_db[db] = per_db.get(db, 0) + n
            report.actions.append(f"{obj.name}: {sum(copied.values())} keys")
    finally:
        loader.close()
    report.counts = counts_by_name(per_db)
    if loader.short_lived:
        report.tolerance = counts_by_name(loader.short_lived)
    progress("loaded", loader.done, loader.done)
    return report


def _await_replicas(
    master: Endpoint,
    replicas: Sequence[Endpoint],
    password: str | None,
    progress: Progress,
    timeout: float = REPLICA_RESYNC_TIMEOUT,
) -> list[str]:
    """Wait until every replica follows the master's history since the load (its replication ID)
    with the master's offset: until then a replica still serves the data from before the restore
    (its acknowledged offset, on the old history, can even be past the master's new one, so WAIT
    cannot tell). A replica that is not there in time is named in the returned actions, not
    failed: the master holds the restored data and the replica takes it when it resynchronises."""
    if not replicas:
        return []
    deadline = time.monotonic() + timeout
    pending = list(replicas)
    while pending:
        progress("replicas resynchronising", len(replicas) - len(pending), len(replicas))
        state = _replication_info(master, password)
        if state is not None:
            history, offset = state.get("master_replid"), int(state.get("master_repl_offset") or 0)
            pending = [r for r in pending if not _follows(r, password, history, offset)]
        if not pending:
            break
        if time.monotonic() >= deadline:
            names = ", ".join(r.address for r in pending)
            log.warning("redis load by replication: %s not resynchronised after %.0f s", names, timeout)
            return [
                f"replica {r.address} had not resynchronised after {timeout:.0f} s: it serves the data "
                "from before the restore until it does"
                for r in pending
            ]
        time.sleep(0.2)
    progress("replicas resynchronising", len(replicas), len(replicas))
    return []


def _replication_info(endpoint: Endpoint, password: str | None) -> dict[str, Any] | None:
    """INFO replication, or None while the node does not answer (asked again until the deadline:
    the load itself is done, so a node restarting meanwhile must not fail it)."""
    try:
        return dict(live.call(endpoint, password, lambda c: c.info("replication"), attempts=1))
    except (NotReady, redis.RedisError, OSError):
        return None


def _follows(replica: Endpoint, password: str | None, history: str | None, offset: int) -> bool:
    state = _replication_info(replica, password)
    return (
        state is not None
        and state.get("master_link_status") == "up"
        and state.get("master_replid") == history
        and int(state.get("slave_repl_offset") or 0) >= offset
    )


def _load_by_replication(
    target: LoadTarget, password: str | None, source: DataSource, obj: StoredObject, progress: Progress
) -> LoadReport:
    stream = source.open(obj.name)
    try:
        loaded = load_by_replication(
            target.masters[0],
            password,
            stream,
            size=obj.size,
            progress=progress,
            **({"hold_failover": target.hold_failover} if target.hold_failover else {}),
        )
    finally:
        stream.close()
    total = sum(loaded.keys.values())
    actions = [f"{obj.name}: {total} keys, loaded by {target.masters[0].address} itself (replication)"]
    actions += _await_replicas(target.masters[0], target.replicas, password, progress)
    progress("loaded", total, total)
    return LoadReport(
        counts=counts_by_name(loaded.keys),
        actions=actions,
        # Nothing expires on a replica, so the counts are the RDB's; once the target is a master
        # again, any key with a TTL may expire before the restore is verified.
        tolerance=counts_by_name(loaded.expiring) if loaded.expiring else {},
    )
