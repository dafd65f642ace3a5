"""Local syncs (``sync/local_runner.py``, ``moorage sync start/status/stop --local``, cutover by name):
Moorage launching and supervising redis-shake processes on 127.0.0.1.

Real: a 3-shard cluster source with one replica per shard, a standalone target, the plan observed
from them, the processes (spawned, found by PID and cmdline, signalled, restarted), the source's
offsets and replication consumers, CLIENT PAUSE and verify in the cutover.

Stand-in (no redis-shake binary can be installed here): ``tests/integration/shake_standin.py``, an
executable NAMED as a stand-in, run in redis-shake's place through ``$MOORAGE_REDIS_SHAKE``. It reads
``shake.toml`` as redis-shake does, connects to the planned reader announcing its status port, serves
a status document shaped like redis-shake v4's, and stalls on SIGUSR1. It moves no data: the test
fills the target itself with DUMP/RESTORE.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from middleware.engines.redis.cluster import create_cluster
from sync.local_runner import LocalSyncs, SyncStatus
from sync.supervisor import Policy
from sync.verify import RedisURL
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("shake_standin.py")
NAME = "orders"
WORKLOADS = [f"{NAME}-shard-{i}" for i in range(3)]


def _cli(state: Path, *args: str, shake: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MOORAGE_STATE_DIR": str(state),
        "MOORAGE_SOURCE_PASSWORD": PASSWORD,
        "MOORAGE_TARGET_PASSWORD": PASSWORD,
    }
    env.pop("MOORAGE_REDIS_SHAKE", None)
    if shake is not None:
        env["MOORAGE_REDIS_SHAKE"] = str(shake)
    else:
        env["PATH"] = "/usr/bin:/bin"  # no redis-shake there
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _url(process: RedisProcess) -> str:
    return f"redis://{process.endpoint.address}"  # passwords from the environment


def _port_base() -> int:
    """Three consecutive free status ports."""
    for _ in range(50):
        base = free_port()
        if base + 2 < 65536 and all(_bindable(base + i) for i in range(1, 3)):
            return base
    raise RuntimeError("no three consecutive free ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ours(pid: int | None, config: Path) -> bool:
    if not pid:
        return False
    try:
        return str(config).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


@dataclass
class Setup:
    state: Path
    shake: Path
    members: list[RedisProcess]
    target: RedisProcess
    cluster: redis.RedisCluster
    base: int
    started: set[tuple[int, Path]]  # every (pid, config) seen, killed by PID at the end

    def config(self, workload: str) -> Path:
        return (self.state / "syncs" / NAME / workload / "shake.toml").resolve()

    def record(self, report: SyncStatus | dict[str, object]) -> dict[str, int]:
        rows = report.as_dict()["workloads"] if isinstance(report, SyncStatus) else report["workloads"]
        pids = {str(w["name"]): int(w["pid"]) for w in rows if w.get("pid")}  # type: ignore[union-attr]
        for workload, pid in pids.items():
            self.started.add((pid, self.config(workload)))
        return pids


@pytest.fixture
def setup(redis_group: RedisNodes, tmp_path: Path) -> Iterator[Setup]:
    members = redis_group.start(6, cluster=True, prefix="src")
    create_cluster([[members[i].endpoint, members[i + 3].endpoint] for i in range(3)], PASSWORD, timeout=60)
    target = redis_group.add("target", cluster=False)
    for replica in members[3:]:
        with replica.client() as r:
            # A replica still in its first sync is not healthy, and the plan would read the master.
            wait_until(
                lambda r=r: r.info("replication"),
                lambda info: info.get("master_link_status") == "up",
                30,
                f"{replica.endpoint} linked to its master",
            )
    # redis-shake's place: the stand-in, through the interpreter that has the project installed.
    shake = tmp_path / "redis-shake-standin"
    shake.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{STANDIN}' \"$@\"\n")
    shake.chmod(0o755)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    found = Setup(tmp_path / "state", shake, members, target, cluster, _port_base(), set())
    try:
        yield found
    finally:
        cluster.close()
        state_file = found.state / "syncs" / NAME / "state.json"
        if state_file.exists():
            for w in json.loads(state_file.read_text())["workloads"]:
                if w.get("pid"):
                    found.started.add((int(w["pid"]), found.config(w["name"])))
        for pid, config in found.started:
            if _ours(pid, config):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _write(cluster: redis.RedisCluster, start: int, count: int) -> None:
    for i in range(start, start + count):
        cluster.set(f"item:{i}", i)


def _all_healthy(syncs: LocalSyncs) -> SyncStatus:
    return wait_until(
        lambda: syncs.status(NAME),
        lambda report: all(
            w.alive and w.decision.state == "Healthy" and w.decision.lag_bytes == 0 for w in report.workloads
        ),
        60,
        "every workload Healthy with lag 0",
    )


def _acked(setup: Setup, report: SyncStatus, workloads: list[str]) -> None:
    """Wait until each of ``workloads`` has ACKed everything the node it reads has (the source's view)."""
    for w in report.workloads:
        if w.name not in workloads:
            continue
        host, port = w.reader.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), password=PASSWORD) as r:
            wait_until(
                lambda r=r: r.info("replication"),
                lambda info, w=w: any(
                    isinstance(v, dict)
                    and v.get("port") == w.status_port
                    and v.get("state") == "online"
                    and v.get("offset") == info["master_repl_offset"]
                    for v in info.values()
                ),
                30,
                f"{w.name} to ACK what {w.reader} has",
            )


def test_start_supervise_cutover_stop(setup: Setup) -> None:
    source, target = _url(setup.members[1]), _url(setup.target)
    _write(setup.cluster, 0, 300)
    base = str(setup.base)
    started = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                   "--status-port-base", base, "-o", "json", shake=setup.shake)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    assert PASSWORD not in started.stdout + started.stderr
    pids = setup.record(json.loads(started.stdout))
    assert sorted(pids) == WORKLOADS
    assert all(_ours(pid, setup.config(w)) for w, pid in pids.items()), "3 stand-in processes alive"
    state_text = (setup.state / "syncs" / NAME / "state.json").read_text()
    assert PASSWORD not in state_text and quote(PASSWORD) not in state_text
    state = json.loads(state_text)
    assert state["source"] == f"redis://:***@{setup.members[1].endpoint.address}/0"
    assert [w["statusPort"] for w in state["workloads"]] == [setup.base + i for i in range(3)]
    assert all(w["startedAt"] and w["reader"] and w["sourceMaster"] for w in state["workloads"])

    again = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                 "--status-port-base", base, shake=setup.shake)  # fmt: skip
    assert again.returncode == 2 and f"local sync {NAME!r} is already running" in again.stderr

    syncs = LocalSyncs(setup.state, policy=Policy(stall_samples=3, silent_samples=3))
    _write(setup.cluster, 300, 300)
    healthy = _all_healthy(syncs)
    assert {w.name: w.pid for w in healthy.workloads} == pids
    assert all(w.phase == "syncing aof" and w.acked_offset == w.source_offset for w in healthy.workloads)
    shown = _cli(setup.state, "status", NAME, "--local", "-o", "json", shake=setup.shake)
    assert shown.returncode == 0, shown.stderr
    assert [w["name"] for w in json.loads(shown.stdout)["workloads"]] == WORKLOADS

    # Stall shard 1 (redis-shake's silent stall); the source keeps writing to every shard.
    stalled = WORKLOADS[1]
    os.kill(pids[stalled], signal.SIGUSR1)
    syncs = LocalSyncs(setup.state, policy=Policy(stall_samples=3, silent_samples=3))  # fresh history
    report = syncs.supervise_once(NAME)
    for round_ in range(12):
        if report.acted:
            break
        _write(setup.cluster, 1000 + round_ * 100, 100)
        _acked(setup, report, [w for w in WORKLOADS if w != stalled])
        report = syncs.supervise_once(NAME)
    assert len(report.acted) == 1 and report.acted[0].startswith(f"{stalled}: restarted"), report.acted
    after = setup.record(report)
    assert after[stalled] != pids[stalled]
    assert {w: p for w, p in after.items() if w != stalled} == {w: p for w, p in pids.items() if w != stalled}
    record = {
        w["name"]: w
        for w in json.loads((setup.state / "syncs" / NAME / "state.json").read_text())["workloads"]
    }
    assert record[stalled]["restarts"] == 1 and "no progress" in record[stalled]["lastRestartReason"]
    assert all(record[w]["restarts"] == 0 for w in WORKLOADS if w != stalled)
    assert not _ours(pids[stalled], setup.config(stalled)), "the stalled process was killed"
    _all_healthy(syncs)

    # A workload that died is started again by `start`, the others are left alone.
    os.kill(after[WORKLOADS[0]], signal.SIGKILL)
    wait_until(
        lambda: _ours(after[WORKLOADS[0]], setup.config(WORKLOADS[0])),
        lambda alive: not alive,
        10,
        "shard 0 gone",
    )
    restarted = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                     "--status-port-base", base, "-o", "json", shake=setup.shake)  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    now = setup.record(json.loads(restarted.stdout))
    assert now[WORKLOADS[0]] != after[WORKLOADS[0]] and now[WORKLOADS[1]] == after[WORKLOADS[1]]
    _all_healthy(syncs)

    with setup.target.client() as t:
        for node in setup.cluster.get_primaries():
            primary = setup.cluster.get_redis_connection(node)
            for key in primary.scan_iter(count=1000):
                t.restore(key, 0, primary.dump(key), replace=True)  # test setup, not a sync

    done = _cli(setup.state, "cutover", "--source", source, "--target", target, "--name", NAME, "--yes",
                "--pause", "30", "--drain-timeout", "10", "--unpause", "-o", "json",
                shake=setup.shake)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cut = json.loads(done.stdout)
    assert cut["ok"] and cut["reason"].startswith("forward workloads stopped"), cut
    assert cut["lagBytes"] == dict.fromkeys(WORKLOADS, 0) and cut["verify"]["equal"]
    assert not any(_ours(pid, setup.config(w)) for w, pid in now.items()), "cutover stopped the processes"
    assert json.loads((setup.state / "syncs" / NAME / "state.json").read_text())["stopped"] is True

    noop = _cli(setup.state, "stop", NAME, "--local", "-o", "json", shake=setup.shake)
    assert noop.returncode == 0, noop.stderr
    assert json.loads(noop.stdout)["wasRunning"] is False


def test_missing_binary_and_unknown_sync(tmp_path: Path) -> None:
    missing = _cli(tmp_path, "start", "--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:2")
    assert missing.returncode == 2
    assert "redis-shake not found" in missing.stderr and "moorage sync plan --out" in missing.stderr
    assert not (tmp_path / "syncs").exists()
    unknown = _cli(tmp_path, "stop", "nothing-here", "--local")
    assert unknown.returncode == 2 and "no local sync named 'nothing-here'" in unknown.stderr
    bad = tmp_path / "not-executable"
    bad.write_text("")
    refused = _cli(tmp_path, "start", "--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:2",
                   shake=bad)  # fmt: skip
    assert refused.returncode == 2 and "MOORAGE_REDIS_SHAKE" in refused.stderr


def test_stop_of_a_sync_kills_only_its_own_processes(setup: Setup) -> None:
    """A recorded PID that is no longer ours (exited, or recycled by another program) is not signalled."""
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.members[0].endpoint, None, PASSWORD, 0),
        RedisURL(setup.target.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=str(setup.shake),
    )
    pids = setup.record(report)
    # Point one workload's record at an unrelated process of ours: stop must leave it alone.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state_file = setup.state / "syncs" / NAME / "state.json"
        state = json.loads(state_file.read_text())
        state["workloads"][2]["pid"] = bystander.pid
        state_file.write_text(json.dumps(state))
        os.kill(pids[WORKLOADS[2]], signal.SIGKILL)  # the real one is gone; the fixture reaps it
        assert syncs.stop(NAME) is True
        assert bystander.poll() is None, "a PID that is not ours was signalled"
        assert not any(_ours(pids[w], setup.config(w)) for w in WORKLOADS[:2])
        assert syncs.stop(NAME) is False
    finally:
        bystander.kill()
        bystander.wait()


def test_status_watch_supervises_until_a_stall_is_restarted(setup: Setup) -> None:
    """`status --local --supervise --watch`: the local counterpart of the operator's timer. One CLI
    process keeps the samples, so a stall (which needs several) is seen and restarted."""
    import threading

    source, target = _url(setup.members[1]), _url(setup.target)
    started = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                   "--status-port-base", str(setup.base), "-o", "json", shake=setup.shake)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    pids = setup.record(json.loads(started.stdout))
    _all_healthy(LocalSyncs(setup.state))
    stalled = WORKLOADS[2]
    os.kill(pids[stalled], signal.SIGUSR1)
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        n = 0
        while writing.is_set():  # the source keeps writing: a frozen reader is then a stall
            _write(setup.cluster, 5000 + n, 20)
            n += 20
            time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        watch = ("--supervise", "--watch", "0.5", "--count", "40", "-o", "json")
        watched = _cli(setup.state, "status", NAME, "--local", *watch, shake=setup.shake)
    finally:
        writing.clear()
        thread.join(timeout=10)
    assert watched.returncode == 0, watched.stderr
    passes = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert len(passes) == 40
    acted = [line for p in passes for line in p.get("acted", [])]
    assert any(line.startswith(f"{stalled}: restarted") for line in acted), acted
    assert not any(line.startswith(f"{w}:") for line in acted for w in WORKLOADS if w != stalled), acted
    after = setup.record(passes[-1])
    assert after[stalled] != pids[stalled]
    LocalSyncs(setup.state).stop(NAME)


def test_a_source_failover_re_plans_only_that_shards_workload(setup: Setup) -> None:
    """A real CLUSTER FAILOVER of shard 0: the next supervision passes re-plan that workload onto the
    shard's new layout (new config, new process) and leave the other shards' processes alone."""
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.members[1].endpoint, None, PASSWORD, 0),
        RedisURL(setup.target.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=str(setup.shake),
    )
    pids = setup.record(report)
    _all_healthy(syncs)
    shard0 = WORKLOADS[0]
    before = tomllib.loads(setup.config(shard0).read_text())["sync_reader"]["address"]
    old_master, new_master = setup.members[0], setup.members[3]
    with new_master.client() as client:
        client.execute_command("CLUSTER", "FAILOVER")
        wait_until(
            lambda: client.info("replication")["role"], lambda role: role == "master", 30, "the failover"
        )

    def replanned() -> SyncStatus | None:
        found = syncs.supervise_once(NAME)
        return found if any(line.startswith(f"{shard0}: re-planned") for line in found.acted) else None

    after = wait_until(replanned, lambda found: found is not None, 60, f"{shard0} re-planned")
    assert after is not None
    assert not any(line.startswith((f"{WORKLOADS[1]}:", f"{WORKLOADS[2]}:")) for line in after.acted), (
        after.acted
    )
    now = setup.record(after)
    assert now[shard0] != pids[shard0]
    assert {w: now[w] for w in WORKLOADS[1:]} == {w: pids[w] for w in WORKLOADS[1:]}
    records = {
        w["name"]: w
        for w in json.loads((setup.state / "syncs" / NAME / "state.json").read_text())["workloads"]
    }
    assert records[shard0]["sourceMaster"] == new_master.endpoint.address
    assert records[shard0]["lastRestartReason"].startswith("re-planned:")
    assert "source master moved" in records[shard0]["lastRestartReason"]
    config = tomllib.loads(setup.config(shard0).read_text())["sync_reader"]["address"]
    # Read before: the replica that just took over. Now: the shard's replica (the old master) once it
    # is healthy again, else the new master itself.
    assert before == new_master.endpoint.address
    assert config in {old_master.endpoint.address, new_master.endpoint.address}
    syncs.stop(NAME)
