"""Every member exports Prometheus metrics on real pods (docs/monitoring.md): the exporter sidecar
from the local cluster's exporter images (Debian's packages, hack/build-images.sh), or ZooKeeper's
provider inside the server, scraped from the host through the NAME-metrics Service's endpoints, the
address each member's status gives, and a Middleware whose monitoring is turned off rolling its pods
without the sidecar and losing the Service."""

from __future__ import annotations

import time
from typing import Any

import pytest

from middleware.runtime.kubernetes import DISCOVERY_TTL_SECONDS
from tests.e2e.cluster import LocalCluster, wait_for
from tests.pod_monitor_crd import POD_MONITOR_CRD
from tests.prometheus_scrape import scrape

pytestmark = pytest.mark.e2e

RESOURCES = {"cpu": "150m", "memory": "256Mi"}
STORAGE = {"size": "256Mi"}


def metrics_endpoints(cluster: LocalCluster, namespace: str, name: str) -> dict[str, tuple[str, int]]:
    """Pod name -> (pod IP, port) from the metrics Service's endpoints, ready or not."""
    endpoints = cluster.core.read_namespaced_endpoints(f"{name}-metrics", namespace)
    found = {}
    for subset in endpoints.subsets or []:
        (port,) = [p.port for p in subset.ports if p.name == "metrics"]
        for address in [*(subset.addresses or []), *(subset.not_ready_addresses or [])]:
            found[address.target_ref.name] = (address.ip, port)
    return found


def _create(cluster: LocalCluster, namespace: str, name: str, engine: str, **extra: Any) -> dict[str, Any]:
    spec = {"engine": engine, "topology": "standalone", "resources": RESOURCES, "storage": STORAGE, **extra}
    cluster.create_middleware(namespace, name, spec)
    return cluster.wait_ready(namespace, name, timeout=300)


@pytest.mark.parametrize(
    ("engine", "port", "series"), [("redis", 9121, "redis_up"), ("postgresql", 9187, "pg_up")]
)
def test_each_member_pod_serves_its_engines_metrics(
    local_cluster: LocalCluster, namespace: str, engine: str, port: int, series: str
) -> None:
    name = {"redis": "cache", "postgresql": "notes"}[engine]
    middleware = _create(local_cluster, namespace, name, engine)
    (member,) = middleware["status"]["members"]
    host, _, metrics_port = member["metrics"].rpartition(":")
    assert int(metrics_port) == port and host == member["address"].rpartition(":")[0]
    endpoints = wait_for(
        f"{name}-metrics endpoints", lambda: metrics_endpoints(local_cluster, namespace, name), 60
    )
    assert set(endpoints) == {member["name"]}
    ip, service_port = endpoints[member["name"]]
    assert service_port == port
    samples = wait_for(f"{series} 1", lambda: (s := scrape(f"{ip}:{port}")).get(series) == 1 and s, 60)
    if engine == "redis":
        assert samples["redis_connected_clients"] >= 1
    else:
        assert any(s.startswith("pg_stat_database_xact_commit{") for s in samples)
    pod = local_cluster.core.read_namespaced_pod(member["name"], namespace)
    assert [c.name for c in pod.spec.containers][1:] == ["metrics"]


def test_zookeeper_serves_metrics_from_its_own_process(local_cluster: LocalCluster, namespace: str) -> None:
    """ZooKeeper's Prometheus provider in the server's JVM (its jars in the zookeeper image): no
    sidecar, the main container's `metrics` port behind the NAME-metrics Service."""
    spec = {
        "engine": "zookeeper",
        "topology": "ensemble",
        "replicas": 1,
        "resources": {"cpu": "200m", "memory": "384Mi"},
        "storage": STORAGE,
    }
    local_cluster.create_middleware(namespace, "coord", spec)
    middleware = local_cluster.wait_ready(namespace, "coord", timeout=300)
    (member,) = middleware["status"]["members"]
    assert member["metrics"] == f"{member['address'].rpartition(':')[0]}:7000"
    endpoints = wait_for(
        "coord-metrics endpoints", lambda: metrics_endpoints(local_cluster, namespace, "coord"), 60
    )
    ip, port = endpoints[member["name"]]
    assert port == 7000
    samples = wait_for("znode_count", lambda: (s := scrape(f"{ip}:{port}")).get("znode_count") and s, 60)
    assert samples["quorum_size"] == 1
    assert any(s.startswith("jvm_memory_bytes_used{") for s in samples)
    pod = local_cluster.core.read_namespaced_pod(member["name"], namespace)
    assert [c.name for c in pod.spec.containers] == ["zookeeper"]


def test_monitoring_turned_off_rolls_the_pods_without_the_exporter(
    local_cluster: LocalCluster, namespace: str
) -> None:
    """With the Prometheus Operator's CRD installed, the PodMonitor comes and goes with the exporters."""
    local_cluster.apply(POD_MONITOR_CRD)
    try:
        local_cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/" + POD_MONITOR_CRD["metadata"]["name"],
        )
        # The operator looks the kind up again after 10 s (middleware/runtime/kubernetes.py).
        time.sleep(DISCOVERY_TTL_SECONDS + 2)
        _turn_monitoring_off(local_cluster, namespace)
    finally:
        local_cluster.kubectl(
            "delete", "crd", POD_MONITOR_CRD["metadata"]["name"], "--wait=false", check=False
        )


def _pod_monitor(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, "podmonitors", f"{name}-metrics"
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def _turn_monitoring_off(cluster: LocalCluster, namespace: str) -> None:
    name = "quiet"
    middleware = _create(cluster, namespace, name, "redis")
    generation = middleware["metadata"]["generation"]
    wait_for("the metrics endpoints", lambda: metrics_endpoints(cluster, namespace, name), 60)
    monitor = _pod_monitor(cluster, namespace, name)
    assert monitor is not None and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"

    cluster.patch_middleware(namespace, name, {"monitoring": {"enabled": False}})
    cluster.wait_ready(namespace, name, timeout=300, generation_at_least=generation + 1)

    def rolled() -> bool:
        pods = cluster.pods(namespace, f"app.kubernetes.io/instance={name}")
        return bool(pods) and all(
            [c.name for c in p.spec.containers] == ["redis"] and p.status.phase == "Running" for p in pods
        )

    wait_for("the pod without its exporter", rolled, 300, interval=2)
    services = [s.metadata.name for s in cluster.core.list_namespaced_service(namespace).items]
    assert f"{name}-metrics" not in services
    assert _pod_monitor(cluster, namespace, name) is None
    (member,) = cluster.wait_ready(namespace, name)["status"]["members"]
    assert "metrics" not in member
