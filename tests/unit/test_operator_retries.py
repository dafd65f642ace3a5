"""A retrying reconcile pass recognises the render this process applied moments ago
(operators/reconcile/applied.py), so it does not apply it again."""

from __future__ import annotations

import time
from typing import Any

import pytest

from operators.reconcile import applied


def _manifests(port: int) -> list[dict[str, Any]]:
    return [{"kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": port}]}}]


def test_the_same_render_is_recent_until_the_interval_passes() -> None:
    digest = applied.render_digest(_manifests(6379))
    assert digest == applied.render_digest(_manifests(6379))
    applied.remember_applied("uid-1", digest, within=60)
    assert applied.applied_recently("uid-1", digest, within=60)
    # another render, another Middleware, or an interval that has passed: apply again
    assert not applied.applied_recently("uid-1", applied.render_digest(_manifests(6380)), within=60)
    assert not applied.applied_recently("uid-2", digest, within=60)
    time.sleep(0.05)
    assert not applied.applied_recently("uid-1", digest, within=0.01)
    applied.forget_applied("uid-1")
    assert not applied.applied_recently("uid-1", digest, within=60)


def test_expired_entries_are_swept_once_many_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applied, "_RECENT_SWEEP_AT", 4)
    monkeypatch.setattr(applied, "_recent", {})
    for i in range(3):
        applied.remember_applied(f"old-{i}", "d", within=60)
    time.sleep(0.05)
    applied.remember_applied("new", "d", within=0.01)  # the fourth: sweeps what is older than 0.01 s
    assert set(applied._recent) == {"new"}
