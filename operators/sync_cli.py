"""``moorage sync ...``: cross-cluster Redis sync commands for SREs.

``verify`` exits like ``diff``: 0 when source and target are equal, 1 when differences were found,
2 when the comparison could not be made (bad URL or option, a side unreachable or refusing auth).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from middleware.errors import MoorageError
from sync.verify import DEFAULT_MAX_DIFFS, VerifyReport, parse_url, verify

sync_app = typer.Typer(
    help="Cross-cluster Redis sync: verify source and target (workloads run under the operator: RedisSync).",
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
