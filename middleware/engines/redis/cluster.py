"""Live operations on a Redis Cluster over redis-py: observe, create, heal, reshard, scale, fail over.

Shared by the Kubernetes operator and the local runtime: every function takes the members'
``Endpoint``s (pod DNS names, or 127.0.0.1 ports locally) and the password, and nothing else.

Ground rules:
- Replies are read with raw ``CLUSTER ...`` commands and parsed here: redis-py 8 turns
  ``CLUSTER NODES``/``INFO`` into dicts whose shape depends on protocol and version.
- Everything is idempotent and resumable. A rerun on a healthy cluster changes nothing; a rerun after
  a crash finishes the job (half-moved slots are closed by ``fix_open_slots`` before anything moves).
- Every wait polls with a short interval and a deadline, and fails with ``NotReady`` naming what
  was still missing. Passwords never reach a log line or an exception message.
- Slot moves follow the documented resharding order (IMPORTING on the target, MIGRATING on the
  source, MIGRATE the keys, SETSLOT NODE on target, source, then the other masters), so concurrent
  client writes are never lost: a key lives in exactly one place at every step.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from middleware.endpoints import Endpoint
from middleware.engines.redis.live import NETWORK_ERRORS, connect, describe_error
from middleware.engines.redis.slots import (
    TOTAL_SLOTS,
    SlotMove,
    SlotRange,
    allocate_slots,
    compress,
    expand,
    format_ranges,
    plan_rebalance,
)
from middleware.errors import NotReady, OperationError

log = logging.getLogger(__name__)

SLOTS = TOTAL_SLOTS
POLL_INTERVAL = 0.1
# How long views may disagree after a slot move before we call it a failure (gossip lag).
SETTLE_TIMEOUT = 15.0
DEFAULT_TIMEOUT = 60.0
# MIGRATE blocks the source node while it runs: keep each call short so client latency stays low.
KEYS_PER_MIGRATE = 100
# Slots opened (IMPORTING/MIGRATING) at once. Batching turns most per-slot round trips into
# pipelines; a crash leaves at most this many slots open, which fix_open_slots closes.
SLOTS_PER_BATCH = 64
MIGRATE_TIMEOUT_MS = 10_000
# MIGRATE and the pipelines of a batch can take longer than a plain command.
BULK_SOCKET_TIMEOUT = 30.0
# A handshake that has not completed in this long is retried (the first MEET may have been lost).
REMEET_AFTER = 3.0
# Redis abandons a manual failover after 5 s; ask again a little later.
MANUAL_FAILOVER_RETRY = 6.0
_FAILURE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})

Role = Literal["master", "replica"]
Progress = Callable[[int, int], None]
T = TypeVar("T")


# --- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEntry:
    """One line of ``CLUSTER NODES`` as one reporter sees it."""

    id: str
    ip: str
    port: int
    bus_port: int
    hostname: str
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    link_state: str
    slots: tuple[SlotRange, ...]
    # Open slots are only ever shown on the reporter's own ("myself") line.
    migrating: Mapping[int, str] = field(default_factory=dict)
    importing: Mapping[int, str] = field(default_factory=dict)

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def role(self) -> Role:
        return "replica" if "slave" in self.flags else "master"

    @property
    def failed(self) -> bool:
        return "fail" in self.flags

    @property
    def pfail(self) -> bool:
        return "fail?" in self.flags

    @property
    def handshake(self) -> bool:
        return "handshake" in self.flags

    @property
    def noaddr(self) -> bool:
        return "noaddr" in self.flags

    @property
    def ip_endpoint(self) -> Endpoint | None:
        return Endpoint(self.ip, self.port) if self.ip and self.port else None

    @property
    def announced(self) -> Endpoint | None:
        return Endpoint(self.hostname, self.port) if self.hostname and self.port else None

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeEntry]:
    """Parse ``CLUSTER NODES`` (7.0: ``id ip:port@cport[,hostname] flags master ... slots``)."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address, _, hostname = parts[1].partition(",")
        hostport, _, bus = address.partition("@")
        ip, _, port = hostport.rpartition(":")
        slots: list[SlotRange] = []
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        for token in parts[8:]:
            if token.startswith("["):
                slot, arrow, peer = token.strip("[]").partition("->-")
                if arrow:
                    migrating[int(slot)] = peer
                else:
                    slot, _, peer = token.strip("[]").partition("-<-")
                    importing[int(slot)] = peer
                continue
            first, _, last = token.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append(
            NodeEntry(
                id=parts[0],
                ip=ip,
                port=int(port or 0),
                bus_port=int(bus.split(",")[0] or 0),
                hostname=hostname,
                flags=frozenset(parts[2].split(",")) - {"noflags"},
                master_id=None if parts[3] == "-" else parts[3],
                config_epoch=int(parts[6]),
                link_state=parts[7],
                slots=tuple(slots),
                migrating=migrating,
                importing=importing,
            )
        )
    return entries


def parse_info(text: str) -> dict[str, str]:
    """``CLUSTER INFO``/``INFO`` text as ``{field: value}``."""
    result = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            result[key.strip()] = value.strip()
    return result


# --- the view --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeReport:
    """What one reachable node says: its own id, its cluster state and its node table."""

    endpoint: Endpoint
    id: str
    info: Mapping[str, str]
    entries: Mapping[str, NodeEntry]
    replication: Mapping[str, str]

    @property
    def myself(self) -> NodeEntry:
        return self.entries[self.id]

    @property
    def cluster_state(self) -> str:
        return self.info.get("cluster_state", "unknown")

    @property
    def current_epoch(self) -> int:
        return int(self.info.get("cluster_current_epoch", 0))

    @property
    def slots_assigned(self) -> int:
        return int(self.info.get("cluster_slots_assigned", 0))

    def knows(self, node_id: str) -> bool:
        entry = self.entries.get(node_id)
        return entry is not None and not entry.handshake and not entry.noaddr

    def owners(self) -> dict[int, str]:
        return {
            slot: entry.id
            for entry in self.entries.values()
            if not entry.handshake
            for slot in expand(entry.slots)
        }


@dataclass(frozen=True)
class ClusterNode:
    """One cluster member, merged from every reachable node's table.

    ``endpoint`` is the caller's endpoint when one of them answered as this node, else the
    announced hostname:port, else ip:port (``None`` for a node with no address yet).
    """

    id: str
    endpoint: Endpoint | None
    announced: Endpoint | None
    ip_endpoint: Endpoint | None
    bus_port: int
    role: Role
    master_id: str | None
    slots: tuple[SlotRange, ...]
    flags: frozenset[str]
    link_state: str
    config_epoch: int
    reachable: bool
    cluster_state: str | None = None  # the node's own CLUSTER INFO, when reachable
    replication_link: str | None = None  # replicas: INFO master_link_status (up/down)
    migrating: Mapping[int, str] = field(default_factory=dict)
    importing: Mapping[int, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return "fail" in self.flags

    @property
    def pfail(self) -> bool:
        return "fail?" in self.flags

    @property
    def handshake(self) -> bool:
        return "handshake" in self.flags

    @property
    def noaddr(self) -> bool:
        return "noaddr" in self.flags

    @property
    def is_master(self) -> bool:
        return self.role == "master"

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)

    @property
    def healthy(self) -> bool:
        if not self.reachable or self.flags & _FAILURE_FLAGS or self.link_state != "connected":
            return False
        if self.cluster_state != "ok":
            return False
        return self.role == "master" or self.replication_link == "up"


@dataclass(frozen=True)
class OpenSlot:
    """A slot some node has in MIGRATING (``node -> target``) or IMPORTING (``node <- source``) state."""

    slot: int
    migrating: Mapping[str, str]
    importing: Mapping[str, str]


@dataclass
class ClusterView:
    nodes: list[ClusterNode]
    reports: dict[Endpoint, NodeReport]
    unreachable: dict[Endpoint, str]

    @property
    def cluster_state(self) -> str:
        """``ok`` only when every reachable node says so; ``unknown`` when none answered."""
        states = {report.cluster_state for report in self.reports.values()}
        if not states:
            return "unknown"
        return "ok" if states == {"ok"} else "fail"

    def ownership(self) -> dict[str, set[int]]:
        return {node.id: set(expand(node.slots)) for node in self.nodes if node.is_master and node.slots}

    def owner_of(self, slot: int) -> ClusterNode | None:
        return next((n for n in self.nodes if n.is_master and _in_ranges(slot, n.slots)), None)

    @property
    def slots_assigned(self) -> int:
        return sum(node.slot_count for node in self.nodes if node.is_master)

    @property
    def slots_covered(self) -> bool:
        return self.slots_assigned == SLOTS

    @property
    def open_slots(self) -> dict[int, OpenSlot]:
        migrating: dict[int, dict[str, str]] = {}
        importing: dict[int, dict[str, str]] = {}
        for report in self.reports.values():
            me = report.myself
            for slot, peer in me.migrating.items():
                migrating.setdefault(slot, {})[me.id] = peer
            for slot, peer in me.importing.items():
                importing.setdefault(slot, {})[me.id] = peer
        return {
            slot: OpenSlot(slot, migrating.get(slot, {}), importing.get(slot, {}))
            for slot in sorted(set(migrating) | set(importing))
        }

    @property
    def masters(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.is_master]

    def node(self, node_id: str) -> ClusterNode | None:
        return next((node for node in self.nodes if node.id == node_id), None)

    def replicas_of(self, node_id: str) -> list[ClusterNode]:
        return [node for node in self.nodes if node.role == "replica" and node.master_id == node_id]

    def id_of(self, endpoint: Endpoint) -> str | None:
        report = self.reports.get(endpoint)
        if report is not None:
            return report.id
        for node in self.nodes:
            if endpoint in (node.endpoint, node.announced, node.ip_endpoint):
                return node.id
        return None

    def by_endpoint(self, endpoint: Endpoint) -> ClusterNode | None:
        node_id = self.id_of(endpoint)
        return self.node(node_id) if node_id else None

    @property
    def consistent(self) -> bool:
        """Every reachable node agrees on who owns which slot and who replicates whom."""
        tables = {
            (
                tuple(sorted(report.owners().items())),
                tuple(sorted((e.id, e.master_id) for e in report.entries.values() if not e.handshake)),
            )
            for report in self.reports.values()
        }
        return len(tables) <= 1

    def problems(self) -> list[str]:
        """Why this cluster is not fully healthy, one short phrase each (empty when it is)."""
        found = [f"{endpoint.address} unreachable" for endpoint in self.unreachable]
        found += [
            f"{report.endpoint.address} says cluster_state {report.cluster_state}"
            for report in self.reports.values()
            if report.cluster_state != "ok"
        ]
        if not self.slots_covered:
            found.append(f"{self.slots_assigned}/{SLOTS} slots assigned")
        if self.open_slots:
            found.append(f"open slots {format_ranges(compress(self.open_slots))}")
        if not self.consistent:
            found.append("nodes disagree on slot owners or roles")
        found += [f"{_name(node)} unhealthy" for node in self.nodes if not node.healthy]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()


def _in_ranges(slot: int, ranges: Iterable[SlotRange]) -> bool:
    return any(first <= slot <= last for first, last in ranges)


def _name(node: ClusterNode) -> str:
    return f"{node.endpoint.address if node.endpoint else '?'} ({node.id[:8]})"


# --- reports of what an operation did --------------------------------------------------------------


@dataclass
class ClusterReport:
    """What an operation changed, in order. ``changed`` is False when the run was a no-op."""

    actions: list[str] = field(default_factory=list)
    moved_slots: int = 0
    moved_keys: int = 0
    fixed_slots: list[int] = field(default_factory=list)
    blocked_slots: list[int] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    move_seconds: float = 0.0
    view: ClusterView | None = None

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def act(self, message: str) -> None:
        log.info("redis cluster: %s", message)
        self.actions.append(message)


# --- talking to nodes ------------------------------------------------------------------------------


def _short_retry(fn: Callable[[], T]) -> T:
    # A connection reset mid-operation (pod restart) deserves one more try; anything longer is the
    # caller's business (kopf or the CLI retries the whole, idempotent, operation).
    return retry(
        retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
        stop=stop_after_attempt(2),
        wait=wait_fixed(0.2),
        reraise=True,
    )(fn)()


class _Session:
    """Long-lived clients per node for one operation; every error leaves here secret-free."""

    def __init__(self, password: str | None) -> None:
        self.password = password
        self._clients: dict[tuple[Endpoint, bool], redis.Redis] = {}

    def client(self, endpoint: Endpoint, *, binary: bool = False) -> redis.Redis:
        key = (endpoint, binary)
        if key not in self._clients:
            self._clients[key] = connect(
                endpoint,
                self.password,
                socket_timeout=BULK_SOCKET_TIMEOUT,
                decode_responses=not binary,
            )
        return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _wrap(self, endpoint: Endpoint, exc: Exception) -> Exception:
        detail = describe_error(exc, self.password)
        text = str(exc)
        if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError) or (
            isinstance(exc, redis.ResponseError) and text.startswith(("NOAUTH", "WRONGPASS"))
        ):
            return OperationError(f"redis {endpoint.address} refused auth: {detail}")
        if isinstance(exc, NETWORK_ERRORS):
            return NotReady(f"redis {endpoint.address} unreachable: {detail}")
        return OperationError(f"redis {endpoint.address}: {detail}")

    def run(self, endpoint: Endpoint, fn: Callable[[redis.Redis], T], *, binary: bool = False) -> T:
        client = self.client(endpoint, binary=binary)
        try:
            return _short_retry(lambda: fn(client))
        except (redis.RedisError, OSError) as exc:
            raise self._wrap(endpoint, exc) from None

    def cmd(self, endpoint: Endpoint, *args: Any) -> Any:
        return self.run(endpoint, lambda c: c.execute_command(*args))

    def try_cmd(self, endpoint: Endpoint, *args: Any) -> str | None:
        """Run a command whose refusal is an expected outcome: the error text, or None on success."""
        client = self.client(endpoint)
        try:
            _short_retry(lambda: client.execute_command(*args))
        except redis.ResponseError as exc:
            return describe_error(exc, self.password)
        except (redis.RedisError, OSError) as exc:
            raise self._wrap(endpoint, exc) from None
        return None

    def pipeline(
        self, endpoint: Endpoint, commands: Sequence[Sequence[Any]], *, binary: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one round trip; per-command errors come back as exception objects."""
        if not commands:
            return []

        def send(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return list(pipe.execute(raise_on_error=False))

        return self.run(endpoint, send, binary=binary)

    def report(self, endpoint: Endpoint) -> NodeReport:
        nodes_text, info_text, replication = self.pipeline(
            endpoint, [("CLUSTER", "NODES"), ("CLUSTER", "INFO"), ("INFO", "replication")]
        )
        for reply in (nodes_text, info_text, replication):
            if isinstance(reply, Exception):
                raise self._wrap(endpoint, reply)
        entries = {entry.id: entry for entry in parse_cluster_nodes(str(nodes_text))}
        me = next((entry for entry in entries.values() if entry.myself), None)
        if me is None:
            raise OperationError(f"redis {endpoint.address}: CLUSTER NODES has no 'myself' line")
        if isinstance(replication, Mapping):
            repl = {str(k): str(v) for k, v in replication.items()}
        else:
            repl = parse_info(str(replication))
        return NodeReport(endpoint, me.id, parse_info(str(info_text)), entries, repl)

    def reports(
        self, endpoints: Iterable[Endpoint]
    ) -> tuple[dict[Endpoint, NodeReport], dict[Endpoint, str]]:
        """Ask every node in parallel (a dead pod costs one connect timeout, not one per node)."""
        endpoints = list(dict.fromkeys(endpoints))
        found: dict[Endpoint, NodeReport] = {}
        failed: dict[Endpoint, str] = {}
        if not endpoints:
            return found, failed

        def ask(endpoint: Endpoint) -> NodeReport | str:
            try:
                return self.report(endpoint)
            except (NotReady, OperationError) as exc:
                return str(exc)

        with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
            for endpoint, result in zip(endpoints, pool.map(ask, endpoints), strict=True):
                if isinstance(result, NodeReport):
                    found[endpoint] = result
                else:
                    failed[endpoint] = result
        return found, failed

    def view(self, endpoints: Iterable[Endpoint]) -> ClusterView:
        reports, unreachable = self.reports(endpoints)
        return _merge(reports, unreachable)

    def require(self, endpoints: Iterable[Endpoint]) -> dict[Endpoint, NodeReport]:
        reports, unreachable = self.reports(endpoints)
        if unreachable:
            raise NotReady("; ".join(unreachable.values()))
        return reports


@contextmanager
def _session(password: str | None) -> Iterator[_Session]:
    session = _Session(password)
    try:
        yield session
    finally:
        session.close()


def _merge(reports: dict[Endpoint, NodeReport], unreachable: dict[Endpoint, str]) -> ClusterView:
    # One coherent table (the reporter with the newest epoch) for roles and slots; a node's own line
    # for open slots; failure flags by majority of the peers that know the node, so one peer's
    # transient PFAIL does not mark a node unhealthy.
    ordered = sorted(
        reports.values(), key=lambda r: (-r.current_epoch, -len(r.entries), r.endpoint.host, r.endpoint.port)
    )
    by_id = {report.id: report for report in ordered}
    endpoint_of = {report.id: report.endpoint for report in ordered}
    ids: list[str] = []
    for report in ordered:
        ids += [i for i, e in report.entries.items() if not e.handshake and i not in ids]
    nodes = []
    for node_id in ids:
        base = next(r.entries[node_id] for r in ordered if node_id in r.entries)
        own = by_id.get(node_id)
        peers = [r.entries[node_id] for r in ordered if r.id != node_id and node_id in r.entries]
        flags = {"master" if base.role == "master" else "slave"}
        for flag in _FAILURE_FLAGS:
            if peers and sum(flag in p.flags for p in peers) * 2 > len(peers):
                flags.add(flag)
        connected = sum(p.link_state == "connected" for p in peers)
        link = "connected" if not peers or connected * 2 >= len(peers) else "disconnected"
        me = own.myself if own else base
        nodes.append(
            ClusterNode(
                id=node_id,
                endpoint=endpoint_of.get(node_id) or me.announced or me.ip_endpoint or base.ip_endpoint,
                announced=me.announced or base.announced,
                ip_endpoint=base.ip_endpoint or me.ip_endpoint,
                bus_port=me.bus_port or base.bus_port,
                role=base.role,
                master_id=base.master_id,
                slots=base.slots,
                flags=frozenset(flags),
                link_state=link,
                config_epoch=base.config_epoch,
                reachable=own is not None,
                cluster_state=own.cluster_state if own else None,
                replication_link=own.replication.get("master_link_status") if own else None,
                migrating=dict(me.migrating) if own else {},
                importing=dict(me.importing) if own else {},
            )
        )
    return ClusterView(nodes=nodes, reports=dict(reports), unreachable=dict(unreachable))


def observe_cluster(endpoints: Iterable[Endpoint], password: str | None) -> ClusterView:
    """What the cluster looks like from every reachable endpoint; unreachable ones are listed, not raised."""
    with _session(password) as session:
        return session.view(endpoints)


def _wait(what: str, problems: Callable[[], list[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while True:
        try:
            last = problems()
        except NotReady as exc:  # a node restarting mid-poll: keep polling (OperationError is final)
            last = [str(exc)]
        if not last:
            return
        if time.monotonic() >= deadline:
            more = f" (+{len(last) - 5} more)" if len(last) > 5 else ""
            raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}: {'; '.join(last[:5])}{more}")
        time.sleep(POLL_INTERVAL)


def wait_for_cluster_ok(
    endpoints: Sequence[Endpoint], password: str | None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterView:
    """Wait until every endpoint answers, says cluster_state ok, and all agree on slots and roles."""
    with _session(password) as session:
        latest: list[ClusterView] = []

        def problems() -> list[str]:
            latest[:] = [session.view(endpoints)]
            return latest[0].problems()

        _wait("a healthy cluster", problems, timeout)
        return latest[0]


# --- addresses -------------------------------------------------------------------------------------


def resolve_ipv4(host: str) -> str:
    """CLUSTER MEET takes an IP: resolve a pod name (or pass an IPv4 literal through)."""
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise NotReady(f"cannot resolve {host}: {exc}") from None
    if not infos:
        raise NotReady(f"cannot resolve {host} to an IPv4 address")
    return str(infos[0][4][0])


def _bus_port(report: NodeReport) -> int:
    # Before its first MEET a node shows ":port@cport" for itself: the bus port is still there.
    return report.myself.bus_port or report.endpoint.port + 10000


def _meet(
    session: _Session, source: Endpoint, target: NodeReport, report: ClusterReport, why: str = ""
) -> None:
    ip = resolve_ipv4(target.endpoint.host)
    session.cmd(source, "CLUSTER", "MEET", ip, target.endpoint.port, _bus_port(target))
    report.act(f"MEET {target.endpoint.address} ({ip}) from {source.address}{why}")


def _assigned(report: NodeReport) -> bool:
    return any(entry.slots for entry in report.entries.values() if not entry.handshake)


class _Joiner:
    """Make ``members`` one cluster: MEET whoever the anchor does not know, then wait until all know all.

    The anchor is the member that already knows the most others (then holds the most slots), so a
    replaced, empty pod is met by the cluster rather than the cluster by it. Two groups that both
    have slots assigned are never merged: Redis would settle the conflict by epoch and drop data.
    That check is made once, on the state found before this operation changed anything.
    """

    def __init__(self, session: _Session, members: Sequence[Endpoint], report: ClusterReport) -> None:
        self.session, self.members, self.report = session, list(members), report
        self.reports = session.require(members)
        self.ids = {endpoint: r.id for endpoint, r in self.reports.items()}
        duplicated = [i for i, n in Counter(self.ids.values()).items() if n > 1]
        if duplicated:
            raise OperationError(
                f"two endpoints answered as the same node {duplicated[0][:8]}: check the endpoints"
            )
        self.anchor = max(
            members,
            key=lambda e: (
                sum(self.reports[e].knows(self.ids[m]) for m in members),
                self.reports[e].slots_assigned,
            ),
        )
        seed = self.reports[self.anchor]
        for member in members:
            other = self.reports[member]
            strangers = not seed.knows(other.id) and not other.knows(seed.id)
            if member != self.anchor and strangers and _assigned(other) and _assigned(seed):
                raise OperationError(
                    f"{member.address} is part of another cluster with slots assigned; refusing to merge "
                    "two clusters (CLUSTER RESET it if it should join empty)"
                )
        self.met_at: dict[Endpoint, float] = {}
        self._meet_unknown(self.reports)

    def _meet_unknown(self, current: Mapping[Endpoint, NodeReport]) -> None:
        seed = current[self.anchor]
        for member in self.members:
            if member == self.anchor or seed.knows(self.ids[member]):
                continue
            if time.monotonic() - self.met_at.get(member, -REMEET_AFTER) < REMEET_AFTER:
                continue
            if member not in self.met_at and current[member].knows(seed.id):
                continue  # gossip is about to tell the anchor
            why = " (retry)" if member in self.met_at else " (joining)"
            _meet(self.session, self.anchor, current[member], self.report, why)
            self.met_at[member] = time.monotonic()

    def wait(
        self, timeout: float, step: Callable[[Mapping[Endpoint, NodeReport]], list[str]] | None = None
    ) -> dict[Endpoint, NodeReport]:
        """Poll until all know all; ``step`` runs on every poll and may report what it still awaits."""

        def problems() -> list[str]:
            current = self.session.require(self.members)
            self._meet_unknown(current)
            found = [
                f"{e.address} does not know {m.address} yet"
                for e in self.members
                for m in self.members
                if e != m and not current[e].knows(self.ids[m])
            ]
            return found + (step(current) if step else [])

        _wait("all members to know each other", problems, timeout)
        self.reports = self.session.require(self.members)
        return self.reports


def _join(
    session: _Session, members: Sequence[Endpoint], report: ClusterReport, timeout: float
) -> dict[Endpoint, NodeReport]:
    return _Joiner(session, members, report).wait(timeout)


# --- create ----------------------------------------------------------------------------------------


def _validate_shards(shards: Sequence[Sequence[Endpoint]]) -> list[Endpoint]:
    if not shards or any(not shard for shard in shards):
        raise OperationError("a cluster needs at least one shard, each with at least one member")
    everyone = [endpoint for shard in shards for endpoint in shard]
    dupes = [e.address for e, n in Counter(everyone).items() if n > 1]
    if dupes:
        raise OperationError(f"endpoints listed twice: {', '.join(dupes)}")
    return everyone


def _shard_master(shard: Sequence[Endpoint], reports: Mapping[Endpoint, NodeReport]) -> Endpoint:
    """The shard member acting as master: the intended one, unless it has failed over to a sibling."""
    intended = reports[shard[0]].myself
    siblings = {reports[e].id: e for e in shard}
    if intended.role == "replica" and intended.master_id in siblings:
        return siblings[intended.master_id]
    if intended.role == "master" and not intended.slots:
        for endpoint in shard[1:]:
            me = reports[endpoint].myself
            if me.role == "master" and me.slots:
                return endpoint
    return shard[0]


def _dbsize(session: _Session, endpoint: Endpoint) -> int:
    return int(session.cmd(endpoint, "DBSIZE"))


def _attach_replica(
    session: _Session, replica: NodeReport, master: NodeReport, report: ClusterReport
) -> None:
    me = replica.myself
    if me.role == "replica" and me.master_id == master.id:
        return
    if me.role == "master" and me.slots:
        raise OperationError(
            f"{replica.endpoint.address} is a master owning slots {format_ranges(me.slots)}; "
            f"it cannot become a replica of {master.endpoint.address} without losing data"
        )
    if me.role == "master" and _dbsize(session, replica.endpoint):
        raise OperationError(
            f"{replica.endpoint.address} holds keys but no slots; refusing to make it a replica "
            "(FLUSHALL it if the data is disposable)"
        )
    session.cmd(replica.endpoint, "CLUSTER", "REPLICATE", master.id)
    report.act(f"{replica.endpoint.address} replicates {master.endpoint.address}")


def _roles_problems(
    reports: Mapping[Endpoint, NodeReport], expected: Mapping[str, str | None], *, covered: bool = True
) -> list[str]:
    """Everyone agrees on ``expected`` (node id -> master id or None for masters) and is ok."""
    problems = []
    for endpoint, current in reports.items():
        if covered and current.cluster_state != "ok":
            problems.append(f"{endpoint.address} says cluster_state {current.cluster_state}")
        for node_id, master_id in expected.items():
            entry = current.entries.get(node_id)
            if entry is None or entry.flags & _FAILURE_FLAGS:
                problems.append(f"{endpoint.address} does not see {node_id[:8]} healthy")
            elif entry.master_id != master_id:
                problems.append(f"{endpoint.address} sees {node_id[:8]} replicating {entry.master_id}")
        if covered and current.slots_assigned != SLOTS:
            problems.append(f"{endpoint.address} sees {current.slots_assigned}/{SLOTS} slots")
    owner_maps = {tuple(sorted(r.owners().items())) for r in reports.values()}
    if len(owner_maps) > 1:
        problems.append("nodes disagree on slot owners")
    return problems


def create_cluster(
    shards: Sequence[Sequence[Endpoint]], password: str | None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterReport:
    """Form a cluster: the first endpoint of each shard is its master, the others its replicas.

    Idempotent: only missing pieces are added (unknown members are met, unassigned slots go to the
    shard the even split gives them to, replicas are attached). Slots that are already assigned are
    never moved, so a healthy cluster reports ``changed == False``.
    """
    started = time.monotonic()
    everyone = _validate_shards(shards)
    report = ClusterReport()
    with _session(password) as session:
        joiner = _Joiner(session, everyone, report)
        reports = joiner.reports
        ids = joiner.ids
        member_ids = set(ids.values())
        for endpoint, current in reports.items():
            foreign = [
                e for e in current.entries.values() if e.id not in member_ids and e.slots and not e.handshake
            ]
            if foreign:
                raise OperationError(
                    f"{endpoint.address} knows node {foreign[0].id[:8]} owning slots that is not one of the "
                    "given members; refusing to create over another cluster"
                )

        masters = [_shard_master(shard, reports) for shard in shards]
        # Slots are assigned while gossip is still spreading the MEETs: every member's own claims, read
        # before anything changed, count as taken, so nothing already owned is ever assigned again.
        taken: set[int] = set()
        for current in reports.values():
            taken.update(current.owners())
            taken.update(expand(current.myself.slots))
        for master, planned in zip(masters, allocate_slots(len(shards)), strict=True):
            missing = compress(s for s in range(planned[0], planned[1] + 1) if s not in taken)
            if not missing:
                continue
            args = [part for first, last in missing for part in (first, last)]
            session.cmd(master, "CLUSTER", "ADDSLOTSRANGE", *args)
            report.act(f"assigned slots {format_ranges(missing)} to {master.address}")

        pairs = [(member, master) for shard, master in zip(shards, masters, strict=True) for member in shard]
        pairs = [(member, master) for member, master in pairs if member != master]
        pending = dict(pairs)

        def attach_ready(current: Mapping[Endpoint, NodeReport]) -> list[str]:
            # A replica can follow its master as soon as it knows it; no need to wait for the full mesh.
            for replica, master in list(pending.items()):
                if current[replica].knows(ids[master]):
                    _attach_replica(session, current[replica], current[master], report)
                    del pending[replica]
            return [f"{r.address} does not know its master {m.address} yet" for r, m in pending.items()]

        joiner.wait(timeout, attach_ready)

        expected: dict[str, str | None] = {ids[m]: None for m in masters}
        expected.update({ids[replica]: ids[master] for replica, master in pairs})
        _wait(
            "cluster_state ok on every member",
            lambda: _roles_problems(session.require(everyone), expected),
            timeout,
        )
        report.view = session.view(everyone)
    report.elapsed = time.monotonic() - started
    return report


# --- heal ------------------------------------------------------------------------------------------


def _stale_pairs(
    reports: Mapping[Endpoint, NodeReport], addresses: Mapping[str, tuple[str, int, int]]
) -> list[tuple[Endpoint, str]]:
    """(reporter, node id) pairs where the reporter does not know the node at its current address."""
    stale = []
    for endpoint, current in reports.items():
        for node_id, (ip, port, bus) in addresses.items():
            if node_id == current.id:
                continue
            entry = current.entries.get(node_id)
            if (
                entry is None
                or entry.noaddr
                or entry.handshake
                or (entry.ip, entry.port, entry.bus_port) != (ip, port, bus)
            ):
                stale.append((endpoint, node_id))
    return stale


def heal_cluster(
    endpoints: Sequence[Endpoint], password: str | None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterReport:
    """After restarts (possibly with new IPs or ports): make every node know every other at its
    current address, forget ghosts, close open slots.

    Nodes announce hostnames, but the cluster bus still connects to the IP each node last gossiped;
    after a mass restart with new IPs nobody can reach anybody (OT redis-operator #20/#1233). A
    CLUSTER MEET to the current address makes the receiver match the handshake to the known node id
    and update its address; peers' pings then fix the rest.
    """
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        reports, unreachable = session.reports(endpoints)
        if not reports:
            raise NotReady("no cluster member answered: " + "; ".join(unreachable.values()))
        for endpoint, reason in unreachable.items():
            log.warning("heal: skipping %s: %s", endpoint.address, reason)
        addresses = {r.id: (resolve_ipv4(e.host), e.port, _bus_port(r)) for e, r in reports.items()}
        by_id = {r.id: r for r in reports.values()}
        met_at: dict[tuple[Endpoint, str], float] = {}

        def problems() -> list[str]:
            current, _ = session.reports(reports)
            stale = _stale_pairs(current, addresses)
            for reporter, node_id in stale:
                last = met_at.get((reporter, node_id))
                if last is not None and time.monotonic() - last < REMEET_AFTER:
                    continue
                entry = current[reporter].entries.get(node_id) if reporter in current else None
                why = " (unknown)" if entry is None else f" (was {entry.ip}:{entry.port}@{entry.bus_port})"
                _meet(session, reporter, by_id[node_id], report, why)
                met_at[(reporter, node_id)] = time.monotonic()
            missing = [e.address for e in reports if e not in current]
            return [f"{e} stopped answering" for e in missing] + [
                f"{r.address} has a stale address for {by_id[n].endpoint.address}" for r, n in stale
            ]

        _wait("every member to know every other at its current address", problems, timeout)

        if not unreachable:
            _forget_ghosts(session, reports, report)
        _fix_open_slots(session, list(reports), report, timeout)
        if not unreachable:
            # Only then can the whole cluster be expected to be ok (a dead master without replica
            # keeps it down however well the rest is healed).
            _wait(
                "cluster_state ok after healing",
                lambda: _state_problems(session.require(reports)),
                timeout,
            )
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    return report


def _state_problems(reports: Mapping[Endpoint, NodeReport]) -> list[str]:
    if not all(r.slots_assigned == SLOTS for r in reports.values()):
        return []  # an incomplete cluster cannot become ok; heal does not assign slots
    return [
        f"{e.address} says cluster_state {r.cluster_state}"
        for e, r in reports.items()
        if r.cluster_state != "ok"
    ]


def _forget_ghosts(session: _Session, reports: Mapping[Endpoint, NodeReport], report: ClusterReport) -> None:
    """Forget nodes that are no member's id, own no slots, and are failed or address-less.

    Only called when every member answered, so every legitimate id is known. A replaced pod with a
    fresh nodes.conf leaves its old id behind like this, forever flagged fail.
    """
    members = {r.id for r in reports.values()}
    ghosts: set[str] = set()
    for current in reports.values():
        for entry in current.entries.values():
            if entry.id not in members and not entry.slots and (entry.failed or entry.noaddr):
                ghosts.add(entry.id)
    for ghost in sorted(ghosts):
        _forget_everywhere(session, list(reports), ghost, report)


def _forget_everywhere(
    session: _Session, on: Sequence[Endpoint], node_id: str, report: ClusterReport
) -> None:
    refused = []
    for endpoint in on:
        error = session.try_cmd(endpoint, "CLUSTER", "FORGET", node_id)
        if error and "Unknown node" not in error:
            refused.append(f"{endpoint.address}: {error}")
    if refused:
        log.warning("CLUSTER FORGET %s refused on %s", node_id[:8], "; ".join(refused))
    report.forgotten.append(node_id)
    report.act(f"forgot {node_id[:8]} on {len(on) - len(refused)} nodes")


# --- keys and slots --------------------------------------------------------------------------------


@dataclass
class _Moves:
    """The addresses MIGRATE needs: how a source node reaches a target node."""

    view: ClusterView

    def endpoint(self, node_id: str) -> Endpoint:
        node = self.view.node(node_id)
        if node is None or node.endpoint is None:
            raise NotReady(f"node {node_id[:8]} has no known address")
        return node.endpoint

    def migrate_to(self, node_id: str) -> tuple[str, int]:
        # The gossiped IP is what the cluster bus already reaches; the announced name is a fallback.
        node = self.view.node(node_id)
        if node is None:
            raise NotReady(f"node {node_id[:8]} is not in the cluster")
        if node.ip_endpoint is not None:
            return node.ip_endpoint.host, node.ip_endpoint.port
        if node.announced is not None:
            return node.announced.host, node.announced.port
        raise NotReady(f"node {node_id[:8]} has no known address")


def _migrate_args(
    host: str, port: int, keys: Sequence[bytes], password: str | None, *, replace: bool
) -> list[Any]:
    args: list[Any] = ["MIGRATE", host, port, "", 0, MIGRATE_TIMEOUT_MS]
    if replace:
        args.append("REPLACE")
    if password:
        args += ["AUTH", password]
    return [*args, "KEYS", *keys]


def _drain_slots(
    session: _Session,
    source: Endpoint,
    target: tuple[str, int],
    slots: Sequence[int],
    *,
    replace: bool,
    target_endpoint: Endpoint | None = None,
) -> int:
    """MIGRATE every key of ``slots`` from ``source`` to ``target``; returns how many moved.

    ``replace``: the source is the slot's owner, whose copy is the one clients see, so it wins
    over any stale copy on the target. Otherwise the source holds strays; where the target already
    has the key, the target's copy is the visible one and the stray is dropped.
    """
    moved = 0
    pending = list(slots)
    host, port = target
    while pending:
        replies = session.pipeline(
            source, [("CLUSTER", "GETKEYSINSLOT", s, KEYS_PER_MIGRATE) for s in pending], binary=True
        )
        batches: list[tuple[int, list[bytes]]] = []
        for slot, reply in zip(pending, replies, strict=True):
            if isinstance(reply, Exception):
                raise session._wrap(source, reply)
            if reply:
                batches.append((slot, list(reply)))
        if not batches:
            return moved
        results = session.pipeline(
            source,
            [_migrate_args(host, port, keys, session.password, replace=replace) for _, keys in batches],
            binary=True,
        )
        for (slot, keys), result in zip(batches, results, strict=True):
            if not isinstance(result, Exception) or "NOKEY" in str(result):
                moved += len(keys)
                continue
            if "BUSYKEY" in str(result) and not replace and target_endpoint is not None:
                moved += _settle_busy_keys(session, source, target_endpoint, target, slot, keys)
                continue
            raise OperationError(
                f"MIGRATE of slot {slot} from {source.address} to {host}:{port} failed: "
                f"{describe_error(result, session.password)} (slot left open; fix_open_slots resumes it)"
            )
        pending = [slot for slot, _ in batches]
    return moved


def _asking(client: redis.Redis, *args: Any) -> Any:
    # ASKING lets a key command through on a node that imports, rather than owns, the slot.
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*args)
    return pipe.execute()[-1]


def _settle_busy_keys(
    session: _Session,
    source: Endpoint,
    target: Endpoint,
    address: tuple[str, int],
    slot: int,
    keys: Sequence[bytes],
) -> int:
    """Keys that exist on both sides: the target's copy is visible to clients, the source's is a stray."""

    def on(endpoint: Endpoint, *args: Any) -> Any:
        def send(client: redis.Redis) -> Any:
            return _asking(client, *args)

        return session.run(endpoint, send, binary=True)

    settled = 0
    for key in keys:
        if not on(source, "EXISTS", key):
            settled += 1  # moved by the MIGRATE that reported the busy ones
            continue
        if on(target, "EXISTS", key):
            on(source, "DEL", key)
            log.warning(
                "slot %d: dropped a stale duplicate key on %s (the visible copy wins)", slot, source.address
            )
            continue
        on(source, *_migrate_args(*address, [key], session.password, replace=False))
        settled += 1
    return settled


def _setslot_all(
    session: _Session, endpoint: Endpoint, slots: Sequence[int], *state: str, strict: bool = True
) -> list[tuple[int, str]]:
    """SETSLOT for many slots in one round trip; returns the refusals when not ``strict``."""
    replies = session.pipeline(endpoint, [("CLUSTER", "SETSLOT", slot, *state) for slot in slots])
    errors = [
        (slot, describe_error(reply, session.password))
        for slot, reply in zip(slots, replies, strict=True)
        if isinstance(reply, Exception)
    ]
    if errors and strict:
        slot, error = errors[0]
        raise OperationError(
            f"CLUSTER SETSLOT {slot} {' '.join(state[:1])} refused by {endpoint.address}: {error}"
            + (f" (and {len(errors) - 1} more slots)" if len(errors) > 1 else "")
        )
    return errors


def _move_batch(
    session: _Session,
    moves: _Moves,
    source_id: str,
    target_id: str,
    slots: Sequence[int],
    others: Sequence[Endpoint],
) -> int:
    source, target = moves.endpoint(source_id), moves.endpoint(target_id)
    # Target first: from the moment the source answers ASK, the target must accept the key.
    _setslot_all(session, target, slots, "IMPORTING", source_id)
    _setslot_all(session, source, slots, "MIGRATING", target_id)
    keys = _drain_slots(session, source, moves.migrate_to(target_id), slots, replace=True)
    _setslot_all(session, target, slots, "NODE", target_id)
    refused = _setslot_all(session, source, slots, "NODE", target_id, strict=False)
    if refused:
        # Gossip may have beaten us: the target's bumped epoch already took the slots away (and an
        # emptied master turns into a replica of the new owner, refusing SETSLOT). Nothing to do then.
        owners = session.report(source).owners()
        again = [slot for slot, _ in refused if owners.get(slot) != target_id]
        if again:
            # A key written between the last GETKEYSINSLOT and SETSLOT: move it and try once more.
            keys += _drain_slots(session, source, moves.migrate_to(target_id), again, replace=True)
            _setslot_all(session, source, again, "NODE", target_id)
    for other in others:
        if other in (source, target):
            continue
        try:
            # Gossip would carry the target's bumped epoch anyway; telling everyone now shortens the
            # window in which clients get bounced between stale owners.
            _setslot_all(session, other, slots, "NODE", target_id, strict=False)
        except NotReady as exc:
            log.warning("could not tell %s about moved slots: %s", other.address, exc)
    return keys


def _execute_moves(
    session: _Session,
    view: ClusterView,
    plan: Sequence[SlotMove],
    report: ClusterReport,
    progress: Progress | None,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> None:
    total = sum(len(move.slots) for move in plan)
    if not total:
        return
    moves = _Moves(view)
    masters = [n.endpoint for n in view.masters if n.endpoint is not None and n.reachable]
    started = time.monotonic()
    done = 0
    if progress:
        progress(0, total)
    for move in plan:
        keys = 0
        for start in range(0, len(move.slots), slots_per_batch):
            batch = move.slots[start : start + slots_per_batch]
            keys += _move_batch(session, moves, move.source, move.target, batch, masters)
            done += len(batch)
            report.moved_slots += len(batch)
            if progress:
                progress(done, total)
        report.moved_keys += keys
        report.act(
            f"moved {len(move.slots)} slots ({format_ranges(move.ranges)}, {keys} keys) from "
            f"{moves.endpoint(move.source).address} to {moves.endpoint(move.target).address}"
        )
    report.move_seconds += time.monotonic() - started


def _resolve_node(view: ClusterView, node: Endpoint | str) -> str:
    if isinstance(node, str):
        if view.node(node) is None:
            raise OperationError(f"node {node[:8]} is not in the cluster")
        return node
    node_id = view.id_of(node)
    if node_id is None:
        raise NotReady(f"{node.address} is not a known cluster member")
    return node_id


def migrate_slots(
    endpoints: Sequence[Endpoint],
    password: str | None,
    source: Endpoint | str,
    target: Endpoint | str,
    slots: Iterable[int],
    *,
    progress: Progress | None = None,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> ClusterReport:
    """Move ``slots`` from master ``source`` to master ``target`` (endpoints or node ids), keys and all.

    Slots ``source`` does not own are refused up front; open slots are closed first.
    """
    started = time.monotonic()
    report = ClusterReport()
    wanted = sorted(set(slots))
    with _session(password) as session:
        view = _prepare(session, endpoints, report)
        source_id, target_id = _resolve_node(view, source), _resolve_node(view, target)
        target_node = view.node(target_id)
        if target_node is None or not target_node.is_master:
            raise OperationError(f"target {target!s} is not a master")
        owned = view.ownership().get(source_id, set())
        foreign = [s for s in wanted if s not in owned]
        if foreign:
            raise OperationError(f"source {source!s} does not own slots {format_ranges(compress(foreign))}")
        if source_id != target_id and wanted:
            plan = [SlotMove(source_id, target_id, tuple(wanted))]
            _execute_moves(session, view, plan, report, progress, slots_per_batch)
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    return report


def _prepare(session: _Session, endpoints: Sequence[Endpoint], report: ClusterReport) -> ClusterView:
    """A view fit for moving slots: everyone answers and says ok, every slot covered, none left open.

    A freshly joined master reports CLUSTERDOWN for a couple of seconds (Redis holds new masters
    back before accepting writes) and would refuse the keys MIGRATE sends it, so wait that out.
    """
    view = session.view(endpoints)
    if view.unreachable:
        raise NotReady(
            "cannot move slots while members are unreachable: " + "; ".join(view.unreachable.values())
        )
    if view.open_slots:
        _fix_open_slots(session, endpoints, report, DEFAULT_TIMEOUT)
        view = session.view(endpoints)
    if not view.slots_covered:
        raise NotReady(
            f"only {view.slots_assigned}/{SLOTS} slots are assigned; create or heal the cluster first"
        )
    down = [_name(n) for n in view.masters if n.slots and (n.failed or n.pfail or not n.reachable)]
    if down:
        raise NotReady(f"masters owning slots are down: {', '.join(down)}")
    _wait(
        "cluster_state ok before moving slots",
        lambda: _roles_problems(session.require(endpoints), {}),
        DEFAULT_TIMEOUT,
    )
    return session.view(endpoints)


# --- open slots ------------------------------------------------------------------------------------


def fix_open_slots(
    endpoints: Sequence[Endpoint], password: str | None, timeout: float = DEFAULT_TIMEOUT
) -> ClusterReport:
    """Close every MIGRATING/IMPORTING slot so each has one owner and no key is lost.

    Per slot: if the owner is migrating to a reachable master, the move is finished (that is where
    the interrupted reshard was going); otherwise it is rolled back to the owner. Keys found on any
    other master are brought to the slot's final owner. Where a key exists twice, the owner's copy
    is kept: it is the one clients have been reading and writing.
    """
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        _fix_open_slots(session, endpoints, report, timeout)
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    if report.blocked_slots:
        raise NotReady(
            f"slots {format_ranges(compress(report.blocked_slots))} stay open: a node holding their keys "
            "is unreachable; retry when it is back"
        )
    return report


def _fix_open_slots(
    session: _Session, endpoints: Sequence[Endpoint], report: ClusterReport, timeout: float
) -> None:
    view = session.view(endpoints)
    open_slots = view.open_slots
    if not open_slots:
        return
    masters = [n for n in view.masters if n.reachable and n.endpoint is not None]
    moves = _Moves(view)
    # One round trip per master for all open slots: who holds keys where.
    counts: dict[str, dict[int, int]] = {}
    for master in masters:
        assert master.endpoint is not None
        replies = session.pipeline(master.endpoint, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in open_slots])
        counts[master.id] = {
            s: int(r) for s, r in zip(open_slots, replies, strict=True) if not isinstance(r, Exception)
        }
    for slot, state in open_slots.items():
        try:
            _fix_slot(session, view, moves, slot, state, counts, masters, report)
        except NotReady as exc:
            log.warning("slot %d stays open: %s", slot, exc)
            report.blocked_slots.append(slot)
    expected_closed = [s for s in open_slots if s not in report.blocked_slots]

    def problems() -> list[str]:
        current = session.view(endpoints)
        still = [s for s in expected_closed if s in current.open_slots]
        disagree = [
            s for s in expected_closed if len({r.owners().get(s) for r in current.reports.values()}) > 1
        ]
        return [f"slots {format_ranges(compress(still))} still open"] * bool(still) + [
            f"nodes disagree on the owner of slots {format_ranges(compress(disagree))}"
        ] * bool(disagree)

    _wait("open slots to close", problems, timeout)


def _fix_slot(
    session: _Session,
    view: ClusterView,
    moves: _Moves,
    slot: int,
    state: OpenSlot,
    counts: Mapping[str, Mapping[int, int]],
    masters: Sequence[ClusterNode],
    report: ClusterReport,
) -> None:
    reachable = {m.id for m in masters}
    holders = [m.id for m in masters if counts.get(m.id, {}).get(slot, 0) > 0]
    involved = (
        set(state.migrating)
        | set(state.migrating.values())
        | set(state.importing)
        | set(state.importing.values())
    )
    for node_id in involved:
        node = view.node(node_id)
        # A node that is down may hold keys that moved to it; closing the slot now would hide them.
        if node is not None and node.id not in reachable and not node.failed and node.role == "master":
            raise NotReady(f"slot {slot}: node {_name(node)} is unreachable")

    owner_node = view.owner_of(slot)
    owner = owner_node.id if owner_node is not None and owner_node.id in reachable else None
    claimed = False
    if owner_node is not None and owner is None:
        raise NotReady(f"slot {slot}: its owner {_name(owner_node)} is unreachable")
    if owner is None:
        # Nobody owns it: the open node with the most keys claims it (redis-cli --cluster fix does too).
        candidates = [n for n in involved | set(holders) if n in reachable]
        if not candidates:
            raise NotReady(f"slot {slot}: no reachable node to take it")
        owner = max(candidates, key=lambda n: (counts.get(n, {}).get(slot, 0), n in state.importing, n))
        session.cmd(moves.endpoint(owner), "CLUSTER", "SETSLOT", slot, "STABLE")
        session.cmd(moves.endpoint(owner), "CLUSTER", "ADDSLOTS", slot)
        claimed = True
        report.act(f"slot {slot} had no owner: assigned to {moves.endpoint(owner).address}")

    destination = owner
    heading = None if claimed else state.migrating.get(owner)
    target = view.node(heading) if heading else None
    if target is not None and target.id in reachable and target.is_master and target.id != owner:
        destination = target.id
        if state.importing.get(destination) != owner:
            session.cmd(moves.endpoint(destination), "CLUSTER", "SETSLOT", slot, "IMPORTING", owner)

    open_on = set(state.migrating) | set(state.importing)
    if destination == owner and owner in state.migrating:
        # Rolling back: the owner stops redirecting misses (to a node that will not get the slot)
        # before the strays come home; where a key exists twice, the owner's copy is the live one.
        _setslot_all(session, moves.endpoint(owner), [slot], "STABLE")
    keys = 0
    for holder in holders:
        if holder == destination:
            continue
        endpoint = moves.endpoint(holder)
        if holder not in open_on and holder != owner:
            # MIGRATE is only served for open slots on a non-owner; open it so the strays can leave.
            session.cmd(endpoint, "CLUSTER", "SETSLOT", slot, "IMPORTING", owner)
            open_on.add(holder)
        keys += _drain_slots(
            session,
            endpoint,
            moves.migrate_to(destination),
            [slot],
            replace=holder == owner,
            target_endpoint=moves.endpoint(destination),
        )

    if destination != owner:
        # The resharding order: the new owner first (clears its IMPORTING), then the old owner
        # (clears MIGRATING; refused if it still had keys), then everyone else.
        _setslot_all(session, moves.endpoint(destination), [slot], "NODE", destination)
        _setslot_all(session, moves.endpoint(owner), [slot], "NODE", destination)
        for other in masters:
            if other.id not in (owner, destination):
                _setslot_all(session, moves.endpoint(other.id), [slot], "NODE", destination, strict=False)
        done = f"finished moving slot {slot} to {moves.endpoint(destination).address}"
        leftovers = open_on - {owner, destination}
    else:
        done = f"closed slot {slot} on its owner {moves.endpoint(owner).address}"
        leftovers = open_on - {owner}
    # SETSLOT NODE <other> does not clear IMPORTING on a bystander; STABLE does, and keeps the owner.
    for node_id in sorted(leftovers & reachable):
        _setslot_all(session, moves.endpoint(node_id), [slot], "STABLE", strict=False)
    report.moved_keys += keys
    report.fixed_slots.append(slot)
    report.act(f"{done} ({keys} keys moved)")


# --- rebalance, add and remove shards --------------------------------------------------------------


def rebalance_cluster(
    endpoints: Sequence[Endpoint],
    password: str | None,
    *,
    masters: Sequence[Endpoint] | None = None,
    drain: Sequence[Endpoint] = (),
    progress: Progress | None = None,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> ClusterReport:
    """Even out slots over ``masters`` (default: every healthy master, empty ones included) minus
    ``drain``, moving as few slots as possible. A balanced cluster is left untouched."""
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        _rebalance(session, endpoints, report, masters, drain, progress, slots_per_batch)
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    return report


def _rebalance(
    session: _Session,
    endpoints: Sequence[Endpoint],
    report: ClusterReport,
    masters: Sequence[Endpoint] | None,
    drain: Sequence[Endpoint],
    progress: Progress | None,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> ClusterView:
    view = _prepare(session, endpoints, report)
    drained = {_resolve_node(view, e) for e in drain}
    if masters is None:
        targets = {n.id for n in view.masters if n.reachable and not n.flags & _FAILURE_FLAGS}
    else:
        targets = {_resolve_node(view, e) for e in masters}
    targets -= drained
    not_masters = [t for t in targets if not (node := view.node(t)) or not node.is_master]
    if not_masters:
        raise OperationError(f"cannot give slots to non-masters: {', '.join(n[:8] for n in not_masters)}")
    if not targets:
        raise OperationError("no master would be left to own the slots")
    plan = plan_rebalance(view.ownership(), targets)
    for move in plan:
        log.info("rebalance plan: %s", move)
    _execute_moves(session, view, plan, report, progress, slots_per_batch)
    return view


def add_shards(
    endpoints: Sequence[Endpoint],
    new_shards: Sequence[Sequence[Endpoint]],
    password: str | None,
    progress: Progress | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> ClusterReport:
    """Join ``new_shards`` (first endpoint of each: the master) and rebalance slots onto them.

    The new masters must be empty. Open slots are closed before anything moves. Rerunning after
    success (or after a crash half-way) converges to the same balanced layout.
    """
    started = time.monotonic()
    report = ClusterReport()
    added = _validate_shards(new_shards)
    existing = [e for e in endpoints if e not in added]
    everyone = [*existing, *added]
    with _session(password) as session:
        before = session.view(existing)
        if before.unreachable:
            raise NotReady("members unreachable: " + "; ".join(before.unreachable.values()))
        if before.open_slots:
            _fix_open_slots(session, existing, report, timeout)
        for shard in new_shards:
            own = session.report(shard[0])
            if not own.myself.slots and own.myself.role == "master" and _dbsize(session, shard[0]):
                raise OperationError(f"new master {shard[0].address} holds keys; refusing to add it")
        reports = _join(session, everyone, report, timeout)
        masters = [_shard_master(shard, reports) for shard in new_shards]
        for shard, master in zip(new_shards, masters, strict=True):
            for member in shard:
                if member != master:
                    _attach_replica(session, reports[member], reports[master], report)
        expected: dict[str, str | None] = {reports[m].id: None for m in masters}
        for shard, master in zip(new_shards, masters, strict=True):
            expected.update({reports[m].id: reports[master].id for m in shard if m != master})
        _wait(
            "new members to be seen with their roles",
            lambda: _roles_problems(session.require(everyone), expected),
            timeout,
        )
        current = session.view(everyone)
        targets = [n.endpoint for n in current.masters if n.slots and n.endpoint is not None]
        targets += [m for m in masters if m not in targets]
        _rebalance(session, everyone, report, targets, (), progress, slots_per_batch)
        _wait(
            "cluster_state ok after adding shards",
            lambda: _roles_problems(session.require(everyone), {}),
            timeout,
        )
        report.view = session.view(everyone)
    report.elapsed = time.monotonic() - started
    return report


def remove_shards(
    endpoints: Sequence[Endpoint],
    shard_masters_to_remove: Sequence[Endpoint],
    password: str | None,
    progress: Progress | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    slots_per_batch: int = SLOTS_PER_BATCH,
) -> ClusterReport:
    """Drain the given shards' slots to the remaining masters, then remove the shards' nodes.

    Removal: CLUSTER FORGET every removed node (masters and their replicas) on every remaining node,
    back to back so all of it happens inside the 60 s forget ban, then CLUSTER RESET HARD the
    removed nodes so nothing gossips them back. Removed nodes that are already gone are only
    forgotten.
    """
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        view = session.view(endpoints)
        leaving: set[str] = set()
        for endpoint in shard_masters_to_remove:
            node = view.by_endpoint(endpoint)
            if node is None:
                continue
            if node.role == "replica" and node.master_id:
                log.info("%s is a replica now: removing the shard of its master", endpoint.address)
                node = view.node(node.master_id) or node
            if not node.slots and not view.replicas_of(node.id) and _isolated(view, node, endpoint):
                continue  # removed by an earlier run
            leaving.add(node.id)
        leaving |= {r.id for m in list(leaving) for r in view.replicas_of(m)}
        if not leaving:
            report.view = view
            report.elapsed = time.monotonic() - started
            return report
        drain = [
            node.endpoint for i in leaving if (node := view.node(i)) and node.is_master and node.endpoint
        ]
        if any((n := view.node(i)) and n.slots for i in leaving):
            current = _rebalance(session, endpoints, report, None, drain, progress, slots_per_batch)
        else:
            current = view
        views = [current]

        def still_owning() -> list[str]:
            views[0] = session.view(endpoints)
            # Replicas may have followed their emptied master elsewhere; they leave all the same.
            leaving.update(r.id for m in list(leaving) for r in views[0].replicas_of(m))
            return [_name(n) for i in leaving if (n := views[0].node(i)) and n.slots]

        try:
            # Under concurrent writes a peer may still show the last SETSLOT's old owner for a moment
            # (it learns the new epoch by gossip), so settle before judging.
            _wait("drained masters to own no slots in every view", still_owning, SETTLE_TIMEOUT)
        except NotReady:
            # A move refused under load (TRYAGAIN, a busy key) leaves slots behind: drain once more.
            _rebalance(session, endpoints, report, None, drain, progress, slots_per_batch)
            try:
                _wait("drained masters to own no slots in every view", still_owning, SETTLE_TIMEOUT)
            except NotReady:
                still = ", ".join(still_owning())
                raise OperationError(f"removed masters still own slots after draining: {still}") from None
        current = views[0]
        leaving_endpoints = {e for e, r in current.reports.items() if r.id in leaving}
        staying = [e for e in current.reports if e not in leaving_endpoints]
        for node_id in sorted(leaving):
            _forget_everywhere(session, staying, node_id, report)
        for endpoint in sorted(leaving_endpoints):
            session.cmd(endpoint, "CLUSTER", "RESET", "HARD")
            report.act(f"reset {endpoint.address} (CLUSTER RESET HARD)")

        def problems() -> list[str]:
            reports = session.require(staying)
            back = [
                f"{e.address} still knows {i[:8]}"
                for e, r in reports.items()
                for i in leaving
                if i in r.entries
            ]
            for endpoint, current_report in reports.items():
                for node_id in leaving:
                    if node_id in current_report.entries:
                        session.try_cmd(endpoint, "CLUSTER", "FORGET", node_id)
            return back + _roles_problems(reports, {})

        _wait("removed nodes to be forgotten everywhere", problems, timeout)
        report.view = session.view(endpoints)
    report.elapsed = time.monotonic() - started
    return report


def _isolated(view: ClusterView, node: ClusterNode, endpoint: Endpoint) -> bool:
    """A node nobody else knows, which knows nobody: what remove_shards leaves behind."""
    own = view.reports.get(endpoint)
    known_elsewhere = any(node.id in r.entries for e, r in view.reports.items() if e != endpoint)
    return own is not None and len(own.entries) == 1 and not known_elsewhere


# --- replicas and failover -------------------------------------------------------------------------


def set_replicas(
    endpoints: Sequence[Endpoint],
    master: Endpoint,
    password: str | None,
    *,
    add: Sequence[Endpoint] = (),
    remove: Sequence[Endpoint] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> ClusterReport:
    """Attach ``add`` as replicas of ``master`` (met first if new) and remove ``remove`` from the cluster.

    Removed replicas are forgotten by every other node and reset. A master owning slots is never
    removed here: fail over first.
    """
    started = time.monotonic()
    report = ClusterReport()
    everyone = list(dict.fromkeys([*endpoints, master, *add]))
    with _session(password) as session:
        if add:
            reports = _join(session, [master, *add], report, timeout)
            for replica in add:
                _attach_replica(session, reports[replica], reports[master], report)
            master_id = reports[master].id
            added_ids = [reports[r].id for r in add]

            def attached() -> list[str]:
                # Every reachable node must know the replica in its role: masters that have never
                # heard of it ignore its failover election, so a later promotion would get no votes.
                current, _ = session.reports([e for e in everyone if e not in remove])
                problems = []
                for replica, replica_id in zip(add, added_ids, strict=True):
                    own = current.get(replica)
                    if own is None or own.myself.master_id != master_id:
                        problems.append(f"{replica.address} not yet a replica of {master.address}")
                    elif own.replication.get("master_link_status") != "up":
                        problems.append(f"{replica.address} still syncing")
                    problems += [
                        f"{endpoint.address} does not see {replica.address} replicating {master.address} yet"
                        for endpoint, other in current.items()
                        if endpoint != replica
                        and (
                            (seen := other.entries.get(replica_id)) is None
                            or seen.flags & _FAILURE_FLAGS
                            or seen.master_id != master_id
                        )
                    ]
                return problems

            _wait("new replicas to sync", attached, timeout)
        if remove:
            view = session.view(everyone)
            staying = [e for e in view.reports if e not in remove]
            for replica in remove:
                node = view.by_endpoint(replica)
                if node is None:
                    continue
                if node.is_master and node.slots:
                    raise OperationError(
                        f"{replica.address} is a master owning slots: fail over before removing it"
                    )
                if replica in view.reports and _isolated(view, node, replica):
                    continue
                _forget_everywhere(session, staying, node.id, report)
                if replica in view.reports:
                    session.cmd(replica, "CLUSTER", "RESET", "HARD")
                    report.act(f"reset {replica.address} (CLUSTER RESET HARD)")
        report.view = session.view(everyone)
    report.elapsed = time.monotonic() - started
    return report


def failover(
    replica: Endpoint,
    password: str | None,
    *,
    force: bool = False,
    takeover: bool = False,
    timeout: float = 30.0,
) -> ClusterReport:
    """Promote ``replica`` with CLUSTER FAILOVER (coordinated by default: no write is lost).

    ``force`` skips the handshake with a dead master; ``takeover`` also skips the election. Redis
    drops a manual failover that has not completed in 5 s (e.g. votes lost to a master that had not
    yet heard of a new replica), so the request is repeated until ``timeout``.
    """
    started = time.monotonic()
    report = ClusterReport()
    with _session(password) as session:
        own = session.report(replica)
        if own.myself.role == "master":
            report.elapsed = time.monotonic() - started
            return report
        if not takeover:
            _wait(
                f"every master to know {replica.address}",
                lambda: _unaware_masters(session, session.report(replica)),
                timeout,
            )
        args = ["CLUSTER", "FAILOVER"] + (["TAKEOVER"] if takeover else ["FORCE"] if force else [])
        session.cmd(replica, *args)
        report.act(f"{' '.join(args)} on {replica.address}")
        asked = time.monotonic()

        def problems() -> list[str]:
            nonlocal asked
            current = session.report(replica)
            if current.myself.role != "master":
                if time.monotonic() - asked > MANUAL_FAILOVER_RETRY:
                    session.cmd(replica, *args)
                    asked = time.monotonic()
                    report.act(f"{' '.join(args)} on {replica.address} (again: the first attempt expired)")
                return [f"{replica.address} is still a replica"]
            if current.cluster_state != "ok":
                return [f"{replica.address} says {current.cluster_state}"]
            return []

        _wait(f"{replica.address} to take over", problems, timeout)
    report.elapsed = time.monotonic() - started
    return report


def _unaware_masters(session: _Session, own: NodeReport) -> list[str]:
    """Slot-owning masters (as the replica sees them) that do not know the replica or its master."""
    me = own.myself
    problems = []
    for entry in own.entries.values():
        if entry.myself or entry.role != "master" or not entry.slots or entry.failed:
            continue
        address = entry.announced or entry.ip_endpoint
        if address is None:
            problems.append(f"master {entry.id[:8]} has no address")
            continue
        try:
            theirs = session.report(address)
        except NotReady as exc:
            problems.append(str(exc))
            continue
        seen = theirs.entries.get(me.id)
        if seen is None or seen.flags & _FAILURE_FLAGS or seen.master_id != me.master_id:
            problems.append(f"master {address.address} does not know {own.endpoint.address} as a replica yet")
    return problems


promote = failover


def wait_for_failover(
    endpoints: Sequence[Endpoint],
    password: str | None,
    failed_master: Endpoint | str,
    timeout: float = 30.0,
) -> ClusterNode:
    """Wait until the slots of a dead master are served by another master; return that master.

    ``failed_master`` is an endpoint (matched against every node's addresses) or a node id.
    """
    with _session(password) as session:
        first = session.view(endpoints)
        failed_id = failed_master if isinstance(failed_master, str) else first.id_of(failed_master)
        if failed_id is None:
            raise OperationError(f"{failed_master!s} is not a known cluster member")
        known = first.node(failed_id)
        replicas = {r.id for r in first.replicas_of(failed_id)}
        slots = set(expand(known.slots)) if known else set()
        found: list[ClusterNode] = []

        def problems() -> list[str]:
            view = session.view(endpoints)
            node = view.node(failed_id)
            if node is not None and node.slots:
                return [f"{_name(node)} still owns {node.slot_count} slots"]
            heirs = [
                n
                for n in view.masters
                if n.id != failed_id and n.healthy and (n.id in replicas or set(expand(n.slots)) & slots)
            ]
            if not heirs:
                return ["no replica has taken over yet"]
            found[:] = heirs
            return []

        _wait(f"a replica to take over from {failed_master!s}", problems, timeout)
        return found[0]
