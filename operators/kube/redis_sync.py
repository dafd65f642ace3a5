"""The two sides of a ``RedisSync``, resolved to addresses and passwords: a Middleware here (its pods'
DNS names), a Middleware in another cluster (through the kubeconfig in a Secret here; its pods' IPs),
or addresses given as they are. Shared by the operator (``operators.reconcile.sync``) and by
``moorage sync cutover --runtime kubernetes``, which must talk to the same servers.

Every problem names the side's field (``spec.source.middleware``); one that fixing something other
than the spec cures (a Secret, RBAC or the network over there) is ``NotReady``, retried."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from middleware.catalog import Catalog, merge_catalogs
from middleware.endpoints import Endpoint
from middleware.engines.redis.client import DATA_COMPONENT, SENTINEL_COMPONENT, sentinel_master_name
from middleware.errors import NotReady, SpecError
from middleware.kube.builders import credentials_secret_name
from middleware.models.common import SecretKeyReference
from middleware.models.sync import RedisEndpointKind, RedisSyncSide, RedisSyncSpec, SyncDirection
from middleware.runtime.kubernetes import KubeconfigError, KubernetesApiError, KubernetesRuntime
from operators.kube import context
from operators.kube.context import pods_by_name
from operators.settings import GROUP, VERSION, OperatorConfig
from sync.observe import observe_topology
from sync.plan import RedisTopology, ShakeWorkload, plan_direction, renamed

log = logging.getLogger(__name__)

API = f"{GROUP}/{VERSION}"
READY = "Ready"


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
