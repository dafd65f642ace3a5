"""Cutover (``sync.cutover``) against real redis-server processes.

What is real: the source (a standalone server, and a 3-shard cluster with a replica per shard), the
target, ``CLIENT PAUSE WRITE`` and its effect on clients, the offsets the source reports for its
replication consumers, and ``sync.verify``.

What stands in for redis-shake, which cannot be installed here: ``PsyncStandIn`` (named as such),
a replication consumer speaking redis-shake's reader protocol (listening-port = its status port,
PSYNC, ACK every 100 ms), so the source measures it as it measures redis-shake. It moves no data:
each test fills the target itself with DUMP/RESTORE (test setup, not a sync implementation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster import create_cluster
from sync.cutover import Feed, Step, cutover
from sync.verify import RedisURL, VerifyReport, verify
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, wait_until
from tests.integration.psync_standin import PsyncStandIn

pytestmark = pytest.mark.integration

STATUS_PORT = 8080  # what redis-shake announces: its status port (sync/shake_config.STATUS_PORT)


def _copy(sources: list[redis.Redis], target: redis.Redis) -> None:
    """Test setup only: DUMP/RESTORE every key with its TTL (not a sync implementation)."""
    for client in sources:
        for key in client.scan_iter(count=1000):
            payload = client.dump(key)
            if payload is not None:
                target.restore(key, max(int(client.pttl(key)), 0), payload, replace=True)


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


@dataclass
class Standalone:
    source: RedisProcess
    target: RedisProcess
    consumer: PsyncStandIn
    feed: Feed

    def verify(self) -> VerifyReport:
        return verify(_url(self.source), _url(self.target))


@pytest.fixture
def standalone(redis_group: RedisNodes) -> Iterator[Standalone]:
    source = redis_group.add("source", cluster=False)
    target = redis_group.add("target", cluster=False)
    with source.client() as client:
        for i in range(500):
            client.set(f"k:{i}", f"v{i}")
        client.hset("h", mapping={f"f{i}": i for i in range(50)})
    consumer = PsyncStandIn(source.endpoint, STATUS_PORT, PASSWORD)
    feed = Feed("orders", source.endpoint, source.endpoint, STATUS_PORT, "127.0.0.1")
    try:
        with source.client() as client:
            wait_until(
                lambda: client.info("replication"),
                lambda info: any(
                    v.get("port") == STATUS_PORT and v.get("state") == "online"
                    for k, v in info.items()
                    if k.startswith("slave") and isinstance(v, dict)
                ),
                30,
                "the stand-in to stream",
            )
        yield Standalone(source, target, consumer, feed)
    finally:
        consumer.close()
        _unpause(source)


def _fill_target(pair: Standalone) -> None:
    with pair.source.client() as s, pair.target.client() as t:
        _copy([s], t)


def test_cutover_pauses_drains_verifies_and_stops(standalone: Standalone) -> None:
    _fill_target(standalone)
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
    assert report.verify is not None and report.verify.equal and report.verify.checked == 501
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
    _fill_target(standalone)
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
    _fill_target(standalone)
    stop = Stopper()
    wrong_port = Feed("orders", standalone.source.endpoint, standalone.source.endpoint, STATUS_PORT + 1)
    report = cutover([wrong_port], source_password=PASSWORD, verify=standalone.verify, stop=stop)
    assert not report.ok and report.step is Step.PREFLIGHT
    assert f"no replication consumer on port {STATUS_PORT + 1}" in report.reason
    assert stop.calls == 0 and report.paused == [] and report.verify is None
    assert not _write_blocks(standalone.source)


def test_a_stalled_reader_fails_the_drain_and_unpauses(standalone: Standalone) -> None:
    _fill_target(standalone)
    standalone.consumer.stall()
    with standalone.source.client() as client:
        for i in range(200):
            client.set(f"late:{i}", "x" * 100)
    stop = Stopper()
    report = cutover(
        [standalone.feed],
        source_password=PASSWORD,
        verify=standalone.verify,
        stop=stop,
        pause_seconds=10,
        drain_timeout=1.5,
    )
    assert not report.ok and report.step is Step.DRAIN
    lag = report.lag_bytes["orders"]
    assert lag is not None and lag > 200 * 100
    assert f"orders: {lag} bytes" in report.reason
    assert report.unpaused and stop.calls == 0 and report.verify is None
    assert not _write_blocks(standalone.source)


def test_differences_fail_the_verify_and_unpause(standalone: Standalone) -> None:
    _fill_target(standalone)
    with standalone.target.client() as client:
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

    _fill_target(standalone)
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


def test_cluster_source_read_from_replicas_cuts_over_every_shard(redis_group: RedisNodes) -> None:
    """Three shards, each read (as our plans do) from its replica: lag is the master's offset minus
    what the stand-in ACKed to the replica (chained replication shares the master's offsets)."""
    members = redis_group.start(6, cluster=True, prefix="src")
    shards = [[members[i].endpoint, members[i + 3].endpoint] for i in range(3)]
    create_cluster(shards, PASSWORD, timeout=60)
    target = redis_group.add("target", cluster=False)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    consumers: list[PsyncStandIn] = []
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
        consumers = [PsyncStandIn(r.endpoint, STATUS_PORT, PASSWORD) for r in replicas]
        feeds = [
            Feed(f"orders-shard-{i}", masters[i].endpoint, replicas[i].endpoint, STATUS_PORT)
            for i in range(3)
        ]
        with target.client() as t:
            clients = [m.client() for m in masters]
            _copy(clients, t)
            for c in clients:
                c.close()
        stop = Stopper()
        report = cutover(
            feeds,
            source_password=PASSWORD,
            verify=lambda: verify(_url(masters[0]), _url(target)),
            stop=stop,
            pause_seconds=30,
            drain_timeout=20,
            unpause_after=True,
        )
        assert report.ok, report.reason
        assert report.lag_bytes == {f"orders-shard-{i}": 0 for i in range(3)}
        assert sorted(report.paused) == sorted(m.endpoint.address for m in masters)
        assert report.verify is not None and report.verify.checked == 600 and report.verify.equal
        assert stop.calls == 1 and report.unpaused
    finally:
        for consumer in consumers:
            consumer.close()
        cluster.close()


def test_feeds_name_their_reader_in_refusals() -> None:
    """No server at all: the node does not answer, and the refusal says which workload and node."""
    from tests.integration.harness import free_port

    nowhere = Endpoint("127.0.0.1", free_port())
    report = cutover(
        [Feed("orders", nowhere, nowhere, STATUS_PORT)], source_password=None, verify=None, stop=Stopper()
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
    from tests.integration.harness import free_port

    assert saving(Endpoint("127.0.0.1", free_port()), PASSWORD) is None


def test_the_drain_waits_for_what_redis_shake_has_written(standalone: Standalone) -> None:
    """Received is not written: with a status port, the drain also waits until redis-shake has handed
    everything to its writer. The status document is RECORDED-SHAPE test data (redis-shake v4's
    status_port JSON as tests/unit/test_supervisor.py writes it), served on 127.0.0.1, with the
    sent offset the test chooses; the ACKs come from the PSYNC stand-in."""
    import http.server
    import threading

    from tests.integration.harness import free_port

    _fill_target(standalone)
    behind = {"bytes": 64}

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with standalone.source.client() as client:
                offset = int(client.info("replication")["master_repl_offset"])
            body = json.dumps(
                {
                    "consistent": True,
                    "reader": {
                        "status": "syncing aof",
                        "aof_received_offset": offset,
                        "aof_sent_offset": offset - behind["bytes"],
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        node = standalone.source.endpoint
        feed = Feed("orders", node, node, STATUS_PORT, "127.0.0.1", server.server_address[1])
        stuck = cutover([feed], source_password=PASSWORD, verify=None, stop=Stopper(), pause_seconds=10,
                        drain_timeout=1.5)  # fmt: skip
        assert not stuck.ok and stuck.step is Step.DRAIN
        assert stuck.lag_bytes == {"orders": 0} and stuck.write_lag_bytes == {"orders": 64}
        assert "orders: 64 bytes received but not yet written" in stuck.reason and stuck.unpaused

        behind["bytes"] = 0
        stop = Stopper()
        done = cutover([feed], source_password=PASSWORD, verify=None, stop=stop, pause_seconds=10,
                       drain_timeout=5, unpause_after=True)  # fmt: skip
        assert done.ok and done.write_lag_bytes == {"orders": 0} and stop.calls == 1
    finally:
        server.shutdown()
        server.server_close()
