"""Supervise one redis-shake workload: pure decisions from what was recorded, no I/O.

redis-shake v4 is a one-shot migration tool: it cannot resume, does not follow topology changes and
can stall silently. The operator samples, every interval, redis-shake's ``status_port`` JSON, the pod's
restart count and the source (current master, its ``master_repl_offset``, slot map) and target
(current master), and this module turns the recent samples into a state, an action and a reason:

- source failover (the shard's master changed; redis-shake #935 stops syncing)  -> re-plan
- reshard (the shard's slots changed)                                         -> re-plan
- the node it reads is gone (does not answer, while the shard has another healthy node) -> re-plan
  onto that node (redis-shake would otherwise be restarted against the dead address forever)
- target failover (a sentinel target's master changed; #833 writes to the old one) -> re-plan
- crash-looping (restarts keep rising)                         -> none: report, Kubernetes backs off
- waiting for the reader's own BGSAVE (redis-shake #973: a full sync cannot attach to a BGSAVE the
  node started for its ``save`` rules, and waits for the next one) -> none: a restart would wait
  again; the reason says what to change (the reader's ``save`` rules)
- stalled (redis-shake's offset frozen for N samples while the source's advances; #956, or the
  status port silent)                                          -> restart (a full resync, v4 cannot resume)
- healthy                                                      -> none

Lag is the source master's ``master_repl_offset`` minus the offset redis-shake has received, taken
from the source's side: the offset redis-shake's connection last ACKed to the node it reads
(``INFO replication``), and redis-shake's status document only when that connection is not found.
Seconds are estimated from the source's write rate over the sampled window. The write lag is the
master's offset minus what redis-shake has handed to its writer (``aof_sent_offset``): what is
received but not yet written to the target; it needs the status document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from middleware.endpoints import Endpoint
from middleware.engines.redis.client import SlotRange
from sync.plan import ShakeWorkload

# Field names of redis-shake v4's status_port JSON that this module reads, in one place so they are
# easy to check against redis-shake's status output. Checked against v4.2.0 (internal/status: top-level
# ``consistent``, ``reader``, ``writer``; the sync reader's stat struct) and documents captured from the
# running binary (tests/unit/recorded/, tests/unit/test_redis_shake_v4_2_0.py). A standalone sync
# reader (what our one-shard workloads run) reports one object under ``reader``, a cluster reader a
# list; ``reader`` is null until the first refresh (the document is rebuilt once a second).
STATUS_FIELDS = {
    "readers": "reader",
    # "hand shaking", "waiting bgsave", "receiving rdb", "syncing rdb" (loading it into the target),
    # "syncing aof"
    "reader_status": "status",
    # Replication offsets, in the source's offset space. received: from the FULLRESYNC offset on, what
    # came in (also what it ACKs every 100 ms). sent: what it has handed to its writer; 0 until the
    # first command after the RDB (an idle source leaves it 0).
    "aof_received_offset": "aof_received_offset",
    "aof_sent_offset": "aof_sent_offset",
    "aof_received_bytes": "aof_received_bytes",  # received since the FULLRESYNC offset
    "rdb_received_bytes": "rdb_received_bytes",
    "rdb_file_size_bytes": "rdb_file_size_bytes",
    "rdb_sent_bytes": "rdb_sent_bytes",  # RDB bytes parsed and handed to the writer ("syncing rdb")
    "consistent": "consistent",
}
AOF_PHASE = "syncing aof"
RDB_LOAD_PHASE = "syncing rdb"
# Phases before redis-shake receives the RDB: where it sits while the source cannot serve a full sync.
BEFORE_RDB_PHASES = frozenset({"hand shaking", "waiting bgsave"})


class State(StrEnum):
    HEALTHY = "Healthy"
    SYNCING_RDB = "SyncingRDB"
    STALLED = "Stalled"
    CRASH_LOOPING = "CrashLooping"
    SOURCE_FAILOVER = "SourceFailover"
    RESHARDED = "Resharded"
    TARGET_FAILOVER = "TargetFailover"
    WAITING_FOR_BGSAVE = "WaitingForSourceBgsave"
    READER_DOWN = "ReaderDown"
    UNKNOWN = "Unknown"


class Action(StrEnum):
    NONE = "none"
    RESTART = "restart-full-resync"
    REPLAN = "replan"


@dataclass(frozen=True)
class ShakeStatus:
    phase: str
    received_offset: int | None  # replication offset redis-shake has read from the source
    sent_offset: int | None  # ... and handed to the writer
    rdb_bytes: int  # RDB bytes received so far (progress during the full sync)
    rdb_total: int | None
    consistent: bool
    rdb_sent: int = 0  # RDB bytes handed to the writer so far (progress while it loads the target)


def parse_status(document: Mapping[str, Any]) -> ShakeStatus:
    """redis-shake's status JSON for a one-reader workload (ours always have exactly one)."""
    # Our workloads use sync_reader with cluster=false: redis-shake's standalone reader reports its
    # stat struct as one object under "reader"; a cluster reader reports a list of them.
    readers = document.get(STATUS_FIELDS["readers"]) or []
    if isinstance(readers, Mapping):
        readers = [readers] if STATUS_FIELDS["reader_status"] in readers else list(readers.values())
    reader: Mapping[str, Any] = readers[0] if readers else {}

    def number(name: str) -> int | None:
        value = reader.get(STATUS_FIELDS[name])
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    phase = str(reader.get(STATUS_FIELDS["reader_status"], "unknown"))
    received = number("aof_received_offset")
    sent = number("aof_sent_offset")
    received_bytes = number("aof_received_bytes")
    if phase == AOF_PHASE and not sent and received is not None and received_bytes is not None:
        # Nothing of the stream handed to the writer yet (v4.2.0 leaves aof_sent_offset at 0 until the
        # first command after the RDB): what it has handed over ends where the stream began, at the
        # FULLRESYNC offset, which is what it received minus the bytes received since.
        sent = received - received_bytes
    return ShakeStatus(
        phase=phase,
        received_offset=received,
        sent_offset=sent,
        rdb_bytes=number("rdb_received_bytes") or 0,
        rdb_total=number("rdb_file_size_bytes"),
        consistent=bool(document.get(STATUS_FIELDS["consistent"], False)),
        rdb_sent=number("rdb_sent_bytes") or 0,
    )


@dataclass(frozen=True)
class Sample:
    at: float  # seconds (monotonic or epoch, as long as one workload's samples agree)
    status: ShakeStatus | None  # None: the status port did not answer
    restarts: int  # the container's restartCount
    source_master: Endpoint | None  # the shard's master now (None: could not observe)
    source_offset: int | None  # its master_repl_offset
    source_slots: tuple[SlotRange, ...] = ()
    target_master: Endpoint | None = None
    # The offset redis-shake's replication connection last ACKed to the node it reads, as that node
    # reports it (None: connection not found). Same offset space as the master's, replicas included.
    acked_offset: int | None = None
    reader_saving: bool | None = None  # the node redis-shake reads runs a BGSAVE/AOF rewrite of its own
    # False for redis-shake v3, which has no status port: silence is normal, progress is the offset its
    # connection ACKs to the source.
    status_expected: bool = True
    # Whether the node redis-shake reads answered this sample (None: not asked), and the shard's
    # healthy nodes as observed now (its master and the replicas that answer and are linked).
    reader_answers: bool | None = None
    shard_nodes: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Policy:
    stall_samples: int = 6  # e.g. 6 x 10 s without progress while the source writes
    crash_restarts: int = 3  # restarts within the window that make a crash loop
    silent_samples: int = 6  # status port silent this many samples in a row


@dataclass(frozen=True)
class Decision:
    state: State
    action: Action
    reason: str
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    write_lag_bytes: int | None = None


def lag(samples: Sequence[Sample]) -> tuple[int | None, float | None]:
    """Bytes the source is ahead of redis-shake, and how long the source takes to write that much."""
    last = samples[-1]
    received = last.acked_offset
    if received is None and last.status is not None:
        received = last.status.received_offset
    if received is None or last.source_offset is None:
        return None, None
    behind = max(0, last.source_offset - received)
    if behind == 0:
        return 0, 0.0
    rated = [s for s in samples if s.source_offset is not None]
    if len(rated) < 2 or rated[-1].at <= rated[0].at:
        return behind, None
    rate = (rated[-1].source_offset - rated[0].source_offset) / (rated[-1].at - rated[0].at)  # type: ignore[operator]
    # No writes in the window: the backlog cannot be converted into time, only reported in bytes.
    return behind, (behind / rate if rate > 0 else None)


def write_lag(samples: Sequence[Sample]) -> int | None:
    """Bytes the source is ahead of what redis-shake has handed to its writer (status document only;
    None before the AOF phase, when the sent offset means nothing yet)."""
    last = samples[-1]
    if last.status is None or last.status.sent_offset is None or last.source_offset is None:
        return None
    if last.status.phase != AOF_PHASE:
        return None
    return max(0, last.source_offset - last.status.sent_offset)


def _progress(sample: Sample) -> tuple[str, int, int] | None:
    """What moves while redis-shake works: its status document's counters, or (no status port) the
    offset its connection ACKs to the source. None: nothing to judge progress by."""
    if sample.status is not None:
        status = sample.status
        return (status.phase, status.received_offset or 0, status.rdb_bytes + status.rdb_sent)
    if not sample.status_expected and sample.acked_offset is not None:
        return ("acked", sample.acked_offset, 0)
    return None


def decide(workload: ShakeWorkload, samples: Sequence[Sample], policy: Policy = Policy()) -> Decision:
    """The state of ``workload`` and what to do, from its recent samples (oldest first)."""
    if not samples:
        return Decision(State.UNKNOWN, Action.NONE, "no samples yet")
    last = samples[-1]
    lag_bytes, lag_seconds = lag(samples)
    written = write_lag(samples)

    def made(state: State, action: Action, reason: str) -> Decision:
        return Decision(state, action, reason, lag_bytes, lag_seconds, written)

    # Topology changes first: restarting a workload that points at the wrong node cannot help.
    if last.source_master is not None and last.source_master != workload.source_master:
        return made(
            State.SOURCE_FAILOVER,
            Action.REPLAN,
            f"source master moved {workload.source_master} -> {last.source_master}",
        )
    if (
        last.source_slots
        and workload.source_slots
        and tuple(last.source_slots) != tuple(workload.source_slots)
    ):
        return made(State.RESHARDED, Action.REPLAN, "the source shard's slots changed")
    if last.reader_answers is False:
        others = [n for n in last.shard_nodes if n != workload.reader]
        if others:
            return made(
                State.READER_DOWN,
                Action.REPLAN,
                f"the node it reads, {workload.reader}, does not answer; the shard's healthy nodes: "
                + ", ".join(str(n) for n in others),
            )
    if (
        last.target_master is not None
        and not workload.writer.cluster
        and last.target_master != workload.writer.address
    ):
        return made(
            State.TARGET_FAILOVER,
            Action.REPLAN,
            f"target master moved {workload.writer.address} -> {last.target_master}",
        )

    window = samples[-(policy.stall_samples + 1) :]
    if window[-1].restarts - window[0].restarts >= policy.crash_restarts:
        return made(
            State.CRASH_LOOPING,
            Action.NONE,
            f"restarted {window[-1].restarts - window[0].restarts} times in {len(window)} samples",
        )

    if last.status is not None and last.status.phase in BEFORE_RDB_PHASES and last.reader_saving:
        return made(
            State.WAITING_FOR_BGSAVE,
            Action.NONE,
            f"{workload.reader} is running a BGSAVE of its own, which a full sync cannot attach to "
            "(redis-shake #973): it waits for the next one. Restarting would wait again; clear the "
            'reader\'s save rules (CONFIG SET save "") if this lasts',
        )

    silent = samples[-policy.silent_samples :]
    if (
        last.status_expected
        and len(silent) == policy.silent_samples
        and all(s.status is None for s in silent)
    ):
        return made(State.STALLED, Action.RESTART, f"status port silent for {len(silent)} samples")
    if last.status is None and last.status_expected:
        return made(State.UNKNOWN, Action.NONE, "status port did not answer")

    # Stalled: same restart generation, redis-shake's progress frozen while the source kept writing.
    if len(window) == policy.stall_samples + 1 and all(s.restarts == window[0].restarts for s in window):
        progress = [_progress(s) for s in window]
        offsets = [s.source_offset for s in window]
        if all(p is not None for p in progress) and all(o is not None for o in offsets):
            frozen = len(set(progress)) == 1
            source_moved = offsets[-1] > offsets[0]  # type: ignore[operator]
            if frozen and source_moved:
                return made(
                    State.STALLED,
                    Action.RESTART,
                    f"no progress for {policy.stall_samples} samples while the source wrote "
                    f"{offsets[-1] - offsets[0]} bytes",  # type: ignore[operator]
                )

    if last.status is None:
        # No status port (v3): the source's view is all there is.
        if last.acked_offset is None:
            return made(State.UNKNOWN, Action.NONE, "not connected to the source (no replication consumer)")
        return made(State.HEALTHY, Action.NONE, "syncing" if lag_bytes else "in sync")
    if last.status.phase != AOF_PHASE:
        total = f"/{last.status.rdb_total}" if last.status.rdb_total else ""
        if last.status.phase == RDB_LOAD_PHASE:
            # Received in full; being parsed and written into the target.
            done = f"{last.status.rdb_sent}{total} RDB bytes written to the target"
        else:
            done = f"{last.status.rdb_bytes}{total} RDB bytes received"
        return made(State.SYNCING_RDB, Action.NONE, f"{last.status.phase}: {done}")
    return made(State.HEALTHY, Action.NONE, "syncing" if lag_bytes else "in sync")
