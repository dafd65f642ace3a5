"""Redis Cluster as observed: ``CLUSTER NODES``/``INFO`` parsing, one merged view, and the session.

Every other ``cluster_*`` module builds on this one and nothing here imports them back.

- Replies are read with raw ``CLUSTER ...`` commands and parsed here: redis-py 8 turns
  ``CLUSTER NODES``/``INFO`` into dicts whose shape depends on protocol and version.
- Each node only knows its own table, and tables disagree while gossip spreads, so ``ClusterView``
  merges every reachable node's report into one answer and keeps the raw reports for the checks
  that need per-node agreement.
- ``_Session`` holds one client per node for a whole operation and turns every error into
  ``NotReady`` (retry later) or ``OperationError`` (final) with the password scrubbed.
- Every wait polls with a short interval and a deadline, and fails with ``NotReady`` naming what
  was still missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from middleware.endpoints import Endpoint
from middleware.engines.redis.live import NETWORK_ERRORS, connect, describe_error
from middleware.engines.redis.slots import TOTAL_SLOTS, SlotRange, compress, expand, format_ranges
from middleware.errors import NotReady, OperationError

# One logger for every cluster_* module: the split is for reviewers; whoever filters logs keeps the name.
log = logging.getLogger("middleware.engines.redis.cluster")

SLOTS = TOTAL_SLOTS
POLL_INTERVAL = 0.1
DEFAULT_TIMEOUT = 60.0
# MIGRATE and the pipelines of a batch can take longer than a plain command.
BULK_SOCKET_TIMEOUT = 30.0
_FAILURE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})

Role = Literal["master", "replica"]
Progress = Callable[[int, int], None]
T = TypeVar("T")


# --- parsing ---------------------------------------------------------------------------------------


class _Flagged:
    """What the flags and slots of a node say, for a table line and a merged node alike."""

    flags: frozenset[str]
    slots: tuple[SlotRange, ...]

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
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


@dataclass(frozen=True)
class NodeEntry(_Flagged):
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
    def ip_endpoint(self) -> Endpoint | None:
        return Endpoint(self.ip, self.port) if self.ip and self.port else None

    @property
    def announced(self) -> Endpoint | None:
        return Endpoint(self.hostname, self.port) if self.hostname and self.port else None


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
class ClusterNode(_Flagged):
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
    def is_master(self) -> bool:
        return self.role == "master"

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

    def __init__(self, password: str | None, username: str | None = None) -> None:
        self.password = password
        self.username = username  # an ACL user; None: the default user (AUTH <password>)
        self._clients: dict[tuple[Endpoint, bool], redis.Redis] = {}

    def client(self, endpoint: Endpoint, *, binary: bool = False) -> redis.Redis:
        key = (endpoint, binary)
        if key not in self._clients:
            extra: dict[str, Any] = {"username": self.username} if self.username else {}
            self._clients[key] = connect(
                endpoint,
                self.password,
                socket_timeout=BULK_SOCKET_TIMEOUT,
                decode_responses=not binary,
                **extra,
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
def _session(password: str | None, username: str | None = None) -> Iterator[_Session]:
    session = _Session(password, username)
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


def observe_cluster(
    endpoints: Iterable[Endpoint], password: str | None, *, username: str | None = None
) -> ClusterView:
    """What the cluster looks like from every reachable endpoint; unreachable ones are listed, not raised.
    ``username``: an ACL user (read-only tools such as ``sync verify`` may run as one)."""
    with _session(password, username) as session:
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


# --- checks shared by the operations ---------------------------------------------------------------


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


def _isolated(view: ClusterView, node: ClusterNode, endpoint: Endpoint) -> bool:
    """A node nobody else knows, which knows nobody: what remove_shards leaves behind."""
    own = view.reports.get(endpoint)
    known_elsewhere = any(node.id in r.entries for e, r in view.reports.items() if e != endpoint)
    return own is not None and len(own.entries) == 1 and not known_elsewhere
