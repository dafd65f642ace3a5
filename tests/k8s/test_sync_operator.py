"""RedisSync under the operator, on a real kube-apiserver and controller-manager.

The two Middlewares' pods are backed by real redis-server / redis-sentinel processes on 127.0.0.1
(the address seam, as in test_operator.py), so the operator plans from the topology the servers
report. The redis-shake pods themselves never run here: there is no kubelet, and no redis-shake
binary can be installed in this environment. What is checked is everything the operator does around
them: the Deployments and config Secrets it applies, what the configs point at (checked against the
real servers), direction changes, and a re-plan after a real source failover.
"""

from __future__ import annotations

import base64
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from middleware.endpoints import Endpoint
from tests.integration.harness import require_binary
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kopf_support import (
    GROUP,
    VERSION,
    apps_api,
    core_api,
    custom_api,
    make_pods_ready,
    middleware,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.k8s

FAST = {
    "MOORAGE_SYNC_SUPERVISE_SECONDS": "1",
    "MOORAGE_MEMBER_RETRY_SECONDS": "1",
    "MOORAGE_BOOTSTRAP_RETRY_SECONDS": "3",
    "MOORAGE_API_ERROR_RETRY_SECONDS": "5",
    "MOORAGE_OBSERVE_INTERVAL_SECONDS": "2",
}
PLURALS = ("redissyncs", "middlewares")
SHAKE = {"app.kubernetes.io/name": "redis-shake"}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def operator(control_plane: ControlPlane, api_client: Any, namespace: str) -> AbstractContextManager[Any]:
    """``kopf run -m operators.main`` watching ``namespace``, with this module's fast timers."""
    return running_operator(
        control_plane, api_client, namespace, env=FAST, plurals=PLURALS, cleanup_timeout=90
    )


@contextmanager
def local_sides(state_dir: Path, manifests: list[dict[str, Any]]) -> Iterator[tuple[Any, list[Any]]]:
    """Like kopf_support.local_members, for several Middlewares at once: their members are real
    processes, and the operator's address seam maps each pod to its process."""
    from middleware.runtime.local import LocalRuntime
    from operators.kube import context
    from tests.k8s import kopf_support

    local = LocalRuntime(state_dir)
    saved = context.address_resolver
    kopf_support._local_endpoints.clear()
    specs: list[Any] = []
    try:
        for manifest in manifests:
            specs.append(kopf_support.start_local_members(local, manifest, timeout=90))

        def resolve_address(pod: str, host: str, port: int) -> Endpoint:
            found: Endpoint | None = kopf_support._local_endpoints.get(pod)
            return found if found is not None else Endpoint(host, port)

        context.address_resolver = resolve_address
        yield local, specs
    finally:
        context.address_resolver = saved
        kopf_support._local_endpoints.clear()
        for spec in specs:
            local.delete(spec.namespace, spec.name, purge=True)


def _namespaced(name: str, spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    manifest = middleware(name, spec)
    manifest["metadata"]["namespace"] = namespace
    return manifest


def _give_password(api_client: Any, local: Any, resolved: Any, namespace: str) -> str:
    """The operator never overwrites an existing credentials Secret: give it the processes' password."""
    from middleware.engines.registry import get_engine

    password: str = local.password(resolved)
    for secret in get_engine(resolved.engine).render_secrets(resolved, password):
        core_api(api_client).create_namespaced_secret(namespace, secret)
    return password


def _read_custom(api_client: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        found: dict[str, Any] = custom_api(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
        return found
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def _status(api_client: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return dict(_read_custom(api_client, namespace, plural, name).get("status") or {})


def _sync_events(api_client: Any, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = core_api(api_client).list_namespaced_event(namespace).items
    return [
        (e.type, e.reason, e.message or "")
        for e in items
        if e.involved_object.kind == "RedisSync" and e.involved_object.name == name
    ]


def _deployments(api_client: Any, namespace: str, sync: str) -> dict[str, Any]:
    selector = f"app.kubernetes.io/name=redis-shake,app.kubernetes.io/instance={sync}"
    items = apps_api(api_client).list_namespaced_deployment(namespace, label_selector=selector).items
    return {d.metadata.name: d for d in items if d.metadata.deletion_timestamp is None}


def _config_secrets(api_client: Any, namespace: str, sync: str) -> dict[str, Any]:
    selector = f"app.kubernetes.io/name=redis-shake,app.kubernetes.io/instance={sync}"
    items = core_api(api_client).list_namespaced_secret(namespace, label_selector=selector).items
    return {s.metadata.name: s for s in items if s.metadata.deletion_timestamp is None}


def _config(api_client: Any, namespace: str, workload: str) -> dict[str, Any]:
    secret = core_api(api_client).read_namespaced_secret(f"{workload}-config", namespace)
    return tomllib.loads(base64.b64decode(secret.data["shake.toml"]).decode("utf-8"))


def _role(address: str, password: str) -> tuple[str, int | None]:
    """(role, master port) as the server at ``address`` reports it."""
    import redis

    endpoint = Endpoint.parse(address)
    with redis.Redis(host=endpoint.host, port=endpoint.port, password=password) as client:
        info = client.info("replication")
    return str(info["role"]), (int(info["master_port"]) if info["role"] == "slave" else None)


def _masters_by_slots(address: str, password: str) -> dict[int, int]:
    """First slot of each shard -> its master's port, as the cluster reports it now."""
    import redis

    endpoint = Endpoint.parse(address)
    with redis.Redis(host=endpoint.host, port=endpoint.port, password=password) as client:
        slots = client.execute_command("CLUSTER", "SLOTS")
    return {int(entry[0]): int(entry[2][1]) for entry in slots}


def _phase(api_client: Any, namespace: str, plural: str, name: str, phase: str, timeout: float = 180) -> Any:
    def probe() -> dict[str, Any] | None:
        status = _status(api_client, namespace, plural, name)
        return status if status.get("phase") == phase else None

    return wait_for(f"{plural}/{name} phase {phase}", probe, timeout=timeout)


def _require_redis() -> None:
    require_binary("redis-server", "redis-server")
    require_binary("redis-sentinel", "redis-sentinel")


def test_redis_sync_forward_failover_reverse_and_stop(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    _require_redis()
    src, tgt, sync = _name("src"), _name("tgt"), _name("rs")
    # Three members per shard: after a failover the shard still has a replica to read from.
    src_spec = {"engine": "redis", "topology": "cluster", "shards": 3, "replicas": 3}
    tgt_spec = {"engine": "redis", "topology": "sentinel", "replicas": 2, "sentinels": 3}
    manifests = [_namespaced(src, src_spec, namespace), _namespaced(tgt, tgt_spec, namespace)]
    custom, apps = custom_api(api_client), apps_api(api_client)
    with local_sides(tmp_path / "local", manifests) as (local, (src_resolved, tgt_resolved)):
        src_password = _give_password(api_client, local, src_resolved, namespace)
        tgt_password = _give_password(api_client, local, tgt_resolved, namespace)
        with operator(control_plane, api_client, namespace):
            for name, spec in ((src, src_spec), (tgt, tgt_spec)):
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
                )
            pods = [f"{src}-shard-{i}-{j}" for i in range(3) for j in range(3)]
            pods += [f"{tgt}-0", f"{tgt}-1", *(f"{tgt}-sentinel-{i}" for i in range(3))]
            make_pods_ready(api_client, namespace, pods)
            _phase(api_client, namespace, "middlewares", src, "Ready")
            target_status = _phase(api_client, namespace, "middlewares", tgt, "Ready")
            target_master = target_status["endpoints"]["master"]

            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RedisSync",
                "metadata": {"name": sync},
                "spec": {
                    "source": {"middleware": {"name": src}},
                    "target": {"middleware": {"name": tgt}},
                    "direction": "Forward",
                },
            }
            created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", body)
            uid = created["metadata"]["uid"]

            # Forward: one workload per source shard, each reading a replica of its own shard
            forward = {f"{sync}-shard-{i}" for i in range(3)}
            wait_for(
                "3 forward Deployments",
                lambda: set(_deployments(api_client, namespace, sync)) == forward,
            )
            status = _phase(api_client, namespace, "redissyncs", sync, "Running", timeout=60)
            assert {w["name"] for w in status["workloads"]} == forward
            assert set(_config_secrets(api_client, namespace, sync)) == {f"{w}-config" for w in forward}
            for deployment in _deployments(api_client, namespace, sync).values():
                assert deployment.spec.replicas == 1
                assert deployment.spec.strategy.type == "Recreate"
                refs = deployment.metadata.owner_references or []
                assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [
                    ("RedisSync", sync, uid, True)
                ]
            for secret in _config_secrets(api_client, namespace, sync).values():
                refs = secret.metadata.owner_references or []
                assert [(r.kind, r.uid) for r in refs] == [("RedisSync", uid)]

            shard_masters = _masters_by_slots(_any_node(local, src_resolved), src_password)
            readers: dict[str, str] = {}
            for workload in forward:
                config = _config(api_client, namespace, workload)
                reader = config["sync_reader"]["address"]
                role, master_port = _role(reader, src_password)
                assert role == "slave", (workload, reader)
                readers[workload] = reader
                assert config["sync_reader"]["cluster"] is False
                assert config["sync_reader"]["password"] == src_password
                assert config["redis_writer"]["address"] == target_master
                assert config["redis_writer"]["cluster"] is False
                assert config["redis_writer"]["password"] == tgt_password
                entry = next(w for w in status["workloads"] if w["name"] == workload)
                assert entry["source"] == reader
                # shard i (slot order) is read from a replica of the master owning that shard's slots
                first_slot = sorted(shard_masters)[int(workload.rsplit("-", 1)[1])]
                assert master_port == shard_masters[first_slot], (workload, reader, shard_masters)
            assert len({_role(r, src_password)[1] for r in readers.values()}) == 3

            # A real source failover: the reader of shard 0 takes over its shard
            affected = f"{sync}-shard-0"
            old_reader = readers[affected]
            old_checksum = _checksum(apps, namespace, affected)
            _cluster_failover(old_reader, src_password)
            wait_for(f"{old_reader} promoted", lambda: _role(old_reader, src_password)[0] == "master")

            def replanned() -> dict[str, Any] | None:
                config = _config(api_client, namespace, affected)
                return config if config["sync_reader"]["address"] != old_reader else None

            config = wait_for(f"{affected} re-planned off {old_reader}", replanned, timeout=60)
            role, master_port = _role(config["sync_reader"]["address"], src_password)
            assert (role, master_port) == ("slave", Endpoint.parse(old_reader).port)
            # The pod template rolls: the config Secret and the Deployment are two API writes, and the
            # Secret (read above) may be written first.
            wait_for(
                f"{affected}'s pod template to roll",
                lambda: _checksum(apps, namespace, affected) != old_checksum,
                timeout=30,
            )
            # the other shards were not touched
            for workload in forward - {affected}:
                assert _config(api_client, namespace, workload)["sync_reader"]["address"] == readers[workload]
            replans = wait_for(
                "a Replanned Warning",
                lambda: [e for e in _sync_events(api_client, namespace, sync) if e[1] == "Replanned"],
            )
            assert all(kind == "Warning" and affected in message for kind, _, message in replans)
            assert any("SourceFailover: source master moved" in message for _, _, message in replans)

            def recorded() -> dict[str, Any] | None:
                workloads = _status(api_client, namespace, "redissyncs", sync).get("workloads") or []
                entry: dict[str, Any] = next((w for w in workloads if w["name"] == affected), {})
                return entry if entry.get("restarts", 0) >= 1 else None

            entry = wait_for("the re-plan recorded in status", recorded, timeout=30)
            # the failover, or (when no replica was healthy at that instant) the move back off the master
            assert (
                "source master moved" in entry["lastRestartReason"]
                or "healthy again" in entry["lastRestartReason"]
            )
            assert entry["source"] == config["sync_reader"]["address"]

            # Reverse: forward workloads go, one reverse workload reads the sentinel side into the cluster
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "redissyncs", sync, {"spec": {"direction": "Reverse"}}
            )
            reverse = f"{sync}-reverse"
            wait_for(
                "only the reverse Deployment",
                lambda: set(_deployments(api_client, namespace, sync)) == {reverse},
            )
            wait_for(
                "only the reverse config Secret",
                lambda: set(_config_secrets(api_client, namespace, sync)) == {f"{reverse}-config"},
            )
            config = _config(api_client, namespace, reverse)
            reader = config["sync_reader"]["address"]
            role, master_port = _role(reader, tgt_password)
            assert reader == target_master or (role, master_port) == (
                "slave",
                Endpoint.parse(target_master).port,
            )
            assert config["sync_reader"]["password"] == tgt_password
            assert config["redis_writer"]["cluster"] is True
            assert _role(config["redis_writer"]["address"], src_password)[0] == "master"
            assert config["redis_writer"]["password"] == src_password

            def reversed_status() -> dict[str, Any] | None:
                status = _status(api_client, namespace, "redissyncs", sync)
                names = [w["name"] for w in status.get("workloads") or []]
                return status if names == [reverse] and status.get("phase") == "Running" else None

            wait_for("status lists the reverse workload only", reversed_status, timeout=30)
            assert "WorkloadsDeleted" in {e[1] for e in _sync_events(api_client, namespace, sync)}

            # Stopped: nothing runs
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "redissyncs", sync, {"spec": {"direction": "Stopped"}}
            )
            wait_for("no Deployments left", lambda: not _deployments(api_client, namespace, sync))
            wait_for("no config Secrets left", lambda: not _config_secrets(api_client, namespace, sync))
            status = _phase(api_client, namespace, "redissyncs", sync, "Stopped", timeout=30)
            assert status["workloads"] == []


def _any_node(local: Any, resolved: Any) -> str:
    from middleware.engines.registry import get_engine

    return str(local.members(resolved, get_engine("redis"))[0].endpoint.address)


def _checksum(apps: Any, namespace: str, workload: str) -> str:
    deployment = apps.read_namespaced_deployment(workload, namespace)
    return str((deployment.spec.template.metadata.annotations or {})["moorage.io/config-checksum"])


def _cluster_failover(address: str, password: str) -> None:
    import redis

    endpoint = Endpoint.parse(address)
    with redis.Redis(host=endpoint.host, port=endpoint.port, password=password) as client:
        client.execute_command("CLUSTER", "FAILOVER")


def test_kubeconfig_on_an_addresses_side_is_refused_at_admission(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """Addresses are dialled as given; only a Middleware is looked up in another cluster (that path:
    test_sync_kubeconfig.py). The apiserver's CEL rule refuses the object, naming the field."""
    from kubernetes.client.exceptions import ApiException

    sync = _name("rs")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RedisSync",
        "metadata": {"name": sync},
        "spec": {
            "source": {
                "addresses": ["10.0.0.1:6379"],
                "kind": "standalone",
                "kubeconfig": {"name": "remote", "key": "config"},
            },
            "target": {"addresses": ["10.0.0.2:6379"], "kind": "standalone"},
        },
    }
    with pytest.raises(ApiException) as refused:
        custom_api(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", body)
    assert refused.value.status == 422
    text = str(refused.value.body)
    assert "spec.source.kubeconfig" in text and "kubeconfig is only valid with middleware" in text
    assert (
        custom_api(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs")["items"]
        == []
    )
