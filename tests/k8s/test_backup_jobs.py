"""MiddlewareBackup / MiddlewareRestore handlers and the backup schedule on a real kube-apiserver.

kopf runs ``operators.main`` + ``operators.backup_handlers`` in a thread. No kubelet runs, so no Job
pod ever starts: the tests play the Job controller's last step by writing the Job's status
conditions, as it would after its pod exited, and check what the handlers then write.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis

from backups.local import LocalTargets
from backups.repository import Repository
from backups.runbook import create_backup
from backups.store import RepositoryConfig, S3Store
from middleware.lifecycle import Lifecycle
from middleware.runtime.local import LocalRuntime
from tests.integration.harness import free_port, require_binary
from tests.integration.s3_harness import S3Server
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kopf_support import GROUP, VERSION, core_api, custom_api, running_operator, wait_for

pytestmark = pytest.mark.k8s

FAST = {"MOORAGE_BACKUP_FOLLOW_SECONDS": "1", "MOORAGE_BACKUP_SCHEDULE_SECONDS": "2"}
PLURALS = ("middlewarebackups", "middlewarerestores", "middlewares")
SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex


def operator(control_plane: ControlPlane, api_client: Any, namespace: str) -> AbstractContextManager[Any]:
    """``kopf run -m operators.main`` watching ``namespace``, with this module's fast timers."""
    return running_operator(
        control_plane, api_client, namespace, env=FAST, plurals=PLURALS, cleanup_timeout=60
    )


def _create(api_client: Any, namespace: str, plural: str, kind: str, name: str, spec: Any) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    custom_api(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _get(api_client: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom_api(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return result


def _status_when(api_client: Any, namespace: str, plural: str, name: str, phase: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _get(api_client, namespace, plural, name).get("status") or {}
        return status if status.get("phase") == phase else None

    result: dict[str, Any] = wait_for(f"{plural}/{name} phase {phase}", probe)
    return result


def _job(api_client: Any, namespace: str, name: str) -> Any:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    def probe() -> Any:
        try:
            return client.BatchV1Api(api_client).read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return wait_for(f"Job {name}", probe)


def _finish_job(api_client: Any, namespace: str, name: str, *, failed: bool) -> None:
    """The Job controller's part after the pod exited: the terminal conditions."""
    from kubernetes import client

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if failed:
        kinds = [("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")]
        extra: dict[str, Any] = {"failed": 1}
    else:
        kinds = [("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")]
        extra = {"succeeded": 1, "completionTime": now}
    conditions = [
        {"type": t, "status": "True", "reason": r, "message": f"pod exited ({r})", "lastTransitionTime": now,
         "lastProbeTime": now}
        for t, r in kinds
    ]  # fmt: skip
    api: Any = client.BatchV1Api(api_client)
    started = api.read_namespaced_job_status(name, namespace).status.start_time
    start = started.strftime("%Y-%m-%dT%H:%M:%SZ") if started else now
    body = {"status": {"startTime": start, "active": 0, "ready": 0, "conditions": conditions, **extra}}
    api.patch_namespaced_job_status(name, namespace, body)


def _events(api_client: Any, namespace: str, kind: str, name: str) -> set[str]:
    items = core_api(api_client).list_namespaced_event(namespace).items
    return {e.reason for e in items if e.involved_object.kind == kind and e.involved_object.name == name}


def _repository(api_client: Any, namespace: str, endpoint: str = "http://127.0.0.1:1") -> None:
    core_api(api_client).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "s3-keys"}, "stringData": {"AWS_ACCESS_KEY_ID": "key-id",
                                                        "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}},
    )  # fmt: skip
    spec = {"endpoint": endpoint, "bucket": "backups", "credentials": {"name": "s3-keys"}}
    _create(api_client, namespace, "backuprepositories", "BackupRepository", "repo", spec)


def _s3_repository(
    api_client: Any, namespace: str, s3_server: S3Server, bucket_prefix: str
) -> RepositoryConfig:
    """The BackupRepository ``repo`` on a fresh bucket of the real S3 server, its keys in a Secret."""
    bucket = bucket_prefix + uuid.uuid4().hex[:10]
    config = s3_server.config(bucket)
    S3Store(config).ensure_bucket()
    core_api(api_client).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "s3-keys"}, "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}},
    )  # fmt: skip
    repo_spec = {"endpoint": s3_server.endpoint, "bucket": bucket, "credentials": {"name": "s3-keys"}}
    _create(api_client, namespace, "backuprepositories", "BackupRepository", "repo", repo_spec)
    return config


REDIS = {"engine": "redis", "topology": "standalone", "plan": "small"}


def test_backup_job_is_created_owned_without_secrets_and_its_failure_is_reported(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    _create(api_client, namespace, "middlewares", "Middleware", "cache", REDIS)
    spec = {"middleware": {"name": "cache"}, "repository": {"name": "repo"}}
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "nightly", spec)
        status = _status_when(api_client, namespace, "middlewarebackups", "nightly", "Running")
        assert status["backupId"].startswith("cache-")
        condition = next(c for c in status["conditions"] if c["type"] == "Complete")
        assert (condition["status"], condition["reason"]) == ("False", "JobRunning")

        job = _job(api_client, namespace, "nightly-backup")
        owner = _get(api_client, namespace, "middlewarebackups", "nightly")
        refs = job.metadata.owner_references
        assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [
            ("MiddlewareBackup", "nightly", owner["metadata"]["uid"], True)
        ]
        container = job.spec.template.spec.containers[0]
        assert status["backupId"] in container.command
        assert job.spec.backoff_limit == 0
        assert job.spec.template.spec.service_account_name == "moorage-backup"
        env = {e.name: e for e in container.env}
        assert env["AWS_SECRET_ACCESS_KEY"].value is None
        assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-keys"
        from kubernetes import client

        raw = json.dumps(client.ApiClient().sanitize_for_serialization(job))
        assert SECRET_VALUE not in raw
        # the Job's ServiceAccount exists, bound to the backup-job role only
        binding = client.RbacAuthorizationV1Api(api_client).read_namespaced_role_binding(
            "moorage-backup", namespace
        )
        assert binding.role_ref.name == "moorage-backup-job"
        wait_for(
            "Event JobCreated",
            lambda: "JobCreated" in _events(api_client, namespace, "MiddlewareBackup", "nightly"),
        )

        _finish_job(api_client, namespace, "nightly-backup", failed=True)
        status = _status_when(api_client, namespace, "middlewarebackups", "nightly", "Failed")
        assert status["phaseReason"] == "JobFailed"
        condition = next(c for c in status["conditions"] if c["type"] == "Complete")
        assert "nightly-backup failed" in condition["message"]
        wait_for(
            "Event JobFailed",
            lambda: "JobFailed" in _events(api_client, namespace, "MiddlewareBackup", "nightly"),
        )


def test_backup_of_a_missing_middleware_fails_naming_the_field(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    spec = {"middleware": {"name": "nowhere"}, "repository": {"name": "repo"}}
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "lost", spec)
        status = _status_when(api_client, namespace, "middlewarebackups", "lost", "Failed")
        condition = next(c for c in status["conditions"] if c["type"] == "Complete")
        assert condition["message"].startswith("spec.middleware.name: Middleware 'nowhere' not found")
        from kubernetes import client

        jobs = client.BatchV1Api(api_client).list_namespaced_job(namespace).items
        assert jobs == []


def test_restore_plan_apply_rollback_and_discard_jobs(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    _create(api_client, namespace, "middlewares", "Middleware", "cache", REDIS)
    backup_id = "cache-20260101t000000z-ab12"
    base = {"repository": {"name": "repo"}, "backupId": backup_id, "target": {"name": "cache"}}
    with operator(control_plane, api_client, namespace):
        # nothing applied yet: a rollback has nothing to undo
        _create(
            api_client,
            namespace,
            "middlewarerestores",
            "MiddlewareRestore",
            "early",
            {**base, "action": "Rollback"},
        )
        status = _status_when(api_client, namespace, "middlewarerestores", "early", "Failed")
        assert status["conditions"][0]["message"].startswith("spec.backupId: no MiddlewareRestore applied")

        _create(
            api_client,
            namespace,
            "middlewarerestores",
            "MiddlewareRestore",
            "look",
            {**base, "action": "Plan"},
        )
        _create(
            api_client,
            namespace,
            "middlewarerestores",
            "MiddlewareRestore",
            "go",
            {**base, "action": "Apply", "safetyCopy": "Snapshot"},
        )
        plan = _status_when(api_client, namespace, "middlewarerestores", "look", "Running")
        applied = _status_when(api_client, namespace, "middlewarerestores", "go", "Running")
        command = _job(api_client, namespace, "look-plan").spec.template.spec.containers[0].command
        assert command[:4] == ["moorage", "restore", "plan", backup_id]
        assert plan["restoreId"] in command
        command = _job(api_client, namespace, "go-apply").spec.template.spec.containers[0].command
        assert command[:4] == ["moorage", "restore", "apply", backup_id]
        assert applied["restoreId"] in command and "--yes" in command
        assert command[command.index("--safety-copy") + 1] == "snapshot"

        _create(
            api_client,
            namespace,
            "middlewarerestores",
            "MiddlewareRestore",
            "undo",
            {**base, "action": "Rollback"},
        )
        undo = _status_when(api_client, namespace, "middlewarerestores", "undo", "Running")
        assert undo["restoreId"] == applied["restoreId"]
        command = _job(api_client, namespace, "undo-rollback").spec.template.spec.containers[0].command
        assert command[:4] == ["moorage", "restore", "rollback", applied["restoreId"]]
        _create(
            api_client,
            namespace,
            "middlewarerestores",
            "MiddlewareRestore",
            "free",
            {**base, "action": "Discard"},
        )
        freed = _status_when(api_client, namespace, "middlewarerestores", "free", "Running")
        assert freed["restoreId"] == applied["restoreId"]
        command = _job(api_client, namespace, "free-discard").spec.template.spec.containers[0].command
        assert command[:4] == ["moorage", "restore", "discard", applied["restoreId"]]

        # the Apply Job fails and the repository is unreachable: the Job's own reason is reported
        _finish_job(api_client, namespace, "go-apply", failed=True)
        status = _status_when(api_client, namespace, "middlewarerestores", "go", "Failed")
        assert "go-apply failed" in status["conditions"][0]["message"]


def test_schedule_creates_a_middleware_backup_when_due(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    policy = {"repository": {"name": "repo"}, "schedule": "0 3 * * *", "keepLast": 2}
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewares", "Middleware", "cache", {**REDIS, "backup": policy})

        def scheduled() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = custom_api(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewarebackups", label_selector="moorage.io/middleware=cache"
            )["items"]
            return items

        # never backed up: due at once
        items = wait_for("a scheduled MiddlewareBackup", scheduled)
        assert len(items) == 1
        # a logical one only: base backups are for archiving PostgreSQL Middlewares
        assert items[0]["spec"] == {
            "middleware": {"name": "cache"},
            "repository": {"name": "repo"},
            "method": "Logical",
        }
        assert items[0]["metadata"]["labels"]["moorage.io/scheduled"] == "true"
        wait_for(
            "Event BackupScheduled",
            lambda: "BackupScheduled" in _events(api_client, namespace, "Middleware", "cache"),
        )
        # the next one is due at 03:00, not on the following timer ticks
        time.sleep(5)
        assert len(scheduled()) == 1


def test_a_succeeded_backup_job_puts_the_real_manifest_in_status(
    control_plane: ControlPlane,
    api_client: Any,
    crds: list[str],
    namespace: str,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """The success path with real data: the Job's work (``moorage backup create --backup-id ID``)
    is done by the same runbook code on a real Redis of the same namespace/name run by the local
    runtime (no kubelet runs the Job's pod here), into a real S3 server; then the Job is marked
    succeeded and the handler must report that backup's manifest."""
    require_binary("redis-server", "redis-server")
    config = _s3_repository(api_client, namespace, s3_server, "bk-")
    _create(api_client, namespace, "middlewares", "Middleware", "cache", REDIS)

    lifecycle = Lifecycle(LocalRuntime(tmp_path / "state"))
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Middleware",
        "metadata": {"name": "cache", "namespace": namespace},
        "spec": REDIS,
    }
    try:
        lifecycle.up(manifest)
        target = LocalTargets(lifecycle).get(namespace, "cache")
        member = target.conn.members[0].endpoint
        with redis.Redis(host=member.host, port=member.port, password=target.conn.password) as client:
            client.mset({f"k{i}": i for i in range(500)})
        spec = {"middleware": {"name": "cache"}, "repository": {"name": "repo"}}
        with operator(control_plane, api_client, namespace):
            _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "nightly", spec)
            running = _status_when(api_client, namespace, "middlewarebackups", "nightly", "Running")
            made = create_backup(Repository(S3Store(config)), target, backup_id=running["backupId"])
            _finish_job(api_client, namespace, "nightly-backup", failed=False)
            status = _status_when(api_client, namespace, "middlewarebackups", "nightly", "Completed")
            assert status["backupId"] == made.backup_id
            assert status["location"] == made.location
            assert status["sizeBytes"] == made.size_bytes > 0
            assert status["sha256"] == made.combined_sha256()
            assert status["durationSeconds"] >= 0
    finally:
        lifecycle.down(namespace, "cache", purge=True)


def test_a_job_left_by_an_earlier_attempt_keeps_its_backup_id(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    """The handler created the Job, then died before writing status: when kopf runs it again, the
    status must name the id that Job backs up, not a fresh random one nobody will ever write."""
    from kubernetes import client

    from backups.jobs import backup_job
    from middleware.models.backup import BackupRepositorySpec
    from operators.backup_handlers import RUN_ID_ANNOTATION
    from operators.settings import operator_config

    _repository(api_client, namespace)
    _create(api_client, namespace, "middlewares", "Middleware", "cache", REDIS)
    earlier = "cache-20260101t000000z-0001"
    job = backup_job(
        owner="nightly",
        namespace=namespace,
        middleware="cache",
        backup_id=earlier,
        repository=BackupRepositorySpec.model_validate(
            {"bucket": "backups", "endpoint": "http://127.0.0.1:1"}
        ),
        settings=operator_config().job,
    )
    job["metadata"]["annotations"] = {RUN_ID_ANNOTATION: earlier}
    batch: Any = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, job)
    spec = {"middleware": {"name": "cache"}, "repository": {"name": "repo"}}
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "nightly", spec)
        status = _status_when(api_client, namespace, "middlewarebackups", "nightly", "Running")
        assert status["backupId"] == earlier


ARCHIVING = {
    "engine": "postgresql",
    "topology": "standalone",
    "plan": "small",
    "backup": {"repository": {"name": "repo"}, "schedule": "0 3 * * *", "walArchiving": True, "keepLast": 2},
}


def test_base_backups_only_of_an_archiving_postgresql_into_its_own_repository(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    suspended = {**ARCHIVING, "backup": {**ARCHIVING["backup"], "suspend": True}}
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewares", "Middleware", "cache", REDIS)
        _create(api_client, namespace, "middlewares", "Middleware", "ledger", suspended)
        base = {"repository": {"name": "repo"}, "method": "Base"}
        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "of-redis",
                {**base, "middleware": {"name": "cache"}})  # fmt: skip
        refused = _status_when(api_client, namespace, "middlewarebackups", "of-redis", "Failed")
        assert refused["phaseReason"] == "InvalidSpec", refused
        message = next(c for c in refused["conditions"] if c["type"] == "Complete")["message"]
        assert message.startswith("spec.method: Base needs a PostgreSQL Middleware with"), message

        _create(api_client, namespace, "backuprepositories", "BackupRepository", "elsewhere",
                {"endpoint": "http://127.0.0.1:1", "bucket": "other"})  # fmt: skip
        elsewhere = {**base, "repository": {"name": "elsewhere"}, "middleware": {"name": "ledger"}}
        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "wrong-repo", elsewhere)
        refused = _status_when(api_client, namespace, "middlewarebackups", "wrong-repo", "Failed")
        message = next(c for c in refused["conditions"] if c["type"] == "Complete")["message"]
        assert message.startswith("spec.repository.name: ledger archives its WAL to 'repo'"), message

        _create(api_client, namespace, "middlewarebackups", "MiddlewareBackup", "before-upgrade",
                {**base, "middleware": {"name": "ledger"}})  # fmt: skip
        _status_when(api_client, namespace, "middlewarebackups", "before-upgrade", "Running")
        command = (
            _job(api_client, namespace, "before-upgrade-backup").spec.template.spec.containers[0].command
        )
        assert command == [
            "moorage",
            "backup",
            "base",
            "ledger",
            "--namespace",
            namespace,
            "--runtime",
            "kubernetes",
            "--name",
            "before-upgrade",
            "-o",
            "json",
        ]  # fmt: skip  (on demand: no retention)
        # Succeeded, but the (unreachable) archive cannot show the backup: never Completed.
        _finish_job(api_client, namespace, "before-upgrade-backup", failed=False)
        status = _status_when(api_client, namespace, "middlewarebackups", "before-upgrade", "Failed")
        assert status["phaseReason"] == "ArchiveUnreadable", status
        assert "backupId" not in status, status


def test_the_schedule_of_an_archiving_postgresql_takes_a_base_backup_beside_the_logical_one(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str
) -> None:
    _repository(api_client, namespace)
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewares", "Middleware", "ledger", ARCHIVING)

        def scheduled() -> list[dict[str, Any]] | None:
            listed: dict[str, Any] = custom_api(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, "middlewarebackups", label_selector="moorage.io/middleware=ledger"
            )
            return listed["items"] if len(listed["items"]) >= 2 else None

        items = wait_for("two scheduled MiddlewareBackups", scheduled)
        by_method = {i["spec"]["method"]: i for i in items}
        assert sorted(by_method) == ["Base", "Logical"], items
        base_name = by_method["Base"]["metadata"]["name"]
        assert base_name == by_method["Logical"]["metadata"]["name"] + "-base"
        command = _job(api_client, namespace, f"{base_name}-backup").spec.template.spec.containers[0].command
        assert command[:4] == ["moorage", "backup", "base", "ledger"], command
        assert command[command.index("--name") + 1] == base_name
        assert command[command.index("--keep-last") + 1] == "2" and "--keep-days" not in command
        time.sleep(5)
        assert len(scheduled() or []) == 2, "one of each per firing, not one per timer tick"


def test_a_drill_schedule_runs_one_drill_job_at_a_time_under_its_own_account(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, s3_server: S3Server
) -> None:
    """The operator reads when the newest drill began from a real S3 server (none yet: due at once),
    creates the drill Job under the drill ServiceAccount, and none while it runs. (No kubelet here:
    the Job never ends; the drill itself runs on real pods in tests/e2e/test_pitr.py.)"""
    _s3_repository(api_client, namespace, s3_server, "dr-")
    policy = {**ARCHIVING["backup"], "drillSchedule": "* * * * *", "suspend": False}
    from kubernetes import client

    batch = client.BatchV1Api(api_client)
    selector = "moorage.io/middleware=ledger,app.kubernetes.io/component=drill"
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewares", "Middleware", "ledger", {**ARCHIVING, "backup": policy})
        jobs = wait_for(
            "a drill Job", lambda: batch.list_namespaced_job(namespace, label_selector=selector).items
        )
        pod = jobs[0].spec.template.spec
        assert pod.service_account_name == "moorage-drill"
        assert pod.containers[0].command == [
            "moorage", "backup", "drill", "ledger", "--namespace", namespace, "--runtime", "kubernetes",
            "-o", "json",
        ]  # fmt: skip
        binding = client.RbacAuthorizationV1Api(api_client).read_namespaced_role_binding(
            "moorage-drill", namespace
        )
        assert binding.role_ref.name == "moorage-drill-job"
        assert jobs[0].metadata.owner_references[0].name == "ledger"
        wait_for(
            "Event DrillScheduled",
            lambda: "DrillScheduled" in _events(api_client, namespace, "Middleware", "ledger"),
        )
        time.sleep(5)  # two more timer ticks: the schedule fired, but a drill still runs
        assert len(batch.list_namespaced_job(namespace, label_selector=selector).items) == 1


class _UnreachableSource:
    """A drill source whose primary does not answer: a real connection to a port nobody listens on."""

    def __init__(self) -> None:
        self.port = free_port()

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", connect_timeout=2)

    def timeline(self) -> int | None:
        return None


def test_a_failed_drill_is_a_warning_event_and_a_metric(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, s3_server: S3Server
) -> None:
    """A drill that failed (its record in the repository, written by the drill itself: here its
    source did not answer) is told once as a Warning Event DrillFailed with the reason, and
    moorage_pitr_last_drill_ok is 0; the verified point stays unset."""
    from backups import pitr_drill
    from operators import metrics

    config = _s3_repository(api_client, namespace, s3_server, "df-")
    record = pitr_drill.run_drill(
        Repository(S3Store(config)),
        namespace,
        "ledger",
        _UnreachableSource(),
        lambda _recovery: None,  # type: ignore[arg-type,return-value]
    )
    assert record["ok"] is False and record["reason"], record
    with operator(control_plane, api_client, namespace):
        _create(api_client, namespace, "middlewares", "Middleware", "ledger", ARCHIVING)

        def warned() -> list[Any]:
            items = core_api(api_client).list_namespaced_event(namespace).items
            return [e for e in items if e.reason == "DrillFailed" and e.involved_object.name == "ledger"]

        (event,) = wait_for("Event DrillFailed", warned)
        assert event.type == "Warning" and record["drillId"] in event.message, event.message
        assert metrics.PITR_LAST_DRILL_OK.labels(namespace, "ledger")._value.get() == 0
        time.sleep(5)  # more timer ticks: told once
        assert len(warned()) == 1 and (warned()[0].count or 1) == 1
        body = custom_api(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", "ledger"
        )
        assert (body.get("status") or {}).get("lastVerifiedRecoveryPoint") is None
