"""Kubernetes pieces of a member's Prometheus exporter (``base.Exporter``), shared by the engines
that have one: the sidecar container beside the server (or, for an exporter in the server's own
process, the main container's ``metrics`` port), the ``NAME-metrics`` Service, and where each
member's exporter answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from middleware.engines.base import Engine, Exporter, ObservedMember
from middleware.kube import builders as kube
from middleware.models.common import Resources
from middleware.spec import ResolvedSpec

# Requests equal limits, like every container of a member pod (one without would drop the pod out
# of Guaranteed QoS). Both exporters stay near 15 MiB resident and spend a few milliseconds of CPU
# per scrape: 20m (throttled to 2 ms of every 100 ms) still answers a scrape well inside Prometheus'
# default 10 s timeout, and costs a node little per member.
EXPORTER_RESOURCES = Resources(cpu="20m", memory="64Mi")
CONTAINER_NAME = "metrics"


def exporter_container(
    spec: ResolvedSpec, exporter: Exporter, *, target_port: int, password_key: str
) -> dict[str, Any]:
    """The exporter as a sidecar: it reaches its member over the pod's loopback, listens on every
    interface at its customary port (the pod's ``metrics`` port), and reads the password from the
    credentials Secret (an environment variable: never on its command line)."""
    assert spec.exporter_image is not None
    target = f"127.0.0.1:{target_port}"
    env = [{"name": name, "value": value} for name, value in sorted(exporter.environment(target).items())]
    env.append(kube.env_from_secret(exporter.password_env, kube.credentials_secret_name(spec), password_key))
    return kube.container(
        CONTAINER_NAME,
        spec.exporter_image,
        resources=EXPORTER_RESOURCES,
        # The image's own entrypoint is the exporter: its binary's name differs between images.
        command=(),
        args=exporter.arguments(f":{exporter.port}", target),
        env=env,
        ports=[(kube.METRICS_PORT_NAME, exporter.port)],
    )


def served(spec: ResolvedSpec, exporter: Exporter | None) -> bool:
    """Whether the members' pods serve metrics: an exporter in the server's own process always
    does; a sidecar needs the catalog's exporter image for the engine."""
    return exporter is not None and (exporter.in_process or spec.exporter_image is not None)


def sidecars(
    spec: ResolvedSpec, exporter: Exporter | None, *, target_port: int, password_key: str
) -> list[dict[str, Any]]:
    """The exporter's container, or none (``spec.monitoring.enabled`` false, no exporter or no
    exporter image for the engine, or an exporter in the server's own process)."""
    if exporter is None or exporter.in_process or spec.exporter_image is None:
        return []
    return [exporter_container(spec, exporter, target_port=target_port, password_key=password_key)]


def own_ports(exporter: Exporter | None) -> list[tuple[str, int]]:
    """The main container's ``metrics`` port, for an exporter in the server's own process."""
    return [(kube.METRICS_PORT_NAME, exporter.port)] if exporter is not None and exporter.in_process else []


def services(spec: ResolvedSpec, exporter: Exporter | None) -> list[dict[str, Any]]:
    if exporter is None or not served(spec, exporter):
        return []
    return [kube.metrics_service(spec, port=exporter.port)]


def pod_monitors(spec: ResolvedSpec, engine: Engine) -> list[dict[str, Any]]:
    """The ``PodMonitor`` of the members' exporters (none when no member has one), for clusters with
    the Prometheus Operator."""
    if not any(served(spec, engine.exporter(spec, m)) for m in engine.members(spec)):
        return []
    return [kube.pod_monitor(spec)]


def pod_addresses(spec: ResolvedSpec, engine: Engine, observed: Sequence[ObservedMember]) -> dict[str, str]:
    """Each observed member's exporter in its pod (the member's host, the exporter's port), by
    member name; none for members with no sidecar."""
    plans = {plan.name: plan for plan in engine.members(spec)}
    addresses = {}
    for member in observed:
        plan = plans.get(member.name)
        exporter = engine.exporter(spec, plan) if plan is not None else None
        if exporter is not None and served(spec, exporter):
            addresses[member.name] = f"{member.address.rsplit(':', 1)[0]}:{exporter.port}"
    return addresses
