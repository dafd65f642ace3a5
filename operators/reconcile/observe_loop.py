"""One loop observes every Middleware, instead of a kopf timer per object.

kopf keeps its finalizer on every object that has a timer (or a mandatory Delete handler) and spends
a whole event cycle adding it before the first handler runs: at 500 Middlewares created at once that
cycle was a third of the time to each one's first status (docs/operator.md). Here the bodies come
from a kopf index (kept current by the watch stream, no finalizer needed), ``Schedule`` says which
are due, and each visit runs in kopf's handler threads: ``observe.tick`` for a live one (its patch
written as kopf would: status to the status subresource, the rest to the object), ``delete.finalize``
for one being deleted with our finalizer (``delete.FINALIZER``), at once when the index sees it.

Visits of one Middleware never overlap; visits of different ones run at most ``concurrency`` at a
time, so a round over many members that do not answer cannot take every handler thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from operators import metrics
from operators.kube import context
from operators.reconcile import delete, observe
from operators.settings import OperatorConfig

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# The loop sleeps at most this long between looks at the index (new objects are picked up by then
# at the latest; deletions wake it at once).
MAX_SLEEP = 1.0


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (str(meta.get("namespace") or ""), str(meta["name"]))


def indexed(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the index keeps of a Middleware: all but ``managedFields`` (a quarter of a body, never read)."""
    kept = {k: v for k, v in body.items() if k != "metadata"}
    kept["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return copy.deepcopy(kept)


def wants_finalizing(body: Mapping[str, Any]) -> bool:
    return delete.deleting(body) and delete.protected(body)


@dataclass
class Schedule:
    """When each Middleware is next visited (pure: the clock is passed in). A new one is first
    visited ``initial_delay`` after it is seen (its create handler writes the first status), then
    ``interval`` after each visit ends; one asked for (``expedite``) is visited as soon as it is not
    being visited, and again right after if it was asked for meanwhile."""

    interval: float
    initial_delay: float
    due: dict[Key, float] = field(default_factory=dict)
    running: set[Key] = field(default_factory=set)
    asked_while_running: set[Key] = field(default_factory=set)

    def track(self, keys: Collection[Key], now: float) -> None:
        present = set(keys)  # called on every wake: membership must not cost a scan per key
        for key in present:
            self.due.setdefault(key, now + self.initial_delay)
        for key in [k for k in self.due if k not in present and k not in self.running]:
            del self.due[key]
            self.asked_while_running.discard(key)

    def expedite(self, key: Key, now: float) -> None:
        if key in self.running:
            self.asked_while_running.add(key)
        else:
            self.due[key] = now

    def ready(self, now: float) -> list[Key]:
        """Due and not being visited, the longest overdue first."""
        keys = [k for k, at in self.due.items() if at <= now and k not in self.running]
        return sorted(keys, key=lambda k: self.due[k])

    def start(self, key: Key) -> None:
        self.running.add(key)

    def finish(self, key: Key, now: float) -> None:
        self.running.discard(key)
        if key in self.asked_while_running:
            self.asked_while_running.discard(key)
            self.due[key] = now
        else:
            self.due[key] = now + self.interval

    def next_due(self, now: float) -> float:
        waiting = [at for k, at in self.due.items() if k not in self.running]
        return min(waiting, default=now + MAX_SLEEP)


def visit(raw: Mapping[str, Any], config: OperatorConfig) -> None:
    """One look at one Middleware (blocking: runs in a handler thread)."""
    body = kopf.Body(cast(kopf.RawBody, copy.deepcopy(dict(raw))))
    if delete.deleting(body):
        if delete.protected(body):
            with metrics.reconcile_timer("Middleware", "delete"):
                if not delete.finalize(body):
                    log.info("%s/%s: finalizers changed meanwhile; looking again", *key_of(body))
        return
    patch: dict[str, Any] = {}
    with metrics.reconcile_timer("Middleware", "observe"):
        observe.tick(body, patch, config)
    write(body, patch)


def write(body: Mapping[str, Any], patch: MutableMapping[str, Any]) -> None:
    """The tick's patch as kopf would write a timer's: ``status`` through the status subresource,
    the rest (annotations) as a merge patch of the object. A Middleware gone meanwhile is no error."""
    if not patch:
        return
    namespace, name = key_of(body)
    rt = context.runtime()
    status = patch.pop("status", None)
    if patch:
        rt.merge_patch(delete.API_VERSION, "Middleware", namespace, name, dict(patch))
    if status is not None:
        rt.merge_patch(
            delete.API_VERSION, "Middleware", namespace, name, {"status": status}, subresource="status"
        )


class ObserveLoop:
    """The loop's state for one run of the operator: ``start`` at startup, ``stop`` at cleanup,
    ``notice`` from the index function on every watch event of a Middleware."""

    def __init__(self, visitor: Callable[[Mapping[str, Any], OperatorConfig], None] = visit) -> None:
        self._visitor = visitor
        self._task: asyncio.Task[None] | None = None
        self._posting: contextvars.Context | None = None
        self._poked: asyncio.Event | None = None
        self._schedule: Schedule | None = None

    def notice(self, body: Mapping[str, Any]) -> None:
        """Called in kopf's processing of the object (on its event loop): keeps that context, where
        ``kopf.event`` can post, for the visits; a Middleware being deleted is visited at once."""
        if self._posting is None:
            self._posting = contextvars.copy_context()
        if self._schedule is not None and self._poked is not None and wants_finalizing(body):
            self._schedule.expedite(key_of(body), asyncio.get_running_loop().time())
            self._poked.set()

    def start(
        self, index: Mapping[Key, Iterable[Mapping[str, Any]]], executor: Executor, config: OperatorConfig
    ) -> None:
        self.stop()
        self._posting = None
        self._poked = asyncio.Event()
        self._schedule = Schedule(
            interval=config.observe_interval, initial_delay=config.observe_initial_delay
        )
        self._task = asyncio.create_task(self._run(index, executor, config), name="observe every Middleware")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(
        self, index: Mapping[Key, Iterable[Mapping[str, Any]]], executor: Executor, config: OperatorConfig
    ) -> None:
        assert self._schedule is not None and self._poked is not None
        schedule, poked = self._schedule, self._poked
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(config.observe_concurrency)
        visits: set[asyncio.Task[None]] = set()

        async def one(key: Key) -> None:
            try:
                async with slots:
                    body = latest(index, key)
                    if body is not None and self._posting is not None:
                        await loop.run_in_executor(
                            executor, self._posting.copy().run, self._visitor, body, config
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("observing %s/%s failed", *key)
            finally:
                schedule.finish(key, loop.time())
                poked.set()

        while True:
            now = loop.time()
            schedule.track(list(index.keys()), now)
            for key in schedule.ready(now):
                schedule.start(key)
                task = asyncio.create_task(one(key), name=f"observe {key[0]}/{key[1]}")
                visits.add(task)
                task.add_done_callback(visits.discard)
            poked.clear()
            sleep = min(max(schedule.next_due(now) - now, 0.0), MAX_SLEEP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poked.wait(), timeout=sleep)


def latest(index: Mapping[Key, Iterable[Mapping[str, Any]]], key: Key) -> Mapping[str, Any] | None:
    """The index's current body of ``key`` (None once the Middleware is gone)."""
    store = index.get(key)
    return next(iter(store), None) if store is not None else None
