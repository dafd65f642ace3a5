"""How a PostgreSQL load schedules its pg_restores. Parallel workers (dump.restore_jobs): only for
an archive large enough to be worth spooling, of two tables or more, that fits the room the load
may spool into. Order (dump._restore_order): the largest database first, then postgres."""

from __future__ import annotations

import os

import pytest

from middleware.engines.base import SPOOL_LIMIT_ENV, StoredObject
from middleware.engines.postgresql import dump
from middleware.engines.postgresql.dump import PARALLEL_RESTORE_MIN_BYTES, restore_jobs

BIG = PARALLEL_RESTORE_MIN_BYTES * 2


def archive(size: int, tables: int) -> StoredObject:
    return StoredObject("db/app.pgdump.zst", size, {"tables": tables})


@pytest.mark.parametrize(
    ("size", "tables", "parallel"),
    [
        (PARALLEL_RESTORE_MIN_BYTES - 1, 8, False),  # small: streamed as it downloads
        (BIG, 1, False),  # one table loads in one worker anyway
        (BIG, 0, False),
        (BIG, 2, True),
        (BIG, 50, True),
    ],
)
def test_parallel_only_for_large_archives_of_several_tables(
    size: int, tables: int, parallel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SPOOL_LIMIT_ENV, str(BIG * 10))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    jobs = restore_jobs(archive(size, tables))
    assert (jobs > 1) is parallel
    assert jobs == (min(tables, 4) if parallel else 1)


def test_workers_follow_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPOOL_LIMIT_ENV, str(BIG * 10))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert restore_jobs(archive(BIG, 10)) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert restore_jobs(archive(BIG, 10)) == 1


def test_an_archive_larger_than_the_spool_room_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv(SPOOL_LIMIT_ENV, str(BIG - 1))
    assert restore_jobs(archive(BIG, 10)) == 1
    monkeypatch.setenv(SPOOL_LIMIT_ENV, str(BIG))
    assert restore_jobs(archive(BIG, 10)) == 4


def test_the_size_that_counts_is_the_archive_decompressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool holds the archive as pg_restore reads it (``archiveBytes``), not the zstd object."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv(SPOOL_LIMIT_ENV, str(BIG))
    compressed_small = StoredObject("db/app.pgdump.zst", BIG // 4, {"tables": 10, "archiveBytes": BIG})
    assert restore_jobs(compressed_small) == 4
    too_big = StoredObject("db/app.pgdump.zst", BIG // 4, {"tables": 10, "archiveBytes": BIG + 1})
    assert restore_jobs(too_big) == 1, "decompressed, it would not fit the spool room"
    under_threshold = StoredObject(
        "db/app.pgdump.zst", BIG // 4, {"tables": 10, "archiveBytes": PARALLEL_RESTORE_MIN_BYTES - 1}
    )
    assert restore_jobs(under_threshold) == 1


def _plan(**sizes: int) -> dump._Plan:
    return dump._Plan(
        None, [(name, StoredObject(f"db/{name}.pgdump.zst", size)) for name, size in sizes.items()]
    )


@pytest.mark.parametrize(
    ("sizes", "order"),
    [
        # The largest bounds the load: it starts at once; postgres next, where probes connect.
        ({"app": 10, "big": 1000, "postgres": 50, "audit": 5}, ["big", "postgres", "audit", "app"]),
        ({"postgres": 1000, "app": 10, "audit": 5}, ["postgres", "audit", "app"]),
        ({"postgres": 7}, ["postgres"]),
        ({"big": 1000, "app": 10}, ["big", "app"]),
    ],
)
def test_databases_restore_largest_first_then_postgres(sizes: dict[str, int], order: list[str]) -> None:
    assert [name for name, _ in dump._restore_order(_plan(**sizes))] == order
