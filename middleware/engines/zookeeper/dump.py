"""ZooKeeper DataDump / DataLoad: the znode tree as JSON lines, walked and rebuilt as the superuser.

One object, ``znodes.jsonl``: one line per znode in pre-order (a parent before its children), each
``{"path", "data" (base64), "acl": [{"perms", "scheme", "id"}], "cversion", "numChildren"}`` plus
``"container": true`` for container nodes. ``/`` comes first (its data and ACL; it is not counted);
``/zookeeper`` (the server's own subtree: quotas, config) and ephemeral nodes are left out, ephemeral
nodes belonging to client sessions that a restore cannot bring back.

ZooKeeper offers clients no point-in-time snapshot: the walk reads node by node while writes go on,
so the dump holds every node as it was when that node was read. Its meta records the last zxid the
servers had seen when the walk started and ended (``zxidStart``, ``zxidEnd``): equal values mean
nothing changed during the dump.

Sequence counters: ZooKeeper names a sequential child after its parent's count of child *creations*
(the ``cversion`` clients see is creations + deletions, ``2 * creations - numChildren``). A restore
creates only the surviving children, so a load raises each parent's count back to the dumped one
with throwaway create+delete pairs, in multi transactions (atomic: a throwaway child never stays).
Dumps without ``cversion`` (older ones) load as before, with counters restarting.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL, Id

from middleware.endpoints import Endpoint
from middleware.engines.base import (
    Connection,
    DataSource,
    DumpObject,
    LoadReport,
    Progress,
    StoredObject,
    no_progress,
)
from middleware.engines.streams import ChunkStream
from middleware.engines.zookeeper.config import SUPER_USER
from middleware.engines.zookeeper.launch import four_letter_word
from middleware.engines.zookeeper.topology import DATA_COMPONENT
from middleware.errors import NotReady, OperationError
from middleware.spec import ResolvedSpec

OBJECT = "znodes.jsonl"
FORMAT = "znodes-jsonl"
COUNT_KEY = "znodes"
RESERVED = "/zookeeper"
SESSION_TIMEOUT = 10.0
CHUNK = 1 << 20
# Creates in flight at once: requests of one session are applied in order, so children sent after
# their parent are safe, and the window bounds memory and the server's queue.
WINDOW = 256
# ZooKeeper marks container nodes with this ephemeralOwner (Long.MIN_VALUE); they are not ephemeral.
CONTAINER_OWNER = 1 << 63
DELETE_ATTEMPTS = 5
# Throwaway children that raise a parent's sequence counter: ops per multi transaction (a pair is
# two), a byte budget per transaction well under jute.maxbuffer (1 MiB), transactions in flight.
COUNTER_OPS = 500
COUNTER_BYTES = 256 << 10
COUNTER_WINDOW = 4
THROWAWAY = "moorage-sequence-counter"


def _endpoints(conn: Connection) -> list[Endpoint]:
    endpoints = [m.endpoint for m in conn.of(DATA_COMPONENT) if m.up]
    if not endpoints:
        raise NotReady("no ZooKeeper member is up: a dump or restore needs a serving ensemble")
    return endpoints


@contextlib.contextmanager
def superuser_client(conn: Connection) -> Iterator[KazooClient]:
    """A session authenticated as the digest superuser: it reads and writes every znode whatever
    its ACL (restricted nodes included)."""
    if not conn.password:
        raise OperationError("zookeeper backups need the deployment's password (the superuser's)")
    hosts = ",".join(e.address for e in _endpoints(conn))
    client = KazooClient(
        hosts=hosts, timeout=SESSION_TIMEOUT, auth_data=[("digest", f"{SUPER_USER}:{conn.password}")]
    )
    try:
        client.start(timeout=SESSION_TIMEOUT)
    except (KazooException, KazooTimeoutError) as error:
        client.close()
        raise NotReady(f"cannot open a ZooKeeper session on {hosts}: {type(error).__name__}") from None
    try:
        yield client
    finally:
        client.stop()
        client.close()


def last_zxid(conn: Connection) -> int:
    """The highest zxid any up member reports (``srvr``): where the ensemble's history stands."""
    best = -1
    for endpoint in _endpoints(conn):
        with contextlib.suppress(OSError):
            reply = four_letter_word(endpoint.host, endpoint.port, "srvr", 2.0)
            for line in reply.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Zxid":
                    best = max(best, int(value.strip(), 16))
    return best


def _is_ephemeral(owner: int) -> bool:
    return owner != 0 and (owner & ((1 << 64) - 1)) != CONTAINER_OWNER


def _child(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


# Reads in flight at once while walking: every znode costs a read of its data and one of its ACL,
# and sent one after the other those round trips were the whole time of a dump (3 MB/s for 10 KB
# znodes, a tenth of a windowed kazoo walk: bench/backup_bench.py). Memory: the data of this many
# znodes per level of depth (ZooKeeper caps a znode at 1 MB).
READ_WINDOW = 32
# Stats in flight while counting: a stat is small, unlike a read of data.
COUNT_WINDOW = 256


def _walk(client: KazooClient, path: str) -> Iterator[dict[str, Any]]:
    """Pre-order, children sorted; a node deleted while walking is skipped with its subtree.
    Memory: one child-name list and one window of reads per level of depth."""
    try:
        data, stat = client.get(path)
        acls, _ = client.get_acls(path)
    except NoNodeError:
        return
    yield from _walk_read(client, path, data, stat, acls)


def _walk_read(
    client: KazooClient, path: str, data: bytes, stat: Any, acls: list[ACL]
) -> Iterator[dict[str, Any]]:
    """The walk from a node already read: its record, then its children, READ_WINDOW of them read
    at a time ahead of the one being walked."""
    if _is_ephemeral(stat.ephemeralOwner):
        return
    record: dict[str, Any] = {
        "path": path,
        "data": base64.b64encode(data or b"").decode("ascii"),
        "acl": [{"perms": a.perms, "scheme": a.id.scheme, "id": a.id.id} for a in acls],
    }
    if stat.ephemeralOwner:
        record["container"] = True
    # Both from one stat, so the creation count derived from them on load is consistent.
    record["cversion"] = stat.cversion
    record["numChildren"] = stat.numChildren
    yield record
    if not stat.numChildren:
        # As of the read above, like the record: the dump holds each node as it was when read.
        return
    try:
        children = sorted(client.get_children(path))
    except NoNodeError:
        return
    paths = [child for child in (_child(path, name) for name in children) if child != RESERVED]
    for start in range(0, len(paths), READ_WINDOW):
        window = [
            (child, client.get_async(child), client.get_acls_async(child))
            for child in paths[start : start + READ_WINDOW]
        ]
        for child, data_read, acl_read in window:
            try:
                child_data, child_stat = data_read.get(timeout=SESSION_TIMEOUT)
                child_acls, _ = acl_read.get(timeout=SESSION_TIMEOUT)
            except NoNodeError:
                continue
            yield from _walk_read(client, child, child_data, child_stat, child_acls)


def dump(spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Iterator[DumpObject]:
    meta: dict[str, Any] = {"format": FORMAT, "zxidStart": f"{last_zxid(conn):x}"}

    def lines() -> Iterator[bytes]:
        count = 0
        with superuser_client(conn) as client:
            for record in _walk(client, "/"):
                if record["path"] != "/":
                    count += 1
                    if count % 1000 == 0:
                        progress("dumping znodes", count, 0)
                yield (json.dumps(record, separators=(",", ":")) + "\n").encode()
        # Known only once the walk is over: readers of the meta look after the stream's end.
        meta["zxidEnd"] = f"{last_zxid(conn):x}"
        meta[COUNT_KEY] = count
        progress("dumping znodes", count, count)

    yield DumpObject(OBJECT, io.BufferedReader(ChunkStream(lines()), CHUNK), meta)


def dumped_counts(objects: Sequence[StoredObject]) -> dict[str, int]:
    """What a stored dump holds, named as ``inventory`` names it: the znodes its walk wrote."""
    return {COUNT_KEY: sum(int(obj.meta[COUNT_KEY]) for obj in objects if obj.name == OBJECT)}


def inventory(spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
    """Every persistent znode except ``/`` and ``/zookeeper``: the nodes a dump's walk would hold,
    counted from their stats alone (no data read: a tree of 1 GB is counted by its names)."""
    with superuser_client(conn) as client:
        stat = client.exists("/")
        count = _count_from(client, "/", stat) - 1 if stat is not None else 0
    return {COUNT_KEY: count}


def _count_from(client: KazooClient, path: str, stat: Any) -> int:
    """``path`` (read already, with ``stat``) and every node below it that ``_walk`` would yield:
    ephemeral nodes left out, ``/zookeeper`` skipped; the children's stats COUNT_WINDOW at a time."""
    total = 1
    if not stat.numChildren:
        return total
    try:
        children = client.get_children(path)
    except NoNodeError:
        return total
    paths = [child for child in (_child(path, name) for name in children) if child != RESERVED]
    for start in range(0, len(paths), COUNT_WINDOW):
        window = [(child, client.exists_async(child)) for child in paths[start : start + COUNT_WINDOW]]
        for child, pending in window:
            child_stat = pending.get(timeout=SESSION_TIMEOUT)
            if child_stat is None or _is_ephemeral(child_stat.ephemeralOwner):
                continue
            total += _count_from(client, child, child_stat)
    return total


def _acl(entries: list[dict[str, Any]], path: str) -> list[ACL]:
    try:
        return [ACL(int(e["perms"]), Id(str(e["scheme"]), str(e["id"]))) for e in entries]
    except (KeyError, TypeError, ValueError):
        raise OperationError(f"znode {path}: malformed ACL in the dump") from None


def _clear(client: KazooClient) -> int:
    """Delete every top-level node but /zookeeper, with its subtree (other sessions' ephemeral
    nodes too). Retried: a live client may create a child while a subtree is being deleted."""
    removed = 0
    for name in sorted(client.get_children("/")):
        path = _child("/", name)
        if path == RESERVED:
            continue
        for attempt in range(DELETE_ATTEMPTS):
            try:
                _delete_tree(client, path)
                break
            except NoNodeError:
                break
            except NotEmptyError:
                if attempt == DELETE_ATTEMPTS - 1:
                    raise OperationError(
                        f"znode {path}: clients keep creating children while it is deleted; stop them"
                    ) from None
        removed += 1
    return removed


def _delete_tree(client: KazooClient, path: str) -> None:
    """Delete ``path`` with its subtree, children first, WINDOW deletes in flight: each child is
    deleted outright and only one that turns out to have children of its own is listed and
    descended into (kazoo's recursive delete lists every node and deletes them one round trip at a
    time, which made clearing a 100 MB tree most of a load). Raises NotEmptyError when a child
    appeared meanwhile; NoNodeError when ``path`` is gone."""
    children = client.get_children(path)
    for start in range(0, len(children), WINDOW):
        window = [_child(path, name) for name in children[start : start + WINDOW]]
        for child, deleted in [(child, client.delete_async(child)) for child in window]:
            try:
                deleted.get(timeout=SESSION_TIMEOUT)
            except NoNodeError:
                continue
            except NotEmptyError:
                with contextlib.suppress(NoNodeError):
                    _delete_tree(client, child)
    client.delete(path)


def _creations(cversion: int, children: int) -> int:
    """A parent's sequence counter (children ever created) from its stat: clients see
    ``cversion = creations + deletions = 2 * creations - numChildren``."""
    return (cversion + children + 1) // 2


def raise_sequence_counter(
    client: KazooClient, parent: str, creations: int, progress: Progress = no_progress
) -> int:
    """Raise ``parent``'s sequence counter to at least ``creations``, so the next sequential child
    sorts after every restored one; returns the throwaway create+delete pairs used (0 when the
    counter is already there). Each pair adds one creation; pairs go in multi transactions, which
    apply whole or not at all, so no throwaway child is ever left behind, even on errors."""
    stat = client.exists(parent)
    if stat is None:
        raise OperationError(f"znode {parent}: deleted before its sequence counter could be restored")
    gap = creations - _creations(stat.cversion, stat.numChildren)
    if gap <= 0:
        return 0
    # A fresh random name cannot be user data; if it were, the create fails and its multi with it.
    throwaway = _child(parent, f"{THROWAWAY}-{uuid.uuid4().hex}")
    per_txn = max(1, min(COUNTER_OPS // 2, COUNTER_BYTES // (2 * (len(throwaway.encode()) + 64))))
    in_flight: list[tuple[int, Any]] = []
    done = 0

    def collect() -> None:
        nonlocal done
        pairs, result = in_flight.pop(0)
        try:
            outcomes = result.get(timeout=SESSION_TIMEOUT)
        except (KazooException, KazooTimeoutError) as error:
            raise OperationError(
                f"znode {parent}: raising its sequence counter failed ({type(error).__name__})"
            ) from None
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise OperationError(
                f"znode {parent}: raising its sequence counter failed ({type(failed[-1]).__name__})"
            )
        done += pairs
        progress("restoring sequence counters", done, gap)

    sent = 0
    while sent < gap:
        pairs = min(per_txn, gap - sent)
        transaction = client.transaction()
        for _ in range(pairs):
            transaction.create(throwaway)
            transaction.delete(throwaway)
        in_flight.append((pairs, transaction.commit_async()))
        sent += pairs
        if len(in_flight) >= COUNTER_WINDOW:
            collect()
    while in_flight:
        collect()
    return done


def _dumped_creations(record: dict[str, Any]) -> int | None:
    """The dumped sequence counter, None for dumps written before it was recorded."""
    if "cversion" not in record:
        return None
    try:
        return _creations(int(record["cversion"]), int(record.get("numChildren", 0)))
    except (TypeError, ValueError):
        raise OperationError(f"znode {record['path']}: malformed cversion/numChildren in the dump") from None


@dataclass
class _Open:
    path: str
    creations: int | None
    restored: int = 0


class _Counters:
    """Raises each restored parent's sequence counter once the stream has left its subtree (dumps
    are pre-order). Memory: the open ancestors only, bounded by the tree's depth, where a dict of
    every parent with deleted children could grow with the tree. Parents whose dumped counter does
    not exceed the children this load created need nothing and cost no round trip."""

    def __init__(self, client: KazooClient, settle: Callable[[], None], progress: Progress) -> None:
        self._client = client
        self._settle = settle
        self._progress = progress
        self._stack: list[_Open] = []
        self.parents = 0
        self.pairs = 0

    def enter(self, path: str, creations: int | None) -> None:
        while self._stack and not _within(path, self._stack[-1].path):
            self._leave(self._stack.pop())
        if self._stack and _parent(path) == self._stack[-1].path:
            self._stack[-1].restored += 1
        self._stack.append(_Open(path, creations))

    def finish(self) -> None:
        while self._stack:
            self._leave(self._stack.pop())

    def _leave(self, node: _Open) -> None:
        if node.creations is None or node.creations <= node.restored:
            return
        # The creates still in flight include this node's children: their outcome comes first.
        self._settle()
        pairs = raise_sequence_counter(self._client, node.path, node.creations, self._progress)
        if pairs:
            self.parents += 1
            self.pairs += pairs


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _within(path: str, ancestor: str) -> bool:
    return ancestor == "/" or path.startswith(ancestor + "/")


def _records(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["value"] = base64.b64decode(record["data"], validate=True)
            if not isinstance(record["path"], str) or not record["path"].startswith("/"):
                raise ValueError(record["path"])
        except (ValueError, KeyError, TypeError):
            raise OperationError(f"{OBJECT} line {number}: not a znode record") from None
        yield record


def load(
    spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
) -> LoadReport:
    """Replace the tree: clear it, then create the dump's nodes in order with their data and ACLs.
    Works from any state (a load killed half-way is cleared by the next one)."""
    names = [o.name for o in source.objects]
    if names != [OBJECT]:
        raise OperationError(f"a ZooKeeper dump holds exactly {OBJECT}, this one holds {names}")
    expected = source.objects[0].meta.get(COUNT_KEY)
    report = LoadReport()
    with superuser_client(conn) as client:
        removed = _clear(client)
        report.actions.append(f"deleted {removed} top-level znodes")
        created = 0
        pending: list[tuple[str, Any]] = []

        def settle() -> None:
            for path, result in pending:
                try:
                    result.get(timeout=SESSION_TIMEOUT)
                except KazooException as error:
                    raise OperationError(f"znode {path}: create failed ({type(error).__name__})") from None
            pending.clear()

        counters = _Counters(client, settle, progress)
        with contextlib.closing(source.open(OBJECT)) as stream:
            for record in _records(stream):
                path = record["path"]
                acl = _acl(record.get("acl", []), path)
                if path == RESERVED or path.startswith(RESERVED + "/"):
                    continue
                counters.enter(path, _dumped_creations(record))
                if path == "/":
                    client.set("/", record["value"])
                    client.set_acls("/", acl)
                    continue
                pending.append((path, client.create_async(path, record["value"], acl=acl)))
                created += 1
                if len(pending) >= WINDOW:
                    settle()
                    progress("restoring znodes", created, expected or 0)
            settle()
        if expected is not None and int(expected) != created:
            raise OperationError(f"the dump's meta says {expected} znodes, its {OBJECT} holds {created}")
        # The ancestors still open (at least /) once the dump is known whole; parents raised earlier
        # from a dump refused here are cleared by the next load like the rest of the tree.
        counters.finish()
    report.counts[COUNT_KEY] = created
    report.actions.append(f"created {created} znodes")
    if counters.parents:
        report.actions.append(
            f"raised the sequence counters of {counters.parents} znodes"
            f" ({counters.pairs} throwaway create/delete pairs, none left behind)"
        )
    progress("restoring znodes", created, created)
    return report
