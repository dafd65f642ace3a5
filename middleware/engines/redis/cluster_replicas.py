"""Replicas and failover in a Redis Cluster: attach and remove replicas, promote one, wait for one.

A promotion needs the votes of every slot-owning master, and a master that has never heard of a
replica ignores its election; so replicas are only reported attached once every node sees them in
their role, and a manual failover first waits for every master to know the replica.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster_create import _attach_replica, _forget_everywhere, _join, _reset_hard
from middleware.engines.redis.cluster_view import (
    _FAILURE_FLAGS,
    DEFAULT_TIMEOUT,
    ClusterNode,
    ClusterReport,
    NodeReport,
    _isolated,
    _name,
    _Session,
    _session,
    _wait,
)
from middleware.engines.redis.slots import expand
from middleware.errors import NotReady, OperationError

# Redis abandons a manual failover after 5 s; ask again a little later.
MANUAL_FAILOVER_RETRY = 6.0


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
                        if endpoint != replica and not _sees_replica(other, replica_id, master_id)
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
                    _reset_hard(session, replica, report)
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
        if not _sees_replica(theirs, me.id, me.master_id):
            problems.append(f"master {address.address} does not know {own.endpoint.address} as a replica yet")
    return problems


def _sees_replica(reporter: NodeReport, node_id: str, master_id: str | None) -> bool:
    """``reporter`` knows ``node_id`` as a healthy replica of ``master_id``."""
    seen = reporter.entries.get(node_id)
    return seen is not None and not seen.flags & _FAILURE_FLAGS and seen.master_id == master_id


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
