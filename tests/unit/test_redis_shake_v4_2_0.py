"""What Moorage reads from and writes for redis-shake, checked against v4.2.0 itself.

- ``STATUS_FIELDS`` / ``parse_status`` on status documents the real binary served
  (``recorded/redis_shake_v4.2.0_status.json``, see its ``_about``), including its quirks: ``reader``
  is null before the first refresh, ``aof_sent_offset`` stays 0 until the first command after the RDB.
- ``SHAKE_KEYS["v4"]`` against the ``mapstructure`` tags of the vendored source (v4.2.0 ignores keys
  it does not know, so a misspelt key would be dropped silently, not refused).
- Where the local runner finds the binary; which keys a workload's share of the target holds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from middleware.endpoints import Endpoint
from middleware.models.sync import RedisEndpointKind, SyncFilter
from sync import local_runner
from sync.plan import RedisTopology, Replica, Shard, plan, standalone
from sync.shake_config import SHAKE_KEYS, render_v4
from sync.share import Share, passes
from sync.supervisor import Action, Policy, Sample, State, decide, parse_status, write_lag

RECORDED = json.loads((Path(__file__).parent / "recorded" / "redis_shake_v4.2.0_status.json").read_text())
VENDORED = Path(
    os.environ.get("MOORAGE_REDIS_SHAKE_SRC")
    or Path(__file__).resolve().parents[3] / "shared" / "vendor" / "redis-shake-v4.2.0"
)
START = 27_400_606  # the FULLRESYNC offset of the recorded run


def doc(phase: str) -> dict[str, Any]:
    document: dict[str, Any] = RECORDED[phase]
    return document


def test_the_recorded_phases_parse() -> None:
    waiting = parse_status(doc("waiting bgsave"))
    assert (waiting.phase, waiting.received_offset, waiting.rdb_bytes) == ("waiting bgsave", START, 0)
    loading = parse_status(doc("syncing rdb"))
    assert (loading.phase, loading.rdb_bytes, loading.rdb_total, loading.rdb_sent) == (
        "syncing rdb",
        4_891_791,
        4_891_791,
        0,
    )
    streaming = parse_status(doc("syncing aof, after a write"))
    assert (streaming.received_offset, streaming.sent_offset, streaming.consistent) == (
        START + 82,
        START + 82,
        True,
    )
    # The standalone reader's stat is one object; a cluster reader's would be a list of them.
    assert isinstance(doc("syncing aof")["reader"], dict)


def test_sent_offset_zero_right_after_the_rdb_means_the_stream_start() -> None:
    """v4.2.0 leaves aof_sent_offset at 0 until the first command after the RDB; taken literally the
    write lag would be the whole offset and a cutover of an idle source would never drain."""
    raw = doc("syncing aof")["reader"]
    assert raw["aof_sent_offset"] == 0 and raw["aof_received_offset"] == START + 28
    status = parse_status(doc("syncing aof"))
    assert status.sent_offset == START  # received minus the bytes received since the FULLRESYNC
    workload = _workload()
    at_start = Sample(0, status, 0, workload.source_master, START)
    assert write_lag([at_start]) == 0
    assert write_lag([Sample(0, status, 0, workload.source_master, START + 28)]) == 28


def test_null_reader_before_the_first_refresh() -> None:
    """The document is rebuilt once a second; before the first refresh ``reader`` and ``writer`` are
    null (internal/status: ``stat.Reader`` is only set by the ticker)."""
    first = {"start_time": "2026-12-04 07:28:08", "consistent": False, "reader": None, "writer": None}
    status = parse_status(first)
    assert status.phase == "unknown" and status.received_offset is None
    decision = decide(_workload(), [Sample(0, status, 0, _workload().source_master, START)])
    assert decision.state is State.SYNCING_RDB and decision.action is Action.NONE


def test_loading_the_rdb_into_the_target_is_reported_as_written_bytes() -> None:
    workload = _workload()
    loading = Sample(0, parse_status(doc("syncing rdb")), 0, workload.source_master, START)
    decision = decide(workload, [loading])
    assert decision.state is State.SYNCING_RDB
    assert decision.reason == "syncing rdb: 0/4891791 RDB bytes written to the target"


def test_loading_the_rdb_is_progress_not_a_stall() -> None:
    """While it writes the RDB into the target, rdb_sent_bytes moves: not a stall even when the
    received offset stands still while the source writes."""
    workload = _workload()
    loading = doc("syncing rdb")
    samples = []
    for i in range(4):
        document = json.loads(json.dumps(loading))
        document["reader"]["rdb_sent_bytes"] = i * 1_000_000
        samples.append(Sample(i, parse_status(document), 0, workload.source_master, START + i * 500))
    decision = decide(workload, samples, Policy(stall_samples=3))
    assert decision.state is State.SYNCING_RDB, decision


def test_v4_config_keys_are_the_ones_v4_2_0_reads() -> None:
    if not (VENDORED / "internal" / "config" / "config.go").is_file():
        pytest.skip(f"no redis-shake v4.2.0 source at {VENDORED} ($MOORAGE_REDIS_SHAKE_SRC)")
    files = {
        "sync_reader": "internal/reader/sync_standalone_reader.go",
        "redis_writer": "internal/writer/redis_standalone_writer.go",
        "filter": "internal/config/config.go",
        "advanced": "internal/config/config.go",
    }
    structs = {
        "sync_reader": "SyncReaderOptions",
        "redis_writer": "RedisWriterOptions",
        "filter": "FilterOptions",
        "advanced": "AdvancedOptions",
    }
    for section, key in SHAKE_KEYS["v4"].values():
        source = (VENDORED / files[section]).read_text()
        body = re.search(rf"type {structs[section]} struct \{{(.*?)\n\}}", source, re.S)
        assert body, f"{structs[section]} not found in {files[section]}"
        tags = set(re.findall(r'mapstructure:"([^"]+)"', body.group(1)))
        assert key in tags, f"[{section}] {key}: not a key redis-shake v4.2.0 reads ({sorted(tags)})"
    text = render_v4(_workload(), source_password="p", target_password="q")
    assert "rdb_restore_command_behavior" in text  # kept, though sync_reader never sends RESTORE (#921)


def test_the_binary_is_found_in_the_environment_then_the_build_cache_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    on_path = executable(tmp_path / "bin" / "redis-shake")
    cached = executable(tmp_path / "cache" / local_runner.SHAKE_VERSION / "redis-shake")
    explicit = executable(tmp_path / "explicit" / "redis-shake")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("MOORAGE_REDIS_SHAKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOORAGE_REDIS_SHAKE", str(explicit))
    assert local_runner.find_binary() == str(explicit)
    monkeypatch.delenv("MOORAGE_REDIS_SHAKE")
    assert local_runner.find_binary() == str(cached)
    cached.unlink()
    assert local_runner.find_binary() == str(on_path)
    on_path.unlink()
    with pytest.raises(local_runner.LocalSyncError) as missing:
        local_runner.find_binary()
    assert "make redis-shake" in str(missing.value) and "hack/build-redis-shake.sh" in str(missing.value)
    assert str(cached) in str(missing.value)
    monkeypatch.delenv("MOORAGE_REDIS_SHAKE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert local_runner.cached_binary() == tmp_path / "home/.cache/moorage/redis-shake/v4.2.0/redis-shake"


def test_a_share_is_its_shard_slots_and_filter() -> None:
    prefixes = SyncFilter(allow_key_prefixes=["a:"], block_key_prefixes=["a:tmp:"])
    shard = Share(slots=((0, 5460),), filter=prefixes, cluster_source=True)
    # key_slot("a:{x}") hashes "x" (slot 16287), "a:{b}" hashes "b" (slot 3300).
    assert shard.holds(b"a:{b}") and not shard.holds(b"a:{x}")
    assert not shard.holds(b"a:tmp:{b}") and not shard.holds(b"z:{b}")
    assert shard.databases([0, 3]) == [0] and shard.databases([2]) == []
    whole = Share(filter=SyncFilter(allow_dbs=[0, 2]))
    assert whole.holds(b"anything") and whole.databases([0, 1, 2]) == [0, 2]
    assert Share().databases([0, 1, 5]) == [0, 1, 5]
    assert passes(b"\xff\xfe", SyncFilter(block_key_prefixes=["x"]))  # binary keys are keys too


def _workload():  # type: ignore[no-untyped-def]
    source = RedisTopology(
        RedisEndpointKind.CLUSTER,
        (Shard(Endpoint("src-0", 6379), (Replica(Endpoint("src-0r", 6379), True),), ((0, 5460),)),),
    )
    (workload,) = plan("orders", source, standalone(Endpoint("dst", 6379)))
    return workload
