"""``backup verify --deep`` on Kubernetes: the scratch Middleware's bookkeeping on a real apiserver.

No operator runs here, so the scratch Middleware is never provisioned: these tests check what the CLI
does around it (created with the scratch label and ``deletionPolicy: Delete``, a clear timeout naming
the phase, deleted afterwards, never touching a Middleware it did not create). The whole path, the
operator provisioning the scratch copy on real pods and the load checked in it, is
``tests/e2e/test_backups.py::test_postgresql_standalone_backup_restore_rollback``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from backups.kubernetes import API_VERSION, SCRATCH_LABEL, KubernetesTargets
from middleware.errors import MoorageError
from middleware.runtime.kubernetes import KubernetesRuntime
from tests.k8s.controlplane import ControlPlane

pytestmark = pytest.mark.k8s


def _scratch_manifest(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Middleware",
        "metadata": {"name": f"verify-{uuid.uuid4().hex[:6]}", "namespace": namespace},
        "spec": {"engine": "redis", "topology": "standalone", "deletionPolicy": "Delete", **spec},
    }


def _runtime(api_client: Any) -> KubernetesRuntime:
    return KubernetesRuntime(api_client)


def test_a_scratch_never_ready_times_out_naming_its_phase_and_is_deleted(
    control_plane: ControlPlane, crds: list[str], namespace: str, api_client: Any
) -> None:
    rt = _runtime(api_client)
    seen: list[str] = []
    targets = KubernetesTargets(rt, scratch_timeout=3, progress=lambda step, _done, _total: seen.append(step))
    manifest = _scratch_manifest(namespace)
    name = manifest["metadata"]["name"]
    created: list[dict[str, Any] | None] = []
    with pytest.raises(MoorageError) as caught, targets.scratch(manifest):
        created.append(rt.get(API_VERSION, "Middleware", namespace, name))
    message = str(caught.value)
    assert f"scratch Middleware {namespace}/{name} not Ready after 3s" in message, message
    assert "is the operator running" in message, message
    assert created == [], "a target was handed out for a scratch Middleware that never became Ready"
    assert seen and all(step.startswith(f"scratch {name}:") for step in seen), seen
    # Deleted on the way out (no operator, so no finalizer holds it).
    assert rt.get(API_VERSION, "Middleware", namespace, name) is None


def test_a_scratch_is_labelled_and_placed_in_the_scratch_namespace(
    control_plane: ControlPlane, crds: list[str], namespace: str, api_client: Any
) -> None:
    from kubernetes import client

    other = f"scratch-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": other}})
    try:
        rt = _runtime(api_client)
        bodies: list[dict[str, Any] | None] = []
        # The clock runs out after the first look: enough to read the object as it was created.
        ticks = iter([0.0, 0.0, 10.0, 10.0])
        targets = KubernetesTargets(
            rt,
            scratch_namespace=other,
            scratch_timeout=1,
            clock=lambda: next(ticks),
            sleep=lambda _s: bodies.append(
                rt.get(API_VERSION, "Middleware", other, manifest["metadata"]["name"])
            ),
        )
        manifest = _scratch_manifest(namespace)
        with pytest.raises(MoorageError, match="not Ready after 1s"), targets.scratch(manifest):
            pass
        assert len(bodies) == 1 and bodies[0] is not None
        meta, spec = bodies[0]["metadata"], bodies[0]["spec"]
        assert meta["namespace"] == other and meta["labels"][SCRATCH_LABEL] == "verify"
        assert spec["deletionPolicy"] == "Delete"
        assert rt.get(API_VERSION, "Middleware", namespace, manifest["metadata"]["name"]) is None
    finally:
        client.CoreV1Api(api_client).delete_namespace(other)


def test_a_scratch_never_takes_over_or_deletes_an_existing_middleware(
    control_plane: ControlPlane, crds: list[str], namespace: str, api_client: Any
) -> None:
    rt = _runtime(api_client)
    manifest = _scratch_manifest(namespace)
    name = manifest["metadata"]["name"]
    existing = {**manifest, "spec": {**manifest["spec"], "deletionPolicy": "Retain"}}
    assert rt.create(existing) is not None
    targets = KubernetesTargets(rt, scratch_timeout=1)
    with (
        pytest.raises(MoorageError, match="already exists: not a scratch deployment of ours"),
        targets.scratch(manifest),
    ):
        pytest.fail("a target was handed out for somebody else's Middleware")
    kept = rt.get(API_VERSION, "Middleware", namespace, name)
    assert kept is not None and kept["spec"]["deletionPolicy"] == "Retain"


def test_a_scratch_without_deletion_policy_delete_is_refused_before_anything_is_created(
    control_plane: ControlPlane, crds: list[str], namespace: str, api_client: Any
) -> None:
    rt = _runtime(api_client)
    manifest = _scratch_manifest(namespace, deletionPolicy="Retain")
    with (
        pytest.raises(MoorageError, match="must have deletionPolicy Delete"),
        KubernetesTargets(rt).scratch(manifest),
    ):
        pytest.fail("a scratch that would keep its PVCs was created")
    assert rt.get(API_VERSION, "Middleware", namespace, manifest["metadata"]["name"]) is None
