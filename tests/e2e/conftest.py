"""Fixtures for end-to-end tests on the local cluster (see ``cluster.py``, docs/kubernetes-tests.md).

One local cluster serves the session. ``MOORAGE_E2E_KUBECONFIG`` points the tests at a cluster that
is already up (``make cluster-up`` prints the path) and leaves it running; otherwise the session
brings one up with ``hack/cluster/cluster.py up`` and takes it down at the end. Without the
binaries or images the tests skip, saying how to build them; with ``MOORAGE_E2E_REQUIRED=1``
(``make test``, CI) that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import LocalCluster, cluster_command
from tests.e2e.s3 import pod_s3_server  # noqa: F401  (fixture: SeaweedFS on the pod bridge, per module)

HINT = "run `make cluster-up` once (it builds the binaries and images), or `make test-e2e`"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the operator on real pods of the local cluster (make test-e2e)")


# A scenario here is several waits in a row (Ready, a scale out, a scale in), each bounded with its own
# message; the suite-wide 300 s would cut one short with a bare timeout under load instead.
SCENARIO_TIMEOUT = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SCENARIO_TIMEOUT))


def _unavailable(reason: str) -> None:
    if os.environ.get("MOORAGE_E2E_REQUIRED") == "1":
        pytest.fail(f"MOORAGE_E2E_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason}: {HINT}")


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    given = os.environ.get("MOORAGE_E2E_KUBECONFIG")
    if given:
        yield LocalCluster(Path(given))
        return
    if os.geteuid() != 0:
        _unavailable("the local cluster needs root (containerd, a bridge, iptables)")
    for tool in ("containerd", "runc", "ctr", "iptables"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (make cluster-deps)")
    state = Path(os.environ.get("MOORAGE_E2E_CLUSTER_DIR", "/var/tmp/moorage-e2e"))
    up = cluster_command("up", state)
    if up.returncode != 0:
        cluster_command("down", state)
        message = (up.stderr or up.stdout).strip()
        if "not built" in message or "no pause image" in message:
            _unavailable(message)
        pytest.fail(
            f"the local cluster did not come up:\n{up.stdout[-3000:]}\n{message[-5000:]}", pytrace=False
        )
    try:
        yield LocalCluster(state / "kubeconfig")
    finally:
        down = cluster_command("down", state)
        assert down.returncode == 0, f"cluster down failed:\n{down.stdout}\n{down.stderr}"


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace per test; its Middlewares are deleted while the operator runs."""
    name = local_cluster.new_namespace()
    try:
        yield name
    finally:
        local_cluster.delete_namespace(name)


@pytest.fixture(scope="module")
def module_namespace(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """One namespace for a test module whose tests build on each other (create, then scale, then a
    fault on the same Middleware), named after the module."""
    prefix = "e2e-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = local_cluster.new_namespace(prefix.replace("_", "-"))
    try:
        yield name
    finally:
        local_cluster.delete_namespace(name)
