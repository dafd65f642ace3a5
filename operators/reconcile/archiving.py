"""Point-in-time recovery of a PostgreSQL Middleware on Kubernetes: WAL archiving
(spec.backup.walArchiving) and a recovery from another Middleware's archive (spec.recovery).

Every pass that applies the StatefulSet renders through ``render``: the engine's manifests, plus
the archive scripts naming the BackupRepository and its keys as ``secretKeyRef``, plus the recovery
script of the base backup ``choose_recovery`` picked at creation (``backups.pitr_pods``).
``check_new_archive`` keeps a new Middleware out of an archive that already holds another cluster's
WAL (the local runtime's rule, ``backups.pitr.check_archive_is_ours``). ``report_transition`` turns
a change of WALArchivingFailing into an Event and an audit row.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from backups import pitr, pitr_pods
from backups.kubernetes import API_VERSION, open_repository
from backups.store import S3Store
from middleware.engines.base import WAL_ARCHIVING_CONDITION, Connection, Engine
from middleware.errors import MoorageError, NotReady, SpecError
from middleware.kube.builders import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from middleware.models.backup import BackupRepositorySpec
from middleware.models.middleware import MiddlewareStatus
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.spec import ResolvedSpec
from operators.reconcile import events

log = logging.getLogger(__name__)

Manifest = dict[str, Any]


class RepositoryUnavailable(MoorageError):
    """The BackupRepository to archive to is missing or unusable: not yet, it may be created or
    mended; the member pods are not rendered without it (archive_command would have no script)."""

    reason = "ArchiveRepositoryUnavailable"


def _archive(
    rt: KubernetesRuntime, spec: ResolvedSpec, *, of_source: bool = False
) -> tuple[pitr.WalArchive, BackupRepositorySpec, S3Store]:
    """The archive of this Middleware (spec.backup.repository) or, ``of_source``, of the one it
    recovers from (spec.recovery.repository)."""
    if of_source:
        assert spec.recovery is not None
        name, field, owner = (
            spec.recovery.repository.name,
            "spec.recovery.repository.name",
            spec.recovery.source,
        )
    else:
        name, field, owner = spec.archive_repository or "", "spec.backup.repository.name", spec.name
    found = rt.get(API_VERSION, "BackupRepository", spec.namespace, name)
    if found is None:
        raise RepositoryUnavailable(
            f"{field}: BackupRepository {spec.namespace}/{name} not found "
            "(the members need it before they can start)"
        )
    try:
        repository = open_repository(rt, spec.namespace, name)
    except MoorageError as exc:
        raise RepositoryUnavailable(f"BackupRepository {spec.namespace}/{name}: {exc}") from None
    archive = pitr.WalArchive(repository.store.config, spec.namespace, owner)
    return archive, BackupRepositorySpec.model_validate(found.get("spec") or {}), repository.store


def render(
    rt: KubernetesRuntime,
    spec: ResolvedSpec,
    engine: Engine,
    cluster_domain: str,
    recovery_base_backup: str | None = None,
) -> list[Manifest]:
    """The engine's manifests, with what archiving and a recovery from an archive add."""
    manifests = engine.render(spec, cluster_domain=cluster_domain)
    if spec.wal_archiving:
        archive, repository, _ = _archive(rt, spec)
        manifests = pitr_pods.with_wal_archiving(spec, manifests, archive, repository.credentials)
    if spec.recovery is not None:
        if recovery_base_backup is None:
            raise RepositoryUnavailable("spec.recovery: no base backup chosen yet")
        source, repository, _ = _archive(rt, spec, of_source=True)
        manifests = pitr_pods.with_recovery(
            spec, manifests, source, recovery_base_backup, repository.credentials
        )
    return manifests


def choose_recovery(rt: KubernetesRuntime, spec: ResolvedSpec) -> str:
    """spec.recovery at creation: the base backup of the source's archive to start from, checked
    against the target (SpecError naming spec.recovery when the target is outside the window, or a
    segment is missing) before any pod is made."""
    assert spec.recovery is not None
    target = pitr_pods.recovery_target(spec)
    source, _, store = _archive(rt, spec, of_source=True)
    try:
        report = pitr.inspect(store, source)
    except MoorageError as exc:
        raise RepositoryUnavailable(f"spec.recovery: the archive of {spec.recovery.source}: {exc}") from None
    try:
        chosen = pitr.choose_base_backup(report, target, spec.recovery.backup_id or "latest")
    except MoorageError as exc:
        raise SpecError("spec.recovery", f"{source.destination}/{source.name}: {exc}") from None
    return chosen.backup_id


def failing(status: MiddlewareStatus) -> bool | None:
    condition = status.condition(WAL_ARCHIVING_CONDITION)
    return None if condition is None else condition.status == "True"


def report_transition(
    rt: KubernetesRuntime,
    body: kopf.Body,
    spec: ResolvedSpec,
    was_failing: bool | None,
    status: MiddlewareStatus,
) -> None:
    """When archiving starts failing or recovers: an Event, and a row in the repository's audit
    log (``backup audit``), written when the repository answers (it may be why archiving fails)."""
    event = pitr.archiving_transition(was_failing, failing(status))
    condition = status.condition(WAL_ARCHIVING_CONDITION)
    if event is None or condition is None:
        return
    if event == pitr.ARCHIVING_FAILING_EVENT:
        events.warning(body, reason="WALArchivingFailing", message=condition.message)
    else:
        events.normal(body, reason="WALArchivingRecovered", message=condition.message)
    try:
        open_repository(rt, spec.namespace, spec.archive_repository or "").audit(
            event, target=f"{spec.namespace}/{spec.name}", message=condition.message
        )
    except MoorageError as exc:
        log.warning(
            "%s/%s: %s not audited, the repository did not answer: %s", spec.namespace, spec.name, event, exc
        )


def check_turned_on(rt: KubernetesRuntime, spec: ResolvedSpec, conn: Connection) -> None:
    """walArchiving turned on for a Middleware that has data: the archive must be empty or hold this
    cluster's base backups (the system identifier, read from any member that answers: standbys share
    it), before the pods roll onto archive_mode. A SpecError names the field; NotReady when no member
    answers (tried again). A repository that does not answer is not a refusal, as at creation."""
    archive, _, store = _archive(rt, spec)
    try:
        report = pitr.inspect(store, archive)
    except MoorageError as exc:
        log.warning(
            "%s/%s: archive not checked, the repository did not answer: %s", spec.namespace, spec.name, exc
        )
        return
    if not report.base_backups and not report.segments:
        return
    import psycopg  # imported by server_system_id already; 9 MiB an operator without PostgreSQL skips

    for member in conn.members:
        try:
            system_id = pitr.server_system_id(member.endpoint.host, member.endpoint.port, conn.password or "")
        except psycopg.Error:
            continue
        pitr.check_archive_is_ours(report, archive, system_id)
        return
    raise NotReady("no member answers: the archive's owner cannot be checked before archiving is turned on")


def check_new_archive(rt: KubernetesRuntime, spec: ResolvedSpec) -> None:
    """For a Middleware with no data yet (not one claim: a Middleware deleted with
    ``deletionPolicy: Retain`` and created again keeps its claims, data and archive), the archive
    must be empty: a SpecError naming spec.backup.walArchiving and what the archive holds. A
    repository that does not answer is not a refusal: archiving then fails visibly
    (WALArchivingFailing) and keeps every segment."""
    labels = {NAME_LABEL: spec.engine, INSTANCE_LABEL: spec.name, MANAGED_BY_LABEL: MANAGED_BY}
    if rt.claims(spec.namespace, labels):
        return
    archive, _, store = _archive(rt, spec)
    try:
        report = pitr.inspect(store, archive)
    except MoorageError as exc:
        log.warning(
            "%s/%s: archive not checked, the repository did not answer: %s", spec.namespace, spec.name, exc
        )
        return
    pitr.check_archive_is_ours(report, archive, None)
