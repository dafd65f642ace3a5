"""Retention: which backups a keepLast/keepDays policy prunes (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backups.manifest import BackupManifest
from backups.retention import select_for_pruning

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def backup(
    days_ago: float, *, namespace: str = "shop", middleware: str = "cache", kind: str = "backup"
) -> BackupManifest:
    started = NOW - timedelta(days=days_ago)
    backup_id = f"{middleware}-{days_ago:g}d-{kind}"
    return BackupManifest(
        backup_id=backup_id,
        kind=kind,
        namespace=namespace,
        middleware=middleware,
        engine="redis",
        version="7.0",
        topology="standalone",
        shards=1,
        objects=[],
        started_at=started,
        finished_at=started + timedelta(minutes=1),
        duration_seconds=60,
        source_spec={},
        location=f"s3://b/{namespace}/{middleware}/{backup_id}/",
    )


def pruned_ages(manifests: list[BackupManifest], **policy: float | None) -> list[float]:
    doomed = select_for_pruning(manifests, now=NOW, **policy)  # type: ignore[arg-type]
    return [round((NOW - m.started_at).total_seconds() / 86400, 3) for m in doomed]


AGES = [0.5, 1.5, 2.5, 10, 30]


@pytest.mark.parametrize(
    ("keep_last", "keep_days", "pruned"),
    [
        (3, None, [30, 10]),  # count only
        (None, 2, [30, 10, 2.5]),  # age only
        (2, 7, [30, 10]),  # union: kept if within either rule
        (4, 1, [30]),
        (1, None, [30, 10, 2.5, 1.5]),
        (0, None, [30, 10, 2.5, 1.5]),  # the newest survives even keepLast 0
        (None, 0, [30, 10, 2.5, 1.5]),
        (10, None, []),
        (None, 365, []),
    ],
)
def test_keep_last_or_keep_days(keep_last: int | None, keep_days: float | None, pruned: list[float]) -> None:
    # Input order must not matter: shuffle the list.
    manifests = [backup(a) for a in (10, 0.5, 30, 2.5, 1.5)]
    assert sorted(AGES) == sorted(round((NOW - m.started_at).total_seconds() / 86400, 3) for m in manifests)
    assert pruned_ages(manifests, keep_last=keep_last, keep_days=keep_days) == pruned


def test_newest_backup_always_kept_even_when_old() -> None:
    manifests = [backup(400), backup(500)]
    assert pruned_ages(manifests, keep_last=None, keep_days=1) == [500]


def test_rules_apply_per_middleware() -> None:
    manifests = [
        backup(1, middleware="cache"),
        backup(2, middleware="cache"),
        backup(5, middleware="queue"),
        backup(9, middleware="queue"),
        backup(9, namespace="other", middleware="cache"),
    ]
    doomed = select_for_pruning(manifests, keep_last=1, keep_days=None, now=NOW)
    assert [(m.namespace, m.middleware, m.backup_id) for m in doomed] == [
        ("shop", "queue", "queue-9d-backup"),
        ("shop", "cache", "cache-2d-backup"),
    ]


def test_safety_snapshots_are_never_pruned_and_do_not_count() -> None:
    manifests = [
        backup(100, kind="safety-snapshot"),
        backup(0.1, kind="safety-snapshot"),
        backup(50),
        backup(60),
    ]
    doomed = select_for_pruning(manifests, keep_last=1, keep_days=None, now=NOW)
    # The newest regular backup (50 days) is kept though a snapshot is newer: snapshots do not count.
    assert [m.backup_id for m in doomed] == ["cache-60d-backup"]


@pytest.mark.parametrize(
    ("keep_last", "keep_days", "message"),
    [
        (None, None, "keepLast or keepDays"),
        (-1, None, "keepLast must be 0 or more"),
        (None, -0.5, "keepDays must be 0 or more"),
    ],
)
def test_invalid_policies_are_refused(keep_last: int | None, keep_days: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_for_pruning([backup(1)], keep_last=keep_last, keep_days=keep_days, now=NOW)
