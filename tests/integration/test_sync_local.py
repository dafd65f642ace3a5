"""Local syncs (``sync/local_runner.py``, ``moorage sync start/status/stop --local``, cutover by name):
Moorage launching and supervising the real redis-shake on 127.0.0.1.

Everything is real: a 3-shard cluster source with one replica per shard (or a standalone source), a
standalone target, the plan observed from them, redis-shake v4.2.0 (``hack/build-redis-shake.sh``)
moving the data, the processes (spawned, found by PID and cmdline, signalled, restarted), the
source's offsets and replication consumers, CLIENT PAUSE and ``moorage sync verify``. Every test ends
with verify finding no difference: nothing but redis-shake writes the target.

The data includes lists, hashes, sets and sorted sets: a restart is a full sync over keys the previous
run wrote, which only comes out equal because Moorage empties the workload's share first
(``sync.share``; a second full sync would append every list again, upstream #921).

Faults are made on the real binary: a stall is the process frozen (SIGSTOP: its status port stops
answering, it stops ACKing); the silent stall of upstream #956 (status port answering, offsets
frozen) is its replication connection frozen in a TCP proxy between it and the source
(``tests/integration/tcp_proxy.py``); a crash is SIGKILL; a source failover is a real CLUSTER
FAILOVER.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster import create_cluster
from middleware.engines.redis.cluster_migrate import migrate_slots
from middleware.engines.redis.sentinel import bootstrap_sentinel, failover, wait_for_new_master
from sync.local_runner import SHAKE_VERSION, LocalSyncs, SyncStatus
from sync.supervisor import Policy
from sync.verify import RedisURL
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, wait_until
from tests.integration.sentinel_harness import Deployment, SentinelHarness
from tests.integration.shake_harness import status_port_base
from tests.integration.tcp_proxy import FreezingProxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "orders"
WORKLOADS = [f"{NAME}-shard-{i}" for i in range(3)]
HEALTHY_TIMEOUT = 120


def _cli(state: Path, *args: str, cache: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: redis-shake found in the build cache ``cache`` (not through
    ``$MOORAGE_REDIS_SHAKE``, and none on ``PATH``)."""
    env = {
        **os.environ,
        "MOORAGE_STATE_DIR": str(state),
        "MOORAGE_SOURCE_PASSWORD": PASSWORD,
        "MOORAGE_TARGET_PASSWORD": PASSWORD,
        "MOORAGE_REDIS_SHAKE_CACHE": str(cache),
        "PATH": "/usr/bin:/bin",
    }
    env.pop("MOORAGE_REDIS_SHAKE", None)
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _url(process: RedisProcess | FreezingProxy) -> str:
    return f"redis://{process.endpoint.address}"  # passwords from the environment


def _ours(pid: int | None, config: Path) -> bool:
    if not pid:
        return False
    try:
        return str(config).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _cache_with(binary: str, root: Path) -> Path:
    """A build cache laid out as hack/build-redis-shake.sh lays it out, holding the real binary."""
    (root / SHAKE_VERSION).mkdir(parents=True)
    (root / SHAKE_VERSION / "redis-shake").symlink_to(binary)
    return root


@dataclass
class Setup:
    state: Path
    binary: str
    cache: Path
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

    def records(self) -> dict[str, dict[str, object]]:
        state = json.loads((self.state / "syncs" / NAME / "state.json").read_text())
        return {w["name"]: w for w in state["workloads"]}


def _kill_recorded(found: Setup | ProxySetup | SentinelSetup) -> None:
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


@pytest.fixture
def setup(redis_group: RedisNodes, redis_shake: str, tmp_path: Path) -> Iterator[Setup]:
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
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    cache = _cache_with(redis_shake, tmp_path / "cache")
    found = Setup(tmp_path / "state", redis_shake, cache, members, target, cluster, status_port_base(), set())
    try:
        yield found
    finally:
        cluster.close()
        _kill_recorded(found)


def _write(client: redis.Redis | redis.RedisCluster, start: int, count: int) -> None:
    """Strings, and every 10th write also a list push, a hash field, a set and a sorted-set member:
    collections a second full sync over them would corrupt (lists appended twice)."""
    for i in range(start, start + count):
        client.set(f"item:{i}", i)
        if i % 10 == 0:
            client.rpush(f"list:{i % 7}", i)
            client.hset(f"hash:{i % 5}", f"f{i}", i)
            client.sadd(f"set:{i % 4}", i)
            client.zadd(f"zset:{i % 3}", {f"m{i}": i})


def _all_healthy(syncs: LocalSyncs, name: str = NAME) -> SyncStatus:
    return wait_until(
        lambda: syncs.status(name),
        lambda report: all(
            w.alive and w.decision.state == "Healthy" and w.decision.lag_bytes == 0 for w in report.workloads
        ),
        HEALTHY_TIMEOUT,
        "every workload Healthy with lag 0",
        interval=0.5,
    )


def _acked(report: SyncStatus, workloads: list[str]) -> None:
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


def _verify_equal(state: Path, source: str, target: str, cache: Path) -> dict[str, object]:
    """`moorage sync verify`: 0 differences, or the assertion shows them."""
    done = wait_until(
        lambda: _cli(state, "verify", "--source", source, "--target", target, "-o", "json", cache=cache),
        lambda result: result.returncode == 0,
        30,  # what the source wrote last may still be on its way through redis-shake
        "sync verify to find no difference",
        interval=1.0,
    )
    report: dict[str, object] = json.loads(done.stdout)
    assert report["equal"] and report["differences"] == 0, report
    return report


def test_start_supervise_cutover_stop(setup: Setup) -> None:
    source, target = _url(setup.members[1]), _url(setup.target)
    _write(setup.cluster, 0, 300)
    base = str(setup.base)
    started = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                   "--status-port-base", base, "-o", "json", cache=setup.cache)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    assert PASSWORD not in started.stdout + started.stderr
    pids = setup.record(json.loads(started.stdout))
    assert sorted(pids) == WORKLOADS
    assert all(_ours(pid, setup.config(w)) for w, pid in pids.items()), "3 redis-shake processes alive"
    state_text = (setup.state / "syncs" / NAME / "state.json").read_text()
    assert PASSWORD not in state_text and quote(PASSWORD) not in state_text
    state = json.loads(state_text)
    assert state["source"] == f"redis://:***@{setup.members[1].endpoint.address}/0"
    assert [w["statusPort"] for w in state["workloads"]] == [setup.base + i for i in range(3)]
    assert all(w["startedAt"] and w["reader"] and w["sourceMaster"] for w in state["workloads"])
    # Found in the build cache, without $MOORAGE_REDIS_SHAKE.
    assert {w["binary"] for w in state["workloads"]} == {str(setup.cache / SHAKE_VERSION / "redis-shake")}

    again = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                 "--status-port-base", base, cache=setup.cache)  # fmt: skip
    assert again.returncode == 2 and f"local sync {NAME!r} is already running" in again.stderr

    syncs = LocalSyncs(setup.state, policy=Policy(stall_samples=3, silent_samples=3))
    _write(setup.cluster, 300, 300)
    healthy = _all_healthy(syncs)
    assert {w.name: w.pid for w in healthy.workloads} == pids
    assert all(w.phase == "syncing aof" and w.acked_offset == w.source_offset for w in healthy.workloads)
    shown = _cli(setup.state, "status", NAME, "--local", "-o", "json", cache=setup.cache)
    assert shown.returncode == 0, shown.stderr
    assert [w["name"] for w in json.loads(shown.stdout)["workloads"]] == WORKLOADS
    _verify_equal(setup.state, source, target, setup.cache)

    # Freeze shard 1's redis-shake (SIGSTOP); the source keeps writing to every shard.
    stalled = WORKLOADS[1]
    os.kill(pids[stalled], signal.SIGSTOP)
    syncs = LocalSyncs(setup.state, policy=Policy(stall_samples=3, silent_samples=3))  # fresh history
    report = syncs.supervise_once(NAME)
    for round_ in range(12):
        if report.acted:
            break
        _write(setup.cluster, 1000 + round_ * 100, 100)
        _acked(report, [w for w in WORKLOADS if w != stalled])
        report = syncs.supervise_once(NAME)
    assert len(report.acted) == 1 and report.acted[0].startswith(f"{stalled}: restarted"), report.acted
    assert "status port silent" in report.acted[0]
    after = setup.record(report)
    assert after[stalled] != pids[stalled]
    assert {w: p for w, p in after.items() if w != stalled} == {w: p for w, p in pids.items() if w != stalled}
    record = setup.records()
    assert record[stalled]["restarts"] == 1
    assert "status port silent" in str(record[stalled]["lastRestartReason"])
    assert all(record[w]["restarts"] == 0 for w in WORKLOADS if w != stalled)
    # Its share of the target (what its first run wrote) was emptied before the full resync.
    assert int(record[stalled]["clearedKeys"]) > 0  # type: ignore[call-overload]
    assert not _ours(pids[stalled], setup.config(stalled)), "the stalled process was killed"
    _all_healthy(syncs)
    _verify_equal(setup.state, source, target, setup.cache)

    # A workload that died is started again by `start`, the others are left alone.
    os.kill(after[WORKLOADS[0]], signal.SIGKILL)
    wait_until(
        lambda: _ours(after[WORKLOADS[0]], setup.config(WORKLOADS[0])),
        lambda alive: not alive,
        10,
        "shard 0 gone",
    )
    _write(setup.cluster, 3000, 200)  # written while shard 0 has no redis-shake
    restarted = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                     "--status-port-base", base, "-o", "json", cache=setup.cache)  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    now = setup.record(json.loads(restarted.stdout))
    assert now[WORKLOADS[0]] != after[WORKLOADS[0]] and now[WORKLOADS[1]] == after[WORKLOADS[1]]
    _all_healthy(syncs)
    _write(setup.cluster, 4000, 100)

    done = _cli(setup.state, "cutover", "--source", source, "--target", target, "--name", NAME, "--yes",
                "--pause", "40", "--drain-timeout", "20", "--unpause", "-o", "json",
                cache=setup.cache)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cut = json.loads(done.stdout)
    assert cut["ok"] and cut["reason"].startswith("forward workloads stopped"), cut
    assert cut["lagBytes"] == dict.fromkeys(WORKLOADS, 0)
    assert cut["writeLagBytes"] == dict.fromkeys(WORKLOADS, 0)
    keys = sum(setup.cluster.get_redis_connection(n).dbsize() for n in setup.cluster.get_primaries())
    assert cut["verify"]["equal"] and cut["verify"]["checked"] == keys
    assert not any(_ours(pid, setup.config(w)) for w, pid in now.items()), "cutover stopped the processes"
    assert json.loads((setup.state / "syncs" / NAME / "state.json").read_text())["stopped"] is True

    noop = _cli(setup.state, "stop", NAME, "--local", "-o", "json", cache=setup.cache)
    assert noop.returncode == 0, noop.stderr
    assert json.loads(noop.stdout)["wasRunning"] is False


def test_missing_binary_and_unknown_sync(tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    missing = _cli(tmp_path, "start", "--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:2",
                   cache=empty)  # fmt: skip
    assert missing.returncode == 2
    said = " ".join(missing.stderr.split())  # the terminal wraps long lines
    assert "redis-shake not found" in said and "moorage sync plan --out" in said
    assert "make redis-shake" in said and "hack/build-redis-shake.sh" in said
    assert str(empty / SHAKE_VERSION / "redis-shake") in "".join(missing.stderr.split())
    assert not (tmp_path / "syncs").exists()
    unknown = _cli(tmp_path, "stop", "nothing-here", "--local", cache=empty)
    assert unknown.returncode == 2 and "no local sync named 'nothing-here'" in unknown.stderr
    bad = tmp_path / "not-executable"
    bad.write_text("")
    refused = subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", "start", "--source", "redis://127.0.0.1:1",
         "--target", "redis://127.0.0.1:2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "MOORAGE_STATE_DIR": str(tmp_path), "MOORAGE_REDIS_SHAKE": str(bad)},
    )  # fmt: skip
    assert refused.returncode == 2 and "MOORAGE_REDIS_SHAKE" in refused.stderr


def test_stop_of_a_sync_kills_only_its_own_processes(setup: Setup) -> None:
    """A recorded PID that is no longer ours (exited, or recycled by another program) is not signalled;
    redis-shake itself stops on `stop` (SIGINT: v4.2.0 ignores SIGTERM)."""
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.members[0].endpoint, None, PASSWORD, 0),
        RedisURL(setup.target.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=setup.binary,
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
        started = time.monotonic()
        assert syncs.stop(NAME) is True
        assert time.monotonic() - started < 10, "redis-shake should stop on SIGINT, not wait for SIGKILL"
        assert bystander.poll() is None, "a PID that is not ours was signalled"
        assert not any(_ours(pids[w], setup.config(w)) for w in WORKLOADS[:2])
        assert syncs.stop(NAME) is False
    finally:
        bystander.kill()
        bystander.wait()


@dataclass
class ProxySetup:
    state: Path
    cache: Path
    source: RedisProcess
    target: RedisProcess
    proxy: FreezingProxy
    base: int
    started: set[tuple[int, Path]]
    target_proxy: FreezingProxy

    def config(self, workload: str) -> Path:
        return (self.state / "syncs" / NAME / workload / "shake.toml").resolve()


@pytest.fixture
def behind_proxy(redis_group: RedisNodes, redis_shake: str, tmp_path: Path) -> Iterator[ProxySetup]:
    """A standalone source and a standalone target, each also reachable through a FreezingProxy."""
    source = redis_group.add("source", cluster=False)
    target = redis_group.add("target", cluster=False)
    proxy, target_proxy = FreezingProxy(source.endpoint), FreezingProxy(target.endpoint)
    cache = _cache_with(redis_shake, tmp_path / "cache")
    found = ProxySetup(
        tmp_path / "state", cache, source, target, proxy, status_port_base(1), set(), target_proxy
    )
    try:
        yield found
    finally:
        proxy.close()
        target_proxy.close()
        _kill_recorded(found)


def test_status_watch_restarts_a_silent_stall(behind_proxy: ProxySetup) -> None:
    """`status --local --supervise --watch`: the local counterpart of the operator's timer. One CLI
    process keeps the samples, so a stall (which needs several) is seen and restarted. The stall is
    upstream #956's silent one, on the real binary: its replication connection frozen in the proxy,
    its status port still answering with offsets that no longer move while the source writes."""
    setup, proxy = behind_proxy, behind_proxy.proxy
    with setup.source.client() as client:
        _write(client, 0, 500)
    source, target = _url(proxy), _url(setup.target)
    started = _cli(setup.state, "start", "--source", source, "--target", target, "--name", NAME,
                   "--status-port-base", str(setup.base), "-o", "json", cache=setup.cache)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    pids = {w["name"]: w["pid"] for w in json.loads(started.stdout)["workloads"]}
    assert list(pids) == [NAME]
    setup.started.add((pids[NAME], setup.config(NAME)))
    _all_healthy(LocalSyncs(setup.state))
    assert proxy.freeze() >= 1  # redis-shake's replication connection, and nothing else lasting
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        n = 0
        with setup.source.client() as direct:
            while writing.is_set():  # the source keeps writing: frozen offsets are then a stall
                _write(direct, 5000 + n, 20)
                n += 20
                time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        watch = ("--supervise", "--watch", "0.5", "--count", "30", "-o", "json")
        watched = _cli(setup.state, "status", NAME, "--local", *watch, cache=setup.cache, timeout=300)
    finally:
        writing.clear()
        thread.join(timeout=10)
    assert watched.returncode == 0, watched.stderr
    passes = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert len(passes) == 30
    acted = [line for p in passes for line in p.get("acted", [])]
    assert len(acted) == 1 and acted[0].startswith(f"{NAME}: restarted (full resync): no progress"), acted
    # Before the restart: its status port answered (phase shown) while the ACKed offset stood still.
    acting = next(i for i, p in enumerate(passes) if p.get("acted"))
    before = [p["workloads"][0] for p in passes[max(0, acting - 3) : acting]]
    assert before and all(w["phase"] == "syncing aof" for w in before), before
    assert len({w["ackedOffset"] for w in before}) == 1, before
    after = {w["name"]: w["pid"] for w in passes[-1]["workloads"]}
    setup.started.add((after[NAME], setup.config(NAME)))
    assert after[NAME] != pids[NAME]
    assert not _ours(pids[NAME], setup.config(NAME)), "the stalled process was killed"
    syncs = LocalSyncs(setup.state)
    _all_healthy(syncs)
    _verify_equal(setup.state, _url(setup.source), target, setup.cache)
    syncs.stop(NAME)


def _start_cluster_sync(setup: Setup) -> tuple[LocalSyncs, dict[str, int]]:
    """The cluster source into the standalone target through ``LocalSyncs.start``, all Healthy."""
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.members[1].endpoint, None, PASSWORD, 0),
        RedisURL(setup.target.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=setup.binary,
    )
    pids = setup.record(report)
    _all_healthy(syncs)
    return syncs, pids


def test_a_source_failover_re_plans_only_that_shards_workload(setup: Setup) -> None:
    """A real CLUSTER FAILOVER of shard 0: the next supervision passes re-plan that workload onto the
    shard's new layout (new config, new process) and leave the other shards' processes alone; the
    target ends up equal to the source."""
    _write(setup.cluster, 0, 200)
    syncs, pids = _start_cluster_sync(setup)
    shard0 = WORKLOADS[0]
    before = tomllib.loads(setup.config(shard0).read_text())["sync_reader"]["address"]
    old_master, new_master = setup.members[0], setup.members[3]
    with new_master.client() as client:
        client.execute_command("CLUSTER", "FAILOVER")
        wait_until(
            lambda: client.info("replication")["role"], lambda role: role == "master", 30, "the failover"
        )
    _write(setup.cluster, 200, 200)

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
    records = setup.records()
    assert records[shard0]["sourceMaster"] == new_master.endpoint.address
    assert str(records[shard0]["lastRestartReason"]).startswith("re-planned:")
    assert "source master moved" in str(records[shard0]["lastRestartReason"])
    config = tomllib.loads(setup.config(shard0).read_text())["sync_reader"]["address"]
    # Read before: the replica that just took over. Now: the shard's replica (the old master) once it
    # is healthy again, else the new master itself.
    assert before == new_master.endpoint.address
    assert config in {old_master.endpoint.address, new_master.endpoint.address}
    _all_healthy(syncs)
    _write(setup.cluster, 400, 100)
    _verify_equal(setup.state, _url(setup.members[1]), _url(setup.target), setup.cache)
    syncs.stop(NAME)


@contextlib.contextmanager
def _writing(client: redis.Redis | redis.RedisCluster, prefix: str) -> Iterator[list[int]]:
    """A writer running on the source for the duration: ``<prefix>:N`` keys, the numbers the source
    acknowledged collected in the list it yields (read it after the block)."""
    acked: list[int] = []
    running = threading.Event()
    running.set()

    def run() -> None:
        n = 0
        while running.is_set():
            try:
                client.set(f"{prefix}:{n}", n)
            except redis.RedisError:
                time.sleep(0.05)
                continue
            acked.append(n)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield acked
    finally:
        running.clear()
        thread.join(timeout=10)


def _all_acked_arrived(target: redis.Redis, prefix: str, acked: list[int]) -> None:
    """Every write the source acknowledged is on the target, with its value."""
    assert acked, "the writer wrote nothing"
    missing = [
        n
        for n, value in zip(acked, target.mget([f"{prefix}:{n}" for n in acked]), strict=True)
        if (value.decode() if isinstance(value, bytes) else value) != str(n)
    ]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes missing, e.g. {missing[:5]}"


def test_a_dead_reader_re_plans_onto_another_node_of_its_shard(setup: Setup) -> None:
    """Issue 13 (a): the replica workload 0 reads is shut down while the source takes writes. The
    supervisor re-plans that workload onto the shard's other healthy node (here its master), restarts
    it there with its share emptied first, and reports it; the other shards' processes are left
    alone, and every acknowledged write arrives."""
    _write(setup.cluster, 0, 200)
    syncs, pids = _start_cluster_sync(setup)
    shard0, dead, master = WORKLOADS[0], setup.members[3], setup.members[0]
    assert setup.records()[shard0]["reader"] == dead.endpoint.address

    def replanned() -> SyncStatus | None:
        found = syncs.supervise_once(NAME)
        return found if any(line.startswith(f"{shard0}: re-planned") for line in found.acted) else None

    with _writing(setup.cluster, "live") as acked:
        time.sleep(0.5)
        dead.stop()
        after = wait_until(replanned, lambda found: found is not None, 45, f"{shard0} re-planned")
        time.sleep(1.0)  # writes after the re-plan, into the new process
    assert after is not None
    assert not any(line.startswith((f"{WORKLOADS[1]}:", f"{WORKLOADS[2]}:")) for line in after.acted), (
        after.acted
    )
    now = setup.record(after)
    assert now[shard0] != pids[shard0]
    assert {w: now[w] for w in WORKLOADS[1:]} == {w: pids[w] for w in WORKLOADS[1:]}
    records = setup.records()
    assert records[shard0]["reader"] == master.endpoint.address
    reason = str(records[shard0]["lastRestartReason"])
    assert reason.startswith("re-planned:") and f"{dead.endpoint}, does not answer" in reason, reason
    assert (
        tomllib.loads(setup.config(shard0).read_text())["sync_reader"]["address"] == master.endpoint.address
    )
    healthy = _all_healthy(syncs)
    assert next(w for w in healthy.workloads if w.name == shard0).reader == master.endpoint.address
    _verify_equal(setup.state, _url(setup.members[1]), _url(setup.target), setup.cache)
    with setup.target.client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)


SENTINEL_MASTER = "orders-dr"


@dataclass
class SentinelSetup:
    state: Path
    binary: str
    source: RedisProcess
    target: Deployment
    base: int
    started: set[tuple[int, Path]]

    def config(self, workload: str) -> Path:
        return (self.state / "syncs" / NAME / workload / "shake.toml").resolve()


@pytest.fixture
def sentinel_target(redis_group: RedisNodes, redis_shake: str, tmp_path: Path) -> Iterator[SentinelSetup]:
    """A standalone source; a sentinel target (master, one replica, three sentinels, down-after 1 s)."""
    harness = SentinelHarness(tmp_path / "sentinel", PASSWORD)
    found: SentinelSetup | None = None
    try:
        target = harness.deployment(replicas=1, sentinels=3)
        bootstrap_sentinel(
            target.master.endpoint,
            target.replica_endpoints,
            target.sentinel_endpoints,
            master_name=SENTINEL_MASTER,
            password=PASSWORD,
            quorum=2,
            down_after_ms=1000,
            failover_timeout_ms=5000,
            announce={"resolve-hostnames": "yes"},
            sentinel_password=PASSWORD,
            timeout=60.0,
        )
        source = redis_group.add("source", cluster=False)
        found = SentinelSetup(tmp_path / "state", redis_shake, source, target, status_port_base(1), set())
        yield found
    finally:
        if found is not None:
            _kill_recorded(found)
        harness.stop_all()


def test_a_sentinel_target_failover_re_plans_the_writer_onto_the_new_master(
    sentinel_target: SentinelSetup,
) -> None:
    """Issue 13 (b): a real sentinel failover of the target while the source takes writes. The old
    master turns replica (redis-shake's writes there fail READONLY); the supervisor notices the
    sentinels' new master, re-plans the writer onto it (share emptied there first) instead of
    restarting against the old address, and every acknowledged write arrives."""
    setup, d = sentinel_target, sentinel_target.target
    with setup.source.client() as client:
        _write(client, 0, 300)
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.source.endpoint, None, PASSWORD, 0),
        RedisURL(d.master.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=setup.binary,
        target_sentinels=d.sentinel_endpoints,
        target_master_name=SENTINEL_MASTER,
    )
    pids = {w.name: w.pid for w in report.workloads}
    setup.started.update((pid, setup.config(n)) for n, pid in pids.items() if pid)
    _all_healthy(syncs)
    assert (
        tomllib.loads(setup.config(NAME).read_text())["redis_writer"]["address"] == d.master.endpoint.address
    )

    def replanned() -> SyncStatus | None:
        found = syncs.supervise_once(NAME)
        for w in found.workloads:
            if w.pid:
                setup.started.add((w.pid, setup.config(w.name)))
        return found if any(line.startswith(f"{NAME}: re-planned") for line in found.acted) else None

    with setup.source.client() as client, _writing(client, "live") as acked:
        time.sleep(0.5)
        old = failover(d.sentinel_endpoints, SENTINEL_MASTER, PASSWORD, sentinel_password=PASSWORD)
        new = wait_for_new_master(
            d.sentinel_endpoints, SENTINEL_MASTER, old, PASSWORD, timeout=30, sentinel_password=PASSWORD
        )
        after = wait_until(replanned, lambda found: found is not None, 45, f"{NAME} re-planned")
        time.sleep(1.0)  # writes after the re-plan, into the new process
    assert old == d.master.endpoint and new != old
    assert after is not None
    record = json.loads((setup.state / "syncs" / NAME / "state.json").read_text())["workloads"][0]
    assert record["writer"]["addresses"] == [new.address]
    assert "target master moved" in str(record["lastRestartReason"]), record
    assert tomllib.loads(setup.config(NAME).read_text())["redis_writer"]["address"] == new.address
    _all_healthy(syncs)
    cache = _cache_with(setup.binary, setup.state.parent / "cache")
    _verify_equal(setup.state, _url(setup.source), f"redis://{new.address}", cache)
    with d.by_endpoint(new).client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)


def test_lag_in_seconds_from_the_heartbeat(behind_proxy: ProxySetup) -> None:
    """Issue 13 (c): supervising passes write a heartbeat key with the time on the source; the target's
    copy gives `lagSeconds` (`lagSecondsFrom: heartbeat`) in `status --local -o json`. Caught up: 0.
    With redis-shake frozen (SIGSTOP) the heartbeat written after the freeze does not arrive and the
    lag grows with the clock; once it runs again, 0."""
    setup = behind_proxy
    with setup.source.client() as client:
        _write(client, 0, 200)
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(setup.source.endpoint, None, PASSWORD, 0),
        RedisURL(setup.target.endpoint, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=str(setup.cache / SHAKE_VERSION / "redis-shake"),
    )
    (pid,) = [w.pid for w in report.workloads]
    assert pid
    setup.started.add((pid, setup.config(NAME)))
    _all_healthy(syncs)

    def lag() -> tuple[object, object]:
        row = syncs.supervise_once(NAME).as_dict()["workloads"][0]
        return row["lagSeconds"], row["lagSecondsFrom"]

    wait_until(lag, lambda found: found == (0.0, "heartbeat"), 30, "heartbeat lag 0", interval=0.3)
    os.kill(pid, signal.SIGSTOP)
    try:

        def frozen_row() -> dict[str, Any]:
            # The last heartbeat arrived, so a pass sends a new one, which cannot arrive now. On a
            # loaded machine one pass may fail to send it (1 s timeouts): the next pass sends it.
            syncs.supervise_once(NAME)
            behind = _cli(setup.state, "status", NAME, "--local", "-o", "json", cache=setup.cache)
            assert behind.returncode == 0, behind.stderr
            return dict(json.loads(behind.stdout)["workloads"][0])

        row = wait_until(
            frozen_row,
            lambda found: found["lagSecondsFrom"] == "heartbeat" and found["lagSeconds"] >= 2.0,
            30,
            "the heartbeat lag to grow past 2 s while redis-shake is frozen",
            interval=0.5,
        )
        assert row["lagSeconds"] < 60, row  # it grows with the clock from the undelivered heartbeat
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lag, lambda found: found == (0.0, "heartbeat"), 30, "heartbeat lag back to 0", interval=0.3)
    _verify_equal(setup.state, _url(setup.source), _url(setup.target), setup.cache)
    syncs.stop(NAME)


# ------------------------------------------------------------------ faults with a writer running

CUT_SECONDS = 30


def _start_single(setup: ProxySetup, source: Endpoint, target: Endpoint) -> tuple[LocalSyncs, int]:
    syncs = LocalSyncs(setup.state)
    report = syncs.start(
        NAME,
        RedisURL(source, None, PASSWORD, 0),
        RedisURL(target, None, PASSWORD, 0),
        status_port_base=setup.base,
        binary=str(setup.cache / SHAKE_VERSION / "redis-shake"),
    )
    (pid,) = [w.pid for w in report.workloads]
    assert pid
    setup.started.add((pid, setup.config(NAME)))
    _all_healthy(syncs)
    return syncs, pid


def _supervise_until_healthy(syncs: LocalSyncs, setup: ProxySetup, timeout: float = 90) -> list[str]:
    """Supervision passes, as the watch loop or the operator's timer runs them, until every workload
    is alive and Healthy (with a writer running, the lag in bytes is rarely 0 at the moment of a
    sample); what they did."""
    acted: list[str] = []

    def one_pass() -> SyncStatus:
        found = syncs.supervise_once(NAME)
        acted.extend(found.acted)
        setup.started.update((w.pid, setup.config(w.name)) for w in found.workloads if w.pid)
        return found

    wait_until(
        one_pass,
        lambda found: all(w.alive and w.decision.state == "Healthy" for w in found.workloads),
        timeout,
        "supervision to bring every workload back to Healthy",
        interval=1.0,
    )
    return acted


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_30s_network_cut_to_either_side(behind_proxy: ProxySetup, side: str) -> None:
    """The path between redis-shake and the source, or the target, is cut for 30 s (connections
    closed, new ones refused) while the source takes writes. Supervision keeps passing through the cut
    without failing, backs off restarting a process that cannot connect, restarts it once the path is
    back (its share emptied first), and every acknowledged write arrives."""
    setup = behind_proxy
    with setup.source.client() as client:
        _write(client, 0, 300)
    syncs, pid = _start_single(setup, setup.proxy.endpoint, setup.target_proxy.endpoint)
    path = setup.proxy if side == "source" else setup.target_proxy
    acted: list[str] = []
    with setup.source.client() as client, _writing(client, "live") as acked:
        time.sleep(0.5)
        assert path.cut() >= 1, f"redis-shake holds a connection to the {side}"
        deadline = time.monotonic() + CUT_SECONDS
        while time.monotonic() < deadline:
            found = syncs.supervise_once(NAME)  # must not raise while a side is unreachable
            acted += found.acted
            setup.started.update((w.pid, setup.config(w.name)) for w in found.workloads if w.pid)
            time.sleep(1.0)
        path.mend()
        acted += _supervise_until_healthy(syncs, setup)
        time.sleep(1.0)  # writes after the recovery, into the new process
    restarts = [line for line in acted if line.startswith(f"{NAME}: restarted")]
    assert restarts, acted
    # Each new process exits at once while the path is cut: restarts back off (2, 4, 8, 16 s), not
    # one full resync per pass.
    assert len(restarts) <= 8, "\n".join(acted)
    assert any("back-off after" in line for line in acted), acted
    now = _all_healthy(syncs).workloads[0].pid
    assert now and now != pid
    _verify_equal(setup.state, _url(setup.source), _url(setup.target), setup.cache)
    with setup.target.client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)


def test_a_killed_redis_shake_is_restarted_by_supervision(behind_proxy: ProxySetup) -> None:
    """redis-shake SIGKILLed (what the kernel's OOM killer sends) while the source takes writes: the
    next supervision pass starts it again with its share emptied, and every acknowledged write
    arrives."""
    setup = behind_proxy
    with setup.source.client() as client:
        _write(client, 0, 300)
    syncs, pid = _start_single(setup, setup.source.endpoint, setup.target.endpoint)
    with setup.source.client() as client, _writing(client, "live") as acked:
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        acted = _supervise_until_healthy(syncs, setup)
        time.sleep(1.0)
    assert any(line.startswith(f"{NAME}: restarted") for line in acted), acted
    assert not _ours(pid, setup.config(NAME))
    assert int(setup_record(setup)["restarts"]) >= 1  # type: ignore[call-overload]
    _all_healthy(syncs)
    _verify_equal(setup.state, _url(setup.source), _url(setup.target), setup.cache)
    with setup.target.client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)


def test_the_source_restarts_with_its_data(behind_proxy: ProxySetup) -> None:
    """The source is restarted (SIGTERM, AOF flushed, started again on the same files) while a writer
    keeps retrying: redis-shake loses its replication link; supervision brings the workload back onto
    the restarted source, and every write the source acknowledged, before or after, arrives."""
    setup = behind_proxy
    with setup.source.client() as client:
        _write(client, 0, 300)
    syncs, _pid = _start_single(setup, setup.source.endpoint, setup.target.endpoint)
    with setup.source.client() as client, _writing(client, "live") as acked:
        time.sleep(0.5)
        setup.source.restart()
        acted = _supervise_until_healthy(syncs, setup)
        time.sleep(1.0)
    assert acted, "the lost replication link was acted on"
    _all_healthy(syncs)
    _verify_equal(setup.state, _url(setup.source), _url(setup.target), setup.cache)
    with setup.target.client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)


def setup_record(setup: ProxySetup) -> dict[str, object]:
    records: list[dict[str, object]] = json.loads((setup.state / "syncs" / NAME / "state.json").read_text())[
        "workloads"
    ]
    return next(r for r in records if r["name"] == NAME)


def test_a_reshard_of_the_source_during_the_sync(setup: Setup) -> None:
    """Slots move from shard 0 to shard 1 (keys and all, MIGRATE) while a writer runs on the source.
    A migrated key leaves shard 0's replication stream as a DEL and enters shard 1's as a RESTORE,
    read by two redis-shake processes whose writes to the target are not ordered: the DEL can land
    after the RESTORE. Supervision sees both shards' slot ranges changed, re-plans those two
    workloads (shares emptied, full resync of their new ranges) and leaves shard 2's alone; verify then
    finds 0 differences and every acknowledged write is on the target."""
    _write(setup.cluster, 0, 2000)
    syncs, pids = _start_cluster_sync(setup)
    shard0, shard1 = setup.members[0], setup.members[1]
    with shard0.client() as client:
        owned = [r for r in client.execute_command("CLUSTER", "SLOTS") if int(r[2][1]) == shard0.port]
    start, end = int(owned[0][0]), int(owned[0][1])
    moving = range(start, start + (end - start + 1) // 4)  # a quarter of shard 0's slots, with their keys
    acted: list[str] = []
    with _writing(setup.cluster, "live") as acked:
        time.sleep(0.5)
        moved = migrate_slots(
            [m.endpoint for m in setup.members], PASSWORD, shard0.endpoint, shard1.endpoint, moving
        )
        assert moved.moved_keys > 0, "keys moved with the slots"

        def replanned() -> bool:
            found = syncs.supervise_once(NAME)
            acted.extend(found.acted)
            setup.record(found)
            done = {line.split(":")[0] for line in acted if ": re-planned" in line}
            return {WORKLOADS[0], WORKLOADS[1]} <= done

        wait_until(replanned, bool, 60, "shards 0 and 1 re-planned onto their new slot ranges", interval=1.0)
        time.sleep(1.0)  # writes after the re-plan, into the new processes
    assert not any(line.startswith(f"{WORKLOADS[2]}:") for line in acted), acted
    now = _all_healthy(syncs)
    assert {w.name: w.pid for w in now.workloads}[WORKLOADS[2]] == pids[WORKLOADS[2]]
    _verify_equal(setup.state, _url(setup.members[1]), _url(setup.target), setup.cache)
    with setup.target.client() as target:
        _all_acked_arrived(target, "live", acked)
    syncs.stop(NAME)
