"""The operator (kopf handlers + KubernetesRuntime) on a real kube-apiserver and controller-manager.

Each test runs ``kopf run -m operators.main --standalone --namespace <ns>`` in a thread and creates
Middleware objects; what it checks is what the API server holds afterwards (objects, status, Events),
and what the real StatefulSet, garbage-collector and PV controllers did with it. No kubelet runs:
the tests mark pods Ready themselves (see kopf_support.mark_ready), and no pod DNS resolves here,
so a bootstrap through pod DNS fails, and the tests check that the status says so truthfully.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest

from tests.example_files import document
from tests.integration.harness import require_binary
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kopf_support import (
    GROUP,
    VERSION,
    apps_api,
    condition,
    core_api,
    custom_api,
    events,
    make_pods_ready,
    middleware,
    read_middleware,
    running_operator,
    status_of,
    wait_for,
)
from tests.pod_monitor_crd import POD_MONITOR_CRD

pytestmark = pytest.mark.k8s

# Ours, written by the create handler (kopf's own, "moorage.io/finalizer", is on no Middleware).
FINALIZER = "moorage.io/deletion-policy"
KOPF_FINALIZER = "moorage.io/finalizer"


def _finalizers(api_client: Any, namespace: str, name: str) -> list[str]:
    return list(
        ((read_middleware(api_client, namespace, name) or {}).get("metadata") or {}).get("finalizers") or []
    )


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _read(call: Any, *args: Any) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return call(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _event_reasons(api_client: Any, namespace: str, name: str) -> set[str]:
    return {reason for _, reason, _ in events(api_client, namespace, name)}


def test_cluster_is_applied_waits_for_members_and_reports_bootstrap_failure(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    name = _name("rc")
    spec = {"engine": "redis", "topology": "cluster", "shards": 3, "replicas": 1}
    core, apps = core_api(api_client), apps_api(api_client)
    with running_operator(control_plane, api_client, namespace):
        created = custom_api(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
        )
        uid = created["metadata"]["uid"]

        def waiting() -> dict[str, Any] | None:
            status = status_of(api_client, namespace, name)
            return status if status.get("phaseReason") == "WaitingForMembers" else None

        status = wait_for("status WaitingForMembers", waiting)
        assert status["phase"] == "Provisioning"
        assert condition(status, "Provisioned")["status"] == "False"
        assert "members ready" in condition(status, "Provisioned")["message"]
        # written in the same pass as the status, just after it
        finalizers = wait_for("our finalizer", lambda: _finalizers(api_client, namespace, name))
        assert finalizers == [FINALIZER]

        # what was rendered is on the server, each object owned by the Middleware
        statefulsets = {s.metadata.name: s for s in apps.list_namespaced_stateful_set(namespace).items}
        assert set(statefulsets) == {f"{name}-shard-{i}" for i in range(3)}
        services = {s.metadata.name for s in core.list_namespaced_service(namespace).items}
        assert {name, f"{name}-headless"} <= services
        config_maps = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        assert f"{name}-config" in config_maps
        from kubernetes import client

        pdbs = client.PolicyV1Api(api_client).list_namespaced_pod_disruption_budget(namespace).items
        assert len(pdbs) == 3
        owned = [*statefulsets.values(), *pdbs]
        owned += [core.read_namespaced_service(n, namespace) for n in (name, f"{name}-headless")]
        owned.append(core.read_namespaced_config_map(f"{name}-config", namespace))
        for obj in owned:
            refs = obj.metadata.owner_references or []
            assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [("Middleware", name, uid, True)]
            managers = {m.manager for m in obj.metadata.managed_fields or []}
            assert "moorage" in managers, (obj.metadata.name, managers)
        # the credentials outlive the Middleware under Retain: no owner reference
        secret = core.read_namespaced_secret(f"{name}-credentials", namespace)
        assert secret.metadata.owner_references is None
        assert secret.data["password"]

        # One Event for the creation: the objects applied and the Secret created with them (members
        # still starting is what the status says, not another Event).
        applied_events = wait_for(
            "Event Applied",
            lambda: [e for e in events(api_client, namespace, name) if e[1] == "Applied"] or None,
        )
        assert len(applied_events) == 1, applied_events
        assert applied_events[0][2].endswith(f"for generation 1; created Secret {name}-credentials"), (
            applied_events
        )
        assert "CredentialsCreated" not in _event_reasons(api_client, namespace, name)

        # play the kubelet: the members become Ready, so the operator proceeds to bootstrap
        make_pods_ready(api_client, namespace, [f"{name}-shard-{i}-0" for i in range(3)])

        def bootstrap_reported() -> dict[str, Any] | None:
            status = status_of(api_client, namespace, name)
            return status if status.get("phaseReason") == "BootstrapFailed" else None

        status = wait_for("status BootstrapFailed", bootstrap_reported)
        # no DNS for pods here: the status says the bootstrap failed, and why, not Ready
        assert status["phase"] == "Degraded"
        degraded = condition(status, "Degraded")
        assert degraded["status"] == "True"
        assert "pod DNS" in degraded["message"]
        assert condition(status, "Ready")["status"] == "False"
        assert status["observedGeneration"] == created["metadata"]["generation"]
        warnings = wait_for(
            "a Warning event BootstrapFailed",
            lambda: [e for e in events(api_client, namespace, name) if e[1] == "BootstrapFailed"],
        )
        assert warnings[0][0] == "Warning"


def _retries(api_client: Any, namespace: str, name: str) -> int:
    """How often kopf has retried the create/update handler (its progress annotation)."""
    import json

    body = read_middleware(api_client, namespace, name) or {}
    raw = (body["metadata"].get("annotations") or {}).get("moorage.io/reconcile_middleware")
    return int(json.loads(raw).get("retries") or 0) if raw else 0


def test_a_retry_of_an_unchanged_render_applies_nothing_and_a_new_generation_applies_again(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """While members start, each retry (every second here) renders the same objects: within
    MOORAGE_REAPPLY_SECONDS it leaves them alone, so a ConfigMap deleted by hand stays deleted over
    several retries; a spec change renders anew and is applied at once."""
    name = _name("quiet")
    custom, core = custom_api(api_client), core_api(api_client)
    with running_operator(control_plane, api_client, namespace, env={"MOORAGE_REAPPLY_SECONDS": "600"}):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "middlewares",
            middleware(name, {"engine": "redis", "topology": "standalone"}),
        )
        wait_for(
            "status WaitingForMembers",
            lambda: status_of(api_client, namespace, name).get("phaseReason") == "WaitingForMembers",
        )
        config_map = f"{name}-config"
        core.delete_namespaced_config_map(config_map, namespace)
        retried = _retries(api_client, namespace, name)
        wait_for("three more retries", lambda: _retries(api_client, namespace, name) >= retried + 3)
        assert _read(core.read_namespaced_config_map, config_map, namespace) is None
        # the same generation, still waiting: the status is written by every retry all the same
        assert status_of(api_client, namespace, name)["phaseReason"] == "WaitingForMembers"

        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", name,
            {"spec": {"parameters": {"maxmemory-policy": "allkeys-lru"}}},
        )  # fmt: skip
        applied = wait_for(
            "the ConfigMap applied again for the new generation",
            lambda: _read(core.read_namespaced_config_map, config_map, namespace),
        )
        assert any("allkeys-lru" in text for text in applied.data.values())


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        # the CRD schema accepts any version string; only the catalog knows 6.0 is not offered
        ({"engine": "redis", "topology": "standalone", "version": "6.0"}, "spec.version", "'6.0'"),
        # the schema takes walArchiving on any engine; only PostgreSQL has a WAL to archive
        (
            {
                "engine": "redis",
                "topology": "standalone",
                "backup": {"repository": {"name": "s3"}, "schedule": "0 3 * * *", "walArchiving": True},
            },
            "spec.backup.walArchiving",
            "no write-ahead log",
        ),
    ],
)
def test_semantic_spec_error_is_permanent_and_names_the_field(
    control_plane: ControlPlane,
    api_client: Any,
    crds: list[str],
    namespace: str,
    spec: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    name = _name("bad")
    with running_operator(control_plane, api_client, namespace):
        custom_api(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
        )

        def failed() -> dict[str, Any] | None:
            status = status_of(api_client, namespace, name)
            return status if status.get("phase") == "Failed" else None

        status = wait_for("phase Failed", failed)
        assert status["phaseReason"] == "InvalidSpec"
        provisioned = condition(status, "Provisioned")
        assert provisioned["status"] == "False"
        assert provisioned["reason"] == "InvalidSpec"
        assert provisioned["message"].startswith(f"{field}:")
        assert fragment in provisioned["message"]
        warning = wait_for(
            "a Warning event InvalidSpec",
            lambda: [e for e in events(api_client, namespace, name) if e[1] == "InvalidSpec"],
        )
        assert warning[0][0] == "Warning"
        assert field in warning[0][2]
        # nothing was applied for an invalid spec
        assert apps_api(api_client).list_namespaced_stateful_set(namespace).items == []
        assert _read(core_api(api_client).read_namespaced_secret, f"{name}-credentials", namespace) is None


def test_wal_archiving_waits_for_its_repository_and_renders_no_member_without_it(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """The archive scripts name the BackupRepository: until it exists the members are not
    rendered (archive_command would have nothing to run), the status says why, and the operator
    tries again (a repository created later is picked up: not a permanent error)."""
    name = _name("wal")
    spec = {
        "engine": "postgresql",
        "topology": "standalone",
        "backup": {"repository": {"name": "not-yet"}, "schedule": "0 3 * * *", "walArchiving": True},
    }
    with running_operator(control_plane, api_client, namespace):
        custom_api(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
        )

        def waiting() -> dict[str, Any] | None:
            status = status_of(api_client, namespace, name)
            return status if status.get("phaseReason") == "ArchiveRepositoryUnavailable" else None

        status = wait_for("phaseReason ArchiveRepositoryUnavailable", waiting)
        assert status["phase"] == "Degraded"
        message = condition(status, "Provisioned")["message"]
        assert "spec.backup.repository.name" in message and f"{namespace}/not-yet not found" in message
        assert apps_api(api_client).list_namespaced_stateful_set(namespace).items == []
        assert "ArchiveRepositoryUnavailable" in _event_reasons(api_client, namespace, name)


def test_a_middleware_held_by_a_restore_is_left_alone_until_the_hold_is_lifted(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """A point-in-time restore in place holds the Middleware (``hold.moorage.io/restore``) while
    the StatefulSet is scaled down: an apply then would scale it back up onto volumes the restore
    is working on. The status says who holds it; once the annotation goes, the operator applies."""
    from middleware.operations import RESTORE_HOLD_ANNOTATION

    name = _name("held")
    body = middleware(name, {"engine": "postgresql", "topology": "standalone"})
    body["metadata"]["annotations"] = {RESTORE_HOLD_ANNOTATION: "pitr-held-1"}
    with running_operator(control_plane, api_client, namespace):
        custom_api(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares", body)

        def held() -> dict[str, Any] | None:
            status = status_of(api_client, namespace, name)
            return status if status.get("phaseReason") == "RestoreInProgress" else None

        status = wait_for("phaseReason RestoreInProgress", held)
        assert status["phase"] == "Updating"
        assert "restore pitr-held-1 holds the members" in condition(status, "Progressing")["message"]
        assert apps_api(api_client).list_namespaced_stateful_set(namespace).items == []

        custom_api(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", name,
            {"metadata": {"annotations": {RESTORE_HOLD_ANNOTATION: None}}},
        )  # fmt: skip
        wait_for(
            "the StatefulSet once the hold is lifted",
            lambda: _read(apps_api(api_client).read_namespaced_stateful_set, name, namespace),
            timeout=90,
        )


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_deletion_policy_is_honoured_by_the_finalizer(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, policy: str
) -> None:
    name = _name("del")
    spec = {"engine": "redis", "topology": "standalone", "deletionPolicy": policy}
    core, apps, custom = core_api(api_client), apps_api(api_client), custom_api(api_client)
    claim, secret = f"data-{name}-0", f"{name}-credentials"
    with running_operator(control_plane, api_client, namespace):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
        )
        # the StatefulSet controller made the pod and its PVC; the operator made the Secret
        wait_for(
            f"PVC {claim}", lambda: _read(core.read_namespaced_persistent_volume_claim, claim, namespace)
        )
        wait_for(f"Secret {secret}", lambda: _read(core.read_namespaced_secret, secret, namespace))
        assert wait_for("our finalizer", lambda: _finalizers(api_client, namespace, name)) == [FINALIZER]

        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares", name)
        wait_for("the Middleware to be gone", lambda: read_middleware(api_client, namespace, name) is None)
        # the garbage collector (kube-controller-manager) follows the owner references
        wait_for(
            "the StatefulSet to be garbage-collected",
            lambda: _read(apps.read_namespaced_stateful_set, name, namespace) is None,
        )
        if policy == "Retain":
            kept = _read(core.read_namespaced_persistent_volume_claim, claim, namespace)
            assert kept is not None and kept.metadata.deletion_timestamp is None
            assert _read(core.read_namespaced_secret, secret, namespace).data["password"]
        else:
            wait_for(
                f"PVC {claim} deleted",
                lambda: _read(core.read_namespaced_persistent_volume_claim, claim, namespace) is None,
            )
            assert _read(core.read_namespaced_secret, secret, namespace) is None
        reason = "DataRetained" if policy == "Retain" else "DataDeleted"
        wait_for(f"Event {reason}", lambda: reason in _event_reasons(api_client, namespace, name))


def test_a_middleware_of_an_older_operator_trades_kopfs_finalizer_for_ours_and_keeps_others(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """Before this operator version kopf kept its own finalizer on every Middleware (its timer and
    Delete handler needed it). A Middleware carrying it, and another controller's, is taken over:
    kopf's goes, ours comes, the other stays through the deletion, which we finish for our part."""
    name = _name("mig")
    spec = {"engine": "redis", "topology": "standalone", "deletionPolicy": "Retain"}
    custom = custom_api(api_client)
    other = "example.com/keep"
    body = middleware(name, spec)
    body["metadata"]["finalizers"] = [KOPF_FINALIZER, other]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares", body)
    with running_operator(control_plane, api_client, namespace):
        wait_for(
            "kopf's finalizer traded for ours",
            lambda: _finalizers(api_client, namespace, name) == [other, FINALIZER],
        )
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares", name)
        wait_for(
            "our finalizer released, the other kept",
            lambda: _finalizers(api_client, namespace, name) == [other],
        )
        wait_for("Event DataRetained", lambda: "DataRetained" in _event_reasons(api_client, namespace, name))
        assert (read_middleware(api_client, namespace, name) or {})["metadata"].get("deletionTimestamp")
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", name, {"metadata": {"finalizers": None}}
        )
        wait_for("the Middleware to be gone", lambda: read_middleware(api_client, namespace, name) is None)


def test_storage_expansion_patches_claims_and_recreates_the_statefulset(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    from kubernetes import client

    name = _name("grow")
    storage_class = f"expandable-{namespace}"
    claim = f"data-{name}-0"
    core, apps, custom = core_api(api_client), apps_api(api_client), custom_api(api_client)
    storage: Any = client.StorageV1Api(api_client)
    storage.create_storage_class(
        {
            "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner",
            "allowVolumeExpansion": True,
            "volumeBindingMode": "Immediate",
        }
    )
    volume = f"pv-{namespace}"
    try:
        spec = {
            "engine": "redis",
            "topology": "standalone",
            "storage": {"size": "1Gi", "storageClassName": storage_class},
        }
        with running_operator(control_plane, api_client, namespace):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            wait_for(
                f"PVC {claim}", lambda: _read(core.read_namespaced_persistent_volume_claim, claim, namespace)
            )
            # a static volume pre-bound to the claim: the PV controller binds them (no provisioner here)
            core.create_persistent_volume(
                {
                    "metadata": {"name": volume},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": storage_class,
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": f"/tmp/{volume}"},
                        "claimRef": {"namespace": namespace, "name": claim},
                    },
                }
            )
            wait_for(
                f"PVC {claim} Bound",
                lambda: (
                    core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound"
                ),
            )
            before_sts = apps.read_namespaced_stateful_set(name, namespace)
            pod_uid = core.read_namespaced_pod(f"{name}-0", namespace).metadata.uid

            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", name, {"spec": {"storage": {"size": "2Gi"}}}
            )

            def resized() -> bool:
                pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
                return bool(pvc.spec.resources.requests["storage"] == "2Gi")

            wait_for(f"PVC {claim} to request 2Gi", resized)

            def recreated() -> Any:
                sts = _read(apps.read_namespaced_stateful_set, name, namespace)
                if sts is None or sts.metadata.uid == before_sts.metadata.uid:
                    return None
                return sts

            sts = wait_for("a new StatefulSet", recreated)
            assert sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] == "2Gi"
            # the pod was orphaned, not deleted, and the new StatefulSet adopted it
            pod = core.read_namespaced_pod(f"{name}-0", namespace)
            assert pod.metadata.uid == pod_uid
            assert pod.metadata.deletion_timestamp is None
            wait_for(
                "the pod adopted by the new StatefulSet",
                lambda: (
                    [
                        r.uid
                        for r in core.read_namespaced_pod(f"{name}-0", namespace).metadata.owner_references
                        or []
                    ]
                    == [sts.metadata.uid]
                ),
            )
            wait_for(
                "Event ExpandingStorage",
                lambda: "ExpandingStorage" in _event_reasons(api_client, namespace, name),
            )

            # shrinking is refused with a condition naming the field; nothing is touched
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", name, {"spec": {"storage": {"size": "1Gi"}}}
            )

            def refused() -> dict[str, Any] | None:
                status = status_of(api_client, namespace, name)
                return status if status.get("phaseReason") == "StorageShrinkRefused" else None

            status = wait_for("status StorageShrinkRefused", refused)
            assert status["phase"] == "Failed"
            message = condition(status, "Provisioned")["message"]
            assert message.startswith("spec.storage.size:")
            assert "2Gi" in message and "1Gi" in message
            assert apps.read_namespaced_stateful_set(name, namespace).metadata.uid == sts.metadata.uid
            assert (
                core.read_namespaced_persistent_volume_claim(claim, namespace).spec.resources.requests[
                    "storage"
                ]
                == "2Gi"
            )
    finally:
        storage.delete_storage_class(storage_class)
        _read(core.delete_persistent_volume, volume)


def test_catalog_image_override_reaches_the_next_render(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    name = _name("cat")
    catalog = f"private-registry-{namespace}"
    image = "registry.example.internal/mirror/redis:7.0.15"
    custom = custom_api(api_client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MiddlewareCatalog",
        "metadata": {"name": catalog},
        "spec": {"images": [{"engine": "redis", "version": "7.0", "image": image}]},
    }
    custom.create_cluster_custom_object(GROUP, VERSION, "middlewarecatalogs", body)
    try:
        with running_operator(control_plane, api_client, namespace):
            spec = {"engine": "redis", "topology": "standalone", "version": "7.0"}
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            apps = apps_api(api_client)
            sts = wait_for(
                "the StatefulSet", lambda: _read(apps.read_namespaced_stateful_set, name, namespace)
            )
            template = sts.spec.template.spec
            server, exporter = template.containers
            assert server.image == image and exporter.name == "metrics"
            assert {c.image for c in template.init_containers or []} <= {image}
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "middlewarecatalogs", catalog)


def test_a_pod_monitor_is_rendered_where_the_prometheus_operator_crd_is_installed(
    control_plane: ControlPlane,
    api_client: Any,
    crds: list[str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client

    from middleware.runtime import kubernetes as kubernetes_runtime

    # The operator runs in this process: no wait for its discovery cache to expire.
    monkeypatch.setattr(kubernetes_runtime, "DISCOVERY_TTL_SECONDS", 0.0)
    custom = custom_api(api_client)
    ext: Any = client.ApiextensionsV1Api(api_client)
    name, without = _name("mon"), _name("nomon")
    with running_operator(control_plane, api_client, namespace):
        # Without the CRD: the metrics Service only (and no error for the kind the API lacks).
        spec = {"engine": "redis", "topology": "standalone"}
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", middleware(without, spec)
        )
        wait_for(
            "the metrics Service",
            lambda: _read(core_api(api_client).read_namespaced_service, f"{without}-metrics", namespace),
        )
        ext.create_custom_resource_definition(POD_MONITOR_CRD)
        try:
            wait_for("the PodMonitor CRD established", lambda: "podmonitors" in _served(api_client))
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            monitor = wait_for(
                "the PodMonitor",
                lambda: _read(
                    custom.get_namespaced_custom_object,
                    "monitoring.coreos.com",
                    "v1",
                    namespace,
                    "podmonitors",
                    f"{name}-metrics",
                ),
            )
            assert monitor["spec"]["selector"]["matchLabels"] == {
                "app.kubernetes.io/name": "redis",
                "app.kubernetes.io/instance": name,
            }
            assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics"}]
            (owner,) = monitor["metadata"]["ownerReferences"]
            assert owner["kind"] == "Middleware" and owner["name"] == name
            # The pods it selects carry the metrics port it names.
            sts = wait_for(
                "the StatefulSet",
                lambda: _read(apps_api(api_client).read_namespaced_stateful_set, name, namespace),
            )
            assert [p.name for c in sts.spec.template.spec.containers for p in c.ports or []] == [
                "redis",
                "metrics",
            ]
        finally:
            ext.delete_custom_resource_definition(POD_MONITOR_CRD["metadata"]["name"])


def _served(api_client: Any) -> set[str]:
    from kubernetes import client

    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources("monitoring.coreos.com", "v1")
    except Exception:  # not served yet
        return set()
    return {r.name for r in resources.resources}


def test_the_catalog_override_example_is_accepted_and_holds_middlewares_to_it(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """examples/catalog-override.yaml as an admin applies it: `kubectl get mwcat` shows Accepted,
    a Redis renders with the corp image, and a parameter outside its narrower range is refused
    naming the parameter and the range, as its header says. One with an unknown version is Invalid."""
    custom = custom_api(api_client)
    corp = document("catalog-override.yaml", "MiddlewareCatalog")
    corp["metadata"]["name"] = f"corp-{namespace}"  # cluster-scoped: one per test run
    broken = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MiddlewareCatalog",
        "metadata": {"name": f"broken-{namespace}"},
        "spec": {
            "images": [{"engine": "redis", "version": "6.2", "image": "registry.corp.example/redis:6.2"}]
        },
    }
    custom.create_cluster_custom_object(GROUP, VERSION, "middlewarecatalogs", corp)
    try:
        with running_operator(control_plane, api_client, namespace):

            def phase(name: str) -> str | None:
                body = custom.get_cluster_custom_object(GROUP, VERSION, "middlewarecatalogs", name)
                return (body.get("status") or {}).get("phase")

            assert (
                wait_for("the example catalog Accepted", lambda: phase(corp["metadata"]["name"]))
                == "Accepted"
            )
            name = _name("corp")
            spec = {"engine": "redis", "topology": "standalone"}
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            apps = apps_api(api_client)
            sts = wait_for(
                "the StatefulSet", lambda: _read(apps.read_namespaced_stateful_set, name, namespace)
            )
            assert [c.image for c in sts.spec.template.spec.containers] == [
                "registry.corp.example/redis:7.0.15",
                "registry.corp.example/redis_exporter:v1.45.0",
            ]

            too_many = _name("maxclients")
            spec = {"engine": "redis", "topology": "standalone", "parameters": {"maxclients": "6000"}}
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(too_many, spec)
            )
            refused = wait_for(
                "the out-of-range parameter refused",
                lambda: (
                    (s := status_of(api_client, namespace, too_many)).get("phaseReason") == "InvalidSpec"
                    and s
                ),
            )
            assert refused["phase"] == "Failed"
            message = condition(refused, "Ready")["message"]
            assert "maxclients" in message and "5000" in message, refused

            # Last, and removed at once: a catalog that does not merge stops every Middleware's decode.
            custom.create_cluster_custom_object(GROUP, VERSION, "middlewarecatalogs", broken)
            try:
                assert (
                    wait_for("the broken catalog Invalid", lambda: phase(broken["metadata"]["name"]))
                    == "Invalid"
                )
            finally:
                custom.delete_cluster_custom_object(
                    GROUP, VERSION, "middlewarecatalogs", broken["metadata"]["name"]
                )
    finally:
        for doc in (corp, broken):
            with contextlib.suppress(Exception):
                custom.delete_cluster_custom_object(
                    GROUP, VERSION, "middlewarecatalogs", doc["metadata"]["name"]
                )


def test_sentinel_bootstraps_through_the_kubernetes_path_on_local_processes(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Any
) -> None:
    """Stretch: the pods are backed by real redis-server/sentinel processes on 127.0.0.1 (the test's
    stand-in for containers), reached through the runtime's address seam instead of pod DNS."""
    import base64

    from middleware.engines.registry import get_engine
    from tests.k8s.kopf_support import local_members

    require_binary("redis-server", "redis-server")
    require_binary("redis-sentinel", "redis-sentinel")
    name = _name("sen")
    spec = {"engine": "redis", "topology": "sentinel", "replicas": 2, "sentinels": 3}
    manifest = middleware(name, spec)
    manifest["metadata"]["namespace"] = namespace
    core = core_api(api_client)
    with local_members(tmp_path / "local", manifest) as (local, resolved):
        # the operator never overwrites an existing credentials Secret: give it the processes' password
        password = local.password(resolved)
        for secret in get_engine("redis").render_secrets(resolved, password):
            core.create_namespaced_secret(namespace, secret)
        with running_operator(control_plane, api_client, namespace):
            custom_api(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            pods = [f"{name}-0", f"{name}-1", *(f"{name}-sentinel-{i}" for i in range(3))]
            make_pods_ready(api_client, namespace, pods)

            def ready() -> dict[str, Any] | None:
                status = status_of(api_client, namespace, name)
                return status if status.get("phase") == "Ready" else None

            status = wait_for("phase Ready", ready, timeout=120)
            roles = {m["name"]: m["role"] for m in status["members"]}
            assert roles[f"{name}-0"] == "master"
            assert roles[f"{name}-1"] == "replica"
            assert all(roles[f"{name}-sentinel-{i}"] == "sentinel" for i in range(3))
            assert all(m["healthy"] for m in status["members"])
            assert condition(status, "Ready")["status"] == "True"
            assert condition(status, "Provisioned")["status"] == "True"
            assert status["endpoints"]["masterName"] == name
            # the -master Service selects moorage.io/role=master: the operator put it on the master pod
            labels = {p: core.read_namespaced_pod(p, namespace).metadata.labels for p in pods[:2]}
            assert labels[f"{name}-0"]["moorage.io/role"] == "master"
            assert labels[f"{name}-1"]["moorage.io/role"] == "replica"
            secret = core.read_namespaced_secret(f"{name}-credentials", namespace)
            assert base64.b64decode(secret.data["password"]).decode() == password
            wait_for(
                "Event Bootstrapped", lambda: "Bootstrapped" in _event_reasons(api_client, namespace, name)
            )


def _require_redis() -> None:
    require_binary("redis-server", "redis-server")


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


def _phase(api_client: Any, namespace: str, name: str, phase: str, members: int | None = None) -> Any:
    def probe() -> dict[str, Any] | None:
        status = status_of(api_client, namespace, name)
        if status.get("phase") != phase:
            return None
        if members is not None and len(status.get("members") or []) != members:
            return None
        return status

    return wait_for(f"phase {phase}" + (f" with {members} members" if members else ""), probe, timeout=120)


def _slot_owners(endpoint: Any, password: str) -> dict[int, int]:
    """Port of each master -> how many slots it owns, as the node at ``endpoint`` sees the cluster."""
    import redis

    with redis.Redis(host=endpoint.host, port=endpoint.port, password=password) as client:
        owners: dict[int, int] = {}
        for entry in client.execute_command("CLUSTER", "SLOTS"):
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            owners[int(master[1])] = owners.get(int(master[1]), 0) + end - start + 1
        return owners


def test_redis_cluster_scale_out_and_in_moves_slots_and_prunes_the_removed_shard(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Any
) -> None:
    """The pods are backed by real redis-server processes (see local_members): a shard added by the
    spec gets slots (and keys) moved to it, and a shard removed has its slots moved off before its
    StatefulSet is pruned; its PVC stays."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    from tests.k8s.kopf_support import local_members, start_local_members, stop_local_members

    _require_redis()
    name = _name("rcs")
    spec = {"engine": "redis", "topology": "cluster", "shards": 3, "replicas": 1}
    custom, core, apps = custom_api(api_client), core_api(api_client), apps_api(api_client)
    with local_members(tmp_path / "local", _namespaced(name, spec, namespace)) as (local, resolved):
        password = _give_password(api_client, local, resolved, namespace)
        endpoints = {m.plan.name: m.endpoint for m in local.members(resolved, get_redis())}
        first = endpoints[f"{name}-shard-0-0"]
        with running_operator(control_plane, api_client, namespace):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            make_pods_ready(api_client, namespace, [f"{name}-shard-{i}-0" for i in range(3)])
            _phase(api_client, namespace, name, "Ready", members=3)
            keys = {f"key:{i}": f"value-{i}" for i in range(300)}
            with RedisCluster(startup_nodes=[ClusterNode(first.host, first.port)], password=password) as rc:
                for key, value in keys.items():
                    rc.set(key, value)

            # scale out 3 -> 4: the new shard's process starts (the container), its pod becomes Ready
            grown = start_local_members(local, _namespaced(name, {**spec, "shards": 4}, namespace))
            added = {m.plan.name: m.endpoint for m in local.members(grown, get_redis())}[f"{name}-shard-3-0"]
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", name, {"spec": {"shards": 4}}
            )
            make_pods_ready(api_client, namespace, [f"{name}-shard-3-0"])
            wait_for(
                "Event Scaled to 4 shards",
                lambda: [
                    e for e in events(api_client, namespace, name) if e[1] == "Scaled" and "-> 4/" in e[2]
                ],
            )
            status = _phase(api_client, namespace, name, "Ready", members=4)
            assert {m["name"] for m in status["members"]} == {f"{name}-shard-{i}-0" for i in range(4)}
            owners = _slot_owners(first, password)
            assert sum(owners.values()) == 16384
            assert owners.get(added.port, 0) > 0, owners
            with redis.Redis(host=added.host, port=added.port, password=password) as client:
                assert client.dbsize() > 0  # keys moved with the slots
            with RedisCluster(startup_nodes=[ClusterNode(first.host, first.port)], password=password) as rc:
                assert {k: (rc.get(k) or b"").decode() for k in keys} == keys

            # scale in 4 -> 3: slots leave shard 3 first, then its StatefulSet (not its PVC) goes
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", name, {"spec": {"shards": 3}}
            )
            wait_for(
                "Event Scaled to 3 shards",
                lambda: [
                    e for e in events(api_client, namespace, name) if e[1] == "Scaled" and "-> 3/" in e[2]
                ],
            )
            wait_for(
                f"StatefulSet {name}-shard-3 pruned",
                lambda: _read(apps.read_namespaced_stateful_set, f"{name}-shard-3", namespace) is None,
            )
            stop_local_members(local, grown, [f"{name}-shard-3-0"])
            claim = _read(core.read_namespaced_persistent_volume_claim, f"data-{name}-shard-3-0", namespace)
            assert claim is not None and claim.metadata.deletion_timestamp is None
            from kubernetes import client as kube

            wait_for(
                "the removed shard's PodDisruptionBudget pruned",
                lambda: (
                    len(kube.PolicyV1Api(api_client).list_namespaced_pod_disruption_budget(namespace).items)
                    == 3
                ),
            )
            _phase(api_client, namespace, name, "Ready", members=3)
            owners = _slot_owners(first, password)
            assert sum(owners.values()) == 16384
            assert added.port not in owners and len(owners) == 3, owners
            with RedisCluster(startup_nodes=[ClusterNode(first.host, first.port)], password=password) as rc:
                assert {k: (rc.get(k) or b"").decode() for k in keys} == keys
            assert "Pruned" in _event_reasons(api_client, namespace, name)


def get_redis() -> Any:
    from middleware.engines.registry import get_engine

    return get_engine("redis")


def test_parameter_changes_are_applied_live_and_restart_ones_are_reported(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Any
) -> None:
    import redis

    from tests.k8s.kopf_support import local_members

    _require_redis()
    name = _name("cfg")
    spec = {"engine": "redis", "topology": "standalone"}
    custom, core = custom_api(api_client), core_api(api_client)
    with local_members(tmp_path / "local", _namespaced(name, spec, namespace)) as (local, resolved):
        password = _give_password(api_client, local, resolved, namespace)
        endpoint = local.members(resolved, get_redis())[0].endpoint
        with running_operator(control_plane, api_client, namespace):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            make_pods_ready(api_client, namespace, [f"{name}-0"])
            _phase(api_client, namespace, name, "Ready", members=1)
            with redis.Redis(host=endpoint.host, port=endpoint.port, password=password) as client:
                assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
                parameters = {"maxmemory-policy": "allkeys-lru", "io-threads": "2"}
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, "middlewares", name, {"spec": {"parameters": parameters}}
                )
                wait_for(
                    "maxmemory-policy allkeys-lru on the running redis",
                    lambda: client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"},
                )
                # io-threads cannot change on a running redis: reported, not applied
                assert client.config_get("io-threads") == {"io-threads": "1"}

            def pending() -> dict[str, Any] | None:
                found = condition(status_of(api_client, namespace, name), "PendingRestart")
                return found if found.get("status") == "True" else None

            found = wait_for("condition PendingRestart", pending)
            assert found["reason"] == "ParametersNeedRestart"
            assert "io-threads" in found["message"] and "maxmemory-policy" not in found["message"]

            def reported_events() -> dict[str, str] | None:
                found = {r: m for _, r, m in events(api_client, namespace, name)}
                wanted = ("Reconfigured", "PendingRestart")
                return {r: found[r] for r in wanted} if all(r in found for r in wanted) else None

            reported = wait_for("Events Reconfigured and PendingRestart", reported_events)
            assert "maxmemory-policy" in reported["Reconfigured"]
            assert "io-threads" in reported["PendingRestart"]
            # the members read the re-rendered ConfigMap when they restart
            config = core.read_namespaced_config_map(f"{name}-config", namespace)
            assert any("io-threads 2" in text for text in config.data.values())


def test_observe_timer_reflects_member_health_without_a_spec_change(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Any
) -> None:
    from tests.k8s.kopf_support import local_members, stop_local_members

    _require_redis()
    name = _name("obs")
    spec = {"engine": "redis", "topology": "standalone"}
    member = f"{name}-0"
    with local_members(tmp_path / "local", _namespaced(name, spec, namespace)) as (local, resolved):
        _give_password(api_client, local, resolved, namespace)
        with running_operator(control_plane, api_client, namespace):
            created = custom_api(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewares", middleware(name, spec)
            )
            make_pods_ready(api_client, namespace, [member])
            _phase(api_client, namespace, name, "Ready", members=1)

            # the process dies while the pod stays Ready (no kubelet here): only the timer can notice
            stop_local_members(local, resolved, [member])

            def unhealthy() -> dict[str, Any] | None:
                status = status_of(api_client, namespace, name)
                members = status.get("members") or []
                return status if members and not members[0]["healthy"] else None

            status = wait_for("the timer to report the member unhealthy", unhealthy)
            assert status["phase"] == "Degraded"
            assert condition(status, "Ready")["status"] == "False"

            local.start_member(resolved, get_redis(), member)
            status = _phase(api_client, namespace, name, "Ready", members=1)
            assert status["members"][0]["healthy"] is True
            body = read_middleware(api_client, namespace, name) or {}
            # no spec change drove any of this
            assert body["metadata"]["generation"] == created["metadata"]["generation"]
