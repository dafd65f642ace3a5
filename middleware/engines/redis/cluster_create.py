"""Forming a Redis Cluster: joining members, creating it, healing it after restarts.

Everything is idempotent and resumable: a rerun on a healthy cluster changes nothing, a rerun after
a crash finishes the job. Members are met by IP (``CLUSTER MEET`` takes nothing else) and the
cluster is never merged with another one that already has slots assigned, because Redis would
settle that conflict by epoch and drop data. The join, replica and forget helpers here are also
what ``cluster_migrate`` and ``cluster_replicas`` use to add and remove members.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster_moves import _fix_open_slots
from middleware.engines.redis.cluster_view import (
    DEFAULT_TIMEOUT,
    SLOTS,
    ClusterReport,
    NodeReport,
    _roles_problems,
    _Session,
    _session,
    _wait,
    log,
)
from middleware.engines.redis.slots import allocate_slots, compress, expand, format_ranges
from middleware.errors import NotReady, OperationError

# A handshake that has not completed in this long is retried (the first MEET may have been lost).
REMEET_AFTER = 3.0


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


def _reset_hard(session: _Session, endpoint: Endpoint, report: ClusterReport) -> None:
    # A removed node still knows its old peers and would gossip itself back into their tables once
    # their forget ban expires; a hard reset empties its table (and gives it a new id).
    session.cmd(endpoint, "CLUSTER", "RESET", "HARD")
    report.act(f"reset {endpoint.address} (CLUSTER RESET HARD)")
