"""PostgreSQL point-in-time recovery over barman's cloud tools: the foundation (issue 14).

Continuous WAL archiving and physical base backups are done by barman's cloud tools
(``barman-cloud-wal-archive``, ``-backup``, ``-restore``, ``-wal-restore``; 3.19.1, checked against
PostgreSQL 18.6 here), the tools CloudNativePG uses. This module renders their commands and the
recovery settings, reads what they wrote to the repository, and answers what a restore must know
before it touches anything: which moments can be recovered, and is a WAL segment missing?

Wired so far: ``spec.backup.walArchiving`` on the local runtime (``LocalArchiveFiles`` writes each
member's archive script), the archiver's state in the status (``WALArchivingFailing``), on-demand base
backups and the recoverable window with its checks (``moorage backup base``, ``moorage restore plan
--to-time``). docs/backups.md ("Point-in-time recovery") says what exists and what does not.

The archive of one Middleware lives at ``<repository prefix>/pitr/<namespace>/<name>/`` in barman's
own layout: ``wals/<timeline+log>/<segment>[.gz|.bz2|...]`` and ``base/<backup id>/backup.info``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from backups.store import RepositoryConfig, S3Store
from middleware.engines.base import MemberPlan
from middleware.engines.postgresql.binaries import find_bin_dir
from middleware.engines.postgresql.config import ARCHIVE_SCRIPT, PGDATA, RESTORE_SCRIPT, RESTORE_SPOOL
from middleware.engines.postgresql.lsn import format_lsn, parse_lsn
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, SpecError
from middleware.spec import ResolvedSpec

log = logging.getLogger(__name__)

BARMAN_VERSION = "3.19.1"
BARMAN_BIN_ENV = "MOORAGE_BARMAN_BIN"
# Where `make setup` installs barman for the postgres user (a virtualenv under /root is out of its
# reach, as the PostgreSQL binaries are: see middleware/engines/postgresql/binaries.py).
DEFAULT_BARMAN_DIR = Path("/opt/moorage") / f"barman-{BARMAN_VERSION}"
BARMAN_TOOLS = (
    "barman-cloud-wal-archive",
    "barman-cloud-wal-restore",
    "barman-cloud-backup",
    "barman-cloud-restore",
)

# A base backup starts at once: with a spread checkpoint it would wait up to
# checkpoint_completion_target x checkpoint_timeout (4.5 min by default) before copying anything.
BASE_BACKUP_OPTIONS = ("--immediate-checkpoint",)

# 16 MB segments (the default, and what the catalog's PostgreSQL uses): 256 per log id.
SEGMENTS_PER_LOG = 0x100
SEGMENT_BYTES = 0x100000000 // SEGMENTS_PER_LOG
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.(gz|bz2|xz|snappy|zst|lz4))?$")


def find_barman() -> Path:
    """The bin directory holding barman's cloud tools, or an error saying how to get them."""
    configured = os.environ.get(BARMAN_BIN_ENV)
    candidates = ([Path(configured)] if configured else []) + [DEFAULT_BARMAN_DIR / "bin"]
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in BARMAN_TOOLS):
            return directory
    raise MoorageError(
        f"barman's cloud tools not found in {', '.join(map(str, candidates))}: run `make setup` "
        f"(installs barman[cloud]=={BARMAN_VERSION}) or point {BARMAN_BIN_ENV} at their bin directory"
    )


@dataclass(frozen=True, order=True)
class Segment:
    """A WAL segment by its file name: timeline, log id, segment number within the log."""

    timeline: int
    log: int
    number: int

    @classmethod
    def parse(cls, name: str) -> Segment | None:
        found = _SEGMENT.match(name)
        if not found:
            return None  # history files, .backup labels, .partial segments
        return cls(int(found[1], 16), int(found[2], 16), int(found[3], 16))

    @property
    def name(self) -> str:
        return f"{self.timeline:08X}{self.log:08X}{self.number:08X}"

    def next(self) -> Segment:
        if self.number + 1 < SEGMENTS_PER_LOG:
            return Segment(self.timeline, self.log, self.number + 1)
        return Segment(self.timeline, self.log + 1, 0)

    def position(self) -> int:
        return self.log * SEGMENTS_PER_LOG + self.number

    @property
    def end_lsn(self) -> int:
        """The first LSN after this segment (16 MiB segments, PostgreSQL's default and ours)."""
        return (self.position() + 1) * SEGMENT_BYTES


@dataclass(frozen=True)
class BaseBackup:
    backup_id: str
    timeline: int
    begin_wal: Segment
    end_wal: Segment
    end_time: datetime
    system_id: str
    # What ``--name`` gave it (a scheduled MiddlewareBackup's name); the bytes of its objects (barman
    # measures the size only after it wrote backup.info, so it is not in there).
    name: str | None = None
    size_bytes: int | None = None
    # Where the backup ends in the WAL (``end_xlog``): recovery must replay at least this far before
    # the copy is consistent, so no LSN target before it can be reached from this backup.
    end_lsn: int | None = None

    @classmethod
    def from_info(cls, backup_id: str, text: str) -> BaseBackup:
        """From barman's ``backup.info`` (``key=value`` lines)."""
        info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            begin, end = Segment.parse(info["begin_wal"]), Segment.parse(info["end_wal"])
            if begin is None or end is None or info.get("status") != "DONE":
                raise ValueError(
                    f"status {info.get('status')!r}, WAL {info.get('begin_wal')!r}..{info.get('end_wal')!r}"
                )
            return cls(
                backup_id=backup_id,
                timeline=int(info["timeline"]),
                begin_wal=begin,
                end_wal=end,
                end_time=datetime.fromisoformat(info["end_time"]),
                system_id=info["systemid"],
                name=info.get("backup_name") or None,
                end_lsn=parse_lsn(info["end_xlog"]) if info.get("end_xlog") else None,
            )
        except (KeyError, ValueError) as exc:
            raise MoorageError(f"base backup {backup_id}: unreadable backup.info ({exc})") from None


@dataclass(frozen=True)
class WalArchive:
    """Where one Middleware's WAL and base backups go, and the barman commands that use it."""

    config: RepositoryConfig
    namespace: str
    name: str

    @property
    def root(self) -> str:
        """The key prefix barman treats as its destination (the server name is added below it)."""
        return self.config.key("pitr", self.namespace)

    @property
    def destination(self) -> str:
        return f"s3://{self.config.bucket}/{self.root}"

    def key(self, *parts: str) -> str:
        return "/".join([self.root, self.name, *parts])

    def barman_args(self) -> list[str]:
        endpoint = ["--endpoint-url", self.config.endpoint] if self.config.endpoint else []
        return ["--cloud-provider", "aws-s3", *endpoint, self.destination, self.name]

    def environment(self) -> dict[str, str]:
        """The S3 keys barman reads, for the server's (archive) or the tool's environment only."""
        env = {"AWS_DEFAULT_REGION": self.config.region}
        if self.config.access_key_id and self.config.secret_access_key:
            env["AWS_ACCESS_KEY_ID"] = self.config.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.config.secret_access_key
        return env

    def command(self, barman_bin: Path, tool: str, *extra: str) -> list[str]:
        return [str(barman_bin / tool), *self.barman_args(), *extra]

    def archive_command(self, barman_bin: Path) -> str:
        """``archive_command``: PostgreSQL substitutes %p; a non-zero exit keeps the segment."""
        return shlex.join(self.command(barman_bin, "barman-cloud-wal-archive")) + " %p"

    def restore_command(self, barman_bin: Path) -> str:
        return shlex.join(self.command(barman_bin, "barman-cloud-wal-restore")) + " %f %p"


@dataclass(frozen=True)
class RecoveryTarget:
    """Exactly one of time / lsn / restore point name, or ``latest`` (the end of the archive)."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None
    latest: bool = False

    def __post_init__(self) -> None:
        given = [k for k in ("time", "lsn", "name") if getattr(self, k) is not None] + (
            ["latest"] if self.latest else []
        )
        if len(given) != 1:
            raise SpecError(
                "target",
                "give exactly one of --to-time, --to-lsn, --to-restore-point, --to-latest "
                f"(got {given or 'none'})",
            )
        if self.time is not None and self.time.tzinfo is None:
            raise SpecError("target.time", f"{self.time.isoformat()} has no time zone (add +00:00 or Z)")
        if self.lsn is not None and not re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", self.lsn):
            raise SpecError("target.lsn", f"{self.lsn!r} is not an LSN like 0/3000090")

    def settings(self) -> dict[str, str]:
        """The recovery_target_* settings (promote at the target: the restored server is writable)."""
        if self.latest:
            return {"recovery_target_timeline": "latest"}
        settings = {"recovery_target_action": "promote", "recovery_target_timeline": "latest"}
        if self.time is not None:
            settings["recovery_target_time"] = self.time.isoformat()
        elif self.lsn is not None:
            settings["recovery_target_lsn"] = self.lsn
        else:
            settings["recovery_target_name"] = str(self.name)
        return settings


def recovery_settings(archive: WalArchive, barman_bin: Path, target: RecoveryTarget) -> dict[str, str]:
    return {"restore_command": archive.restore_command(barman_bin), **target.settings()}


# Beside barman's wals/ and base/: what the archive script found searching each segment for restore
# points (backups/wal_batch.py writes it; its doc has the layout).
RESTORE_POINT_INDEX = "restore-points"


@dataclass(frozen=True)
class RestorePoint:
    """A ``pg_create_restore_point`` found in an archived segment."""

    name: str
    lsn: int
    segment: Segment

    @property
    def timeline(self) -> int:
        return self.segment.timeline


@dataclass
class ArchiveReport:
    """What the repository holds for one Middleware, and what is missing from it."""

    base_backups: list[BaseBackup]
    segments: dict[int, list[Segment]]  # per timeline, sorted
    gaps: list[Segment] = field(default_factory=list)  # missing, oldest first
    # When the newest segment of each timeline reached the repository: commits before the switch to
    # that segment's successor are recoverable, so this bounds the window from above (a few seconds
    # late by the upload's own time).
    last_archived: dict[int, datetime] = field(default_factory=dict)
    restore_points: list[RestorePoint] = field(default_factory=list)  # by LSN
    # Segments whose restore points are known (searched whole by the archive script).
    searched: set[Segment] = field(default_factory=set)

    def unsearched(self) -> list[Segment]:
        """Archived segments the recoverable window needs that were never searched for restore
        points (archived before the search existed, or pg_waldump could not read them)."""
        starts = [b.begin_wal.position() for b in self.base_backups]
        if not starts:
            return []
        needed = (s for on in self.segments.values() for s in on if s.position() >= min(starts))
        return sorted(s for s in needed if s not in self.searched)

    def _before_restore_point(self, name: str) -> list[BaseBackup]:
        """The base backups a recovery to restore point ``name`` can start from: those ending
        before its first occurrence that one of them ends before (PostgreSQL stops at the first one
        it replays, and replays only from a base backup's end on). Refuses a name the searched WAL
        never holds; a name that may be in WAL never searched is left to PostgreSQL's recovery."""
        points = [p for p in self.restore_points if p.name == name]
        for point in points:
            before = [
                b
                for b in self.base_backups
                if (b.end_lsn is None or b.end_lsn <= point.lsn) and b.timeline <= point.timeline
            ]
            if before:
                return before
        if points:
            first = points[0]
            raise MoorageError(
                f"restore point {name!r} (LSN {format_lsn(first.lsn)}, timeline {first.timeline}) is before "
                f"the recoverable window, which starts at LSN {format_lsn(self.earliest_lsn or 0)} "
                "(where the oldest base backup ends)"
            )
        if self.unsearched():
            return self.base_backups
        known = sorted({p.name for p in self.restore_points})
        raise MoorageError(
            f"restore point {name!r} is in none of the archived WAL segments"
            + (
                f"; the archive holds: {', '.join(repr(k) for k in known)}"
                if known
                else "; the archive holds none"
            )
            + " (restore plan lists them; one created moments ago is in a segment not archived yet:"
            " SELECT pg_switch_wal() closes it)"
        )

    @property
    def latest(self) -> datetime | None:
        """The latest recoverable moment, as far as the archive shows it (see ``last_archived``)."""
        return max(self.last_archived.values(), default=None)

    def window(self) -> dict[str, object]:
        """The recoverable window, per timeline too, for people and JSON."""
        return {
            "earliest": self.earliest.isoformat() if self.earliest else None,
            "latest": self.latest.isoformat() if self.latest else None,
            "earliestLsn": format_lsn(self.earliest_lsn) if self.earliest_lsn is not None else None,
            "latestLsn": format_lsn(self.latest_lsn) if self.latest_lsn is not None else None,
            "baseBackups": [
                {"id": b.backup_id, "timeline": b.timeline, "endTime": b.end_time.isoformat()}
                for b in self.base_backups
            ],
            "timelines": [
                {
                    "timeline": timeline,
                    "firstSegment": segments[0].name,
                    "lastSegment": segments[-1].name,
                    "lastArchivedAt": self.last_archived[timeline].isoformat()
                    if timeline in self.last_archived
                    else None,
                }
                for timeline, segments in sorted(self.segments.items())
                if segments
            ],
            "missingSegments": [g.name for g in self.gaps],
            "restorePoints": [
                {"name": p.name, "lsn": format_lsn(p.lsn), "timeline": p.timeline}
                for p in self.restore_points
                if self.earliest_lsn is None or p.lsn >= self.earliest_lsn
            ],
            "segmentsNotSearchedForRestorePoints": len(self.unsearched()),
        }

    @property
    def earliest(self) -> datetime | None:
        """The earliest recoverable moment: the end of the oldest complete base backup."""
        return min((b.end_time for b in self.base_backups), default=None)

    @property
    def earliest_lsn(self) -> int | None:
        return min((b.end_lsn for b in self.base_backups if b.end_lsn is not None), default=None)

    @property
    def latest_lsn(self) -> int | None:
        """The end of the newest archived segment: no LSN past it can be replayed."""
        return max((s[-1].end_lsn for s in self.segments.values() if s), default=None)

    def check(self, target: RecoveryTarget) -> BaseBackup:
        """The base backup to restore from for ``target``, or a refusal naming why, before anything
        is touched: no base backup, a target before the earliest point, or a segment missing between
        the chosen base backup and the end of the archive."""
        if not self.base_backups:
            raise MoorageError("no complete base backup in the archive: nothing to recover from")
        candidates = self.base_backups
        if target.time is not None:
            candidates = [b for b in self.base_backups if b.end_time <= target.time]
            if not candidates:
                raise MoorageError(
                    f"{target.time.isoformat()} is before the recoverable window, which starts at "
                    f"{self.earliest.isoformat() if self.earliest else '?'} "
                    "(the end of the oldest base backup)"
                )
        if target.lsn is not None:
            wanted = parse_lsn(target.lsn)
            candidates = [b for b in self.base_backups if b.end_lsn is None or b.end_lsn <= wanted]
            if not candidates:
                raise MoorageError(
                    f"LSN {target.lsn} is before the recoverable window, which starts at LSN "
                    f"{format_lsn(self.earliest_lsn or 0)} (where the oldest base backup ends)"
                )
            if self.latest_lsn is not None and wanted >= self.latest_lsn:
                raise MoorageError(
                    f"LSN {target.lsn} is after the end of the archive: its newest WAL segment ends at "
                    f"LSN {format_lsn(self.latest_lsn)}"
                )
        if target.name is not None:
            candidates = self._before_restore_point(target.name)
        if target.time is not None and self.latest is not None and target.time > self.latest:
            raise MoorageError(
                f"{target.time.isoformat()} is after the end of the archive: its newest WAL segment "
                f"was archived at {self.latest.isoformat()} (with archiving working, the window grows "
                "at least once a minute)"
            )
        chosen = max(candidates, key=lambda b: b.end_time)
        missing = [g for g in self.gaps if g >= chosen.begin_wal]
        if missing:
            raise MoorageError(
                f"WAL segment {missing[0].name} is missing from the archive (after base backup "
                f"{chosen.backup_id}): recovery past it is impossible"
                + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else "")
            )
        return chosen


def choose_base_backup(report: ArchiveReport, target: RecoveryTarget, base: str = "latest") -> BaseBackup:
    """The base backup a restore to ``target`` starts from: ``report.check``'s choice, or the one
    named by ``base`` when it can reach the target. Raises MoorageError naming why not."""
    chosen = report.check(target)
    if base in ("", "latest") or base == chosen.backup_id:
        return chosen
    given = next((b for b in report.base_backups if b.backup_id == base), None)
    if given is None:
        raise MoorageError(f"no complete base backup {base!r} in the archive")
    if target.time is not None and given.end_time > target.time:
        raise MoorageError(f"base backup {base} ends at {given.end_time.isoformat()}, after the target")
    return given


def _gaps(segments: Iterable[Segment], start: Segment | None) -> list[Segment]:
    """Segments missing on one timeline between ``start`` (or its first archived one) and its last."""
    ordered = sorted(segments)
    if not ordered:
        return []
    have = {s.position() for s in ordered}
    first = start if start is not None and start.timeline == ordered[0].timeline else ordered[0]
    missing, current = [], first
    while current <= ordered[-1]:
        if current.position() not in have:
            missing.append(current)
        current = current.next()
    return missing


def inspect(store: S3Store, archive: WalArchive) -> ArchiveReport:
    """Read the archive's listing and every base backup's ``backup.info``."""
    backups: list[BaseBackup] = []
    sizes: dict[str, int] = {}
    for key, size in store.list_sizes(archive.key("base") + "/"):
        parts = key.rsplit("/", 2)
        sizes[parts[-2]] = sizes.get(parts[-2], 0) + size
        if parts[-1] == "backup.info":
            backups.append(BaseBackup.from_info(parts[-2], store.get_bytes(key).decode()))
    backups = [dataclasses.replace(b, size_bytes=sizes.get(b.backup_id)) for b in backups]
    segments: dict[int, list[Segment]] = {}
    last_archived: dict[int, datetime] = {}
    for key, modified in store.list_objects(archive.key("wals") + "/"):
        segment = Segment.parse(key.rsplit("/", 1)[-1])
        if segment is not None:
            segments.setdefault(segment.timeline, []).append(segment)
            if segment.timeline not in last_archived or modified > last_archived[segment.timeline]:
                last_archived[segment.timeline] = modified
    for timeline in segments:
        segments[timeline].sort()
    points, searched = _restore_point_index(store, archive)
    gaps: list[Segment] = []
    for timeline, on_timeline in sorted(segments.items()):
        starts = [b.begin_wal for b in backups if b.timeline == timeline]
        gaps += _gaps(on_timeline, min(starts) if starts else None)
    return ArchiveReport(
        base_backups=sorted(backups, key=lambda b: b.end_time),
        segments=segments,
        gaps=gaps,
        last_archived=last_archived,
        restore_points=points,
        searched=searched,
    )


def _restore_point_index(store: S3Store, archive: WalArchive) -> tuple[list[RestorePoint], set[Segment]]:
    """The restore points the archive script found, and the segments it searched whole (one LIST
    per thousand keys: every fact is in a key's name)."""
    points: list[RestorePoint] = []
    searched: set[Segment] = set()
    for key in store.list_keys(archive.key(RESTORE_POINT_INDEX) + "/"):
        segment_name, leaf = key.rsplit("/", 2)[-2:]
        segment = Segment.parse(segment_name)
        if segment is None:
            continue
        if leaf == "scanned":
            searched.add(segment)
            continue
        lsn, dot, name = leaf.partition(".")
        if not dot:
            continue  # "failed": the reason is in the object, the segment stays unsearched
        try:
            points.append(RestorePoint(bytes.fromhex(name).decode(), int(lsn, 16), segment))
        except ValueError:
            log.warning("%s: unreadable restore point key %s, ignored", archive.name, key)
    points.sort(key=lambda p: (p.lsn, p.timeline))
    return points, searched


# The S3 keys of an archiving member, next to its archive script (mode 0600, the server's user only).
ARCHIVE_CREDENTIALS = "wal-archive.credentials"
# Segments one archive_command call uploads at most (itself and those PostgreSQL asks for next),
# and where it notes the ones uploaded ahead.
ARCHIVE_PARALLEL = 4
ARCHIVE_SPOOL = "wal-archive.spool"
# Ends the batch uploader's program in the archive script (a shell here-document).
WAL_BATCH_END = "MOORAGE_WAL_BATCH"
# Segments one restore_command call fetches at most (the one asked for and those after it, which
# barman keeps in the spool and hands over when asked), and where.
RESTORE_PARALLEL = 8


ARCHIVING_FAILING_EVENT = "wal-archiving-failing"
ARCHIVING_RECOVERED_EVENT = "wal-archiving-recovered"


def archiving_transition(was_failing: bool | None, failing: bool | None) -> str | None:
    """The audit event for a change of ``WALArchivingFailing`` (None: no archiver observed): the
    archiving started failing (also when first seen failing), or recovered after a failure."""
    if failing is None or failing == was_failing:
        return None
    if failing:
        return ARCHIVING_FAILING_EVENT
    return ARCHIVING_RECOVERED_EVENT if was_failing else None


# spec.backup.walCompression -> barman-cloud-wal-archive's options (its restore tells them apart by
# the file's suffix, so an archive may hold several). Level "low" (zstd 1, gzip 1): barman's default
# "medium" costs zstd several times the CPU for a few percent of size on WAL, and the archiver's
# job is to keep up with the primary.
WAL_COMPRESSION_OPTIONS = {
    name: [f"--{name}", "--compression-level", "low"] for name in ("zstd", "lz4", "gzip")
} | {"none": []}


def archive_script(
    archive: WalArchive,
    barman_bin: Path,
    waldump: Path,
    spool: str = f"$here/{ARCHIVE_SPOOL}",
    compression: str = "zstd",
) -> str:
    """PostgreSQL's archive_command for one Middleware: archive segment ``$1`` with barman's
    library, as barman-cloud-wal-archive does. Keys come from the credentials file beside it
    (boto3's shared credentials format), never from the command line; a non-zero exit keeps the
    segment.

    PostgreSQL archives one segment at a time, and barman's tool is one process per segment whose
    start costs about what uploading the segment does: under a write load that falls behind
    (bench/results.json, ``pitr``). So each call uploads, in one process of barman's interpreter
    (``backups/wal_batch.py``, fed on stdin), ``$1`` and up to ARCHIVE_PARALLEL - 1 of the segments
    PostgreSQL will ask for next (``.ready`` in archive_status) at once, as CloudNativePG's
    ``maxParallel`` does, and notes in ``spool`` (a directory the server's user can write) each one
    uploaded ahead; asked for one of those later, it answers at once. A segment whose upload ahead
    failed is not noted, so it is uploaded when asked for: nothing is reported archived that is not
    in the repository. The notes are kept per destination, so a script rewritten for another
    repository never trusts the old ones. ``waldump`` (the server's own ``pg_waldump``) searches each
    segment for restore points, which ``restore plan`` checks a target name against; ``compression``
    (a key of WAL_COMPRESSION_OPTIONS) compresses each segment on its way."""
    if compression not in WAL_COMPRESSION_OPTIONS:
        raise SpecError(
            "spec.backup.walCompression", f"{compression!r} is not one of {list(WAL_COMPRESSION_OPTIONS)}"
        )
    barman_args = [*WAL_COMPRESSION_OPTIONS[compression], *archive.barman_args()]
    where = hashlib.sha256(f"{archive.config.endpoint} {archive.destination}/{archive.name}".encode())
    program = Path(__file__).with_name("wal_batch.py").read_text()
    if WAL_BATCH_END in program:  # it would end the here-document early
        raise RuntimeError(f"backups/wal_batch.py must not contain {WAL_BATCH_END}")
    return _script(
        archive,
        "archives WAL segments to",
        [
            'name=$(basename "$1") wal=$(dirname "$1")',
            f'spool="{spool}/{where.hexdigest()[:12]}"',
            'if [ -e "$spool/$name" ]; then rm -f "$spool/$name"; exit 0; fi',
            'mkdir -p "$spool"',
            "ahead=$(ls \"$wal/archive_status\" 2>/dev/null | sed -n -E 's/^([0-9A-F]{24})[.]ready$/\\1/p' "
            f'| grep -vx "$name" | sort | head -n {ARCHIVE_PARALLEL - 1})',
            f"exec {shlex.quote(str(barman_bin / 'python'))} - --waldump {shlex.quote(str(waldump))} "
            '"$spool" "$1" $ahead -- '
            f"{shlex.join(barman_args)} <<'{WAL_BATCH_END}'",
            program.rstrip("\n"),
            WAL_BATCH_END,
        ],
    )


def _script(archive: WalArchive, what: str, body: list[str]) -> str:
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Written by Moorage (spec.backup.walArchiving) for {archive.namespace}/{archive.name}:",
            f"# {what} {archive.destination}/{archive.name}.",
            'here=$(dirname "$0")',
            f'if [ -f "$here/{ARCHIVE_CREDENTIALS}" ]; then',
            f'  export AWS_SHARED_CREDENTIALS_FILE="$here/{ARCHIVE_CREDENTIALS}"',
            "fi",
            f"export AWS_DEFAULT_REGION={shlex.quote(archive.config.region)}",
            *body,
            "",
        ]
    )


def restore_script(archive: WalArchive, barman_bin: Path, spool: str = f"$here/{RESTORE_SPOOL}") -> str:
    """restore_command for a point-in-time recovery: fetch segment ``$1`` into ``$2``.

    PostgreSQL asks for one segment at a time, each a barman process start (~0.35 s of CPU) and a
    round trip to the object store. barman's own ``--parallel`` fetches the segment asked for and
    the next RESTORE_PARALLEL - 1 of the archive at once into ``spool``, and hands each over from
    there when PostgreSQL asks for it. (On this machine's local S3 the recovery bench is bound by
    the replay itself and did not change: bench/results.json, ``pitr``.) The spool is
    per destination (a segment's name is the same in every cluster's archive); the recovery flows
    empty it before they start and once the member is promoted."""
    where = hashlib.sha256(f"{archive.config.endpoint} {archive.destination}/{archive.name}".encode())
    tool = shlex.join([str(barman_bin / "barman-cloud-wal-restore"), "--parallel", str(RESTORE_PARALLEL)])
    spool_dir = f'--spool-dir "{spool}/{where.hexdigest()[:12]}"'
    return _script(
        archive,
        "fetches WAL segments from",
        [f'exec {tool} {spool_dir} {shlex.join(archive.barman_args())} "$1" "$2"'],
    )


def credentials_file(config: RepositoryConfig) -> str | None:
    """The repository's keys in boto3's shared-credentials format; None when boto3 finds its own."""
    if not (config.access_key_id and config.secret_access_key):
        return None
    return (
        "[default]\n"
        f"aws_access_key_id = {config.access_key_id}\n"
        f"aws_secret_access_key = {config.secret_access_key}\n"
    )


@dataclass(frozen=True)
class LocalArchiveFiles:
    """The local runtime's ``extra_member_files`` for archiving deployments: each PostgreSQL member
    gets the archive script and the repository's keys beside its config (rewritten on every start,
    so a new ``MOORAGE_BACKUP_REPO`` takes effect). Without a repository, a member whose script was
    written before keeps it; a new one is refused naming the field."""

    repository_url: str | None

    def __call__(self, spec: ResolvedSpec, member: MemberPlan, data_dir: Path) -> dict[str, tuple[str, int]]:
        if not spec.wal_archiving:
            return {}
        if not self.repository_url:
            if (data_dir / ARCHIVE_SCRIPT).exists():
                return {}
            raise SpecError(
                "spec.backup.walArchiving",
                "no repository to archive to: set MOORAGE_BACKUP_REPO (or pass --repo) to "
                "s3://BUCKET[/PREFIX]?endpoint=URL, keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        config = RepositoryConfig.from_url(self.repository_url)
        archive = WalArchive(config, spec.namespace, spec.name)
        try:
            report = inspect(S3Store(config), archive)
        except MoorageError as exc:
            # The member starts anyway: archiving fails visibly (WALArchivingFailing) and keeps every
            # segment until the repository answers; the check runs again at the next start.
            where = f"{spec.namespace}/{spec.name}"
            log.warning("%s: archive not checked, the repository did not answer: %s", where, exc)
        else:
            check_archive_is_ours(report, archive, local_system_id(spec, data_dir))
        barman_bin = find_barman()
        files = {
            ARCHIVE_SCRIPT: (
                archive_script(
                    archive, barman_bin, find_bin_dir() / "pg_waldump", compression=spec.wal_compression
                ),
                0o700,
            ),
            RESTORE_SCRIPT: (restore_script(archive, barman_bin), 0o700),
        }
        keys = credentials_file(config)
        if keys is not None:
            files[ARCHIVE_CREDENTIALS] = (keys, 0o600)
        return files


def run_as_postgres(command: list[str], env: dict[str, str], what: str, timeout: float = 6 * 3600) -> None:
    """Run one of barman's tools as the ``postgres`` OS user (when root), which owns the data
    directories they read and write; a failure names ``what`` and barman's last lines."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    try:
        done = subprocess.run([*prefix, *command], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MoorageError(f"{what} ran over {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise MoorageError(f"{what} failed:\n{tail}")


def server_system_id(host: str, port: int, password: str) -> str:
    import psycopg  # with its first use: the operator imports this module whatever the engines it runs

    with psycopg.connect(
        host=host, port=port, user="postgres", password=password, dbname="postgres", connect_timeout=10
    ) as conn:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def base_backup_options(name: str | None) -> list[str]:
    """barman-cloud-backup's options but for the connection; ``name`` is the backup's friendly
    name (barman refers to a backup by it as well as by its id)."""
    return [*BASE_BACKUP_OPTIONS, *(("--name", name) if name else ())]


def take_base_backup(
    store: S3Store,
    archive: WalArchive,
    host: str,
    port: int,
    password: str,
    *,
    name: str | None = None,
    timeout: float = 6 * 3600,
) -> BaseBackup:
    """A physical base backup of the primary at ``host:port`` with barman-cloud-backup, which reads
    the data directory itself: it runs on the primary's machine as its OS user (``postgres`` when
    started as root). Returns the new backup as the archive lists it; a failure names barman's last
    words and leaves nothing marked complete (barman writes ``backup.info`` DONE last)."""
    barman_bin = find_barman()
    env = {**os.environ, **archive.environment(), "PGPASSWORD": password}
    command = [
        *archive.command(barman_bin, "barman-cloud-backup"),
        *base_backup_options(name),
        *("--host", host, "--port", str(port), "--user", "postgres"),
    ]
    what = f"barman-cloud-backup of {archive.namespace}/{archive.name}"
    return base_backup_with(
        store,
        archive,
        server_system_id(host, port, password),
        lambda: run_as_postgres(command, env, what, timeout),
    )


def base_backup_with(
    store: S3Store, archive: WalArchive, system_id: str, run_barman: Callable[[], None]
) -> BaseBackup:
    """Check the archive belongs to the server of ``system_id``, run barman-cloud-backup where the
    data directory is (``run_barman``: raises when it fails), and return the new backup as the
    archive lists it."""
    report = inspect(store, archive)
    check_archive_is_ours(report, archive, system_id)
    before = {b.backup_id for b in report.base_backups}
    run_barman()
    new = [b for b in inspect(store, archive).base_backups if b.backup_id not in before]
    if not new:
        raise MoorageError("barman-cloud-backup exited 0 but no new complete base backup is in the archive")
    return new[-1]


def system_id_of(pgdata: Path) -> str | None:
    """The system identifier in a data directory's ``global/pg_control`` (its first field, a uint64
    in the machine's byte order), or None when there is no cluster there yet."""
    try:
        with open(pgdata / "global" / "pg_control", "rb") as control:
            head = control.read(8)
    except FileNotFoundError:
        return None
    return str(int.from_bytes(head, sys.byteorder)) if len(head) == 8 else None


def local_system_id(spec: ResolvedSpec, data_dir: Path) -> str | None:
    """The system identifier of a local deployment: from any member's data directory (the local
    runtime keeps ``members/<member>/data/pgdata``); None while no member has been initialised."""
    members_dir = data_dir.parent.parent
    for member in get_engine(spec.engine).members(spec):
        found = system_id_of(members_dir / member.name / "data" / PGDATA)
        if found is not None:
            return found
    return None


def check_archive_is_ours(report: ArchiveReport, archive: WalArchive, system_id: str | None) -> None:
    """Never archive into another cluster's archive (CloudNativePG's "Expected empty archive", with
    the reason spelled out): a new deployment (no data yet) needs an empty archive; one with data
    only archives where every base backup has its system identifier (a point-in-time restore keeps
    it and goes on with a new timeline)."""
    where = f"{archive.destination}/{archive.name}"
    if system_id is None:
        if report.base_backups or report.segments:
            segments = sum(map(len, report.segments.values()))
            held = f"{len(report.base_backups)} base backup(s), {segments} WAL segment(s)"
            raise SpecError(
                "spec.backup.walArchiving",
                f"{where} already holds {held} of an earlier cluster: a new Middleware never archives "
                "into it (its WAL would mix with theirs). Delete that prefix if the old archive is not "
                "needed, or use another repository prefix",
            )
        return
    others = sorted({b.system_id for b in report.base_backups} - {system_id})
    if others:
        raise SpecError(
            "spec.backup.walArchiving",
            f"{where} belongs to another cluster (system identifier {', '.join(others)}; this one is "
            f"{system_id}): refused rather than mixing two clusters' WAL. Use another repository prefix",
        )


def retention_options(keep_last: int, keep_days: int | None) -> list[str]:
    """barman-cloud-backup-delete's policy: ``keep_days`` keeps a recovery window of that many days
    (and at least ``keep_last`` backups), else the newest ``keep_last``."""
    if keep_days:
        return [
            "--retention-policy",
            f"RECOVERY WINDOW OF {keep_days} DAYS",
            "--minimum-redundancy",
            str(keep_last),
        ]
    return ["--retention-policy", f"REDUNDANCY {keep_last}"]


def prune_base_backups_with(store: S3Store, archive: WalArchive, run_barman: Callable[[], None]) -> list[str]:
    """Retention for base backups, by barman-cloud-backup-delete run where barman is (``run_barman``:
    raises when it fails): it deletes the base backups outside the policy and every WAL segment
    older than the oldest one kept, so the archive keeps exactly what the kept base backups need.
    Returns the deleted backup ids."""
    before = {b.backup_id for b in inspect(store, archive).base_backups}
    run_barman()
    after = inspect(store, archive)
    starts = [b.begin_wal.position() for b in after.base_backups]
    if starts:  # barman deleted the WAL before the oldest base backup kept: so goes what was found in it
        prefix = archive.key(RESTORE_POINT_INDEX) + "/"
        stale = [
            key
            for key in store.list_keys(prefix)
            if (segment := Segment.parse(key[len(prefix) :].split("/")[0])) is not None
            and segment.position() < min(starts)
        ]
        store.delete_keys(stale)
    return sorted(before - {b.backup_id for b in after.base_backups})


def prune_base_backups(
    store: S3Store, archive: WalArchive, *, keep_last: int, keep_days: int | None
) -> list[str]:
    """``prune_base_backups_with`` barman on this machine."""
    barman_bin = find_barman()
    command = [
        *archive.command(barman_bin, "barman-cloud-backup-delete"),
        *retention_options(keep_last, keep_days),
    ]

    def run() -> None:
        done = subprocess.run(
            command, env={**os.environ, **archive.environment()}, capture_output=True, text=True, timeout=3600
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise MoorageError(
                f"barman-cloud-backup-delete of {archive.namespace}/{archive.name} failed:\n{tail}"
            )

    return prune_base_backups_with(store, archive, run)
