"""The members' Prometheus exporters in pods (docs/monitoring.md): a sidecar per member pod from the
catalog's exporter image, the NAME-metrics Service, and how spec.monitoring and the catalog
change them. The exporters themselves are scraped on real servers in
tests/integration/test_metrics.py and tests/e2e/test_metrics.py."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.catalog import load_default_catalog
from middleware.engines.registry import get_engine
from middleware.kube import builders as kube
from middleware.models.catalog import MiddlewareCatalogSpec
from middleware.spec import ResolvedSpec, load_middleware, resolve
from tests.unit.manifests import named, of_kind

CASES = {
    # engine, topology, the rest of the spec
    "redis-standalone": ("redis", "standalone", {}),
    "redis-sentinel": ("redis", "sentinel", {"replicas": 2}),
    "redis-cluster": ("redis", "cluster", {"shards": 3, "replicas": 2}),
    "postgresql-replication": ("postgresql", "replication", {"replicas": 2}),
}
EXPORTERS = {
    "redis": ("docker.io/oliver006/redis_exporter:v1.45.0", 9121, "REDIS_PASSWORD"),
    "postgresql": ("quay.io/prometheuscommunity/postgres-exporter:v0.11.1", 9187, "DATA_SOURCE_PASS"),
}


def _document(engine: str, topology: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"engine": engine, "topology": topology, **extra},
    }


def _spec(engine: str, topology: str, extra: dict[str, Any], catalog: Any = None) -> ResolvedSpec:
    return resolve(load_middleware(_document(engine, topology, extra)), catalog)


def _render(spec: ResolvedSpec) -> list[dict[str, Any]]:
    return get_engine(spec.engine).render(spec)


@pytest.mark.parametrize("case", CASES)
def test_every_member_pod_runs_the_exporter_beside_its_server(case: str) -> None:
    engine, topology, extra = CASES[case]
    image, port, password_env = EXPORTERS[engine]
    manifests = _render(_spec(engine, topology, extra))
    statefulsets = of_kind(manifests, "StatefulSet")
    assert statefulsets
    for sts in statefulsets:
        server, metrics = sts["spec"]["template"]["spec"]["containers"]
        server_port = server["ports"][0]["containerPort"]
        assert metrics["name"] == "metrics" and metrics["image"] == image
        # The image's entrypoint is the exporter; it reads its member over the pod's loopback.
        assert "command" not in metrics
        assert any(a.endswith(f"=:{port}") for a in metrics["args"])
        env = {e["name"]: e for e in metrics["env"]}
        target = f"127.0.0.1:{server_port}"
        assert any(target in a for a in metrics["args"]) or any(
            target in e.get("value", "") for e in env.values()
        )
        assert env[password_env]["valueFrom"]["secretKeyRef"] == {"name": "m-credentials", "key": "password"}
        assert metrics["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        # Requests equal limits: the sidecar keeps the pod in Guaranteed QoS.
        assert metrics["resources"]["requests"] == metrics["resources"]["limits"]
        # No probe: a slow scrape never takes a member out of its Services.
        assert not {"readinessProbe", "livenessProbe", "startupProbe"} & metrics.keys()


@pytest.mark.parametrize("case", CASES)
def test_the_metrics_service_selects_every_member_pod(case: str) -> None:
    engine, topology, extra = CASES[case]
    manifests = _render(_spec(engine, topology, extra))
    service = named(manifests, "Service", "m-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": EXPORTERS[engine][1], "targetPort": "metrics", "protocol": "TCP"}
    ]
    selector = service["spec"]["selector"].items()
    for sts in of_kind(manifests, "StatefulSet"):
        assert selector <= sts["spec"]["template"]["metadata"]["labels"].items(), sts["metadata"]["name"]
    assert kube.VERSION_LABEL not in service["spec"]["selector"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(EXPORTERS[engine][1])


@pytest.mark.parametrize("case", CASES)
def test_monitoring_disabled_renders_no_exporter(case: str) -> None:
    engine, topology, extra = CASES[case]
    spec = _spec(engine, topology, {**extra, "monitoring": {"enabled": False}})
    assert not spec.metrics and spec.exporter_image is None
    manifests = _render(spec)
    assert not [m for m in manifests if m["metadata"]["name"] == "m-metrics"]
    for sts in of_kind(manifests, "StatefulSet"):
        (server,) = sts["spec"]["template"]["spec"]["containers"]
        assert server["name"] != "metrics"
        assert "annotations" not in sts["spec"]["template"]["metadata"]
    assert all(
        get_engine(engine).exporter(spec, member) is None for member in get_engine(engine).members(spec)
    )


def test_a_catalog_override_names_the_exporter_image() -> None:
    override = MiddlewareCatalogSpec.model_validate(
        {"exporterImages": [{"engine": "postgresql", "image": "registry.corp/postgres-exporter:0.11.1"}]}
    )
    catalog = load_default_catalog().with_overrides(override)
    spec = _spec("postgresql", "standalone", {}, catalog)
    assert spec.exporter_image == "registry.corp/postgres-exporter:0.11.1"
    (sts,) = of_kind(_render(spec), "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][1]["image"] == spec.exporter_image
    # The default catalog is untouched.
    assert _spec("postgresql", "standalone", {}).exporter_image == EXPORTERS["postgresql"][0]


def test_engines_without_an_exporter_render_none() -> None:
    spec = _spec("mongodb", "replicaset", {})
    manifests = _render(spec)
    assert not [m for m in manifests if m["metadata"]["name"] == "m-metrics"]
    assert all(get_engine("mongodb").exporter(spec, m) is None for m in get_engine("mongodb").members(spec))
    for sts in of_kind(manifests, "StatefulSet"):
        assert len(sts["spec"]["template"]["spec"]["containers"]) == 1
        assert "metrics" not in {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_zookeeper_serves_metrics_from_its_own_process_no_sidecar() -> None:
    """ZooKeeper's Prometheus provider runs in the server: no sidecar and no exporter image, the
    main container's `metrics` port, the metrics Service, and zoo.cfg naming the provider."""
    spec = _spec("zookeeper", "ensemble", {})
    assert spec.exporter_image is None
    manifests = _render(spec)
    (sts,) = of_kind(manifests, "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert ("metrics", 7000) in {(p["name"], p["containerPort"]) for p in container["ports"]}
    service = named(manifests, "Service", "m-metrics")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("metrics", 7000)]
    zoo_cfg = named(manifests, "ConfigMap", "m-config")["data"]["zoo.cfg"]
    assert (
        "metricsProvider.className=org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider"
        in zoo_cfg
    )
    assert "metricsProvider.httpPort=${METRICS_PORT}" in zoo_cfg
    # the init script fills the port the container declares
    assert '-e "s|[$]{METRICS_PORT}|7000|g"' in str(sts["spec"]["template"]["spec"]["initContainers"])

    off = _render(_spec("zookeeper", "ensemble", {"monitoring": {"enabled": False}}))
    (sts,) = of_kind(off, "StatefulSet")
    assert "metrics" not in {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert not [m for m in off if m["metadata"]["name"] == "m-metrics"]
    assert "metricsProvider" not in named(off, "ConfigMap", "m-config")["data"]["zoo.cfg"]


def test_the_exporter_command_never_carries_the_password() -> None:
    for engine in ("redis", "postgresql"):
        spec = _spec(engine, "standalone", {})
        (member,) = get_engine(engine).members(spec)
        exporter = get_engine(engine).exporter(spec, member)
        assert exporter is not None
        args = exporter.arguments("127.0.0.1:1", "127.0.0.1:2")
        environment = exporter.environment("127.0.0.1:2")
        assert "${" not in " ".join(args) + " ".join(environment.values())
        assert "127.0.0.1:1" in " ".join(args)
        assert "127.0.0.1:2" in " ".join(args) + " ".join(environment.values())
        assert exporter.password_env not in environment
