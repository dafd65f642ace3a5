"""Live ZooKeeper ensemble operations: observe (``mntr``/``conf``) and change membership with
dynamic reconfig (kazoo), one server at a time.

Rules every membership change keeps:

- A server joins only once it is already following the leader and synced (as a non-voting
  follower); the join then only moves it from "learner" to "voter". ZooKeeper itself would accept
  a joiner that is down as long as the rest has a quorum, leaving the ensemble one failure closer
  to unavailability: Moorage refuses that.
- Joins come before leaves, and each step waits until the leader's committed config shows it and
  the ensemble has a synced quorum again, so the quorum is never smaller than needed.
- A server leaves only when the voters that stay still have a synced majority without it.
- Every reconfig names the config version it was computed from (``from_config``): a concurrent
  change makes it fail instead of silently overwriting the other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NewConfigNoQuorumError,
    NoAuthError,
    ReconfigDisabledError,
    ReconfigInProcessError,
)
from kazoo.handlers.threading import KazooTimeoutError

from middleware.endpoints import Endpoint
from middleware.engines.base import Progress, no_progress
from middleware.engines.zookeeper.config import SUPER_USER, server_spec
from middleware.engines.zookeeper.launch import (
    NOT_SERVING,
    Membership,
    four_letter_word,
    parse_conf,
)
from middleware.errors import NotReady, OperationError

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_TIMEOUT = 2.0
POLL_INTERVAL = 0.2
# Connecting, syncing a joiner and electing a leader take seconds with the default tickTime; a
# minute covers a slow CI machine without hiding a member that will never make it.
WAIT_TIMEOUT = 60.0
SESSION_TIMEOUT = 10.0


@dataclass
class ServerState:
    """One server as it reports itself: ``mntr`` for its state, ``conf`` for id and membership."""

    endpoint: Endpoint
    mode: str  # leader, follower, observer, or "looking" while it does not serve
    peer_state: str = ""
    server_id: int | None = None
    membership: Membership | None = None
    ports: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        return self.mode in ("leader", "follower", "observer")

    @property
    def synced(self) -> bool:
        # "following - broadcast": past the sync phase, receiving the leader's proposals.
        return self.serving and self.peer_state.endswith("broadcast")

    def metric(self, name: str) -> int:
        try:
            return int(self.metrics.get(name, "0"))
        except ValueError:
            return 0


@dataclass
class EnsembleView:
    states: dict[Endpoint, ServerState]

    @property
    def leaders(self) -> list[ServerState]:
        return [s for s in self.states.values() if s.mode == "leader"]

    @property
    def leader(self) -> ServerState | None:
        leaders = self.leaders
        if not leaders:
            return None
        # Right after an election an old leader may still say so for a moment; the newest config wins.
        return max(leaders, key=lambda s: s.membership.version if s.membership else -1)

    @property
    def membership(self) -> Membership | None:
        leader = self.leader
        if leader is not None and leader.membership is not None:
            return leader.membership
        known = [s.membership for s in self.states.values() if s.membership is not None]
        return max(known, key=lambda m: m.version) if known else None

    def synced_voters(self) -> set[int]:
        membership = self.membership
        if membership is None or self.leader is None:
            return set()
        return {
            s.server_id
            for s in self.states.values()
            if s.server_id in membership.voters and s.synced and s.server_id is not None
        }

    @property
    def quorum_ok(self) -> bool:
        membership = self.membership
        return membership is not None and len(self.synced_voters()) >= membership.quorum

    def by_id(self, server_id: int) -> ServerState | None:
        return next((s for s in self.states.values() if s.server_id == server_id), None)


# ---------------------------------------------------------------------------------------------------
# Observing


def _parse_mntr(reply: str) -> dict[str, str]:
    metrics = {}
    for line in reply.splitlines():
        key, sep, value = line.partition("\t")
        if sep:
            metrics[key.strip()] = value.strip()
    return metrics


def _parse_conf_header(reply: str) -> dict[str, str]:
    header = reply.split("membership:", 1)[0]
    values = {}
    for line in header.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> ServerState | None:
    """The server's state, or None when nothing answers on its client port."""
    try:
        mntr = four_letter_word(endpoint.host, endpoint.port, "mntr", timeout)
        conf = four_letter_word(endpoint.host, endpoint.port, "conf", timeout)
    except OSError:
        return None
    if NOT_SERVING in mntr or not mntr.strip():
        return ServerState(endpoint, mode="looking")
    metrics = _parse_mntr(mntr)
    header = _parse_conf_header(conf)
    server_id = header.get("serverId")
    ports = {
        k: int(header[k]) for k in ("clientPort", "quorumPort", "electionPort") if header.get(k, "").isdigit()
    }
    return ServerState(
        endpoint,
        mode=metrics.get("zk_server_state", "looking"),
        peer_state=metrics.get("zk_peer_state", ""),
        server_id=int(server_id) if server_id and server_id.isdigit() else None,
        membership=parse_conf(conf),
        ports=ports,
        metrics=metrics,
    )


def observe(endpoints: list[Endpoint]) -> EnsembleView:
    states = {}
    for endpoint in endpoints:
        state = probe(endpoint)
        if state is not None:
            states[endpoint] = state
    return EnsembleView(states)


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = WAIT_TIMEOUT,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; NotReady with the last state otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            suffix = f" ({detail()})" if detail else ""
            raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
        time.sleep(POLL_INTERVAL)


def describe(view: EnsembleView) -> str:
    leader = view.leader
    membership = view.membership
    parts = [f"leader {leader.server_id if leader else 'none'}"]
    if membership is not None:
        parts.append(f"voters {sorted(membership.voters)}")
        parts.append(f"synced {sorted(view.synced_voters())}")
    down = [s.endpoint.address for s in view.states.values() if not s.serving]
    if down:
        parts.append(f"not serving: {', '.join(down)}")
    return "; ".join(parts)


def wait_for_quorum(endpoints: list[Endpoint], timeout: float = WAIT_TIMEOUT) -> EnsembleView:
    last: list[EnsembleView] = []

    def check() -> EnsembleView | None:
        view = observe(endpoints)
        last[:] = [view]
        return view if view.leader is not None and view.quorum_ok else None

    return wait_for(
        "a leader with a synced quorum", check, timeout, lambda: describe(last[0]) if last else "no answer"
    )


# ---------------------------------------------------------------------------------------------------
# Changing membership


@contextlib.contextmanager
def _admin_client(endpoints: list[Endpoint], password: str) -> Iterator[Any]:
    client = KazooClient(
        hosts=",".join(e.address for e in endpoints),
        timeout=SESSION_TIMEOUT,
        auth_data=[("digest", f"{SUPER_USER}:{password}")],
    )
    try:
        client.start(timeout=SESSION_TIMEOUT)
    except (KazooException, KazooTimeoutError) as error:
        client.close()
        raise NotReady(f"cannot open a ZooKeeper session on {client.hosts}: {error!r}") from None
    try:
        yield client
    finally:
        client.stop()
        client.close()


def reconfig(
    endpoints: list[Endpoint],
    password: str,
    *,
    from_config: int,
    joining: str | None = None,
    leaving: str | None = None,
) -> Membership:
    """One incremental reconfig as the superuser; returns the new committed membership."""
    with _admin_client(endpoints, password) as client:
        try:
            data, _ = client.reconfig(
                joining=joining, leaving=leaving, new_members=None, from_config=from_config
            )
        except BadVersionError:
            raise NotReady("the ensemble's config changed meanwhile; run the change again") from None
        except ReconfigInProcessError:
            raise NotReady("another reconfig is in progress; run the change again") from None
        except NewConfigNoQuorumError:
            raise OperationError(
                "ZooKeeper refused the change: the new configuration would have no synced quorum"
            ) from None
        except NoAuthError:
            raise OperationError("ZooKeeper rejected the superuser credentials for reconfig") from None
        except ReconfigDisabledError:
            raise OperationError("reconfig is disabled on this ensemble (reconfigEnabled=false)") from None
        except KazooException as error:
            # The session broke mid-request: the change may or may not be committed. A re-run reads
            # the committed config and continues from there.
            raise NotReady(f"reconfig interrupted ({error!r}); run the change again") from None
    membership = parse_conf("membership:\n" + data.decode())
    if membership is None:
        raise OperationError(f"reconfig returned no configuration: {data!r}")
    return membership


@dataclass
class ConvergeResult:
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def converge(
    target: dict[int, Endpoint],
    endpoints: list[Endpoint],
    password: str,
    *,
    progress: Progress = no_progress,
    timeout: float = WAIT_TIMEOUT,
) -> ConvergeResult:
    """Make the voting members exactly ``target`` (server id → client endpoint), one server at a time.

    ``endpoints`` are all the servers to talk to (leaving ones included). Idempotent: a re-run after
    a failure continues from whatever the ensemble's committed config says now.
    """
    result = ConvergeResult()
    view = wait_for_quorum(endpoints, timeout)
    membership = _membership(view)
    joining = sorted(set(target) - membership.voters)
    leaving = sorted(set(membership.servers) - set(target), reverse=True)
    total = len(joining) + len(leaving)
    for done, server_id in enumerate(joining):
        progress("reconfiguring the ensemble", done, total)
        _join(server_id, target[server_id], endpoints, password, timeout)
        result.actions.append(f"server {server_id} joined")
    for done, server_id in enumerate(leaving, start=len(joining)):
        progress("reconfiguring the ensemble", done, total)
        _leave(server_id, endpoints, password, timeout)
        result.actions.append(f"server {server_id} left")
    if total:
        progress("reconfiguring the ensemble", total, total)
    return result


def _membership(view: EnsembleView) -> Membership:
    membership = view.membership
    if membership is None:
        raise NotReady("no serving ZooKeeper server reports the ensemble's configuration")
    return membership


def _join(
    server_id: int, endpoint: Endpoint, endpoints: list[Endpoint], password: str, timeout: float
) -> None:
    last: list[ServerState | None] = [None]

    def synced_learner() -> ServerState | None:
        state = probe(endpoint)
        last[0] = state
        if state is None or not state.synced or state.server_id != server_id:
            return None
        return state if {"quorumPort", "electionPort"} <= state.ports.keys() else None

    joiner = wait_for(
        f"server {server_id} ({endpoint.address}) to follow the leader before it joins",
        synced_learner,
        timeout,
        lambda: f"last seen: {last[0].mode if last[0] else 'no answer'}",
    )
    spec = server_spec(
        server_id,
        endpoint.host,
        peer=joiner.ports["quorumPort"],
        election=joiner.ports["electionPort"],
        client=endpoint.port,
    )
    view = wait_for_quorum(endpoints, timeout)
    membership = _membership(view)
    if server_id not in membership.voters:
        log.info("reconfig: joining %s", spec.line)
        reconfig(endpoints, password, from_config=membership.version, joining=spec.line)

    def joined() -> EnsembleView | None:
        now = observe(endpoints)
        current = now.membership
        ok = now.quorum_ok and current is not None and server_id in now.synced_voters()
        return now if ok else None

    wait_for(f"server {server_id} to vote in the ensemble", joined, timeout)


def _leave(server_id: int, endpoints: list[Endpoint], password: str, timeout: float) -> None:
    view = wait_for_quorum(endpoints, timeout)
    membership = _membership(view)
    if server_id not in membership.servers:
        return
    remaining = membership.voters - {server_id}
    if not remaining:
        raise OperationError(f"server {server_id} is the last voter of the ensemble: it cannot leave")
    synced = view.synced_voters() & remaining
    needed = len(remaining) // 2 + 1
    if len(synced) < needed:
        raise OperationError(
            f"removing server {server_id} would leave voters {sorted(remaining)} with only "
            f"{sorted(synced)} synced, fewer than the {needed} a quorum needs: bring members back first"
        )
    log.info("reconfig: server %d leaving", server_id)
    reconfig(endpoints, password, from_config=membership.version, leaving=str(server_id))

    def left() -> EnsembleView | None:
        now = observe(endpoints)
        current = now.membership
        if current is None or now.leader is None or not now.quorum_ok:
            return None
        return now if server_id not in current.servers else None

    wait_for(f"the ensemble to commit server {server_id} leaving", left, timeout)
