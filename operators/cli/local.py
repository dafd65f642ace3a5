"""The local runtime as every CLI command builds it."""

from __future__ import annotations

import os
from pathlib import Path

from backups.jobs import REPO_ENV
from backups.pitr import LocalArchiveFiles
from middleware.runtime.local import LocalRuntime


def local_runtime(state_dir: Path | None, repo: str | None = None) -> LocalRuntime:
    """Archiving PostgreSQL members (spec.backup.walArchiving) archive to ``repo``, else to
    ``$MOORAGE_BACKUP_REPO``: the repository the backup commands use too."""
    return LocalRuntime(
        state_dir, extra_member_files=LocalArchiveFiles(repo or os.environ.get(REPO_ENV) or None)
    )
