"""The DBA runbook: take, verify and prune backups; plan, apply and roll back restores.

The same functions serve the CLI (in-process on the local runtime) and, in Kubernetes, the Jobs the
operator starts. They see deployments only through :class:`Target` (spec, engine, connection) and
the repository only through :class:`~backups.repository.Repository`, so data flows engine → S3 and
back in streams: memory stays bounded whatever the data size.

The rule the runbook keeps: every change to a database is recorded and can be undone. A restore
first takes a *safety snapshot* of the target (an ordinary backup of kind ``safety-snapshot``),
then loads, then verifies; when loading or verifying fails it loads the safety snapshot back by
itself. ``rollback`` does the same on demand, also for a restore whose process was killed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, Protocol, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from backups import pitr
from backups.errors import BackupError
from backups.manifest import BackupManifest
from backups.repository import Repository
from backups.retention import select_for_pruning
from middleware.engines.base import (
    AsideCopy,
    Connection,
    DumpObject,
    Engine,
    LoadReport,
    Progress,
    SetsAside,
    StoredObject,
    no_progress,
)
from middleware.errors import MoorageError, NotReady
from middleware.spec import ResolvedSpec


class RestoreRefused(BackupError):
    """A restore that was not started because it would not work or the backup is not good."""


class RestoreFailed(BackupError):
    """A restore that failed after it began; the message says what state the target is in."""


@dataclass
class Target:
    """A deployment the runbook reads from or writes to."""

    namespace: str
    name: str
    spec: ResolvedSpec
    engine: Engine
    conn: Connection
    manifest: dict[str, Any]  # the Middleware as applied: kept in backups as their source spec


class Targets(Protocol):
    """Where deployments come from: the local runtime here, Kubernetes in a Job."""

    def get(self, namespace: str, name: str) -> Target: ...

    def scratch(self, manifest: dict[str, Any]) -> AbstractContextManager[Target]:
        """A throwaway deployment shaped like ``manifest`` (for ``backup verify --deep``), removed
        with its data on exit."""
        ...


READY_TIMEOUT_SECONDS = 120.0
"""How long a backup or restore waits for a target that is not serving right now (a failover in
progress, a sentinel that does not answer) before it gives up without having touched anything."""


def serving_inventory(
    target: Target, progress: Progress = no_progress, timeout: float = READY_TIMEOUT_SECONDS
) -> dict[str, int]:
    """The target's inventory, once it serves. ``NotReady`` is what an engine says during a
    failover or while a member is briefly unreachable: a Job started at that moment would otherwise
    fail a backup or a restore that works a few seconds later. Asked again until ``timeout``, then
    the last ``NotReady`` is raised; nothing has been written by then."""
    return when_serving(target, target.engine.data_inventory, progress, timeout)


T = TypeVar("T")


def when_serving(
    target: Target,
    call: Callable[[ResolvedSpec, Connection], T],
    progress: Progress = no_progress,
    timeout: float = READY_TIMEOUT_SECONDS,
) -> T:
    """``call(spec, conn)`` once the target serves (see :func:`serving_inventory`)."""

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        progress(f"waiting for {target.name} to serve: {error}", state.seconds_since_start or 0.0, timeout)

    retrying = Retrying(
        retry=retry_if_exception_type(NotReady),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.5, max=10),
        before_sleep=waiting,
        reraise=True,
    )
    return retrying(call, target.spec, target.conn)


# -- backups ------------------------------------------------------------------------------------


DataDump = Callable[[ResolvedSpec, Connection, Progress], Iterator[DumpObject]]


def tool_versions(target: Target) -> dict[str, str]:
    try:
        ours = version("moorage")
    except PackageNotFoundError:  # running from a source tree without an install
        ours = "unknown"
    return {"moorage": ours, target.engine.name: target.spec.version}


def create_backup(
    repository: Repository,
    target: Target,
    *,
    kind: str = "backup",
    restore_id: str | None = None,
    backup_id: str | None = None,
    progress: Progress = no_progress,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    dump: DataDump | None = None,
    inventory: dict[str, int] | None = None,
) -> BackupManifest:
    """Dump ``target`` into the repository. The backup exists only once its manifest is written,
    which is the last step; any failure aborts it (objects deleted, nothing listed, audited).
    ``backup_id`` is chosen by the caller when it must be known before the backup starts (the
    operator names it in the status before its Job runs). A target not serving yet is waited for
    up to ``ready_timeout`` seconds (by :func:`serving_inventory`, or by the dump's start where the
    dump counts: :func:`_dump_once_serving`). ``dump`` replaces the engine's full
    DataDump (a restore's safety snapshot of what setting aside does not keep), ``inventory`` the
    counts taken first (the caller has them). The manifest's inventory is what the dump counted
    where the engine's dump counts what it writes (``Engine.counts_in_dump``: no pass over the data
    of its own), else the target's counted just before."""
    writer = repository.begin(
        target.namespace, target.name, kind=kind, restore_id=restore_id, backup_id=backup_id
    )
    try:
        counted_by_dump = inventory is None and dump is None and target.engine.counts_in_dump
        if inventory is None and not counted_by_dump:
            inventory = serving_inventory(target, progress, ready_timeout)
        started = _now()
        clock = time.monotonic()
        done = 0

        def on_bytes(count: int) -> None:
            nonlocal done
            done += count
            progress("backing up (bytes)", done, 0)

        for obj in _dump_once_serving(target, dump or target.engine.data_dump, progress, ready_timeout):
            writer.put(obj, on_bytes)
        if counted_by_dump:
            stored = [StoredObject(e.name, e.size, dict(e.meta)) for e in writer.entries]
            inventory = target.engine.data_dump_counts(stored)
        return writer.commit(
            engine=target.spec.engine,
            version=target.spec.version,
            topology=target.spec.topology,
            shards=target.spec.shards,
            inventory=inventory,
            started_at=started,
            duration_seconds=round(time.monotonic() - clock, 3),
            source_spec=target.manifest,
            tool_versions=tool_versions(target),
        )
    except BaseException as error:
        writer.abort(_describe(error))
        if isinstance(error, MoorageError):
            raise
        if isinstance(error, Exception):
            raise BackupError(
                f"backup of {target.namespace}/{target.name} failed: {_describe(error)}"
            ) from error
        raise


def _dump_once_serving(
    target: Target, dump: DataDump, progress: Progress, ready_timeout: float
) -> Iterator[DumpObject]:
    """The dump's objects. Its start (finding the primary, listing what to dump: all before the
    first object) waits for a target that does not serve yet, as :func:`serving_inventory` does;
    once an object has been written, a failure fails the backup."""

    def start(spec: ResolvedSpec, conn: Connection) -> tuple[DumpObject | None, Iterator[DumpObject]]:
        objects = iter(dump(spec, conn, progress))
        return next(objects, None), objects

    first, rest = when_serving(target, start, progress, ready_timeout)
    if first is not None:
        yield first
    yield from rest


@dataclass
class VerifyReport:
    backup_id: str
    ok: bool
    problems: list[str]
    bytes_checked: int
    deep: bool = False
    loaded: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "backupId": self.backup_id,
            "ok": self.ok,
            "deep": self.deep,
            "bytesChecked": self.bytes_checked,
            "problems": self.problems,
            "loaded": self.loaded,
        }


def verify_backup(
    repository: Repository,
    backup_id: str,
    *,
    deep: bool = False,
    targets: Targets | None = None,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Checksums of every object; with ``deep``, also load it into a scratch deployment and check
    the scratch deployment then holds exactly what was loaded."""
    manifest = repository.find(backup_id)
    total = manifest.size_bytes
    checked = 0

    def on_bytes(count: int) -> None:
        nonlocal checked
        checked += count
        progress("checking checksums", checked, total)

    result = repository.verify(manifest, on_bytes)
    report = VerifyReport(backup_id, result.ok, list(result.problems), result.bytes_checked)
    if not result.ok or not deep:
        return report
    if targets is None:
        raise MoorageError("--deep needs a runtime to start a scratch deployment on")
    report.deep = True
    scratch_manifest = _scratch_manifest(manifest)
    with targets.scratch(scratch_manifest) as scratch:
        loaded = scratch.engine.data_load(scratch.spec, scratch.conn, repository.source(manifest), progress)
        report.loaded = dict(loaded.counts)
        found = scratch.engine.data_inventory(scratch.spec, scratch.conn)
        differences = loaded.problems(found)
        if differences:
            report.ok = False
            report.problems.append(
                "the scratch deployment differs from what was loaded: " + "; ".join(differences)
            )
    return report


def _scratch_manifest(manifest: BackupManifest) -> dict[str, Any]:
    source = manifest.source_spec
    spec = dict(source.get("spec", {}))
    # The scratch copy must not back itself up on the source's schedule nor keep its volumes.
    spec.pop("backup", None)
    spec["deletionPolicy"] = "Delete"
    return {
        "apiVersion": source.get("apiVersion", "moorage.io/v1alpha1"),
        "kind": "Middleware",
        # The backup's own namespace: each Targets places the scratch copy where it belongs.
        "metadata": {
            "name": f"verify-{secrets.token_hex(3)}",
            "namespace": manifest.namespace,
        },
        "spec": spec,
    }


def list_backups(
    repository: Repository, namespace: str | None = None, name: str | None = None, *, kind: str | None = None
) -> list[BackupManifest]:
    return repository.list_backups(namespace, name, kind=kind)


def prune_backups(
    repository: Repository,
    *,
    keep_last: int | None,
    keep_days: float | None,
    namespace: str | None = None,
    name: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[BackupManifest]:
    """Delete backups outside the retention; never the newest backup of a deployment, never a
    safety snapshot (those belong to restores, which must stay undoable)."""
    manifests = repository.list_backups(namespace, name, kind="backup")
    doomed = select_for_pruning(manifests, keep_last=keep_last, keep_days=keep_days, now=now or _now())
    if dry_run:
        return doomed
    for manifest in doomed:
        repository.delete_backup(manifest)
        repository.audit(
            "backup-pruned",
            backupId=manifest.backup_id,
            namespace=manifest.namespace,
            middleware=manifest.middleware,
        )
    return doomed


# -- restores -----------------------------------------------------------------------------------


class RestorePhase(StrEnum):
    SNAPSHOTTING = "Snapshotting"
    RESTORING = "Restoring"
    VERIFYING = "Verifying"
    APPLIED = "Applied"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


@dataclass
class RestorePlan:
    backup: BackupManifest
    namespace: str
    target: str
    compatible: bool
    reason: str | None
    overwrites: dict[str, int]  # what the target holds now (lost unless rolled back)
    incoming: dict[str, int]  # what the backup held when it was taken

    def to_wire(self) -> dict[str, Any]:
        return {
            "backupId": self.backup.backup_id,
            "source": f"{self.backup.namespace}/{self.backup.middleware}",
            "target": f"{self.namespace}/{self.target}",
            "engine": self.backup.engine,
            "backupVersion": self.backup.version,
            "backupTopology": self.backup.topology,
            "backupShards": self.backup.shards,
            "objects": len(self.backup.objects),
            "sizeBytes": self.backup.size_bytes,
            "compatible": self.compatible,
            "reason": self.reason,
            "overwrites": self.overwrites,
            "incoming": self.incoming,
        }


def plan_restore(
    repository: Repository,
    backup_id: str,
    target: Target,
    *,
    progress: Progress = no_progress,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    count: bool = True,
) -> RestorePlan:
    """What a restore of ``backup_id`` into ``target`` would overwrite, and whether it can work.
    Reads only: nothing is changed. Without ``count`` the target's data is not counted (a full
    read: a restore that sets the data aside counts it exactly as it does)."""
    manifest = repository.find(backup_id)
    reason = target.engine.data_compatibility(manifest.origin(), target.spec)
    overwrites = serving_inventory(target, progress, ready_timeout) if count else {}
    return RestorePlan(
        backup=manifest,
        namespace=target.namespace,
        target=target.name,
        compatible=reason is None,
        reason=reason,
        overwrites=overwrites,
        incoming=dict(manifest.inventory),
    )


def record_plan(repository: Repository, plan: RestorePlan, restore_id: str) -> dict[str, Any]:
    """Save a plan as a restore record of phase ``Planned``, so whoever started it elsewhere (the
    operator, for a Job) can read the result back. Nothing is changed in the target."""
    data = {
        "restoreId": restore_id,
        "backupId": plan.backup.backup_id,
        "namespace": plan.namespace,
        "target": plan.target,
        "engine": plan.backup.engine,
        "startedAt": _iso(_now()),
        "finishedAt": _iso(_now()),
        "phase": PLANNED,
        "message": "compatible" if plan.compatible else f"refused: {plan.reason}",
        "plan": plan.to_wire(),
        "overwrote": plan.overwrites,
        "rolledBack": False,
    }
    repository.save_restore(data)
    return data


PLANNED = "Planned"


def new_restore_id(target: str, now: datetime | None = None) -> str:
    stamp = (now or _now()).strftime("%Y%m%dt%H%M%Sz")
    return f"restore-{target}-{stamp}-{secrets.token_hex(2)}"


class _Record:
    """A restore's record in the repository, saved at every step so a killed restore can be
    found and rolled back, and its history read back."""

    def __init__(self, repository: Repository, data: dict[str, Any]) -> None:
        self.repository = repository
        self.data = data

    def step(self, phase: RestorePhase, message: str, **fields: Any) -> None:
        self.data.update(fields)
        self.data["phase"] = str(phase)
        self.data["message"] = message
        self.data.setdefault("history", []).append(
            {"at": _iso(_now()), "phase": str(phase), "message": message}
        )
        self.repository.save_restore(self.data)


class SafetyCopy(StrEnum):
    """How a restore keeps what it overwrites, so that it can be undone."""

    AUTO = "auto"  # aside where the engine can set data aside, else snapshot
    ASIDE = "aside"  # renamed inside the target: no time whatever the size; its space until discarded
    SNAPSHOT = "snapshot"  # a full dump to the repository first: as long as a backup, no space in the target


SET_ASIDE = "setAside"
"""Restore record field: what the engine set aside (``AsideCopy.state``) and its counts."""


def apply_restore(
    repository: Repository,
    backup_id: str,
    target: Target,
    *,
    progress: Progress = no_progress,
    restore_id: str | None = None,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    safety_copy: SafetyCopy = SafetyCopy.AUTO,
) -> dict[str, Any]:
    """Safety copy → load → verify; on any failure after the copy, go back to it.

    The safety copy is a snapshot (a full dump to the repository) or, where the engine can and
    ``safety_copy`` allows, the data set aside inside the target (:class:`SetsAside`: renamed, no
    time whatever the size). Refuses before touching the target when it is incompatible; with a
    snapshot also when the backup fails its checksums. With the data set aside the checksums are
    checked as the load reads (no separate pass): a corrupt object fails the load and the data set
    aside is put back. Returns the restore record (``restoreId``, ``phase``, ``safetySnapshot``,
    ``setAside``, ...)."""
    aside_ops = _aside_ops(target, safety_copy)
    # Setting aside counts the target's data exactly: no count of it here beforehand.
    plan = plan_restore(
        repository, backup_id, target, progress=progress, ready_timeout=ready_timeout, count=aside_ops is None
    )
    if not plan.compatible:
        raise RestoreRefused(
            f"cannot restore {backup_id} into {target.namespace}/{target.name}: {plan.reason}"
        )
    if aside_ops is None:
        checked = repository.verify(
            plan.backup, _bytes_progress(progress, "checking the backup", plan.backup.size_bytes)
        )
        if not checked.ok:
            raise RestoreRefused(
                f"backup {backup_id} failed verification, the target was not touched: "
                + "; ".join(checked.problems)
            )
    record = _Record(
        repository,
        {
            "restoreId": restore_id or new_restore_id(target.name),
            "backupId": backup_id,
            "namespace": target.namespace,
            "target": target.name,
            "engine": target.spec.engine,
            "startedAt": _iso(_now()),
            "overwrote": plan.overwrites,
            "rolledBack": False,
            "safetyCopy": str(SafetyCopy.SNAPSHOT if aside_ops is None else SafetyCopy.ASIDE),
        },
    )
    rid = record.data["restoreId"]
    record.step(
        RestorePhase.SNAPSHOTTING,
        "taking a safety snapshot of the target" if aside_ops is None else "dumping the roles",
    )
    try:
        safety = _take_safety_copy(repository, target, record, aside_ops, plan, progress, ready_timeout)
    except BaseException as error:
        if SET_ASIDE not in record.data:  # nothing moved yet
            record.step(
                RestorePhase.FAILED,
                f"safety copy failed, the target was not touched: {_describe(error)}",
            )
            repository.audit(
                "restore-failed", restoreId=rid, backupId=backup_id, reason=record.data["message"]
            )
            raise RestoreFailed(record.data["message"]) from error
        _undo_failed(repository, target, record, error, "setting aside", progress, ready_timeout)
    record.step(RestorePhase.RESTORING, f"loading {backup_id}", safetySnapshot=safety.backup_id)
    try:
        loaded = target.engine.data_load(target.spec, target.conn, repository.source(plan.backup), progress)
        record.step(
            RestorePhase.VERIFYING,
            "comparing the target with what was loaded",
            loaded=loaded.counts,
            loadActions=loaded.actions,
        )
        _check_holds(target, loaded)
    except Exception as error:
        _undo_failed(repository, target, record, error, "restore", progress, ready_timeout)
    undo = f"undo with `moorage restore rollback {rid}`"
    if aside_ops is not None:
        undo += f"; `moorage restore discard {rid}` frees the space of the data set aside"
    record.step(RestorePhase.APPLIED, f"restored {backup_id}; {undo}")
    record.data["finishedAt"] = _iso(_now())
    repository.save_restore(record.data)
    repository.audit("restore-applied", restoreId=rid, backupId=backup_id, safetySnapshot=safety.backup_id)
    return record.data


def _aside_ops(target: Target, safety_copy: SafetyCopy) -> SetsAside | None:
    ops = target.engine.data_aside
    if safety_copy == SafetyCopy.SNAPSHOT:
        return None
    if ops is None and safety_copy == SafetyCopy.ASIDE:
        raise RestoreRefused(
            f"{target.spec.engine} cannot set its data aside for a restore: use the safety copy "
            "snapshot (the default for it)"
        )
    return ops


def _take_safety_copy(
    repository: Repository,
    target: Target,
    record: _Record,
    aside_ops: SetsAside | None,
    plan: RestorePlan,
    progress: Progress,
    ready_timeout: float,
) -> BackupManifest:
    rid = record.data["restoreId"]
    aside = None
    if aside_ops is not None:
        # Waits, as a count would, for a target that does not serve right now (a failover).
        aside = when_serving(
            target, lambda spec, conn: aside_ops.plan_aside(spec, conn, rid), progress, ready_timeout
        )
    # The whole target; or, setting aside, what a rename does not keep (roles), the data being
    # counted as each part is set aside (the restore's "overwrote").
    kept = create_backup(
        repository,
        target,
        kind="safety-snapshot",
        restore_id=rid,
        progress=progress,
        ready_timeout=ready_timeout,
        dump=None if aside_ops is None else aside_ops.dump_kept,
        inventory=None if aside_ops is None else {},
    )
    if aside_ops is None or aside is None:
        return kept
    # Recorded before anything moves: a restore killed while setting aside is put back by rollback.
    record.step(
        RestorePhase.SNAPSHOTTING,
        "setting the target's data aside",
        safetySnapshot=kept.backup_id,
        **{SET_ASIDE: _aside_wire(aside)},
    )
    aside = aside_ops.set_aside(target.spec, target.conn, aside, progress)
    record.data[SET_ASIDE] = _aside_wire(aside)
    record.data["overwrote"] = dict(aside.counts)
    repository.save_restore(record.data)
    return kept


def _aside_wire(aside: AsideCopy) -> dict[str, Any]:
    return {"state": aside.state, "counts": aside.counts}


def _aside_of(record: dict[str, Any]) -> AsideCopy:
    wire = record[SET_ASIDE]
    return AsideCopy(dict(wire.get("state", {})), dict(wire.get("counts", {})))


def _undo_failed(
    repository: Repository,
    target: Target,
    record: _Record,
    error: BaseException,
    what: str,
    progress: Progress,
    ready_timeout: float,
) -> NoReturn:
    """After a failure past the safety copy: go back to it by itself, and say where things are."""
    rid, backup_id = record.data["restoreId"], record.data["backupId"]
    cause = _describe(error)
    try:
        _undo(repository, target, record, progress, f"{what} failed ({cause}); rolling back", ready_timeout)
    except Exception as rollback_error:
        record.step(
            RestorePhase.FAILED,
            f"{what} failed ({cause}) and the automatic rollback failed too "
            f"({_describe(rollback_error)}); retry with `moorage restore rollback {rid}`",
        )
        repository.audit("restore-failed", restoreId=rid, backupId=backup_id, reason=record.data["message"])
        raise RestoreFailed(record.data["message"]) from error
    repository.audit("restore-rolled-back", restoreId=rid, backupId=backup_id, automatic=True, reason=cause)
    where = (
        "its data set aside was put back"
        if SET_ASIDE in record.data
        else f"the target was rolled back to its safety snapshot {record.data['safetySnapshot']}"
    )
    raise RestoreFailed(f"restore {rid} failed ({cause}); {where}") from error


def rollback_restore(
    repository: Repository,
    restore_id: str,
    target: Target,
    *,
    progress: Progress = no_progress,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Return the target to its state before ``restore_id`` (also after a killed restore): the
    data set aside put back, or the safety snapshot loaded."""
    data = repository.load_restore(restore_id)
    _check_target(data, target)
    snapshot_id = data.get("safetySnapshot")
    if not snapshot_id:
        raise RestoreRefused(
            f"restore {restore_id} stopped before its safety snapshot was complete ({data.get('phase')}): "
            "the target was never touched, there is nothing to roll back"
        )
    if SET_ASIDE in data and data.get("asideDiscarded"):
        raise RestoreRefused(
            f"the data restore {restore_id} set aside was discarded (`moorage restore discard`): "
            "there is nothing to roll back to; restore a backup instead"
        )
    if SET_ASIDE in data and data.get("rolledBack"):
        raise RestoreRefused(
            f"restore {restore_id} was rolled back already: the data it set aside is the target's data again"
        )
    snapshot = repository.find(snapshot_id)
    checked = repository.verify(
        snapshot, _bytes_progress(progress, "checking the safety snapshot", snapshot.size_bytes)
    )
    if not checked.ok:
        raise RestoreRefused(
            f"safety snapshot {snapshot_id} failed verification, the target was not touched: "
            + "; ".join(checked.problems)
        )
    record = _Record(repository, data)
    _undo(repository, target, record, progress, "rolling back on request", ready_timeout)
    repository.audit("restore-rolled-back", restoreId=restore_id, backupId=data["backupId"], automatic=False)
    return record.data


def discard_restore(
    repository: Repository, restore_id: str, target: Target, *, progress: Progress = no_progress
) -> dict[str, Any]:
    """Delete the data a restore set aside in the target, keeping the restored data for good (no
    rollback after this)."""
    data = repository.load_restore(restore_id)
    _check_target(data, target)
    refusal = discard_refusal(data)
    if refusal:
        raise RestoreRefused(refusal)
    ops = _aside_ops(target, SafetyCopy.ASIDE)
    assert ops is not None  # _aside_ops refuses an engine without one
    progress("deleting the data set aside", 0, 1)
    dropped = ops.drop_aside(target.spec, target.conn, _aside_of(data))
    record = _Record(repository, data)
    record.data["asideDiscarded"] = True
    record.step(
        RestorePhase.APPLIED,
        f"deleted the data set aside ({', '.join(dropped) or 'nothing was left'}); "
        "the restore can no longer be rolled back",
    )
    repository.audit("restore-discarded", restoreId=restore_id, backupId=data["backupId"], deleted=dropped)
    progress("deleted the data set aside", 1, 1)
    return record.data


def discard_refusal(data: dict[str, Any]) -> str | None:
    """Why the data a logical restore set aside cannot be discarded (None: it can)."""
    restore_id = data["restoreId"]
    if SET_ASIDE not in data:
        return (
            f"restore {restore_id} kept a safety snapshot in the repository (`moorage backup list "
            "--all`): nothing was set aside in the target to discard"
        )
    if data.get("asideDiscarded"):
        return f"the data restore {restore_id} set aside was discarded already"
    if data.get("rolledBack"):
        return (
            f"restore {restore_id} was rolled back: the data it set aside is in place again, "
            "nothing is left aside"
        )
    if data.get("phase") != RestorePhase.APPLIED:
        return (
            f"restore {restore_id} is {data.get('phase')}, not Applied: finish it with "
            f"`moorage restore rollback {restore_id}` first"
        )
    return None


def _check_target(data: dict[str, Any], target: Target) -> None:
    if (data["namespace"], data["target"]) != (target.namespace, target.name):
        raise RestoreRefused(
            f"restore {data['restoreId']} was into {data['namespace']}/{data['target']}, "
            f"not {target.namespace}/{target.name}"
        )


def _undo(
    repository: Repository,
    target: Target,
    record: _Record,
    progress: Progress,
    why: str,
    ready_timeout: float,
) -> None:
    snapshot = repository.find(record.data["safetySnapshot"])
    record.step(RestorePhase.ROLLING_BACK, why)
    # A restore that failed because the target stopped serving (a failover mid-load) rolls back
    # once it serves again, not into the same failure.
    serving_inventory(target, progress, ready_timeout)
    if SET_ASIDE in record.data:
        ops = _aside_ops(target, SafetyCopy.ASIDE)
        assert ops is not None
        aside = _aside_of(record.data)
        loaded = ops.put_back(target.spec, target.conn, aside, repository.source(snapshot), progress)
        # Without counts the restore stopped while setting aside: renamed back, nothing to compare.
        if aside.counts:
            _check_holds(target, loaded)
        done = "its data set aside is in place again"
    else:
        loaded = target.engine.data_load(target.spec, target.conn, repository.source(snapshot), progress)
        _check_holds(target, loaded)
        done = f"the target holds its safety snapshot {snapshot.backup_id} again"
    record.data["rolledBack"] = True
    record.data["finishedAt"] = _iso(_now())
    record.step(RestorePhase.ROLLED_BACK, done)


def _check_holds(target: Target, loaded: LoadReport) -> None:
    differences = loaded.problems(target.engine.data_inventory(target.spec, target.conn))
    if differences:
        raise BackupError(
            "verification failed, the target differs from what was loaded: " + "; ".join(differences)
        )


def restore_status(repository: Repository, restore_id: str) -> dict[str, Any]:
    return repository.load_restore(restore_id)


def list_restores(
    repository: Repository, namespace: str | None = None, target: str | None = None
) -> list[dict[str, Any]]:
    return [
        r
        for r in repository.list_restores()
        if (namespace is None or r.get("namespace") == namespace)
        and (target is None or r.get("target") == target)
    ]


# -- schedules ----------------------------------------------------------------------------------


@dataclass
class ScheduleOutcome:
    namespace: str
    name: str
    due: bool
    backup_id: str | None = None
    pruned: list[str] = field(default_factory=list)
    error: str | None = None
    next_run: str | None = None
    # With spec.backup.walArchiving: the physical base backup taken beside the logical one, and the
    # base backups (with the WAL only they needed) that retention deleted.
    base_backup_id: str | None = None
    pruned_base_backups: list[str] = field(default_factory=list)
    # With spec.backup.drillSchedule: the drill run when it was due (its record's id and verdict).
    drill_id: str | None = None
    drill_ok: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "due": self.due,
            "backupId": self.backup_id,
            "pruned": self.pruned,
            "baseBackupId": self.base_backup_id,
            "prunedBaseBackups": self.pruned_base_backups,
            "drillId": self.drill_id,
            "drillOk": self.drill_ok,
            "error": self.error,
            "nextRun": self.next_run,
        }


def is_due(schedule: str, last: datetime | None, now: datetime) -> tuple[bool, datetime]:
    """Whether a cron ``schedule`` fired since ``last`` (never backed up: due now), and when it
    fires next."""
    from croniter import croniter

    upcoming = croniter(schedule, now).get_next(datetime)
    if last is None:
        return True, upcoming
    fired = croniter(schedule, last).get_next(datetime)
    return fired <= now, upcoming


class Drills(Protocol):
    """Recovery drills of one runtime (``backups.pitr_drill``, which imports this module)."""

    def last_started(self, repository: Repository, namespace: str, name: str) -> datetime | None: ...

    def run(self, repository: Repository, namespace: str, name: str) -> dict[str, Any]: ...


def run_schedules(
    repositories: Callable[[str, str], Repository],
    targets: Targets,
    deployments: list[tuple[str, str]],
    *,
    drills: Drills | None = None,
    now: datetime | None = None,
    progress: Progress = no_progress,
) -> list[ScheduleOutcome]:
    """One pass of the backup schedules of ``deployments`` (``moorage backup schedule run``; the
    operator runs the same per Middleware from a timer). ``repositories(namespace, name)`` opens
    the repository a policy names; ``drills`` runs a recovery drill when a ``drillSchedule`` is due. A
    failure of one deployment does not stop the others; a failed drill is an error."""
    now = now or _now()
    outcomes = []
    for namespace, name in deployments:
        target = targets.get(namespace, name)
        policy = target.manifest.get("spec", {}).get("backup")
        if not policy or policy.get("suspend"):
            continue
        outcome = ScheduleOutcome(namespace, name, due=False)
        try:
            repository = repositories(namespace, policy["repository"]["name"])
            existing = repository.list_backups(namespace, name, kind="backup")
            last = existing[-1].started_at if existing else None
            due, upcoming = is_due(policy["schedule"], last, now)
            outcome.due, outcome.next_run = due, _iso(upcoming)
            if due:
                outcome.backup_id = create_backup(repository, target, progress=progress).backup_id
                pruned = prune_backups(
                    repository,
                    keep_last=policy.get("keepLast", 7),
                    keep_days=policy.get("keepDays"),
                    namespace=namespace,
                    name=name,
                    now=now,
                )
                outcome.pruned = [m.backup_id for m in pruned]
                if target.spec.wal_archiving:
                    archive = pitr.WalArchive(repository.config, namespace, name)
                    outcome.base_backup_id = _base_backup(repository, archive, target).backup_id
                    outcome.pruned_base_backups = pitr.prune_base_backups(
                        repository.store,
                        archive,
                        keep_last=policy.get("keepLast", 7),
                        keep_days=policy.get("keepDays"),
                    )
            if policy.get("drillSchedule") and drills is not None:
                last_drill = drills.last_started(repository, namespace, name)
                if is_due(policy["drillSchedule"], last_drill, now)[0]:
                    record = drills.run(repository, namespace, name)
                    outcome.drill_id, outcome.drill_ok = record["drillId"], bool(record["ok"])
                    if not record["ok"]:
                        outcome.error = f"drill {record['drillId']} failed: {record.get('reason', '')}"
        except MoorageError as error:
            outcome.error = str(error)
        outcomes.append(outcome)
    return outcomes


def _base_backup(repository: Repository, archive: pitr.WalArchive, target: Target) -> pitr.BaseBackup:
    """A physical base backup of the target's primary (barman reads its data directory: the primary
    runs on this machine, as on the local runtime)."""
    observation = target.engine.observe(target.spec, target.conn)
    primary = observation.endpoints.get("rw")
    if not primary or target.conn.password is None:
        raise MoorageError(
            f"{target.namespace}/{target.name} has no writable primary to take a base backup of"
        )
    host, port = primary.rsplit(":", 1)
    return pitr.take_base_backup(repository.store, archive, host, int(port), target.conn.password)


# -- helpers ------------------------------------------------------------------------------------


def _bytes_progress(progress: Progress, step: str, total: int) -> Callable[[int], None]:
    done = 0

    def on_bytes(count: int) -> None:
        nonlocal done
        done += count
        progress(step, done, total)

    return on_bytes


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iter_manifest_rows(manifests: list[BackupManifest]) -> Iterator[dict[str, Any]]:
    for m in manifests:
        yield {
            "backupId": m.backup_id,
            "kind": m.kind,
            "namespace": m.namespace,
            "middleware": m.middleware,
            "engine": m.engine,
            "topology": m.topology,
            "sizeBytes": m.size_bytes,
            "objects": len(m.objects),
            "startedAt": _iso(m.started_at),
            "durationSeconds": m.duration_seconds,
        }
