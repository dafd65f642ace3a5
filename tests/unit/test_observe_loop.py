"""The operator-wide observe loop (operators/reconcile/observe_loop.py): its schedule, pure with the
clock passed in, and the loop itself over an in-memory index with a recording visitor in place of
``observe.tick`` (what a visit does against the API server is in tests/k8s/test_operator.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from operators.reconcile import delete
from operators.reconcile.observe_loop import Key, ObserveLoop, Schedule, indexed, wants_finalizing
from operators.settings import OperatorConfig

A, B = ("ns", "a"), ("ns", "b")


def test_a_new_middleware_is_first_visited_after_the_initial_delay_then_every_interval() -> None:
    schedule = Schedule(interval=30.0, initial_delay=5.0)
    schedule.track([A], now=100.0)
    assert schedule.ready(104.9) == []
    assert schedule.next_due(100.0) == 105.0
    assert schedule.ready(105.0) == [A]
    schedule.start(A)
    assert schedule.ready(200.0) == []  # never twice at once
    schedule.finish(A, now=107.0)
    assert schedule.ready(136.9) == [] and schedule.ready(137.0) == [A]


def test_a_gone_middleware_is_forgotten_but_not_while_it_is_visited() -> None:
    schedule = Schedule(interval=30.0, initial_delay=5.0)
    schedule.track([A, B], now=0.0)
    schedule.start(A)
    schedule.track([], now=1.0)
    assert set(schedule.due) == {A}
    schedule.finish(A, now=2.0)
    schedule.track([], now=3.0)
    assert schedule.due == {}


def test_asked_for_is_visited_now_or_right_after_the_visit_running() -> None:
    schedule = Schedule(interval=30.0, initial_delay=5.0)
    schedule.track([A, B], now=0.0)
    schedule.expedite(B, now=1.0)
    assert schedule.ready(1.0) == [B]
    schedule.start(B)
    schedule.expedite(B, now=2.0)  # e.g. a deletion seen while B was observed
    schedule.finish(B, now=3.0)
    assert schedule.ready(3.0) == [B]
    schedule.start(B)
    schedule.finish(B, now=4.0)
    assert schedule.ready(4.0) == []


def test_the_index_keeps_the_body_without_managed_fields_and_as_a_copy() -> None:
    body: dict[str, Any] = {
        "apiVersion": "moorage.io/v1alpha1",
        "metadata": {"name": "a", "namespace": "ns", "managedFields": [{"manager": "kubectl"}]},
        "spec": {"engine": "redis"},
    }
    kept = indexed(body)
    assert kept["metadata"] == {"name": "a", "namespace": "ns"}
    body["spec"]["engine"] = "postgresql"
    assert kept["spec"] == {"engine": "redis"}


def test_only_a_middleware_being_deleted_with_our_finalizer_wants_finalizing() -> None:
    ours = {"metadata": {"finalizers": [delete.FINALIZER], "deletionTimestamp": "2026-12-07T00:00:00Z"}}
    assert wants_finalizing(ours)
    assert not wants_finalizing({"metadata": {"finalizers": [delete.FINALIZER]}})
    assert not wants_finalizing({"metadata": {"finalizers": ["other"], "deletionTimestamp": "x"}})


def test_protect_adds_the_finalizer_once_beside_others_and_never_to_one_being_deleted() -> None:
    def patched(meta: dict[str, Any]) -> dict[str, Any]:
        body = kopf.Body(cast(kopf.RawBody, {"metadata": meta}))
        patch = kopf.Patch()
        delete.protect(body, patch)
        raw: dict[str, Any] = {"metadata": dict(meta)}
        for fn in patch.fns:
            fn(raw)  # type: ignore[arg-type]
        return raw["metadata"]

    assert patched({"finalizers": ["other.io/keep"]})["finalizers"] == ["other.io/keep", delete.FINALIZER]
    assert patched({})["finalizers"] == [delete.FINALIZER]
    assert patched({"finalizers": [delete.FINALIZER]})["finalizers"] == [delete.FINALIZER]
    assert "finalizers" not in patched({"deletionTimestamp": "2026-12-07T00:00:00Z"})


def _body(key: Key, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": key[0], "name": key[1], "finalizers": [delete.FINALIZER]}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": meta}


def _run_loop(
    index: dict[Key, list[dict[str, Any]]],
    config: OperatorConfig,
    until: Any,
    during: Any = None,
    deadline: float = 20.0,
) -> tuple[list[tuple[Key, float]], int]:
    """Run a loop over ``index`` with a visitor that records (key, time) and takes 50 ms, until
    ``until(visits)`` holds or ``deadline`` seconds; ``during(loop)`` is called once after 0.2 s.
    Returns the visits and the most visits seen running at once."""
    visits: list[tuple[Key, float]] = []
    running, most = [0], [0]
    lock = threading.Lock()

    def visitor(body: Mapping[str, Any], _config: OperatorConfig) -> None:
        meta = body["metadata"]
        with lock:
            visits.append(((meta["namespace"], meta["name"]), time.monotonic()))
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    async def main() -> None:
        loop = ObserveLoop(visitor)
        with ThreadPoolExecutor(max_workers=8) as pool:
            loop.start(index, pool, config)
            for store in index.values():
                loop.notice(store[0])
            await asyncio.sleep(0.2)
            if during is not None:
                during(loop)
            stop_at = time.monotonic() + deadline
            while time.monotonic() < stop_at:
                with lock:
                    if until(list(visits)):
                        break
                await asyncio.sleep(0.05)
            loop.stop()

    asyncio.run(main())
    return visits, most[0]


def test_the_loop_visits_each_middleware_every_interval_a_bounded_number_at_a_time() -> None:
    index = {("ns", f"m{i}"): [_body(("ns", f"m{i}"))] for i in range(6)}
    config = OperatorConfig(observe_interval=0.5, observe_initial_delay=0.1, observe_concurrency=2)

    def each_twice(visits: list[tuple[Key, float]]) -> bool:
        return all(sum(1 for k, _ in visits if k == key) >= 2 for key in index)

    visits, most = _run_loop(index, config, until=each_twice)
    assert each_twice(visits), visits
    for key in index:
        times = [t for k, t in visits if k == key]
        # the next visit starts an interval after the last one ended (it took 50 ms)
        assert all(later - earlier >= 0.55 for earlier, later in itertools.pairwise(times))
    assert most == 2


def test_a_deletion_noticed_is_visited_at_once_and_a_gone_one_no_more() -> None:
    index = {A: [_body(A)], B: [_body(B)]}
    config = OperatorConfig(observe_interval=60.0, observe_initial_delay=60.0, observe_concurrency=4)
    noticed: list[float] = []

    def delete_a_and_drop_b(loop: ObserveLoop) -> None:
        index[A] = [_body(A, deleting=True)]
        del index[B]
        noticed.append(time.monotonic())
        loop.notice(index[A][0])

    visits, _ = _run_loop(
        index, config, until=lambda v: len(v) >= 1, during=delete_a_and_drop_b, deadline=5.0
    )
    # Without the notice A's first visit was 60 s away (the loop ran 5 s at most); B went unvisited.
    assert [key for key, _ in visits] == [A]
    assert visits[0][1] - noticed[0] < 5.0
