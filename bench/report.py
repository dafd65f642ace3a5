"""Every figure of ``bench/results.json`` as a ratio against its reference, measured in the same run.

    python bench/report.py [bench/results.json] [--markdown]

``make bench`` prints this table after the benchmarks. Each row names what we measure, the raw
tool or plain client it is measured against, both figures and the ratio, oriented so that above 1
is faster than the reference (reference seconds / our seconds, or our rate / the reference's), and
the issue's target where there is one (``met`` / ``NOT MET``). A target whose figure the results do
not hold yet says ``not measured``: the table shows the gaps instead of leaving them out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]

# A path into the results: keys, and list indexes (-1: the largest size measured).
ResultPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Figure:
    label: str
    ours: ResultPath | None
    reference: ResultPath | None
    reference_label: str
    # seconds: reference / ours; rate: ours / reference (above 1: faster than the reference either way).
    kind: Literal["seconds", "rate"]
    target: float | None = None  # the ratio an issue asks for
    at_most: float | None = None  # or an absolute bound on our figure (seconds)
    # With at_most: where the reference itself misses that bound, ours within this factor of it.
    within_reference: float | None = None
    issue: str = ""
    unit: str = "s"


# The sections of bench/pitr_bench.py's two write loads, and the writer each ran under.
ARCHIVER_LOADS = {
    "archiving_under_load": "an unpaced writer",
    "archiving_paced_load": "a writer at half its rate",
}

FIGURES: tuple[Figure, ...] = (
    Figure(
        "PostgreSQL backup (1M rows)",
        ("backup_restore", "postgresql", "runs", -1, "ours_backup", "seconds"),
        ("backup_restore", "postgresql", "runs", -1, "raw_dump", "seconds"),
        "pg_dump -Fc",
        "seconds",
    ),
    Figure(
        "PostgreSQL load (1M rows)",
        ("backup_restore", "postgresql", "runs", -1, "ours_load", "seconds"),
        ("backup_restore", "postgresql", "runs", -1, "raw_restore", "seconds"),
        "pg_restore",
        "seconds",
    ),
    Figure(
        "PostgreSQL apply_restore (1M rows), data set aside",
        ("backup_restore", "postgresql", "runs", -1, "ours_restore", "seconds"),
        ("backup_restore", "postgresql", "runs", -1, "raw_restore", "seconds"),
        "pg_restore",
        "seconds",
        target=0.5,
        issue="15",
    ),
    Figure(
        "PostgreSQL apply_restore (1M rows), --safety-copy snapshot",
        ("backup_restore", "postgresql", "runs", -1, "ours_restore_snapshot", "seconds"),
        ("backup_restore", "postgresql", "runs", -1, "raw_restore", "seconds"),
        "pg_restore",
        "seconds",
    ),
    Figure(
        "Redis backup (1M keys)",
        ("backup_restore", "redis", "runs", -1, "ours_backup", "seconds"),
        ("backup_restore", "redis", "runs", -1, "raw_dump", "seconds"),
        "redis-cli --rdb",
        "seconds",
    ),
    Figure(
        "Redis load (1M keys)",
        ("backup_restore", "redis", "runs", -1, "ours_load", "seconds"),
        ("backup_restore", "redis", "runs", -1, "raw_restore", "seconds"),
        "redis-shake rdb_reader",
        "seconds",
        target=1.5,
        issue="15",
    ),
    Figure(
        "Redis load key by key (1M keys), the fallback into one master",
        ("backup_restore", "redis", "runs", -1, "ours_load_keys", "seconds"),
        ("backup_restore", "redis", "runs", -1, "raw_restore", "seconds"),
        "redis-shake rdb_reader",
        "seconds",
    ),
    Figure(
        "Redis load into a 3-master cluster (1M keys), key by key",
        ("backup_restore", "redis", "runs", -1, "ours_load_cluster", "seconds"),
        ("backup_restore", "redis", "runs", -1, "raw_cluster_restore", "seconds"),
        "redis-shake rdb_reader into the cluster",
        "seconds",
        target=1.5,
        issue="15",
    ),
    Figure(
        "Redis load (1M keys), same shape",
        ("backup_restore", "redis", "runs", -1, "ours_load", "seconds"),
        ("backup_restore", "redis", "runs", -1, "raw_server_load", "seconds"),
        "redis-server opening the RDB",
        "seconds",
        target=round(1 / 3, 2),
        issue="15",
    ),
    Figure(
        "ZooKeeper backup (1 GB of znodes)",
        ("backup_restore", "zookeeper", "runs", -1, "ours_backup", "seconds"),
        ("backup_restore", "zookeeper", "runs", -1, "raw_dump", "seconds"),
        "kazoo walk to a local file",
        "seconds",
    ),
    Figure(
        "ZooKeeper load (1 GB of znodes)",
        ("backup_restore", "zookeeper", "runs", -1, "ours_load", "seconds"),
        ("backup_restore", "zookeeper", "runs", -1, "raw_restore", "seconds"),
        "kazoo creates from that file",
        "seconds",
    ),
    Figure(
        "ZooKeeper apply_restore (1 GB of znodes)",
        ("backup_restore", "zookeeper", "runs", -1, "ours_restore", "seconds"),
        ("backup_restore", "zookeeper", "runs", -1, "raw_restore", "seconds"),
        "kazoo creates from that file",
        "seconds",
    ),
    Figure(
        "Operator: median create -> first status (500)",
        ("operator", "status_latency_s", "p50"),
        ("operator", "plain_client", "status_latency_s", "p50"),
        "plain server-side apply client",
        "seconds",
        at_most=3.0,
        within_reference=1.2,
        issue="15",
    ),
    Figure(
        "Redis cluster create 3x1 (until OK)",
        ("redis_cluster", "create_3x1", "ours", "median", "until_ok_s"),
        ("redis_cluster", "create_3x1", "redis_cli", "median", "until_ok_s"),
        "redis-cli --cluster create",
        "seconds",
    ),
    Figure(
        "Redis cluster rebalance onto an empty master",
        ("redis_cluster", "reshard_add_empty_master", "ours", "median", "keys_per_s"),
        ("redis_cluster", "reshard_add_empty_master", "redis_cli", "median", "keys_per_s"),
        "redis-cli --cluster rebalance",
        "rate",
        unit="keys/s",
    ),
    Figure(
        "Sync full copy, supervised (1M keys)",
        ("sync", "full_sync_keys_per_second", "supervised"),
        ("sync", "full_sync_keys_per_second", "by_hand"),
        "redis-shake run by hand",
        "rate",
        unit="keys/s",
    ),
    Figure(
        "PITR base backup to S3 (1 GB)",
        ("pitr", "base_backup", -1, "base_backup_seconds"),
        ("pitr", "base_backup", -1, "pg_basebackup_seconds"),
        "pg_basebackup to local disk",
        "seconds",
        target=0.8,
        issue="14",
    ),
    # The floor of any base backup to this S3 server, and how close barman comes to it.
    Figure(
        "PITR floor: pg_basebackup streamed to S3 (1 GB)",
        ("pitr", "base_backup", -1, "pg_basebackup_streamed_to_s3_seconds"),
        ("pitr", "base_backup", -1, "pg_basebackup_seconds"),
        "pg_basebackup to local disk",
        "seconds",
    ),
    Figure(
        "PITR base backup to S3 against that floor (1 GB)",
        ("pitr", "base_backup", -1, "base_backup_seconds"),
        ("pitr", "base_backup", -1, "pg_basebackup_streamed_to_s3_seconds"),
        "pg_basebackup streamed to S3",
        "seconds",
    ),
    *(
        Figure(
            f"PITR archiver under {writer}",
            ("pitr", load, "archived_mb_per_s"),
            ("pitr", load, "wal_mb_per_s"),
            "WAL written",
            "rate",
            target=1.0,
            issue="14",
            unit="MB/s",
        )
        for load, writer in ARCHIVER_LOADS.items()
    ),
    Figure(
        "PITR recovery to the archive's end",
        ("pitr", "recovery", "seconds"),
        ("pitr", "recovery", "pg_basebackup_seconds_same_data"),
        "pg_basebackup of the same data",
        "seconds",
    ),
    *(
        Figure(
            f"Kubernetes apply -> Ready, {shape}",
            ("k8s_ready", "results", shape, "apply_to_ready_s_median"),
            ("k8s_ready", "results", shape, "pods_ready_s_median"),
            "its pods Ready (no operator steps)",
            "seconds",
        )
        for shape in (
            "redis-cluster-3x2",
            "redis-sentinel-3+3",
            "postgresql-replication-3",
            "zookeeper-ensemble-3",
        )
    ),
)


@dataclass(frozen=True)
class Row:
    figure: Figure
    ours: float | None
    reference: float | None
    ratio: float | None
    met: bool | None  # None: no target, or its figure not measured

    @property
    def verdict(self) -> str:
        if self.figure.target is None and self.figure.at_most is None:
            return ""
        if self.met is None:
            return "not measured"
        return "met" if self.met else "NOT MET"


def lookup(results: dict[str, Any], path: ResultPath | None) -> float | None:
    """The number at ``path``, or None when the results do not hold it (a section not run)."""
    if path is None:
        return None
    node: Any = results
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def with_derived(results: dict[str, Any]) -> dict[str, Any]:
    """Figures computed from others: the archiver's upload rate under each load (16 MB segments)."""
    derived = json.loads(json.dumps(results))
    for load in ARCHIVER_LOADS:
        section = derived.get("pitr", {}).get(load)
        if isinstance(section, dict) and "segments_archived_per_s" in section:
            section["archived_mb_per_s"] = round(section["segments_archived_per_s"] * 16, 1)
    return derived


def rows(results: dict[str, Any], figures: Sequence[Figure] = FIGURES) -> list[Row]:
    results = with_derived(results)
    out = []
    for figure in figures:
        ours, reference = lookup(results, figure.ours), lookup(results, figure.reference)
        ratio = None
        if ours and reference:
            ratio = reference / ours if figure.kind == "seconds" else ours / reference
        met = None
        if figure.at_most is not None and ours is not None:
            met = ours <= figure.at_most
            if not met and figure.within_reference and reference is not None and reference > figure.at_most:
                met = ours <= reference * figure.within_reference
        elif figure.target is not None and ratio is not None:
            met = ratio >= figure.target
        out.append(Row(figure, ours, reference, ratio, met))
    return out


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"


def _target(figure: Figure) -> str:
    wanted = ""
    if figure.target is not None:
        wanted = f"ratio >= {figure.target}"
    elif figure.at_most is not None:
        wanted = f"<= {figure.at_most:g} s"
        if figure.within_reference:
            wanted += f", or <= {figure.within_reference:g}x the reference where it is above that"
    return f"{wanted} (issue {figure.issue})" if figure.issue else wanted


def markdown(table: list[Row], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| figure | ours | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        unit = row.figure.unit
        lines.append(
            f"| {row.figure.label} | {_number(row.ours, unit)} | {_number(row.reference, unit)} "
            f"({row.figure.reference_label}) | {'-' if row.ratio is None else f'{row.ratio:.2f}'} "
            f"| {_target(row.figure)} | {row.verdict} |"
        )
    return "\n".join(lines) + "\n"


def machine_of(results: dict[str, Any]) -> str:
    for section in results.values():
        if isinstance(section, dict):
            described = section.get("machine") or section.get("environment")
            if isinstance(described, dict):
                return ", ".join(f"{k} {v}" for k, v in described.items())
    return "not recorded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=REPO / "bench" / "results.json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    table = rows(results)
    if args.markdown:
        sys.stdout.write(markdown(table, machine_of(results)))
        return 0
    from rich.console import Console
    from rich.table import Table

    rich_table = Table(
        title=f"bench/results.json ratios (above 1: faster than the reference)\n{machine_of(results)}"
    )
    for column in ("figure", "ours", "reference", "against", "ratio", "target", ""):
        rich_table.add_column(column)
    for row in table:
        unit = row.figure.unit
        style = {"met": "green", "NOT MET": "red"}.get(row.verdict, "")
        rich_table.add_row(
            row.figure.label,
            _number(row.ours, unit),
            _number(row.reference, unit),
            row.figure.reference_label,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            _target(row.figure),
            f"[{style}]{row.verdict}[/{style}]" if style else row.verdict,
        )
    Console(width=max(Console().width, 150)).print(rich_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
