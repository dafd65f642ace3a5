"""Supervisor decisions from recorded redis-shake status documents and source observations.

The status documents below are hand-written following the shape of redis-shake v4's ``status_port``
JSON output as its source defines it (internal/status: top-level ``consistent``, ``reader`` and
``writer``; the sync reader's stat fields with their JSON names). A standalone sync reader (what our
one-shard workloads run) reports one object under ``reader``, a cluster reader a list. Documents the
real v4.2.0 binary served, and its quirks, are tested in test_redis_shake_v4_2_0.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from middleware.endpoints import Endpoint
from middleware.models.sync import RedisEndpointKind
from sync.plan import RedisTopology, Replica, Shard, plan
from sync.supervisor import Action, Policy, Sample, State, decide, lag, parse_status

MASTER = Endpoint("src-0", 6379)
SLOTS = ((0, 5460),)
SOURCE = RedisTopology(
    RedisEndpointKind.CLUSTER, (Shard(MASTER, (Replica(Endpoint("src-0r", 6379), True),), SLOTS),)
)
TARGET = RedisTopology(
    RedisEndpointKind.SENTINEL,
    (Shard(Endpoint("dst-0", 6379)),),
    sentinels=(Endpoint("s-0", 26379),),
    master_name="mymaster",
)
(WORKLOAD,) = plan("orders", SOURCE, TARGET)
TARGET_MASTER = Endpoint("dst-0", 6379)
POLICY = Policy(stall_samples=3, crash_restarts=3, silent_samples=3)


def status_doc(phase: str, received: int, *, rdb: int = 0, consistent: bool = False) -> dict[str, Any]:
    return {
        "start_time": "2024-05-01 10:00:00",
        "consistent": consistent,
        "total_entries_count": {
            "read_count": received // 50,
            "read_ops": 120.5,
            "write_count": 0,
            "write_ops": 118.0,
        },
        "per_cmd_entries_count": {"SET": {"read_count": 10, "write_count": 10}},
        "reader": [
            {
                "name": "reader_src-0r_6379",
                "address": "src-0r:6379",
                "dir": "/data/shake/reader_src-0r_6379",
                "status": phase,
                "rdb_file_size_bytes": 1_048_576,
                "rdb_file_size_human": "1.0 MiB",
                "rdb_received_bytes": rdb,
                "rdb_received_human": f"{rdb} B",
                "rdb_sent_bytes": rdb,
                "aof_received_offset": received,
                "aof_sent_offset": received,
                "aof_received_bytes": max(0, received - 1000),
            }
        ],
        "writer": [{"name": "writer_dst-0_6379", "unanswered_bytes": 0, "unanswered_entries": 0}],
    }


def sample(
    at: float,
    doc: dict[str, Any] | None,
    source_offset: int | None,
    *,
    restarts: int = 0,
    master: Endpoint = MASTER,
    slots: tuple[tuple[int, int], ...] = SLOTS,
    target: Endpoint = TARGET_MASTER,
) -> Sample:
    return Sample(
        at=at,
        status=parse_status(doc) if doc is not None else None,
        restarts=restarts,
        source_master=master,
        source_offset=source_offset,
        source_slots=slots,
        target_master=target,
    )


def test_parse_status_reads_the_reader_offsets() -> None:
    status = parse_status(status_doc("syncing aof", 5000, rdb=1_048_576, consistent=True))
    assert (status.phase, status.received_offset, status.rdb_bytes, status.rdb_total, status.consistent) == (
        "syncing aof",
        5000,
        1_048_576,
        1_048_576,
        True,
    )
    assert parse_status({}).phase == "unknown"


def test_parse_status_of_a_standalone_reader_object() -> None:
    listed = status_doc("syncing aof", 7000, consistent=True)
    single = dict(listed, reader=listed["reader"][0])
    assert parse_status(single) == parse_status(listed)
    assert parse_status(single).received_offset == 7000


def test_healthy_with_lag_in_bytes_and_seconds() -> None:
    samples = [
        sample(0, status_doc("syncing aof", 1000), 2000),
        sample(10, status_doc("syncing aof", 2500), 3000),
    ]
    decision = decide(WORKLOAD, samples, POLICY)
    assert (decision.state, decision.action) == (State.HEALTHY, Action.NONE)
    # 500 bytes behind; the source writes 100 B/s -> 5 s.
    assert (decision.lag_bytes, decision.lag_seconds) == (500, 5.0)
    assert lag([sample(0, status_doc("syncing aof", 3000), 3000)]) == (0, 0.0)


def test_rdb_phase_is_reported_with_progress() -> None:
    decision = decide(WORKLOAD, [sample(0, status_doc("receiving rdb", 0, rdb=4096), 100)], POLICY)
    assert decision.state is State.SYNCING_RDB and "4096/1048576" in decision.reason
    assert decision.lag_bytes == 100


def test_stall_while_the_source_writes_restarts_with_full_resync() -> None:
    samples = [sample(t * 10, status_doc("syncing aof", 1000), 1000 + t * 400) for t in range(4)]
    decision = decide(WORKLOAD, samples, POLICY)
    assert (decision.state, decision.action) == (State.STALLED, Action.RESTART)
    assert "1200 bytes" in decision.reason


def test_frozen_offsets_without_source_writes_are_not_a_stall() -> None:
    samples = [sample(t * 10, status_doc("syncing aof", 1000), 1000) for t in range(4)]
    decision = decide(WORKLOAD, samples, POLICY)
    assert (decision.state, decision.action, decision.lag_bytes) == (State.HEALTHY, Action.NONE, 0)


def test_silent_status_port_restarts_and_crash_loop_is_only_reported() -> None:
    silent = [sample(t * 10, None, 1000 + t) for t in range(3)]
    assert decide(WORKLOAD, silent, POLICY).action is Action.RESTART
    looping = [sample(t * 10, status_doc("hand shaking", 0), 1000, restarts=t) for t in range(4)]
    decision = decide(WORKLOAD, looping, POLICY)
    assert (decision.state, decision.action) == (State.CRASH_LOOPING, Action.NONE)


def test_topology_changes_replan() -> None:
    doc = status_doc("syncing aof", 1000)
    moved = decide(WORKLOAD, [sample(0, doc, 1000, master=Endpoint("src-0r", 6379))], POLICY)
    assert (moved.state, moved.action) == (State.SOURCE_FAILOVER, Action.REPLAN)
    assert "src-0:6379 -> src-0r:6379" in moved.reason
    resharded = decide(WORKLOAD, [sample(0, doc, 1000, slots=((0, 5000),))], POLICY)
    assert (resharded.state, resharded.action) == (State.RESHARDED, Action.REPLAN)
    target = decide(WORKLOAD, [sample(0, doc, 1000, target=Endpoint("dst-1", 6379))], POLICY)
    assert (target.state, target.action) == (State.TARGET_FAILOVER, Action.REPLAN)
    assert decide(WORKLOAD, [], POLICY).state is State.UNKNOWN


def test_a_dead_reader_replans_onto_another_healthy_node_of_its_shard() -> None:
    """Issue 13 (a): the node a workload reads does not answer. With another healthy node in the
    shard the workload is re-planned (a restart would dial the dead address again); with none, it is
    judged as before (nothing to move to)."""
    reader = WORKLOAD.reader
    assert reader == Endpoint("src-0r", 6379)
    dead = replace(sample(0, None, 1000), reader_answers=False, shard_nodes=(MASTER,))
    decision = decide(WORKLOAD, [dead], POLICY)
    assert (decision.state, decision.action) == (State.READER_DOWN, Action.REPLAN)
    assert "src-0r:6379, does not answer" in decision.reason and "src-0:6379" in decision.reason
    # The dead node still listed as healthy by the shard does not count as somewhere to go.
    alone = replace(dead, shard_nodes=(reader,))
    assert decide(WORKLOAD, [alone], POLICY).action is Action.NONE
    # It answers: nothing changes (a healthy sample stays healthy).
    up = replace(sample(0, status_doc("syncing aof", 1000), 1000), reader_answers=True, shard_nodes=(MASTER,))
    assert decide(WORKLOAD, [up], POLICY).state is State.HEALTHY
    # Not observed (the operator's samples): never a re-plan on that account.
    assert decide(WORKLOAD, [sample(0, status_doc("syncing aof", 1000), 1000)], POLICY).state is State.HEALTHY
    # A source failover is named as such, before the dead reader.
    moved = replace(dead, source_master=reader)
    assert decide(WORKLOAD, [moved], POLICY).state is State.SOURCE_FAILOVER


def test_lag_prefers_the_offset_acked_to_the_source_over_the_status_document() -> None:
    from dataclasses import replace

    # redis-shake says it received 2500, but the source has seen ACKs for 2800 only (or the other
    # way round after a restart): the source's own view wins, the status document is the fallback.
    acked = replace(sample(10, status_doc("syncing aof", 2500), 3000), acked_offset=2800)
    assert lag([acked]) == (200, None)
    no_status = replace(sample(10, None, 3000), acked_offset=3000)
    assert lag([no_status]) == (0, 0.0)
    assert lag([sample(10, None, 3000)]) == (None, None)


def test_write_lag_is_what_was_received_but_not_handed_to_the_writer() -> None:
    doc = status_doc("syncing aof", 2500)
    doc["reader"][0]["aof_sent_offset"] = 2100
    decision = decide(WORKLOAD, [sample(10, doc, 3000)], POLICY)
    assert (decision.lag_bytes, decision.write_lag_bytes) == (500, 900)
    # During the full sync the sent offset means nothing yet: no write lag rather than a wrong one.
    rdb = decide(WORKLOAD, [sample(10, status_doc("receiving rdb", 0, rdb=10), 3000)], POLICY)
    assert rdb.write_lag_bytes is None
    assert decide(WORKLOAD, [sample(10, None, 3000)], POLICY).write_lag_bytes is None


def test_waiting_for_the_readers_own_bgsave_is_reported_not_restarted() -> None:
    from dataclasses import replace

    # Frozen in "waiting bgsave" while the source writes would be a stall (restart) ...
    frozen = [sample(t * 10, status_doc("waiting bgsave", 0), 1000 + t * 400) for t in range(4)]
    assert decide(WORKLOAD, frozen, POLICY).action is Action.RESTART
    # ... unless the reader is busy with a BGSAVE of its own: a restart would only wait again (#973).
    busy = [replace(s, reader_saving=True) for s in frozen]
    decision = decide(WORKLOAD, busy, POLICY)
    assert (decision.state, decision.action) == (State.WAITING_FOR_BGSAVE, Action.NONE)
    assert "src-0r:6379" in decision.reason and "#973" in decision.reason and "save" in decision.reason
    # Once streaming, a BGSAVE on the reader is irrelevant.
    streaming = [replace(sample(0, status_doc("syncing aof", 900), 1000), reader_saving=True)]
    assert decide(WORKLOAD, streaming, POLICY).state is State.HEALTHY


def test_v3_without_a_status_port_is_judged_by_the_offsets_it_acks() -> None:
    from dataclasses import replace

    def v3(at: float, acked: int | None, source: int) -> Sample:
        return replace(sample(at, None, source), acked_offset=acked, status_expected=False)

    # Silence is normal for v3: never "status port silent", never a restart for it.
    streaming = [v3(t * 10, 1000 + t * 400, 1000 + t * 400) for t in range(5)]
    decision = decide(WORKLOAD, streaming, POLICY)
    assert (decision.state, decision.action, decision.lag_bytes) == (State.HEALTHY, Action.NONE, 0)
    behind = decide(WORKLOAD, [v3(0, 900, 1000), v3(10, 1900, 2000)], POLICY)
    assert (behind.lag_bytes, behind.lag_seconds, behind.reason) == (100, 1.0, "syncing")
    # Its ACKs frozen while the source writes: a stall, restarted with a full resync.
    frozen = [v3(t * 10, 1000, 1000 + t * 400) for t in range(4)]
    assert (decide(WORKLOAD, frozen, POLICY).state, decide(WORKLOAD, frozen, POLICY).action) == (
        State.STALLED,
        Action.RESTART,
    )
    # Not connected to the source at all: unknown, reported, not restarted on that alone.
    gone = decide(WORKLOAD, [v3(0, None, 1000)], POLICY)
    assert (gone.state, gone.action) == (State.UNKNOWN, Action.NONE) and "not connected" in gone.reason
