"""The local runtime as every CLI command builds it, and what `moorage status` audits of it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backups.jobs import REPO_ENV
from backups.pitr import LocalArchiveFiles, archiving_transition
from backups.pitr_drill import latest_verified_in
from backups.repository import Repository
from backups.store import RepositoryConfig, S3Store
from middleware.engines.base import WAL_ARCHIVING_CONDITION
from middleware.errors import MoorageError
from middleware.models.middleware import MiddlewareStatus
from middleware.runtime.local import LocalRuntime

log = logging.getLogger(__name__)


def local_runtime(state_dir: Path | None, repo: str | None = None) -> LocalRuntime:
    """Archiving PostgreSQL members (spec.backup.walArchiving) archive to ``repo``, else to
    ``$MOORAGE_BACKUP_REPO``: the repository the backup commands use too."""
    return LocalRuntime(
        state_dir, extra_member_files=LocalArchiveFiles(repo or os.environ.get(REPO_ENV) or None)
    )


def archiving_failing(status: Mapping[str, Any] | MiddlewareStatus | None) -> bool | None:
    """Whether ``WALArchivingFailing`` says failing (None: no archiver observed)."""
    if status is None:
        return None
    model = status if isinstance(status, MiddlewareStatus) else MiddlewareStatus.model_validate(status)
    condition = model.condition(WAL_ARCHIVING_CONDITION)
    return None if condition is None else condition.status == "True"


def audit_archiving(namespace: str, name: str, was_failing: bool | None, status: MiddlewareStatus) -> None:
    """`moorage status` saw archiving start failing or recover: a row in the repository's audit
    log (``backup audit``), when there is a repository and it answers (it may be why archiving
    fails: then the row waits for the recovery's)."""
    event = archiving_transition(was_failing, archiving_failing(status))
    url = os.environ.get(REPO_ENV)
    condition = status.condition(WAL_ARCHIVING_CONDITION)
    if event is None or not url or condition is None:
        return
    try:
        Repository(S3Store(RepositoryConfig.from_url(url))).audit(
            event, target=f"{namespace}/{name}", message=condition.message
        )
    except MoorageError as exc:
        log.warning("%s/%s: %s not audited, the repository did not answer: %s", namespace, name, event, exc)


def last_verified_point(namespace: str, name: str) -> str | None:
    """The moment the newest passed drill restored (``moorage backup drill``), from the repository
    of ``MOORAGE_BACKUP_REPO``; None without one, or when it does not answer."""
    url = os.environ.get(REPO_ENV)
    if not url:
        return None
    try:
        record = latest_verified_in(Repository(S3Store(RepositoryConfig.from_url(url))), namespace, name)
    except MoorageError as exc:
        log.warning("%s/%s: drills not read, the repository did not answer: %s", namespace, name, exc)
        return None
    return str(record["point"]) if record else None
