"""backups/pitr.py's pure parts: WAL segment names, gaps, the window check and rendered settings.
The same code against real PostgreSQL, barman and S3: tests/integration/test_pitr_barman.py."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backups.pitr import (
    ArchiveReport,
    BaseBackup,
    RecoveryTarget,
    RestorePoint,
    Segment,
    WalArchive,
    _gaps,
    format_lsn,
    parse_lsn,
    recovery_settings,
)
from backups.store import RepositoryConfig
from middleware.errors import MoorageError, SpecError

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def seg(name: str) -> Segment:
    parsed = Segment.parse(name)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("000000010000000000000002", Segment(1, 0, 2)),
        ("0000000200000003000000FF.gz", Segment(2, 3, 0xFF)),
        ("00000002.history", None),
        ("000000010000000000000002.00000028.backup", None),
        ("000000010000000000000002.partial", None),
    ],
)
def test_segment_names(name: str, expected: Segment | None) -> None:
    assert Segment.parse(name) == expected


def test_the_segment_after_the_last_of_a_log_opens_the_next_log() -> None:
    assert seg("0000000100000000000000FF").next().name == "000000010000000100000000"
    assert seg("000000010000000000000002").next().name == "000000010000000000000003"


def test_gaps_are_named_between_the_start_and_the_last_segment_only() -> None:
    have = [seg("000000010000000000000003"), seg("000000010000000000000006")]
    assert [s.name for s in _gaps(have, seg("000000010000000000000002"))] == [
        "000000010000000000000002",
        "000000010000000000000004",
        "000000010000000000000005",
    ]
    # A start on another timeline (the backup predates a promotion) counts from the first archived.
    assert [s.name for s in _gaps(have, seg("000000020000000000000001"))] == [
        "000000010000000000000004",
        "000000010000000000000005",
    ]
    assert _gaps([], None) == []


def backup(backup_id: str, end: datetime, begin_wal: str = "000000010000000000000002") -> BaseBackup:
    return BaseBackup(backup_id, 1, seg(begin_wal), seg(begin_wal), end, "7400000000000000001")


def test_the_check_picks_the_newest_base_backup_before_the_target() -> None:
    report = ArchiveReport([backup("a", T0), backup("b", T0 + timedelta(hours=1))], {}, [])
    assert report.check(RecoveryTarget(time=T0 + timedelta(minutes=30))).backup_id == "a"
    assert report.check(RecoveryTarget(time=T0 + timedelta(hours=2))).backup_id == "b"
    assert report.check(RecoveryTarget(latest=True)).backup_id == "b"


def test_the_check_refuses_a_target_before_the_window_naming_where_it_starts() -> None:
    report = ArchiveReport([backup("a", T0)], {}, [])
    with pytest.raises(
        MoorageError, match=r"before the recoverable window, which starts at 2026-12-05T10:00:00\+00:00"
    ):
        report.check(RecoveryTarget(time=T0 - timedelta(seconds=1)))
    with pytest.raises(MoorageError, match="no complete base backup"):
        ArchiveReport([], {}, []).check(RecoveryTarget(latest=True))


def test_the_check_names_the_first_missing_segment_after_the_chosen_backup() -> None:
    gaps = [seg("000000010000000000000001"), seg("000000010000000000000009"), seg("00000001000000000000000A")]
    report = ArchiveReport([backup("a", T0, begin_wal="000000010000000000000004")], {}, gaps)
    with pytest.raises(
        MoorageError, match=r"WAL segment 000000010000000000000009 is missing .*; 1 more missing"
    ):
        report.check(RecoveryTarget(latest=True))


def test_an_lsn_target_is_checked_against_the_window_naming_its_ends() -> None:
    first = dataclasses.replace(backup("a", T0), end_lsn=parse_lsn("0/2000100"))
    second = dataclasses.replace(backup("b", T0 + timedelta(hours=1)), end_lsn=parse_lsn("0/5000060"))
    segments = {1: [seg("000000010000000000000002"), seg("000000010000000000000007")]}
    report = ArchiveReport([first, second], segments, [])
    assert report.check(RecoveryTarget(lsn="0/3000000")).backup_id == "a"
    assert report.check(RecoveryTarget(lsn="0/6FFFFFF")).backup_id == "b"
    with pytest.raises(MoorageError, match=r"LSN 0/2000000 is before .* starts at LSN 0/2000100"):
        report.check(RecoveryTarget(lsn="0/2000000"))
    # segment ...07 holds 0/7000000 up to 0/7FFFFFF: the archive ends at 0/8000000
    with pytest.raises(MoorageError, match=r"LSN 0/8000000 is after the end .* ends at LSN 0/8000000"):
        report.check(RecoveryTarget(lsn="0/8000000"))
    assert (report.window()["earliestLsn"], report.window()["latestLsn"]) == ("0/2000100", "0/8000000")


def test_lsns_read_and_print_as_postgresql_does() -> None:
    assert parse_lsn("0/3000090") == 0x3000090
    assert parse_lsn("1A/FF") == (0x1A << 32) + 0xFF
    assert format_lsn(parse_lsn("1A/B00000")) == "1A/B00000"
    assert seg("000000010000001A000000FF").end_lsn == parse_lsn("1B/0")


def test_base_backup_info_must_be_complete() -> None:
    text = "status=FAILED\nbegin_wal=000000010000000000000002\nend_wal=000000010000000000000002\n"
    with pytest.raises(MoorageError, match=r"base backup x: unreadable backup\.info"):
        BaseBackup.from_info("x", text)


def test_base_backup_info_gives_the_name_when_barman_was_given_one() -> None:
    text = (
        "status=DONE\nbegin_wal=000000010000000000000002\nend_wal=000000010000000000000003\n"
        "timeline=1\nend_time=2026-12-06 03:00:05.123456+00:00\nsystemid=7400000000000000001\n"
    )
    assert BaseBackup.from_info("20261206T030000", text).name is None
    assert BaseBackup.from_info("20261206T030000", text).end_lsn is None  # older infos: unchecked
    assert BaseBackup.from_info("x", text + "end_xlog=0/3000100\n").end_lsn == 0x3000100
    named = BaseBackup.from_info("20261206T030000", text + "backup_name=ledger-nightly\n")
    assert (named.name, named.end_wal.name) == ("ledger-nightly", "000000010000000000000003")


def test_targets_are_validated_naming_the_field() -> None:
    with pytest.raises(SpecError, match="exactly one"):
        RecoveryTarget()
    with pytest.raises(SpecError, match="exactly one"):
        RecoveryTarget(lsn="0/3000090", latest=True)
    with pytest.raises(SpecError, match=r"target\.time"):
        RecoveryTarget(time=datetime(2026, 12, 5, 10, 0))
    with pytest.raises(SpecError, match=r"target\.lsn"):
        RecoveryTarget(lsn="3000090")


def test_rendered_commands_and_recovery_settings() -> None:
    config = RepositoryConfig(
        bucket="bkt",
        prefix="backups",
        endpoint="http://127.0.0.1:8333",
        access_key_id="k",
        secret_access_key="s",
    )
    archive = WalArchive(config, "prod", "ledger")
    barman = Path("/opt/moorage/barman-3.19.1/bin")
    assert archive.destination == "s3://bkt/backups/pitr/prod"
    assert archive.key("wals") == "backups/pitr/prod/ledger/wals"
    assert archive.archive_command(barman) == (
        "/opt/moorage/barman-3.19.1/bin/barman-cloud-wal-archive --cloud-provider aws-s3 "
        "--endpoint-url http://127.0.0.1:8333 s3://bkt/backups/pitr/prod ledger %p"
    )
    settings = recovery_settings(archive, barman, RecoveryTarget(time=T0))
    assert settings["restore_command"].endswith("s3://bkt/backups/pitr/prod ledger %f %p")
    assert settings["recovery_target_time"] == "2026-12-05T10:00:00+00:00"
    assert settings["recovery_target_action"] == "promote"
    assert RecoveryTarget(name="before-migration").settings()["recovery_target_name"] == "before-migration"
    assert "recovery_target_action" not in RecoveryTarget(latest=True).settings()
    # The keys go to the tools' environment, never into a command line.
    assert "s" not in archive.archive_command(barman).split()
    assert archive.environment()["AWS_SECRET_ACCESS_KEY"] == "s"


def point(name: str, lsn: str, segment: str = "000000010000000000000005") -> RestorePoint:
    return RestorePoint(name, parse_lsn(lsn), seg(segment))


def test_a_restore_point_target_starts_from_the_newest_base_backup_ending_before_it() -> None:
    first = dataclasses.replace(backup("a", T0), end_lsn=parse_lsn("0/2000100"))
    second = dataclasses.replace(
        backup("b", T0 + timedelta(hours=1), begin_wal="000000010000000000000004"),
        end_lsn=parse_lsn("0/4000100"),
    )
    segments = {1: [seg(f"0000000100000000000000{n:02X}") for n in range(2, 8)]}
    points = [
        point("too early", "0/1000200", "000000010000000000000001"),
        point("nightly", "0/3000200", "000000010000000000000003"),
        point("release", "0/5000200"),
        point("nightly", "0/6000200", "000000010000000000000006"),  # the same name again, later
    ]
    report = ArchiveReport([first, second], segments, [], restore_points=points, searched=set(segments[1]))
    # PostgreSQL stops at the first "nightly" it replays: only a base backup ending before it meets it
    assert report.check(RecoveryTarget(name="nightly")) == first
    assert report.check(RecoveryTarget(name="release")) == second
    with pytest.raises(
        MoorageError, match=r"'too early' \(LSN 0/1000200, timeline 1\) is before the recoverable"
    ):
        report.check(RecoveryTarget(name="too early"))
    with pytest.raises(
        MoorageError, match=r"'typo' is in none of .*; the archive holds: 'nightly', 'release', 'too"
    ):
        report.check(RecoveryTarget(name="typo"))
    assert [p["name"] for p in report.window()["restorePoints"]] == ["nightly", "release", "nightly"]
    assert report.window()["segmentsNotSearchedForRestorePoints"] == 0


def test_a_restore_point_name_that_may_be_in_unsearched_wal_is_left_to_the_recovery() -> None:
    only = dataclasses.replace(backup("a", T0), end_lsn=parse_lsn("0/2000100"))
    segments = {1: [seg(f"0000000100000000000000{n:02X}") for n in range(1, 5)]}
    # archived before the search existed (01 is before the base backup: not needed, not counted)
    searched = {seg("000000010000000000000004")}
    report = ArchiveReport([only], segments, [], searched=searched)
    assert report.unsearched() == [seg("000000010000000000000002"), seg("000000010000000000000003")]
    assert report.check(RecoveryTarget(name="anything")) == only
    assert report.window()["segmentsNotSearchedForRestorePoints"] == 2
    report.searched |= set(report.unsearched())
    with pytest.raises(MoorageError, match="the archive holds none"):
        report.check(RecoveryTarget(name="anything"))
