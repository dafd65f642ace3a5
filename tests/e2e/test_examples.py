"""Every example is accepted by the real apiserver as a user applies it (`kubectl apply -f`), CEL
rules and schema included. What each one then does is proven by the scenario tests: Middlewares in
test_redis/test_postgresql/test_zookeeper, RedisSync in test_sync, BackupRepository,
MiddlewareBackup and MiddlewareRestore in test_backups, the catalog override in test_status'
neighbours (the local cluster itself runs on one: hack/cluster/deploy/catalog.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.cluster import REPO_ROOT, LocalCluster

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_by_the_apiserver(
    local_cluster: LocalCluster, namespace: str, path: Path
) -> None:
    out = local_cluster.kubectl(
        "-n", namespace, "apply", "--server-side", "--dry-run=server", "-f", str(path)
    )
    assert "serverside-applied (server dry run)" in out, out
