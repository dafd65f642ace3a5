"""Running the real operator (``kopf run -m operators.main``) against the test control plane.

kopf runs in a thread of the test process (``kopf.testing.KopfRunner``), logs in through the
control plane's kubeconfig and watches one namespace. There is no kubelet: tests play its part by
writing pod status (``mark_ready``), and every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from tests.k8s.controlplane import ControlPlane

GROUP, VERSION = "moorage.io", "v1alpha1"
WAIT = 90.0
# Short retry delays so a test sees each step soon; the production defaults are in OperatorConfig.
FAST_RETRIES = {
    "MOORAGE_MEMBER_RETRY_SECONDS": "1",
    "MOORAGE_BOOTSTRAP_RETRY_SECONDS": "3",
    "MOORAGE_STORAGE_RETRY_SECONDS": "1",
    "MOORAGE_API_ERROR_RETRY_SECONDS": "5",
    # The observe timer reads this when operators.main is first imported (in running_operator).
    "MOORAGE_OBSERVE_INTERVAL_SECONDS": "2",
    # kopf's pool: its watch streams plus only this many connections for everything else, far below
    # the default, so every operator test here also shows the watches are counted and nothing starves.
    "MOORAGE_API_CONNECTIONS": "3",
}


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@contextmanager
def running_operator(
    control_plane: ControlPlane,
    api_client: Any,
    namespace: str,
    *,
    env: Mapping[str, str] | None = None,
    plurals: Sequence[str] = ("middlewares",),
    cleanup_timeout: float = 60.0,
) -> Iterator[Any]:
    """The operator (every handler ``operators.main`` registers) watching ``namespace``, with
    FAST_RETRIES plus ``env`` set. On exit every object of ``plurals`` left there is deleted while the
    operator still runs (so its finalizers are honoured), then the operator stops."""
    from kopf.testing import KopfRunner

    from operators.kube import api_session
    from operators.settings import operator_config

    settings = {**FAST_RETRIES, **(env or {})}
    saved = {key: os.environ.get(key) for key in ("KUBECONFIG", *settings)}
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
    os.environ.update(settings)
    operator_config.cache_clear()
    args = ["run", "-m", "operators.main", "--standalone", "--namespace", namespace]
    # What `moorage operator --namespace NAMESPACE --standalone` tells the login handler.
    api_session.set_watch_scope(api_session.WatchScope(clusterwide=False, namespaces=(namespace,)))
    try:
        with KopfRunner(args, timeout=60) as runner:
            try:
                yield runner
            finally:
                _delete_all(api_client, namespace, plurals, cleanup_timeout)
        assert runner.exception is None, runner.output
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        operator_config.cache_clear()
        api_session.set_watch_scope(None)


def _delete_all(api_client: Any, namespace: str, plurals: Sequence[str], timeout: float) -> None:
    """Delete every object of ``plurals``, and each poll whatever is not being deleted yet (one made
    after the first listing, e.g. by a schedule of a Middleware not gone yet); a timeout names what
    is left, with its finalizers."""
    custom = custom_api(api_client)

    def left() -> list[str]:
        """Delete what is not being deleted yet; what is still there, with its finalizers."""
        remaining = []
        for plural in plurals:
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
                meta = item["metadata"]
                if not meta.get("deletionTimestamp"):
                    with contextlib.suppress(Exception):  # gone meanwhile
                        custom.delete_namespaced_custom_object(
                            GROUP, VERSION, namespace, plural, meta["name"]
                        )
                remaining.append(
                    f"{plural}/{meta['name']} finalizers={meta.get('finalizers')}"
                    f" phase={(item.get('status') or {}).get('phase')}"
                )
        return remaining

    try:
        wait_for(f"every {'/'.join(plurals)} object to be finalized", lambda: not left(), timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}; still there: {left()}") from None


def custom_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def core_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def apps_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


def middleware(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    api_version = f"{GROUP}/{VERSION}"
    return {"apiVersion": api_version, "kind": "Middleware", "metadata": {"name": name}, "spec": spec}


def read_middleware(api_client: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        result: dict[str, Any] = custom_api(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", name
        )
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def status_of(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    body = read_middleware(api_client, namespace, name) or {}
    return dict(body.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def events(api_client: Any, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about the Middleware ``name``."""
    items = core_api(api_client).list_namespaced_event(namespace).items
    return [
        (e.type, e.reason, e.message or "")
        for e in items
        if e.involved_object.kind == "Middleware" and e.involved_object.name == name
    ]


def mark_ready(api_client: Any, namespace: str, pod: str) -> None:
    """Do the kubelet's part: the pod is Running and Ready."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    core_api(api_client).patch_namespaced_pod_status(
        pod, namespace, {"status": {"phase": "Running", "conditions": conditions}}
    )


def make_pods_ready(api_client: Any, namespace: str, names: list[str], timeout: float = WAIT) -> None:
    """Mark each pod Ready as the StatefulSet controller creates it (OrderedReady creates ordinal
    n+1 only after n is Ready), until all of ``names`` are Ready."""
    core = core_api(api_client)
    pending = set(names)

    def step() -> bool:
        present = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        for name in sorted(pending & present.keys()):
            mark_ready(api_client, namespace, name)
            pending.discard(name)
        return not pending

    wait_for(f"pods {sorted(names)} to exist (marked Ready as they appear)", step, timeout=timeout)


# Pod name -> where its local process answers; the address seam of local_members reads it, and
# start_local_members adds to it when a test scales out.
_local_endpoints: dict[str, Any] = {}


def start_local_members(local: Any, manifest: dict[str, Any], timeout: float = 60.0) -> Any:
    """Start the processes of ``manifest``'s members that are not running yet (the new shard or
    replica of a scale-out), under the same state as local_members, and make them resolvable.
    Returns the resolved spec."""
    from middleware.engines.base import Connection
    from middleware.engines.registry import get_engine
    from middleware.spec import load_middleware, resolve

    spec = resolve(load_middleware(manifest))
    engine = get_engine(spec.engine)
    for wave in engine.start_waves(spec):
        local.apply(spec, engine, wave, Connection(local.members(spec, engine), local.password(spec)))
        names = {m.name for m in wave}
        wait_for(
            f"local members {sorted(names)} up",
            lambda names=names: names <= {m.plan.name for m in local.members(spec, engine) if m.up},  # type: ignore[misc]
            timeout=timeout,
        )
    _local_endpoints.update({m.plan.name: m.endpoint for m in local.members(spec, engine)})
    return spec


def stop_local_members(local: Any, spec: Any, names: list[str]) -> None:
    """Play the kubelet for deleted pods: stop their processes (by the PIDs the runtime recorded)."""
    from middleware.engines.registry import get_engine

    engine = get_engine(spec.engine)
    local.retire(spec, engine, [m for m in engine.members(spec) if m.name in names])


@contextmanager
def local_members(state_dir: Any, manifest: dict[str, Any], timeout: float = 60.0) -> Iterator[Any]:
    """Back a Middleware's pods with real engine processes on 127.0.0.1 (LocalRuntime), and point the
    operator's address-resolution seam at them: pod DNS name → 127.0.0.1:<allocated port>. Yields the
    (runtime, resolved spec) pair; the processes are stopped by their PIDs on exit."""
    from middleware.endpoints import Endpoint
    from middleware.engines.registry import get_engine
    from middleware.runtime.local import LocalRuntime
    from middleware.spec import load_middleware, resolve
    from operators.kube import context

    local = LocalRuntime(state_dir)
    spec = resolve(load_middleware(manifest))
    planned = {m.name for m in get_engine(spec.engine).members(spec)}
    saved = context.address_resolver
    _local_endpoints.clear()
    try:
        start_local_members(local, manifest, timeout)
        assert set(_local_endpoints) == planned

        def resolve_address(pod: str, host: str, port: int) -> Endpoint:
            found: Endpoint | None = _local_endpoints.get(pod)
            return found if found is not None else Endpoint(host, port)

        context.address_resolver = resolve_address
        yield local, spec
    finally:
        context.address_resolver = saved
        _local_endpoints.clear()
        local.delete(spec.namespace, spec.name, purge=True)
