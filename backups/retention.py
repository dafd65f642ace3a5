"""Which backups a retention policy prunes (pure: the runbook deletes them).

Per (namespace, middleware), over regular backups only (safety snapshots belong to their restore
and are never pruned here), newest first by ``started_at`` (the moment the data is from):
a backup is kept when it is among the ``keep_last`` newest OR younger than ``keep_days``. The
newest backup of each middleware is always kept, whatever the options say: a policy must never
leave a middleware with no backup at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from backups.manifest import BackupManifest


def select_for_pruning(
    manifests: Sequence[BackupManifest],
    *,
    keep_last: int | None,
    keep_days: float | None,
    now: datetime,
) -> list[BackupManifest]:
    """The backups to delete, oldest first."""
    if keep_last is None and keep_days is None:
        raise ValueError("retention needs keepLast or keepDays (or both); with neither nothing is pruned")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"retention keepLast must be 0 or more, got {keep_last}")
    if keep_days is not None and keep_days < 0:
        raise ValueError(f"retention keepDays must be 0 or more, got {keep_days}")
    groups: dict[tuple[str, str], list[BackupManifest]] = defaultdict(list)
    for manifest in manifests:
        if manifest.kind == "backup":
            groups[(manifest.namespace, manifest.middleware)].append(manifest)
    max_age = timedelta(days=keep_days) if keep_days is not None else None
    doomed: list[BackupManifest] = []
    for group in groups.values():
        newest_first = sorted(group, key=lambda m: (m.started_at, m.backup_id), reverse=True)
        for index, manifest in enumerate(newest_first):
            if index == 0:
                continue
            by_count = keep_last is not None and index < keep_last
            by_age = max_age is not None and now - manifest.started_at < max_age
            if not (by_count or by_age):
                doomed.append(manifest)
    return sorted(doomed, key=lambda m: (m.started_at, m.backup_id))
