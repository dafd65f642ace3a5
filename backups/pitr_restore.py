"""Restoring a PostgreSQL Middleware to a point in time, undoably (issue 14).

The flow, over a ``RecoveryPort`` (the local runtime's today):

refuse before touching anything (``pitr.inspect`` + the target inside the window, a base backup to
start from, no missing segment) → stop every member → set every member's data directory aside under
the restore's id (a rename: the safety copy costs no time and no space) → barman-cloud-restore the
base backup into the first member → recovery settings (``restore_command`` through the member's
restore script, the target, ``recovery_target_action = promote``, the timeline the deployment was
on) → start that member alone and wait until it promoted at the target → start the others, which
clone from it (the recovery settings dropped first), and wait until Ready. Every step is recorded in
the repository's restore record (``kind: pointInTime``), as logical restores are.

Any failure after the data was set aside puts it back (the half-restored directory discarded) and
starts the deployment as it was. ``rollback_point_in_time`` does the same later, keeping the
restored data beside it (``pgdata.after-<restore id>``) so that nothing is lost either way, until
``discard_point_in_time`` deletes what was set aside, when the DBA says the outcome stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from backups import pitr
from backups.repository import Repository
from backups.runbook import RestoreFailed, RestorePhase
from middleware.engines.base import Progress, no_progress
from middleware.errors import MoorageError

KIND = "pointInTime"
BEFORE, AFTER, FAILED = "before", "after", "failed"


class RecoveryPort(Protocol):
    """What a point-in-time restore needs of a runtime, for one deployment."""

    def timeline(self) -> int | None:
        """The timeline the running primary is on (None when none runs)."""
        ...

    def stop(self) -> None:
        """Stop every member, keeping its data."""
        ...

    def set_aside(self, suffix: str) -> list[str]:
        """Move every member's data directory to ``<it>.<suffix>``; returns the members moved."""
        ...

    def discard_current(self, keep_as: str | None) -> None:
        """Move the current data directories away (kept as ``<it>.<keep_as>``, or deleted)."""
        ...

    def bring_back(self, suffix: str) -> None:
        """Move ``<it>.<suffix>`` back in place for every member that has one."""
        ...

    def remove_set_aside(self, suffix: str) -> list[str]:
        """Delete ``<it>.<suffix>`` of every member, the deployment running on; returns the members
        that had one (raises naming a member whose volume is out of reach)."""
        ...

    def restore_base(
        self, archive: pitr.WalArchive, backup: pitr.BaseBackup, settings: dict[str, str]
    ) -> str:
        """Restore ``backup`` into the first member with ``settings`` for its recovery, adding the
        ``restore_command`` that fetches from ``archive``; returns the member's name."""
        ...

    def start_restored(self, member: str, timeout: float) -> None:
        """Start that member alone; return once it promoted (raise with its log when it stopped)."""
        ...

    def start_all(self) -> None:
        """Start every member (those without data clone from the primary) and wait until Ready."""
        ...

    def clear_recovery_settings(self, names: list[str]) -> None: ...


@dataclass(frozen=True)
class Source:
    """The deployment whose archive a restore replays, and the timeline to follow (None: the
    archive's latest)."""

    namespace: str
    name: str
    timeline: int | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _step(
    repository: Repository, record: dict[str, Any], phase: RestorePhase, message: str, **fields: Any
) -> None:
    record.update(fields, phase=str(phase), message=message)
    record.setdefault("history", []).append({"at": _now(), "phase": str(phase), "message": message})
    repository.save_restore(record)


def apply_point_in_time(
    repository: Repository,
    port: RecoveryPort,
    namespace: str,
    name: str,
    target: pitr.RecoveryTarget,
    *,
    base: str = "latest",
    restore_id: str | None = None,
    promote_timeout: float = 1800.0,
    progress: Progress = no_progress,
    source: Source | None = None,
) -> dict[str, Any]:
    """Restore ``namespace/name`` to ``target`` from its own archive, or from ``source``'s archive
    (another deployment's: a restore into a new deployment, a drill) following the timeline the
    source is on."""
    own = source is None
    source = source or Source(namespace, name, None)
    archive = pitr.WalArchive(repository.config, source.namespace, source.name)
    report = pitr.inspect(repository.store, archive)
    chosen = pitr.choose_base_backup(report, target, base)  # refuses before anything is touched
    rid = restore_id or Repository.new_id(f"pitr-{name}")
    timeline = port.timeline() if own else source.timeline
    settings = {
        **target.settings(),
        "recovery_target_timeline": str(timeline) if timeline and not target.latest else "latest",
    }
    if not target.latest:
        settings["recovery_target_action"] = "promote"
    record: dict[str, Any] = {
        "restoreId": rid,
        "kind": KIND,
        "namespace": namespace,
        "target": name,
        "backupId": chosen.backup_id,
        "recoveryTarget": target.settings(),
        "startedAt": _now(),
        "safetyCopy": f"pgdata.{BEFORE}-{rid}",
    }
    if not own:
        record["source"] = f"{source.namespace}/{source.name}"
    steps = 5
    progress("point-in-time restore", 0, steps)
    _step(repository, record, RestorePhase.SNAPSHOTTING, "stopping the members; setting their data aside")
    port.stop()
    moved = port.set_aside(f"{BEFORE}-{rid}")
    record["setAside"] = moved
    progress("point-in-time restore", 1, steps)
    try:
        _step(repository, record, RestorePhase.RESTORING, f"restoring base backup {chosen.backup_id}")
        member = port.restore_base(archive, chosen, settings)
        progress("point-in-time restore", 2, steps)
        _step(
            repository, record, RestorePhase.RESTORING, f"{member} replays the archived WAL up to the target"
        )
        port.start_restored(member, promote_timeout)
        # Before anyone clones it: a copy of these settings would send a new standby after the old
        # timeline's target instead of following the restored primary.
        port.clear_recovery_settings(sorted({*settings, "restore_command"}))
        progress("point-in-time restore", 3, steps)
        _step(
            repository, record, RestorePhase.VERIFYING, "re-seeding the other members from the restored one"
        )
        port.start_all()
        progress("point-in-time restore", 4, steps)
    except Exception as error:  # whatever failed, the data set aside goes back
        reason = f"{type(error).__name__}: {error}" if not isinstance(error, MoorageError) else str(error)
        _step(repository, record, RestorePhase.ROLLING_BACK, f"{reason}; putting the data set aside back")
        port.stop()
        port.discard_current(None)
        port.bring_back(f"{BEFORE}-{rid}")
        port.start_all()
        _step(
            repository,
            record,
            RestorePhase.FAILED,
            f"{reason}; the deployment is as it was before",
            rolledBack=True,
        )
        repository.audit("restore-failed", restoreId=rid, backupId=chosen.backup_id, reason=reason)
        raise RestoreFailed(f"point-in-time restore {rid} failed and was undone: {reason}") from error
    _step(
        repository,
        record,
        RestorePhase.APPLIED,
        f"{namespace}/{name} restored to {_describe(target)} from {chosen.backup_id}; "
        f"`moorage restore rollback {rid}` returns it to its state before",
        finishedAt=_now(),
    )
    repository.audit(
        "restore", restoreId=rid, backupId=chosen.backup_id, kind=KIND, target=f"{namespace}/{name}"
    )
    progress("point-in-time restore", steps, steps)
    return record


def rollback_point_in_time(
    repository: Repository, port: RecoveryPort, record: dict[str, Any], *, progress: Progress = no_progress
) -> dict[str, Any]:
    """Return the deployment to its data from before the restore; the restored data is kept beside
    it as ``pgdata.after-<restore id>``."""
    rid = record["restoreId"]
    if record.get("rolledBack"):
        raise MoorageError(f"restore {rid} was already rolled back")
    if record.get("discarded") == f"{BEFORE}-{rid}":
        raise MoorageError(
            f"the data from before restore {rid} was removed (`moorage restore discard`): "
            "nothing to roll back to"
        )
    _step(
        repository,
        record,
        RestorePhase.ROLLING_BACK,
        "stopping the members; bringing back the data set aside",
    )
    progress("rollback", 0, 2)
    port.stop()
    port.discard_current(f"{AFTER}-{rid}")
    port.bring_back(f"{BEFORE}-{rid}")
    progress("rollback", 1, 2)
    port.start_all()
    _step(
        repository,
        record,
        RestorePhase.ROLLED_BACK,
        f"returned to the data from before {rid}; the restored data is kept as pgdata.{AFTER}-{rid}",
        rolledBack=True,
    )
    repository.audit("rollback", restoreId=rid, kind=KIND)
    progress("rollback", 2, 2)
    return record


def discard_point_in_time(
    repository: Repository, port: RecoveryPort, record: dict[str, Any], *, progress: Progress = no_progress
) -> dict[str, Any]:
    """Delete what a point-in-time restore set aside on the members' volumes, once its outcome is
    kept: the data from before it (``pgdata.before-<id>``: the restore can no longer be rolled
    back), or after a rollback the restored data (``pgdata.after-<id>``). Nothing else is touched
    and the deployment runs on; run again, it removes what is left (a member that was down)."""
    rid = record["restoreId"]
    phase = record.get("phase")
    if phase == str(RestorePhase.FAILED):
        raise MoorageError(f"restore {rid} failed and was undone: it left nothing set aside")
    if phase not in (str(RestorePhase.APPLIED), str(RestorePhase.ROLLED_BACK)):
        raise MoorageError(
            f"restore {rid} is {phase}, not finished: `moorage restore rollback {rid}` finishes a "
            "restore that was stopped half-way; discard after that"
        )
    suffix = f"{AFTER}-{rid}" if record.get("rolledBack") else f"{BEFORE}-{rid}"
    what = "the restored data" if record.get("rolledBack") else "the data from before it"
    progress("discard", 0, 1)
    removed = port.remove_set_aside(suffix)
    _step(
        repository,
        record,
        RestorePhase(phase),
        f"{what} (pgdata.{suffix}) removed from "
        + (", ".join(removed) if removed else "no member (nothing was left)")
        + ("; it can no longer be rolled back" if not record.get("rolledBack") else ""),
        discarded=suffix,
    )
    repository.audit("restore-discard", restoreId=rid, kind=KIND, removed=suffix, members=removed)
    progress("discard", 1, 1)
    return record


def _describe(target: pitr.RecoveryTarget) -> str:
    if target.time is not None:
        return target.time.isoformat()
    if target.lsn is not None:
        return f"LSN {target.lsn}"
    if target.name is not None:
        return f"restore point {target.name}"
    return "the end of the archive"
