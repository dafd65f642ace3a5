"""``kube.member_statefulset``: the member pod shape every engine renders through. The engines' golden
files pin its output for each engine; these tests pin the builder's own rules, whichever engine."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.kube import builders as kube
from middleware.models.common import Resources
from middleware.spec import ResolvedSpec
from tests.unit.manifests import assert_guaranteed_qos, assert_strict_valid, middleware_spec

SHARD = {kube.SHARD_LABEL: "1"}


def make_spec() -> ResolvedSpec:
    return middleware_spec(
        "cache", "shop", {"engine": "redis", "topology": "cluster", "shards": 3, "replicas": 2}
    )


def workload(**overrides: Any) -> kube.MemberWorkload:
    probe = kube.exec_probe(["true"], period=5, timeout=3, failure_threshold=3)
    fields: dict[str, Any] = {
        "name": "cache-shard-1",
        "component": "data",
        "service_name": "cache-headless",
        "replicas": 2,
        "pod_management_policy": kube.ORDERED_READY,
        "run_as": 999,
        "grace_seconds": 45,
        "templates_dir": "/etc/templates",
        "init_script": "set -eu\n",
        "init_env": [kube.env_from_field("POD_NAME", "metadata.name")],
        "init_mounts": [kube.volume_mount("secrets", "/etc/secrets")],
        "container_name": "server",
        "command": ["server", "--config", "/etc/server.conf"],
        "ports": [("client", 7000)],
        "mounts": [kube.volume_mount(kube.DATA_VOLUME, "/data")],
        "probes": {"startup": probe, "readiness": probe, "liveness": probe},
        "volumes": [kube.empty_dir_volume("secrets", size_limit="1Mi", memory=True)],
    }
    return kube.MemberWorkload(**{**fields, **overrides})


def test_templates_come_first_and_the_pod_is_strictly_valid() -> None:
    spec = make_spec()
    sts = kube.member_statefulset(spec, workload())
    assert_strict_valid([sts])
    pod = sts["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["sh", "-c", "set -eu\n"]
    assert init["volumeMounts"][0] == {
        "name": kube.TEMPLATES_VOLUME,
        "mountPath": "/etc/templates",
        "readOnly": True,
    }
    assert pod["volumes"][0] == {
        "name": kube.TEMPLATES_VOLUME,
        "configMap": {"name": kube.config_map_name(spec)},
    }
    assert [v["name"] for v in pod["volumes"]] == [kube.TEMPLATES_VOLUME, "secrets"]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 999
    assert pod["terminationGracePeriodSeconds"] == 45
    assert "lifecycle" not in pod["containers"][0]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == kube.DATA_VOLUME
    assert claim["spec"]["resources"]["requests"]["storage"] == spec.storage.size


def test_group_labels_reach_selector_claims_and_spread_groups_second() -> None:
    spec = make_spec()
    sts = kube.member_statefulset(spec, workload(group_labels=SHARD))
    assert sts["spec"]["selector"]["matchLabels"][kube.SHARD_LABEL] == "1"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"][kube.SHARD_LABEL] == "1"
    terms = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [(t["weight"], t["podAffinityTerm"]["labelSelector"]["matchLabels"]) for t in terms] == [
        (100, kube.selector_labels(spec, "data", SHARD)),
        (50, kube.selector_labels(spec, "data")),
    ]


def test_resources_override_applies_to_every_container_and_pre_stop_to_the_server() -> None:
    small = Resources(cpu="100m", memory="64Mi")
    sts = kube.member_statefulset(
        make_spec(), workload(resources=small, pre_stop=["server", "stop"], storage_size="64Mi")
    )
    pod = sts["spec"]["template"]["spec"]
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert_guaranteed_qos(c, c["name"])
        assert c["resources"]["limits"] == {"cpu": "100m", "memory": "64Mi"}, c["name"]
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"exec": {"command": ["server", "stop"]}}}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "64Mi"


def test_a_memory_volume_without_a_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'secrets'.*sizeLimit"):
        kube.empty_dir_volume("secrets", memory=True)
    assert kube.empty_dir_volume("scratch") == {"name": "scratch", "emptyDir": {}}
