"""Live operations on a Redis Sentinel deployment: bootstrap, observe, fail over, add/remove replicas.

The rule everything here follows: once sentinels monitor a master, *their* master is the truth. The
pod that started as master (ordinal 0) is only a hint for the very first bootstrap; after a failover
it is a replica and must never be forced back (the split brain of spotahome #600 / bitnami #5418).

Sentinel replies are read with raw ``SENTINEL ...`` commands and normalised here, because redis-py 8
reshapes them depending on protocol and response mode (and parses CKQUORUM's ``OK ...`` as False).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import redis

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.redis.live import NodeRole, call, describe_error, node_role, same_node
from middleware.engines.redis.replica_load import release_interrupted_load
from middleware.errors import NotReady, OperationError, SpecError

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
# Sentinel SET options reconciled on every run; auth-pass cannot be read back, so it is only set
# together with SENTINEL MONITOR.
TUNABLES = ("quorum", "down-after-milliseconds", "failover-timeout", "parallel-syncs")
# Global sentinel options bootstrap may set through SENTINEL CONFIG SET (the announce family).
ANNOUNCE_OPTIONS = frozenset({"resolve-hostnames", "announce-hostnames", "announce-ip", "announce-port"})
_IN_FLUX_FLAGS = frozenset({"failover_in_progress", "promoted", "reconf_sent", "reconf_inprog"})


# --- reply normalisation --------------------------------------------------------------------------


def _as_dict(reply: Any) -> dict[str, str]:
    """A sentinel state as ``{field: str}`` whether redis-py handed a dict or a flat pair list."""
    if isinstance(reply, Mapping):
        items: Iterable[tuple[Any, Any]] = reply.items()
    else:
        flat = list(reply or [])
        items = zip(flat[::2], flat[1::2], strict=True)
    result: dict[str, str] = {}
    for key, value in items:
        if isinstance(value, set | frozenset):
            value = ",".join(sorted(str(v) for v in value))
        result[str(key)] = str(value)
    return result


def _as_dicts(reply: Any) -> list[dict[str, str]]:
    return [_as_dict(item) for item in reply or []]


def _flags(state: Mapping[str, str]) -> frozenset[str]:
    return frozenset(f for f in state.get("flags", "").split(",") if f)


def _int(state: Mapping[str, str], key: str, default: int = 0) -> int:
    try:
        return int(state.get(key, default))
    except ValueError:
        return default


def _address(state: Mapping[str, str], tls: ClientTls | None = None) -> Endpoint:
    """A data node a sentinel lists; ``tls``: how to dial it (as its sentinels are dialled)."""
    return Endpoint(state["ip"], int(state["port"]), tls)


def _sentinel_cmd(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command("SENTINEL", *args)


def _no_such_master(exc: redis.ResponseError) -> bool:
    return "no such master" in str(exc).lower()


# --- asking sentinels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    sentinel: Endpoint
    master: Endpoint | None  # None: this sentinel does not monitor the name
    state: dict[str, str]

    @property
    def flags(self) -> frozenset[str]:
        return _flags(self.state)


def _ask_on(client: redis.Redis, sentinel: Endpoint, master_name: str) -> _Answer:
    addr = _sentinel_cmd(client, "GET-MASTER-ADDR-BY-NAME", master_name)
    if not addr:
        return _Answer(sentinel, None, {})
    try:
        state = _as_dict(_sentinel_cmd(client, "MASTER", master_name))
    except redis.ResponseError as exc:
        if _no_such_master(exc):  # removed between the two commands
            return _Answer(sentinel, None, {})
        raise
    return _Answer(sentinel, Endpoint(str(addr[0]), int(addr[1]), sentinel.tls), state)


def _snapshot(
    client: redis.Redis, *, sentinel: Endpoint, master_name: str
) -> tuple[_Answer, list[dict[str, str]]]:
    answer = _ask_on(client, sentinel, master_name)
    known = _as_dicts(_sentinel_cmd(client, "REPLICAS", master_name)) if answer.master else []
    return answer, known


def _ask(sentinel: Endpoint, master_name: str, password: str | None, attempts: int) -> _Answer:
    return call(sentinel, password, lambda c: _ask_on(c, sentinel, master_name), attempts=attempts)


def _ask_all(
    sentinels: Sequence[Endpoint], master_name: str, password: str | None, attempts: int
) -> tuple[list[_Answer], dict[Endpoint, str]]:
    answers: list[_Answer] = []
    unreachable: dict[Endpoint, str] = {}
    for sentinel in sentinels:
        try:
            answers.append(_ask(sentinel, master_name, password, attempts))
        except (NotReady, OperationError, redis.RedisError) as exc:
            unreachable[sentinel] = describe_error(exc, password)
    return answers, unreachable


def _tally(answers: Iterable[_Answer]) -> list[tuple[Endpoint, list[_Answer]]]:
    """Group answers by the master they name (same node even if named differently), most votes first."""
    groups: list[tuple[Endpoint, list[_Answer]]] = []
    for answer in answers:
        if answer.master is None:
            continue
        for master, voters in groups:
            if same_node(master, answer.master):
                voters.append(answer)
                break
        else:
            groups.append((answer.master, [answer]))
    groups.sort(key=lambda group: len(group[1]), reverse=True)
    return groups


def _majority(answers: Iterable[_Answer], electorate: int) -> tuple[Endpoint | None, list[_Answer]]:
    groups = _tally(answers)
    if groups and len(groups[0][1]) >= electorate // 2 + 1:
        return groups[0]
    return None, []


# --- observation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica as the sentinels list it, cross-checked with the node's own ROLE when reachable."""

    endpoint: Endpoint
    flags: frozenset[str]
    sentinel_link_ok: bool
    offset: int
    priority: int
    node: NodeRole | None = None

    @property
    def down(self) -> bool:
        return bool(self.flags & {"s_down", "o_down", "disconnected"})

    @property
    def healthy(self) -> bool:
        # The sentinel's master-link-status is refreshed by INFO only every 10 s; the node's own
        # ROLE is current, so it wins when we could ask it.
        link_ok = self.node.link_up if self.node is not None else self.sentinel_link_ok
        return not self.down and link_ok


@dataclass(frozen=True)
class Conflict:
    """A data node that disagrees with the sentinels. ``second-master`` is a split brain in the making."""

    endpoint: Endpoint
    kind: Literal["second-master", "wrong-master", "master-is-replica"]
    detail: str


@dataclass
class SentinelView:
    master_name: str
    monitored: bool = False
    master: Endpoint | None = None  # what a majority of the configured sentinels name; None if no majority
    master_votes: dict[str, int] = field(default_factory=dict)
    master_flags: frozenset[str] = frozenset()
    master_sdown_votes: int = 0
    failover_in_progress: bool = False
    config_epoch: int = 0
    replicas: tuple[ReplicaInfo, ...] = ()
    sentinels_reachable: tuple[Endpoint, ...] = ()
    sentinels_unreachable: dict[Endpoint, str] = field(default_factory=dict)
    sentinels_known: int = 0  # sentinels the answering sentinel knows, itself included
    quorum: int | None = None
    quorum_ok: bool = False
    quorum_detail: str = ""
    nodes: dict[Endpoint, NodeRole] = field(default_factory=dict)
    unreachable_nodes: dict[Endpoint, str] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    # down-after-milliseconds as each monitoring sentinel has it (a restore raises it for a while).
    down_after_ms: dict[Endpoint, int] = field(default_factory=dict)

    @property
    def healthy_replicas(self) -> tuple[ReplicaInfo, ...]:
        return tuple(r for r in self.replicas if r.healthy)

    @property
    def master_down(self) -> bool:
        return bool(self.master_flags & {"s_down", "o_down", "disconnected"})

    @property
    def healthy(self) -> bool:
        return (
            self.master is not None
            and not self.master_down
            and not self.failover_in_progress
            and self.quorum_ok
            and not self.conflicts
        )


def observe_sentinel(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str | None,
    *,
    sentinel_password: str | None = None,
    data_nodes: Iterable[Endpoint] = (),
) -> SentinelView:
    """What the sentinels agree on, confirmed against the data nodes themselves.

    Unreachable sentinels are tolerated (listed); ``master`` is only set when a majority of *all*
    configured sentinels name the same node. Every data node the sentinels know, plus ``data_nodes``
    (pods the caller knows of, e.g. a restarted old master the sentinels forgot), is asked ROLE: a
    node claiming master that is not the sentinels' master is a ``second-master`` conflict.
    """
    view = SentinelView(master_name=master_name)
    tls = next((s.tls for s in sentinels), None)  # one deployment: the data nodes' TLS is theirs
    answers, view.sentinels_unreachable = _ask_all(sentinels, master_name, sentinel_password, attempts=1)
    view.sentinels_reachable = tuple(a.sentinel for a in answers)
    monitoring = [a for a in answers if a.master is not None]
    view.monitored = bool(monitoring)
    view.master_votes = {master.address: len(voters) for master, voters in _tally(monitoring)}
    view.failover_in_progress = any(a.flags & _IN_FLUX_FLAGS for a in monitoring)
    view.down_after_ms = {a.sentinel: _int(a.state, "down-after-milliseconds", -1) for a in monitoring}
    master, voters = _majority(monitoring, len(sentinels))
    view.master = master

    sentinel_replicas: list[dict[str, str]] = []
    if voters:
        view.master_sdown_votes = sum(1 for a in voters if "s_down" in a.flags)
        chosen = voters[0]
        view.master_flags = chosen.flags
        view.config_epoch = _int(chosen.state, "config-epoch")
        view.quorum = _int(chosen.state, "quorum")
        view.sentinels_known = _int(chosen.state, "num-other-sentinels") + 1
        try:
            sentinel_replicas, view.quorum_ok, view.quorum_detail = call(
                chosen.sentinel,
                sentinel_password,
                lambda c: _replicas_and_quorum(c, master_name),
                attempts=1,
            )
        except (NotReady, OperationError, redis.RedisError) as exc:
            view.quorum_detail = (
                f"sentinel {chosen.sentinel.address}: {describe_error(exc, sentinel_password)}"
            )

    candidates: list[Endpoint] = []
    for endpoint in [
        *([master] if master else []),
        *(_address(r, tls) for r in sentinel_replicas),
        *data_nodes,
    ]:
        if not any(same_node(endpoint, seen) for seen in candidates):
            candidates.append(endpoint)
    for endpoint in candidates:
        try:
            view.nodes[endpoint] = node_role(endpoint, password, attempts=1)
        except (NotReady, OperationError, redis.RedisError) as exc:
            view.unreachable_nodes[endpoint] = describe_error(exc, password)

    view.replicas = tuple(
        ReplicaInfo(
            endpoint=_address(r, tls),
            flags=_flags(r),
            sentinel_link_ok=r.get("master-link-status") == "ok",
            offset=_int(r, "slave-repl-offset"),
            priority=_int(r, "slave-priority", 100),
            node=_role_of(view.nodes, _address(r)),
        )
        for r in sentinel_replicas
    )
    view.conflicts = tuple(_conflicts(view.master, view.nodes))
    return view


def _replicas_and_quorum(client: redis.Redis, master_name: str) -> tuple[list[dict[str, str]], bool, str]:
    replicas = _as_dicts(_sentinel_cmd(client, "REPLICAS", master_name))
    try:
        detail = str(_sentinel_cmd(client, "CKQUORUM", master_name))
    except redis.ResponseError as exc:
        # NOQUORUM is an error reply, but for us it is an answer.
        return replicas, False, str(exc)
    return replicas, detail.startswith("OK"), detail


def _role_of(nodes: Mapping[Endpoint, NodeRole], endpoint: Endpoint) -> NodeRole | None:
    for known, role in nodes.items():
        if same_node(known, endpoint):
            return role
    return None


def _conflicts(master: Endpoint | None, nodes: Mapping[Endpoint, NodeRole]) -> Iterable[Conflict]:
    if master is None:
        claiming = [e for e, role in nodes.items() if role.is_master]
        if len(claiming) > 1:
            for endpoint in claiming:
                yield Conflict(endpoint, "second-master", "claims master and the sentinels agree on none")
        return
    for endpoint, role in nodes.items():
        if same_node(endpoint, master):
            if not role.is_master:
                follows = role.master.address if role.master else "?"
                yield Conflict(
                    endpoint, "master-is-replica", f"sentinels' master reports replica of {follows}"
                )
        elif role.is_master:
            yield Conflict(
                endpoint,
                "second-master",
                f"claims master (offset {role.offset}, {len(role.replicas)} replicas) "
                f"but the sentinels' master is {master.address}",
            )
        elif role.is_replica and not same_node(role.master, master):
            follows = role.master.address if role.master else "?"
            yield Conflict(endpoint, "wrong-master", f"replicates {follows}, not {master.address}")


# --- repairs --------------------------------------------------------------------------------------


def _ensure_masterauth(endpoint: Endpoint, password: str | None) -> bool:
    """Make sure the node can authenticate to its future master; True when it had to be set."""
    if not password:
        return False

    def ensure(client: redis.Redis) -> bool:
        if client.config_get("masterauth").get("masterauth") == password:
            return False
        client.config_set("masterauth", password)
        return True

    return call(endpoint, password, ensure)


def _replicaof(endpoint: Endpoint, master: Endpoint, password: str | None) -> bool:
    """REPLICAOF ``master``; False when the node already followed it (no resync triggered)."""
    reply = call(endpoint, password, lambda c: c.execute_command("REPLICAOF", master.host, master.port))
    return "already connected" not in str(reply).lower()


def demote_stray_masters(
    view: SentinelView, password: str | None, *, only: Iterable[Endpoint] | None = None
) -> list[Endpoint]:
    """Make every ``second-master`` in ``view`` a replica of the sentinels' master.

    Writes accepted by a stray since it split off are lost: that is the price of having one history.
    Refuses while the sentinels' own view is in flux (no majority, failover running) or when their
    master does not itself confirm it is master: demoting then could leave no master at all.
    """
    master = view.master
    if master is None:
        raise NotReady(f"sentinels do not agree on a master for {view.master_name}: {view.master_votes}")
    if view.failover_in_progress:
        raise NotReady(f"failover in progress for {view.master_name}; not demoting anything now")
    if not node_role(master, password).is_master:
        raise NotReady(f"sentinels' master {master.address} does not report role master yet")
    targets = [c.endpoint for c in view.conflicts if c.kind == "second-master"]
    if only is not None:
        wanted = list(only)
        targets = [t for t in targets if any(same_node(t, w) for w in wanted)]
    demoted: list[Endpoint] = []
    for endpoint in targets:
        role = node_role(endpoint, password)
        if not role.is_master:
            log.info("redis %s: no longer claims master, nothing to demote", endpoint.address)
            continue
        log.warning(
            "redis %s: stray master (offset %d) demoted to replica of %s",
            endpoint.address,
            role.offset,
            master.address,
        )
        _ensure_masterauth(endpoint, password)
        _replicaof(endpoint, master, password)
        demoted.append(endpoint)
    return demoted


# --- bootstrap ------------------------------------------------------------------------------------


@dataclass
class BootstrapReport:
    master_name: str
    master: Endpoint
    # True when the sentinels (or existing replication) already named a master other than the one
    # passed in: it was followed, not overridden.
    adopted_existing_master: bool = False
    replicas_attached: list[Endpoint] = field(default_factory=list)
    demoted_masters: list[Endpoint] = field(default_factory=list)
    masterauth_set: list[Endpoint] = field(default_factory=list)
    # Data nodes that were down (tolerated once sentinels monitor: they reconfigure them on return).
    unreachable: list[Endpoint] = field(default_factory=list)
    sentinels_monitoring: list[Endpoint] = field(default_factory=list)
    sentinel_settings: dict[Endpoint, list[str]] = field(default_factory=dict)
    # The master followed this address (an interrupted load by replication) and was released.
    released_from: Endpoint | None = None

    @property
    def changed(self) -> bool:
        return bool(
            self.released_from
            or self.replicas_attached
            or self.demoted_masters
            or self.masterauth_set
            or self.sentinels_monitoring
            or self.sentinel_settings
        )


def _validate(
    master: Endpoint,
    replicas: Sequence[Endpoint],
    sentinels: Sequence[Endpoint],
    master_name: str,
    quorum: int,
    down_after_ms: int,
    failover_timeout_ms: int,
    parallel_syncs: int,
    announce: Mapping[str, str],
) -> None:
    if not sentinels:
        raise SpecError("sentinels", "at least one sentinel is required")
    if not master_name or any(ch.isspace() for ch in master_name):
        raise SpecError("masterName", f"{master_name!r} must be a non-empty word")
    if not 1 <= quorum <= len(sentinels):
        raise SpecError(
            "quorum", f"{quorum} must be between 1 and the number of sentinels ({len(sentinels)})"
        )
    if down_after_ms <= 0 or failover_timeout_ms <= 0 or parallel_syncs <= 0:
        raise SpecError("sentinel", "down-after, failover-timeout and parallel-syncs must be positive")
    if any(same_node(master, r) for r in replicas):
        raise SpecError("replicas", f"{master.address} is listed both as master and as replica")
    unknown = sorted(set(announce) - ANNOUNCE_OPTIONS)
    if unknown:
        raise SpecError(
            "announce", f"unsupported sentinel options {unknown}; allowed: {sorted(ANNOUNCE_OPTIONS)}"
        )


@dataclass(frozen=True)
class _History:
    keys: int
    replids: frozenset[str]  # the replication histories this node's dataset belongs to


def _history(endpoint: Endpoint, password: str | None) -> _History:
    def read(client: redis.Redis) -> _History:
        replication = client.info("replication")
        keyspace = client.info("keyspace")
        keys = sum(int(db.get("keys", 0)) for db in keyspace.values() if isinstance(db, Mapping))
        ids = {str(replication.get(k, "")) for k in ("master_replid", "master_replid2")}
        # An unset replid2 is forty zeros, which redis-py's INFO parser turns into the int 0.
        return _History(keys, frozenset(i for i in ids if i.strip("0")))

    return call(endpoint, password, read)


def _decide_master(
    designated: Endpoint,
    data_nodes: Sequence[Endpoint],
    roles: Mapping[Endpoint, NodeRole],
    monitoring: Sequence[_Answer],
    password: str | None,
) -> tuple[Endpoint, bool]:
    """The master bootstrap must follow, and whether it differs from ``designated``."""
    if monitoring:
        groups = _tally(monitoring)
        master, voters = groups[0]
        if len(voters) < len(monitoring) // 2 + 1:
            votes = {m.address: len(v) for m, v in groups}
            raise NotReady(f"sentinels disagree on the master: {votes}")
        if not any(same_node(master, n) for n in data_nodes):
            raise OperationError(
                f"sentinels follow {master.address}, which is not one of the data nodes "
                f"{[n.address for n in data_nodes]}; refusing to reconfigure"
            )
        return master, not same_node(master, designated)
    # Nobody monitors: a first bootstrap, or the sentinels lost their state (emptyDir, reinstall)
    # after a failover. Then the data may live elsewhere than on the designated node: it can be a
    # replica by now, or a restarted lone master next to the group that formed after the failover.
    # Forcing it back would resync the real master from it (bitnami #5418).
    role = roles[designated]
    if role.is_replica:
        chosen = next((n for n in data_nodes if same_node(n, role.master)), designated)
        if chosen == designated or not roles[chosen].is_master:
            follows = role.master.address if role.master else "?"
            raise OperationError(
                f"{designated.address} replicates {follows}, which is not a master among the data nodes; "
                "refusing to guess which node holds the data"
            )
    else:
        leaders = [n for n in data_nodes if n != designated and roles[n].is_master and roles[n].replicas]
        if not leaders:
            chosen = designated
        elif len(leaders) == 1 and not role.replicas:
            chosen = leaders[0]
        else:
            raise OperationError(
                f"several masters have replicas: {[n.address for n in [designated, *leaders]]}; "
                "split brain: choose the survivor by hand and make the others REPLICAOF it"
            )
    # Every other master gets resynced from the chosen one. Fine when it is empty or holds an older
    # part of the same history; not when it holds data of its own.
    lineage = _history(chosen, password).replids
    for endpoint in data_nodes:
        if endpoint == chosen or not roles[endpoint].is_master:
            continue
        other = _history(endpoint, password)
        if other.keys and not other.replids & lineage:
            raise OperationError(
                f"{endpoint.address} is a master with {other.keys} keys unrelated to {chosen.address}'s "
                "replication history; refusing to overwrite it (choose the survivor by hand)"
            )
    if chosen != designated:
        log.warning("sentinel bootstrap: data already lives on %s; following it", chosen.address)
    return chosen, chosen != designated


def _reconcile_sentinel(
    answer: _Answer,
    master_name: str,
    master: Endpoint,
    password: str | None,
    sentinel_password: str | None,
    settings: Mapping[str, int],
    announce: Mapping[str, str],
) -> tuple[bool, list[str]]:
    """Bring one sentinel to the desired state. Returns (newly monitoring, changed option names)."""

    def reconcile(client: redis.Redis) -> tuple[bool, list[str]]:
        changed: list[str] = []
        for option, value in sorted(announce.items()):
            current = _as_dict(_sentinel_cmd(client, "CONFIG", "GET", option)).get(option)
            if current != value:
                _sentinel_cmd(client, "CONFIG", "SET", option, value)
                changed.append(option)
        newly = False
        state = answer.state
        if answer.master is None:
            try:
                _sentinel_cmd(client, "MONITOR", master_name, master.host, master.port, settings["quorum"])
                newly = True
            except redis.ResponseError as exc:
                if "duplicate" not in str(exc).lower():
                    raise OperationError(
                        f"sentinel {answer.sentinel.address} refused MONITOR {master_name}: "
                        f"{describe_error(exc, password, sentinel_password)}"
                    ) from None
            if password:
                _sentinel_cmd(client, "SET", master_name, "auth-pass", password)
                changed.append("auth-pass")
            state = _as_dict(_sentinel_cmd(client, "MASTER", master_name))
        for option in TUNABLES:
            if _int(state, option, -1) != settings[option]:
                _sentinel_cmd(client, "SET", master_name, option, settings[option])
                changed.append(option)
        return newly, changed

    try:
        return call(answer.sentinel, sentinel_password, reconcile)
    except redis.ResponseError as exc:
        raise OperationError(
            f"sentinel {answer.sentinel.address}: {describe_error(exc, password, sentinel_password)}"
        ) from None


def bootstrap_sentinel(
    master: Endpoint,
    replicas: Sequence[Endpoint],
    sentinels: Sequence[Endpoint],
    *,
    master_name: str,
    password: str | None,
    quorum: int,
    down_after_ms: int,
    failover_timeout_ms: int,
    parallel_syncs: int = 1,
    announce: Mapping[str, str] | None = None,
    sentinel_password: str | None = None,
    timeout: float = 60.0,
) -> BootstrapReport:
    """Idempotently wire data nodes and sentinels; a second run on a healthy deployment changes nothing.

    ``master`` is only the starting hint: if any sentinel already monitors ``master_name``, the
    master they follow is used (after a failover, ``master`` is a replica and stays one). ``announce``
    holds global sentinel options (``resolve-hostnames``, ``announce-hostnames``, ...) applied with
    SENTINEL CONFIG SET before MONITOR, which needs them to accept a hostname.

    Raises ``NotReady`` when a node or sentinel is unreachable, a failover is running, or the
    deployment has not converged (sentinels see each other, replicas in sync) within ``timeout``.
    """
    announce = dict(announce or {})
    _validate(
        master,
        replicas,
        sentinels,
        master_name,
        quorum,
        down_after_ms,
        failover_timeout_ms,
        parallel_syncs,
        announce,
    )
    settings = {
        "quorum": quorum,
        "down-after-milliseconds": down_after_ms,
        "failover-timeout": failover_timeout_ms,
        "parallel-syncs": parallel_syncs,
    }
    answers, unreachable = _ask_all(sentinels, master_name, sentinel_password, attempts=3)
    if unreachable:
        raise NotReady(f"sentinels unreachable: {unreachable}")
    monitoring = [a for a in answers if a.master is not None]
    if any(a.flags & _IN_FLUX_FLAGS for a in monitoring):
        raise NotReady(f"failover in progress for {master_name}; bootstrap will retry")

    data_nodes: list[Endpoint] = []
    for endpoint in [master, *replicas]:
        if not any(same_node(endpoint, seen) for seen in data_nodes):
            data_nodes.append(endpoint)
    roles: dict[Endpoint, NodeRole] = {}
    down: dict[Endpoint, str] = {}
    for endpoint in data_nodes:
        try:
            roles[endpoint] = node_role(endpoint, password)
        except NotReady as exc:
            down[endpoint] = str(exc)
    if down and not monitoring:
        # Without sentinels' memory, a missing node might be the one holding the data.
        raise NotReady(f"data nodes unreachable, cannot tell which one is master: {list(down.values())}")
    truth, adopted = _decide_master(master, data_nodes, roles, monitoring, password)
    truth = next(n for n in data_nodes if same_node(n, truth))
    if truth in down:
        raise NotReady(f"{truth.address} (sentinels' master) is unreachable; a failover should follow")
    released = release_interrupted_load(truth, password) if roles[truth].is_replica else None
    if released is not None:
        roles[truth] = node_role(truth, password)
    if not roles[truth].is_master:
        raise NotReady(f"{truth.address} (sentinels' master) does not report role master yet")
    report = BootstrapReport(
        master_name=master_name,
        master=truth,
        adopted_existing_master=adopted,
        unreachable=sorted(down),
        released_from=released,
    )

    for endpoint in data_nodes:
        if endpoint == truth or endpoint in down:
            # A node that is down now is reconfigured by the sentinels when it returns.
            continue
        role = roles[endpoint]
        if role.is_replica and same_node(role.master, truth):
            continue
        if role.is_master and role.replicas:
            report.demoted_masters.append(endpoint)
            log.warning("redis %s: claims master with replicas; making it follow %s", endpoint.address, truth)
        if _ensure_masterauth(endpoint, password):
            report.masterauth_set.append(endpoint)
        if _replicaof(endpoint, truth, password):
            report.replicas_attached.append(endpoint)

    for answer in answers:
        if answer.master is not None and not same_node(answer.master, truth):
            # A minority sentinel with an old view converges from its peers' hello messages.
            log.warning("sentinel %s still names %s; leaving it to converge", answer.sentinel, answer.master)
        newly, options = _reconcile_sentinel(
            answer, master_name, truth, password, sentinel_password, settings, announce
        )
        if newly:
            report.sentinels_monitoring.append(answer.sentinel)
        if options:
            report.sentinel_settings[answer.sentinel] = options

    expected = [e for e in data_nodes if e != truth and e not in down]
    _wait(
        lambda: _bootstrap_problems(sentinels, master_name, truth, expected, password, sentinel_password),
        timeout,
        f"sentinel bootstrap of {master_name}",
    )
    if report.changed:
        log.info("sentinel bootstrap of %s: %s", master_name, report)
    return report


def _bootstrap_problems(
    sentinels: Sequence[Endpoint],
    master_name: str,
    master: Endpoint,
    replicas: Sequence[Endpoint],
    password: str | None,
    sentinel_password: str | None,
) -> list[str]:
    problems: list[str] = []
    for endpoint in replicas:
        try:
            role = node_role(endpoint, password, attempts=1)
        except (NotReady, OperationError) as exc:
            problems.append(str(exc))
            continue
        if not (role.is_replica and same_node(role.master, master) and role.link_up):
            problems.append(f"{endpoint.address}: role {role.role}, link {role.link}")
    for sentinel in sentinels:
        try:
            answer, known = call(
                sentinel,
                sentinel_password,
                partial(_snapshot, sentinel=sentinel, master_name=master_name),
                attempts=1,
            )
        except (NotReady, OperationError, redis.RedisError) as exc:
            problems.append(f"sentinel {sentinel.address}: {describe_error(exc, sentinel_password)}")
            continue
        if not same_node(answer.master, master):
            problems.append(f"sentinel {sentinel.address} names {answer.master}")
            continue
        others = _int(answer.state, "num-other-sentinels")
        if others < len(sentinels) - 1:
            problems.append(f"sentinel {sentinel.address} sees {others} other sentinels")
        up = [_address(r) for r in known if not _flags(r) & {"s_down", "o_down", "disconnected"}]
        missing = [r.address for r in replicas if not any(same_node(r, u) for u in up)]
        if missing:
            problems.append(f"sentinel {sentinel.address} does not list replicas {missing}")
    return problems


def _wait(problems: Callable[[], list[str]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        current = problems()
        if not current:
            return
        if time.monotonic() >= deadline:
            raise NotReady(f"{what} not converged after {timeout:.0f}s: {'; '.join(current)}")
        time.sleep(POLL_INTERVAL)


# --- holding failovers ----------------------------------------------------------------------------


class HoldRefused(Exception):
    """Not enough sentinels could be told to hold: a failover could still be authorised."""


@contextlib.contextmanager
def failover_held(
    sentinels: Sequence[Endpoint], master_name: str, sentinel_password: str | None, seconds: float
) -> Iterator[None]:
    """While inside, sentinels do not fail ``master_name`` over for ``seconds``: each one's
    ``down-after-milliseconds`` is raised and put back after, whatever happens.

    Why: a master that reports itself a replica (a load by replication makes it one, briefly) counts
    as down for sentinels after down-after plus two INFO periods, and a failover then would promote a
    replica without the data. A failover needs a majority of sentinels to elect a leader, so holding
    a majority is enough; fewer raises ``HoldRefused`` before anything changed. If this process dies
    inside, the next reconcile (``bootstrap_sentinel``) sets the spec's value again."""
    hold_ms = max(int(seconds * 1000), 1)
    held: dict[Endpoint, int] = {}

    def hold(client: redis.Redis) -> int:
        before = _int(_as_dict(_sentinel_cmd(client, "MASTER", master_name)), "down-after-milliseconds", -1)
        _sentinel_cmd(client, "SET", master_name, "down-after-milliseconds", hold_ms)
        return before

    try:
        for sentinel in sentinels:
            try:
                before = call(sentinel, sentinel_password, hold, attempts=2)
            except (NotReady, OperationError, redis.RedisError) as exc:
                log.warning(
                    "sentinel %s: cannot hold failovers: %s", sentinel, describe_error(exc, sentinel_password)
                )
                continue
            if before > 0:
                held[sentinel] = before
        if len(held) < len(sentinels) // 2 + 1:
            raise HoldRefused(
                f"only {len(held)} of {len(sentinels)} sentinels could hold failovers of {master_name}"
            )
        yield
    finally:
        for sentinel, before in held.items():
            try:
                call(
                    sentinel, sentinel_password, partial(_set_down_after, master_name=master_name, ms=before)
                )
            except (NotReady, OperationError, redis.RedisError) as exc:
                log.error(
                    "sentinel %s: down-after-milliseconds not put back to %d (the next reconcile does): %s",
                    sentinel,
                    before,
                    describe_error(exc, sentinel_password),
                )


def _set_down_after(client: redis.Redis, *, master_name: str, ms: int) -> None:
    _sentinel_cmd(client, "SET", master_name, "down-after-milliseconds", ms)


# --- failover -------------------------------------------------------------------------------------


def _agreed_master(
    sentinels: Sequence[Endpoint], master_name: str, sentinel_password: str | None
) -> tuple[Endpoint, list[_Answer]]:
    answers, _ = _ask_all(sentinels, master_name, sentinel_password, attempts=2)
    monitoring = [a for a in answers if a.master is not None]
    if not monitoring:
        raise NotReady(f"no reachable sentinel monitors {master_name}")
    master, voters = _majority(monitoring, len(sentinels))
    if master is None:
        votes = {m.address: len(v) for m, v in _tally(monitoring)}
        raise NotReady(f"sentinels do not agree on the master of {master_name}: {votes}")
    return master, voters


def failover(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str | None = None,
    *,
    sentinel_password: str | None = None,
) -> Endpoint:
    """Ask a sentinel to fail over (SENTINEL FAILOVER); returns the master being replaced.

    Refuses up front when the master is reachable but has no replica attached: the failover would
    have nothing to promote.
    """
    master, voters = _agreed_master(sentinels, master_name, sentinel_password)
    if any(a.flags & _IN_FLUX_FLAGS for a in voters):
        raise NotReady(f"failover already in progress for {master_name}")
    try:
        role: NodeRole | None = node_role(master, password, attempts=1)
    except NotReady:
        role = None  # a dead master is exactly what a failover is for
    if role is not None and role.is_master and not role.replicas:
        raise OperationError(f"{master.address} has no replica attached; nothing to fail over to")
    _request_failover(sentinels, master_name, master, voters, password, sentinel_password)
    return master


def _request_failover(
    sentinels: Sequence[Endpoint],
    master_name: str,
    master: Endpoint,
    voters: Sequence[_Answer],
    password: str | None,
    sentinel_password: str | None,
) -> None:
    """SENTINEL FAILOVER on one of ``voters``; returns once one accepted it.

    The command is never resent blindly: a request whose reply was lost may have been carried out, and
    a second sentinel asked then would force a second failover that may promote another replica. So
    after a network error the sentinels' own state decides (a failover under way, or a new master
    named, means the request was accepted) before the next sentinel is tried."""
    last_error = ""
    for answer in voters:
        try:
            call(
                answer.sentinel,
                sentinel_password,
                lambda c: _sentinel_cmd(c, "FAILOVER", master_name),
                attempts=1,
            )
        except redis.ResponseError as exc:
            message = describe_error(exc, password, sentinel_password)
            if "INPROG" in str(exc):
                raise NotReady(f"failover already in progress for {master_name}") from None
            raise OperationError(f"sentinel {answer.sentinel.address} refused failover: {message}") from None
        except NotReady as exc:
            if _failover_started(sentinels, master_name, master, sentinel_password):
                log.warning(
                    "sentinel %s: the reply to FAILOVER %s was lost (%s), but a failover is under way",
                    answer.sentinel,
                    master_name,
                    exc,
                )
                return
            last_error = str(exc)
            continue
        log.info("sentinel %s: failover of %s (was %s) started", answer.sentinel, master_name, master)
        return
    raise NotReady(f"no sentinel accepted the failover of {master_name}: {last_error}")


# A failover a sentinel accepted shows in its flags at once (the command sets them); this bounds the
# wait for a sentinel that is slow to answer after a lost reply.
_FAILOVER_START_SECONDS = 2.0


def _failover_started(
    sentinels: Sequence[Endpoint], master_name: str, old: Endpoint, sentinel_password: str | None
) -> bool:
    """True when some sentinel runs a failover of ``master_name`` or names a master other than ``old``."""
    deadline = time.monotonic() + _FAILOVER_START_SECONDS
    while True:
        answers, _ = _ask_all(sentinels, master_name, sentinel_password, attempts=1)
        for answer in answers:
            if answer.flags & _IN_FLUX_FLAGS or (answer.master and not same_node(answer.master, old)):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


class _WriteFence:
    """Writes held on a master (CLIENT PAUSE WRITE) as a lease that is renewed while it is needed.

    A single long pause can run out while the sentinels are still promoting a replica; the old master
    would then acknowledge writes that the promoted one never receives, all lost when it is turned into
    a replica. A short lease renewed on every poll lasts exactly as long as the switchover needs it,
    and still ends by itself within one lease if this process dies. Redis keeps the later of two pause
    deadlines, so a renewal only ever extends it."""

    def __init__(self, master: Endpoint, password: str | None, lease_ms: int) -> None:
        self.master = master
        self.password = password
        self.lease_ms = lease_ms
        self._renewed_at: float | None = None

    def hold(self) -> None:
        """Take the lease, or renew it when a third of it has passed."""
        now = time.monotonic()
        if self._renewed_at is not None and now - self._renewed_at < self.lease_ms / 3000:
            return
        try:
            call(
                self.master,
                self.password,
                lambda c: c.execute_command("CLIENT", "PAUSE", self.lease_ms, "WRITE"),
                attempts=1,
            )
        except NotReady:
            if self._renewed_at is None:
                raise  # never held: nothing to protect yet
            # Unreachable, so it takes no writes either; the next poll tries again.
            log.warning("renewing the write pause on %s failed; retrying", self.master.address)
            return
        self._renewed_at = now

    def lift(self) -> None:
        try:
            call(self.master, self.password, lambda c: c.execute_command("CLIENT", "UNPAUSE"), attempts=1)
        except Exception as exc:  # the lease runs out by itself
            log.warning("lifting the write pause on %s failed: %s", self.master.address, exc)


# A planned switchover holds writes on the master with a lease this long (renewed while the switchover
# runs), gives its replicas this long to reach the master's last offset before asking the sentinels,
# and follows a failover the sentinels accepted this long at most (their failover-timeout bounds it
# first in practice).
SWITCHOVER_LEASE_MS = 5000
SWITCHOVER_CATCH_UP_SECONDS = 10.0
SWITCHOVER_PROMOTION_SECONDS = 120.0
# Sentinels reporting no failover and still naming the old master for this long after one was accepted
# have abandoned it (no good replica, failover-timeout): the old master stays and takes writes again.
_ABANDONED_SECONDS = 2.0


def switchover(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str | None = None,
    *,
    sentinel_password: str | None = None,
    lease_ms: int = SWITCHOVER_LEASE_MS,
    promotion_timeout: float = SWITCHOVER_PROMOTION_SECONDS,
) -> Endpoint:
    """A planned change of master that loses no acknowledged write; returns the master replaced.

    SENTINEL FAILOVER alone promotes a replica while the master still acknowledges writes the replica
    never receives (replication is asynchronous): those are lost when the old master is turned into a
    replica. So, as the data pods' preStop handover does: writes are held on the master (a renewed
    lease, see ``_WriteFence``), every replica is let reach its last offset, the sentinels are asked,
    and the old master follows the new one as soon as a sentinel names it; only then is the hold
    lifted, and the writes it held fail with READONLY instead of landing on it. The hold is lifted
    early only when no failover started (refused, or never reached a sentinel) or the sentinels
    abandoned it."""
    master, voters = _agreed_master(sentinels, master_name, sentinel_password)
    if any(a.flags & _IN_FLUX_FLAGS for a in voters):
        raise NotReady(f"failover already in progress for {master_name}")
    role = node_role(master, password, attempts=1)
    if not role.is_master:
        raise NotReady(f"{master.address} is named master but reports {role.role}")
    if not role.replicas:
        raise OperationError(f"{master.address} has no replica attached; nothing to switch over to")
    fence = _WriteFence(master, password, lease_ms)
    fence.hold()
    try:

        def behind() -> list[str]:
            fence.hold()
            return _replicas_behind(master, password)

        _wait(
            behind, SWITCHOVER_CATCH_UP_SECONDS, f"the replicas of {master.address} to reach its last offset"
        )
        _request_failover(sentinels, master_name, master, voters, password, sentinel_password)
    except NotReady as exc:
        # "In progress" or an unanswered request can still mean a failover away from this master:
        # lifting the hold then would let it acknowledge writes the promoted replica never gets.
        if not _failover_started(sentinels, master_name, master, sentinel_password):
            fence.lift()
            raise
        log.warning("switchover of %s: %s; following the failover under way", master_name, exc)
    except BaseException:
        fence.lift()
        raise
    _follow_promoted(sentinels, master_name, master, password, sentinel_password, fence, promotion_timeout)
    return master


def _follow(master: Endpoint, client: redis.Redis) -> Any:
    return client.execute_command("REPLICAOF", master.host, master.port)


def _replicas_behind(master: Endpoint, password: str | None) -> list[str]:
    current = node_role(master, password, attempts=1)
    return [
        f"{r.endpoint.address} at {r.offset} < {current.offset}"
        for r in current.replicas
        if r.offset < current.offset
    ]


def _follow_promoted(
    sentinels: Sequence[Endpoint],
    master_name: str,
    old: Endpoint,
    password: str | None,
    sentinel_password: str | None,
    fence: _WriteFence,
    timeout: float,
) -> None:
    """Hold writes on ``old`` until a sentinel names the promoted replica, point ``old`` at it, then
    lift the hold. Raises when the sentinels abandon the failover (the hold is lifted: ``old`` stays
    master) or name no new master within ``timeout`` (the hold then runs out within one lease)."""
    deadline = time.monotonic() + timeout
    settled_since: float | None = None
    while time.monotonic() < deadline:
        fence.hold()
        answers, unreachable = _ask_all(sentinels, master_name, sentinel_password, attempts=1)
        promoted = next((a.master for a in answers if a.master and not same_node(a.master, old)), None)
        if promoted is not None:
            try:
                call(old, password, partial(_follow, promoted))
            except (NotReady, OperationError) as exc:  # still held: try again on the next poll
                log.warning("pointing %s at %s failed: %s", old.address, promoted.address, exc)
            else:
                fence.lift()  # it is a replica now: the held writes fail with READONLY
                return
        elif not unreachable and not any(a.flags & _IN_FLUX_FLAGS for a in answers):
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since >= _ABANDONED_SECONDS:
                fence.lift()
                raise OperationError(
                    f"the sentinels abandoned the failover of {master_name}: {old.address} stays master "
                    "(is a replica in sync and reachable from the sentinels?)"
                )
        else:
            settled_since = None
        time.sleep(0.1)
    raise NotReady(
        f"no sentinel named a new master for {master_name} within {timeout:.0f}s; "
        f"writes on {old.address} resume within {fence.lease_ms / 1000:.0f}s"
    )


def wait_for_new_master(
    sentinels: Sequence[Endpoint],
    master_name: str,
    old: Endpoint,
    password: str | None,
    timeout: float = 60.0,
    *,
    sentinel_password: str | None = None,
) -> Endpoint:
    """Wait until a majority of sentinels name a master other than ``old``, the failover is over, and
    that node itself reports role master. Returns the new master."""
    found: list[Endpoint] = []

    def problems() -> list[str]:
        answers, _ = _ask_all(sentinels, master_name, sentinel_password, attempts=1)
        master, voters = _majority(answers, len(sentinels))
        if master is None:
            votes = {m.address: len(v) for m, v in _tally(answers)}
            return [f"no majority: {votes}"]
        if same_node(master, old):
            return [f"sentinels still name {old.address}"]
        # GET-MASTER-ADDR already names the promoted replica while the others are being reconfigured;
        # callers act next (scale in, bootstrap), so wait until the failover is over.
        if any(a.flags & _IN_FLUX_FLAGS for a in voters):
            return [f"failover to {master.address} still in progress"]
        try:
            role = node_role(master, password, attempts=1)
        except (NotReady, OperationError) as exc:
            return [str(exc)]
        if not role.is_master:
            return [f"{master.address} is named master but reports {role.role}"]
        found.append(master)
        return []

    _wait(problems, timeout, f"failover of {master_name} away from {old.address}")
    return found[-1]


# --- membership -----------------------------------------------------------------------------------


def add_replica(
    sentinels: Sequence[Endpoint],
    master_name: str,
    replica: Endpoint,
    password: str | None,
    *,
    sentinel_password: str | None = None,
    timeout: float = 60.0,
) -> bool:
    """Attach ``replica`` to the sentinels' master and wait until it is in sync and every sentinel lists
    it (sentinels learn replicas from the master's INFO, polled every 10 s). False if already there."""
    master, _ = _agreed_master(sentinels, master_name, sentinel_password)
    if same_node(master, replica):
        raise OperationError(f"{replica.address} is the current master of {master_name}")
    role = node_role(replica, password)
    changed = False
    if not (role.is_replica and same_node(role.master, master)):
        _ensure_masterauth(replica, password)
        changed = _replicaof(replica, master, password)
    _wait(
        lambda: _bootstrap_problems(sentinels, master_name, master, [replica], password, sentinel_password),
        timeout,
        f"adding replica {replica.address} to {master_name}",
    )
    return changed


def remove_replica(
    sentinels: Sequence[Endpoint],
    master_name: str,
    replica: Endpoint,
    password: str | None,
    *,
    sentinel_password: str | None = None,
    timeout: float = 60.0,
) -> bool:
    """Detach ``replica`` (REPLICAOF NO ONE) and make every sentinel forget it (SENTINEL RESET).

    Returns once every reset sentinel knows its peers and the remaining replicas again (within
    ``timeout``). The detached node is left as a standalone master: delete its pod, or
    ``observe_sentinel(data_nodes=...)`` will rightly report it as a second master.
    """
    master, voters = _agreed_master(sentinels, master_name, sentinel_password)
    if same_node(master, replica):
        raise OperationError(f"{replica.address} is the current master of {master_name}; fail over first")
    if any(a.flags & _IN_FLUX_FLAGS for a in voters):
        raise NotReady(f"failover in progress for {master_name}; not removing replicas now")
    changed = False
    try:
        role: NodeRole | None = node_role(replica, password)
    except NotReady:
        role = None  # already gone: only the sentinels' memory of it is left to clear
    if role is not None and role.is_replica:
        call(replica, password, lambda c: c.execute_command("REPLICAOF", "NO", "ONE"))
        changed = True
        log.info("redis %s: detached from %s", replica.address, master.address)

    # Reset every sentinel that remembers the node back to back. One left unreset would see the
    # detached node report role master and, after its grace period, make it a replica again, and the
    # others would relearn it from the master's INFO. The price: for up to one INFO period (10 s) the
    # reset sentinels know no replica and could not fail over.
    to_reset: dict[Endpoint, list[Endpoint]] = {}
    for sentinel in sentinels:
        known = call(
            sentinel, sentinel_password, lambda c: _as_dicts(_sentinel_cmd(c, "REPLICAS", master_name))
        )
        if any(same_node(_address(r), replica) for r in known):
            to_reset[sentinel] = [
                _address(r)
                for r in known
                if not same_node(_address(r), replica)
                and not _flags(r) & {"s_down", "o_down", "disconnected"}
            ]
    for sentinel in to_reset:
        call(sentinel, sentinel_password, lambda c: _sentinel_cmd(c, "RESET", master_name))
        changed = True
    deadline = time.monotonic() + timeout
    for sentinel, keep in to_reset.items():
        _wait(
            partial(_reset_problems, sentinel, master_name, replica, keep, len(sentinels), sentinel_password),
            max(0.0, deadline - time.monotonic()),
            f"sentinel {sentinel.address} forgetting {replica.address}",
        )
    return changed


def _reset_problems(
    sentinel: Endpoint,
    master_name: str,
    replica: Endpoint,
    keep: Sequence[Endpoint],
    total: int,
    sentinel_password: str | None,
) -> list[str]:
    def check(client: redis.Redis) -> list[str]:
        state = _as_dict(_sentinel_cmd(client, "MASTER", master_name))
        known = _as_dicts(_sentinel_cmd(client, "REPLICAS", master_name))
        problems = []
        if _int(state, "num-other-sentinels") < total - 1:
            problems.append(f"sees {_int(state, 'num-other-sentinels')} other sentinels")
        listed = [_address(r) for r in known]
        if any(same_node(r, replica) for r in listed):
            problems.append(f"still lists {replica.address}")
        missing = [k.address for k in keep if not any(same_node(k, r) for r in listed)]
        if missing:
            problems.append(f"has not relearned replicas {missing}")
        return problems

    try:
        return call(sentinel, sentinel_password, check, attempts=1)
    except (NotReady, OperationError, redis.RedisError) as exc:
        return [describe_error(exc, sentinel_password)]
