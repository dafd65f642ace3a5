"""RedisSync with a side in another cluster (``spec.source.kubeconfig``), on a real kube-apiserver.

There is one test control plane, so "the other cluster" is the same apiserver reached through a
second identity, standing in for a second cluster: a kubeconfig Secret whose credentials (a client
certificate for user ``cluster-b-reader``, or a ServiceAccount token) differ from the operator's
(admin), and whose RBAC reaches only one separate namespace (``cluster B``). The operator in these
tests could read everything with its own identity; a Forbidden answer naming the kubeconfig's
identity, and a rotated Secret changing the answer, prove the second client is the one used.

The remote Middleware's pods are backed by real redis-server processes on 127.0.0.1 (the address
seam, as in test_sync_operator.py), reachable *only* through the pod IPs the test gives the pods:
the seam maps a remote pod to its process when dialled at its ``status.podIP`` and to nothing
otherwise, so a plan made from pod DNS names cannot succeed. redis-shake itself never runs here.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from middleware.endpoints import Endpoint
from tests.example_files import document
from tests.integration.harness import free_port
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
from tests.k8s.test_sync_operator import (
    FAST,
    _config,
    _config_secrets,
    _deployments,
    _give_password,
    _masters_by_slots,
    _name,
    _namespaced,
    _phase,
    _require_redis,
    _role,
    _status,
    _sync_events,
    local_sides,
    operator,
)

pytestmark = pytest.mark.k8s

READER = "cluster-b-reader"
KEY = "config"


@pytest.fixture
def cluster_b(api_client: Any) -> Iterator[str]:
    """A namespace standing for the other cluster, with a Role that reads Middlewares, pods and
    Secrets there, bound to user ``cluster-b-reader`` (nothing else, nowhere else)."""
    from kubernetes import client

    core, rbac = core_api(api_client), client.RbacAuthorizationV1Api(api_client)
    name = f"b-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    rules = [
        {"apiGroups": ["moorage.io"], "resources": ["middlewares"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ]
    rbac.create_namespaced_role(name, {"metadata": {"name": "reader"}, "rules": rules})
    binding = {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": READER}],
    }
    rbac.create_namespaced_role_binding(name, binding)
    try:
        yield name
    finally:
        # The operator that put finalizers on cluster B's Middlewares no longer runs.
        custom = custom_api(api_client)
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, name, "middlewares")["items"]:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                name,
                "middlewares",
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )
        core.delete_namespace(name)


def _kubeconfig(plane: ControlPlane, user: dict[str, Any], server: str | None = None) -> str:
    """A kubeconfig with everything embedded (what a Secret must hold)."""
    ca = base64.b64encode(plane.ca_file.read_bytes()).decode()
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "b", "cluster": {"server": server or plane.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "b", "context": {"cluster": "b", "user": "u"}}],
            "current-context": "b",
        }
    )


def _client_cert_user(plane: ControlPlane, common_name: str, workdir: Path) -> dict[str, str]:
    """A client certificate for user ``common_name`` signed by the apiserver's client CA (the kind of
    credentials a kubeadm admin.conf holds)."""
    workdir.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "user.key")
    openssl("req", "-new", "-key", "user.key", "-subj", f"/CN={common_name}", "-out", "user.csr")
    ca, ca_key = str(plane.pki["ca_crt"]), str(plane.pki["ca_key"])
    openssl("x509", "-req", "-in", "user.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
            "-out", "user.crt")  # fmt: skip
    return {
        "client-certificate-data": base64.b64encode((workdir / "user.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((workdir / "user.key").read_bytes()).decode(),
    }


def _token_without_rights(plane: ControlPlane, api_client: Any, namespace: str) -> str:
    """A real bound token of a ServiceAccount no Role is bound to."""
    core_api(api_client).create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = plane.kubectl("create", "token", "nobody", "-n", namespace, "--duration=3600s").stdout.strip()
    assert token.count(".") == 2, "TokenRequest did not return a JWT"
    return token


def _put_secret(api_client: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    body = {"metadata": {"name": name}, "stringData": data}
    core = core_api(api_client)
    if any(s.metadata.name == name for s in core.list_namespaced_secret(namespace).items):
        core.replace_namespaced_secret(name, namespace, body)
    else:
        core.create_namespaced_secret(namespace, body)


def _sync(name: str, source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RedisSync",
        "metadata": {"name": name},
        "spec": {"source": source, "target": target, "direction": "Forward"},
    }


def _ready(api_client: Any, namespace: str, sync: str) -> dict[str, Any]:
    conditions = _status(api_client, namespace, "redissyncs", sync).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_remote_cluster_source_is_planned_from_its_pod_ips(
    control_plane: ControlPlane,
    api_client: Any,
    crds: list[str],
    namespace: str,
    cluster_b: str,
    tmp_path: Path,
) -> None:
    """The DCE shape: a 3-shard cluster in cluster B (the namespace ``cluster_b``, reconciled there by
    the operator watching only it) syncs into a sentinel deployment here. The RedisSync's source is
    read through a kubeconfig Secret for user cluster-b-reader (client certificate)."""
    from operators.kube import context

    _require_redis()
    src, tgt, sync = _name("src"), _name("tgt"), _name("rs")
    src_spec = {"engine": "redis", "topology": "cluster", "shards": 3, "replicas": 2}
    tgt_spec = {"engine": "redis", "topology": "sentinel", "replicas": 2, "sentinels": 3}
    manifests = [_namespaced(src, src_spec, cluster_b), _namespaced(tgt, tgt_spec, namespace)]
    custom = custom_api(api_client)
    src_pods = [f"{src}-shard-{i}-{j}" for i in range(3) for j in range(2)]
    with local_sides(tmp_path / "local", manifests) as (local, (src_resolved, _tgt_resolved)):
        seam = context.address_resolver  # pod name -> its process, whatever host is dialled
        src_password = _give_password(api_client, local, src_resolved, cluster_b)
        tgt_password = _give_password(api_client, local, _tgt_resolved, namespace)

        # Cluster B's own operator brings its Middleware to Ready, then stops (it is not ours).
        with running_operator(control_plane, api_client, cluster_b, env=FAST, plurals=()):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, cluster_b, "middlewares", middleware(src, src_spec)
            )
            make_pods_ready(api_client, cluster_b, src_pods)
            _phase(api_client, cluster_b, "middlewares", src, "Ready")

        # Pod IPs as cluster B's kubelet would report them; only these reach the remote processes.
        ips = {pod: f"10.77.0.{i + 10}" for i, pod in enumerate(src_pods)}
        for pod, ip in ips.items():
            core_api(api_client).patch_namespaced_pod_status(
                pod, cluster_b, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}
            )
        dialled: set[tuple[str, str]] = set()

        def by_pod_ip(pod: str, host: str, port: int) -> Endpoint:
            if pod in ips:
                dialled.add((pod, host))
                return seam(pod, host, port) if host == ips[pod] else Endpoint(host, port)
            return seam(pod, host, port)

        context.address_resolver = by_pod_ip
        reader_user = _client_cert_user(control_plane, READER, tmp_path / "pki")
        _put_secret(api_client, namespace, "cluster-b", {KEY: _kubeconfig(control_plane, reader_user)})

        with operator(control_plane, api_client, namespace):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(tgt, tgt_spec)
            )
            make_pods_ready(
                api_client, namespace, [f"{tgt}-0", f"{tgt}-1", *(f"{tgt}-sentinel-{i}" for i in range(3))]
            )
            target_master = _phase(api_client, namespace, "middlewares", tgt, "Ready")["endpoints"]["master"]

            # examples/redis-sync-other-cluster.yaml, with this test's names for the Middlewares,
            # the other cluster's namespace and the kubeconfig Secret.
            body = document("redis-sync-other-cluster.yaml", "RedisSync")
            body["metadata"]["name"] = sync
            body["spec"]["source"]["middleware"] = {"name": src, "namespace": cluster_b}
            body["spec"]["source"]["kubeconfig"] = {"name": "cluster-b", "key": KEY}
            body["spec"]["target"]["middleware"]["name"] = tgt
            uid = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", body)[
                "metadata"
            ]["uid"]

            workloads = {f"{sync}-shard-{i}" for i in range(3)}
            wait_for(
                "3 Deployments here", lambda: set(_deployments(api_client, namespace, sync)) == workloads
            )
            status = _phase(api_client, namespace, "redissyncs", sync, "Running", timeout=60)
            assert {w["name"] for w in status["workloads"]} == workloads
            # The workloads run in the RedisSync's cluster, owned by it; nothing is created in cluster B.
            for deployment in _deployments(api_client, namespace, sync).values():
                assert [(r.kind, r.uid) for r in deployment.metadata.owner_references or []] == [
                    ("RedisSync", uid)
                ]
            assert not apps_api(api_client).list_namespaced_deployment(cluster_b).items

            # Remote members were dialled at their pod IPs only, never at cluster B's pod DNS names.
            assert dialled and all(host == ips[pod] for pod, host in dialled), dialled
            remote_nodes = {str(m.endpoint.address) for m in local.members(src_resolved, _engine())}
            shard_masters = _masters_by_slots(sorted(remote_nodes)[0], src_password)
            for workload in workloads:
                config = _config(api_client, namespace, workload)
                reader = config["sync_reader"]["address"]
                assert reader in remote_nodes, (workload, reader)
                role, master_port = _role(reader, src_password)
                assert role == "slave", (workload, reader)
                first_slot = sorted(shard_masters)[int(workload.rsplit("-", 1)[1])]
                assert master_port == shard_masters[first_slot], (workload, reader, shard_masters)
                # the source password came from cluster B's credentials Secret
                assert config["sync_reader"]["password"] == src_password
                assert config["redis_writer"]["address"] == target_master
                assert config["redis_writer"]["password"] == tgt_password
            assert set(_config_secrets(api_client, namespace, sync)) == {f"{w}-config" for w in workloads}
            # no credential of the kubeconfig in status or events
            key_material = reader_user["client-key-data"][:40]
            assert key_material not in str(_status(api_client, namespace, "redissyncs", sync))
            assert key_material not in str(_sync_events(api_client, namespace, sync))


def _engine() -> Any:
    from middleware.engines.registry import get_engine

    return get_engine("redis")


def test_remote_side_errors_name_the_field_and_a_rotated_kubeconfig_is_used(
    control_plane: ControlPlane,
    api_client: Any,
    crds: list[str],
    namespace: str,
    cluster_b: str,
    tmp_path: Path,
) -> None:
    """Each broken kubeconfig side waits (phase Pending, Ready=False with a reason naming the kind of
    problem: KubeconfigUnusable, OtherClusterRefused, OtherClusterUnreachable; retried) with a
    message naming the field and the reason, and never a credential. The forbidden identity is a
    ServiceAccount token without any Role; rotating that Secret to cluster-b-reader's kubeconfig
    changes the answer to "Middleware not found in the other cluster" (there is none), so the
    operator built a new client from the Secret's new version."""
    token = _token_without_rights(control_plane, api_client, cluster_b)
    reader_user = _client_cert_user(control_plane, READER, tmp_path / "pki")
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/true"}}
    file_user = {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
    secrets = {
        "no-key": {"other": "x"},
        "not-yaml": {KEY: "clusters: [unclosed\n  token: tok-not-to-be-shown"},
        "exec": {KEY: _kubeconfig(control_plane, exec_user)},
        "token-file": {KEY: _kubeconfig(control_plane, file_user)},
        "forbidden": {KEY: _kubeconfig(control_plane, {"token": token})},
        "unreachable": {
            KEY: _kubeconfig(control_plane, {"token": token}, f"https://127.0.0.1:{free_port()}")
        },
    }
    for name, data in secrets.items():
        _put_secret(api_client, namespace, name, data)
    missing = _name("src")
    expected = {
        "absent": ["spec.source.kubeconfig.name:", f"Secret {namespace}/absent not found"],
        "no-key": ["spec.source.kubeconfig.key:", "no key 'config'"],
        "not-yaml": ["spec.source.kubeconfig:", "Secret not-yaml key 'config'", "not valid YAML (line"],
        "exec": ["spec.source.kubeconfig:", "sets exec: refused"],
        "token-file": ["spec.source.kubeconfig:", "sets tokenFile: refused"],
        "forbidden": [
            "spec.source.kubeconfig:",
            f"forbids get middlewares.moorage.io {missing} in namespace {cluster_b} (403 Forbidden)",
            "system:serviceaccount:" + cluster_b + ":nobody",
        ],
        "unreachable": ["spec.source.kubeconfig:", "the other cluster's API is unreachable"],
    }
    # The condition reason says where the fix is: the Secret here, or RBAC / the network over there.
    reasons = dict.fromkeys(("absent", "no-key", "not-yaml", "exec", "token-file"), "KubeconfigUnusable")
    reasons.update(forbidden="OtherClusterRefused", unreachable="OtherClusterUnreachable")
    target = {"addresses": ["10.0.0.2:6379"], "kind": "standalone"}
    custom = custom_api(api_client)
    with operator(control_plane, api_client, namespace):
        for secret in expected:
            source = {
                "middleware": {"name": missing, "namespace": cluster_b},
                "kubeconfig": {"name": secret, "key": KEY},
            }
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "redissyncs", _sync(f"rs-{secret}", source, target)
            )
        for secret, parts in expected.items():
            sync = f"rs-{secret}"

            def waiting(sync: str = sync, reason: str = reasons[secret]) -> dict[str, Any] | None:
                ready = _ready(api_client, namespace, sync)
                return ready if ready.get("reason") == reason else None

            ready = wait_for(f"{sync} waiting for its sides", waiting, timeout=60)
            assert ready["status"] == "False"
            assert all(part in ready["message"] for part in parts), (sync, ready["message"])
            assert _status(api_client, namespace, "redissyncs", sync)["phase"] == "Pending"
            assert not _deployments(api_client, namespace, sync)
            seen = str(_status(api_client, namespace, "redissyncs", sync)) + str(
                _sync_events(api_client, namespace, sync)
            )
            assert token not in seen and "tok-not-to-be-shown" not in seen

        # Rotate the forbidden Secret to an identity that may read cluster B.
        _put_secret(api_client, namespace, "forbidden", {KEY: _kubeconfig(control_plane, reader_user)})

        def rotated() -> dict[str, Any] | None:
            ready = _ready(api_client, namespace, "rs-forbidden")
            return (
                ready
                if "not found in the cluster of spec.source.kubeconfig" in ready.get("message", "")
                else None
            )

        ready = wait_for("the rotated kubeconfig used", rotated, timeout=60)
        assert f"spec.source.middleware: Middleware {cluster_b}/{missing} not found" in ready["message"]
        assert ready["reason"] == "WaitingForSides"
