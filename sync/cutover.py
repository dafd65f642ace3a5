"""Cutover: stop a forward sync only once the target has everything the source wrote.

The order is the DCE procedure made checkable:

1. **preflight**: every workload's redis-shake is connected to the node it reads and past its full
   sync (``state=online`` in that node's ``INFO replication``; and where its status port answers, in
   ``syncing aof``: the source reports it online as soon as the RDB is transferred, while redis-shake
   may still be loading that RDB into the target, ``syncing rdb``). Nothing is touched before this.
2. **pause** (optional): ``CLIENT PAUSE <ms> WRITE`` on every source master. Redis lifts the pause by
   itself at the deadline, so a cutover that dies half-way cannot leave the source frozen. Paused
   writes are not refused: they wait and run when the pause ends.
3. **drain**: wait until, for every workload, the offset its connection ACKed equals its shard
   master's ``master_repl_offset`` (the source's own numbers, not redis-shake's). While paused, the
   master's offset does not move, so lag 0 means redis-shake has received every write. Where its
   status port answers (v4), also until it has handed all of it to its writer (``aof_sent_offset``):
   received is not yet written, and a cutover without verify must not stop a writer mid-backlog.
4. **verify**: compare source and target (``sync.verify``), full or sampled.
5. **stop**: stop the forward workloads (the caller's action: under the operator, ``direction:
   Stopped`` and waiting for the Deployments to go).

Any failure unpauses the masters this run paused and leaves the sync running: nothing is lost, and
the reason is in the report. On success the pause is left to run out (clients are re-pointed at the
target meanwhile) unless the caller asks to lift it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis import client as redis_client
from middleware.errors import MoorageError, NotReady, OperationError
from sync.observe import fetch_status, replication_view, shake_consumer
from sync.supervisor import AOF_PHASE, ShakeStatus
from sync.verify import VerifyReport

POLL_SECONDS = 0.1  # redis-shake ACKs every 100 ms


class Step(StrEnum):
    PREFLIGHT = "preflight"
    PAUSE = "pause"
    DRAIN = "drain"
    VERIFY = "verify"
    STOP = "stop"
    DONE = "done"


@dataclass(frozen=True)
class Feed:
    """One workload's reading end: its shard master (whose offset is the truth, and which is paused),
    the node redis-shake reads, and how its connection is recognised there."""

    workload: str
    master: Endpoint
    reader: Endpoint
    consumer_port: int  # redis-shake announces its status port as its replication listening-port
    consumer_host: str | None = None  # the pod's IP when known: several syncs may read one node
    status_port: int | None = None  # redis-shake's status port at consumer_host (v4), when reachable


@dataclass
class CutoverReport:
    ok: bool = False
    step: Step = Step.PREFLIGHT  # the step it ended in (DONE on success)
    reason: str = ""
    lag_bytes: dict[str, int | None] = field(default_factory=dict)
    write_lag_bytes: dict[str, int | None] = field(default_factory=dict)  # None: no status document
    paused: list[str] = field(default_factory=list)  # masters this run paused
    pause_deadline: float | None = None  # epoch seconds when Redis lifts the pause by itself
    unpaused: bool = False
    verify: VerifyReport | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "step": str(self.step),
            "reason": self.reason,
            "lagBytes": self.lag_bytes,
            "writeLagBytes": self.write_lag_bytes,
            "paused": self.paused,
            "pauseDeadline": self.pause_deadline,
            "unpaused": self.unpaused,
            "verify": self.verify.as_dict() if self.verify is not None else None,
            "seconds": round(self.seconds, 3),
        }


class CutoverAborted(MoorageError):
    """A step failed; ``step`` names it. The caller unpauses and reports."""

    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(reason)
        self.step = step


Progress = Callable[[Step, dict[str, int | None]], None]


def _status(feed: Feed) -> ShakeStatus | None:
    if feed.consumer_host and feed.status_port:
        return fetch_status(feed.consumer_host, feed.status_port)
    return None


def _loading(status: ShakeStatus | None) -> str | None:
    """Why a workload whose status document answers is not streaming yet (None: it is, or unknown)."""
    if status is None or status.phase == AOF_PHASE:
        return None
    total = f"/{status.rdb_total}" if status.rdb_total else ""
    return f"{status.phase}, {status.rdb_sent}{total} RDB bytes written to the target"


def _lags(
    feeds: Sequence[Feed], password: str | None
) -> tuple[dict[str, int | None], dict[str, int | None], dict[str, str]]:
    """Bytes each workload is behind its shard master, from the source's side (None: not measurable:
    a node did not answer, or redis-shake's connection is gone); behind in what it has handed to its
    writer (None: no status document to tell); and, per workload whose status document says it is
    still in its full sync, why (its phase and RDB progress)."""
    offsets: dict[Endpoint, int | None] = {}
    lags: dict[str, int | None] = {}
    written: dict[str, int | None] = {}
    loading: dict[str, str] = {}
    for feed in feeds:
        if feed.master not in offsets:
            view = replication_view(feed.master, password)
            offsets[feed.master] = view[0] if view else None
        reader = replication_view(feed.reader, password)
        consumer = shake_consumer(reader[1], feed.consumer_port, feed.consumer_host) if reader else None
        master = offsets[feed.master]
        lags[feed.workload] = (
            None
            if master is None or consumer is None or not consumer.online
            else max(0, master - consumer.offset)
        )
        status = _status(feed)
        why = _loading(status)
        if why is not None:
            loading[feed.workload] = why
        sent = status.sent_offset if status is not None and why is None else None
        written[feed.workload] = None if master is None or sent is None else max(0, master - sent)
    return lags, written, loading


def preflight(feeds: Sequence[Feed], password: str | None) -> None:
    """Refuse before touching anything unless every workload is connected and streaming."""
    if not feeds:
        raise CutoverAborted(Step.PREFLIGHT, "no forward workloads: the sync is stopped or reversed")
    for feed in feeds:
        view = replication_view(feed.reader, password)
        if view is None:
            raise CutoverAborted(
                Step.PREFLIGHT, f"{feed.workload}: the node it reads, {feed.reader}, does not answer"
            )
        consumer = shake_consumer(view[1], feed.consumer_port, feed.consumer_host)
        if consumer is None:
            who = f" from {feed.consumer_host}" if feed.consumer_host else ""
            raise CutoverAborted(
                Step.PREFLIGHT,
                f"{feed.workload}: redis-shake is not connected to {feed.reader} (no replication "
                f"consumer on port {feed.consumer_port}{who}); is its pod running?",
            )
        if not consumer.online:
            raise CutoverAborted(
                Step.PREFLIGHT,
                f"{feed.workload}: redis-shake is still in its full sync from {feed.reader} "
                f"(state {consumer.state}); cut over once it streams",
            )
        why = _loading(_status(feed))
        if why is not None:
            raise CutoverAborted(
                Step.PREFLIGHT,
                f"{feed.workload}: redis-shake is still in its full sync ({why}); cut over once it streams",
            )


def _pause(masters: Sequence[Endpoint], password: str | None, seconds: float, report: CutoverReport) -> None:
    milliseconds = max(1, int(seconds * 1000))
    for master in masters:
        try:
            redis_client.call(
                master, password, lambda c: c.execute_command("CLIENT", "PAUSE", milliseconds, "WRITE")
            )
        except (NotReady, OperationError, redis.RedisError) as exc:
            raise CutoverAborted(
                Step.PAUSE,
                f"could not pause writes on {master}: {redis_client.describe_error(exc, password)}",
            ) from None
        report.paused.append(master.address)


def _unpause(masters: Sequence[Endpoint], password: str | None) -> list[str]:
    """Lift this run's pauses; the masters that did not answer (their pause runs out by itself)."""
    failed = []
    for master in masters:
        try:
            redis_client.call(master, password, lambda c: c.execute_command("CLIENT", "UNPAUSE"))
        except (NotReady, OperationError, redis.RedisError):
            failed.append(master.address)
    return failed


def _drain(
    feeds: Sequence[Feed],
    password: str | None,
    timeout: float,
    report: CutoverReport,
    progress: Progress,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    deadline = clock() + timeout
    while True:
        report.lag_bytes, report.write_lag_bytes, loading = _lags(feeds, password)
        progress(Step.DRAIN, dict(report.lag_bytes))
        received = all(lag == 0 for lag in report.lag_bytes.values())
        if received and not loading and all(lag in (0, None) for lag in report.write_lag_bytes.values()):
            return
        if clock() >= deadline:
            behind = (
                ", ".join(
                    f"{name}: {'unknown' if lag is None else f'{lag} bytes'}"
                    for name, lag in report.lag_bytes.items()
                    if lag != 0
                )
                or ", ".join(f"{name}: still in its full sync ({why})" for name, why in loading.items())
                or ", ".join(
                    f"{name}: {lag} bytes received but not yet written"
                    for name, lag in report.write_lag_bytes.items()
                    if lag
                )
            )
            raise CutoverAborted(Step.DRAIN, f"redis-shake did not catch up within {timeout:g}s ({behind})")
        sleep(POLL_SECONDS)


def cutover(
    feeds: Sequence[Feed],
    *,
    source_password: str | None,
    verify: Callable[[], VerifyReport] | None,
    stop: Callable[[], None] | None,
    pause_seconds: float | None = 60.0,
    drain_timeout: float = 30.0,
    unpause_after: bool = False,
    progress: Progress = lambda step, lags: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CutoverReport:
    """Run the cutover of ``feeds`` (see the module docstring). ``verify`` None skips the comparison
    (not recommended); ``pause_seconds`` None does not pause (lag 0 is then only momentary);
    ``stop`` None leaves stopping to the caller (redis-shake run by hand)."""
    report = CutoverReport()
    started = clock()
    masters = sorted({feed.master for feed in feeds})
    paused: list[Endpoint] = []
    pause_ends = float("inf")
    try:
        report.step = Step.PREFLIGHT
        progress(report.step, {})
        preflight(feeds, source_password)
        if pause_seconds is not None:
            if pause_seconds <= drain_timeout:
                raise CutoverAborted(
                    Step.PAUSE,
                    f"the pause ({pause_seconds:g}s) must outlast the drain timeout ({drain_timeout:g}s)",
                )
            report.step = Step.PAUSE
            progress(report.step, {})
            report.pause_deadline = time.time() + pause_seconds
            pause_ends = clock() + pause_seconds
            try:
                _pause(masters, source_password, pause_seconds, report)
            finally:
                paused = [m for m in masters if m.address in report.paused]
        report.step = Step.DRAIN
        _drain(feeds, source_password, drain_timeout, report, progress, clock, sleep)
        if verify is not None:
            report.step = Step.VERIFY
            progress(report.step, dict(report.lag_bytes))
            report.verify = verify()
            if not report.verify.equal:
                raise CutoverAborted(
                    Step.VERIFY,
                    f"source and target differ ({report.verify.total_differences} differences); "
                    "the sync keeps running",
                )
        if pause_seconds is not None and clock() >= pause_ends:
            raise CutoverAborted(
                Step.VERIFY,
                f"the write pause ({pause_seconds:g}s) ended before the cutover could stop the sync; "
                "the source took writes again: use a longer --pause or a sampled verify",
            )
        if stop is not None:
            report.step = Step.STOP
            progress(report.step, dict(report.lag_bytes))
            stop()
    except CutoverAborted as exc:
        report.step, report.reason = exc.step, str(exc)
    except MoorageError as exc:
        report.reason = f"{report.step}: {exc}"
    else:
        report.ok, report.step = True, Step.DONE
        done = (
            "forward workloads stopped"
            if stop is not None
            else "caught up: stop the redis-shake processes now"
        )
        report.reason = f"{done}; target verified equal" if verify else done
    finally:
        report.seconds = clock() - started
    if paused and (not report.ok or unpause_after):
        failed = _unpause(paused, source_password)
        report.unpaused = not failed
        if failed:
            report.reason += f" (could not unpause {', '.join(failed)}: their pause ends by itself)"
    progress(report.step, dict(report.lag_bytes))
    return report
