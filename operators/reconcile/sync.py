"""``RedisSync`` under the operator: plan from live topologies, apply the workloads, supervise them.

Reconcile (create, update, resume), one pass that never waits:
resolve both sides → observe them live → plan for ``spec.direction`` → delete the workloads the
direction does not have, and wait until their pods are gone (a forward and a reverse workload running
together would copy each other's writes back and forth) → render and apply Secret + Deployment per
workload, owned by the RedisSync → status.

Supervision (the timer): ``sync.supervising.supervise_step``, the pass ``moorage sync`` runs over
local processes too, over this module's ``_PodWorkloads`` port: per workload a ``Sample`` of
redis-shake's status port, the pod's restarts and the source shard's master, offset and slots observed
now; ``sync.supervisor.decide`` and ``supervising.judge`` turn the recent samples into an action.
RESTART rolls the Deployment through a pod-template annotation (a full resync; pods are never deleted
by the operator), REPLAN plans again from the live topology and applies. The reason goes into the
workload's status and an Event; lag into the status and the metrics.

The data movement itself is redis-shake's, in the pods; this module only decides what runs where.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf

from middleware.endpoints import Endpoint
from middleware.errors import NotReady, SpecError
from middleware.kube.builders import COMPONENT_LABEL, INSTANCE_LABEL, NAME_LABEL
from middleware.models.sync import (
    RedisEndpointKind,
    RedisSyncStatus,
    ShakeVersion,
    SyncDirection,
    SyncWorkloadStatus,
)
from middleware.runtime.kubernetes import KubernetesApiError, KubernetesRuntime
from operators import metrics
from operators.kube import context
from operators.kube.redis_sync import (
    READY,
    WAITING_FOR_SIDES,
    Resolved,
    SideAccess,
    SideNotReady,
    desired,
    resolve,
)
from operators.reconcile import events
from operators.settings import OperatorConfig, operator_config
from sync import heartbeat, shake_config, supervising
from sync.observe import (
    fetch_status,
    master_offset,
    replication_view,
    saving,
    shake_consumer,
    shard_now,
)
from sync.plan import RedisTopology, ShakeWorkload
from sync.supervisor import BEFORE_RDB_PHASES, Action, Decision, Policy, Sample
from sync.verify import RedisURL

log = logging.getLogger(__name__)

RUNNING, STOPPED, FAILED, PENDING = "Running", "Stopped", "Failed", "Pending"
RESTARTED_AT = "moorage.io/restarted-at"
RESTART_REASON = "moorage.io/restart-reason"
STATUS_TIMEOUT = 2.0


POLICY = Policy()


# -- sides ----------------------------------------------------------------------------------------


def render(namespace: str, resolved: Resolved, workloads: Sequence[ShakeWorkload]) -> list[dict[str, Any]]:
    reader, writer = resolved.reader(), resolved.writer()
    spec = resolved.spec
    renderer = shake_config.render_v3 if spec.shake_version == ShakeVersion.V3 else shake_config.render_v4
    configs = {
        w.name: renderer(w, source_password=reader.password, target_password=writer.password)
        for w in workloads
    }
    return shake_config.manifests(
        workloads,
        namespace,
        configs,
        image=spec.image or shake_config.DEFAULT_IMAGE,
        resources=spec.resources or shake_config.DEFAULT_RESOURCES,
        shake_version=str(spec.shake_version),
        # The image the operator's own Jobs run: it has `moorage sync clear-share`.
        share_image=operator_config().job.image,
    )


# -- what runs ------------------------------------------------------------------------------------


def _selector(name: str) -> dict[str, str]:
    return {NAME_LABEL: shake_config.COMPONENT, INSTANCE_LABEL: name}


def prune(rt: KubernetesRuntime, namespace: str, name: str, keep: set[str]) -> list[str]:
    """Delete the Deployments and config Secrets of this sync that are not in ``keep``."""
    removed = []
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Secret")):
        for item in rt.list_objects(api_version, kind, namespace, _selector(name)):
            workload = (item["metadata"].get("labels") or {}).get(COMPONENT_LABEL, "")
            if workload not in keep and rt.delete(
                api_version, kind, namespace, item["metadata"]["name"], propagation="Foreground"
            ):
                removed.append(f"{kind} {item['metadata']['name']}")
    return removed


def leftover_pods(rt: KubernetesRuntime, namespace: str, name: str, keep: set[str]) -> list[str]:
    pods = rt.pods(namespace, _selector(name))
    return sorted(
        p["metadata"]["name"]
        for p in pods
        if (p["metadata"].get("labels") or {}).get(COMPONENT_LABEL, "") not in keep
    )


@dataclass
class Applied:
    generation: int | None
    direction: SyncDirection
    workloads: list[ShakeWorkload]


# What was applied per RedisSync and the recent samples per workload. In memory: the resume handler
# plans again after an operator restart, and the samples only need the last few intervals.
_lock = threading.Lock()
_object_locks: dict[tuple[str, str], threading.Lock] = {}
_applied: dict[tuple[str, str], Applied] = {}
_samples: dict[tuple[str, str, str], deque[Sample]] = {}


def _object_lock(key: tuple[str, str]) -> threading.Lock:
    # The reconcile and the timer of one object run in different threads; both write its status.
    with _lock:
        return _object_locks.setdefault(key, threading.Lock())


def _history(namespace: str, name: str, workload: str) -> deque[Sample]:
    window = max(POLICY.stall_samples, POLICY.silent_samples) + 2
    return _samples.setdefault((namespace, name, workload), deque(maxlen=window))


def _forget_samples(namespace: str, name: str, keep: set[str] | None = None) -> None:
    for key in [k for k in _samples if k[:2] == (namespace, name) and (keep is None or k[2] not in keep)]:
        del _samples[key]


def forget(body: Mapping[str, Any]) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    with _lock:
        applied = _applied.pop((namespace, name), None)
        _object_locks.pop((namespace, name), None)
    _forget_samples(namespace, name)
    for workload in applied.workloads if applied else []:
        metrics.forget_sync(namespace, name, workload.name)


def _load_status(body: Mapping[str, Any]) -> RedisSyncStatus:
    return RedisSyncStatus.model_validate(dict(body.get("status") or {}))


def _entries(status: RedisSyncStatus, workloads: Sequence[ShakeWorkload]) -> list[SyncWorkloadStatus]:
    """One entry per workload; restarts and the last reason survive a re-plan of the same workload."""
    before = {w.name: w for w in status.workloads}
    entries = []
    for w in workloads:
        old = before.get(w.name)
        entries.append(
            SyncWorkloadStatus(
                name=w.name,
                source=w.reader.address,
                state=old.state if old and old.source == w.reader.address else PENDING,
                lag_bytes=old.lag_bytes if old else None,
                lag_seconds=old.lag_seconds if old else None,
                restarts=old.restarts if old else 0,
                last_restart_reason=old.last_restart_reason if old else None,
            )
        )
    return entries


def _apply(
    rt: KubernetesRuntime, body: Mapping[str, Any], resolved: Resolved, workloads: Sequence[ShakeWorkload]
) -> None:
    namespace = body["metadata"]["namespace"]
    for manifest in render(namespace, resolved, workloads):
        rt.apply(manifest, owner=body)


# -- reconcile ------------------------------------------------------------------------------------


def reconcile(
    body: kopf.Body, patch: MutableMapping[str, Any], outcome: dict[str, str], config: OperatorConfig
) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    with _object_lock((namespace, name)):
        _reconcile(body, patch, outcome, config, namespace, name)


def _reconcile(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    outcome: dict[str, str],
    config: OperatorConfig,
    namespace: str,
    name: str,
) -> None:
    rt = context.runtime()
    status = _load_status(body)
    generation = body["metadata"].get("generation")
    status.observed_generation = generation

    def retry(reason: str, message: str, delay: float) -> NoReturn:
        changed = status.set_condition(READY, False, reason, message)
        if status.phase != RUNNING:
            status.phase, status.phase_reason = PENDING, reason
        patch["status"] = status.to_wire()
        if changed:
            events.normal(body, reason=reason, message=message)
        outcome["result"] = "retry"
        raise kopf.TemporaryError(message, delay=delay)

    try:
        resolved = resolve(rt, body, config)
        workloads, _ = desired(name, resolved)
    except SpecError as exc:
        status.phase, status.phase_reason = FAILED, "InvalidSpec"
        status.set_condition(READY, False, "InvalidSpec", str(exc))
        patch["status"] = status.to_wire()
        events.warning(body, reason="InvalidSpec", message=str(exc))
        outcome["result"] = "invalid"
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    except NotReady as exc:
        retry(
            exc.reason if isinstance(exc, SideNotReady) else WAITING_FOR_SIDES, str(exc), config.member_retry
        )
    direction = resolved.direction
    keep = {w.name for w in workloads}
    try:
        removed = prune(rt, namespace, name, keep)
        if removed:
            events.normal(
                body, reason="WorkloadsDeleted", message=f"{direction}: deleted {', '.join(removed)}"
            )
        stopping = leftover_pods(rt, namespace, name, keep)
        if stopping:
            retry("StoppingWorkloads", f"waiting for pods {', '.join(stopping)} to stop", config.member_retry)
        _apply(rt, body, resolved, workloads)
    except KubernetesApiError as exc:
        retry("ApplyFailed", str(exc), config.api_error_retry)
    with _lock:
        _applied[(namespace, name)] = Applied(generation, direction, list(workloads))
    _forget_samples(namespace, name, keep)
    status.workloads = _entries(status, workloads)
    if workloads:
        readers = "; ".join(f"{w.name} reads {w.reader.address}" for w in workloads)
        message = f"{direction}: {len(workloads)} workload(s) applied, writing {workloads[0].writer.address}"
        status.phase, status.phase_reason = RUNNING, "Applied"
        status.set_condition(READY, True, "Applied", message)
        events.normal(body, reason="Applied", message=f"{message}; {readers}")
    else:
        status.phase, status.phase_reason = STOPPED, "Stopped"
        status.set_condition(READY, True, "Stopped", "direction Stopped: no workloads run")
        events.normal(body, reason="Stopped", message="direction Stopped: every workload deleted")
    patch["status"] = status.to_wire()


# -- supervision ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _pod_of(pods: Sequence[Mapping[str, Any]], workload: str) -> Mapping[str, Any] | None:
    mine = [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == workload
        and not p["metadata"].get("deletionTimestamp")
    ]
    mine.sort(key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
    return mine[-1] if mine else None


def _status_port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "status":
                return int(port["containerPort"])
    return shake_config.STATUS_PORT


def _restarts(pod: Mapping[str, Any] | None) -> int:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def _clears_share(pod: Mapping[str, Any] | None) -> bool:
    """Whether the pod empties its share before redis-shake starts (rendered with clear-share)."""
    init = ((pod or {}).get("spec") or {}).get("initContainers") or []
    return any(c.get("name") == "clear-share" for c in init)


def _running(pod: Mapping[str, Any] | None) -> bool:
    state = (pod or {}).get("status") or {}
    return state.get("phase") == "Running" and bool(state.get("podIP"))


def roll(rt: KubernetesRuntime, namespace: str, workload: str, reason: str) -> bool:
    """Restart a workload the way ``kubectl rollout restart`` does: a pod-template annotation, so the
    Deployment replaces the pod (Recreate) and redis-shake starts a full resync."""
    annotations = {RESTARTED_AT: _now(), RESTART_REASON: reason[:200]}
    body = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
    return rt.merge_patch("apps/v1", "Deployment", namespace, workload, body) is not None


def _sample(
    workload: ShakeWorkload,
    pod: Mapping[str, Any] | None,
    source: RedisTopology | None,
    target: RedisTopology | None,
    password: str | None,
    version: str = ShakeVersion.V4,
) -> Sample:
    status = None
    acked = None
    reader_saving = None
    v4 = version == ShakeVersion.V4
    if pod is not None and _running(pod):
        pod_ip = str(pod["status"]["podIP"])
        port = _status_port(pod) if v4 else shake_config.V3_LISTENING_PORT
        if v4:
            status = fetch_status(pod_ip, port, STATUS_TIMEOUT)
        # The source's own view of what redis-shake received: its connection to the node it reads,
        # found by the pod's IP and the port it announces as its listening port.
        view = replication_view(workload.reader, password)
        consumer = shake_consumer(view[1], port, pod_ip) if view else None
        acked = consumer.offset if consumer is not None else None
        if status is not None and status.phase in BEFORE_RDB_PHASES:
            # Stuck before the RDB: is the node it reads busy with a BGSAVE of its own (#973)?
            reader_saving = saving(workload.reader, password)
    shard = (
        shard_now(source, workload.source_master, workload.reader, workload.source_slots) if source else None
    )
    target_master = None
    if target is not None and target.kind is not RedisEndpointKind.CLUSTER:
        target_master = target.shards[0].master
    return Sample(
        at=time.time(),
        status=status,
        restarts=_restarts(pod),
        source_master=shard.master if shard else None,
        source_offset=master_offset(shard.master, password) if shard else None,
        source_slots=shard.slots if shard else (),
        target_master=target_master,
        acked_offset=acked,
        reader_saving=reader_saving,
        status_expected=v4,
    )


def tick(body: kopf.Body, patch: MutableMapping[str, Any], config: OperatorConfig) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if body["metadata"].get("deletionTimestamp"):
        return
    with _object_lock((namespace, name)):
        _tick(body, patch, config, namespace, name)


def _tick(
    body: kopf.Body, patch: MutableMapping[str, Any], config: OperatorConfig, namespace: str, name: str
) -> None:
    applied = _applied.get((namespace, name))
    status = _load_status(body)
    generation = body["metadata"].get("generation")
    # Only what the reconcile of this very generation applied, and only once its status is visible
    # here: otherwise this tick would write the workloads of an older plan back.
    if (
        applied is None
        or not applied.workloads
        or applied.generation != generation
        or status.observed_generation != generation
    ):
        return
    rt = context.runtime()
    try:
        resolved = resolve(rt, body, config, require_ready=False)
    except (SpecError, NotReady) as exc:
        log.info("RedisSync %s/%s: not supervised this round: %s", namespace, name, exc)
        return
    entries = {e.name: e for e in _entries(status, applied.workloads)}
    port = _PodWorkloads(rt, body, resolved, generation, rt.pods(namespace, _selector(name)), entries)
    passed = supervising.supervise_step(port, applied.workloads, POLICY)
    for verdict in passed.verdicts:
        workload, decision = verdict.workload, verdict.decision
        entry = entries[workload.name]
        starting = verdict.seen.liveness is supervising.Liveness.STARTING
        entry.state = PENDING if starting and decision.action is not Action.REPLAN else str(decision.state)
        entry.lag_bytes, entry.write_lag_bytes = decision.lag_bytes, decision.write_lag_bytes
        if verdict.heartbeat_lag is not None:
            entry.lag_seconds, entry.lag_seconds_from = round(verdict.heartbeat_lag, 3), "heartbeat"
        else:
            entry.lag_seconds = decision.lag_seconds
            entry.lag_seconds_from = "rate" if decision.lag_seconds is not None else None
        metrics.record_sync_lag(
            namespace, name, workload.name, decision.lag_bytes, entry.lag_seconds, decision.write_lag_bytes
        )
    status.workloads = [entries[w.name] for w in _applied[(namespace, name)].workloads if w.name in entries]
    before = _load_status(body).to_wire()
    if status.to_wire() != before:
        patch["status"] = status.to_wire()


@dataclass
class _PodWorkloads:
    """``sync.supervising.WorkloadsPort`` over Deployments: a workload runs when its pod does; the
    kubelet restarts a crashed redis-shake in its pod (seen as restarted in place: its share was not
    emptied first); a restart rolls the Deployment, a re-plan applies the new plan (changed configs
    change the pod-template checksum, so exactly the affected Deployments roll)."""

    rt: KubernetesRuntime
    body: kopf.Body
    resolved: Resolved
    generation: int | None
    pods: list[dict[str, Any]]
    entries: dict[str, SyncWorkloadStatus]
    target: RedisTopology | None = None

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def sides(self) -> tuple[RedisTopology | None, RedisTopology | None]:
        self.target = _observed(self.resolved.writer())
        return _observed(self.resolved.reader()), self.target

    def seen(self, workload: ShakeWorkload) -> supervising.Seen:
        pod = _pod_of(self.pods, workload.name)
        if not _running(pod):
            phase = ((pod or {}).get("status") or {}).get("phase") or "missing"
            return supervising.Seen(supervising.Liveness.STARTING, f"pod phase {phase}")
        if _restarts(pod) > 0 and _clears_share(pod):
            return supervising.Seen(
                supervising.Liveness.RESTARTED_IN_PLACE, f"restarted in its pod ({_restarts(pod)} restarts)"
            )
        return supervising.Seen(supervising.Liveness.RUNNING)

    def history(self, workload: ShakeWorkload) -> deque[Sample]:
        return _history(self.namespace, self.name, workload.name)

    def sample(
        self,
        workload: ShakeWorkload,
        seen: supervising.Seen,
        source: RedisTopology | None,
        target: RedisTopology | None,
    ) -> Sample:
        return _sample(
            workload,
            _pod_of(self.pods, workload.name),
            source,
            target,
            self.resolved.reader().password,
            str(self.resolved.spec.shake_version),
        )

    def heartbeat(self, workload: ShakeWorkload, source_master: Endpoint) -> float | None:
        return _heartbeat(workload, source_master, self.target, self.resolved)

    def restarts_held(self) -> str | None:
        return None  # resolve() already refused sides that name no usable master

    def backing_off(self, workload: ShakeWorkload, reason: str) -> str | None:
        return None  # the kubelet backs off a crashing pod

    def restart(self, workload: ShakeWorkload, reason: str) -> None:
        if not roll(self.rt, self.namespace, workload.name, reason):
            raise supervising.NotRestarted(f"Deployment {workload.name} not found")
        _restarted(self.body, self.namespace, self.name, self.entries[workload.name], "Restarted", reason)

    def replan(self, replans: Sequence[tuple[ShakeWorkload, Decision]]) -> list[str]:
        return _replan(
            self.rt,
            self.body,
            self.resolved,
            self.namespace,
            self.name,
            self.generation,
            self.entries,
            replans,
        )


def _heartbeat(
    workload: ShakeWorkload, source_master: Endpoint | None, target: RedisTopology | None, resolved: Resolved
) -> float | None:
    """Lag in seconds from the workload's heartbeat key (``sync.heartbeat``, as the local runner
    does it): read on the source shard's master and on the target; a new one written on the source
    once the target holds the last. None when no key applies (a filter would drop it) or either side
    cannot be read this round."""
    key = heartbeat.key(workload)
    if key is None or target is None:
        return None
    reader, writer = resolved.reader(), resolved.writer()
    master = reader.dialable(source_master or workload.source_master)
    db = heartbeat.database(workload)
    # A cluster target is discovered from any of its masters; otherwise the one master it has.
    target_url = RedisURL(writer.dialable(target.shards[0].master), None, writer.password, 0)
    on_source = heartbeat.read_source(master, key, db, None, reader.password)
    on_target = heartbeat.read_target(target_url, key, db)
    now = time.time()
    if heartbeat.due(on_source, on_target):
        heartbeat.write_source(master, key, db, None, reader.password, now)
    return heartbeat.lag_seconds(on_source, on_target, now)


def _observed(side: SideAccess) -> RedisTopology | None:
    try:
        return side.observe()
    except NotReady as exc:
        log.info("side not observable this round: %s", exc)
        return None


def _restarted(
    body: kopf.Body, namespace: str, name: str, entry: SyncWorkloadStatus, reason: str, message: str
) -> None:
    entry.restarts += 1
    entry.last_restart_reason = message
    metrics.count_sync_restart(namespace, name, entry.name, reason)
    _samples.pop((namespace, name, entry.name), None)
    events.warning(body, reason=reason, message=f"{entry.name}: {message} (full resync)")


def _replan(
    rt: KubernetesRuntime,
    body: kopf.Body,
    resolved: Resolved,
    namespace: str,
    name: str,
    generation: int | None,
    entries: dict[str, SyncWorkloadStatus],
    replans: Sequence[tuple[ShakeWorkload, Decision]],
) -> list[str]:
    """Plan again from the topology observed now and apply: a changed reader or writer changes the
    plan checksum on the pod template, so exactly the affected Deployments roll."""
    try:
        workloads, _ = desired(name, resolved)
        _apply(rt, body, resolved, workloads)
    except (NotReady, SpecError, KubernetesApiError) as exc:
        # Still converging (a failover in progress): the next tick decides again.
        log.info("RedisSync %s/%s: re-plan deferred: %s", namespace, name, exc)
        return [f"re-plan deferred: {exc}"]
    with _lock:
        _applied[(namespace, name)] = Applied(generation, resolved.direction, list(workloads))
    by_name = {w.name: w for w in workloads}
    for workload, decision in replans:
        entry = entries.get(workload.name)
        new = by_name.get(workload.name)
        if entry is None or new is None:
            continue
        entry.source = new.reader.address
        _restarted(
            body,
            namespace,
            name,
            entry,
            "Replanned",
            f"{decision.state}: {decision.reason}; now reading {new.reader.address}",
        )
    for workload in workloads:
        if workload.name not in entries:
            entries[workload.name] = SyncWorkloadStatus(
                name=workload.name, source=workload.reader.address, state=PENDING
            )
    return [f"re-planned: {'; '.join(f'{w.name}: {d.reason}' for w, d in replans)}"]
