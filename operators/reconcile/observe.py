"""Observation: ask the engine who is who (RoleProbe), label pods with their role so Services such as
``-master`` follow failovers, record metrics and put members/endpoints into the status."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import kopf

from middleware.engines import metrics as exporters
from middleware.engines.base import WAL_ARCHIVING, Connection, Engine, Observation
from middleware.errors import SpecError
from middleware.kube.builders import ROLE_LABEL, credentials_secret_name
from middleware.models.common import now_precise
from middleware.operations import restore_hold
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec
from operators import metrics
from operators.kube.context import pods_by_name
from operators.reconcile import archiving, events
from operators.reconcile.status import MiddlewareStatus
from operators.settings import OperatorConfig

log = logging.getLogger(__name__)

# A member the engine says rejoins only by a restart is not evicted again within this long of its
# container's last start (seconds): time to come back, rewind, and start streaming.
REJOIN_GRACE = 60.0


# Waiting reasons that will not clear by themselves (ContainerCreating and PodInitializing do).
_STUCK_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a member's pod is not becoming ready, in the pod's own words: unschedulable, an image
    missing, a crash loop with its last log line. None while it is merely starting."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unschedulable'}: {condition.get('message') or ''}".strip()
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in _STUCK_WAITING:
            continue
        problem = f"container {container.get('name')}: {reason}"
        terminated = (container.get("lastState") or {}).get("terminated") or {}
        lines = [line for line in str(terminated.get("message") or "").splitlines() if line.strip()]
        if lines:
            problem += f" (exit {terminated.get('exitCode')}; last log line: {lines[-1].strip()[:300]})"
        elif waiting.get("message"):
            problem += f": {str(waiting['message'])[:300]}"
        return problem
    return None


def creation_times(pods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [str(p["metadata"].get("creationTimestamp") or "") for p in pods.values()]


def connection(
    rt: KubernetesRuntime,
    spec: ResolvedSpec,
    engine: Engine,
    manifests: list[dict[str, Any]],
    pods: Mapping[str, Mapping[str, Any]],
    password: str | None,
    cluster_domain: str,
) -> Connection:
    return rt.connection(spec, engine, manifests, pods, password, cluster_domain)


def live_connection(
    rt: KubernetesRuntime, spec: ResolvedSpec, engine: Engine, config: OperatorConfig
) -> tuple[Connection, dict[str, dict[str, Any]]]:
    """A connection to the members as their pods are now, and those pods by name."""
    pods = pods_by_name(rt, spec)
    password = rt.secret_value(spec.namespace, credentials_secret_name(spec), "password")
    manifests = engine.render(spec, cluster_domain=config.cluster_domain)
    return connection(rt, spec, engine, manifests, pods, password, config.cluster_domain), pods


def label_roles(
    rt: KubernetesRuntime, spec: ResolvedSpec, observation: Observation, pods: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Patch ``moorage.io/role`` where it differs from what the engine observed. Returns the changes."""
    changed = []
    for member in observation.members:
        pod = pods.get(member.name)
        if pod is None:
            continue
        current = (pod["metadata"].get("labels") or {}).get(ROLE_LABEL)
        if current != member.role and rt.label_pod(spec.namespace, member.name, {ROLE_LABEL: member.role}):
            changed.append(f"{member.name}: {current or '-'} -> {member.role}")
    return changed


def observe(
    rt: KubernetesRuntime,
    spec: ResolvedSpec,
    engine: Engine,
    conn: Connection,
    pods: Mapping[str, Mapping[str, Any]],
) -> tuple[Observation, list[str]]:
    observation = engine.observe(spec, conn)
    return observation, record(rt, spec, observation, pods)


def record(
    rt: KubernetesRuntime, spec: ResolvedSpec, observation: Observation, pods: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """What an observation changes outside the status: role labels (returned) and the metrics."""
    relabelled = label_roles(rt, spec, observation, pods)
    metrics.record_health(
        spec.namespace,
        spec.name,
        spec.engine,
        ready=observation.ready,
        healthy_members=sum(1 for m in observation.members if m.healthy),
    )
    archiver = observation.details.get(WAL_ARCHIVING)
    if isinstance(archiver, dict):
        metrics.record_archiving(spec.namespace, spec.name, archiver)
    return relabelled


def tick(body: kopf.Body, patch: MutableMapping[str, Any], config: OperatorConfig) -> None:
    """The timer: observe a bootstrapped deployment, relabel roles, refresh the status. Before the
    first bootstrap, and for an invalid spec, the create/update handler owns the status."""
    from operators.kube import context
    from operators.reconcile import operation
    from operators.reconcile import status as st

    status = st.load(body)
    if not st.is_provisioned(status) or body["metadata"].get("deletionTimestamp"):
        return
    held_by = restore_hold(body["metadata"])
    if held_by is not None:
        # The members are down or recovering on purpose: no Degraded, and above all no heal (it
        # would promote a member before it reached the restore's target).
        if st.held_by_restore(status, held_by):
            events.normal(body, reason="RestoreInProgress", message=f"restore {held_by} holds the members")
            st.write(patch, status)
        return
    rt = context.runtime()
    try:
        decoded = context.decode(body, rt)
    except SpecError:
        return
    spec, engine = decoded.spec, decoded.engine
    conn, pods = live_connection(rt, spec, engine, config)
    before = status.to_wire()
    st.restore_released(status)  # after `before`: a change to write even when nothing else changed
    st.restarted_since_pending(status, creation_times(pods))
    in_flight = _change_in_flight(body)
    if not in_flight:
        operation.request_rollout(body, patch, status)  # e.g. after a request of the user's finished
    if in_flight:
        # The create/update handler is mid-way through a change (a scale moving slots, a rollout)
        # and owns phase and members until it records the spec as applied: a timer writing Ready
        # from the half-changed shape would announce a scale-out before any slot moved. Roles are
        # still relabelled, so the Services follow a failover that happens meanwhile.
        try:
            _observation, relabelled = observe(rt, spec, engine, conn, pods)
        except Exception as exc:
            log.debug("observing %s/%s during a change failed: %s", spec.namespace, spec.name, exc)
            return
        if relabelled:
            events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))
        return
    try:
        observed_at = now_precise()
        observation, relabelled = observe(rt, spec, engine, conn, pods)
        if not observation.ready and _all_answer(observation) and _all_pods_ready(engine, spec, pods):
            # Every member runs and answers yet the deployment is not healthy (a Redis cluster whose
            # members all came back on new IPs, a PostgreSQL whose primary restarted fenced as a
            # standby): run the same heal as the create/update handler, then look again. A member
            # that does not answer cannot be healed from here; the status says so first.
            _record(rt, body, spec, engine, status, observation, observed_at)
            healed = heal(body, spec, engine, conn)
            if healed:
                observed_at = now_precise()
                observation, more = observe(rt, spec, engine, conn, pods)
                relabelled += more
            rejoin(rt, body, spec, observation, pods)
    except Exception as exc:  # a member unreachable mid-observation: Degraded, not a crash
        message = f"observing the members failed: {type(exc).__name__}: {exc}"
        if st.observe_failed(status, message):
            events.warning(body, reason="ObserveFailed", message=message)
    else:
        if relabelled:
            events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))
        _record(rt, body, spec, engine, status, observation, observed_at)
    if status.to_wire() != before:
        st.write(patch, status)


def _record(
    rt: KubernetesRuntime,
    body: kopf.Body,
    spec: ResolvedSpec,
    engine: Engine,
    status: MiddlewareStatus,
    observation: Observation,
    observed_at: str,
) -> None:
    """Put the observation into the status; an Event when the phase or reason changed, and when
    WAL archiving started failing or recovered (audited in the repository too)."""
    from operators.reconcile import status as st

    was_failing = archiving.failing(status)
    if st.observed(
        status, observation, observed_at, exporters.pod_addresses(spec, engine, observation.members)
    ):
        post = events.normal if observation.ready else events.warning
        post(body, reason=observation.reason, message=observation.message or f"phase {status.phase}")
    archiving.report_transition(rt, body, spec, was_failing, status)


def _change_in_flight(body: kopf.Body) -> bool:
    from operators.reconcile import applied

    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(applied.ANNOTATION)
    if not raw:
        return False  # provisioned before the record existed: nothing to compare with
    try:
        recorded = json.loads(raw)
    except ValueError:
        return False
    return bool(recorded != dict(body.get("spec") or {}))


def _all_answer(observation: Observation) -> bool:
    return bool(observation.members) and all(m.role != "unknown" for m in observation.members)


def _all_pods_ready(engine: Engine, spec: ResolvedSpec, pods: Mapping[str, Mapping[str, Any]]) -> bool:
    from middleware.runtime.kubernetes import member_up

    return all(m.name in pods and member_up(engine, pods[m.name]) for m in engine.members(spec))


def rejoin(
    rt: KubernetesRuntime,
    body: kopf.Body,
    spec: ResolvedSpec,
    observation: Observation,
    pods: Mapping[str, Mapping[str, Any]],
) -> None:
    """Evict the members the engine says follow the others only after a restart (an Event each);
    the observation's message already says why, and the next tick whether they came back."""
    for name in observation.restart_to_rejoin:
        refused = restart_to_rejoin(rt, spec, pods, name)
        if refused is None:
            events.warning(
                body, reason="Rejoining", message=f"{name} restarted to rejoin: {observation.message}"
            )
        else:
            log.info("%s/%s: %s to rejoin: not now, %s", spec.namespace, spec.name, name, refused)


def restart_to_rejoin(
    rt: KubernetesRuntime, spec: ResolvedSpec, pods: Mapping[str, Mapping[str, Any]], name: str
) -> str | None:
    """Evict a member's pod so that its init container prepares it again (PostgreSQL: pg_rewind
    onto the current primary); the reason when not now. Not within REJOIN_GRACE of its container's
    last start: a member that has just come back may still be on its way, and a loop of evictions
    would never let it arrive."""
    pod = pods.get(name)
    if pod is None:
        return "it has no pod yet"
    started = container_started_at(pod)
    if started is not None:
        age = (datetime.now(UTC) - started).total_seconds()
        if age < REJOIN_GRACE:
            return f"its container started {age:.0f}s ago (evicted after {REJOIN_GRACE:.0f}s)"
    if not rt.evict_pod(spec.namespace, name):
        return f"the PodDisruptionBudget does not allow evicting {name} now"
    return None


def container_started_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the latest of the pod's containers last started running."""
    times = [
        ((status.get("state") or {}).get("running") or {}).get("startedAt")
        for status in (pod.get("status") or {}).get("containerStatuses") or []
    ]
    parsed = [datetime.fromisoformat(str(t).replace("Z", "+00:00")) for t in times if t]
    return max(parsed) if parsed else None


def heal(body: kopf.Body, spec: ResolvedSpec, engine: Engine, conn: Connection) -> bool:
    """The engine's bootstrap (idempotent: it forms, heals and promotes only what is missing).
    Returns whether it changed anything; its failure is the caller's "observing failed"."""
    report = engine.bootstrap(spec, conn)
    if report.changed:
        events.normal(body, reason="Healed", message="; ".join(report.actions))
    return report.changed
