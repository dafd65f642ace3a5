"""``moorage backup ...`` and ``moorage restore ...``: the DBA runbook commands.

Thin: open the repository and the target, call ``backups.runbook``, print. Every command takes
``-o json``; long steps show progress bars on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backups import pitr, pitr_drill, pitr_restore, runbook
from backups.kubernetes import KubernetesDrills, KubernetesTargets
from backups.kubernetes import take_base_backup as kubernetes_base_backup
from backups.local import LocalDrills, LocalRecovery, LocalTargets
from backups.manifest import BackupManifest
from backups.pitr_kubernetes import KubernetesRecovery
from backups.repository import Repository
from backups.store import RepositoryConfig, S3Store
from middleware.engines.base import Progress as ProgressFn
from middleware.engines.base import no_progress
from middleware.errors import MoorageError, SpecError
from middleware.lifecycle import Lifecycle
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.runtime.local import STATE_DIR_ENV
from operators.cli.local import local_runtime

backup_app = typer.Typer(
    help="Take, list, verify and prune backups in an S3 repository.", no_args_is_help=True
)
schedule_app = typer.Typer(help="Backups on the schedules of Middleware.spec.backup.", no_args_is_help=True)
backup_app.add_typer(schedule_app, name="schedule")
restore_app = typer.Typer(
    help="Plan, apply and undo restores (every restore takes a safety snapshot first).", no_args_is_help=True
)

out = Console()
err = Console(stderr=True)

REPO_ENV = "MOORAGE_BACKUP_REPO"
RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo",
        envvar=REPO_ENV,
        help="s3://BUCKET\\[/PREFIX]\\[?endpoint=URL&region=R&sse=AES256]; keys from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY.",
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV, help="Local runtime state (default ./.moorage)."),
]
Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the Middleware.")]
Output = Annotated[str, typer.Option("--output", "-o", help="table or json.")]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="local: deployments of `moorage up`; kubernetes: Middleware objects in the cluster "
        "(in-cluster service account or $KUBECONFIG), as the operator's Jobs run it.",
    ),
]


def _json(output: str) -> bool:
    if output not in ("table", "json"):
        raise MoorageError(f"--output must be table or json, not {output!r}")
    return output == "json"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _repository(url: str | None) -> Repository:
    if not url:
        raise MoorageError(
            f"no backup repository: pass --repo s3://BUCKET/PREFIX?endpoint=URL or set {REPO_ENV}"
        )
    store = S3Store(RepositoryConfig.from_url(url))
    store.ensure_bucket()
    return Repository(store)


def _targets(
    state_dir: Path | None,
    runtime: str = "local",
    *,
    scratch_namespace: str | None = None,
    progress: ProgressFn = no_progress,
) -> LocalTargets | KubernetesTargets:
    if runtime == "kubernetes":
        domain = os.environ.get("MOORAGE_CLUSTER_DOMAIN", "cluster.local")
        return KubernetesTargets(
            KubernetesRuntime.from_environment(),
            cluster_domain=domain,
            scratch_namespace=scratch_namespace,
            progress=progress,
        )
    if runtime != "local":
        raise MoorageError(f"--runtime must be local or kubernetes, not {runtime!r}")
    return LocalTargets(Lifecycle(local_runtime(state_dir)))


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressFn]:
    # Bars only on a terminal: redirected, rich would still leave a blank line before an error.
    if not enabled or not err.is_terminal:
        yield no_progress
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def report(step: str, done: float, total: float) -> None:
        in_bytes = "bytes" in step or "check" in step
        shown = _human(done) if in_bytes else f"{done:,.0f}"
        if total:
            shown += " / " + (_human(total) if in_bytes else f"{total:,.0f}")
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total or None, amount=shown)
        bars.update(tasks[step], completed=done, total=total or None, amount=shown)

    with bars:
        yield report


def _backup_row(manifest: BackupManifest) -> dict[str, Any]:
    return next(runbook.iter_manifest_rows([manifest]))


def _show_manifest(manifest: BackupManifest) -> None:
    row = _backup_row(manifest)
    out.print(f"[bold]{row['backupId']}[/] ({row['kind']}) of {row['namespace']}/{row['middleware']}")
    out.print(f"  {manifest.engine} {manifest.version} {manifest.topology}, {manifest.shards} shard(s)")
    out.print(f"  location: {manifest.location}")
    size, count = _human(manifest.size_bytes), len(manifest.objects)
    out.print(f"  size: {size} in {count} object(s), sha256 {manifest.combined_sha256()}")
    out.print(f"  started {row['startedAt']}, took {manifest.duration_seconds:.1f}s")
    if manifest.inventory:
        out.print("  held: " + ", ".join(f"{k}={v}" for k, v in manifest.inventory.items()))
    table = Table("object", "size", "sha256", "meta", header_style="bold")
    for obj in manifest.objects:
        table.add_row(
            obj.name, _human(obj.size), obj.sha256[:16] + "…", json.dumps(obj.meta, default=str)[:60]
        )
    out.print(table)


ReadyTimeout = Annotated[
    float,
    typer.Option(
        "--ready-timeout",
        min=0,
        help="Seconds to wait for a target that does not serve right now (a failover in progress) "
        "before giving up; nothing is touched while waiting.",
    ),
]

# -- backup ---------------------------------------------------------------------------------------


@backup_app.command("create")
def backup_create(
    name: Annotated[str, typer.Argument(help="Middleware to back up.")],
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    backup_id: Annotated[
        str | None, typer.Option("--backup-id", help="Use this id (default: <name>-<time>-<random>).")
    ] = None,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    ready_timeout: ReadyTimeout = runbook.READY_TIMEOUT_SECONDS,
    output: Output = "table",
) -> None:
    """Back up a deployment: one streamed object per shard/database, manifest.json written last."""
    as_json = _json(output)
    repository = _repository(repo)
    target = _targets(state_dir, runtime).get(namespace, name)
    with _progress(not as_json) as progress:
        manifest = runbook.create_backup(
            repository, target, backup_id=backup_id, progress=progress, ready_timeout=ready_timeout
        )
    if as_json:
        _print_json(manifest.to_wire())
    else:
        _show_manifest(manifest)


@backup_app.command("base")
def backup_base(
    name: Annotated[str, typer.Argument(help="A PostgreSQL Middleware with spec.backup.walArchiving.")],
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    backup_name: Annotated[
        str | None, typer.Option("--name", help="A name for the backup, usable wherever its id is.")
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last", min=1, help="Then delete older base backups (and the WAL only they need)."
        ),
    ] = None,
    keep_days: Annotated[
        int | None, typer.Option("--keep-days", min=1, help="With --keep-last: also keep those this young.")
    ] = None,
    output: Output = "table",
) -> None:
    """A physical base backup with barman's cloud tools: point-in-time recovery starts from one and
    replays the archived WAL from there. It runs where the primary's data directory is: on this
    machine, or (--runtime kubernetes) in the primary's pod, over pods/exec. With --keep-last, the
    retention of the Middleware's base backups follows, as a scheduled backup applies it."""
    if keep_days is not None and keep_last is None:
        raise SpecError(
            "--keep-days", "needs --keep-last (the fewest base backups to keep whatever their age)"
        )
    repository = _repository(repo)
    archive = pitr.WalArchive(repository.config, namespace, name)
    keep = (keep_last, keep_days) if keep_last is not None else None
    with _progress(not _json(output)) as progress:
        progress("base backup (barman-cloud-backup)", 0, 1)
        if runtime == "kubernetes":
            taken, pruned = kubernetes_base_backup(
                KubernetesRuntime.from_environment(),
                repository,
                namespace,
                name,
                name_as=backup_name,
                keep=keep,
                cluster_domain=os.environ.get("MOORAGE_CLUSTER_DOMAIN", "cluster.local"),
            )
        else:
            taken = _local_base_backup(repository, archive, state_dir, repo, backup_name)
            pruned = (
                pitr.prune_base_backups(repository.store, archive, keep_last=keep[0], keep_days=keep[1])
                if keep
                else []
            )
        progress("base backup (barman-cloud-backup)", 1, 1)
    row = {
        "id": taken.backup_id,
        "timeline": taken.timeline,
        "beginWal": taken.begin_wal.name,
        "endWal": taken.end_wal.name,
        "endTime": taken.end_time.isoformat(),
        "systemId": taken.system_id,
        "location": f"{archive.destination}/{name}",
        "name": taken.name,
        "sizeBytes": taken.size_bytes,
        "prunedBaseBackups": pruned,
    }
    if _json(output):
        _print_json(row)
    else:
        out.print(
            f"base backup [bold]{taken.backup_id}[/] of {namespace}/{name}: timeline {taken.timeline}, "
            f"WAL {taken.begin_wal.name}..{taken.end_wal.name}, recoverable from {row['endTime']}"
        )
        if pruned:
            out.print(f"pruned base backups {', '.join(pruned)} with the WAL only they needed")


@backup_app.command("drill")
def backup_drill(
    name: Annotated[str, typer.Argument(help="A PostgreSQL Middleware with spec.backup.walArchiving.")],
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    output: Output = "table",
) -> None:
    """Prove the point-in-time recovery works: marker rows written, a random moment inside the
    window restored into a scratch deployment (Kubernetes: a scratch Middleware with spec.recovery),
    exactly the markers from before it found there; the outcome and the recovery time kept in the
    repository. Exit 1 when it failed."""
    repository = _repository(repo)
    with _progress(not _json(output)) as progress:
        drills: runbook.Drills
        if runtime == "kubernetes":
            targets = _targets(state_dir, runtime)
            assert isinstance(targets, KubernetesTargets)
            drills = KubernetesDrills(targets, progress)
        else:
            drills = LocalDrills(Lifecycle(local_runtime(state_dir, repo)), progress)
        record = drills.run(repository, namespace, name)
    if _json(output):
        _print_json(record)
    else:
        _print_drill(record)
    if not record["ok"]:
        raise typer.Exit(1)


@backup_app.command("drills")
def backup_drills(
    name: Annotated[str, typer.Argument(help="The Middleware drilled.")],
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    output: Output = "table",
) -> None:
    """A Middleware's drills, oldest first, and its latest verified recoverable moment."""
    records = pitr_drill.list_drills(_repository(repo), namespace, name)
    verified = pitr_drill.latest_verified(records)
    if _json(output):
        _print_json({"drills": records, "latestVerifiedPoint": verified["point"] if verified else None})
        return
    for record in records:
        _print_drill(record)
    out.print(
        f"latest verified recoverable point of {namespace}/{name}: "
        + (f"[bold]{verified['point']}[/] (drill {verified['drillId']})" if verified else "none yet")
    )


def _print_drill(record: dict[str, Any]) -> None:
    verdict = "[green]passed[/]" if record["ok"] else "[red]failed[/]"
    out.print(
        f"drill [bold]{record['drillId']}[/] of {record['namespace']}/{record['middleware']}: {verdict}"
    )
    if record.get("point"):
        out.print(
            f"  restored to {record['point']} from {record.get('baseBackup', '-')} in "
            f"{record.get('recoverySeconds', '-')} s; markers expected {record.get('expectedPresent')}, "
            f"absent {record.get('expectedAbsent')}"
        )
    if record.get("reason"):
        out.print(f"  {record['reason']}")


def _local_base_backup(
    repository: Repository,
    archive: pitr.WalArchive,
    state_dir: Path | None,
    repo: str,
    backup_name: str | None,
) -> pitr.BaseBackup:
    lifecycle = Lifecycle(local_runtime(state_dir, repo))
    namespace, name = archive.namespace, archive.name
    deployment = lifecycle.existing(namespace, name)
    if not deployment.spec.wal_archiving:
        raise SpecError(
            "spec.backup.walArchiving",
            f"is off for {namespace}/{name}: a base backup without archived WAL recovers to itself only "
            "(set it when creating the Middleware; `moorage backup create` takes a logical backup)",
        )
    primary = lifecycle.status(namespace, name).endpoints.get("rw")
    if not primary:
        raise MoorageError(f"{namespace}/{name} has no writable primary to back up")
    host, port = primary.rsplit(":", 1)
    return pitr.take_base_backup(
        repository.store,
        archive,
        host,
        int(port),
        lifecycle.runtime.password(deployment.spec),
        name=backup_name,
    )


@backup_app.command("list")
def backup_list(
    name: Annotated[str | None, typer.Argument(help="Only this Middleware's backups.")] = None,
    repo: RepoOpt = "",
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    all_kinds: Annotated[bool, typer.Option("--all", help="Include restores' safety snapshots.")] = False,
    output: Output = "table",
) -> None:
    """Backups in the repository (read from their manifests), oldest first."""
    as_json = _json(output)
    manifests = runbook.list_backups(_repository(repo), namespace, name, kind=None if all_kinds else "backup")
    rows = list(runbook.iter_manifest_rows(manifests))
    if as_json:
        _print_json(rows)
        return
    table = Table("backup", "kind", "middleware", "engine", "size", "started", "took", header_style="bold")
    for r in rows:
        table.add_row(
            r["backupId"],
            r["kind"],
            f"{r['namespace']}/{r['middleware']}",
            f"{r['engine']} {r['topology']}",
            _human(r["sizeBytes"]),
            r["startedAt"],
            f"{r['durationSeconds']:.1f}s",
        )
    out.print(table if rows else "no backups")


@backup_app.command("show")
def backup_show(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")], repo: RepoOpt = "", output: Output = "table"
) -> None:
    """A backup's manifest: objects, sizes, checksums, source spec."""
    manifest = _repository(repo).find(backup_id)
    if _json(output):
        _print_json(manifest.to_wire())
    else:
        _show_manifest(manifest)


@backup_app.command("verify")
def backup_verify(
    backup_id: Annotated[str, typer.Argument(help="Backup id.")],
    repo: RepoOpt = "",
    deep: Annotated[bool, typer.Option(help="Also restore into a scratch deployment and check it.")] = False,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    scratch_namespace: Annotated[
        str | None,
        typer.Option(
            help="--runtime kubernetes: the namespace of the scratch Middleware (default: the backup's).",
        ),
    ] = None,
    output: Output = "table",
) -> None:
    """Check every object's size and sha256; --deep also loads it into a scratch deployment
    (locally: processes; on Kubernetes: a Middleware the operator provisions, deleted with its
    PVCs afterwards). Exits 1 when the backup is not good."""
    as_json = _json(output)
    repository = _repository(repo)
    with _progress(not as_json) as progress:
        targets = (
            _targets(state_dir, runtime, scratch_namespace=scratch_namespace, progress=progress)
            if deep
            else None
        )
        report = runbook.verify_backup(repository, backup_id, deep=deep, targets=targets, progress=progress)
    if as_json:
        _print_json(report.to_wire())
    elif report.ok:
        what = "checksums and a scratch restore" if report.deep else "checksums"
        out.print(f"[green]ok[/]: {backup_id} ({what}; {_human(report.bytes_checked)} read)")
    else:
        for problem in report.problems:
            err.print(f"[red]problem[/]: {problem}")
    if not report.ok:
        raise typer.Exit(1)


@backup_app.command("prune")
def backup_prune(
    name: Annotated[str | None, typer.Argument(help="Only this Middleware's backups.")] = None,
    repo: RepoOpt = "",
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    keep_last: Annotated[int | None, typer.Option(min=1, help="Keep the N newest backups.")] = None,
    keep_days: Annotated[float | None, typer.Option(min=0, help="Keep backups younger than D days.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    output: Output = "table",
) -> None:
    """Delete backups outside the retention. Never the newest backup of a deployment, never a
    restore's safety snapshot."""
    if keep_last is None and keep_days is None:
        raise MoorageError("prune needs --keep-last and/or --keep-days")
    doomed = runbook.prune_backups(
        _repository(repo),
        keep_last=keep_last,
        keep_days=keep_days,
        namespace=namespace,
        name=name,
        dry_run=dry_run,
    )
    ids = [m.backup_id for m in doomed]
    if _json(output):
        _print_json({"dryRun": dry_run, "pruned": ids})
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {len(ids)} backup(s)" + (": " + ", ".join(ids) if ids else ""))


@backup_app.command("audit")
def backup_audit(
    repo: RepoOpt = "",
    limit: Annotated[int, typer.Option(min=1, help="Newest N events.")] = 50,
    output: Output = "table",
) -> None:
    """The repository's audit log: backups, restores, rollbacks, prunes."""
    events = _repository(repo).audit_log()[-limit:]
    if _json(output):
        _print_json(events)
        return
    for event in events:
        rest = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("at", "event"))
        out.print(f"{event.get('at')}  [bold]{event.get('event')}[/]  {rest}")


@schedule_app.command("run")
def schedule_run(
    repo: RepoOpt = "",
    state_dir: StateDir = None,
    output: Output = "table",
) -> None:
    """One pass over local deployments with spec.backup: back up those whose cron is due, then
    prune to their retention. Run it from cron/systemd timers; the operator does it by itself.
    Locally every policy's repository is the --repo given."""
    as_json = _json(output)
    repository = _repository(repo)
    lifecycle = Lifecycle(local_runtime(state_dir, repo))
    targets = LocalTargets(lifecycle)
    with _progress(not as_json) as progress:
        outcomes = runbook.run_schedules(
            lambda _ns, _name: repository,
            targets,
            targets.deployments(),
            drills=LocalDrills(lifecycle, progress),
            progress=progress,
        )
    if as_json:
        _print_json([o.to_wire() for o in outcomes])
    else:
        for o in outcomes:
            state = (
                f"error: {o.error}" if o.error else (f"backed up as {o.backup_id}" if o.due else "not due")
            )
            pruned = f", pruned {len(o.pruned)}" if o.pruned else ""
            if o.base_backup_id:
                pruned += f", base backup {o.base_backup_id}"
            if o.pruned_base_backups:
                pruned += (
                    f", pruned base backups {', '.join(o.pruned_base_backups)} with the WAL only they needed"
                )
            if o.drill_id:
                pruned += f", drill {o.drill_id} {'passed' if o.drill_ok else 'failed'}"
            out.print(f"{o.namespace}/{o.name}: {state}{pruned} (next {o.next_run})")
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


# -- restore --------------------------------------------------------------------------------------


def _confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise MoorageError(f"{what}: pass --yes to confirm (no terminal to ask on)")
    if not typer.confirm(f"{what}. Continue?", err=True):
        raise typer.Exit(1)


def _print_plan(plan: runbook.RestorePlan) -> None:
    wire = plan.to_wire()
    out.print(
        f"restore [bold]{wire['backupId']}[/] ({wire['engine']} {wire['backupVersion']} "
        f"{wire['backupTopology']}, {wire['backupShards']} shard(s), {_human(wire['sizeBytes'])}) "
        f"from {wire['source']} into [bold]{wire['target']}[/]"
    )
    if not plan.compatible:
        out.print(f"[red]refused[/]: {plan.reason}")
        return
    table = Table("", "target now (overwritten)", "in the backup", header_style="bold")
    for key in sorted(set(plan.overwrites) | set(plan.incoming)):
        table.add_row(key, str(plan.overwrites.get(key, 0)), str(plan.incoming.get(key, "-")))
    out.print(table)
    out.print("a safety snapshot of the target is taken first; `moorage restore rollback` undoes the restore")


def _print_record(record: dict[str, Any]) -> None:
    out.print(
        f"[bold]{record['restoreId']}[/]: {record['phase']} — {record.get('message', '')}\n"
        f"  backup {record['backupId']} into {record['namespace']}/{record['target']}, "
        f"safety snapshot {record.get('safetySnapshot') or record.get('safetyCopy') or '-'}, "
        f"rolled back: {'yes' if record.get('rolledBack') else 'no'}"
    )


ToTime = Annotated[
    str | None, typer.Option("--to-time", help="PostgreSQL: a moment with its zone, 2026-12-05T10:00:00Z.")
]
ToLsn = Annotated[str | None, typer.Option("--to-lsn", help="PostgreSQL: a WAL position, 0/3000090.")]
ToRestorePoint = Annotated[
    str | None, typer.Option("--to-restore-point", help="PostgreSQL: a named restore point.")
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="With a --to-* point: replay this Middleware's archive (same namespace) instead of the "
        "target's own, e.g. into a new deployment.",
    ),
]
ToLatest = Annotated[bool, typer.Option("--to-latest", help="PostgreSQL: the end of the archived WAL.")]


def _recovery_target(
    to_time: str | None, to_lsn: str | None, to_restore_point: str | None, to_latest: bool
) -> pitr.RecoveryTarget | None:
    """The point of a point-in-time restore, when any --to-* option was given."""
    if to_time is None and to_lsn is None and to_restore_point is None and not to_latest:
        return None
    when = None
    if to_time is not None:
        try:
            when = datetime.fromisoformat(to_time)
        except ValueError:
            example = "2026-12-05T10:00:00Z"
            raise SpecError("--to-time", f"{to_time!r} is not an ISO 8601 time like {example}") from None
    return pitr.RecoveryTarget(time=when, lsn=to_lsn, name=to_restore_point, latest=to_latest)


@restore_app.command("plan")
def restore_plan(
    to: Annotated[str, typer.Option("--to", help="Target Middleware.")],
    backup_id: Annotated[
        str | None,
        typer.Argument(help="Backup id; with a --to-* point, a base backup id or 'latest' (the default)."),
    ] = None,
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    restore_id: Annotated[
        str | None,
        typer.Option("--restore-id", help="Also save the plan as this restore's record (phase Planned)."),
    ] = None,
    to_time: ToTime = None,
    to_lsn: ToLsn = None,
    to_restore_point: ToRestorePoint = None,
    to_latest: ToLatest = False,
    source: FromOpt = None,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    ready_timeout: ReadyTimeout = runbook.READY_TIMEOUT_SECONDS,
    output: Output = "table",
) -> None:
    """What a restore would overwrite and whether the target can take it; with a --to-* point, the
    recoverable window of the target's WAL archive (or --from's) and whether that point is inside
    it (a missing segment named). Changes nothing; exits 1 when refused."""
    point = _recovery_target(to_time, to_lsn, to_restore_point, to_latest)
    if point is not None:
        _point_in_time_plan(repo, namespace, source or to, backup_id or "latest", point, output)
        return
    if backup_id is None:
        raise SpecError("BACKUP_ID", "give the backup to restore (`moorage backup list`), or a --to-* point")
    repository = _repository(repo)
    target = _targets(state_dir, runtime).get(namespace, to)
    plan = runbook.plan_restore(repository, backup_id, target, ready_timeout=ready_timeout)
    if restore_id:
        runbook.record_plan(repository, plan, restore_id)
    if _json(output):
        _print_json(plan.to_wire())
    else:
        _print_plan(plan)
    if not plan.compatible:
        raise typer.Exit(1)


def _point_in_time_plan(
    repo: str, namespace: str, name: str, base: str, target: pitr.RecoveryTarget, output: str
) -> None:
    repository = _repository(repo)
    report = pitr.inspect(repository.store, pitr.WalArchive(repository.config, namespace, name))
    plan: dict[str, Any] = {"target": f"{namespace}/{name}", "recoveryTarget": target.settings()}
    plan["window"] = report.window()
    try:
        chosen = pitr.choose_base_backup(report, target, base)
    except MoorageError as exc:
        plan.update(compatible=False, reason=str(exc))
    else:
        plan.update(compatible=True, baseBackup=chosen.backup_id, reason="")
    if _json(output):
        _print_json(plan)
    else:
        window = plan["window"]
        out.print(
            f"recoverable window of {namespace}/{name}: "
            f"{window['earliest'] or '-'} .. {window['latest'] or '-'}"
        )
        for line in window["timelines"]:
            out.print(
                f"  timeline {line['timeline']}: {line['firstSegment']} .. {line['lastSegment']} "
                f"(last archived {line['lastArchivedAt']})"
            )
        for point in window["restorePoints"]:
            out.print(f"  restore point {point['name']!r}: LSN {point['lsn']}, timeline {point['timeline']}")
        if window["segmentsNotSearchedForRestorePoints"]:
            out.print(
                f"  {window['segmentsNotSearchedForRestorePoints']} segment(s) of the window were archived "
                "without a search for restore points: a name not listed may still be there"
            )
        if plan["compatible"]:
            settings = ", ".join(f"{k}={v}" for k, v in plan["recoveryTarget"].items())
            out.print(f"[green]recoverable[/] from base backup {plan['baseBackup']} ({settings})")
        else:
            out.print(f"[red]refused[/]: {plan['reason']}")
    if not plan["compatible"]:
        raise typer.Exit(1)


@restore_app.command("apply")
def restore_apply(
    to: Annotated[str, typer.Option("--to", help="Target Middleware.")],
    backup_id: Annotated[
        str | None,
        typer.Argument(help="Backup id; with a --to-* point, a base backup id or 'latest' (the default)."),
    ] = None,
    repo: RepoOpt = "",
    namespace: Namespace = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    restore_id: Annotated[
        str | None,
        typer.Option("--restore-id", help="Use this id (default: restore-<target>-<time>-<random>)."),
    ] = None,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    ready_timeout: ReadyTimeout = runbook.READY_TIMEOUT_SECONDS,
    to_time: ToTime = None,
    to_lsn: ToLsn = None,
    to_restore_point: ToRestorePoint = None,
    to_latest: ToLatest = False,
    source: FromOpt = None,
    safety_copy: Annotated[
        runbook.SafetyCopy,
        typer.Option(
            "--safety-copy",
            help="How the data overwritten is kept to undo the restore: aside (renamed inside the "
            "target: no time, its space until `restore discard`; PostgreSQL), snapshot (a full dump "
            "to the repository first), auto (aside where the engine can).",
        ),
    ] = runbook.SafetyCopy.AUTO,
    output: Output = "table",
) -> None:
    """Safety copy of the target, restore, verify; rolls back by itself if a step fails. With a
    --to-* point (PostgreSQL with walArchiving): every member's data set aside, the base backup
    restored and the archived WAL replayed to that point (locally also from --from's archive: into
    another deployment, which takes its own credentials), the others re-seeded. With --runtime
    kubernetes the Middleware is held and its StatefulSet scaled to 0 meanwhile."""
    as_json = _json(output)
    repository = _repository(repo)
    point = _recovery_target(to_time, to_lsn, to_restore_point, to_latest)
    if point is not None:
        rid = restore_id or Repository.new_id(f"pitr-{to}")
        origin: pitr_restore.Source | None = None
        recovery: pitr_restore.RecoveryPort
        if runtime == "kubernetes":
            if source is not None and source != to:
                raise SpecError(
                    "--from",
                    "in a cluster a Middleware is restored in place from its own archive only: create a "
                    "new Middleware with spec.recovery to recover from another one's (docs/backups.md)",
                )
            recovery = KubernetesRecovery(
                KubernetesRuntime.from_environment(),
                namespace,
                to,
                rid,
                ready_timeout=max(ready_timeout, 900.0),
            )
        elif runtime != "local":
            raise MoorageError(f"--runtime must be local or kubernetes, not {runtime!r}")
        elif source is not None and source != to:
            lifecycle = Lifecycle(local_runtime(state_dir, repo))
            if lifecycle.runtime.applied_manifest(namespace, source) is None:
                # Gone (or stopped): its archive is all there is. The restored member replays on a
                # private socket and takes the target's passwords there; the archive's latest timeline.
                origin = pitr_restore.Source(namespace, source, None)
                recovery = LocalRecovery(lifecycle, namespace, to, from_other_archive=True)
            else:
                # The source's password is what the restored data has until it is made the target's.
                other = LocalRecovery(lifecycle, namespace, source)
                origin = pitr_restore.Source(namespace, source, other.timeline())
                recovery = LocalRecovery(
                    lifecycle, namespace, to, from_other_archive=True, other_password=other.password
                )
        else:
            recovery = LocalRecovery(Lifecycle(local_runtime(state_dir, repo)), namespace, to)
        where = f" of {namespace}/{source}" if origin else ""
        _confirm(
            yes, f"this replaces the data of {namespace}/{to} with the state{where} at {point.settings()}"
        )
        with _progress(not as_json) as progress:
            record = pitr_restore.apply_point_in_time(
                repository, recovery, namespace, to, point, base=backup_id or "latest",
                restore_id=rid, progress=progress, source=origin,
            )  # fmt: skip
        if as_json:
            _print_json(record)
        else:
            _print_record(record)
        return
    if backup_id is None:
        raise SpecError("BACKUP_ID", "give the backup to restore (`moorage backup list`), or a --to-* point")
    target = _targets(state_dir, runtime).get(namespace, to)
    _confirm(yes, f"this replaces the data of {namespace}/{to} with backup {backup_id}")
    with _progress(not as_json) as progress:
        record = runbook.apply_restore(
            repository,
            backup_id,
            target,
            progress=progress,
            restore_id=restore_id,
            ready_timeout=ready_timeout,
            safety_copy=safety_copy,
        )
    if as_json:
        _print_json(record)
    else:
        _print_record(record)


@restore_app.command("rollback")
def restore_rollback(
    restore_id: Annotated[str, typer.Argument(help="Restore id (from `restore apply` or `restore list`).")],
    repo: RepoOpt = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    ready_timeout: ReadyTimeout = runbook.READY_TIMEOUT_SECONDS,
    output: Output = "table",
) -> None:
    """Return the target of a restore to its state before it: the data set aside put back, or the
    safety snapshot loaded (also after a restore that was killed half-way)."""
    as_json = _json(output)
    repository = _repository(repo)
    record = repository.load_restore(restore_id)
    _confirm(yes, f"this returns {record['namespace']}/{record['target']} to its state before {restore_id}")
    if record.get("kind") == pitr_restore.KIND:
        recovery = _recovery_port(record, runtime, state_dir, repo, ready_timeout)
        with _progress(not as_json) as progress:
            record = pitr_restore.rollback_point_in_time(repository, recovery, record, progress=progress)
        if as_json:
            _print_json(record)
        else:
            _print_record(record)
        return
    target = _targets(state_dir, runtime).get(record["namespace"], record["target"])
    with _progress(not as_json) as progress:
        record = runbook.rollback_restore(
            repository, restore_id, target, progress=progress, ready_timeout=ready_timeout
        )
    if as_json:
        _print_json(record)
    else:
        _print_record(record)


def _recovery_port(
    record: dict[str, Any], runtime: str, state_dir: Path | None, repo: str, ready_timeout: float
) -> pitr_restore.RecoveryPort:
    """The runtime side of a point-in-time restore's record."""
    if runtime == "kubernetes":
        return KubernetesRecovery(
            KubernetesRuntime.from_environment(),
            record["namespace"],
            record["target"],
            record["restoreId"],
            ready_timeout=max(ready_timeout, 900.0),
        )
    return LocalRecovery(
        Lifecycle(local_runtime(state_dir, repo)),
        record["namespace"],
        record["target"],
        from_other_archive="source" in record,
    )


@restore_app.command("discard")
def restore_discard(
    restore_id: Annotated[str, typer.Argument(help="Restore id (from `restore apply` or `restore list`).")],
    repo: RepoOpt = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = "local",
    output: Output = "table",
) -> None:
    """Delete the data a restore set aside, keeping its outcome for good: a point-in-time restore's
    on the members' volumes (the data from before it, or after a rollback the restored data), a
    logical restore's databases renamed aside in the target (`--safety-copy aside`)."""
    as_json = _json(output)
    repository = _repository(repo)
    record = repository.load_restore(restore_id)
    if record.get("kind") != pitr_restore.KIND:
        refusal = runbook.discard_refusal(record)
        if refusal:
            raise MoorageError(refusal)
        target = _targets(state_dir, runtime).get(record["namespace"], record["target"])
        _confirm(
            yes,
            f"this deletes the data {restore_id} set aside in {record['namespace']}/{record['target']} "
            "(no rollback after this)",
        )
        with _progress(not as_json) as progress:
            record = runbook.discard_restore(repository, restore_id, target, progress=progress)
        if as_json:
            _print_json(record)
        else:
            _print_record(record)
        return
    what = (
        "the restored data"
        if record.get("rolledBack")
        else "the data from before it (no rollback after this)"
    )
    _confirm(yes, f"this deletes {what} from {record['namespace']}/{record['target']}'s volumes")
    recovery = _recovery_port(record, runtime, state_dir, repo, runbook.READY_TIMEOUT_SECONDS)
    with _progress(not as_json) as progress:
        record = pitr_restore.discard_point_in_time(repository, recovery, record, progress=progress)
    if as_json:
        _print_json(record)
    else:
        _print_record(record)


@restore_app.command("status")
def restore_status(
    restore_id: Annotated[str, typer.Argument(help="Restore id.")],
    repo: RepoOpt = "",
    output: Output = "table",
) -> None:
    """A restore's phase, safety snapshot and history."""
    record = runbook.restore_status(_repository(repo), restore_id)
    if _json(output):
        _print_json(record)
        return
    _print_record(record)
    for step in record.get("history", []):
        out.print(f"  {step['at']}  {step['phase']}: {step['message']}")


@restore_app.command("list")
def restore_list(
    to: Annotated[str | None, typer.Option("--to", help="Only restores into this Middleware.")] = None,
    repo: RepoOpt = "",
    namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    output: Output = "table",
) -> None:
    """Restores recorded in the repository."""
    records = runbook.list_restores(_repository(repo), namespace, to)
    if _json(output):
        _print_json(records)
        return
    table = Table("restore", "backup", "target", "phase", "safety snapshot", "started", header_style="bold")
    for r in records:
        table.add_row(
            r["restoreId"],
            r["backupId"],
            f"{r['namespace']}/{r['target']}",
            r["phase"],
            r.get("safetySnapshot") or "-",
            r.get("startedAt", ""),
        )
    out.print(table if records else "no restores")
