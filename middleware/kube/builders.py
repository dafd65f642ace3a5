"""Engine-agnostic Kubernetes manifest builders: pure functions from a ResolvedSpec to plain dicts.

Engines compose these; the builders own the rules every engine must follow, so an engine cannot
forget them: the standard labels, selectors that survive upgrades, Guaranteed QoS on every container
(init containers included), a restricted-profile securityContext, PVCs that outlive their pods.
Nothing here talks to the API server or imports the kubernetes client.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from middleware.models.common import Resources
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
MANAGED_BY = "moorage"
# Set on pods by the operator (never by a template) from what the engine reports, so Services such as
# `-master` follow failovers without re-rendering anything.
ROLE_LABEL = "moorage.io/role"
SHARD_LABEL = "moorage.io/shard"
GENERATED_ANNOTATION = "moorage.io/generated"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
ORDERED_READY = "OrderedReady"
PARALLEL = "Parallel"
# Volume names every member pod shares (see ``member_statefulset``).
TEMPLATES_VOLUME = "templates"
# The exporter's container port name on every member pod, and the metrics Service's component.
METRICS_PORT_NAME = "metrics"
METRICS_COMPONENT = "metrics"
DATA_VOLUME = "data"


def credentials_secret_name(spec: ResolvedSpec) -> str:
    return f"{spec.name}-credentials"


def selector_labels(
    spec: ResolvedSpec, component: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Labels that select pods. StatefulSet selectors are immutable, so only what never changes for
    the life of the instance belongs here: never the version, or every upgrade would be rejected."""
    labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name, COMPONENT_LABEL: component}
    labels.update(extra or {})
    return labels


def stable_labels(
    spec: ResolvedSpec, component: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Labels for immutable places (volumeClaimTemplates): the standard set minus the version."""
    return {**selector_labels(spec, component, extra), MANAGED_BY_LABEL: MANAGED_BY}


def standard_labels(
    spec: ResolvedSpec, component: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {**stable_labels(spec, component, extra), VERSION_LABEL: spec.version}


def metadata(
    spec: ResolvedSpec,
    name: str,
    component: str,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": spec.namespace,
        "labels": standard_labels(spec, component, extra_labels),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def resource_requirements(resources: Resources) -> dict[str, Any]:
    # ResolvedSpec fills the limits from the requests unless the user set them, so by default
    # requests == limits and the pod gets Guaranteed QoS (last to be evicted or OOM-killed).
    return {
        "requests": {"cpu": resources.cpu, "memory": resources.memory},
        "limits": {
            "cpu": resources.cpu_limit or resources.cpu,
            "memory": resources.memory_limit or resources.memory,
        },
    }


def pod_security_context(*, user: int, group: int) -> dict[str, Any]:
    """Pod-level half of the `restricted` Pod Security Standard; the uid is the image's own user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": group,
        "fsGroup": group,
        # A recursive chown of a large data volume on every start can take minutes.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    # Containers only write to mounted volumes, so the image filesystem can be read-only.
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def env_from_field(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def env_from_secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def exec_probe(
    command: Sequence[str], *, period: int, timeout: int, failure_threshold: int
) -> dict[str, Any]:
    return {
        "exec": {"command": list(command)},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failure_threshold,
    }


def container(
    name: str,
    image: str,
    *,
    resources: Resources,
    command: Sequence[str],
    args: Sequence[str] = (),
    env: Sequence[Mapping[str, Any]] = (),
    ports: Sequence[tuple[str, int]] = (),
    volume_mounts: Sequence[Mapping[str, Any]] = (),
    readiness: Mapping[str, Any] | None = None,
    liveness: Mapping[str, Any] | None = None,
    startup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A container (app or init) that always carries resources and the securityContext: one missing
    resources block on any container, init ones included, drops the whole pod out of Guaranteed QoS."""
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
    }
    # No command: the image's entrypoint runs (with ``args``).
    if command:
        spec["command"] = list(command)
    if args:
        spec["args"] = list(args)
    if env:
        spec["env"] = [dict(e) for e in env]
    if ports:
        spec["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]
    if volume_mounts:
        spec["volumeMounts"] = [dict(m) for m in volume_mounts]
    spec["resources"] = resource_requirements(resources)
    spec["securityContext"] = container_security_context()
    # A container that crashes leaves its last log lines in its status, where the operator reads
    # why a member never became ready without needing pods/log.
    spec["terminationMessagePolicy"] = "FallbackToLogsOnError"
    for key, probe in (("startupProbe", startup), ("readinessProbe", readiness), ("livenessProbe", liveness)):
        if probe is not None:
            spec[key] = dict(probe)
    return spec


def pod_anti_affinity(terms: Sequence[tuple[int, Mapping[str, str]]]) -> dict[str, Any]:
    """Preferred (not required) anti-affinity per (weight, labels) term: a small cluster with fewer
    nodes than members must still schedule every pod rather than leave some Pending forever."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": weight,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": dict(labels)},
                        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
                    },
                }
                for weight, labels in terms
            ]
        }
    }


def pod_spec(
    *,
    containers: Sequence[Mapping[str, Any]],
    init_containers: Sequence[Mapping[str, Any]] = (),
    volumes: Sequence[Mapping[str, Any]] = (),
    security_context: Mapping[str, Any],
    affinity: Mapping[str, Any] | None = None,
    termination_grace_period_seconds: int = 30,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # The pods never call the Kubernetes API; a mounted token would only be something to steal.
        "automountServiceAccountToken": False,
        # Service links inject <SERVICE>_PORT-style variables for every Service in the namespace;
        # a Service named like an engine (e.g. "redis") would shadow variables the image reads.
        "enableServiceLinks": False,
        "securityContext": dict(security_context),
        "terminationGracePeriodSeconds": termination_grace_period_seconds,
    }
    if affinity:
        spec["affinity"] = dict(affinity)
    if init_containers:
        spec["initContainers"] = [dict(c) for c in init_containers]
    spec["containers"] = [dict(c) for c in containers]
    if volumes:
        spec["volumes"] = [dict(v) for v in volumes]
    return spec


def volume_claim_template(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    size: str,
    storage_class_name: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class_name:
        claim["storageClassName"] = storage_class_name
    # volumeClaimTemplates cannot change after creation, hence no version label here.
    return {"metadata": {"name": name, "labels": stable_labels(spec, component, extra_labels)}, "spec": claim}


def statefulset(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    service_name: str,
    replicas: int,
    template: Mapping[str, Any],
    volume_claim_templates: Sequence[Mapping[str, Any]] = (),
    extra_labels: Mapping[str, str] | None = None,
    pod_management_policy: str = ORDERED_READY,
    pod_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``template`` is a pod spec (see ``pod_spec``); labels are added here so they always match the
    selector. OrderedReady by default: starting replicas in parallel lets a fresh, empty member race
    the one holding the data (redis #12271); an engine opts into Parallel only when that is safe."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(spec, name, component, extra_labels=extra_labels),
        "spec": {
            "serviceName": service_name,
            "replicas": replicas,
            "podManagementPolicy": pod_management_policy,
            "updateStrategy": {"type": "RollingUpdate"},
            # Always Retain, whatever spec.deletionPolicy says: deleting a StatefulSet is also a
            # routine repair (orphan-delete and recreate to grow volumeClaimTemplates, kubernetes
            # #68737), and it must never take the data with it. The operator deletes PVCs itself,
            # and only when the user asked for deletionPolicy Delete.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": selector_labels(spec, component, extra_labels)},
            "template": {
                "metadata": {
                    "labels": standard_labels(spec, component, extra_labels),
                    **({"annotations": dict(pod_annotations)} if pod_annotations else {}),
                },
                "spec": dict(template),
            },
            "volumeClaimTemplates": [dict(t) for t in volume_claim_templates],
        },
    }


def _service_ports(ports: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    # Target the container port by name so a port change stays in one place (the container).
    return [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports]


def headless_service(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    ports: Sequence[tuple[str, int]],
    extra_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per-pod DNS for a StatefulSet. Not-ready pods are published because members must find each
    other before they can be ready (cluster MEET, replicas reaching their master, sentinels)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, name, component),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(spec, component, extra_selector),
            "ports": _service_ports(ports),
        },
    }


def client_service(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    ports: Sequence[tuple[str, int]],
    extra_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec, component, extra_selector),
            "ports": _service_ports(ports),
        },
    }


def metrics_service(spec: ResolvedSpec, *, port: int) -> dict[str, Any]:
    """``NAME-metrics``: every member pod's ``metrics`` port, whatever its component, for a
    ServiceMonitor or a Prometheus with endpoints discovery. Headless: Prometheus scrapes each pod,
    never one picked at random, and members not ready still report (why they are not ready)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        # The annotations the common Prometheus configurations discover service endpoints by
        # (the operator's own Service carries them too).
        "metadata": metadata(
            spec,
            f"{spec.name}-metrics",
            METRICS_COMPONENT,
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics",
            },
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name},
            "ports": _service_ports([(METRICS_PORT_NAME, port)]),
        },
    }


def pod_monitor(spec: ResolvedSpec) -> dict[str, Any]:
    """The Prometheus Operator's ``PodMonitor`` for every member pod's ``metrics`` port (rendered only
    where its CRD is installed): each pod is a target, labelled with its pod and the Middleware."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(spec, f"{spec.name}-metrics", METRICS_COMPONENT),
        "spec": {
            "selector": {"matchLabels": {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name}},
            "podTargetLabels": [NAME_LABEL, INSTANCE_LABEL, COMPONENT_LABEL],
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics"}],
        },
    }


def pod_disruption_budget(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    extra_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    # maxUnavailable (not minAvailable) keeps node drains possible at any replica count while
    # never letting voluntary evictions take two members of the same group at once.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, name, component, extra_labels=extra_selector),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(spec, component, extra_selector)},
        },
    }


def config_map(
    spec: ResolvedSpec, *, name: str, data: Mapping[str, str], component: str = "config"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, name, component),
        "data": {key: data[key] for key in sorted(data)},
    }


def credentials_secret(spec: ResolvedSpec, password: str, *, key: str = "password") -> dict[str, Any]:
    """The generated credentials. ``data`` (base64), not ``stringData``: the object then looks exactly
    like what the API server returns, so comparing it with the live one needs no translation."""
    encoded = base64.b64encode(password.encode("utf-8")).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            spec, credentials_secret_name(spec), "credentials", annotations={GENERATED_ANNOTATION: "true"}
        ),
        "type": "Opaque",
        "data": {key: encoded},
    }


_DNS_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_cluster_domain(cluster_domain: str) -> None:
    """Every engine puts the cluster domain inside a shell script: only a plain DNS name may pass."""
    if not _DNS_NAME_RE.match(cluster_domain):
        raise ValueError(f"cluster domain {cluster_domain!r} is not a DNS name")


def config_map_name(spec: ResolvedSpec) -> str:
    return f"{spec.name}-config"


def volume_mount(volume: str, path: str, *, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": volume, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


def data_volume_claim(
    spec: ResolvedSpec,
    *,
    name: str,
    component: str,
    size: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The PVC template of a member's data, sized from the spec unless ``size`` says otherwise."""
    return volume_claim_template(
        spec,
        name=name,
        component=component,
        size=size or spec.storage.size,
        storage_class_name=spec.storage.storage_class_name,
        extra_labels=extra_labels,
    )


def empty_dir_volume(name: str, *, size_limit: str | None = None, memory: bool = False) -> dict[str, Any]:
    """A pod-lifetime volume. ``memory`` keeps what is written there (rendered secrets) off the
    node's disk; a memory-backed one always has a limit, because it counts against the pod's memory."""
    if memory and size_limit is None:
        raise ValueError(f"volume {name!r}: a memory-backed emptyDir needs a sizeLimit")
    empty_dir: dict[str, Any] = {"medium": "Memory"} if memory else {}
    if size_limit is not None:
        empty_dir["sizeLimit"] = size_limit
    return {"name": name, "emptyDir": empty_dir}


class Probes(TypedDict):
    """A server container's three probes, under the names ``container`` takes them by."""

    startup: dict[str, Any]
    readiness: dict[str, Any]
    liveness: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class MemberWorkload:
    """What one engine's member StatefulSet has of its own; ``member_statefulset`` adds the rest.

    Every engine's members run the same pod shape: an init container that renders the config from
    the ConfigMap's templates (``TEMPLATES_VOLUME``, mounted read-only at ``templates_dir``) before
    every start, then one server container from the same image, both with the same resources, as
    ``run_as`` (user and group), with a PVC named ``DATA_VOLUME`` per member.
    """

    name: str
    component: str
    # The headless Service that gives each pod its DNS name.
    service_name: str
    # Required, not defaulted: whether members may start together is each engine's own decision
    # (see ``statefulset``), and the reason belongs next to it.
    pod_management_policy: str
    run_as: int
    grace_seconds: int
    templates_dir: str
    init_script: str
    init_env: Sequence[Mapping[str, Any]]
    # The init container's mounts after the templates one, which always comes first.
    init_mounts: Sequence[Mapping[str, Any]]
    container_name: str
    command: Sequence[str]
    ports: Sequence[tuple[str, int]]
    mounts: Sequence[Mapping[str, Any]]
    probes: Probes
    env: Sequence[Mapping[str, Any]] = ()
    # The pod's volumes after the templates one (the data PVC comes from volumeClaimTemplates).
    volumes: Sequence[Mapping[str, Any]] = ()
    init_name: str = "config"
    # The init script's interpreter: sh where it is POSIX, bash where the script needs bash.
    init_shell: str = "sh"
    # spec.resources unless members of this kind need other sizes (Redis sentinels).
    resources: Resources | None = None
    # A command run before SIGTERM, for engines whose SIGTERM is not the shutdown wanted.
    pre_stop: Sequence[str] | None = None
    # Labels of one group of members (a shard) within the component, on pods, selector and PVCs.
    group_labels: Mapping[str, str] | None = None
    # The data PVC's size, spec.storage.size unless set.
    storage_size: str | None = None
    # spec.replicas unless members of this kind are counted otherwise (Redis sentinels).
    replicas: int | None = None
    # Containers beside the server (the metrics exporter), with resources of their own.
    sidecars: Sequence[Mapping[str, Any]] = ()


def member_statefulset(spec: ResolvedSpec, member: MemberWorkload) -> dict[str, Any]:
    """The StatefulSet of one kind of member (``MemberWorkload`` says what the engine chooses)."""
    resources = member.resources or spec.resources
    init = container(
        member.init_name,
        spec.image,
        resources=resources,
        command=[member.init_shell, "-c", member.init_script],
        env=member.init_env,
        volume_mounts=[
            volume_mount(TEMPLATES_VOLUME, member.templates_dir, read_only=True),
            *member.init_mounts,
        ],
    )
    main = container(
        member.container_name,
        spec.image,
        resources=resources,
        command=member.command,
        env=member.env,
        ports=member.ports,
        volume_mounts=member.mounts,
        **member.probes,
    )
    if member.pre_stop is not None:
        main["lifecycle"] = {"preStop": {"exec": {"command": list(member.pre_stop)}}}
    # Members on one node would all go with it. With groups, keep each group's members apart above
    # all (losing one node must not lose a shard), then spread the groups too.
    spread = [(100, selector_labels(spec, member.component, member.group_labels))]
    if member.group_labels:
        spread.append((50, selector_labels(spec, member.component)))
    pod = pod_spec(
        init_containers=[init],
        containers=[main, *member.sidecars],
        volumes=[{"name": TEMPLATES_VOLUME, "configMap": {"name": config_map_name(spec)}}, *member.volumes],
        security_context=pod_security_context(user=member.run_as, group=member.run_as),
        affinity=pod_anti_affinity(spread),
        termination_grace_period_seconds=member.grace_seconds,
    )
    return statefulset(
        spec,
        name=member.name,
        component=member.component,
        service_name=member.service_name,
        replicas=spec.replicas if member.replicas is None else member.replicas,
        template=pod,
        volume_claim_templates=[
            data_volume_claim(
                spec,
                name=DATA_VOLUME,
                component=member.component,
                size=member.storage_size,
                extra_labels=member.group_labels,
            )
        ],
        extra_labels=member.group_labels,
        pod_management_policy=member.pod_management_policy,
        # `kubectl logs/exec POD` mean the server, not a sidecar, when no container is named.
        pod_annotations={DEFAULT_CONTAINER_ANNOTATION: member.container_name} if member.sidecars else None,
    )
