"""A DBA's seat on the cluster: the ``moorage`` CLI in a pod of Moorage's image, as a ServiceAccount
bound to deploy/rbac.yaml's DBA roles, where the members' pod DNS names resolve (docs/operations.md,
"Who may ask")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backups.jobs import IMAGE_USER
from tests.e2e.cluster import LocalCluster, wait_for


@contextmanager
def dba_account(cluster: LocalCluster, namespace: str) -> Iterator[str]:
    """A ServiceAccount with deploy/rbac.yaml's DBA roles: moorage-dba in this namespace (a
    RoleBinding), moorage-catalog-reader cluster-wide (catalogs are cluster-scoped)."""
    account = "dba"
    catalogs = f"{namespace}-dba-catalogs"
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}, namespace)
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "moorage-dba",
            },
            "subjects": subject,
        },
        namespace,
    )
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": catalogs},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "moorage-catalog-reader",
            },
            "subjects": subject,
        }
    )
    try:
        yield account
    finally:
        cluster.kubectl("delete", "clusterrolebinding", catalogs, "--ignore-not-found", check=False)


def in_a_dba_pod(
    cluster: LocalCluster,
    namespace: str,
    account: str,
    command: str,
    *,
    pod: str = "dba-cutover",
    env_from_secret: str | None = None,
    diagnostics: tuple[str, ...] = (),
    timeout: float = 600,
    expect_failure: bool = False,
) -> Any:
    """``command`` in a pod of the operator's image (which is Moorage's) as ``account``; its JSON.
    ``env_from_secret``: that Secret's keys as environment (S3 keys, as a DBA's pod would mount
    them); ``diagnostics``: resource kinds of the namespace shown when the command fails;
    ``expect_failure``: the command must fail, and its whole log is returned instead."""
    operator: Any = cluster.apps.read_namespaced_deployment("moorage-operator", "moorage-system")
    image = operator.spec.template.spec.containers[0].image
    cluster.run_pod(
        namespace,
        pod,
        image,
        f"HOME=/tmp {command} 2>/tmp/stderr; code=$?; echo; echo exit=$code; cat /tmp/stderr",
        service_account=account,
        user=IMAGE_USER,
        env_from_secret=env_from_secret,
    )
    wait_for(f"{pod} to finish", lambda: "exit=" in cluster.pod_log(namespace, pod), timeout, interval=2)
    log = cluster.pod_log(namespace, pod)
    output, _, rest = log.partition("\nexit=")
    if expect_failure:
        assert rest and not rest.startswith("0"), log
        return log
    assert rest.startswith("0"), "\n".join(
        [
            log,
            cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False),
            *(
                cluster.kubectl("-n", namespace, "get", kind, "-o", "yaml", check=False)[-4000:]
                for kind in diagnostics
            ),
            cluster.operator_log(tail=40),
        ]
    )
    return json.loads(output)
