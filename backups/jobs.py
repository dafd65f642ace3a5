"""Pure builders for the Jobs that move backup data in Kubernetes.

A Job runs the operator image with the same ``moorage backup|restore ...`` command a DBA runs by
hand, with ``--runtime kubernetes``: the data path is the CLI's, only the place differs. Nothing
here talks to the API server; the operator (``operators/backup_handlers.py``) creates what these
return. The rules every Job follows, so a handler cannot forget them:

- S3 keys only as ``secretKeyRef`` env from the BackupRepository's credentials Secret: a secret
  value never appears in the Job (Jobs are readable by far more people than Secrets);
- ``backoffLimit: 0``: a restore is never retried blindly (the runbook already rolls back by
  itself, and a second attempt would snapshot the half-restored target as its "safety" copy);
- its own ServiceAccount (reads Middlewares, pods and Secrets of the namespace, and may exec into
  pods: a base backup runs barman where the data directory is; nothing else);
- the MiddlewareCatalogs the operator resolves with, as the ``MOORAGE_CATALOGS`` env (catalogs are
  cluster-scoped: a namespace's RoleBinding cannot let the Job list them, and a ClusterRoleBinding
  per namespace would be a grant the operator cannot clean up);
- Guaranteed resources and the restricted security context of every other container.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from middleware.engines.base import SPOOL_LIMIT_ENV
from middleware.kube.builders import (
    COMPONENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    container_security_context,
    env_from_secret,
    pod_security_context,
    resource_requirements,
)
from middleware.models.backup import BackupRepositorySpec, RestoreAction, SafetyCopy
from middleware.models.common import Resources, quantity_to_number

Manifest = dict[str, Any]

JOB_SERVICE_ACCOUNT = "moorage-backup"
JOB_CLUSTER_ROLE = "moorage-backup-job"
# A scheduled recovery drill creates and deletes a scratch Middleware: a grant of its own, so the
# backup Jobs never hold it.
DRILL_SERVICE_ACCOUNT = "moorage-drill"
DRILL_CLUSTER_ROLE = "moorage-drill-job"
DRILL_COMPONENT = "drill"
BACKUP_LABEL = "moorage.io/backup"
RESTORE_LABEL = "moorage.io/restore"
MIDDLEWARE_LABEL = "moorage.io/middleware"
ACTION_LABEL = "moorage.io/action"
REPO_ENV = "MOORAGE_BACKUP_REPO"
CATALOGS_ENV = "MOORAGE_CATALOGS"
# The image's user (Dockerfile); same uid as the operator.
IMAGE_USER = 10001
_MAX_NAME = 63
# Left on the scratch volume for everything but a restore's spool (HOME, the CLI's own files).
SCRATCH_RESERVE = 32 << 20


@dataclass(frozen=True)
class JobSettings:
    image: str = "ghcr.io/moorage/moorage:0.1.0"
    cpu: str = "500m"
    memory: str = "512Mi"
    # A dump streams in 8 MiB parts; the deadline only stops a Job that hangs on a dead member.
    active_deadline_seconds: int = 6 * 3600
    # Long enough for the operator (even one restarted) to read the outcome; the result itself is
    # in the MiddlewareBackup/Restore status and the repository, not in the Job.
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    # The Job's /tmp (an emptyDir of this size limit, on the node's disk). A PostgreSQL restore
    # spools an archive of several tables there to load it with pg_restore -j when it fits; larger
    # ones stream with one worker. Raise it (MOORAGE_JOB_SCRATCH) where nodes have the disk.
    scratch: str = "64Mi"


def job_name(owner: str, suffix: str) -> str:
    """``<owner>-<suffix>``; a long owner name is cut and made unique by a hash of the whole."""
    name = f"{owner}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{owner[: _MAX_NAME - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def repository_url(spec: BackupRepositorySpec) -> str:
    """The ``s3://`` URL the CLI takes (``backups.store.RepositoryConfig.from_url``), keys excluded."""
    query: dict[str, str] = {}
    if spec.endpoint:
        query["endpoint"] = spec.endpoint
    if spec.region != "us-east-1":
        query["region"] = spec.region
    if not spec.force_path_style:
        query["pathStyle"] = "false"
    sse = spec.server_side_encryption
    if sse is not None:
        query["sse"] = sse.algorithm
        if sse.kms_key_id:
            query["kmsKeyId"] = sse.kms_key_id
    prefix = spec.prefix.strip("/")
    url = f"s3://{spec.bucket}" + (f"/{prefix}" if prefix else "")
    return url + (f"?{urlencode(query)}" if query else "")


def repository_env(spec: BackupRepositorySpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": REPO_ENV, "value": repository_url(spec)}]
    if spec.credentials is not None:
        ref = spec.credentials
        env.append(env_from_secret("AWS_ACCESS_KEY_ID", ref.name, ref.access_key_id_key))
        env.append(env_from_secret("AWS_SECRET_ACCESS_KEY", ref.name, ref.secret_access_key_key))
    return env


def catalogs_value(documents: Iterable[Mapping[str, Any]]) -> str:
    """The MiddlewareCatalogs (as listed from the API) for ``CATALOGS_ENV``: name and spec only (what
    ``merge_catalogs`` reads), in name order, compact JSON. ``backups.kubernetes`` reads it back."""
    reduced = [
        {"metadata": {"name": str(d["metadata"]["name"])}, "spec": dict(d.get("spec") or {})}
        for d in documents
    ]
    reduced.sort(key=lambda d: d["metadata"]["name"])
    return json.dumps(reduced, sort_keys=True, separators=(",", ":"))


def _labels(middleware: str, component: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        NAME_LABEL: "moorage-backup",
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        MIDDLEWARE_LABEL: middleware,
        **extra,
    }


def _job(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    command: list[str],
    repository: BackupRepositorySpec,
    settings: JobSettings,
    catalogs: Iterable[Mapping[str, Any]] | None,
    service_account: str = JOB_SERVICE_ACCOUNT,
) -> Manifest:
    resources = Resources(cpu=settings.cpu, memory=settings.memory)
    catalog_env = [] if catalogs is None else [{"name": CATALOGS_ENV, "value": catalogs_value(catalogs)}]
    container = {
        "name": "moorage",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [
            *repository_env(repository),
            *catalog_env,
            # The CLI writes nothing but its output; HOME on a read-only image must still exist.
            {"name": "HOME", "value": "/tmp"},
            # What a restore may spool there: the scratch volume less room for everything else.
            {
                "name": SPOOL_LIMIT_ENV,
                "value": str(max(0, int(quantity_to_number(settings.scratch)) - SCRATCH_RESERVE)),
            },
        ],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": resource_requirements(resources),
        "securityContext": container_security_context(),
        # A CLI that fails before the repository can record why (RBAC, DNS, S3 unreachable) leaves
        # its error as the termination message, which the operator puts in the status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": service_account,
                    # The Job reads the Middleware, its pods and its password through the API.
                    "automountServiceAccountToken": True,
                    "restartPolicy": "Never",
                    "securityContext": pod_security_context(user=IMAGE_USER, group=IMAGE_USER),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": settings.scratch}}],
                },
            },
        },
    }


def backup_job(
    *,
    owner: str,
    namespace: str,
    middleware: str,
    backup_id: str,
    repository: BackupRepositorySpec,
    settings: JobSettings,
    catalogs: Iterable[Mapping[str, Any]] | None = None,
) -> Manifest:
    """The Job of the MiddlewareBackup ``owner``: ``moorage backup create`` with the id chosen up front.
    ``catalogs``: the cluster's MiddlewareCatalogs, passed to the Job (``CATALOGS_ENV``)."""
    command = [
        "moorage",
        "backup",
        "create",
        middleware,
        "--namespace",
        namespace,
        "--runtime",
        "kubernetes",
        "--backup-id",
        backup_id,
        "-o",
        "json",
    ]
    return _job(
        name=job_name(owner, "backup"),
        namespace=namespace,
        labels=_labels(middleware, "backup", {BACKUP_LABEL: owner}),
        command=command,
        repository=repository,
        settings=settings,
        catalogs=catalogs,
    )


def base_backup_job(
    *,
    owner: str,
    namespace: str,
    middleware: str,
    repository: BackupRepositorySpec,
    settings: JobSettings,
    keep: tuple[int, int | None] | None = None,
    catalogs: Iterable[Mapping[str, Any]] | None = None,
) -> Manifest:
    """The Job of a ``method: Base`` MiddlewareBackup ``owner``: ``moorage backup base`` (barman in the
    primary's pod, over pods/exec), the backup named after ``owner`` so the operator finds it in the
    archive. ``keep`` (keepLast, keepDays): a scheduled one applies the base backups' retention."""
    command = ["moorage", "backup", "base", middleware, "--namespace", namespace, "--runtime", "kubernetes"]
    command += ["--name", owner]
    if keep is not None:
        keep_last, keep_days = keep
        command += ["--keep-last", str(keep_last)]
        command += ["--keep-days", str(keep_days)] if keep_days is not None else []
    return _job(
        name=job_name(owner, "backup"),
        namespace=namespace,
        labels=_labels(middleware, "backup", {BACKUP_LABEL: owner}),
        command=[*command, "-o", "json"],
        repository=repository,
        settings=settings,
        catalogs=catalogs,
    )


def drill_job(
    *,
    namespace: str,
    middleware: str,
    stamp: str,
    repository: BackupRepositorySpec,
    settings: JobSettings,
    catalogs: Iterable[Mapping[str, Any]] | None = None,
) -> Manifest:
    """The Job of a scheduled recovery drill of ``middleware`` (``spec.backup.drillSchedule``):
    ``moorage backup drill``, under the drill ServiceAccount (it creates the scratch Middleware).
    The outcome is the drill's record in the repository, as for a drill run by hand."""
    command = ["moorage", "backup", "drill", middleware, "--namespace", namespace, "--runtime", "kubernetes"]
    return _job(
        name=job_name(middleware, f"drill-{stamp}"),
        namespace=namespace,
        labels=_labels(middleware, DRILL_COMPONENT, {}),
        command=[*command, "-o", "json"],
        repository=repository,
        settings=settings,
        catalogs=catalogs,
        service_account=DRILL_SERVICE_ACCOUNT,
    )


def restore_job(
    *,
    owner: str,
    namespace: str,
    target: str,
    action: RestoreAction | str,
    backup_id: str,
    restore_id: str,
    repository: BackupRepositorySpec,
    settings: JobSettings,
    catalogs: Iterable[Mapping[str, Any]] | None = None,
    safety_copy: SafetyCopy | str = SafetyCopy.AUTO,
) -> Manifest:
    """The Job of the MiddlewareRestore ``owner``. Plan and Apply record their outcome under
    ``restore_id`` in the repository; Rollback undoes the earlier restore ``restore_id``, Discard
    deletes what it set aside."""
    action = RestoreAction(action)
    if action in (RestoreAction.ROLLBACK, RestoreAction.DISCARD):
        # The restore record names the target's namespace.
        command = ["moorage", "restore", action.value.lower(), restore_id, "--yes"]
    else:
        verb = "plan" if action is RestoreAction.PLAN else "apply"
        command = ["moorage", "restore", verb, backup_id, "--to", target, "--namespace", namespace]
        command += ["--restore-id", restore_id]
        if action is RestoreAction.APPLY:
            command += ["--yes", "--safety-copy", SafetyCopy(safety_copy).value.lower()]
    suffix = action.value.lower()
    return _job(
        name=job_name(owner, suffix),
        namespace=namespace,
        labels=_labels(target, "restore", {RESTORE_LABEL: owner, ACTION_LABEL: suffix}),
        command=[*command, "--runtime", "kubernetes", "-o", "json"],
        repository=repository,
        settings=settings,
        catalogs=catalogs,
    )


def job_outcome(job: Mapping[str, Any]) -> tuple[str, str]:
    """("Running" | "Succeeded" | "Failed", message) from the Job's status conditions (what the Job
    controller writes; ``backoffLimit: 0`` makes the first pod failure final)."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        kind = condition.get("type")
        message = condition.get("message") or condition.get("reason") or ""
        if kind in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded", message
        if kind in ("Failed", "FailureTarget"):
            return "Failed", message or "the Job failed"
    return "Running", ""


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_MESSAGE_LIMIT = 600


def pod_failure_message(pods: Iterable[Mapping[str, Any]]) -> str:
    """The termination message of the Job's failed container (its log's end, with
    ``FallbackToLogsOnError``): its last three non-empty lines joined by " | ", cut to a
    status-sized string from the front; '' when there is none."""
    found = ""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode", 0) != 0 and terminated.get("message"):
                found = str(terminated["message"])
    lines = [line.strip() for line in found.strip().splitlines() if line.strip()]
    message = " | ".join(lines[-3:])
    return message if len(message) <= _MESSAGE_LIMIT else "..." + message[-_MESSAGE_LIMIT:]
