"""bench/report.py: every figure of bench/results.json against its reference, as `make bench` prints it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_declared_figure_is_found_in_the_committed_results(report: ModuleType) -> None:
    """A renamed key in a bench script must not silently turn a row into 'not measured'."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    for row in report.rows(results):
        if row.figure.ours is not None:
            assert row.ours is not None, f"{row.figure.label}: {row.figure.ours} not in bench/results.json"
        if row.figure.reference is not None:
            assert row.reference is not None, f"{row.figure.label}: {row.figure.reference} not found"
            assert row.ratio is not None and row.ratio > 0, row


def test_ratios_are_oriented_so_that_above_one_is_faster_and_targets_are_judged(report: ModuleType) -> None:
    Figure = report.Figure
    figures = [
        Figure("slow copy", ("a", "ours"), ("a", "raw"), "raw", "seconds", target=0.8),
        Figure("fast rate", ("b", -1, "ours"), ("b", -1, "raw"), "raw", "rate", target=1.5, unit="MB/s"),
        Figure("bounded", ("c", "p50"), None, "none", "seconds", at_most=3.0),
        Figure("absent", ("d", "ours"), ("d", "raw"), "raw", "seconds", target=1.0),
        Figure("no target", ("a", "ours"), ("a", "raw"), "raw", "seconds"),
    ]
    results = {
        "a": {"ours": 10.0, "raw": 4.0},
        "b": [{"ours": 1.0, "raw": 9.0}, {"ours": 30.0, "raw": 15.0}],  # -1: the largest size
        "c": {"p50": 2.5},
    }
    slow, fast, bounded, absent, plain = report.rows(results, figures)
    assert (slow.ratio, slow.met, slow.verdict) == (pytest.approx(0.4), False, "NOT MET")
    assert (fast.ratio, fast.met, fast.verdict) == (pytest.approx(2.0), True, "met")
    assert (bounded.ratio, bounded.met, bounded.verdict) == (None, True, "met")
    assert (absent.ours, absent.met, absent.verdict) == (None, None, "not measured")
    assert (plain.verdict, plain.met) == ("", None)
    table = report.markdown(report.rows(results, figures), "2 cpus")
    assert table.count("\n| ") == len(figures) + 1  # the header and one line per figure
    assert "| fast rate | 30 MB/s | 15 MB/s (raw) | 2.00 | ratio >= 1.5 | met |" in table


def test_the_archivers_upload_rate_is_derived_from_segments_per_second(report: ModuleType) -> None:
    results = {"pitr": {"archiving_under_load": {"segments_archived_per_s": 2.5, "wal_mb_per_s": 50.0}}}
    (row,) = [r for r in report.rows(results) if r.figure.label == "PITR archiver under an unpaced writer"]
    assert (row.ours, row.reference, row.ratio, row.verdict) == (40.0, 50.0, pytest.approx(0.8), "NOT MET")
    assert "archived_mb_per_s" not in results["pitr"]["archiving_under_load"], "the input is not changed"


def test_a_bound_the_reference_itself_misses_is_met_within_its_factor(report: ModuleType) -> None:
    """Issue 15's operator figure: <= 3 s, or within 1.2x of a plain client that cannot do 3 s here."""
    figure = report.Figure(
        "bounded", ("o", "p50"), ("o", "floor"), "floor", "seconds", at_most=3.0, within_reference=1.2
    )
    verdicts = [
        report.rows({"o": {"p50": p50, "floor": floor}}, [figure])[0].verdict
        for p50, floor in ((2.9, 1.0), (4.0, 3.5), (4.5, 3.5), (4.0, 2.0))
    ]
    # Under the bound; within 1.2x of a floor above it; beyond 1.2x; above a floor that meets it.
    assert verdicts == ["met", "met", "NOT MET", "NOT MET"]
    assert "or <= 1.2x the reference" in report.markdown(
        report.rows({"o": {"p50": 1, "floor": 1}}, [figure]), "x"
    )
