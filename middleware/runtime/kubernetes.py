"""The one module that talks to the Kubernetes API (used by the operator).

Everything goes through a small plain-dict API: server-side apply with one field manager, reads and
lists by label selector, merge patches, deletes with a propagation policy. Callers never see the
``kubernetes`` client's generated models, so the reconcile code works on the same dicts the engines
render. Posting Events is not done here: the operator does it through kopf.

``resolve_address`` is a test seam: it maps a member's pod DNS name (what the engines would dial in a
cluster) to where the member really answers. The default keeps the DNS name; tests that back pods
with local processes map it to 127.0.0.1:<port>.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.base import Connection, Engine, Member
from middleware.errors import MoorageError
from middleware.spec import ResolvedSpec

FIELD_MANAGER = "moorage"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

Manifest = dict[str, Any]
AddressResolver = Callable[[str, str, int], Endpoint]
"""(pod name, pod DNS host, port) -> where to dial the member."""


def pod_dns_address(_pod: str, host: str, port: int) -> Endpoint:
    return Endpoint(host, port)


@dataclass(frozen=True)
class Kind:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    namespaced: bool = True


# Only the kinds Moorage renders or reads; an unknown kind is a programming error, said clearly.
KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "ConfigMap"): Kind("/api/v1", "configmaps"),
    ("v1", "Secret"): Kind("/api/v1", "secrets"),
    ("v1", "Service"): Kind("/api/v1", "services"),
    ("v1", "Pod"): Kind("/api/v1", "pods"),
    ("v1", "PersistentVolumeClaim"): Kind("/api/v1", "persistentvolumeclaims"),
    ("apps/v1", "StatefulSet"): Kind("/apis/apps/v1", "statefulsets"),
    # RedisSync workloads: one redis-shake Deployment per source shard.
    ("apps/v1", "Deployment"): Kind("/apis/apps/v1", "deployments"),
    ("moorage.io/v1alpha1", "RedisSync"): Kind("/apis/moorage.io/v1alpha1", "redissyncs"),
    ("policy/v1", "PodDisruptionBudget"): Kind("/apis/policy/v1", "poddisruptionbudgets"),
    ("moorage.io/v1alpha1", "Middleware"): Kind("/apis/moorage.io/v1alpha1", "middlewares"),
    ("moorage.io/v1alpha1", "MiddlewareCatalog"): Kind(
        "/apis/moorage.io/v1alpha1", "middlewarecatalogs", namespaced=False
    ),
    ("moorage.io/v1alpha1", "BackupRepository"): Kind("/apis/moorage.io/v1alpha1", "backuprepositories"),
    ("moorage.io/v1alpha1", "MiddlewareBackup"): Kind("/apis/moorage.io/v1alpha1", "middlewarebackups"),
    ("moorage.io/v1alpha1", "MiddlewareRestore"): Kind("/apis/moorage.io/v1alpha1", "middlewarerestores"),
    # Backups and restores run in Jobs, under a ServiceAccount bound per namespace.
    ("batch/v1", "Job"): Kind("/apis/batch/v1", "jobs"),
    ("v1", "ServiceAccount"): Kind("/api/v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): Kind(
        "/apis/rbac.authorization.k8s.io/v1", "rolebindings"
    ),
    # The Prometheus Operator's, rendered only where its CRD is installed (``serves``).
    ("monitoring.coreos.com/v1", "PodMonitor"): Kind("/apis/monitoring.coreos.com/v1", "podmonitors"),
}
# How long an answer of ``serves`` is kept: a CRD installed later is seen within that.
DISCOVERY_TTL_SECONDS = 10.0


class KubernetesApiError(MoorageError):
    """The API server refused a request; ``status`` is the HTTP status, the message is the server's."""

    def __init__(self, status: int, verb: str, what: str, message: str) -> None:
        self.status = status
        self.verb, self.path = verb, what
        self.server_message = message
        super().__init__(f"{verb} {what} failed ({status}): {message}")


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference to ``owner`` (a full object), so garbage collection follows it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def pod_started(pod: Mapping[str, Any]) -> bool:
    """Every container of the pod has started (init containers done, startup probes passed), Ready
    or not: enough for an engine whose readiness waits for its own bootstrap."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("started") and "running" in (s.get("state") or {}) for s in statuses)


def member_up(engine: Engine, pod: Mapping[str, Any]) -> bool:
    """Whether the operator may talk to this member: Ready, or merely started for engines whose
    readiness follows their bootstrap (``Engine.ready_before_bootstrap``)."""
    return pod_ready(pod) if engine.ready_before_bootstrap else pod_started(pod)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# The exec subresource's status channel (kubernetes.stream.ws_client.ERROR_CHANNEL).
EXEC_ERROR_CHANNEL = 3


def exec_outcome(status_text: str) -> tuple[int, str | None]:
    """The exit code an exec's status channel reports, and why when the command never ran.

    The kubernetes client's ``returncode`` reads the first cause's message as the exit code, which
    holds only for ``NonZeroExitCode``: an exec into a container that is stopping fails with
    ``InternalError`` and a sentence there (a ValueError out of the client). Such an exec is a
    failed command (-1) whose message says why, for the caller to treat like any failure."""
    try:
        status = json.loads(status_text) if status_text else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        return -1, f"exec gave no status: {status_text[:300]!r}"
    if status.get("status") == "Success":
        return 0, None
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).lstrip("-").isdigit():
            return int(cause["message"]), None
    return -1, f"exec failed: {str(status.get('message') or status)[:300]}"


class KubernetesRuntime:
    def __init__(
        self,
        api_client: Any,
        *,
        field_manager: str = FIELD_MANAGER,
        resolve_address: AddressResolver = pod_dns_address,
    ) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self.resolve_address = resolve_address
        # Set for another cluster's API: without it a blackholed server would hang a reconcile.
        self.request_timeout: float | None = None
        # In-memory files (memfd) holding a kubeconfig's client certificate and key; closed with us.
        self.owned_fds: list[int] = []
        self._served: dict[tuple[str, str], tuple[float, bool]] = {}

    @classmethod
    def from_environment(cls, *, connections: int | None = None, **kwargs: Any) -> KubernetesRuntime:
        """In a pod: the service account; elsewhere: $KUBECONFIG (or ~/.kube/config). ``connections``:
        how many API connections to keep open (one per thread that calls at once; the client's
        default is 5 per CPU, and a thread finding none free opens and drops a TLS connection)."""
        from kubernetes import client, config

        conf = client.Configuration()
        if connections is not None:
            conf.connection_pool_maxsize = connections
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=conf)
        else:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=conf)
        return cls(client.ApiClient(configuration=conf), **kwargs)

    @classmethod
    def from_kubeconfig(cls, text: str, **kwargs: Any) -> KubernetesRuntime:
        """Another cluster's API, from a kubeconfig document held in memory (see remote_api_client).
        Raises KubeconfigError naming what is wrong with it."""
        api, fds = remote_api_client(text)
        runtime = cls(api, **kwargs)
        runtime.owned_fds = fds
        runtime.request_timeout = REMOTE_REQUEST_TIMEOUT
        return runtime

    def close(self) -> None:
        self.api.close()
        for fd in self.owned_fds:
            os.close(fd)
        self.owned_fds.clear()

    # -- raw requests -------------------------------------------------------------------------
    def _request(
        self,
        verb: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        method, url, headers, payload, post = self.api.param_serialize(
            verb,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method,
            url,
            header_params=headers,
            body=payload,
            post_params=post,
            _request_timeout=self.request_timeout,
        )
        data = response.read()
        if response.status == 404 and missing_ok:
            return None
        if not 200 <= response.status < 300:
            try:
                message = str(json.loads(data).get("message", ""))
            except (ValueError, AttributeError):
                message = (data or b"").decode("utf-8", "replace")[:500]
            raise KubernetesApiError(response.status, verb, path.split("?")[0], message)
        return json.loads(data) if data else {}

    @staticmethod
    def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        try:
            info = KINDS[(api_version, kind)]
        except KeyError:
            raise MoorageError(f"the Kubernetes runtime does not know {api_version} {kind}") from None
        path = info.prefix
        if info.namespaced:
            if not namespace:
                raise MoorageError(f"{kind} {name or ''} needs a namespace")
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{info.plural}"
        if name is not None:
            path += f"/{quote(name)}"
        return path

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the API serves ``kind`` now (an optional CRD such as the Prometheus Operator's),
        from API discovery, remembered for ``DISCOVERY_TTL_SECONDS``."""
        now = time.monotonic()
        cached = self._served.get((api_version, kind))
        if cached is not None and now - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
        info = KINDS[(api_version, kind)]
        found = self._request("GET", info.prefix, missing_ok=True)
        served = any(r.get("name") == info.plural for r in (found or {}).get("resources") or [])
        self._served[(api_version, kind)] = (now, served)
        return served

    # -- generic verbs ------------------------------------------------------------------------
    def apply(self, manifest: Manifest, owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Server-side apply as the one field manager; ``force`` takes over fields another manager
        (a kubectl edit) set, since the rendered state is the desired state."""
        body = json.loads(json.dumps(manifest))
        if owner is not None:
            body.setdefault("metadata", {})["ownerReferences"] = [owner_reference(owner)]
        meta = body["metadata"]
        path = self._path(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        query = {"fieldManager": self.field_manager, "force": "true"}
        result = self._request("PATCH", path, query=query, body=body, content_type=APPLY_PATCH)
        assert result is not None
        return result

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._request("GET", self._path(api_version, kind, namespace, name), missing_ok=True)

    def list_objects(
        self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector(labels)} if labels else {}
        result = self._request("GET", self._path(api_version, kind, namespace), query=query)
        return list((result or {}).get("items") or [])

    def create(self, manifest: Manifest) -> dict[str, Any] | None:
        """Create; None when the object already exists (it is never overwritten)."""
        meta = manifest["metadata"]
        path = self._path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            return self._request("POST", path, body=manifest)
        except KubernetesApiError as exc:
            if exc.status == 409:
                return None
            raise

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """None when the object is gone. ``subresource="status"`` for a kind whose status is one."""
        path = self._path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return self._request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH, missing_ok=True)

    def json_patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """RFC 6902 operations, applied all or none: a failed ``test`` is a 422 KubernetesApiError.
        None when the object is gone."""
        path = self._path(api_version, kind, namespace, name)
        return self._request("PATCH", path, body=ops, content_type=JSON_PATCH, missing_ok=True)

    def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> bool:
        """True when a delete was issued, False when the object was already gone."""
        body = {"propagationPolicy": propagation} if propagation else None
        path = self._path(api_version, kind, namespace, name)
        return self._request("DELETE", path, body=body, missing_ok=True) is not None

    # -- what the operator needs --------------------------------------------------------------
    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return self.list_objects("v1", "Pod", namespace, labels)

    def label_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        """Merge labels into a pod; False when the pod is gone (it may be restarting)."""
        patch = {"metadata": {"labels": dict(labels)}}
        return self.merge_patch("v1", "Pod", namespace, name, patch) is not None

    def evict_pod(self, namespace: str, name: str) -> bool:
        """Evict a pod through the Eviction API, so its PodDisruptionBudget is honoured (a rolling
        restart). True when evicted or already gone; False when the budget does not allow it now."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        path = self._path("v1", "Pod", namespace, name) + "/eviction"
        try:
            self._request("POST", path, body=body, missing_ok=True)
        except KubernetesApiError as exc:
            if exc.status == 429:  # "Cannot evict pod as it would violate the pod's disruption budget"
                return False
            raise
        return True

    def exec_in_pod(
        self, namespace: str, pod: str, container: str, command: list[str], timeout: float
    ) -> tuple[int, str]:
        """Run ``command`` in a pod's container (the pods/exec subresource, over a websocket):
        its exit code and its output (stdout then stderr). Only the DBA's commands exec (a base
        backup must read the primary's data directory); the operator never does (deploy/rbac.yaml)."""
        from kubernetes import client
        from kubernetes.stream import stream

        session = stream(
            client.CoreV1Api(self.api).connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=command,
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        stdout: list[str] = []
        stderr: list[str] = []
        try:
            session.run_forever(timeout=timeout)
            stdout.append(session.read_stdout())
            stderr.append(session.read_stderr())
            if session.is_open():
                raise MoorageError(f"{' '.join(command[:2])} in {namespace}/{pod} ran over {timeout:.0f}s")
            code, failure = exec_outcome(session.read_channel(EXEC_ERROR_CHANNEL))
        finally:
            session.close()
        output = "".join(stdout) + "".join(stderr)
        return code, output if failure is None else f"{output}{failure}"

    def pod_log(
        self, namespace: str, pod: str, container: str, *, lines: int = 20, previous: bool = False
    ) -> str:
        """The last ``lines`` of a container's log (of its previous run: ``previous``); empty when
        there is none yet."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            text = client.CoreV1Api(self.api).read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=lines, previous=previous
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return ""
            raise KubernetesApiError(exc.status or 0, "GET", f"pods/{pod}/log", str(exc.reason)) from None
        return str(text)

    def claims(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return self.list_objects("v1", "PersistentVolumeClaim", namespace, labels)

    def claims_of(
        self, namespace: str, template: str, statefulset: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The PVCs a StatefulSet made from one volumeClaimTemplate: ``<template>-<sts>-<ordinal>``."""
        pattern = re.compile(rf"^{re.escape(template)}-{re.escape(statefulset)}-\d+$")
        return [c for c in self.claims(namespace, labels) if pattern.match(c["metadata"]["name"])]

    def resize_claim(self, namespace: str, name: str, size: str) -> None:
        patch = {"spec": {"resources": {"requests": {"storage": size}}}}
        self.merge_patch("v1", "PersistentVolumeClaim", namespace, name, patch)

    def orphan_delete_statefulset(self, namespace: str, name: str) -> bool:
        """Delete a StatefulSet but keep its pods (and PVCs): the way to change volumeClaimTemplates."""
        return self.delete("apps/v1", "StatefulSet", namespace, name, propagation="Orphan")

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        import base64

        secret = self.get("v1", "Secret", namespace, name)
        if secret is None or key not in (secret.get("data") or {}):
            return None
        return base64.b64decode(secret["data"][key]).decode("utf-8")

    def create_secrets(self, secrets: Iterable[Manifest]) -> list[str]:
        """Create each Secret that does not exist yet; existing ones are never touched (a new
        password over a running deployment would lock every client out). Returns those created.
        No owner reference: with deletionPolicy Retain the credentials must outlive the Middleware,
        so the operator deletes them itself under deletionPolicy Delete."""
        created = []
        for secret in secrets:
            if self.create(secret) is not None:
                created.append(secret["metadata"]["name"])
        return created

    def catalogs(self) -> list[dict[str, Any]]:
        return self.list_objects("moorage.io/v1alpha1", "MiddlewareCatalog", None)

    def client_tls(self, spec: ResolvedSpec) -> ClientTls | None:
        return None  # spec.tls is refused on Kubernetes so far (operators/kube/context.decode)

    def member_endpoint(self, pod: str, host: str, port: int) -> Endpoint:
        return self.resolve_address(pod, host, port)

    def connection(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        manifests: list[dict[str, Any]],
        pods: Mapping[str, Mapping[str, Any]],
        password: str | None,
        cluster_domain: str,
    ) -> Connection:
        """Every planned member at its per-pod DNS name (``<pod>.<headless>.<ns>.svc.<domain>``) on
        the port its StatefulSet's main container declares first; up means the pod is Ready."""
        workloads = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "StatefulSet"}
        members = []
        for plan in engine.members(spec):
            workload = workloads[plan.workload]["spec"]
            port = int(workload["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])
            host = f"{plan.name}.{workload['serviceName']}.{spec.namespace}.svc.{cluster_domain}"
            pod = pods.get(plan.name)
            up = pod is not None and member_up(engine, pod)
            members.append(Member(plan=plan, endpoint=self.member_endpoint(plan.name, host, port), up=up))
        return Connection(members=members, password=password)

    def pod_ip_connection(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        manifests: list[dict[str, Any]],
        pods: Mapping[str, Mapping[str, Any]],
        password: str | None,
    ) -> Connection:
        """Like ``connection`` for a Middleware in *another* cluster: its pods' DNS names resolve only
        there, so each member is dialled at its pod's ``status.podIP`` (routable pod networks: a flat
        or underlay network, a cluster mesh). Members whose pod has no IP yet are left out."""
        workloads = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "StatefulSet"}
        members = []
        for plan in engine.members(spec):
            workload = workloads[plan.workload]["spec"]
            port = int(workload["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])
            pod = pods.get(plan.name)
            ip = str(((pod or {}).get("status") or {}).get("podIP") or "")
            if pod is None or not ip:
                continue
            members.append(
                Member(plan=plan, endpoint=self.member_endpoint(plan.name, ip, port), up=pod_ready(pod))
            )
        return Connection(members=members, password=password)


# -- another cluster's API (a kubeconfig held in a Secret) -------------------------------------------


class KubeconfigError(MoorageError):
    """A kubeconfig that cannot be used. The message names the part (context, cluster, user, field),
    never a value from it: the document holds credentials."""


# Fields that make the client read a file or run a command *in the operator's pod*. A kubeconfig
# comes from a tenant's Secret: a file path could point the client at the operator's own
# ServiceAccount token (and send it to the tenant's server), a command would run as the operator.
_REFUSED_USER_FIELDS = {
    "exec": "would run a credential plugin command",
    "auth-provider": "would run an auth-provider plugin",
    "tokenFile": "would read a file",
    "client-certificate": "would read a file (embed it as client-certificate-data)",
    "client-key": "would read a file (embed it as client-key-data)",
}
_REFUSED_CLUSTER_FIELDS = {
    "certificate-authority": "would read a file (embed it as certificate-authority-data)",
}
REMOTE_REQUEST_TIMEOUT = 10.0
REMOTE_RETRIES = 1


def _named(items: Any, kind: str, name: str) -> Mapping[str, Any]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and item.get("name") == name and isinstance(item.get(kind), Mapping):
            found: Mapping[str, Any] = item[kind]
            return found
    raise KubeconfigError(f"{kind} {name!r} is not defined in its {kind}s list")


def _b64(value: Any, field: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{field} is not base64") from None


def parse_kubeconfig(text: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(cluster, user) of the kubeconfig's current context (or its only context)."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position: the parser's message quotes the document around the error.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise KubeconfigError(f"not valid YAML{where}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("contexts"), list):
        raise KubeconfigError("not a kubeconfig (no contexts list)")
    contexts = [c for c in document["contexts"] if isinstance(c, Mapping)]
    current = document.get("current-context")
    if not current:
        if len(contexts) != 1:
            raise KubeconfigError("no current-context and more than one context")
        current = contexts[0].get("name")
    context = _named(contexts, "context", str(current))
    cluster = _named(document.get("clusters"), "cluster", str(context.get("cluster")))
    user = _named(document.get("users"), "user", str(context.get("user")))
    for fields, part, name in (
        (_REFUSED_CLUSTER_FIELDS, "cluster", context.get("cluster")),
        (_REFUSED_USER_FIELDS, "user", context.get("user")),
    ):
        entry = cluster if part == "cluster" else user
        for field_name, why in fields.items():
            if entry.get(field_name):
                raise KubeconfigError(f"{part} {name!r} sets {field_name}: refused, it {why} in the operator")
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise KubeconfigError(f"cluster {context.get('cluster')!r} needs an https:// server")
    return cluster, user


def _memfd(name: str, content: bytes) -> int:
    """An in-memory file (never on disk) the TLS layer can open by path: /proc/self/fd/<fd>."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, content)
    return fd


def remote_api_client(text: str) -> tuple[Any, list[int]]:
    """An API client for the kubeconfig ``text``, built in memory: no kubeconfig, token or key is
    written to disk (the client library's own loader would put embedded certificates in temp files).
    Supported credentials: a token, or an embedded client certificate + key. Returns the client
    and the memfds it needs open."""
    from kubernetes import client

    cluster, user = parse_kubeconfig(text)
    conf = client.Configuration()
    conf.host = str(cluster["server"]).rstrip("/")
    conf.retries = REMOTE_RETRIES
    if cluster.get("insecure-skip-tls-verify"):
        conf.verify_ssl = False
    elif cluster.get("certificate-authority-data"):
        conf.ca_cert_data = _b64(cluster["certificate-authority-data"], "certificate-authority-data").decode(
            "ascii", "replace"
        )
    if cluster.get("tls-server-name"):
        conf.tls_server_name = str(cluster["tls-server-name"])
    fds: list[int] = []
    if user.get("token"):
        conf.api_key = {"BearerToken": f"Bearer {user['token']}"}
    elif user.get("client-certificate-data") and user.get("client-key-data"):
        cert = _b64(user["client-certificate-data"], "client-certificate-data")
        key = _b64(user["client-key-data"], "client-key-data")
        fds = [_memfd("kubeconfig-client-cert", cert), _memfd("kubeconfig-client-key", key)]
        conf.cert_file, conf.key_file = (f"/proc/self/fd/{fd}" for fd in fds)
    else:
        raise KubeconfigError("no usable credentials: a token, or client-certificate-data + client-key-data")
    return client.ApiClient(configuration=conf), fds
