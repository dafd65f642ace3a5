"""``RedisSync`` under the operator: plan from live topologies, apply the workloads, supervise them.

Reconcile (create, update, resume), one pass that never waits:
resolve both sides → observe them live → plan for ``spec.direction`` → delete the workloads the
direction does not have, and wait until their pods are gone (a forward and a reverse workload running
together would copy each other's writes back and forth) → render and apply Secret + Deployment per
workload, owned by the RedisSync → status.

Supervision (the timer): per workload, a ``Sample`` of redis-shake's status port, the pod's restarts
and the source shard's master, offset and slots observed now; ``sync.supervisor.decide`` turns the
recent samples into an action. RESTART rolls the Deployment through a pod-template annotation (a full
resync; pods are never deleted by the operator), REPLAN plans again from the live topology and applies.
The reason goes into the workload's status and an Event; lag into the status and the metrics.

The data movement itself is redis-shake's, in the pods; this module only decides what runs where.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from middleware.catalog import Catalog, merge_catalogs
from middleware.endpoints import Endpoint
from middleware.engines.redis.client import DATA_COMPONENT, SENTINEL_COMPONENT, sentinel_master_name
from middleware.errors import NotReady, SpecError
from middleware.kube.builders import COMPONENT_LABEL, INSTANCE_LABEL, NAME_LABEL, credentials_secret_name
from middleware.models.common import SecretKeyReference
from middleware.models.sync import (
    RedisEndpointKind,
    RedisSyncSide,
    RedisSyncSpec,
    RedisSyncStatus,
    ShakeVersion,
    SyncDirection,
    SyncWorkloadStatus,
)
from middleware.runtime.kubernetes import KubeconfigError, KubernetesApiError, KubernetesRuntime
from operators import metrics
from operators.backup_handlers import job_settings
from operators.reconcile import context, events
from operators.reconcile.observe import pods_by_name
from operators.settings import GROUP, VERSION, OperatorConfig
from sync import heartbeat, shake_config
from sync.observe import (
    fetch_status,
    master_offset,
    observe_topology,
    replication_view,
    saving,
    shake_consumer,
    shard_now,
)
from sync.plan import RedisTopology, ShakeWorkload, plan_direction, renamed
from sync.supervisor import BEFORE_RDB_PHASES, Action, Decision, Policy, Sample, State, decide
from sync.verify import RedisURL

log = logging.getLogger(__name__)

API = f"{GROUP}/{VERSION}"
READY = "Ready"
RUNNING, STOPPED, FAILED, PENDING = "Running", "Stopped", "Failed", "Pending"
RESTARTED_AT = "moorage.io/restarted-at"
RESTART_REASON = "moorage.io/restart-reason"
STATUS_TIMEOUT = 2.0


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


SUPERVISE_INTERVAL = _float_env("MOORAGE_SYNC_SUPERVISE_SECONDS", 10.0)
POLICY = Policy()


# -- sides ----------------------------------------------------------------------------------------


class SideNotReady(NotReady):
    """A side cannot be used yet, with the condition reason that says which kind of problem it is
    (what an SRE must fix differs: a Secret here, RBAC or the network over there)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


KUBECONFIG_UNUSABLE = "KubeconfigUnusable"  # the Secret here: missing, no key, unusable document
OTHER_CLUSTER_REFUSED = "OtherClusterRefused"  # 401/403/other API errors over there
OTHER_CLUSTER_UNREACHABLE = "OtherClusterUnreachable"  # the network to the other API
WAITING_FOR_SIDES = "WaitingForSides"


@dataclass(frozen=True)
class SideAccess:
    """Where one side answers and with which password (never logged, never in a message)."""

    kind: RedisEndpointKind
    data_nodes: tuple[Endpoint, ...]
    sentinels: tuple[Endpoint, ...] = ()
    master_name: str | None = None
    password: str | None = field(default=None, repr=False)
    # Another cluster's side: its servers report members by pod DNS names that resolve only there
    # (cluster-announce-hostname, sentinel announce-hostnames); these pod-name prefixes
    # (``<pod>.<headless>.<ns>.svc.``, whatever that cluster's domain) map them to pod IPs.
    pod_ips: tuple[tuple[str, str], ...] = ()

    def observe(self) -> RedisTopology:
        topology = observe_topology(
            self.kind,
            data_nodes=self.data_nodes,
            sentinels=self.sentinels,
            master_name=self.master_name,
            password=self.password,
        )
        return renamed(topology, self.dialable) if self.pod_ips else topology

    def dialable(self, endpoint: Endpoint) -> Endpoint:
        """Where a reported member answers from here (its pod IP for another cluster's pod name)."""
        for prefix, ip in self.pod_ips:
            if endpoint.host.startswith(prefix):
                return Endpoint(ip, endpoint.port)
        return endpoint


def _kind_of(topology: str, where: str) -> RedisEndpointKind:
    try:
        return RedisEndpointKind(topology)
    except ValueError:
        raise SpecError(where, f"a Redis {topology} cannot be synced") from None


def resolve_side(
    rt: KubernetesRuntime,
    namespace: str,
    side: RedisSyncSide,
    where: str,
    config: OperatorConfig,
    *,
    require_ready: bool = True,
) -> SideAccess:
    """``where`` is the side's field path (``spec.source``), used in every error about it.
    ``require_ready``: a first plan waits for a Ready Middleware; supervision does not, since a
    failover (the very thing it must notice) makes the Middleware Degraded for a while.
    A ``kubeconfig`` side's Middleware, members and credentials Secret are read in the other cluster
    (``password``, like the kubeconfig Secret itself, is always read here, in the RedisSync's
    namespace)."""
    remote: KubernetesRuntime | None = None
    if side.kubeconfig is not None:
        if side.middleware is None:
            raise SpecError(
                f"{where}.kubeconfig",
                "only a middleware side is looked up in another cluster; addresses are dialled as "
                "given, so remove kubeconfig",
            )
        remote = _remote_runtime(rt, namespace, side.kubeconfig, f"{where}.kubeconfig")
    password: str | None = None
    if side.password is not None:
        password = rt.secret_value(namespace, side.password.name, side.password.key)
        if password is None:
            raise NotReady(f"{where}.password: Secret {side.password.name} has no key {side.password.key!r}")
    if remote is not None:
        try:
            return _middleware_side(
                remote, namespace, side, where, config, password, require_ready, remote=True
            )
        except KubernetesApiError as exc:
            raise SideNotReady(OTHER_CLUSTER_REFUSED, _refused(where, exc)) from None
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise SideNotReady(
                OTHER_CLUSTER_UNREACHABLE,
                f"{where}.kubeconfig: the other cluster's API is unreachable: {_reason(exc)}",
            ) from None
    if side.middleware is not None:
        return _middleware_side(rt, namespace, side, where, config, password, require_ready)
    assert side.addresses is not None and side.kind is not None  # the model's validator ensures both
    kind = RedisEndpointKind(side.kind)
    try:
        endpoints = tuple(Endpoint.parse(a) for a in side.addresses)
    except ValueError as exc:
        raise SpecError(f"{where}.addresses", str(exc)) from None
    if not endpoints:
        raise SpecError(f"{where}.addresses", "at least one host:port is needed")
    if kind is RedisEndpointKind.SENTINEL:
        if not side.sentinel_master_name:
            raise SpecError(f"{where}.sentinelMasterName", "required with kind sentinel")
        return SideAccess(kind, (), endpoints, side.sentinel_master_name, password)
    if kind is RedisEndpointKind.STANDALONE and len(endpoints) != 1:
        raise SpecError(f"{where}.addresses", "a standalone side has exactly one address")
    return SideAccess(kind, endpoints, password=password)


def _middleware_side(
    rt: KubernetesRuntime,
    namespace: str,
    side: RedisSyncSide,
    where: str,
    config: OperatorConfig,
    password: str | None,
    require_ready: bool,
    *,
    remote: bool = False,
) -> SideAccess:
    """``remote``: ``rt`` is another cluster's API (``where.kubeconfig``); members are dialled at
    their pod IPs there, since its pod DNS names resolve only inside that cluster."""
    assert side.middleware is not None
    ref_namespace = side.middleware.namespace or namespace
    name = side.middleware.name
    found = rt.get(API, "Middleware", ref_namespace, name)
    elsewhere = f" in the cluster of {where}.kubeconfig" if remote else ""
    if found is None:
        raise NotReady(f"{where}.middleware: Middleware {ref_namespace}/{name} not found{elsewhere}")
    phase = (found.get("status") or {}).get("phase")
    if require_ready and phase != READY:
        raise NotReady(
            f"{where}.middleware: Middleware {ref_namespace}/{name}{elsewhere} is {phase or 'new'}, not Ready"
        )
    try:
        decoded = context.decode(found, rt, _remote_catalog(rt) if remote else None)
    except SpecError as exc:
        raise NotReady(f"{where}.middleware: Middleware {ref_namespace}/{name} is invalid: {exc}") from None
    spec, engine = decoded.spec, decoded.engine
    if spec.engine != "redis":
        raise SpecError(f"{where}.middleware", f"Middleware {name} is {spec.engine}, not redis")
    kind = _kind_of(str(spec.topology), f"{where}.middleware")
    if password is None:
        password = rt.secret_value(spec.namespace, credentials_secret_name(spec), "password")
    pods = pods_by_name(rt, spec)
    manifests = engine.render(spec, cluster_domain=config.cluster_domain)
    if remote:
        conn = rt.pod_ip_connection(spec, engine, manifests, pods, password)
        if not conn.of(DATA_COMPONENT):
            raise NotReady(
                f"{where}.middleware: no data pod of Middleware {ref_namespace}/{name}{elsewhere} has a "
                "pod IP yet"
            )
    else:
        conn = rt.connection(spec, engine, manifests, pods, password, config.cluster_domain)
    data = tuple(m.endpoint for m in conn.of(DATA_COMPONENT))
    pod_ips = _pod_ip_prefixes(spec.namespace, manifests, pods) if remote else ()
    if kind is RedisEndpointKind.SENTINEL:
        sentinels = tuple(m.endpoint for m in conn.of(SENTINEL_COMPONENT))
        return SideAccess(kind, data, sentinels, sentinel_master_name(spec), password, pod_ips)
    return SideAccess(kind, data, password=password, pod_ips=pod_ips)


def _pod_ip_prefixes(
    namespace: str, manifests: Sequence[Mapping[str, Any]], pods: Mapping[str, Mapping[str, Any]]
) -> tuple[tuple[str, str], ...]:
    """``(<pod>.<headless>.<namespace>.svc., pod IP)`` for every pod of the side's StatefulSets that
    has an IP: the names its servers announce, without the other cluster's domain (unknown here)."""
    prefixes = []
    for manifest in manifests:
        if manifest.get("kind") != "StatefulSet":
            continue
        service, workload = manifest["spec"]["serviceName"], manifest["metadata"]["name"]
        for pod_name, pod in pods.items():
            ip = (pod.get("status") or {}).get("podIP")
            if ip and pod_name.rpartition("-")[0] == workload:
                prefixes.append((f"{pod_name}.{service}.{namespace}.svc.", str(ip)))
    return tuple(sorted(prefixes))


def _remote_runtime(
    rt: KubernetesRuntime, namespace: str, ref: SecretKeyReference, where: str
) -> KubernetesRuntime:
    """The other cluster's API, from the kubeconfig in Secret ``ref`` of the RedisSync's namespace.
    Every problem is NotReady (retried): fixing the Secret, or RBAC over there, changes no spec here.
    Messages name the Secret and key, never anything from the document."""
    secret = rt.get("v1", "Secret", namespace, ref.name)
    if secret is None:
        raise SideNotReady(KUBECONFIG_UNUSABLE, f"{where}.name: Secret {namespace}/{ref.name} not found")
    data = secret.get("data") or {}
    if ref.key not in data:
        raise SideNotReady(KUBECONFIG_UNUSABLE, f"{where}.key: Secret {ref.name} has no key {ref.key!r}")
    what = f"{where}: the kubeconfig in Secret {ref.name} key {ref.key!r}"
    try:
        text = base64.b64decode(data[ref.key]).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise SideNotReady(KUBECONFIG_UNUSABLE, f"{what} is not UTF-8 text") from None
    version = str(secret["metadata"].get("resourceVersion") or "")
    try:
        return context.remote_runtime((namespace, ref.name, ref.key), version, text)
    except KubeconfigError as exc:
        raise SideNotReady(KUBECONFIG_UNUSABLE, f"{what} cannot be used: {exc}") from None


def _remote_catalog(rt: KubernetesRuntime) -> Catalog:
    """The other cluster's catalog (its MiddlewareCatalogs layered on the default), which its own
    operator resolved the Middleware with; the built-in catalog when this identity may not list
    MiddlewareCatalogs there (a Role limited to one namespace cannot: they are cluster-scoped)."""
    try:
        return context.catalog(rt)
    except KubernetesApiError as exc:
        if exc.status != 403:
            raise
        log.info("the other cluster's MiddlewareCatalogs are forbidden to this identity: built-in catalog")
        return merge_catalogs([])


_COLLECTION_VERBS = {"GET": "list", "POST": "create"}
_OBJECT_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _request_of(verb: str, path: str) -> str:
    """``get middlewares.moorage.io x in namespace ns`` from an API request, for messages."""
    parts = [p for p in path.split("/") if p]
    group = parts[1] if parts[:1] == ["apis"] and len(parts) > 1 else ""
    rest = parts[3:] if parts[:1] == ["apis"] else parts[2:]
    where = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        where, rest = f" in namespace {rest[1]}", rest[2:]
    if not rest:
        return f"{verb} {path}"
    resource = f"{rest[0]}.{group}" if group else rest[0]
    if len(rest) > 1:
        return f"{_OBJECT_VERBS.get(verb, verb.lower())} {resource} {rest[1]}{where}"
    return f"{_COLLECTION_VERBS.get(verb, verb.lower())} {resource}{where}"


def _refused(where: str, exc: KubernetesApiError) -> str:
    request = _request_of(exc.verb, exc.path)
    if exc.status == 401:
        return (
            f"{where}.kubeconfig: the other cluster rejected the kubeconfig's credentials "
            f"(401 Unauthorized) on {request}"
        )
    field = f"{where}.kubeconfig"
    if exc.status == 403:
        return f"{field}: the other cluster forbids {request} (403 Forbidden): {exc.server_message}"
    return f"{field}: the other cluster's API failed {request} ({exc.status}): {exc.server_message}"


def _reason(exc: BaseException) -> str:
    # urllib3 wraps the socket error; its own text repeats the pool and URL around it.
    inner = getattr(exc, "reason", None)
    return str(inner if isinstance(inner, BaseException) else exc)[:300]


@dataclass(frozen=True)
class Resolved:
    spec: RedisSyncSpec
    source: SideAccess
    target: SideAccess

    @property
    def direction(self) -> SyncDirection:
        # The wire models keep enum values as plain strings.
        return SyncDirection(self.spec.direction)

    def reader(self) -> SideAccess:
        """The side the workloads read: the target when reversed (DCE recovery)."""
        return self.target if self.direction is SyncDirection.REVERSE else self.source

    def writer(self) -> SideAccess:
        return self.source if self.direction is SyncDirection.REVERSE else self.target


def resolve(
    rt: KubernetesRuntime, body: Mapping[str, Any], config: OperatorConfig, *, require_ready: bool = True
) -> Resolved:
    try:
        spec = RedisSyncSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first.get("loc", ()))
        raise SpecError(f"spec.{path}" if path else "spec", str(first.get("msg", exc))) from None
    namespace = body["metadata"]["namespace"]
    source = resolve_side(rt, namespace, spec.source, "spec.source", config, require_ready=require_ready)
    target = resolve_side(rt, namespace, spec.target, "spec.target", config, require_ready=require_ready)
    return Resolved(spec, source, target)


def desired(name: str, resolved: Resolved) -> tuple[list[ShakeWorkload], RedisTopology | None]:
    """The workloads ``spec.direction`` wants now, and the observed source (None when Stopped)."""
    direction = resolved.direction
    if direction is SyncDirection.STOPPED:
        return [], None
    source, target = resolved.source.observe(), resolved.target.observe()
    workloads = plan_direction(name, source, target, resolved.spec.filter, direction)
    return workloads, source if direction is SyncDirection.FORWARD else target


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
        share_image=job_settings().image,
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
    source = _observed(resolved.reader())
    target = _observed(resolved.writer())
    pods = rt.pods(namespace, _selector(name))
    entries = {e.name: e for e in _entries(status, applied.workloads)}
    replans: list[tuple[ShakeWorkload, Decision]] = []
    for workload in applied.workloads:
        entry = entries[workload.name]
        pod = _pod_of(pods, workload.name)
        history = _history(namespace, name, workload.name)
        history.append(
            _sample(
                workload, pod, source, target, resolved.reader().password, str(resolved.spec.shake_version)
            )
        )
        decision = decide(workload, list(history), POLICY)
        if decision.action is Action.RESTART and not _running(pod):
            # No pod running yet (scheduling, image pull): silence is expected, a restart cannot help.
            phase = ((pod or {}).get("status") or {}).get("phase") or "missing"
            decision = Decision(State.UNKNOWN, Action.NONE, f"pod not running (phase {phase})")
        if decision.action is Action.NONE and not workload.reads_replica and source is not None:
            # Planned onto the master because no replica was healthy then (right after a failover,
            # the replicas are still re-attaching): move off it as soon as one is.
            shard = shard_now(source, workload.source_master, workload.reader, workload.source_slots)
            if shard is not None and any(r.healthy for r in shard.replicas):
                decision = replace(
                    decision,
                    action=Action.REPLAN,
                    reason=f"a replica of {shard.master} is healthy again: reading it instead of the master",
                )
        entry.state = str(decision.state) if _running(pod) or decision.action is Action.REPLAN else PENDING
        entry.lag_bytes, entry.write_lag_bytes = decision.lag_bytes, decision.write_lag_bytes
        beats = (
            _heartbeat(workload, history[-1].source_master, target, resolved)
            if _running(pod) and source is not None
            else None
        )
        if beats is not None:
            entry.lag_seconds, entry.lag_seconds_from = round(beats, 3), "heartbeat"
        else:
            entry.lag_seconds = decision.lag_seconds
            entry.lag_seconds_from = "rate" if decision.lag_seconds is not None else None
        metrics.record_sync_lag(
            namespace,
            name,
            workload.name,
            decision.lag_bytes,
            entry.lag_seconds,
            decision.write_lag_bytes,
        )
        if decision.action is Action.NONE and _restarts(pod) > 0 and _clears_share(pod):
            # redis-shake restarted inside its pod (a crash, an OOM kill): that restart was a full
            # sync over the keys its previous run wrote, and the pod's clear-share init container
            # only runs for a new pod. A new pod empties the share and syncs again.
            decision = Decision(
                decision.state,
                Action.RESTART,
                f"redis-shake restarted in its pod ({_restarts(pod)} restarts): a full sync over a share "
                "not emptied first",
            )
        if decision.action is Action.RESTART and roll(rt, namespace, workload.name, decision.reason):
            _restarted(body, namespace, name, entry, "Restarted", decision.reason)
        elif decision.action is Action.REPLAN:
            replans.append((workload, decision))
    if replans:
        _replan(rt, body, resolved, namespace, name, generation, entries, replans)
    status.workloads = [entries[w.name] for w in _applied[(namespace, name)].workloads if w.name in entries]
    before = _load_status(body).to_wire()
    if status.to_wire() != before:
        patch["status"] = status.to_wire()


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
) -> None:
    """Plan again from the topology observed now and apply: a changed reader or writer changes the
    plan checksum on the pod template, so exactly the affected Deployments roll."""
    try:
        workloads, _ = desired(name, resolved)
        _apply(rt, body, resolved, workloads)
    except (NotReady, SpecError, KubernetesApiError) as exc:
        # Still converging (a failover in progress): the next tick decides again.
        log.info("RedisSync %s/%s: re-plan deferred: %s", namespace, name, exc)
        return
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
