"""``moorage sync ...``: cross-cluster Redis sync commands for SREs.

``verify`` exits like ``diff``: 0 when source and target are equal, 1 when differences were found,
2 when the comparison could not be made (bad URL or option, a side unreachable or refusing auth).

``start`` / ``stop`` / ``reverse`` set a RedisSync's ``spec.direction`` and wait for the operator;
``status`` shows what it reports; ``cutover`` pauses the source, waits for lag 0, verifies and stops
(sync/cutover.py). Exit 0 done, 1 cutover failed (nothing lost, the sync keeps running), 2 error.
"""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from middleware.endpoints import Endpoint
from middleware.errors import MoorageError, SpecError
from middleware.models.sync import SyncDirection
from middleware.runtime.kubernetes import KubernetesRuntime
from operators.cli import sync_ops
from sync import manual
from sync.cutover import CutoverReport, Step, cutover
from sync.cutover import Progress as CutoverProgress
from sync.local_runner import LocalSyncs, SyncStatus
from sync.manual import DEFAULT_STATUS_PORT_BASE
from sync.share import clear_from_document
from sync.verify import DEFAULT_MAX_DIFFS, VerifyReport, parse_url, verify

sync_app = typer.Typer(
    help="Cross-cluster Redis sync: verify two Redis; start, stop, reverse, cut over, watch a RedisSync.",
    no_args_is_help=True,
)

out = Console()
err = Console(stderr=True)

SOURCE_PASSWORD_ENV = "MOORAGE_SOURCE_PASSWORD"
TARGET_PASSWORD_ENV = "MOORAGE_TARGET_PASSWORD"


class VerifyOutput(StrEnum):
    TABLE = "table"
    JSON = "json"


def _fail(message: str) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(2)


def _print_table(report: VerifyReport) -> None:
    verdict = "[green]equal[/]" if report.equal else f"[red]{report.total_differences} differences[/]"
    sample = "" if report.sample_ratio >= 1.0 else f" (sample {report.sample_ratio:g}, seed {report.seed})"
    out.print(f"{report.source} -> {report.target}: {verdict}{sample}", highlight=False)
    counts = Table(show_header=False, box=None)
    for label, value in (
        ("source keys scanned", report.scanned_source),
        ("checked", report.checked),
        ("missing on target", report.missing),
        ("type mismatches", report.type_mismatch),
        ("ttl mismatches", report.ttl_mismatch),
        ("value mismatches", report.value_mismatch),
        ("target keys scanned", report.scanned_target),
        ("extra on target", report.extra),
        ("vanished during check", report.vanished),
    ):
        counts.add_row(label, str(value))
    counts.add_row("time", f"{report.seconds:.2f}s ({report.keys_per_second:,.0f} keys/s)")
    out.print(counts)
    if report.differences:
        table = Table(
            show_header=True, header_style="bold", title=f"first {len(report.differences)} differences"
        )
        for column in ("key", "kind", "detail"):
            table.add_column(column)
        for diff in report.differences:
            table.add_row(diff.key, diff.kind, diff.detail)
        out.print(table)


@sync_app.command("verify")
def verify_command(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help=f"redis://:PASSWORD@HOST:PORT/DB; password and db optional (or ${SOURCE_PASSWORD_ENV}).",
        ),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help=f"redis://:PASSWORD@HOST:PORT/DB; password and db optional (or ${TARGET_PASSWORD_ENV}).",
        ),
    ],
    sample: Annotated[float, typer.Option("--sample", help="Ratio of keys to check, (0, 1].")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample; same seed, same keys.")] = 0,
    ttl_tolerance: Annotated[
        float, typer.Option("--ttl-tolerance", help="Seconds two TTLs may differ by.")
    ] = 2.0,
    max_diffs: Annotated[
        int, typer.Option("--max-diffs", help="Differing keys to list.")
    ] = DEFAULT_MAX_DIFFS,
    output: Annotated[
        VerifyOutput, typer.Option("--output", "-o", help="table or json.")
    ] = VerifyOutput.TABLE,
) -> None:
    """Compare source and target: key sets, types, TTLs and values. Exit 0 equal, 1 different, 2 error."""
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        label = f"scan {phase}"
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=total)
        # DBSIZE was read before the scan; writes meanwhile can push the count past it.
        bars.update(tasks[label], completed=done, total=max(done, total or 0) or None)

    try:
        source_url = parse_url(source, password_env=SOURCE_PASSWORD_ENV)
        target_url = parse_url(target, password_env=TARGET_PASSWORD_ENV)
        with bars:
            report = verify(
                source_url,
                target_url,
                sample_ratio=sample,
                seed=seed,
                ttl_tolerance=ttl_tolerance,
                max_diffs=max_diffs,
                progress=progress,
            )
    except MoorageError as error:
        raise _fail(str(error)) from None
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        _print_table(report)
    raise typer.Exit(0 if report.equal else 1)


# -- RedisSync in Kubernetes ----------------------------------------------------------------------

NAMESPACE_OPTION = typer.Option("--namespace", "-n", help="Namespace of the RedisSync.")


def _runtime() -> KubernetesRuntime:
    try:
        return sync_ops.runtime()
    except Exception as exc:  # no kubeconfig, unreadable file: the kubernetes client's own error
        raise _fail(f"cannot reach Kubernetes: {exc}") from None


def _status_document(body: dict[str, Any], deployments: dict[str, str]) -> dict[str, Any]:
    status = body.get("status") or {}
    return {
        "name": body["metadata"]["name"],
        "namespace": body["metadata"]["namespace"],
        "direction": (body.get("spec") or {}).get("direction") or "Forward",
        "phase": status.get("phase"),
        "phaseReason": status.get("phaseReason"),
        "observedGeneration": status.get("observedGeneration"),
        "generation": body["metadata"].get("generation"),
        "consistent": status.get("consistent"),
        "conditions": status.get("conditions") or [],
        "workloads": status.get("workloads") or [],
        "deployments": deployments,
    }


def _print_status(doc: dict[str, Any]) -> None:
    out.print(
        f"RedisSync {doc['namespace']}/{doc['name']}: direction {doc['direction']}, "
        f"phase {doc['phase'] or 'new'}" + (f" ({doc['phaseReason']})" if doc.get("phaseReason") else ""),
        highlight=False,
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("workload", "reads", "state", "lag bytes", "lag s", "restarts", "last restart"):
        table.add_column(column)
    for w in doc["workloads"]:
        seconds = w.get("lagSeconds")
        table.add_row(
            w.get("name", ""),
            w.get("source", ""),
            w.get("state", ""),
            "" if w.get("lagBytes") is None else f"{w['lagBytes']:,}",
            "" if seconds is None else f"{seconds:.1f}",
            str(w.get("restarts", 0)),
            w.get("lastRestartReason") or "",
        )
    out.print(table)
    for condition in doc["conditions"]:
        out.print(
            f"  {condition.get('type')}={condition.get('status')} {condition.get('reason', '')}: "
            f"{condition.get('message', '')}",
            markup=False,
            highlight=False,
        )


@sync_app.command("status")
def status_command(
    name: Annotated[str, typer.Argument(help="RedisSync name (with --local: the local sync's name).")],
    namespace: Annotated[str, NAMESPACE_OPTION] = "default",
    local: Annotated[
        bool, typer.Option("--local", help="A sync started by `sync start --source --target` on this host.")
    ] = False,
    supervise: Annotated[
        bool,
        typer.Option("--supervise", help="With --local: one supervision pass first (restart, re-plan)."),
    ] = False,
    watch: Annotated[
        float,
        typer.Option(
            "--watch",
            help="With --local --supervise: keep supervising every SECONDS (stalls need several samples); "
            "Ctrl-C ends it. JSON output: one document per line per pass.",
        ),
    ] = 0.0,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after N passes (0: never).")] = 0,
    output: Annotated[
        VerifyOutput, typer.Option("--output", "-o", help="table or json.")
    ] = VerifyOutput.TABLE,
) -> None:
    """A RedisSync's direction, phase, conditions and per-workload state and lag."""
    if local or supervise or watch:
        if not local or (watch and not supervise):
            raise _fail("--supervise and --watch act on a local sync: add --local (and --supervise to watch)")
        syncs = LocalSyncs()
        passes = 0
        try:
            while True:
                report = syncs.supervise_once(name) if supervise else syncs.status(name)
                passes += 1
                if watch and output is VerifyOutput.JSON:
                    sys.stdout.write(json.dumps(report.as_dict()) + "\n")
                    sys.stdout.flush()
                else:
                    _print_local(report, output)
                if not watch or (count and passes >= count) or report.stopped:
                    return
                time.sleep(watch)
        except MoorageError as error:
            raise _fail(str(error)) from None
        except KeyboardInterrupt:
            return
    rt = _runtime()
    try:
        doc = _status_document(sync_ops.read(rt, namespace, name), sync_ops.deployments(rt, namespace, name))
    except MoorageError as error:
        raise _fail(str(error)) from None
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print_status(doc)


def _print_local(report: SyncStatus, output: VerifyOutput) -> None:
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        return
    state = "stopped" if report.stopped else "running"
    out.print(
        f"local sync {report.name}: {report.source} -> {report.target}, {state} ({report.directory})",
        markup=False,
        highlight=False,
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("workload", "pid", "reads", "status port", "state", "lag bytes", "restarts", "reason"):
        table.add_column(column)
    for w in report.workloads:
        table.add_row(
            w.name,
            f"{w.pid}" + ("" if w.alive else " (exited)") if w.pid else "-",
            w.reader,
            str(w.status_port),
            str(w.decision.state),
            "" if w.decision.lag_bytes is None else f"{w.decision.lag_bytes:,}",
            str(w.restarts),
            w.decision.reason,
        )
    out.print(table)
    for line in report.acted:
        out.print(f"  {line}", markup=False, highlight=False)


def _direction_command(
    name: str, namespace: str, direction: SyncDirection, wait: bool, timeout: float, output: VerifyOutput
) -> None:
    rt = _runtime()
    try:
        body = sync_ops.set_direction(rt, namespace, name, direction)
        err.print(f"RedisSync {namespace}/{name}: direction {direction}", highlight=False)
        if wait:
            with err.status("waiting for the operator", spinner="dots") as spinner:
                body = sync_ops.wait_settled(
                    rt, namespace, name, timeout, lambda line: spinner.update(f"waiting: {line}")
                )
        doc = _status_document(body, sync_ops.deployments(rt, namespace, name))
    except MoorageError as error:
        raise _fail(str(error)) from None
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif wait:
        running = ", ".join(doc["deployments"]) or "no workloads"
        out.print(f"settled: phase {doc['phase'] or 'new'}; {running}", highlight=False)


WAIT_OPTION = typer.Option("--wait/--no-wait", help="Wait until the operator has applied it.")
TIMEOUT_OPTION = typer.Option("--timeout", help="Seconds to wait.")
OUTPUT_OPTION = typer.Option("--output", "-o", help="table or json (the status once settled).")


SOURCE_OPTION_HELP = "Local: source URL as for `sync plan`; runs redis-shake on this host (no RedisSync)."


@sync_app.command("start")
def start_command(
    name: Annotated[
        str | None, typer.Argument(help="RedisSync name; omit with --source/--target (local sync).")
    ] = None,
    namespace: Annotated[str, NAMESPACE_OPTION] = "default",
    wait: Annotated[bool, WAIT_OPTION] = True,
    timeout: Annotated[float, TIMEOUT_OPTION] = 300.0,
    output: Annotated[VerifyOutput, OUTPUT_OPTION] = VerifyOutput.TABLE,
    source: Annotated[str | None, typer.Option("--source", help=SOURCE_OPTION_HELP)] = None,
    target: Annotated[str | None, typer.Option("--target", help="Local: target URL.")] = None,
    local_name: Annotated[
        str, typer.Option("--name", help="Local: the sync's name (workloads NAME or NAME-shard-I).")
    ] = "local",
    status_port_base: Annotated[
        int, typer.Option("--status-port-base", help="Local: status port of workload 0; workload i gets +i.")
    ] = DEFAULT_STATUS_PORT_BASE,
    target_sentinels: Annotated[
        str | None,
        typer.Option(
            "--target-sentinel",
            help="Local: the target is a sentinel group; its sentinels, HOST:PORT[,HOST:PORT...] "
            "(with --target-master-name; --target is one of its data nodes).",
        ),
    ] = None,
    target_master_name: Annotated[
        str | None, typer.Option("--target-master-name", help="Local: the sentinel target's master name.")
    ] = None,
) -> None:
    """Run the forward workloads (source into target): direction Forward. With --source/--target:
    one redis-shake process per workload on this host ($MOORAGE_REDIS_SHAKE or redis-shake on PATH)."""
    if source is None and target is None:
        if name is None:
            raise _fail("give a RedisSync NAME, or both --source and --target (local sync)")
        _direction_command(name, namespace, SyncDirection.FORWARD, wait, timeout, output)
        return
    if name is not None or source is None or target is None:
        raise _fail("give either a RedisSync NAME, or both --source and --target (local sync)")
    if bool(target_sentinels) != bool(target_master_name):
        raise _fail("a sentinel target needs both --target-sentinel and --target-master-name")
    try:
        sentinels = [Endpoint.parse(a.strip()) for a in (target_sentinels or "").split(",") if a.strip()]
    except ValueError as error:
        raise _fail(f"--target-sentinel: {error}") from None
    try:
        report = LocalSyncs().start(
            local_name,
            parse_url(source, password_env=SOURCE_PASSWORD_ENV),
            parse_url(target, password_env=TARGET_PASSWORD_ENV),
            status_port_base=status_port_base,
            target_sentinels=sentinels,
            target_master_name=target_master_name,
        )
    except MoorageError as error:
        raise _fail(str(error)) from None
    _print_local(report, output)
    if output is VerifyOutput.TABLE:
        out.print(
            f"supervise with: moorage sync status {local_name} --local --supervise --watch 10; "
            f"stop with: moorage sync stop {local_name} --local",
            markup=False,
            highlight=False,
        )


@sync_app.command("stop")
def stop_command(
    name: Annotated[str, typer.Argument(help="RedisSync name (with --local: the local sync's name).")],
    namespace: Annotated[str, NAMESPACE_OPTION] = "default",
    wait: Annotated[bool, WAIT_OPTION] = True,
    timeout: Annotated[float, TIMEOUT_OPTION] = 300.0,
    output: Annotated[VerifyOutput, OUTPUT_OPTION] = VerifyOutput.TABLE,
    local: Annotated[
        bool, typer.Option("--local", help="Stop a local sync's redis-shake processes (configs are kept).")
    ] = False,
) -> None:
    """Stop every workload of the sync (direction Stopped). Data on both sides is left as it is."""
    if not local:
        _direction_command(name, namespace, SyncDirection.STOPPED, wait, timeout, output)
        return
    syncs = LocalSyncs()
    try:
        stopped = syncs.stop(name)
        report = syncs.status(name)
    except MoorageError as error:
        raise _fail(str(error)) from None
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(report.as_dict() | {"wasRunning": stopped}, indent=2) + "\n")
    else:
        what = "stopped" if stopped else "was already stopped"
        out.print(f"local sync {name}: {what} (configs kept in {report.directory})", highlight=False)


@sync_app.command("reverse")
def reverse_command(
    name: Annotated[str, typer.Argument(help="RedisSync name.")],
    namespace: Annotated[str, NAMESPACE_OPTION] = "default",
    wait: Annotated[bool, WAIT_OPTION] = True,
    timeout: Annotated[float, TIMEOUT_OPTION] = 300.0,
    output: Annotated[VerifyOutput, OUTPUT_OPTION] = VerifyOutput.TABLE,
) -> None:
    """Recovery: stop the forward workloads, then replicate the target back into the source."""
    _direction_command(name, namespace, SyncDirection.REVERSE, wait, timeout, output)


@sync_app.command("cutover")
def cutover_command(
    name: Annotated[
        str | None, typer.Argument(help="RedisSync name (direction Forward); omit with --source/--target.")
    ] = None,
    namespace: Annotated[str, NAMESPACE_OPTION] = "default",
    source: Annotated[
        str | None,
        typer.Option("--source", help="Hand-run redis-shake: source URL as for `sync plan` (no RedisSync)."),
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Hand-run redis-shake: target URL.")] = None,
    plan_name: Annotated[
        str, typer.Option("--name", help="Hand-run: the plan's name (`sync plan --name`).")
    ] = ("local"),
    status_port_base: Annotated[
        int | None,
        typer.Option(
            "--status-port-base",
            help="Hand-run: the status port of workload 0 (default: the local sync's, else 18080).",
        ),
    ] = None,
    pause: Annotated[
        float,
        typer.Option("--pause", help="Seconds source writes are paused (CLIENT PAUSE WRITE); 0: no pause."),
    ] = 60.0,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds to wait for lag 0 (less than --pause).")
    ] = 30.0,
    verify_sample: Annotated[
        float, typer.Option("--verify-sample", help="Ratio of keys verify checks, (0, 1].")
    ] = 1.0,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the comparison (not advised).")
    ] = False,
    unpause: Annotated[
        bool, typer.Option("--unpause", help="Lift the pause right after a successful cutover.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    output: Annotated[
        VerifyOutput, typer.Option("--output", "-o", help="table or json.")
    ] = VerifyOutput.TABLE,
) -> None:
    """Pause source writes, wait for lag 0, verify, then stop the forward workloads.

    Exit 0 when cut over, 1 when a step failed (the sync keeps running, the pause is lifted), 2 when
    it could not start. Run it where the Redis pods are reachable. With --source/--target instead of
    a RedisSync name, it checks the redis-shake processes of `sync start --source --target` (and stops
    them) or processes run by hand from `sync plan` configs (stopping those is left to you)."""
    manual = source is not None or target is not None
    if manual == (name is not None) or (manual and (source is None or target is None)):
        raise _fail("give either a RedisSync NAME, or both --source and --target (hand-run redis-shake)")
    what = f"{namespace}/{name}" if name else "the source"
    if pause and not yes:
        if not sys.stdin.isatty():
            raise _fail("cutover pauses writes on the source: confirm with --yes when not on a terminal")
        typer.confirm(f"Pause writes on {what} for up to {pause:g}s and cut over?", abort=True)
    options = sync_ops.CutoverOptions(
        pause_seconds=pause or None,
        drain_timeout=drain_timeout,
        verify=not no_verify,
        sample=verify_sample,
        unpause_after=unpause,
    )
    with err.status("preflight", spinner="dots") as spinner:

        def progress(step: Step, lags: dict[str, int | None]) -> None:
            behind = ", ".join(f"{w} {'?' if lag is None else lag}" for w, lag in lags.items() if lag != 0)
            spinner.update(f"{step}" + (f": lag bytes {behind}" if behind else ""))

        try:
            if source is not None and target is not None:
                report = _manual_cutover(source, target, plan_name, status_port_base, options, progress)
            else:
                assert name is not None
                report = sync_ops.run_cutover(
                    _runtime(),
                    namespace,
                    name,
                    options,
                    progress=progress,
                    on_stop_progress=lambda line: spinner.update(line),
                )
        except MoorageError as error:
            raise _fail(str(error)) from None
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        verdict = "[green]cut over[/]" if report.ok else f"[red]failed at {report.step}[/]"
        out.print(f"{'RedisSync ' + namespace + '/' + name if name else 'sync'}: {verdict}", highlight=False)
        out.print(f"  {report.reason}", markup=False, highlight=False)
        if report.paused and not report.unpaused and report.ok:
            out.print(
                f"  source writes stay paused for up to {pause:g}s from the start: point clients at the "
                "target now; writes held by the pause run on the source when it ends and are NOT synced",
                markup=False,
                highlight=False,
            )
        if report.verify is not None:
            _print_table(report.verify)
    raise typer.Exit(0 if report.ok else 1)


def _manual_cutover(
    source: str,
    target: str,
    plan_name: str,
    status_port_base: int | None,
    options: sync_ops.CutoverOptions,
    progress: CutoverProgress,
) -> CutoverReport:
    source_url = parse_url(source, password_env=SOURCE_PASSWORD_ENV)
    target_url = parse_url(target, password_env=TARGET_PASSWORD_ENV)
    # A sync this host started under that name: its ports, and the cutover stops its processes.
    syncs = LocalSyncs()
    launched = syncs.running(plan_name)
    if status_port_base is None:
        status_port_base = syncs.status_port_base(plan_name) if launched else None
    planned = manual.plan_urls(
        plan_name, source_url, target_url, status_port_base=status_port_base or DEFAULT_STATUS_PORT_BASE
    )

    def compare() -> VerifyReport:
        return verify(
            source_url, target_url, sample_ratio=options.sample, ttl_tolerance=options.ttl_tolerance
        )

    def stop_local() -> None:
        syncs.stop(plan_name)

    return cutover(
        manual.feeds(planned, "127.0.0.1" if launched else None),
        source_password=source_url.password,
        verify=compare if options.verify else None,
        stop=stop_local if launched else None,
        pause_seconds=options.pause_seconds,
        drain_timeout=options.drain_timeout,
        unpause_after=options.unpause_after,
        progress=progress,
    )


@sync_app.command("plan")
def plan_command(
    source: Annotated[
        str, typer.Option("--source", help=f"redis://[:PASSWORD@]HOST:PORT (or ${SOURCE_PASSWORD_ENV}).")
    ],
    target: Annotated[
        str, typer.Option("--target", help=f"redis://[:PASSWORD@]HOST:PORT (or ${TARGET_PASSWORD_ENV}).")
    ],
    name: Annotated[
        str, typer.Option("--name", help="Plan name: workloads are NAME or NAME-shard-I.")
    ] = "local",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write DIR/<workload>/shake.toml (mode 0600) to run by hand.")
    ] = None,
    status_port_base: Annotated[
        int, typer.Option("--status-port-base", help="Status port of workload 0; workload i gets base+i.")
    ] = DEFAULT_STATUS_PORT_BASE,
    output: Annotated[
        VerifyOutput, typer.Option("--output", "-o", help="table or json.")
    ] = VerifyOutput.TABLE,
) -> None:
    """Plan a sync between two Redis given by URL (a cluster is found from any node): one redis-shake
    per source shard, reading a replica when there is one; with --out, its configs for redis-shake v4."""
    try:
        source_url = parse_url(source, password_env=SOURCE_PASSWORD_ENV)
        target_url = parse_url(target, password_env=TARGET_PASSWORD_ENV)
        planned = manual.plan_urls(name, source_url, target_url, status_port_base=status_port_base)
        if out_dir is not None:
            planned = manual.write_configs(planned, out_dir, source_url, target_url)
    except MoorageError as error:
        raise _fail(str(error)) from None
    rows = [
        {
            "name": m.workload.name,
            "reads": m.workload.reader.address,
            "readsReplica": m.workload.reads_replica,
            "shardMaster": m.workload.source_master.address,
            "writes": m.workload.writer.address.address,
            "writerCluster": m.workload.writer.cluster,
            "statusPort": m.status_port,
            "config": str(m.config) if m.config else None,
        }
        for m in planned
    ]
    if output is VerifyOutput.JSON:
        sys.stdout.write(json.dumps({"workloads": rows}, indent=2) + "\n")
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("workload", "reads", "shard master", "writes", "status port", "config"):
        table.add_column(column)
    for row in rows:
        reads = f"{row['reads']} (replica)" if row["readsReplica"] else str(row["reads"])
        table.add_row(
            str(row["name"]),
            reads,
            str(row["shardMaster"]),
            str(row["writes"]),
            str(row["statusPort"]),
            str(row["config"] or ""),
        )
    out.print(table)
    if out_dir is not None:
        out.print("run each with: redis-shake <workload>/shake.toml   (the files hold passwords: mode 0600)")


@sync_app.command("clear-share")
def clear_share_command(
    document: Annotated[
        Path, typer.Argument(help="The share document a RedisSync's config Secret holds (share.json).")
    ],
) -> None:
    """Empty one workload's share of the target before redis-shake's full sync (what each redis-shake
    pod's init container runs): the keys in the workload's slots that pass its filter. Exit 1 while
    the target cannot be reached or written (the pod then waits and retries), 2 for a bad document."""
    try:
        text = document.read_text(encoding="utf-8")
    except OSError as error:
        raise _fail(f"cannot read {document}: {error.strerror}") from None
    try:
        workload, target, deleted = clear_from_document(text)
    except SpecError as error:
        raise _fail(str(error)) from None
    except MoorageError as error:
        err.print(f"error: the share could not be emptied: {error}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    out.print(
        f"{workload}: emptied its share of {target.redacted} ({deleted} keys) before the full sync",
        markup=False,
        highlight=False,
    )
