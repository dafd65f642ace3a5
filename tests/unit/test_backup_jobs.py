"""The pure Job builders of backups/jobs.py: command lines, secret handling, the rules every Job keeps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backups import runbook
from backups.jobs import (
    CATALOGS_ENV,
    DRILL_SERVICE_ACCOUNT,
    JOB_SERVICE_ACCOUNT,
    SCRATCH_RESERVE,
    JobSettings,
    backup_job,
    base_backup_job,
    catalogs_value,
    drill_job,
    job_name,
    job_outcome,
    pod_failure_message,
    repository_url,
    restore_job,
)
from backups.kubernetes import catalogs_from_env, merged_catalog
from backups.store import RepositoryConfig
from middleware.catalog import merge_catalogs
from middleware.engines.base import SPOOL_LIMIT_ENV
from middleware.errors import MoorageError
from middleware.models.backup import BackupRepositorySpec

SETTINGS = JobSettings(image="registry.example/moorage:1.2.3")
REPO = BackupRepositorySpec.model_validate(
    {
        "endpoint": "http://s3.example:8333",
        "bucket": "backups",
        "prefix": "/team-a/",
        "region": "eu-west-1",
        "credentials": {"name": "s3-keys", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
        "serverSideEncryption": {"algorithm": "aws:kms", "kmsKeyId": "key-1"},
    }
)


def _backup() -> dict[str, Any]:
    return backup_job(
        owner="nightly",
        namespace="shop",
        middleware="orders",
        backup_id="orders-20260101t000000z-ab12",
        repository=REPO,
        settings=SETTINGS,
    )


def _restore(action: str, settings: JobSettings = SETTINGS, **options: Any) -> dict[str, Any]:
    return restore_job(
        owner="undo",
        namespace="shop",
        target="orders",
        action=action,
        backup_id="orders-20260101t000000z-ab12",
        restore_id="restore-orders-20260102t000000z-cd34",
        repository=REPO,
        settings=settings,
        **options,
    )


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_repository_url_round_trips_through_the_cli_parser() -> None:
    url = repository_url(REPO)
    parsed = RepositoryConfig.from_url(url, env={})
    assert (parsed.bucket, parsed.prefix, parsed.endpoint, parsed.region) == (
        "backups",
        "team-a",
        "http://s3.example:8333",
        "eu-west-1",
    )
    assert (parsed.sse_algorithm, parsed.sse_kms_key_id) == ("aws:kms", "key-1")
    assert repository_url(BackupRepositorySpec(bucket="plain")) == "s3://plain"


def test_backup_job_runs_the_cli_with_the_chosen_id() -> None:
    job = _backup()
    assert job["metadata"]["name"] == "nightly-backup"
    assert job["metadata"]["labels"]["moorage.io/backup"] == "nightly"
    assert job["metadata"]["labels"]["moorage.io/middleware"] == "orders"
    assert _container(job)["command"] == [
        "moorage", "backup", "create", "orders", "--namespace", "shop", "--runtime", "kubernetes",
        "--backup-id", "orders-20260101t000000z-ab12", "-o", "json",
    ]  # fmt: skip
    assert _container(job)["image"] == "registry.example/moorage:1.2.3"


def _base(keep: tuple[int, int | None] | None) -> dict[str, Any]:
    return base_backup_job(
        owner="orders-20260101t030000z-base",
        namespace="shop",
        middleware="orders",
        repository=REPO,
        settings=SETTINGS,
        keep=keep,
    )


@pytest.mark.parametrize(
    ("keep", "retention"),
    [(None, []), ((3, None), ["--keep-last", "3"]), ((2, 14), ["--keep-last", "2", "--keep-days", "14"])],
)
def test_a_base_backup_job_names_the_backup_after_its_resource(
    keep: tuple[int, int | None] | None, retention: list[str]
) -> None:
    job = _base(keep)
    assert job["metadata"]["name"] == "orders-20260101t030000z-base-backup"
    assert job["metadata"]["labels"]["moorage.io/backup"] == "orders-20260101t030000z-base"
    assert _container(job)["command"] == [
        "moorage", "backup", "base", "orders", "--namespace", "shop", "--runtime", "kubernetes",
        "--name", "orders-20260101t030000z-base", *retention, "-o", "json",
    ]  # fmt: skip


def test_a_drill_job_runs_the_drill_under_its_own_account() -> None:
    job = drill_job(
        namespace="shop", middleware="orders", stamp="20260101t040000z", repository=REPO, settings=SETTINGS
    )
    assert job["metadata"]["name"] == "orders-drill-20260101t040000z"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "drill"
    assert job["metadata"]["labels"]["moorage.io/middleware"] == "orders"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == DRILL_SERVICE_ACCOUNT != JOB_SERVICE_ACCOUNT
    assert _container(job)["command"] == [
        "moorage", "backup", "drill", "orders", "--namespace", "shop", "--runtime", "kubernetes",
        "-o", "json",
    ]  # fmt: skip
    assert job["spec"]["backoffLimit"] == 0  # a failed drill is recorded, not retried blindly
    env = {e["name"]: e for e in _container(job)["env"]}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


@pytest.mark.parametrize(
    ("action", "verb_args"),
    [
        ("Plan", ["plan", "orders-20260101t000000z-ab12", "--to", "orders", "--namespace", "shop",
                  "--restore-id", "restore-orders-20260102t000000z-cd34"]),
        ("Apply", ["apply", "orders-20260101t000000z-ab12", "--to", "orders", "--namespace", "shop",
                   "--restore-id", "restore-orders-20260102t000000z-cd34", "--yes", "--safety-copy", "auto"]),
        ("Rollback", ["rollback", "restore-orders-20260102t000000z-cd34", "--yes"]),
        ("Discard", ["discard", "restore-orders-20260102t000000z-cd34", "--yes"]),
    ],
)  # fmt: skip
def test_restore_jobs_per_action(action: str, verb_args: list[str]) -> None:
    job = _restore(action)
    assert job["metadata"]["name"] == f"undo-{action.lower()}"
    assert job["metadata"]["labels"]["moorage.io/action"] == action.lower()
    assert _container(job)["command"] == [
        "moorage",
        "restore",
        *verb_args,
        "--runtime",
        "kubernetes",
        "-o",
        "json",
    ]


@pytest.mark.parametrize(
    "job",
    [_backup(), _base((1, None)), _restore("Apply"), _restore("Rollback")],
    ids=["backup", "base", "apply", "rollback"],
)
def test_every_job_keeps_the_rules(job: dict[str, Any]) -> None:
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == SETTINGS.active_deadline_seconds
    assert spec["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds_after_finished
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == JOB_SERVICE_ACCOUNT
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = _container(job)
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["MOORAGE_BACKUP_REPO"]["value"] == repository_url(REPO)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-keys", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-keys", "key": "secret"}}
    assert all("value" not in e for name, e in env.items() if name.startswith("AWS_"))
    # its error reaches the status even when the repository could not record it
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_no_credentials_means_no_key_env() -> None:
    job = backup_job(
        owner="b", namespace="n", middleware="m", backup_id="m-1",
        repository=BackupRepositorySpec(bucket="plain"), settings=SETTINGS,
    )  # fmt: skip
    names = [e["name"] for e in _container(job)["env"]]
    assert "AWS_ACCESS_KEY_ID" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert "secretKeyRef" not in json.dumps(job)


def test_long_owner_names_stay_valid_and_distinct() -> None:
    a, b = job_name("x" * 70, "rollback"), job_name("x" * 69 + "y", "rollback")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert a.endswith("-rollback")


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], "Running"),
        ([{"type": "Complete", "status": "True"}], "Succeeded"),
        ([{"type": "SuccessCriteriaMet", "status": "True"}], "Succeeded"),
        ([{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}], "Failed"),
        ([{"type": "FailureTarget", "status": "True"}], "Failed"),
        ([{"type": "Failed", "status": "False"}], "Running"),
    ],
)
def test_job_outcome(conditions: list[dict[str, str]], expected: str) -> None:
    assert job_outcome({"status": {"conditions": conditions}})[0] == expected


LOCAL_CATALOG = {
    "apiVersion": "moorage.io/v1alpha1",
    "kind": "MiddlewareCatalog",
    "metadata": {"name": "local-cluster", "uid": "u-1", "resourceVersion": "7", "managedFields": [{}]},
    "spec": {"images": [{"engine": "redis", "version": "7.0", "image": "localhost/moorage/redis:7.0"}]},
}


def test_jobs_carry_the_operators_catalogs() -> None:
    """A namespaced ServiceAccount cannot list cluster-scoped MiddlewareCatalogs: the operator
    passes them, reduced to name and spec, and the Job resolves with them as the operator does."""
    second = {"metadata": {"name": "a-first"}, "spec": {}}
    job = backup_job(
        owner="b", namespace="n", middleware="m", backup_id="m-1",
        repository=REPO, settings=SETTINGS, catalogs=[LOCAL_CATALOG, second],
    )  # fmt: skip
    env = {e["name"]: e for e in _container(job)["env"]}
    documents = catalogs_from_env(env[CATALOGS_ENV]["value"])
    assert documents == [
        {"metadata": {"name": "a-first"}, "spec": {}},
        {"metadata": {"name": "local-cluster"}, "spec": LOCAL_CATALOG["spec"]},
    ]
    restore = restore_job(
        owner="u", namespace="n", target="m", action="Rollback", backup_id="m-1", restore_id="r-1",
        repository=REPO, settings=SETTINGS, catalogs=[],
    )  # fmt: skip
    assert {e["name"]: e for e in _container(restore)["env"]}[CATALOGS_ENV]["value"] == "[]"
    # without catalogs (callers that do not pass them) no env: the CLI then lists them itself
    assert CATALOGS_ENV not in {e["name"] for e in _container(_backup())["env"]}


class _NoApi:
    def catalogs(self) -> list[dict[str, Any]]:
        raise AssertionError("a Job with MOORAGE_CATALOGS must not list catalogs from the API")


class _Api:
    def catalogs(self) -> list[dict[str, Any]]:
        return [LOCAL_CATALOG]


def test_merged_catalog_prefers_the_env_over_the_api() -> None:
    value = catalogs_value([LOCAL_CATALOG])
    from_env = merged_catalog(_NoApi(), {CATALOGS_ENV: value})  # type: ignore[arg-type]
    from_api = merged_catalog(_Api(), {})  # type: ignore[arg-type]
    assert from_env.spec == from_api.spec
    assert from_env.spec != merge_catalogs([]).spec  # the local image, not the default one
    assert merged_catalog(_NoApi(), {CATALOGS_ENV: "[]"}).spec == merge_catalogs([]).spec  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["not json", "{}", '[{"spec": {}}]', '[{"metadata": {"name": 3}}]', "[1]"])
def test_bad_catalogs_env_is_an_error_naming_it(raw: str) -> None:
    with pytest.raises(MoorageError, match=CATALOGS_ENV):
        catalogs_from_env(raw)


def _pod(*states: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"containerStatuses": [{"name": "moorage", "state": s} for s in states]}}


def test_pod_failure_message_is_the_end_of_the_failed_containers_log() -> None:
    log = "progress 1\nprogress 2\n\nerror: GET /apis/x failed (403): forbidden\n"
    failed = _pod({"terminated": {"exitCode": 1, "reason": "Error", "message": log}})
    assert (
        pod_failure_message([failed])
        == "progress 1 | progress 2 | error: GET /apis/x failed (403): forbidden"
    )
    assert pod_failure_message([]) == ""
    assert pod_failure_message([_pod({"running": {}})]) == ""
    assert pod_failure_message([_pod({"terminated": {"exitCode": 0, "message": "fine"}})]) == ""
    long = _pod({"terminated": {"exitCode": 2, "message": "x" * 5000}})
    message = pod_failure_message([long])
    assert message.startswith("...") and len(message) == 603


@pytest.mark.parametrize(("asked", "flag"), [("Aside", "aside"), ("Snapshot", "snapshot"), ("Auto", "auto")])
def test_an_apply_job_passes_the_safety_copy_asked_for(asked: str, flag: str) -> None:
    job = _restore("Apply", safety_copy=asked)
    command = _container(job)["command"]
    assert command[command.index("--safety-copy") + 1] == flag
    # The CLI takes exactly these values (its typer choices are the runbook's enum).
    assert flag in {str(choice) for choice in runbook.SafetyCopy}


def test_the_scratch_volume_bounds_what_a_restore_may_spool() -> None:
    default = _container(_restore("Apply"))
    env = {e["name"]: e.get("value") for e in default["env"]}
    assert env[SPOOL_LIMIT_ENV] == str((64 << 20) - SCRATCH_RESERVE)
    bigger = _restore("Apply", settings=JobSettings(image=SETTINGS.image, scratch="20Gi"))
    env = {e["name"]: e.get("value") for e in _container(bigger)["env"]}
    assert env[SPOOL_LIMIT_ENV] == str((20 << 30) - SCRATCH_RESERVE)
    (volume,) = bigger["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}
