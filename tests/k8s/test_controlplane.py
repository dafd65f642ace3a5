"""Smoke tests on a real kube-apiserver: the CRDs' schemas and CEL rules as Kubernetes evaluates them,
and the manifests ``moorage render`` prints, applied and reconciled by the real StatefulSet controller.

No kubelet runs: pods are created but stay Pending, and a test that needs a Ready pod writes its status.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.controlplane import K8S_VERSION, REPO_ROOT, ControlPlane

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "moorage.io", "v1alpha1", "middlewares"
# every Middleware document in examples/ (other kinds, if any appear there, are not this test's business)
EXAMPLES = sorted(
    p.name
    for p in (REPO_ROOT / "examples").glob("*.yaml")
    if any(d and d.get("kind") == "Middleware" for d in yaml.safe_load_all(p.read_text()))
)
WAIT = 60.0


def _example(name: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((REPO_ROOT / "examples" / name).read_text())
    return next(d for d in docs if d and d.get("kind") == "Middleware")


def _middleware(spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Middleware",
        "metadata": {"name": name or f"mw-{uuid.uuid4().hex[:8]}"},
        "spec": spec,
    }


def _custom(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def _rejected(call: Callable[[], object]) -> tuple[int, str]:
    """Run a call that must fail; returns (HTTP status, the apiserver's message)."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        call()
    body = json.loads(info.value.body or "{}")
    return int(info.value.status or 0), str(body.get("message", info.value.body))


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------- the control plane itself


def test_apiserver_ready_and_versioned(control_plane: ControlPlane, api_client: Any) -> None:
    from kubernetes import client

    assert control_plane.get("/readyz") == (200, "ok")
    assert control_plane.get("/livez") == (200, "ok")
    assert client.VersionApi(api_client).get_code().git_version == K8S_VERSION
    core: Any = client.CoreV1Api(api_client)
    namespaces = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= namespaces
    # created by the controller-manager's serviceaccount controller: proof that it runs and reconciles
    core.read_namespaced_service_account("default", "default")


def test_everything_listens_on_loopback_only(control_plane: ControlPlane) -> None:
    """Each control-plane process's listening TCP sockets are bound to 127.0.0.1 (read from /proc)."""
    inodes: set[str] = set()
    for process in control_plane.processes:
        assert process.pid is not None
        fd_dir = f"/proc/{process.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                listening.append((table, local))
    assert listening, "found no listening sockets of the control plane"
    for table, local in listening:
        address = local.split(":")[0]
        loopback = address == "0100007F" if table.endswith("tcp") else address.endswith("0100007F")
        assert loopback, f"a control-plane socket listens on {local} in {table}"


# ---------------------------------------------------------------------------- CRDs and CEL


def test_crds_install_and_become_established(crds: list[str], api_client: Any) -> None:
    from kubernetes import client

    files = sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    assert len(crds) == len(files) >= 6
    ext: Any = client.ApiextensionsV1Api(api_client)
    for name in crds:
        crd = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)
    # the API is served: an empty list, not a 404
    assert _custom(api_client).list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


def _without_defaults(served: Any, sent: Any) -> Any:
    """The served object cut down to the keys that were sent (dicts recursively)."""
    if isinstance(served, dict) and isinstance(sent, dict):
        return {key: _without_defaults(served[key], sent[key]) for key in sent if key in served}
    return served


@pytest.mark.parametrize("example", EXAMPLES)
def test_valid_examples_are_accepted(crds: list[str], api_client: Any, namespace: str, example: str) -> None:
    body = _example(example)
    created = _custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert created["metadata"]["uid"]
    # what the example says is kept; the apiserver may add schema defaults beside it (backup.suspend)
    assert _without_defaults(created["spec"], body["spec"]) == body["spec"]
    # structural-schema defaults are applied by the apiserver
    assert created["spec"]["deletionPolicy"] == body["spec"].get("deletionPolicy", "Retain")


INVALID = [
    pytest.param(
        {"engine": "redis", "topology": "ensemble"},
        "topology does not suit engine redis",
        "spec.topology",
        id="redis-ensemble",
    ),
    pytest.param(
        {"engine": "redis", "topology": "sentinel", "replicas": 3, "sentinels": 3, "shards": 3},
        "shards is only valid for topology 'cluster'",
        "spec.shards",
        id="sentinel-with-shards",
    ),
    pytest.param(
        {"engine": "redis", "topology": "cluster", "shards": 3, "sentinels": 3},
        "sentinels is only valid for topology 'sentinel'",
        "spec.sentinels",
        id="cluster-with-sentinels",
    ),
    pytest.param(
        {"engine": "redis", "topology": "standalone", "replicas": 2},
        "replicas must be 1 for topology 'standalone'",
        "spec.replicas",
        id="standalone-with-replicas",
    ),
    pytest.param(
        {"engine": "zookeeper", "topology": "cluster"},
        "topology does not suit engine zookeeper",
        "spec.topology",
        id="zookeeper-cluster",
    ),
]


@pytest.mark.parametrize(("spec", "message", "field"), INVALID)
def test_cel_rules_reject_invalid_specs(
    crds: list[str], api_client: Any, namespace: str, spec: dict[str, Any], message: str, field: str
) -> None:
    custom = _custom(api_client)
    status, text = _rejected(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _middleware(spec))
    )
    assert status == 422, text
    assert message in text
    assert field in text  # the rule's fieldPath points at the offending field
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


def test_schema_bounds_are_enforced(crds: list[str], api_client: Any, namespace: str) -> None:
    spec = {"engine": "redis", "topology": "cluster", "shards": 65}
    status, text = _rejected(
        lambda: _custom(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _middleware(spec)
        )
    )
    assert status == 422
    assert "spec.shards" in text
    assert "64" in text


def test_engine_and_topology_are_immutable(crds: list[str], api_client: Any, namespace: str) -> None:
    custom = _custom(api_client)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _example("redis-cluster.yaml")
    )
    name = created["metadata"]["name"]

    changed = copy.deepcopy(created)
    changed["spec"]["engine"] = "postgresql"
    status, text = _rejected(
        lambda: custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, changed)
    )
    assert status == 422
    assert "engine is immutable" in text

    changed = copy.deepcopy(created)
    changed["spec"]["topology"] = "sentinel"
    changed["spec"].pop("shards")
    status, text = _rejected(
        lambda: custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, changed)
    )
    assert status == 422
    assert "topology is immutable" in text

    # a mutable field still updates: the transition rules do not freeze the whole spec
    scaled = copy.deepcopy(created)
    scaled["spec"]["replicas"] = 3
    updated = custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, scaled)
    assert updated["spec"]["replicas"] == 3
    assert updated["spec"]["engine"] == "redis"


# ---------------------------------------------------------------------------- rendered manifests


def _render(example: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "operators.cli",
            "render",
            "-f",
            str(REPO_ROOT / "examples" / example),
            "--with-secret",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rendered_cluster_applies_and_statefulsets_create_pods(
    control_plane: ControlPlane, api_client: Any
) -> None:
    from kubernetes import client

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found on PATH (it applies the rendered manifests server-side)")
    manifests = _render("redis-cluster.yaml")
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    statefulsets = [d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"]
    assert len(statefulsets) == 3
    assert {d["metadata"].get("namespace") for d in docs} == {"default"}

    apply = ("apply", "--server-side", "--field-manager=moorage-test", "-f", "-")
    dry = control_plane.kubectl(*apply, "--dry-run=server", input=manifests)
    assert dry.stdout.count("serverside-applied (server dry run)") == len(docs), dry.stdout
    real = control_plane.kubectl(*apply, input=manifests)
    assert real.stdout.count("serverside-applied") == len(docs), real.stdout

    core: Any = client.CoreV1Api(api_client)
    apps: Any = client.AppsV1Api(api_client)
    for sts in statefulsets:
        pod = _wait_for(f"pod {sts}-0", functools.partial(_read_pod, core, f"{sts}-0"))
        assert pod.status.phase == "Pending"  # no kubelet, no scheduler
        assert pod.metadata.owner_references[0].kind == "StatefulSet"
        assert pod.metadata.owner_references[0].name == sts
        # the volumeClaimTemplates became PVCs (Pending too: no storage provisioner)
        claims = [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim]
        for claim in claims:
            core.read_namespaced_persistent_volume_claim(claim, "default")
    # OrderedReady: the next ordinal waits for the previous pod to be Ready, which nothing makes it here
    time.sleep(2)
    assert _read_pod(core, f"{statefulsets[0]}-1") is None

    # Tests drive pod status themselves: mark shard-0's first pod Running+Ready, and the real
    # StatefulSet controller creates the next ordinal.
    _mark_ready(core, f"{statefulsets[0]}-0")
    _wait_for(f"pod {statefulsets[0]}-1", lambda: _read_pod(core, f"{statefulsets[0]}-1"))

    def one_ready_of_two() -> Any:
        # One status write may count the Ready pod before the controller has counted the pod it
        # created next (CI saw replicas 1 once): wait for the write that has both.
        status = apps.read_namespaced_stateful_set_status(statefulsets[0], "default").status
        return status if status.ready_replicas == 1 and (status.replicas or 0) >= 2 else None

    status = _wait_for("StatefulSet status.readyReplicas == 1 of replicas >= 2", one_ready_of_two)
    assert status.ready_replicas == 1 and status.replicas >= 2


def _read_pod(core: Any, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod(name, "default")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _mark_ready(core: Any, name: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    core.patch_namespaced_pod_status(
        name, "default", {"status": {"phase": "Running", "conditions": conditions}}
    )
