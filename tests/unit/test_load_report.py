"""What a restore's verification accepts: the target must hold what was loaded, within tolerance."""

from __future__ import annotations

import pytest

from middleware.engines.base import LoadReport


@pytest.mark.parametrize(
    ("found", "problems"),
    [
        ({"keys": 10, "db0/keys": 10}, []),
        # Up to the tolerance may have expired by itself (short TTLs).
        ({"keys": 8, "db0/keys": 8}, []),
        ({"keys": 7, "db0/keys": 7}, ["db0/keys: 7 found, 10 loaded", "keys: 7 found, 10 loaded"]),
        # More than was loaded is never fine: something else wrote to the target.
        ({"keys": 11, "db0/keys": 11}, ["db0/keys: 11 found, 10 loaded", "keys: 11 found, 10 loaded"]),
        # A count the load never wrote.
        ({"keys": 10, "db0/keys": 10, "db3/keys": 1}, ["db3/keys: 1 found, 0 loaded"]),
        # A db whose keys all expired disappears from the inventory: counted as 0.
        ({"keys": 10}, ["db0/keys: 0 found, 10 loaded"]),
    ],
)
def test_problems_within_tolerance(found: dict[str, int], problems: list[str]) -> None:
    report = LoadReport(counts={"keys": 10, "db0/keys": 10}, tolerance={"keys": 2, "db0/keys": 2})
    assert report.problems(found) == problems


def test_no_tolerance_means_exact() -> None:
    report = LoadReport(counts={"znodes": 5})
    assert report.problems({"znodes": 5}) == []
    assert report.problems({"znodes": 4}) == ["znodes: 4 found, 5 loaded"]
