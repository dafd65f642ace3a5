"""The drill's choice of a moment (``backups.pitr_drill.choose_point``) and its verdict over drill
records. The drill itself runs on real servers in tests/integration/test_pitr_local.py."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from backups.pitr_drill import AFTER_BASE_BACKUP, Marker, choose_point, latest_verified
from middleware.errors import MoorageError

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def marker(n: int, at: float, commit_ms: int = 5) -> Marker:
    written = T0 + timedelta(seconds=at)
    return Marker("d", n, written, written + timedelta(milliseconds=commit_ms))


@pytest.mark.parametrize("seed", range(50))
def test_the_moment_is_inside_the_window_before_the_last_marker_and_never_inside_a_commit(seed: int) -> None:
    markers = [marker(1, 10), marker(2, 11, commit_ms=400), marker(3, 12)]
    point = choose_point(T0, markers, random.Random(seed))
    assert T0 + AFTER_BASE_BACKUP <= point < markers[-1].written_at
    assert not any(m.written_at <= point <= m.committed_by for m in markers), point


def test_a_commit_spanning_the_whole_window_moves_the_moment_before_it() -> None:
    markers = [marker(1, 1.5, commit_ms=10_000), marker(2, 20)]
    point = choose_point(T0, markers, random.Random(1))
    assert point < markers[0].written_at or point > markers[0].committed_by


def test_no_moment_when_the_window_starts_after_the_markers() -> None:
    with pytest.raises(MoorageError, match="take a base backup before the drill"):
        choose_point(T0 + timedelta(minutes=5), [marker(1, 10), marker(2, 11)], random.Random(0))


def test_the_latest_verified_point_is_the_moment_of_the_newest_passed_drill() -> None:
    records = [  # oldest first
        {"drillId": "a", "ok": True, "point": "2026-12-05T10:08:05+00:00"},
        {"drillId": "b", "ok": False, "point": "2026-12-05T10:09:00+00:00"},
        {"drillId": "c", "ok": True, "point": "2026-12-05T10:07:00+00:00"},
        {"drillId": "d", "ok": False, "reason": "no complete base backup"},
    ]
    verified = latest_verified(records)
    assert verified is not None and verified["drillId"] == "c"
    assert latest_verified([r for r in records if not r["ok"]]) is None


def test_the_moment_is_never_after_the_end_the_archive_shows() -> None:
    # S3 keeps upload times to the second: the window's end can read a little before the markers.
    markers = [marker(1, 10), marker(2, 12)]
    latest = T0 + timedelta(seconds=11)
    for seed in range(50):
        assert choose_point(T0, markers, random.Random(seed), latest) <= latest


def test_the_verified_point_metric_is_the_moment_in_unix_time() -> None:
    from prometheus_client import REGISTRY

    from operators.metrics import record_verified_point

    record_verified_point("shop", "ledger", "2026-12-05T10:07:00+00:00")
    value = REGISTRY.get_sample_value(
        "moorage_pitr_verified_point_timestamp_seconds", {"namespace": "shop", "name": "ledger"}
    )
    assert value == datetime(2026, 12, 5, 10, 7, tzinfo=UTC).timestamp()
