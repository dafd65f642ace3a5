"""The redis-shake planner, its configs (v4 and v3) and the Kubernetes objects that run it."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import kubernetes_validate
import pytest

from middleware.endpoints import Endpoint
from middleware.errors import SpecError
from middleware.models.sync import RedisEndpointKind, SyncDirection, SyncFilter
from sync.plan import RedisTopology, Replica, Shard, plan, plan_direction, reverse, standalone
from sync.shake_config import SHAKE_KEYS, manifests, render_v3, render_v4

K8S_VERSIONS = ("1.30", "1.37")
PASSWORD = 'p"a$s \\ word'


def ep(host: str, port: int = 6379) -> Endpoint:
    return Endpoint(host, port)


# The DCE scenario: a 3-shard cluster source, a 3-replica sentinel target.
SOURCE = RedisTopology(
    RedisEndpointKind.CLUSTER,
    (
        Shard(ep("src-0"), (Replica(ep("src-0r"), True),), ((0, 5460),)),
        Shard(ep("src-1"), (Replica(ep("src-1r"), False),), ((5461, 10922),)),  # replica down
        Shard(ep("src-2"), (), ((10923, 16383),)),  # no replica
    ),
)
TARGET = RedisTopology(
    RedisEndpointKind.SENTINEL,
    (Shard(ep("dst-1"), (Replica(ep("dst-0"), True), Replica(ep("dst-2"), True))),),
    sentinels=(ep("s-0", 26379), ep("s-1", 26379), ep("s-2", 26379)),
    master_name="mymaster",
)


def test_cluster_source_gets_one_workload_per_shard_reading_healthy_replicas() -> None:
    workloads = plan("orders", SOURCE, TARGET)
    assert [w.name for w in workloads] == ["orders-shard-0", "orders-shard-1", "orders-shard-2"]
    assert [(w.reader, w.reads_replica) for w in workloads] == [
        (ep("src-0r"), True),
        (ep("src-1"), False),
        (ep("src-2"), False),
    ]
    assert [w.source_master for w in workloads] == [ep("src-0"), ep("src-1"), ep("src-2")]
    writer = workloads[0].writer
    # The sentinel target is written at the master resolved now; name and sentinels kept for re-plans.
    assert (writer.kind, writer.address, writer.master_name) == (
        RedisEndpointKind.SENTINEL,
        ep("dst-1"),
        "mymaster",
    )
    assert len(writer.sentinels) == 3 and not writer.cluster


def test_reverse_reads_the_sentinel_target_and_writes_the_cluster() -> None:
    (workload,) = reverse("orders", SOURCE, TARGET)
    assert workload.name == "orders-reverse" and workload.direction is SyncDirection.REVERSE
    assert workload.reader == ep("dst-0")  # first healthy replica, sorted
    assert workload.writer.cluster and workload.writer.addresses == (ep("src-0"), ep("src-1"), ep("src-2"))
    assert plan_direction("orders", SOURCE, TARGET, None, SyncDirection.REVERSE) == [workload]
    assert plan_direction("orders", SOURCE, TARGET, None, SyncDirection.STOPPED) == []


def test_bad_plans_are_refused() -> None:
    with pytest.raises(SpecError, match="allowDbs"):
        plan("x", SOURCE, TARGET, SyncFilter(allow_dbs=[1]))
    with pytest.raises(SpecError, match="same Redis"):
        plan("x", standalone(ep("a")), standalone(ep("a")))
    with pytest.raises(SpecError, match="DNS label"):
        plan("Upper_case", standalone(ep("a")), standalone(ep("b")))
    with pytest.raises(ValueError, match="sentinels"):
        RedisTopology(RedisEndpointKind.SENTINEL, (Shard(ep("a")),))


def _as_redis_shake_reads(text: str) -> dict:
    """What v4 parses: envsubst (a8m/envsubst) turns `$$` into `$` before the TOML parser runs."""
    assert "${" not in text.replace("$$", "")
    return tomllib.loads(text.replace("$$", "$"))


def test_v4_config_is_toml_with_the_documented_keys_and_escaped_password() -> None:
    workload = plan(
        "orders", SOURCE, TARGET, SyncFilter(allow_key_prefixes=["user:"], block_key_prefixes=["tmp:"])
    )[0]
    text = render_v4(workload, source_password=PASSWORD, target_password="t")
    # redis-shake v4 runs the file through envsubst first, where `$$` is a literal `$`.
    assert "a$$s" in text
    doc = _as_redis_shake_reads(text)
    assert set(doc) == {"sync_reader", "redis_writer", "filter", "advanced"}
    assert doc["sync_reader"] == {
        "cluster": False,
        "address": "src-0r:6379",
        "username": "",
        "password": PASSWORD,
        "tls": False,
        "sync_rdb": True,
        "sync_aof": True,
    }
    assert doc["redis_writer"]["address"] == "dst-1:6379" and doc["redis_writer"]["cluster"] is False
    # The heartbeat keys pass an allow-list too, or a filtered sync has no lag in seconds.
    assert doc["filter"] == {
        "allow_key_prefix": ["user:", "__moorage_sync__:heartbeat:"],
        "block_key_prefix": ["tmp:"],
    }
    assert doc["advanced"]["status_port"] == 8080
    assert doc["advanced"]["rdb_restore_command_behavior"] == "rewrite"
    # Every key rendered comes from the one table.
    table = {(section, key) for section, key in SHAKE_KEYS["v4"].values()}
    assert {(section, key) for section in doc for key in doc[section]} <= table


def test_v3_config_and_its_filter_refusal() -> None:
    (workload,) = reverse("orders", SOURCE, TARGET)
    doc = tomllib.loads(render_v3(workload, source_password=None, target_password=PASSWORD))
    assert doc["type"] == "sync"
    assert doc["source"]["address"] == "dst-0:6379"
    assert doc["target"] == {
        "type": "cluster",
        "address": "src-0:6379",
        "username": "",
        "password": PASSWORD,
        "tls": False,
    }
    assert "version" not in doc["source"]
    table = {(section, key) for section, key in SHAKE_KEYS["v3"].values()}
    rendered = {("", k) for k, v in doc.items() if not isinstance(v, dict)}
    rendered |= {(s, k) for s, v in doc.items() if isinstance(v, dict) for k in v}
    assert rendered <= table
    filtered = plan("orders", SOURCE, TARGET, SyncFilter(allow_key_prefixes=["a"]))[0]
    with pytest.raises(SpecError, match="Lua"):
        render_v3(filtered, source_password=None, target_password=None)


def _objects() -> list[dict[str, Any]]:
    workloads = plan("orders", SOURCE, TARGET)
    configs = {w.name: render_v4(w, source_password=PASSWORD, target_password=PASSWORD) for w in workloads}
    return manifests(workloads, "sync", configs)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_strict_schema_validation(version: str) -> None:
    for manifest in _objects():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_manifests_keep_the_rules() -> None:
    objects = _objects()
    assert [o["kind"] for o in objects] == ["Secret", "Deployment"] * 3
    for secret, deployment in zip(objects[::2], objects[1::2], strict=True):
        # The config with passwords lives in a Secret only; nothing else carries the password.
        config = _as_redis_shake_reads(base64.b64decode(secret["data"]["shake.toml"]).decode())
        assert config["sync_reader"]["password"] == config["redis_writer"]["password"] == PASSWORD
        assert PASSWORD not in str(deployment)
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        (container,) = spec["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "status", "containerPort": 8080, "protocol": "TCP"}]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # Guaranteed QoS
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert volumes["config"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_v3_workloads_have_no_status_port_or_probes() -> None:
    workloads = plan("orders", SOURCE, TARGET)
    configs = {w.name: render_v3(w, source_password=PASSWORD, target_password=PASSWORD) for w in workloads}
    deployments = [
        m for m in manifests(workloads, "sync", configs, shake_version="v3") if m["kind"] == "Deployment"
    ]
    assert deployments
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "ports" not in container
        assert not {"readinessProbe", "startupProbe", "livenessProbe"} & set(container)
