"""Recovery drills: proof, on a schedule or on demand, that a PostgreSQL Middleware can be restored to
a point in time (issue 14).

A drill writes marker rows into the source (``moorage_drill.markers`` in the ``postgres`` database:
when each was written and by when it was committed), closes the WAL segment holding them and waits
until it is archived; then picks a random moment inside the recoverable window (after the oldest
base backup's end, before the last marker began, never inside a marker's commit), restores the
source's archive to that moment into a scratch deployment, and checks that exactly the markers
committed before the moment are there. Markers stay in the source, so the window fills with them
as drills run. The outcome (moment, base backup, measured recovery time, the markers expected and
found) is kept in the repository (``_drills/<namespace>/<name>/<drill id>.json``) and audited; the
newest passed drill's moment is the latest *verified* recoverable point.

Over two ports: the source (``connect``, ``timeline``) and a scratch factory that brings up a
deployment shaped like the source (no archiving of its own) and removes it with its data afterwards.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from backups import pitr, pitr_restore
from backups.repository import Repository
from middleware.engines.base import Progress, no_progress
from middleware.errors import MoorageError

if TYPE_CHECKING:
    import psycopg

DRILLS_DIR = "_drills"
MARKERS = "moorage_drill.markers"
MARKER_GAP_SECONDS = 1.0
ARCHIVE_WAIT_SECONDS = 300.0
# recovery_target_time must be after the base backup is consistent: its recorded end time, plus a
# margin for the few moments between pg_backup_stop and barman writing that time down.
AFTER_BASE_BACKUP = timedelta(seconds=1)


class DrillSource(Protocol):
    def connect(self) -> psycopg.Connection[Any]:
        """The superuser on the source's primary, autocommit."""
        ...

    def timeline(self) -> int | None: ...


@dataclass(frozen=True)
class DrillRecovery:
    """What a scratch deployment must be recovered to."""

    drill_id: str
    source: pitr_restore.Source
    target: pitr.RecoveryTarget
    base_backup: str


class Recovered(Protocol):
    """A scratch deployment recovered to the drill's moment, and how long the recovery took."""

    @property
    def recovery_seconds(self) -> float: ...

    def connect(self) -> psycopg.Connection[Any]:
        """The superuser on its primary, autocommit."""
        ...


# Brings a scratch deployment up recovered (the local runtime: a deployment restored by
# ``apply_point_in_time``; Kubernetes: a Middleware with spec.recovery), and removes it on exit.
ScratchFactory = Callable[[DrillRecovery], AbstractContextManager[Recovered]]


@dataclass(frozen=True)
class Marker:
    drill: str
    n: int
    written_at: datetime
    committed_by: datetime

    @property
    def key(self) -> str:
        return f"{self.drill}/{self.n}"


def scratch_spec(source_spec: dict[str, Any]) -> dict[str, Any]:
    """A drill's scratch deployment: the source's spec as one standalone member (a drill proves the
    data comes back, not the topology), without its backup policy, deleted with its data."""
    dropped = ("backup", "replicas", "sentinels", "shards")
    spec = {k: v for k, v in source_spec.items() if k not in dropped}
    spec.update(topology="standalone", deletionPolicy="Delete")
    return spec


def _drill_key(repository: Repository, namespace: str, name: str, drill_id: str = "") -> str:
    return repository.config.key(DRILLS_DIR, namespace, name, drill_id + ".json" if drill_id else "")


def list_drills(repository: Repository, namespace: str, name: str) -> list[dict[str, Any]]:
    """Every drill of one Middleware, oldest first."""
    prefix = _drill_key(repository, namespace, name).rstrip("/") + "/"
    records = [
        cast(dict[str, Any], json.loads(repository.store.get_bytes(k)))
        for k in repository.store.list_keys(prefix)
    ]
    return sorted(records, key=lambda r: str(r.get("startedAt", "")))


def newest_drill(repository: Repository, namespace: str, name: str) -> dict[str, Any] | None:
    """The record of the newest drill of one Middleware (drill ids sort by time), passed or not."""
    prefix = _drill_key(repository, namespace, name).rstrip("/") + "/"
    newest = max(repository.store.list_keys(prefix), default=None)
    if newest is None:
        return None
    return cast(dict[str, Any], json.loads(repository.store.get_bytes(newest)))


def last_drill_started(repository: Repository, namespace: str, name: str) -> datetime | None:
    """When the newest drill of one Middleware began, passed or not: a drill schedule is due again
    from then on, as a backup schedule is from the last backup."""
    record = newest_drill(repository, namespace, name)
    return datetime.fromisoformat(str(record["startedAt"])) if record else None


def latest_verified_in(repository: Repository, namespace: str, name: str) -> dict[str, Any] | None:
    """``latest_verified`` without reading every record: drill ids sort by time, so the records
    are read newest first until one passed (a failed drill never proves a moment)."""
    prefix = _drill_key(repository, namespace, name).rstrip("/") + "/"
    for key in sorted(repository.store.list_keys(prefix), reverse=True):
        record = cast(dict[str, Any], json.loads(repository.store.get_bytes(key)))
        if record.get("ok"):
            return record
    return None


def latest_verified(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest drill that passed (records oldest first, as ``list_drills`` gives them): its
    moment is the latest verified recoverable point. None: no drill passed yet."""
    passed = [r for r in records if r.get("ok")]
    return passed[-1] if passed else None


def write_markers(source: DrillSource, drill_id: str, count: int = 2) -> tuple[list[Marker], str]:
    """``count`` markers a second apart, then the segment holding them closed: every marker in
    the source (older drills' too) and that segment's name."""
    with source.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS moorage_drill")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MARKERS} (drill text, n int, written_at timestamptz NOT NULL, "
            "committed_by timestamptz, PRIMARY KEY (drill, n))"
        )
        for n in range(1, count + 1):
            if n > 1:
                time.sleep(MARKER_GAP_SECONDS)
            conn.execute(
                f"INSERT INTO {MARKERS} (drill, n, written_at) VALUES (%s, %s, clock_timestamp())",
                (drill_id, n),
            )
            # Autocommit: the insert is committed now; by when is recorded (the row can only say it
            # in a later transaction, which the check never relies on: it uses this table as read now).
            conn.execute(
                f"UPDATE {MARKERS} SET committed_by = clock_timestamp() WHERE drill = %s AND n = %s",
                (drill_id, n),
            )
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        markers = [
            Marker(str(d), int(n), w, c)
            for d, n, w, c in conn.execute(
                f"SELECT drill, n, written_at, committed_by FROM {MARKERS} "
                "WHERE committed_by IS NOT NULL ORDER BY written_at"
            ).fetchall()
        ]
    assert row is not None
    return markers, str(row[0])


def wait_archived(source: DrillSource, segment: str, timeout: float = ARCHIVE_WAIT_SECONDS) -> None:
    """Until the source's archiver reports ``segment`` (or a later one) archived; an archiver that
    keeps failing is named."""
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] | None = None
    while time.monotonic() < deadline:
        with source.connect() as conn:
            last = conn.execute(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver"
            ).fetchone()
        if last is not None and last[0] is not None and str(last[0])[:24] >= segment:
            return
        time.sleep(1.0)
    failed = f"; the last failure: {last[1]} at {last[2]}" if last and last[1] else ""
    raise MoorageError(f"segment {segment} not archived within {timeout:.0f}s{failed}")


def choose_point(
    earliest: datetime, markers: list[Marker], rng: random.Random, latest: datetime | None = None
) -> datetime:
    """A moment uniformly inside [earliest + margin, the last marker's start), and not after
    ``latest`` (the window's end as the archive shows it: S3 keeps upload times to the second),
    moved out of any marker's commit (there whether the row is in or not is not decided by the
    moment)."""
    lower, upper = earliest + AFTER_BASE_BACKUP, markers[-1].written_at
    if latest is not None:
        upper = min(upper, latest)
    if lower >= upper:
        raise MoorageError(
            f"no recoverable moment to drill: the window starts at {lower.isoformat()}, after the markers "
            f"written at {upper.isoformat()} (take a base backup before the drill)"
        )
    point = lower + (upper - lower) * rng.random()
    for marker in reversed(markers):
        if marker.written_at <= point <= marker.committed_by:
            point = max(lower, marker.written_at - timedelta(milliseconds=1))
    return point


def markers_found(conn: psycopg.Connection[Any]) -> set[str]:
    import psycopg  # with its first use: the operator imports this module whatever the engines it runs

    try:
        rows = conn.execute(f"SELECT drill, n FROM {MARKERS}").fetchall()
    except psycopg.errors.UndefinedTable:
        return set()  # the moment is before the first drill created the table
    return {f"{d}/{n}" for d, n in rows}


def _now() -> datetime:
    return datetime.now(UTC)


def run_drill(
    repository: Repository,
    namespace: str,
    name: str,
    source: DrillSource,
    scratch: ScratchFactory,
    *,
    rng: random.Random | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """One drill; returns its record (``ok`` says whether it passed), saved in the repository."""
    drill_id = Repository.new_id(f"drill-{name}")
    started = _now()
    record: dict[str, Any] = {
        "drillId": drill_id,
        "namespace": namespace,
        "middleware": name,
        "startedAt": started.isoformat(),
        "ok": False,
    }
    steps = 4
    try:
        progress("drill", 0, steps)
        markers, segment = write_markers(source, drill_id)
        wait_archived(source, segment)
        progress("drill", 1, steps)
        report = pitr.inspect(repository.store, pitr.WalArchive(repository.config, namespace, name))
        if report.earliest is None:
            raise MoorageError(
                f"{namespace}/{name} has no complete base backup: run `moorage backup base {name}`"
            )
        point = choose_point(report.earliest, markers, rng or random.SystemRandom(), report.latest)
        before = {m.key for m in markers if m.committed_by <= point}
        after = {m.key for m in markers if m.written_at > point}
        record.update(
            point=point.isoformat(),
            window=report.window(),
            expectedPresent=len(before),
            expectedAbsent=len(after),
        )
        target = pitr.RecoveryTarget(time=point)
        base = pitr.choose_base_backup(report, target)
        record["baseBackup"] = base.backup_id
        origin = pitr_restore.Source(namespace, name, source.timeline())
        progress("drill", 2, steps)
        with scratch(DrillRecovery(drill_id, origin, target, base.backup_id)) as recovered:
            record["recoverySeconds"] = round(recovered.recovery_seconds, 1)
            progress("drill", 3, steps)
            with recovered.connect() as conn:
                found = markers_found(conn)
        missing, unexpected = sorted(before - found), sorted(after & found)
        record.update(found=len(found & (before | after)), missing=missing, unexpected=unexpected)
        record["ok"] = not missing and not unexpected
        record["reason"] = (
            ""
            if record["ok"]
            else f"restored to {point.isoformat()}: missing markers {missing}, "
            f"markers from after it {unexpected}"
        )
    except Exception as error:  # the drill failed: recorded as such, never as passed
        record["reason"] = (
            str(error) if isinstance(error, MoorageError) else f"{type(error).__name__}: {error}"
        )
    record["finishedAt"] = _now().isoformat()
    repository.store.put_bytes(
        _drill_key(repository, namespace, name, drill_id),
        json.dumps(record, indent=2, sort_keys=True).encode(),
    )
    repository.audit(
        "drill",
        drillId=drill_id,
        target=f"{namespace}/{name}",
        ok=record["ok"],
        point=record.get("point"),
        recoverySeconds=record.get("recoverySeconds"),
        reason=record.get("reason", ""),
    )
    progress("drill", steps, steps)
    return record
