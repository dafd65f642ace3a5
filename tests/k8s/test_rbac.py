"""The operator's ServiceAccount can do what the operator needs and nothing it must not.

A real token for ``moorage-system/moorage-operator`` comes from the TokenRequest API; every check is
the apiserver's own answer to that token (SelfSubjectReview, SelfSubjectAccessReview,
SelfSubjectRulesReview) under the RBAC in deploy/. The last test runs the real operator with only
that token and watches it reconcile a Middleware.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.controlplane import REPO_ROOT, ControlPlane, free_port
from tests.k8s.install import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    install,
    service_account_token,
    token_kubeconfig,
    wait_for,
)

pytestmark = pytest.mark.k8s

# (verb, group, resource, subresource, namespaced): what the operator does. "" namespace = cluster-wide.
ALLOWED = [
    *[(v, "moorage.io", "middlewares", "", True) for v in ("get", "list", "watch", "patch", "update")],
    ("patch", "moorage.io", "middlewares", "status", True),
    ("update", "moorage.io", "middlewares", "finalizers", True),
    ("list", "moorage.io", "middlewares", "", False),
    ("watch", "moorage.io", "middlewarecatalogs", "", False),
    ("patch", "moorage.io", "redissyncs", "status", True),
    ("create", "moorage.io", "middlewarebackups", "", True),
    ("patch", "moorage.io", "middlewarerestores", "status", True),
    *[(v, "apps", "statefulsets", "", True) for v in ("create", "patch", "delete", "watch")],
    # RedisSync: redis-shake Deployments, and the RedisSyncs they are owned by
    *[(v, "apps", "deployments", "", True) for v in ("get", "list", "create", "patch", "delete")],
    *[(v, "moorage.io", "redissyncs", "", True) for v in ("get", "list", "watch", "patch")],
    ("update", "moorage.io", "redissyncs", "finalizers", True),
    *[
        (v, "", r, "", True)
        for r in ("services", "configmaps", "secrets")
        for v in ("create", "get", "patch")
    ],
    ("create", "policy", "poddisruptionbudgets", "", True),
    *[(v, "", "pods", "", True) for v in ("get", "list", "watch", "patch")],
    ("create", "", "pods", "eviction", True),  # a rolling restart, one budgeted eviction at a time
    *[(v, "", "persistentvolumeclaims", "", True) for v in ("get", "list", "patch", "delete")],
    *[(v, "batch", "jobs", "", True) for v in ("create", "get", "delete", "watch")],
    # the backup/restore Jobs' ServiceAccount and its RoleBinding (to moorage-backup-job only)
    *[(v, "", "serviceaccounts", "", True) for v in ("get", "create")],
    *[(v, "rbac.authorization.k8s.io", "rolebindings", "", True) for v in ("get", "create")],
    ("create", "", "events", "", True),
    ("create", "events.k8s.io", "events", "", True),
    *[(v, "kopf.dev", "clusterkopfpeerings", "", False) for v in ("get", "list", "watch", "patch")],
    ("patch", "kopf.dev", "kopfpeerings", "", True),
    *[(v, "apiextensions.k8s.io", "customresourcedefinitions", "", False) for v in ("get", "list", "watch")],
    *[(v, "", "namespaces", "", False) for v in ("list", "watch")],
]
DENIED = [
    ("create", "", "pods", "exec", True),
    ("get", "", "pods", "exec", True),
    ("create", "", "pods", "attach", True),
    ("create", "", "pods", "portforward", True),
    ("create", "", "pods", "", True),
    ("delete", "", "pods", "", True),
    ("get", "", "nodes", "", False),
    ("list", "", "nodes", "", False),
    ("delete", "", "namespaces", "", False),
    ("create", "", "namespaces", "", False),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", False),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", False),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", False),
    ("delete", "rbac.authorization.k8s.io", "rolebindings", "", True),
    ("create", "rbac.authorization.k8s.io", "roles", "", True),
    ("impersonate", "", "users", "", False),
    ("impersonate", "", "serviceaccounts", "", True),
    ("create", "", "serviceaccounts", "token", True),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", False),
    ("delete", "apiextensions.k8s.io", "customresourcedefinitions", "", False),
    ("delete", "moorage.io", "middlewares", "", True),
    ("create", "moorage.io", "middlewares", "", True),
    ("create", "moorage.io", "redissyncs", "", True),
    ("delete", "moorage.io", "redissyncs", "", True),
    ("create", "apps", "daemonsets", "", True),
    ("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", False),
    ("get", "certificates.k8s.io", "certificatesigningrequests", "", False),
    ("*", "*", "*", "", False),
]


@pytest.fixture(scope="module")
def sa_client(control_plane: ControlPlane, crds: list[str]) -> Iterator[Any]:
    """A kubernetes client authenticated by nothing but the operator ServiceAccount's token."""
    from kubernetes import client

    install(control_plane)
    token = service_account_token(control_plane)
    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_file)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()


def _can(api: Any, verb: str, group: str, resource: str, subresource: str, namespaced: bool) -> bool:
    from kubernetes import client

    attributes: dict[str, Any] = {"verb": verb, "group": group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if namespaced:
        attributes["namespace"] = "some-team"
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": attributes}}
    )
    return bool(review.status.allowed)


def _label(check: tuple[str, str, str, str, bool]) -> str:
    verb, group, resource, sub, namespaced = check
    return (
        f"{verb} {group or 'core'}/{resource}{'/' + sub if sub else ''}{'' if namespaced else ' (cluster)'}"
    )


def test_token_is_the_operator_service_account(sa_client: Any) -> None:
    from kubernetes import client

    review = client.AuthenticationV1Api(sa_client).create_self_subject_review({"metadata": {}})
    assert review.status.user_info.username == f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"


@pytest.mark.parametrize("check", ALLOWED, ids=_label)
def test_operator_can(sa_client: Any, check: tuple[str, str, str, str, bool]) -> None:
    assert _can(sa_client, *check), f"the operator needs: {_label(check)}"


@pytest.mark.parametrize("check", DENIED, ids=_label)
def test_operator_cannot(sa_client: Any, check: tuple[str, str, str, str, bool]) -> None:
    assert not _can(sa_client, *check), f"the operator must not be able to: {_label(check)}"


def test_rules_review_lists_no_wildcard(sa_client: Any) -> None:
    from kubernetes import client

    review = client.AuthorizationV1Api(sa_client).create_self_subject_rules_review(
        {"spec": {"namespace": "some-team"}}
    )
    rules = review.status.resource_rules
    assert any("statefulsets" in (r.resources or []) for r in rules), "deploy/ grants are not in effect"
    for rule in rules:
        assert "*" not in (rule.verbs or []) or rule.resources == ["selfsubjectreviews"], rule
        assert "*" not in (rule.resources or []), rule


# --- the real proof: the operator runs with nothing but this RBAC ----------------------------------


def test_operator_reconciles_with_only_the_deploy_rbac(
    control_plane: ControlPlane, sa_client: Any, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client

    kubeconfig = token_kubeconfig(
        control_plane, service_account_token(control_plane), tmp_path / "sa.kubeconfig"
    )
    metrics_port, health_port = free_port(), free_port()
    log_path = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    argv = [
        sys.executable, "-m", "operators.cli.operator_command", "--all-namespaces", "--peering=moorage",
        f"--liveness=http://127.0.0.1:{health_port}/healthz",
        f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1",
    ]  # fmt: skip
    with log_path.open("wb") as log, _running(argv, env, log) as operator:
        body = {
            "apiVersion": "moorage.io/v1alpha1",
            "kind": "Middleware",
            "metadata": {"name": f"r-{uuid.uuid4().hex[:6]}"},
            "spec": {"engine": "redis", "topology": "standalone"},
        }
        custom: Any = client.CustomObjectsApi(api_client)
        created = custom.create_namespaced_custom_object(
            "moorage.io", "v1alpha1", namespace, "middlewares", body
        )
        name = created["metadata"]["name"]
        apps: Any = client.AppsV1Api(api_client)

        def statefulsets() -> list[Any]:
            if operator.poll() is not None:
                raise AssertionError(
                    f"operator exited {operator.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            return list(apps.list_namespaced_stateful_set(namespace).items)

        sets = wait_for(f"StatefulSets of Middleware {name}", statefulsets, timeout=180)
        assert all(s.metadata.owner_references[0].name == name for s in sets)

        def status() -> dict[str, Any] | None:
            current = custom.get_namespaced_custom_object(
                "moorage.io", "v1alpha1", namespace, "middlewares", name
            )
            observed = (current.get("status") or {}).get("observedGeneration")
            return current["status"] if observed == current["metadata"]["generation"] else None

        written = wait_for(f"status.observedGeneration of Middleware {name}", status, timeout=180)
        assert written["phase"], written
        # deploy/ carries no peering object (one-pass install): the operator made its own.
        peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "moorage")
        assert peering["metadata"]["name"] == "moorage"
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert b"moorage_reconcile_total" in response.read()
    text = log_path.read_text(errors="replace")
    # A refusal reads "Forbidden" or a 403 status code; a bare "403" also occurs in uids and timestamps.
    refused = re.search(r"forbidden|[\s(:'\"]403[\s)'\",}\]]", text, re.IGNORECASE)
    assert refused is None, f"the operator was refused something:\n{text[-3000:]}"


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str], log: Any) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
