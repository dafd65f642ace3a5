"""Fixtures for tests on a real control plane (see ``controlplane.py`` and docs/kubernetes-tests.md).

One control plane (etcd + kube-apiserver + kube-controller-manager) serves the whole session. Without
the cached binaries the tests skip, saying how to build them; with ``MOORAGE_K8S_REQUIRED=1`` (the
``make test-k8s`` target, CI) a missing build fails instead, so a broken cache cannot pass as green.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.k8s.controlplane import (
    BUILD_HINT,
    REPO_ROOT,
    ControlPlane,
    ControlPlaneError,
    cache_dir,
    missing_binaries,
)

CRD_DIR = REPO_ROOT / "crds"
ESTABLISH_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "k8s: needs a real kube-apiserver/etcd/kube-controller-manager (hack/build-control-plane.sh)",
    )


def _unavailable(reason: str) -> None:
    if os.environ.get("MOORAGE_K8S_REQUIRED") == "1":
        pytest.fail(f"MOORAGE_K8S_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, for the whole session."""
    missing = missing_binaries()
    if missing:
        _unavailable(
            f"control-plane binaries not built ({', '.join(missing)} missing in {cache_dir()}): {BUILD_HINT}"
        )
    if shutil.which("openssl") is None:
        _unavailable("openssl not found: apt-get install openssl")
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), with_controller_manager=True)
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"control plane did not start: {exc}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[Any]:
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


def _established(crd: Any) -> bool:
    conditions = (crd.status.conditions or []) if crd.status else []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="session")
def crds(api_client: Any) -> list[str]:
    """Install every CRD in crds/ and wait until each is Established. Returns their names."""
    from kubernetes import client

    ext: Any = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        ext.create_custom_resource_definition(body)
        names.append(body["metadata"]["name"])
    deadline = time.monotonic() + ESTABLISH_TIMEOUT
    pending = set(names)
    while pending:
        pending = {name for name in pending if not _established(ext.read_custom_resource_definition(name))}
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"CRDs not Established after {ESTABLISH_TIMEOUT}s: {sorted(pending)}")
        time.sleep(0.2)
    return names


@pytest.fixture
def namespace(api_client: Any) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards; the namespace controller finishes the job)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)
