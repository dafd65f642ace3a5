"""Compare a source and a target Redis: key sets, types, TTLs and value digests.

This is what tells an SRE whether a redis-shake sync (or a cutover) left the target equal to the
source. It talks to the servers only; it does not care how the data got there.

Design:
- Each side is a ``redis://[user:password@]host:port[/db]`` URL. A cluster is discovered from any of
  its nodes (``CLUSTER NODES``) and read through its masters; anything else (standalone, the master
  of a sentinel group) is one node.
- Streaming, bounded memory: every source master is SCANned and keys are checked in batches of
  ``BATCH`` with pipelines on both sides; nothing keeps the key set. "Extra on target" is a second
  pass SCANning the target and asking the source whether each key exists.
- One round trip per batch and side: TYPE, PTTL and GET of every key go out pre-encoded together
  (raw RESP, hiredis replies), and both sides' requests are written before either is read. Strings,
  the common case, need nothing more; other types are read afterwards for keys whose type matched.
- Values are compared with type-aware digests, never ``DUMP`` bytes: two servers holding equal
  values may encode them differently (listpack vs hashtable, another RDB version), and ``DUMP``
  would then report a false difference. Unordered types (hash, set) use an order-independent sum of
  per-element hashes, so neither side has to sort.
- Sampling is a deterministic hash of (seed, key) against the ratio: the same keys are picked on
  both passes and in every rerun with the same seed, which makes a reported difference reproducible.
- Secrets never reach an exception message or the report: URLs are shown with the password redacted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.redis.client import (
    NETWORK_ERRORS,
    TOTAL_SLOTS,
    Command,
    RespConnection,
    RespError,
    connect,
    describe_error,
    expand,
    observe_cluster,
    open_connection,
    pack,
)
from middleware.errors import MoorageError, NotReady, OperationError

# Keys per pipeline round trip: large enough to amortise the network, small enough that one batch of
# replies (plus the values read for it) stays a few MB.
BATCH = 500
SCAN_COUNT = 1000
# Collections up to this many elements are read in one pipelined command; larger ones are read key by
# key in chunks so one huge hash cannot blow up a batch's memory.
SMALL_COLLECTION = 1000
CHUNK = 1000
SOCKET_TIMEOUT = 30.0
DEFAULT_MAX_DIFFS = 20
_MOD = 1 << 128

# Progress callback: (phase, done, total or None).
ProgressFn = Callable[[str, int, int | None], None]


class VerifyInputError(MoorageError):
    """The URLs or options are unusable (bad URL, unknown scheme, bad ratio): exit code 2 in the CLI."""


# --- addressing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisURL:
    endpoint: Endpoint
    username: str | None
    password: str | None
    db: int

    @property
    def redacted(self) -> str:
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        return f"redis://{auth}{self.endpoint.address}/{self.db}"


def parse_url(url: str, *, password_env: str | None = None) -> RedisURL:
    """Parse ``redis://[[user]:password@]host:port[/db]``; the password may come from ``password_env``
    instead, so it need not appear on a command line (visible in ``ps``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise VerifyInputError("not a redis URL (expected redis://[:password@]host:port[/db])") from None
    if parts.scheme != "redis":
        raise VerifyInputError(f"unsupported scheme {parts.scheme!r}: expected redis://host:port")
    if not parts.hostname or port is None:
        raise VerifyInputError("redis URL needs host and port: redis://[:password@]host:port[/db]")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise VerifyInputError(f"database in redis URL must be a number, got {path!r}")
    password = unquote(parts.password) if parts.password else None
    if password is None and password_env:
        password = os.environ.get(password_env) or None
    return RedisURL(
        endpoint=Endpoint(parts.hostname, port),
        username=unquote(parts.username) if parts.username else None,
        password=password,
        db=int(path or 0),
    )


class Side:
    """One side of the comparison: its masters and, for a cluster, who owns which slot.

    Discovery and DBSIZE go through redis-py (a handful of calls, and its errors are the familiar
    ones); every per-key command goes through a raw RESP connection per node. A profile of the
    redis-py version spent 75% of the run packing commands and dispatching replies in Python.
    """

    def __init__(self, label: str, url: RedisURL, *, socket_timeout: float = SOCKET_TIMEOUT) -> None:
        self.label = label
        self.url = url
        self._timeout = socket_timeout
        self._clients: dict[Endpoint, redis.Redis] = {}
        self._conns: dict[Endpoint, RespConnection] = {}
        self.cluster = False
        self.masters: list[Endpoint] = [url.endpoint]
        self._slot_owner: list[int] = []

    def client(self, endpoint: Endpoint) -> redis.Redis:
        if endpoint not in self._clients:
            self._clients[endpoint] = connect(
                endpoint,
                self.url.password,
                username=self.url.username,
                db=self.url.db,
                socket_timeout=self._timeout,
                decode_responses=False,
            )
        return self._clients[endpoint]

    def conn(self, endpoint: Endpoint) -> RespConnection:
        if endpoint not in self._conns:
            try:
                self._conns[endpoint] = open_connection(
                    endpoint,
                    self.url.password,
                    username=self.url.username,
                    db=self.url.db,
                    timeout=self._timeout,
                )
            except (RespError, OSError, hiredis.HiredisError) as exc:
                raise self.wrap(endpoint, exc) from None
        return self._conns[endpoint]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def wrap(self, endpoint: Endpoint, exc: BaseException) -> MoorageError:
        detail = describe_error(exc, self.url.password)
        if isinstance(exc, NETWORK_ERRORS):
            return NotReady(f"{self.label} {endpoint.address} unreachable: {detail}")
        return OperationError(f"{self.label} {endpoint.address}: {detail}")

    def run(self, endpoint: Endpoint, fn: Callable[[redis.Redis], Any]) -> Any:
        try:
            return fn(self.client(endpoint))
        except (redis.RedisError, OSError) as exc:
            raise self.wrap(endpoint, exc) from None

    def discover(self) -> None:
        """Standalone or cluster? For a cluster, find every master and the slot map."""
        info = self.run(self.url.endpoint, lambda c: c.info("cluster"))
        if not int(info.get("cluster_enabled", 0)):
            return
        if self.url.db:
            raise VerifyInputError(f"{self.label} is a Redis Cluster: only database 0 exists there")
        view = observe_cluster([self.url.endpoint], self.url.password, username=self.url.username)
        if not view.reports:
            raise NotReady(f"{self.label}: {'; '.join(view.unreachable.values()) or 'no node answered'}")
        masters = [node for node in view.masters if node.slots and node.endpoint is not None]
        if sum(node.slot_count for node in masters) != TOTAL_SLOTS:
            raise NotReady(f"{self.label}: cluster slots are not all assigned; verify needs a whole cluster")
        self.cluster = True
        self.masters = [node.endpoint for node in masters if node.endpoint is not None]
        self._slot_owner = [0] * TOTAL_SLOTS
        for index, node in enumerate(masters):
            for slot in expand(node.slots):
                self._slot_owner[slot] = index

    def owner(self, key: bytes) -> Endpoint:
        if not self.cluster:
            return self.masters[0]
        return self.masters[self._slot_owner[key_slot(key)]]

    def group(self, keys: Sequence[bytes]) -> dict[Endpoint, list[int]]:
        """Indexes of ``keys`` grouped by the node that owns them."""
        if not self.cluster:
            return {self.masters[0]: list(range(len(keys)))}
        groups: dict[Endpoint, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(self.owner(key), []).append(index)
        return groups

    def send(self, endpoint: Endpoint, payload: bytes) -> None:
        try:
            self.conn(endpoint).send(payload)
        except (OSError, hiredis.HiredisError) as exc:
            raise self.wrap(endpoint, exc) from None

    def receive(self, endpoint: Endpoint, count: int) -> list[Any]:
        """``count`` replies, error replies in place; a moved slot aborts the run."""
        try:
            replies = self.conn(endpoint).receive(count)
        except (OSError, hiredis.HiredisError) as exc:
            raise self.wrap(endpoint, exc) from None
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith(("MOVED", "ASK")):
                raise OperationError(f"{self.label}: slots moved during verify ({reply}); run it again")
        return replies

    def pipeline(self, endpoint: Endpoint, commands: Sequence[Command]) -> list[Any]:
        if not commands:
            return []
        self.send(endpoint, pack(commands))
        return self.receive(endpoint, len(commands))

    def command(self, endpoint: Endpoint, *args: bytes) -> Any:
        """One command whose error reply is a failure of the run (chunked reads, SCAN)."""
        (reply,) = self.pipeline(endpoint, [args])
        if isinstance(reply, hiredis.ReplyError):
            raise self.wrap(endpoint, reply)
        return reply

    def per_key(self, keys: Sequence[bytes], commands: Sequence[Sequence[Command]]) -> list[list[Any]]:
        """``commands[i]`` (one or more commands about ``keys[i]``) sent to that key's owner, pipelined
        per node (every node's request is sent before any reply is read, so the nodes work at the same
        time); the replies come back per key, in key order."""
        replies: list[list[Any]] = [[] for _ in keys]
        sent: list[tuple[Endpoint, list[int], int]] = []
        for endpoint, indexes in self.group(keys).items():
            flat = [command for i in indexes for command in commands[i]]
            self.send(endpoint, pack(flat))
            sent.append((endpoint, indexes, len(flat)))
        for endpoint, indexes, count in sent:
            answers = iter(self.receive(endpoint, count))
            for index in indexes:
                replies[index] = [next(answers) for _ in commands[index]]
        return replies

    def scan(self, endpoint: Endpoint) -> Iterator[list[bytes]]:
        """SCAN one node; yields batches of keys as the server returns them."""
        cursor = b"0"
        count = str(SCAN_COUNT).encode()
        while True:
            cursor, keys = self.command(endpoint, b"SCAN", cursor, b"COUNT", count)
            if keys:
                yield keys
            if cursor == b"0":
                return

    def dbsize(self) -> int:
        return sum(int(self.run(e, lambda c: c.dbsize())) for e in self.masters)


# --- digests ---------------------------------------------------------------------------------------


def _h(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


class _Unordered:
    """Order-independent digest of a set of elements: the sum of their hashes mod 2**128.

    ``seen`` drops repeats, which HSCAN/SSCAN may return while a table rehashes.
    """

    def __init__(self, dedupe: bool) -> None:
        self.total = 0
        self.count = 0
        self.seen: set[bytes] | None = set() if dedupe else None

    def add(self, *parts: bytes) -> None:
        element = _h(*parts)
        if self.seen is not None:
            if element in self.seen:
                return
            self.seen.add(element)
        self.total = (self.total + int.from_bytes(element, "little")) % _MOD
        self.count += 1

    def digest(self) -> bytes:
        return _h(self.total.to_bytes(16, "little"), str(self.count).encode())


def _ordered(items: Sequence[bytes]) -> bytes:
    return _h(str(len(items)).encode(), *items)


def _pairs(flat: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
    return zip(flat[::2], flat[1::2], strict=True)


def _stream_items(entries: Sequence[Any]) -> list[bytes]:
    items: list[bytes] = []
    for entry_id, fields in entries:
        items.append(entry_id)
        if isinstance(fields, dict):
            for name, value in fields.items():
                items += [name, value]
        else:
            items += list(fields or [])
    return items


_LENGTH = {b"list": b"LLEN", b"hash": b"HLEN", b"set": b"SCARD", b"zset": b"ZCARD", b"stream": b"XLEN"}
_READ_ALL: dict[bytes, Callable[[bytes], Command]] = {
    b"list": lambda k: (b"LRANGE", k, b"0", b"-1"),
    b"hash": lambda k: (b"HGETALL", k),
    b"set": lambda k: (b"SMEMBERS", k),
    b"zset": lambda k: (b"ZRANGE", k, b"0", b"-1", b"WITHSCORES"),
    b"stream": lambda k: (b"XRANGE", k, b"-", b"+"),
}


def _digest_small(kind: bytes, reply: Any) -> bytes:
    if kind == b"list":
        return _ordered(list(reply))
    if kind == b"zset":
        # ZRANGE is ordered by (score, member) on every server, so the order is part of the value.
        return _ordered(list(reply))
    if kind == b"stream":
        return _ordered(_stream_items(reply))
    acc = _Unordered(dedupe=False)
    if kind == b"hash":
        items = reply.items() if isinstance(reply, dict) else _pairs(list(reply))
        for name, value in items:
            acc.add(name, value)
    else:  # set
        for member in reply:
            acc.add(member)
    return acc.digest()


def _digest_large(side: Side, endpoint: Endpoint, key: bytes, kind: bytes) -> bytes:
    """Read one big collection in chunks; memory stays proportional to a chunk (plus 16 B per element
    for hash/set, whose SCAN may repeat elements)."""
    chunk = str(CHUNK).encode()
    if kind in (b"list", b"zset"):
        outer = hashlib.blake2b(digest_size=16)
        start = 0
        while True:
            bounds = (str(start).encode(), str(start + CHUNK - 1).encode())
            part = (
                side.command(endpoint, b"LRANGE", key, *bounds)
                if kind == b"list"
                else side.command(endpoint, b"ZRANGE", key, *bounds, b"WITHSCORES")
            )
            for item in part:
                outer.update(_h(item))
            if not part:
                return outer.digest()
            start += CHUNK
    if kind == b"stream":
        outer = hashlib.blake2b(digest_size=16)
        low = b"-"
        while True:
            entries = side.command(endpoint, b"XRANGE", key, low, b"+", b"COUNT", chunk)
            for item in _stream_items(entries):
                outer.update(_h(item))
            if len(entries) < CHUNK:
                return outer.digest()
            low = b"(" + entries[-1][0]
    acc = _Unordered(dedupe=True)
    cursor = b"0"
    while True:
        cursor, found = side.command(
            endpoint, b"HSCAN" if kind == b"hash" else b"SSCAN", key, cursor, b"COUNT", chunk
        )
        if kind == b"hash":
            for name, value in _pairs(found):
                acc.add(name, value)
        else:
            for member in found:
                acc.add(member)
        if cursor == b"0":
            return acc.digest()


def digests(side: Side, keys: Sequence[bytes], kinds: Sequence[bytes]) -> list[bytes | None]:
    """Value digests for ``keys`` of known types (None where the key vanished meanwhile)."""
    first = [
        reply
        for (reply,) in side.per_key(
            keys,
            [
                ((b"GET", key),)
                if kind == b"string"
                else ((_LENGTH[kind], key),)
                if kind in _LENGTH
                else ((b"DUMP", key),)
                for key, kind in zip(keys, kinds, strict=True)
            ],
        )
    ]
    result: list[bytes | None] = [None] * len(keys)
    small: list[int] = []
    for index, (kind, reply) in enumerate(zip(kinds, first, strict=True)):
        if isinstance(reply, Exception):
            # WRONGTYPE: the key changed type between the two reads; report it as a value difference.
            result[index] = _h(b"error", str(reply).encode())
        elif kind not in _LENGTH:
            # Strings (GET) and module types (DUMP: no type-aware read exists for them).
            result[index] = None if reply is None else _h(kind, reply)
        elif int(reply) <= SMALL_COLLECTION:
            small.append(index)
        else:
            endpoint = side.owner(keys[index])
            result[index] = _h(kind, _digest_large(side, endpoint, keys[index], kind))
    if small:
        small_keys = [keys[i] for i in small]
        replies = side.per_key(small_keys, [(_READ_ALL[kinds[i]](keys[i]),) for i in small])
        for index, (reply,) in zip(small, replies, strict=True):
            if isinstance(reply, Exception):
                result[index] = _h(b"error", str(reply).encode())
            else:
                result[index] = _h(kinds[index], _digest_small(kinds[index], reply))
    return result


# --- the comparison --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    key: str
    kind: str  # missing, extra, type, ttl, value
    detail: str


@dataclass
class VerifyReport:
    source: str
    target: str
    sample_ratio: float
    seed: int
    ttl_tolerance: float
    scanned_source: int = 0
    checked: int = 0
    vanished: int = 0  # gone from the source between SCAN and the read (expired, deleted)
    missing: int = 0
    type_mismatch: int = 0
    ttl_mismatch: int = 0
    value_mismatch: int = 0
    scanned_target: int = 0
    checked_target: int = 0
    extra: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    max_diffs: int = DEFAULT_MAX_DIFFS

    @property
    def total_differences(self) -> int:
        return self.missing + self.extra + self.type_mismatch + self.ttl_mismatch + self.value_mismatch

    @property
    def equal(self) -> bool:
        return self.total_differences == 0

    @property
    def keys_per_second(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    def record(self, key: bytes, kind: str, detail: str) -> None:
        if len(self.differences) < self.max_diffs:
            self.differences.append(Difference(key.decode("utf-8", "backslashreplace"), kind, detail))

    def as_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "source": self.source,
            "target": self.target,
            "sampleRatio": self.sample_ratio,
            "seed": self.seed,
            "ttlToleranceSeconds": self.ttl_tolerance,
            "scannedSource": self.scanned_source,
            "checked": self.checked,
            "vanished": self.vanished,
            "missingOnTarget": self.missing,
            "typeMismatches": self.type_mismatch,
            "ttlMismatches": self.ttl_mismatch,
            "valueMismatches": self.value_mismatch,
            "scannedTarget": self.scanned_target,
            "checkedTarget": self.checked_target,
            "extraOnTarget": self.extra,
            "differences": self.total_differences,
            "firstDifferences": [
                {"key": d.key, "kind": d.kind, "detail": d.detail} for d in self.differences
            ],
            "seconds": round(self.seconds, 3),
            "keysPerSecond": round(self.keys_per_second, 1),
        }


def sampled(key: bytes, ratio: float, seed: int) -> bool:
    if ratio >= 1.0:
        return True
    value = int.from_bytes(_h(seed.to_bytes(8, "little", signed=True), key)[:8], "little")
    return value < ratio * (1 << 64)


def _ttl_text(pttl: int) -> str:
    return "none" if pttl == -1 else f"{pttl / 1000:.1f}s"


# TYPE, PTTL and GET for one key, pre-encoded: the value of the common case (a string) arrives in the
# same round trip as its type. For other types GET answers WRONGTYPE (a few bytes), and their values
# are read afterwards by ``digests``.
_PROBE = b"*2\r\n$4\r\nTYPE\r\n$%d\r\n%b\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"
_PROBE_REPLIES = 3


def _probe(keys: Iterable[bytes]) -> bytes:
    return b"".join([_PROBE % (len(k), k, len(k), k, len(k), k) for k in keys])


def _string_digest(reply: Any) -> bytes | None:
    """What ``digests`` makes of a GET reply, for the rare case where a side answered an error."""
    if isinstance(reply, Exception):
        return _h(b"error", str(reply).encode())
    return None if reply is None else _h(b"string", reply)


def _probe_both(
    source: Side, target: Side, endpoint: Endpoint, keys: list[bytes]
) -> tuple[list[Any], list[Any]]:
    """Probe replies (TYPE, PTTL, GET per key) from both sides, flat and in key order. Every request
    is written before any reply is read, so the source and the target nodes work at the same time;
    a server buffers the replies it cannot write yet, so writing every request first cannot deadlock."""
    source.send(endpoint, _probe(keys))
    groups = target.group(keys)
    if len(groups) == 1:
        (theirs,) = groups
        target.send(theirs, _probe(keys))
    else:
        for theirs, indexes in groups.items():
            target.send(theirs, _probe([keys[i] for i in indexes]))
    src = source.receive(endpoint, _PROBE_REPLIES * len(keys))
    if len(groups) == 1:
        return src, target.receive(theirs, _PROBE_REPLIES * len(keys))
    dst: list[Any] = [None] * (_PROBE_REPLIES * len(keys))
    for theirs, indexes in groups.items():
        answers = target.receive(theirs, _PROBE_REPLIES * len(indexes))
        for position, index in enumerate(indexes):
            at, base = _PROBE_REPLIES * index, _PROBE_REPLIES * position
            dst[at : at + _PROBE_REPLIES] = answers[base : base + _PROBE_REPLIES]
    return src, dst


def _compare_batch(
    source: Side, target: Side, endpoint: Endpoint, keys: list[bytes], rep: VerifyReport
) -> None:
    src, dst = _probe_both(source, target, endpoint, keys)
    same: list[int] = []
    tolerance_ms = rep.ttl_tolerance * 1000
    for index, key in enumerate(keys):
        base = _PROBE_REPLIES * index
        kind, pttl = src[base], src[base + 1]
        if isinstance(kind, Exception) or isinstance(pttl, Exception):
            raise source.wrap(endpoint, kind if isinstance(kind, Exception) else pttl)
        if kind == b"none":
            rep.vanished += 1
            continue
        rep.checked += 1
        other, their_pttl = dst[base], dst[base + 1]
        for reply in (other, their_pttl):
            if isinstance(reply, Exception):
                raise target.wrap(target.owner(key), reply)
        if other == b"none":
            rep.missing += 1
            rep.record(key, "missing", f"{kind.decode()} missing on target")
            continue
        if other != kind:
            rep.type_mismatch += 1
            rep.record(key, "type", f"source {kind.decode()}, target {other.decode()}")
            continue
        if pttl != their_pttl:
            mine, their = int(pttl), int(their_pttl)
            if (mine == -1) != (their == -1) or (
                mine >= 0 and their >= 0 and abs(mine - their) > tolerance_ms
            ):
                rep.ttl_mismatch += 1
                rep.record(key, "ttl", f"source {_ttl_text(mine)}, target {_ttl_text(their)}")
        same.append(index)
    if not same:
        return
    # Values of other types: read now, only for the keys whose type matched (as before the probe).
    others = [i for i in same if src[_PROBE_REPLIES * i] != b"string"]
    mine_digests: dict[int, bytes | None] = {}
    their_digests: dict[int, bytes | None] = {}
    if others:
        other_keys = [keys[i] for i in others]
        kinds = [src[_PROBE_REPLIES * i] for i in others]
        mine_digests = dict(zip(others, digests(source, other_keys, kinds), strict=True))
        their_digests = dict(zip(others, digests(target, other_keys, kinds), strict=True))
    for index in same:
        base = _PROBE_REPLIES * index
        kind = src[base]
        a: Any
        b: Any
        if kind == b"string":
            a, b = src[base + 2], dst[base + 2]
            if not (isinstance(a, bytes) and isinstance(b, bytes)):
                # A side vanished or changed type between TYPE and GET: compare as ``digests`` would.
                a, b = _string_digest(a), _string_digest(b)
        else:
            a, b = mine_digests[index], their_digests[index]
        if a is None:
            continue  # vanished between TYPE and the read
        if a != b:
            rep.value_mismatch += 1
            rep.record(
                keys[index], "value", f"{kind.decode()} values differ" if b is not None else "gone on target"
            )


def _batches(side: Side, endpoint: Endpoint, rep: VerifyReport, attr: str) -> Iterator[list[bytes]]:
    pending: list[bytes] = []
    for keys in side.scan(endpoint):
        setattr(rep, attr, getattr(rep, attr) + len(keys))
        if rep.sample_ratio < 1.0:
            keys = [k for k in keys if sampled(k, rep.sample_ratio, rep.seed)]
        pending += keys
        while len(pending) >= BATCH:
            yield pending[:BATCH]
            pending = pending[BATCH:]
    if pending:
        yield pending


def verify(
    source_url: RedisURL,
    target_url: RedisURL,
    *,
    sample_ratio: float = 1.0,
    seed: int = 0,
    ttl_tolerance: float = 2.0,
    max_diffs: int = DEFAULT_MAX_DIFFS,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Compare every source master's keys with the target, then look for keys only the target has."""
    if not 0.0 < sample_ratio <= 1.0:
        raise VerifyInputError(f"sample ratio must be in (0, 1], got {sample_ratio}")
    if ttl_tolerance < 0 or max_diffs < 0:
        raise VerifyInputError("ttl tolerance and max diffs must not be negative")
    rep = VerifyReport(
        source=source_url.redacted,
        target=target_url.redacted,
        sample_ratio=sample_ratio,
        seed=seed,
        ttl_tolerance=ttl_tolerance,
        max_diffs=max_diffs,
    )
    started = time.monotonic()
    source = Side("source", source_url)
    target = Side("target", target_url)
    try:
        source.discover()
        target.discover()
        total = source.dbsize()
        for endpoint in source.masters:
            for batch in _batches(source, endpoint, rep, "scanned_source"):
                _compare_batch(source, target, endpoint, batch, rep)
                if progress:
                    progress("source", rep.scanned_source, total)
        total = target.dbsize()
        for endpoint in target.masters:
            for batch in _batches(target, endpoint, rep, "scanned_target"):
                rep.checked_target += len(batch)
                if not source.cluster:
                    # One multi-key EXISTS per batch: when it counts every key (the usual case) no
                    # per-key round is needed. A cluster refuses multi-key commands across slots.
                    found_all = source.pipeline(source.masters[0], [(b"EXISTS", *batch)])[0]
                    if not isinstance(found_all, Exception) and int(found_all) == len(batch):
                        if progress:
                            progress("target", rep.scanned_target, total)
                        continue
                exists = source.per_key(batch, [((b"EXISTS", k),) for k in batch])
                for key, (found,) in zip(batch, exists, strict=True):
                    if isinstance(found, Exception):
                        raise source.wrap(source.owner(key), found)
                    if not int(found):
                        rep.extra += 1
                        rep.record(key, "extra", "only on target")
                if progress:
                    progress("target", rep.scanned_target, total)
    finally:
        source.close()
        target.close()
        rep.seconds = time.monotonic() - started
    return rep
