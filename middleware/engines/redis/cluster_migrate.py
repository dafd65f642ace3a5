"""Resharding and scaling a Redis Cluster: move slots, rebalance, add and remove shards.

Each operation first makes the cluster fit for moving slots (everyone answers and says ok, every
slot covered, none left open) and only then plans, so a rerun after a crash half-way converges to
the same layout. The key-moving itself is ``cluster_moves``; joining new members is
``cluster_create``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster_create import (
    _attach_replica,
    _dbsize,
    _forget_everywhere,
    _join,
    _reset_hard,
    _shard_master,
    _validate_shards,
)
from middleware.engines.redis.cluster_moves import SLOTS_PER_BATCH, _execute_moves, _fix_open_slots
from middleware.engines.redis.cluster_view import (
    _FAILURE_FLAGS,
    DEFAULT_TIMEOUT,
    SLOTS,
    ClusterReport,
    ClusterView,
    Progress,
    _isolated,
    _name,
    _roles_problems,
    _Session,
    _session,
    _wait,
    log,
)
from middleware.engines.redis.slots import SlotMove, compress, format_ranges, plan_rebalance
from middleware.errors import NotReady, OperationError

# How long views may disagree after a slot move before we call it a failure (gossip lag).
SETTLE_TIMEOUT = 15.0


# --- moving slots ----------------------------------------------------------------------------------


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
            _reset_hard(session, endpoint, report)

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
