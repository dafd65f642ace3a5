"""What ``moorage sync start|stop|reverse|status|cutover`` do to a ``RedisSync`` in Kubernetes.

Direction changes are declarative: the CLI patches ``spec.direction`` and the operator does the rest
(see operators/reconcile/sync.py); ``wait_*`` only watch for the operator to be done. Cutover runs
here, in the caller's process, because it must talk to the source Redis (pause, offsets, verify):
run it where the pods are reachable (in the cluster, e.g. a Job or a debug pod, or through a
network path to the pod IPs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from middleware.endpoints import Endpoint
from middleware.errors import MoorageError, NotReady, OperationError, SpecError
from middleware.kube.builders import COMPONENT_LABEL, INSTANCE_LABEL, NAME_LABEL
from middleware.models.sync import RedisEndpointKind, SyncDirection
from middleware.runtime.kubernetes import KubernetesRuntime
from operators.kube import context
from operators.kube.redis_sync import API, SideAccess, desired, resolve
from operators.settings import OperatorConfig
from sync import shake_config
from sync.cutover import CutoverReport, Feed, Progress, cutover
from sync.verify import RedisURL, VerifyReport, verify

KIND = "RedisSync"
POLL_SECONDS = 0.5


def _selector(name: str) -> dict[str, str]:
    return {NAME_LABEL: shake_config.COMPONENT, INSTANCE_LABEL: name}


class SyncNotFound(MoorageError):
    pass


def read(rt: KubernetesRuntime, namespace: str, name: str) -> dict[str, Any]:
    found = rt.get(API, KIND, namespace, name)
    if found is None:
        raise SyncNotFound(f"RedisSync {namespace}/{name} not found")
    return found


def set_direction(
    rt: KubernetesRuntime, namespace: str, name: str, direction: SyncDirection
) -> dict[str, Any]:
    """Patch ``spec.direction``; the operator reconciles. Returns the patched object."""
    read(rt, namespace, name)
    patched = rt.merge_patch(API, KIND, namespace, name, {"spec": {"direction": str(direction)}})
    if patched is None:
        raise SyncNotFound(f"RedisSync {namespace}/{name} not found")
    return patched


def deployments(rt: KubernetesRuntime, namespace: str, name: str) -> dict[str, str]:
    """This sync's redis-shake Deployments: name -> direction label (forward / reverse)."""
    found = rt.list_objects("apps/v1", "Deployment", namespace, _selector(name))
    return {
        d["metadata"]["name"]: (d["metadata"].get("labels") or {}).get(shake_config.DIRECTION_LABEL, "")
        for d in found
    }


def settled(body: Mapping[str, Any], workloads: Mapping[str, str]) -> tuple[bool, str]:
    """Whether the operator has reconciled this generation and what runs matches the direction;
    and a line saying where it is."""
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    direction = SyncDirection((body.get("spec") or {}).get("direction") or SyncDirection.FORWARD)
    observed = status.get("observedGeneration")
    phase = status.get("phase") or "new"
    if observed != generation:
        return (
            False,
            f"waiting for the operator (generation {generation}, observed {observed}, phase {phase})",
        )
    reverse = [w for w, way in workloads.items() if way == SyncDirection.REVERSE.value.lower()]
    if direction is SyncDirection.STOPPED:
        return not workloads, f"{len(workloads)} workloads left to stop"
    if direction is SyncDirection.REVERSE:
        done = bool(reverse) and len(reverse) == len(workloads)
        return done, f"{len(reverse)} reverse workloads running, {len(workloads) - len(reverse)} forward left"
    done = bool(workloads) and not reverse
    return done, f"{len(workloads) - len(reverse)} forward workloads, {len(reverse)} reverse left"


def wait_settled(
    rt: KubernetesRuntime,
    namespace: str,
    name: str,
    timeout: float,
    on_progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Until the operator has applied the current direction; raises NotReady with where it stopped."""
    deadline = time.monotonic() + timeout
    while True:
        body = read(rt, namespace, name)
        done, line = settled(body, deployments(rt, namespace, name))
        on_progress(line)
        if done:
            return body
        if time.monotonic() >= deadline:
            raise NotReady(f"RedisSync {namespace}/{name} did not settle within {timeout:g}s: {line}")
        time.sleep(POLL_SECONDS)


def _any_master(side: SideAccess) -> Endpoint:
    """A node ``sync.verify`` can start from: a cluster is discovered from any node, a sentinel group
    is compared at its master as the sentinels report it now."""
    if side.kind is RedisEndpointKind.CLUSTER:
        return side.data_nodes[0]
    return side.observe().shards[0].master


@dataclass(frozen=True)
class CutoverOptions:
    pause_seconds: float | None = 60.0
    drain_timeout: float = 30.0
    verify: bool = True
    sample: float = 1.0
    seed: int = 0
    ttl_tolerance: float = 2.0
    unpause_after: bool = False
    stop_timeout: float = 120.0


def run_cutover(
    rt: KubernetesRuntime,
    namespace: str,
    name: str,
    options: CutoverOptions,
    *,
    config: OperatorConfig | None = None,
    progress: Progress = lambda step, lags: None,
    on_stop_progress: Callable[[str], None] = lambda line: None,
) -> CutoverReport:
    """Cut a Forward RedisSync over (sync.cutover) and set it Stopped once the target is verified."""
    body = read(rt, namespace, name)
    config = config or OperatorConfig.from_environment()
    direction = SyncDirection((body.get("spec") or {}).get("direction") or SyncDirection.FORWARD)
    if direction is not SyncDirection.FORWARD:
        raise SpecError("spec.direction", f"a cutover needs a Forward sync, this one is {direction}")
    resolved = resolve(rt, body, config, require_ready=False)
    workloads, _ = desired(name, resolved)
    pods = {
        (p.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL): p
        for p in rt.pods(namespace, _selector(name))
    }
    # The node each running redis-shake was configured to read, as the operator recorded it: a plan
    # made now could pick another replica than the one the workload actually reads.
    applied = {
        str(entry.get("name")): str(entry.get("source"))
        for entry in (body.get("status") or {}).get("workloads") or []
        if entry.get("source")
    }
    listening_port = shake_config.listening_port(str(resolved.spec.shake_version))
    feeds = []
    for workload in workloads:
        pod_ip = ((pods.get(workload.name) or {}).get("status") or {}).get("podIP")
        reader = Endpoint.parse(applied[workload.name]) if workload.name in applied else workload.reader
        status_port = shake_config.STATUS_PORT if listening_port == shake_config.STATUS_PORT else None
        feeds.append(
            Feed(workload.name, workload.source_master, reader, listening_port, pod_ip or None, status_port)
        )

    def compare() -> VerifyReport:
        source, target = resolved.source, resolved.target
        return verify(
            RedisURL(_any_master(source), None, source.password, 0),
            RedisURL(_any_master(target), None, target.password, 0),
            sample_ratio=options.sample,
            seed=options.seed,
            ttl_tolerance=options.ttl_tolerance,
        )

    def stop() -> None:
        try:
            set_direction(rt, namespace, name, SyncDirection.STOPPED)
        except MoorageError as exc:
            raise OperationError(f"could not set RedisSync {namespace}/{name} Stopped: {exc}") from None
        wait_settled(rt, namespace, name, options.stop_timeout, on_stop_progress)

    return cutover(
        feeds,
        source_password=resolved.source.password,
        verify=compare if options.verify else None,
        stop=stop,
        pause_seconds=options.pause_seconds,
        drain_timeout=options.drain_timeout,
        unpause_after=options.unpause_after,
        progress=progress,
    )


def runtime() -> KubernetesRuntime:
    """The caller's cluster ($KUBECONFIG, or the pod's service account), with the operator's address
    seam (tests map pods to local processes through it)."""
    return context.runtime()
