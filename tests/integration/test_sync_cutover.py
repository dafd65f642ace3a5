"""Cutover (``sync.cutover``) against real redis-server processes and the real redis-shake.

Everything is real: the source (a standalone server, and a 3-shard cluster read from a replica per
shard), the target, redis-shake v4.2.0 (``hack/build-redis-shake.sh``) moving the data on configs
``sync.manual`` renders, ``CLIENT PAUSE WRITE`` and its effect on clients, the offsets the source
reports for redis-shake's connection, redis-shake's status document, and ``sync.verify``. No test
fills the target itself: what the target holds came through redis-shake.

Faults are made on the real processes: a stall is redis-shake frozen (SIGSTOP: no ACKs, silent status
port), a writer that falls behind is the target's writes paused (``CLIENT PAUSE WRITE`` on the target:
redis-shake keeps receiving and cannot write).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster import create_cluster
from sync import manual
from sync.cutover import Feed, Step, cutover
from sync.verify import RedisURL, VerifyReport, verify
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, free_port, wait_until
from tests.integration.shake_harness import ShakeProcess, status_port_base

pytestmark = pytest.mark.integration


def _url(process: RedisProcess) -> RedisURL:
    return RedisURL(endpoint=process.endpoint, username=None, password=PASSWORD, db=0)


def _write_blocks(process: RedisProcess) -> bool:
    """True when a write to ``process`` is held back (CLIENT PAUSE WRITE), False when it runs."""
    client = process.client(socket_timeout=0.5)
    try:
        client.delete("cutover:probe")  # a write that leaves no key behind
        return False
    except redis.TimeoutError:
        return True
    finally:
        client.close()


def _unpause(*processes: RedisProcess) -> None:
    for process in processes:
        with process.client() as client:
            client.execute_command("CLIENT", "UNPAUSE")


@dataclass
class Stopper:
    calls: int = 0
    fail_with: Exception | None = None
    seen: list[bool] = field(default_factory=list)

    def __call__(self) -> None:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with


def _shakes(
    binary: str, source: RedisProcess, target: RedisProcess, directory: Path, name: str = "orders"
) -> tuple[list[manual.ManualWorkload], list[ShakeProcess]]:
    """Plan as ``moorage sync plan`` does, write the configs, start one real redis-shake per workload."""
    planned = manual.write_configs(
        manual.plan_urls(name, _url(source), _url(target), status_port_base=status_port_base()),
        directory,
        _url(source),
        _url(target),
    )
    shakes = []
    for item in planned:
        assert item.config is not None
        shakes.append(ShakeProcess(binary, item.config).start())
    return planned, shakes


def _online(node: RedisProcess, port: int) -> bool:
    with node.client() as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict) and v.get("port") == port and v.get("state") == "online"
        for k, v in info.items()
        if k.startswith("slave")
    )


def _acked_all(node: RedisProcess, port: int) -> bool:
    """redis-shake's connection has ACKed everything ``node`` has (the source's view)."""
    with node.client() as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict) and v.get("port") == port and v.get("offset") == info["master_repl_offset"]
        for k, v in info.items()
        if k.startswith("slave")
    )


@dataclass
class Standalone:
    source: RedisProcess
    target: RedisProcess
    shake: ShakeProcess
    feed: Feed

    def verify(self) -> VerifyReport:
        return verify(_url(self.source), _url(self.target))


@pytest.fixture
def standalone(redis_group: RedisNodes, redis_shake: str, tmp_path: Path) -> Iterator[Standalone]:
    """A source with 501 keys synced by a real redis-shake into an empty target, then 100 more keys
    written live (through redis-shake's AOF phase)."""
    source = redis_group.add("source", cluster=False)
    target = redis_group.add("target", cluster=False)
    with source.client() as client:
        for i in range(500):
            client.set(f"k:{i}", f"v{i}")
        client.hset("h", mapping={f"f{i}": i for i in range(50)})
    planned, (shake,) = _shakes(redis_shake, source, target, tmp_path / "shake")
    (feed,) = manual.feeds(planned, host="127.0.0.1")  # its status port is read too
    try:
        shake.wait_streaming()
        with source.client() as client:
            for i in range(100):
                client.rpush("live:list", i)
                client.set(f"live:{i}", i)
        wait_until(lambda: _acked_all(source, feed.consumer_port), bool, 30, "redis-shake to ACK the writes")
        yield Standalone(source, target, shake, feed)
    finally:
        shake.stop()
        _unpause(source, target)


def test_cutover_pauses_drains_verifies_and_stops(standalone: Standalone) -> None:
    stop = Stopper()
    steps: list[Step] = []
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=standalone.verify,
        stop=stop,
        pause_seconds=20,
        drain_timeout=10,
        progress=lambda step, lags: steps.append(step),
    )
    assert report.ok, report.reason
    assert report.step is Step.DONE and stop.calls == 1
    assert report.lag_bytes == {"orders": 0}
    assert report.verify is not None and report.verify.equal and report.verify.checked == 602
    assert report.paused == [standalone.source.endpoint.address] and not report.unpaused
    assert [s for s in (Step.PREFLIGHT, Step.PAUSE, Step.DRAIN, Step.VERIFY, Step.STOP) if s in steps] == [
        Step.PREFLIGHT,
        Step.PAUSE,
        Step.DRAIN,
        Step.VERIFY,
        Step.STOP,
    ]
    # The source stays paused after a successful cutover until its deadline: clients move meanwhile.
    assert _write_blocks(standalone.source)


def test_unpause_after_lifts_the_pause_on_success(standalone: Standalone) -> None:
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=standalone.verify,
        stop=Stopper(),
        pause_seconds=20,
        drain_timeout=10,
        unpause_after=True,
    )
    assert report.ok and report.unpaused
    assert not _write_blocks(standalone.source)


def test_no_redis_shake_connection_is_refused_before_anything_is_touched(standalone: Standalone) -> None:
    stop = Stopper()
    other = standalone.feed.consumer_port + 1
    wrong_port = Feed("orders", standalone.source.endpoint, standalone.source.endpoint, other)
    report = cutover([wrong_port], source_password=PASSWORD, verify=standalone.verify, stop=stop)
    assert not report.ok and report.step is Step.PREFLIGHT
    assert f"no replication consumer on port {other}" in report.reason
    assert stop.calls == 0 and report.paused == [] and report.verify is None
    assert not _write_blocks(standalone.source)


def test_a_stalled_reader_fails_the_drain_and_unpauses(standalone: Standalone) -> None:
    """redis-shake frozen (SIGSTOP): it stops ACKing while the source writes, so the drain cannot
    reach lag 0."""
    standalone.shake.pause()
    with standalone.source.client() as client:
        for i in range(200):
            client.set(f"late:{i}", "x" * 100)
    stop = Stopper()
    try:
        report = cutover(
            [standalone.feed],
            source_password=PASSWORD,
            verify=standalone.verify,
            stop=stop,
            pause_seconds=15,
            drain_timeout=1.5,
        )
    finally:
        standalone.shake.resume()
    assert not report.ok and report.step is Step.DRAIN
    lag = report.lag_bytes["orders"]
    assert lag is not None and lag > 200 * 100
    assert f"orders: {lag} bytes" in report.reason
    assert report.unpaused and stop.calls == 0 and report.verify is None
    assert not _write_blocks(standalone.source)


def test_differences_fail_the_verify_and_unpause(standalone: Standalone) -> None:
    with standalone.target.client() as client:  # behind redis-shake's back
        client.delete("k:7")
        client.set("k:8", "changed")
    stop = Stopper()
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=standalone.verify,
        stop=stop,
        pause_seconds=20,
        drain_timeout=10,
    )
    assert not report.ok and report.step is Step.VERIFY
    assert report.verify is not None and report.verify.total_differences == 2
    assert "2 differences" in report.reason
    assert report.unpaused and stop.calls == 0
    assert not _write_blocks(standalone.source)


def test_a_failing_stop_unpauses(standalone: Standalone) -> None:
    from middleware.errors import OperationError

    stop = Stopper(fail_with=OperationError("RedisSync orders: forbidden to patch"))
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=standalone.verify,
        stop=stop,
        pause_seconds=20,
        drain_timeout=10,
    )
    assert not report.ok and report.step is Step.STOP and "forbidden to patch" in report.reason
    assert report.unpaused and not _write_blocks(standalone.source)


def test_the_pause_must_outlast_the_drain(standalone: Standalone) -> None:
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=None,
        stop=Stopper(),
        pause_seconds=5,
        drain_timeout=10,
    )
    assert not report.ok and report.step is Step.PAUSE and "must outlast" in report.reason
    assert report.paused == [] and not _write_blocks(standalone.source)


def test_cluster_source_read_from_replicas_cuts_over_every_shard(
    redis_group: RedisNodes, redis_shake: str, tmp_path: Path
) -> None:
    """Three shards, each read (as our plans do) by its own redis-shake from the shard's replica: lag
    is the master's offset minus what redis-shake ACKed to the replica (chained replication shares
    the master's offsets)."""
    members = redis_group.start(6, cluster=True, prefix="src")
    shards = [[members[i].endpoint, members[i + 3].endpoint] for i in range(3)]
    create_cluster(shards, PASSWORD, timeout=60)
    target = redis_group.add("target", cluster=False)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    shakes: list[ShakeProcess] = []
    try:
        for i in range(600):
            cluster.set(f"key:{i}", i)
        masters = [members[i] for i in range(3)]
        replicas = [members[i + 3] for i in range(3)]
        for master, replica in zip(masters, replicas, strict=True):
            with master.client() as m, replica.client() as r:
                wait_until(
                    lambda m=m, r=r: (r.info("replication"), m.info("replication")["master_repl_offset"]),
                    lambda seen: (
                        seen[0].get("master_link_status") == "up" and seen[0]["slave_repl_offset"] == seen[1]
                    ),
                    30,
                    f"{replica.endpoint} to catch up",
                )
        planned, shakes = _shakes(redis_shake, members[0], target, tmp_path / "shake")
        assert sorted(m.workload.reader for m in planned) == sorted(r.endpoint for r in replicas)
        for shake in shakes:
            shake.wait_streaming()
        for i in range(600, 700):  # live writes, through every shard's AOF phase
            cluster.set(f"key:{i}", i)
        stop = Stopper()
        report = cutover(
            manual.feeds(planned, host="127.0.0.1"),
            source_password=PASSWORD,
            verify=lambda: verify(_url(masters[0]), _url(target)),
            stop=stop,
            pause_seconds=30,
            drain_timeout=20,
            unpause_after=True,
        )
        assert report.ok, report.reason
        assert report.lag_bytes == {f"orders-shard-{i}": 0 for i in range(3)}
        assert report.write_lag_bytes == {f"orders-shard-{i}": 0 for i in range(3)}
        assert sorted(report.paused) == sorted(m.endpoint.address for m in masters)
        assert report.verify is not None and report.verify.checked == 700 and report.verify.equal
        assert stop.calls == 1 and report.unpaused
    finally:
        for shake in shakes:
            shake.stop()
        cluster.close()


def test_feeds_name_their_reader_in_refusals() -> None:
    """No server at all: the node does not answer, and the refusal says which workload and node."""
    nowhere = Endpoint("127.0.0.1", free_port())
    report = cutover(
        [Feed("orders", nowhere, nowhere, free_port())], source_password=None, verify=None, stop=Stopper()
    )
    assert not report.ok and report.step is Step.PREFLIGHT
    assert f"orders: the node it reads, {nowhere}, does not answer" in report.reason


def test_a_readers_own_bgsave_is_seen(redis_group: RedisNodes) -> None:
    """What the supervisor checks before calling a wait in "waiting bgsave" a stall (#973)."""
    from sync.observe import saving

    node = redis_group.add("busy", cluster=False)
    with node.client() as client:
        client.mset({f"k{i}": i for i in range(40)})
        assert saving(node.endpoint, PASSWORD) is False
        client.config_set("rdb-key-save-delay", 100_000)  # 0.1 s per key: a BGSAVE of ~4 s
        client.bgsave()
        try:
            assert saving(node.endpoint, PASSWORD) is True
        finally:
            client.config_set("rdb-key-save-delay", 0)
            wait_until(
                lambda: saving(node.endpoint, PASSWORD), lambda busy: busy is False, 30, "the BGSAVE to end"
            )
    assert saving(Endpoint("127.0.0.1", free_port()), PASSWORD) is None


def test_the_drain_waits_for_what_redis_shake_has_written(standalone: Standalone) -> None:
    """Received is not written. The target's writes paused: redis-shake keeps receiving (and ACKing)
    the source's stream but cannot write it, so its pipeline and queue fill and its sent offset stops.
    The drain sees lag 0 from the source's side and still waits for what it has not handed to its
    writer; once the target takes writes again, the cutover goes through."""
    with standalone.target.client() as client:
        client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        with standalone.source.client() as client:
            pipe = client.pipeline(transaction=False)
            for i in range(6000):  # more than redis-shake's reply pipeline and queue (1024 + 1024)
                pipe.set(f"burst:{i}", i)
            pipe.execute()
        port = standalone.feed.consumer_port
        wait_until(lambda: _acked_all(standalone.source, port), bool, 30, "redis-shake to receive it all")
        stuck = cutover([standalone.feed], source_password=PASSWORD, verify=None, stop=Stopper(),
                        pause_seconds=10, drain_timeout=2.5)  # fmt: skip
        assert not stuck.ok and stuck.step is Step.DRAIN, stuck.reason
        assert stuck.lag_bytes == {"orders": 0}
        behind = stuck.write_lag_bytes["orders"]
        assert behind is not None and behind > 0, stuck.write_lag_bytes
        assert f"orders: {behind} bytes received but not yet written" in stuck.reason and stuck.unpaused
    finally:
        _unpause(standalone.target)
    stop = Stopper()
    done = cutover([standalone.feed], source_password=PASSWORD, verify=standalone.verify, stop=stop,
                   pause_seconds=30, drain_timeout=20, unpause_after=True)  # fmt: skip
    assert done.ok, done.reason
    assert done.write_lag_bytes == {"orders": 0} and stop.calls == 1
    assert done.verify is not None and done.verify.equal and done.verify.checked == 602 + 6000


def test_a_workload_still_loading_its_rdb_is_refused(
    redis_group: RedisNodes, redis_shake: str, tmp_path: Path
) -> None:
    """The source reports redis-shake ``online`` with lag 0 as soon as the RDB is transferred, while
    redis-shake may still be writing that RDB into the target (``syncing rdb``). Its status document
    tells: the cutover refuses before pausing anything, and would not have called it drained."""
    source = redis_group.add("source", cluster=False)
    target = redis_group.add("target", cluster=False)
    with source.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(20_000):
            pipe.set(f"k:{i}", "x" * 20)
        pipe.execute()
    with target.client() as client:  # the target holds redis-shake's writes back: it stays loading
        client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    planned, (shake,) = _shakes(redis_shake, source, target, tmp_path / "shake")
    (feed,) = manual.feeds(planned, host="127.0.0.1")
    try:
        try:
            loading = lambda st: st is not None and st.phase == "syncing rdb"  # noqa: E731
            wait_until(shake.status, loading, 60, "redis-shake writing its RDB into the target")
            wait_until(lambda: _online(source, feed.consumer_port), bool, 30, "the source to call it online")
            stop = Stopper()
            report = cutover([feed], source_password=PASSWORD, verify=None, stop=stop, pause_seconds=10,
                             drain_timeout=2)  # fmt: skip
            assert not report.ok and report.step is Step.PREFLIGHT, report.reason
            assert "orders: redis-shake is still in its full sync (syncing rdb, " in report.reason
            assert "RDB bytes written to the target" in report.reason
            assert report.paused == [] and stop.calls == 0 and not _write_blocks(source)
        finally:
            _unpause(target)
        shake.wait_streaming()
        done = cutover([feed], source_password=PASSWORD, verify=lambda: verify(_url(source), _url(target)),
                       stop=Stopper(), pause_seconds=30, drain_timeout=20, unpause_after=True)  # fmt: skip
        assert done.ok and done.verify is not None and done.verify.checked == 20_000, done.reason
    finally:
        shake.stop()
