"""MiddlewareBackup / MiddlewareRestore handlers and the backup schedule of ``Middleware.spec.backup``.

Thin: validate the references → choose the backup/restore id up front (so the status names it
before any data moves) → create the Job (``backups/jobs.py``) owned by the resource → phase
Running. A timer then follows the Job; when it finishes, the outcome is read where the Job wrote
it, the repository (the manifest of a backup, the record of a restore), never from pod logs, and
the status gets phase Completed or Failed with the reason. The data movement itself is the CLI's
(``moorage backup|restore ... --runtime kubernetes``), the same code a DBA runs by hand.

Importing this module registers the handlers (``kopf run -m operators.main -m operators.backup_handlers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import kopf

from backups import pitr, pitr_drill, runbook
from backups.errors import BackupError
from backups.jobs import (
    DRILL_CLUSTER_ROLE,
    DRILL_COMPONENT,
    DRILL_SERVICE_ACCOUNT,
    JOB_CLUSTER_ROLE,
    JOB_NAME_LABEL,
    JOB_SERVICE_ACCOUNT,
    MIDDLEWARE_LABEL,
    backup_job,
    base_backup_job,
    drill_job,
    job_name,
    job_outcome,
    pod_failure_message,
    restore_job,
)
from backups.kubernetes import open_repository
from backups.repository import Repository
from middleware.errors import MoorageError
from middleware.kube.builders import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from middleware.models.backup import (
    BackupMethod,
    BackupRepositorySpec,
    MiddlewareBackupSpec,
    MiddlewareBackupStatus,
    MiddlewareRestoreSpec,
    MiddlewareRestoreStatus,
    RestoreAction,
)
from middleware.models.common import ResourceStatus
from middleware.models.middleware import BackupPolicy
from middleware.runtime.kubernetes import KubernetesRuntime, owner_reference
from operators import metrics
from operators.kube import context
from operators.reconcile import events
from operators.settings import GROUP, VERSION, operator_config

log = logging.getLogger(__name__)

API = f"{GROUP}/{VERSION}"
BACKUPS = (GROUP, VERSION, "middlewarebackups")
RESTORES = (GROUP, VERSION, "middlewarerestores")
MIDDLEWARES = (GROUP, VERSION, "middlewares")
SCHEDULED_LABEL = "moorage.io/scheduled"
COMPLETE = "Complete"
RUNNING, COMPLETED, FAILED = "Running", "Completed", "Failed"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _seconds_between(start: str | None, end: str) -> float | None:
    if not start:
        return None
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


# -- shared steps -----------------------------------------------------------------------------


def _write(patch: MutableMapping[str, Any], status: ResourceStatus) -> None:
    patch["status"] = status.to_wire()


def _fail(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: ResourceStatus,
    reason: str,
    message: str,
) -> NoReturn:
    _transition(body, patch, status, FAILED, reason, message, complete=False, warning=True)
    raise kopf.PermanentError(message)


def _transition(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: ResourceStatus,
    phase: str,
    reason: str,
    message: str,
    *,
    complete: bool,
    event: str | None = None,
    warning: bool = False,
) -> None:
    """One status step: phase, reason and the ``Complete`` condition written together, and the
    Event that tells it (``event`` when its reason differs from the status reason)."""
    status.phase, status.phase_reason = phase, reason
    status.set_condition(COMPLETE, complete, reason, message)
    _write(patch, status)
    post = events.warning if warning else events.normal
    post(body, reason=event or reason, message=message)


def _finished_job(
    rt: KubernetesRuntime,
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: ResourceStatus,
    job_id: str,
) -> tuple[str, str] | None:
    """The Job's (outcome, message) once it ended; None while it runs; Failed status if it is gone."""
    job = rt.get("batch/v1", "Job", body["metadata"]["namespace"], job_id)
    if job is None:
        _fail(body, patch, status, "JobMissing", f"Job {job_id} is gone before it reported an outcome")
    outcome, message = job_outcome(job)
    if outcome == RUNNING:
        return None
    if outcome == FAILED:
        # "reached the specified backoff limit" says nothing: the container's own last words do.
        said = pod_failure_message(rt.pods(body["metadata"]["namespace"], {JOB_NAME_LABEL: job_id}))
        message = f"{message}: {said}" if said else message
    return outcome, message


def _require(
    rt: KubernetesRuntime,
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    status: ResourceStatus,
    kind: str,
    name: str,
    field: str,
) -> dict[str, Any]:
    namespace = body["metadata"]["namespace"]
    found = rt.get(API, kind, namespace, name)
    if found is None:
        _fail(body, patch, status, "InvalidReference", f"{field}: {kind} {name!r} not found in {namespace}")
    return found


def ensure_job_account(
    rt: KubernetesRuntime,
    namespace: str,
    account: str = JOB_SERVICE_ACCOUNT,
    cluster_role: str = JOB_CLUSTER_ROLE,
) -> None:
    """A Jobs' ServiceAccount in ``namespace``, bound to its ClusterRole (``moorage-backup-job``
    for backups and restores, ``moorage-drill-job`` for drills; created once, never overwritten)."""
    rt.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}}
    )
    rt.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )


RUN_ID_ANNOTATION = "moorage.io/run-id"


def _start_job(rt: KubernetesRuntime, body: kopf.Body, job: dict[str, Any], run_id: str) -> str:
    """Create the Job for ``run_id`` (a backup or restore id); returns the id the Job really runs.
    When the Job exists already (the handler is retried or resumed after it created it but before
    the status was written), that Job's id wins: a new random id would name data nobody writes."""
    ensure_job_account(rt, body["metadata"]["namespace"])
    job["metadata"]["ownerReferences"] = [owner_reference(body)]
    job["metadata"].setdefault("annotations", {})[RUN_ID_ANNOTATION] = run_id
    if rt.create(job) is not None:
        return run_id
    existing = rt.get("batch/v1", "Job", job["metadata"]["namespace"], job["metadata"]["name"]) or {}
    return str(((existing.get("metadata") or {}).get("annotations") or {}).get(RUN_ID_ANNOTATION, run_id))


def _repository_spec(found: Mapping[str, Any]) -> BackupRepositorySpec:
    return BackupRepositorySpec.model_validate(found.get("spec") or {})


# -- MiddlewareBackup ---------------------------------------------------------------------------


@kopf.on.resume(*BACKUPS)
@kopf.on.create(*BACKUPS)
def start_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status = MiddlewareBackupStatus.model_validate(dict(body.get("status") or {}))
    if status.phase in (RUNNING, COMPLETED, FAILED):
        return
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    spec = MiddlewareBackupSpec.model_validate(dict(body["spec"]))
    source = _require(rt, body, patch, status, "Middleware", spec.middleware.name, "spec.middleware.name")
    repo = _require(rt, body, patch, status, "BackupRepository", spec.repository.name, "spec.repository.name")
    if spec.method == BackupMethod.BASE:
        _start_base_backup(rt, body, patch, status, spec, source, repo)
        return
    backup_id = Repository.new_id(spec.middleware.name)
    job = backup_job(
        owner=name,
        namespace=namespace,
        middleware=spec.middleware.name,
        backup_id=backup_id,
        repository=_repository_spec(repo),
        settings=operator_config().job,
        catalogs=context.catalog_documents(rt),
    )
    backup_id = _start_job(rt, body, job, backup_id)
    status.backup_id, status.started_at = backup_id, _now()
    message = f"Job {job['metadata']['name']} backs up {spec.middleware.name} as {backup_id}"
    _transition(body, patch, status, RUNNING, "JobRunning", message, complete=False, event="JobCreated")


def _start_base_backup(
    rt: KubernetesRuntime,
    body: kopf.Body,
    patch: kopf.Patch,
    status: MiddlewareBackupStatus,
    spec: MiddlewareBackupSpec,
    source: Mapping[str, Any],
    repo: Mapping[str, Any],
) -> None:
    """A physical base backup: only of an archiving PostgreSQL Middleware (``source``), into the
    repository it archives to (a base backup elsewhere would have no WAL to recover with). The
    backup is named after this MiddlewareBackup; barman gives its id, written once the Job is done."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    source_spec = source.get("spec") or {}
    policy = source_spec.get("backup") or {}
    if source_spec.get("engine") != "postgresql" or not policy.get("walArchiving"):
        _fail(
            body,
            patch,
            status,
            "InvalidSpec",
            f"spec.method: Base needs a PostgreSQL Middleware with spec.backup.walArchiving; "
            f"{spec.middleware.name} is {source_spec.get('engine')} with walArchiving "
            f"{bool(policy.get('walArchiving'))} (method Logical backs up any engine)",
        )
    archived_to = (policy.get("repository") or {}).get("name")
    if archived_to != spec.repository.name:
        _fail(
            body,
            patch,
            status,
            "InvalidSpec",
            f"spec.repository.name: {spec.middleware.name} archives its WAL to {archived_to!r}; a base "
            f"backup in {spec.repository.name!r} would have no WAL to recover with",
        )
    scheduled = (body["metadata"].get("labels") or {}).get(SCHEDULED_LABEL) == "true"
    keep = None
    if scheduled:
        kept = BackupPolicy.model_validate(dict(policy))
        keep = (kept.keep_last or 1, kept.keep_days)
    job = base_backup_job(
        owner=name,
        namespace=namespace,
        middleware=spec.middleware.name,
        repository=_repository_spec(repo),
        settings=operator_config().job,
        keep=keep,
        catalogs=context.catalog_documents(rt),
    )
    _start_job(rt, body, job, name)
    status.started_at = _now()
    message = (
        f"Job {job['metadata']['name']} takes base backup {name} of {spec.middleware.name} "
        "in its primary's pod"
    )
    _transition(body, patch, status, RUNNING, "JobRunning", message, complete=False, event="JobCreated")


def _is_running(status: Mapping[str, Any] | None, **_: Any) -> bool:
    return (status or {}).get("phase") == RUNNING


@kopf.timer(*BACKUPS, interval=operator_config().backup_follow_interval, when=_is_running)
def follow_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status = MiddlewareBackupStatus.model_validate(dict(body.get("status") or {}))
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    spec = MiddlewareBackupSpec.model_validate(dict(body["spec"]))
    job_id = job_name(name, "backup")
    finished = _finished_job(rt, body, patch, status, job_id)
    if finished is None:
        return
    outcome, message = finished
    ended = _now()
    status.finished_at = ended
    status.duration_seconds = _seconds_between(status.started_at, ended)
    if outcome == "Failed":
        why = (
            ""
            if spec.method == BackupMethod.BASE
            else _backup_failure(rt, namespace, spec.repository.name, status.backup_id)
        )
        _fail(body, patch, status, "JobFailed", f"Job {job_id} failed: {why or message}")
    if spec.method == BackupMethod.BASE:
        _complete_base_backup(rt, body, patch, status, spec, job_id)
        return
    try:
        manifest = open_repository(rt, namespace, spec.repository.name).find(status.backup_id or "")
    except (MoorageError, BackupError) as exc:
        # The Job said it succeeded, so a missing manifest is an error, not a reason to wait.
        _fail(body, patch, status, "ManifestUnreadable", f"Job {job_id} succeeded but {exc}")
    status.location = manifest.location
    status.size_bytes = manifest.size_bytes
    status.sha256 = manifest.combined_sha256()
    status.started_at = (
        manifest.started_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
    status.duration_seconds = manifest.duration_seconds
    done = f"backup {manifest.backup_id}: {manifest.size_bytes} bytes at {manifest.location}"
    _transition(body, patch, status, COMPLETED, "BackupCompleted", done, complete=True)


def _complete_base_backup(
    rt: KubernetesRuntime,
    body: kopf.Body,
    patch: kopf.Patch,
    status: MiddlewareBackupStatus,
    spec: MiddlewareBackupSpec,
    job_id: str,
) -> None:
    """The base backup the Job took, found by its name in the archive (barman writes it complete
    last, so one listed there is whole)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        repository = open_repository(rt, namespace, spec.repository.name)
        archive = pitr.WalArchive(repository.config, namespace, spec.middleware.name)
        found = [b for b in pitr.inspect(repository.store, archive).base_backups if b.name == name]
    except (MoorageError, BackupError) as exc:
        _fail(body, patch, status, "ArchiveUnreadable", f"Job {job_id} succeeded but {exc}")
    if not found:
        _fail(
            body,
            patch,
            status,
            "BaseBackupMissing",
            f"Job {job_id} succeeded but no complete base backup named {name} is in {archive.destination}",
        )
    taken = found[-1]
    status.backup_id = taken.backup_id
    status.location = f"{archive.destination}/{spec.middleware.name}/base/{taken.backup_id}"
    status.size_bytes = taken.size_bytes
    done = (
        f"base backup {taken.backup_id} (timeline {taken.timeline}, WAL {taken.begin_wal.name}.."
        f"{taken.end_wal.name}): recoverable from {taken.end_time.isoformat()}"
    )
    _transition(body, patch, status, COMPLETED, "BackupCompleted", done, complete=True)


def _backup_failure(rt: KubernetesRuntime, namespace: str, repository: str, backup_id: str | None) -> str:
    """The reason the runbook audited for ``backup_id`` (the pod's logs may be gone), or ''."""
    try:
        log_ = open_repository(rt, namespace, repository).audit_log()
    except (MoorageError, BackupError) as exc:
        log.warning("could not read the audit log of %s/%s: %s", namespace, repository, exc)
        return ""
    for event in reversed(log_):
        if event.get("event") == "backup-failed" and event.get("backupId") == backup_id:
            return str(event.get("reason", ""))
    return ""


# -- MiddlewareRestore --------------------------------------------------------------------------


def _restore_to_undo(rt: KubernetesRuntime, namespace: str, spec: MiddlewareRestoreSpec) -> str | None:
    """The restore id of the newest Apply of ``spec.backupId`` into ``spec.target``."""
    applied = []
    for item in rt.list_objects(API, "MiddlewareRestore", namespace):
        other = item.get("spec") or {}
        restore_id = (item.get("status") or {}).get("restoreId")
        if (
            restore_id
            and other.get("action", RestoreAction.APPLY.value) == RestoreAction.APPLY.value
            and other.get("backupId") == spec.backup_id
            and (other.get("target") or {}).get("name") == spec.target.name
        ):
            applied.append((item["metadata"].get("creationTimestamp", ""), restore_id))
    return max(applied)[1] if applied else None


@kopf.on.resume(*RESTORES)
@kopf.on.create(*RESTORES)
def start_restore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status = MiddlewareRestoreStatus.model_validate(dict(body.get("status") or {}))
    if status.phase in (RUNNING, COMPLETED, FAILED):
        return
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    spec = MiddlewareRestoreSpec.model_validate(dict(body["spec"]))
    action = RestoreAction(spec.action)
    _require(rt, body, patch, status, "Middleware", spec.target.name, "spec.target.name")
    repo = _require(rt, body, patch, status, "BackupRepository", spec.repository.name, "spec.repository.name")
    if action in (RestoreAction.ROLLBACK, RestoreAction.DISCARD):
        restore_id = _restore_to_undo(rt, namespace, spec)
        if restore_id is None:
            what = "roll back" if action is RestoreAction.ROLLBACK else "discard the data set aside of"
            _fail(
                body,
                patch,
                status,
                "InvalidReference",
                f"spec.backupId: no MiddlewareRestore applied {spec.backup_id} into {spec.target.name} "
                f"in this namespace, so there is no restore to {what}",
            )
    else:
        restore_id = runbook.new_restore_id(spec.target.name)
    job = restore_job(
        owner=name,
        namespace=namespace,
        target=spec.target.name,
        action=action,
        backup_id=spec.backup_id,
        restore_id=restore_id,
        repository=_repository_spec(repo),
        settings=operator_config().job,
        catalogs=context.catalog_documents(rt),
        safety_copy=spec.safety_copy,
    )
    restore_id = _start_job(rt, body, job, restore_id)
    status.restore_id, status.started_at = restore_id, _now()
    message = f"Job {job['metadata']['name']}: {action.value} {spec.backup_id} into {spec.target.name}"
    _transition(body, patch, status, RUNNING, "JobRunning", message, complete=False, event="JobCreated")


@kopf.timer(*RESTORES, interval=operator_config().backup_follow_interval, when=_is_running)
def follow_restore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    status = MiddlewareRestoreStatus.model_validate(dict(body.get("status") or {}))
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    spec = MiddlewareRestoreSpec.model_validate(dict(body["spec"]))
    action = RestoreAction(spec.action)
    job_id = job_name(name, action.value.lower())
    finished = _finished_job(rt, body, patch, status, job_id)
    if finished is None:
        return
    outcome, message = finished
    status.finished_at = _now()
    record: dict[str, Any] = {}
    try:
        record = open_repository(rt, namespace, spec.repository.name).load_restore(status.restore_id or "")
    except (MoorageError, BackupError) as exc:
        log.info("no restore record for %s: %s", status.restore_id, exc)
    if record:
        status.safety_snapshot = record.get("safetySnapshot")
        status.safety_copy = record.get("safetyCopy")
        status.rolled_back = bool(record.get("rolledBack"))
        status.aside_discarded = bool(record.get("asideDiscarded"))
        overwrote = record.get("overwrote")
        if isinstance(overwrote, dict):
            status.plan = {str(k): int(v) for k, v in overwrote.items()}
    if outcome == "Failed":
        # The record says what state the target is in (refused, rolled back, or needing a rollback).
        why = f"{record.get('phase')}: {record.get('message')}" if record else message
        _fail(body, patch, status, "JobFailed", f"Job {job_id} failed: {why}")
    if not record:
        _fail(body, patch, status, "RecordMissing", f"Job {job_id} succeeded but left no restore record")
    done = f"{record.get('phase')}: {record.get('message')}"
    _transition(body, patch, status, COMPLETED, f"{action.value}Completed", done, complete=True)


# -- schedules ----------------------------------------------------------------------------------


def _has_schedule(spec: Mapping[str, Any] | None, **_: Any) -> bool:
    return bool((spec or {}).get("backup"))


def _created(item: Mapping[str, Any]) -> datetime:
    stamp = item["metadata"].get("creationTimestamp") or "1970-01-01T00:00:00Z"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def prune_scheduled(items: list[dict[str, Any]], policy: BackupPolicy, now: datetime) -> list[dict[str, Any]]:
    """Finished scheduled MiddlewareBackups outside ``keepLast``/``keepDays``, oldest first; never
    the newest, never one still running (its Job still needs its owner)."""
    ordered = sorted(items, key=lambda i: (_created(i), i["metadata"]["name"]), reverse=True)
    keep_last = policy.keep_last or 1
    doomed = []
    for index, item in enumerate(ordered):
        if index < keep_last:
            continue
        if (item.get("status") or {}).get("phase") not in (COMPLETED, FAILED):
            continue
        if policy.keep_days is not None and now - _created(item) < timedelta(days=policy.keep_days):
            continue
        doomed.append(item)
    return list(reversed(doomed))


@kopf.timer(
    *MIDDLEWARES,
    id="backup-policy",
    interval=operator_config().backup_schedule_interval,
    when=_has_schedule,
)
def backup_policy(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """``spec.backup``'s periodic work, as one timer: kopf matches every timer of a kind against
    every watch event of every object, so three timers cost each Middleware event three matches
    (taking the three out cut a 500-Middleware burst's median time to first status by 17%). Each step
    runs whatever the one before it did; the first failure is raised after all have run, for kopf
    to log and retry."""
    spec = body.get("spec") or {}
    steps: list[Callable[[], None]] = [lambda: backup_schedule(body)]
    if _archives(spec):
        steps.append(lambda: recovery_proof(body, patch))
    if _drills_scheduled(spec):
        steps.append(lambda: drill_schedule(body))
    failures: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as exc:  # the other steps still run; kopf logs the first and retries
            failures.append(exc)
    meta = body["metadata"]
    for later in failures[1:]:
        log.warning("%s/%s: backup policy: %s", meta["namespace"], meta["name"], later)
    if failures:
        raise failures[0]


def backup_schedule(body: kopf.Body) -> None:
    """Create a MiddlewareBackup when ``spec.backup.schedule`` fired since the last scheduled one
    (and, for an archiving PostgreSQL Middleware, a ``method: Base`` one beside it, as the local
    schedule takes both), then prune scheduled MiddlewareBackups (and their data in the repository)
    to the retention, each method on its own; the base backups' own Job prunes their data."""
    if body["metadata"].get("deletionTimestamp"):
        return
    policy = BackupPolicy.model_validate(dict(body["spec"]["backup"]))
    if policy.suspend:
        return
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    labels = {MIDDLEWARE_LABEL: name, SCHEDULED_LABEL: "true"}
    existing = rt.list_objects(API, "MiddlewareBackup", namespace, labels)
    base = [i for i in existing if (i.get("spec") or {}).get("method") == BackupMethod.BASE.value]
    logical = [i for i in existing if i not in base]
    now = datetime.now(UTC)
    last = max((_created(i) for i in logical), default=None)
    due, upcoming = runbook.is_due(policy.schedule, last, now)
    if due:
        stamp = now.strftime("%Y%m%dt%H%M%Sz")
        methods = [(job_name(name, stamp), BackupMethod.LOGICAL)]
        if policy.wal_archiving and (body["spec"].get("engine") == "postgresql"):
            methods.append((job_name(name, f"{stamp}-base"), BackupMethod.BASE))
        for backup_name, method in methods:
            rt.create(
                {
                    "apiVersion": API,
                    "kind": "MiddlewareBackup",
                    "metadata": {
                        "name": backup_name,
                        "namespace": namespace,
                        "labels": {**labels, MANAGED_BY_LABEL: MANAGED_BY},
                    },
                    "spec": {
                        "middleware": {"name": name},
                        "repository": {"name": policy.repository.name},
                        "method": method.value,
                    },
                }
            )
        created = " and ".join(f"{n} ({m.value})" for n, m in methods)
        events.normal(
            body,
            reason="BackupScheduled",
            message=f"created MiddlewareBackup {created} ({policy.schedule}); "
            f"next {upcoming:%Y-%m-%dT%H:%MZ}",
        )
    doomed = prune_scheduled(logical, policy, now) + prune_scheduled(base, policy, now)
    for item in doomed:
        rt.delete(API, "MiddlewareBackup", namespace, item["metadata"]["name"])
    if doomed or due:
        _prune_repository(rt, body, policy, now)
    if doomed:
        pruned = ", ".join(i["metadata"]["name"] for i in doomed)
        events.normal(body, reason="BackupsPruned", message=f"deleted MiddlewareBackup {pruned}")


def _prune_repository(rt: KubernetesRuntime, body: kopf.Body, policy: BackupPolicy, now: datetime) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        repository = open_repository(rt, namespace, policy.repository.name)
        pruned = runbook.prune_backups(
            repository,
            keep_last=policy.keep_last,
            keep_days=policy.keep_days,
            namespace=namespace,
            name=name,
            now=now,
        )
    except (MoorageError, BackupError) as exc:
        events.warning(body, reason="PruneFailed", message=f"pruning the repository failed: {exc}")
        return
    if pruned:
        ids = ", ".join(m.backup_id for m in pruned)
        events.normal(body, reason="BackupsPruned", message=f"deleted backups {ids} from the repository")


def _archives(spec: Mapping[str, Any] | None, **_: Any) -> bool:
    return bool(((spec or {}).get("backup") or {}).get("walArchiving"))


# Failed drills already told as a Warning Event by this operator process.
_FAILED_DRILLS_REPORTED: set[str] = set()


def recovery_proof(body: kopf.Body, patch: kopf.Patch) -> None:
    """When the recovery was last proven: the moment the newest passed drill restored (drills run
    from the CLI and are kept in the repository) into ``status.lastVerifiedRecoveryPoint`` and the
    metric ``moorage_pitr_verified_point_timestamp_seconds``; whether the newest drill passed into
    ``moorage_pitr_last_drill_ok``, and a Warning Event ``DrillFailed`` with its reason when not."""
    if body["metadata"].get("deletionTimestamp"):
        return
    policy = BackupPolicy.model_validate(dict(body["spec"]["backup"]))
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        repository = open_repository(context.runtime(), namespace, policy.repository.name)
        record = pitr_drill.latest_verified_in(repository, namespace, name)
        newest = pitr_drill.newest_drill(repository, namespace, name)
    except (MoorageError, BackupError) as exc:
        log.info("%s/%s: drills not read, the repository did not answer: %s", namespace, name, exc)
        return
    if newest is not None:
        metrics.record_last_drill(namespace, name, bool(newest.get("ok")))
        drill_id = str(newest.get("drillId"))
        if not newest.get("ok") and drill_id not in _FAILED_DRILLS_REPORTED:
            # Once per failed drill and operator process: the record stays in the repository.
            _FAILED_DRILLS_REPORTED.add(drill_id)
            events.warning(
                body,
                reason="DrillFailed",
                message=f"recovery drill {drill_id} failed: {newest.get('reason')}",
            )
    point = str(record["point"]) if record else None
    if point is not None:
        metrics.record_verified_point(namespace, name, point)
    if (body.get("status") or {}).get("lastVerifiedRecoveryPoint") != point:
        patch.setdefault("status", {})["lastVerifiedRecoveryPoint"] = point


def _drills_scheduled(spec: Mapping[str, Any] | None, **_: Any) -> bool:
    return bool(((spec or {}).get("backup") or {}).get("drillSchedule"))


def drill_schedule(body: kopf.Body) -> None:
    """A recovery drill Job when ``spec.backup.drillSchedule`` fired since the newest drill (never
    drilled: at once), one at a time. The Job runs ``moorage backup drill`` (a scratch Middleware
    with ``spec.recovery``, checked, deleted); its record in the repository is the outcome, which
    the ``recovery_proof`` step turns into ``status.lastVerifiedRecoveryPoint``."""
    if body["metadata"].get("deletionTimestamp"):
        return
    policy = BackupPolicy.model_validate(dict(body["spec"]["backup"]))
    if policy.suspend or policy.drill_schedule is None:
        return
    rt = context.runtime()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    jobs = rt.list_objects(
        "batch/v1", "Job", namespace, {MIDDLEWARE_LABEL: name, COMPONENT_LABEL: DRILL_COMPONENT}
    )
    if any(job_outcome(j)[0] == RUNNING for j in jobs):
        return  # one drill at a time: a second scratch would only compete for the node
    try:
        repository = open_repository(rt, namespace, policy.repository.name)
        last = pitr_drill.last_drill_started(repository, namespace, name)
    except (MoorageError, BackupError) as exc:
        log.info("%s/%s: drill schedule not read, the repository did not answer: %s", namespace, name, exc)
        return
    # A Job that ended without a record (killed before it wrote one) counts too: no retry storm.
    started = [_created(j) for j in jobs]
    last = max([t for t in (last, *started) if t is not None], default=None)
    now = datetime.now(UTC)
    due, upcoming = runbook.is_due(policy.drill_schedule, last, now)
    if not due:
        return
    repo = rt.get(API, "BackupRepository", namespace, policy.repository.name)
    if repo is None:
        return
    job = drill_job(
        namespace=namespace,
        middleware=name,
        stamp=now.strftime("%Y%m%dt%H%M%Sz"),
        repository=_repository_spec(repo),
        settings=operator_config().job,
        catalogs=context.catalog_documents(rt),
    )
    job["metadata"]["ownerReferences"] = [owner_reference(body)]
    ensure_job_account(rt, namespace, DRILL_SERVICE_ACCOUNT, DRILL_CLUSTER_ROLE)
    if rt.create(job) is not None:
        events.normal(
            body,
            reason="DrillScheduled",
            message=f"Job {job['metadata']['name']} drills the recovery ({policy.drill_schedule}); "
            f"next {upcoming:%Y-%m-%dT%H:%MZ}",
        )
