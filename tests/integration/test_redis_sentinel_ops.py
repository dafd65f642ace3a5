"""Sentinel live operations and live parameters against real redis-server / redis-sentinel processes.

Topology: 1 master + 2 replicas + 3 sentinels, password auth, down-after 1000 ms, failover-timeout
5000 ms, quorum 2. Every wait is bounded; nothing asserts on durations.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.live import REDACTED, NodeRole, apply_parameters, node_role, ping_all
from middleware.engines.redis.sentinel import (
    BootstrapReport,
    SentinelView,
    add_replica,
    bootstrap_sentinel,
    demote_stray_masters,
    failover,
    observe_sentinel,
    remove_replica,
    switchover,
    wait_for_new_master,
)
from middleware.errors import OperationError, SpecError
from tests.integration.harness import logs, wait_until
from tests.integration.sentinel_harness import Deployment, SentinelHarness
from tests.integration.tcp_proxy import FreezingProxy

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-Pa55"
MASTER_NAME = "moorage"
# Failover takes 2-5 s with down-after 1000 ms; a restarted old master is converted to replica only
# after sentinel's 8 s grace plus up to a 10 s INFO period. Generous bounds, never asserted on.
FAILOVER_DEADLINE = 60.0
REJOIN_DEADLINE = 60.0
# Set at runtime by bootstrap (SENTINEL CONFIG SET); the harness's sentinel.conf leaves it at "no".
ANNOUNCE = {"resolve-hostnames": "yes"}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SentinelHarness]:
    h = SentinelHarness(tmp_path, PASSWORD)
    try:
        yield h
    finally:
        h.stop_all()


@pytest.fixture
def deployment(harness: SentinelHarness) -> Deployment:
    return harness.deployment(replicas=2, sentinels=3)


def bootstrap(d: Deployment, master: Endpoint | None = None) -> BootstrapReport:
    """Bootstrap as the operator would, with ``master`` (default: data-0) as the designated master."""
    designated = master or d.master.endpoint
    return bootstrap_sentinel(
        designated,
        [e for e in d.data_endpoints if e != designated],
        d.sentinel_endpoints,
        master_name=MASTER_NAME,
        password=PASSWORD,
        quorum=2,
        down_after_ms=1000,
        failover_timeout_ms=5000,
        announce=ANNOUNCE,
        sentinel_password=PASSWORD,
        timeout=60.0,
    )


def observe(d: Deployment) -> SentinelView:
    return observe_sentinel(
        d.sentinel_endpoints, MASTER_NAME, PASSWORD, sentinel_password=PASSWORD, data_nodes=d.data_endpoints
    )


def masters_among(view: SentinelView) -> list[Endpoint]:
    return sorted(e for e, role in view.nodes.items() if role.is_master)


def settled_failover(d: Deployment, old: Endpoint, followers_down: tuple[Endpoint, ...] = ()) -> Endpoint:
    """The master the sentinels settle on after moving away from ``old``, once every reachable data node
    follows it. On a loaded machine the sentinels may fail over a second time (the new master misses
    down-after once); that is their job, so the test follows where they settle instead of the first
    answer."""

    def state() -> tuple[Endpoint, list[NodeRole]]:
        new = wait_for_new_master(
            d.sentinel_endpoints, MASTER_NAME, old, PASSWORD, timeout=FAILOVER_DEADLINE,
            sentinel_password=PASSWORD,
        )  # fmt: skip
        skipped = (new, *followers_down)
        return new, [node_role(e, PASSWORD) for e in d.data_endpoints if e not in skipped]

    new, _ = wait_until(
        state,
        lambda s: all(r.is_replica and r.master == s[0] and r.link_up for r in s[1]),
        REJOIN_DEADLINE,
        "the sentinels to settle on a master every reachable data node follows",
    )
    return new


def test_bootstrap_failover_and_old_master_rejoins_as_replica(deployment: Deployment) -> None:
    d = deployment
    first = bootstrap(d)
    assert first.master == d.master.endpoint
    assert not first.adopted_existing_master
    assert sorted(first.replicas_attached) == sorted(d.replica_endpoints)
    assert sorted(first.sentinels_monitoring) == sorted(d.sentinel_endpoints)
    assert all("resolve-hostnames" in first.sentinel_settings[s] for s in d.sentinel_endpoints)

    view = observe(d)
    assert view.master == d.master.endpoint, view
    assert sorted(r.endpoint for r in view.healthy_replicas) == sorted(d.replica_endpoints), view
    assert view.sentinels_known == 3
    assert view.quorum == 2 and view.quorum_ok, view.quorum_detail
    assert not view.conflicts and view.healthy, view

    second = bootstrap(d)
    assert not second.changed, second
    assert second.master == d.master.endpoint

    with d.master.client() as client:
        for i in range(200):
            client.set(f"key:{i}", f"value:{i}")
        # Every replica has acknowledged the writes before the crash: none may be lost.
        assert client.wait(2, 5000) == 2

    old = d.master.endpoint
    d.master.kill()
    # Sentinel reconfigures the surviving replicas after the promotion, one at a time: until it has,
    # a bootstrap would rightly point them itself, and this check is about a settled failover.
    new = settled_failover(d, old, followers_down=(old,))
    assert new in d.replica_endpoints
    with d.by_endpoint(new).client() as client:
        assert client.dbsize() == 200
        assert client.get("key:199") == "value:199"

    view = observe(d)
    assert view.master == new, view
    assert old in view.unreachable_nodes

    # Re-running bootstrap while the old master is still down follows the sentinels and tolerates it.
    during = bootstrap(d)
    assert during.master == new and during.adopted_existing_master
    assert during.unreachable == [old]
    assert not during.changed, during

    d.master.restart()
    view = wait_until(
        lambda: observe(d),
        lambda v: (
            v.master == new
            and not v.conflicts
            and (role := v.nodes.get(old)) is not None
            and role.is_replica
            and role.link_up
            # The sentinels re-link to the restarted node a moment after its ROLE turns replica.
            and len(v.healthy_replicas) == 2
        ),
        REJOIN_DEADLINE,
        "the restarted old master to be reconfigured as a replica",
    )
    assert masters_among(view) == [new], logs(d.sentinels)
    assert len(view.healthy_replicas) == 2, view.replicas

    # Bootstrap with the original spec (ordinal 0 as master) must follow the sentinels, not flip back.
    third = bootstrap(d, master=old)
    assert third.master == new
    assert third.adopted_existing_master
    assert not third.changed, third
    role = node_role(old, PASSWORD)
    assert role.is_replica and role.master == new
    view = observe(d)
    assert view.master == new and masters_among(view) == [new] and not view.conflicts, view
    with d.master.client() as client:
        assert client.get("key:0") == "value:0"  # resynced from the new master


def test_stray_master_is_reported_and_demoted(deployment: Deployment) -> None:
    d = deployment
    bootstrap(d)
    stray = d.replicas[0]
    with stray.client() as client:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.set("only-on-the-stray", "1")

    view = observe(d)
    assert view.master == d.master.endpoint
    assert [(c.endpoint, c.kind) for c in view.conflicts] == [(stray.endpoint, "second-master")], view
    assert not view.healthy

    assert demote_stray_masters(view, PASSWORD) == [stray.endpoint]
    role = wait_until(
        lambda: node_role(stray.endpoint, PASSWORD),
        lambda r: r.is_replica and r.link_up,
        30.0,
        "the demoted stray to sync from the master",
    )
    assert role.master == d.master.endpoint
    with stray.client() as client:
        # Its divergent write is gone: one history, the master's.
        assert client.get("only-on-the-stray") is None
    view = observe(d)
    assert not view.conflicts and masters_among(view) == [d.master.endpoint], view


def test_manual_failover_then_lost_sentinel_state_follows_replication(deployment: Deployment) -> None:
    d = deployment
    bootstrap(d)
    with d.master.client() as client:
        client.set("before-failover", "yes")
        assert client.wait(2, 5000) == 2

    old = failover(d.sentinel_endpoints, MASTER_NAME, PASSWORD, sentinel_password=PASSWORD)
    assert old == d.master.endpoint
    # The old master and the other replica follow the new master.
    new = settled_failover(d, old)
    assert new in d.replica_endpoints
    with d.by_endpoint(new).client() as client:
        assert client.get("before-failover") == "yes"

    # The sentinels lose their state (emptyDir, reinstall): nobody monitors the name any more.
    forget_master(d)
    assert not observe(d).monitored

    report = bootstrap(d, master=old)
    assert report.master == new and report.adopted_existing_master
    assert sorted(report.sentinels_monitoring) == sorted(d.sentinel_endpoints)
    assert not report.replicas_attached, "a node already following the master must not be touched"
    view = observe(d)
    assert view.master == new and not view.conflicts and len(view.healthy_replicas) == 2, view

    # Worse: state lost again, and the old master's pod restarts from its original config (no
    # replicaof, no persistence) as an empty master. The designated node must not win: following it
    # would resync the real master from an empty dataset.
    forget_master(d)
    d.master.stop()
    d.master.conf.write_text(
        "".join(
            line for line in d.master.conf.read_text().splitlines(keepends=True) if "replicaof" not in line
        )
    )
    d.master.start()
    assert node_role(old, PASSWORD).is_master
    with d.master.client() as client:
        # It loaded the RDB it last received as a replica: a stale copy of the same history.
        assert client.get("before-failover") == "yes"

    report = bootstrap(d, master=old)
    assert report.master == new and report.adopted_existing_master
    assert report.replicas_attached == [old]
    view = observe(d)
    assert view.master == new and not view.conflicts and len(view.healthy_replicas) == 2, view
    for process in d.data:
        with process.client() as client:
            assert client.get("before-failover") == "yes", process.name


def test_bootstrap_refuses_to_overwrite_unrelated_data(deployment: Deployment) -> None:
    d = deployment
    # No sentinel state, and two datasets: one on the designated master, another on a replication
    # group (data-1 with data-2) that formed without it. Nothing tells which one is right.
    with d.master.client() as client:
        client.set("designated-only", "1")
    with d.replicas[1].client() as client:
        client.execute_command("REPLICAOF", d.replicas[0].endpoint.host, d.replicas[0].endpoint.port)
    with d.replicas[0].client() as client:
        client.set("group-only", "1")

    with pytest.raises(OperationError, match="refusing to overwrite"):
        bootstrap(d)
    assert node_role(d.master.endpoint, PASSWORD).is_master
    with d.master.client() as client:
        assert client.get("designated-only") == "1"
    assert not observe(d).monitored


def forget_master(d: Deployment) -> None:
    for sentinel in d.sentinels:
        with sentinel.client() as client:
            client.execute_command("SENTINEL", "REMOVE", MASTER_NAME)


def test_remove_and_add_replica(deployment: Deployment) -> None:
    d = deployment
    bootstrap(d)
    leaving = d.replicas[1].endpoint

    assert remove_replica(
        d.sentinel_endpoints, MASTER_NAME, leaving, PASSWORD, timeout=60.0, sentinel_password=PASSWORD
    )
    assert node_role(leaving, PASSWORD).is_master  # detached, standalone
    view = observe_sentinel(d.sentinel_endpoints, MASTER_NAME, PASSWORD, sentinel_password=PASSWORD)
    assert [r.endpoint for r in view.replicas] == [d.replicas[0].endpoint], view.replicas
    assert view.sentinels_known == 3 and view.quorum_ok, view
    for sentinel in d.sentinels:
        with sentinel.client() as client:
            known = client.sentinel_slaves(MASTER_NAME)
            assert [int(r["port"]) for r in known] == [d.replicas[0].port], known
    assert not remove_replica(
        d.sentinel_endpoints, MASTER_NAME, leaving, PASSWORD, sentinel_password=PASSWORD
    )

    with pytest.raises(OperationError, match="current master"):
        remove_replica(
            d.sentinel_endpoints, MASTER_NAME, d.master.endpoint, PASSWORD, sentinel_password=PASSWORD
        )

    assert add_replica(
        d.sentinel_endpoints, MASTER_NAME, leaving, PASSWORD, timeout=60.0, sentinel_password=PASSWORD
    )
    view = observe(d)
    assert sorted(r.endpoint for r in view.healthy_replicas) == sorted(d.replica_endpoints), view
    assert not add_replica(
        d.sentinel_endpoints, MASTER_NAME, leaving, PASSWORD, timeout=60.0, sentinel_password=PASSWORD
    )


def test_apply_parameters_applies_persists_and_is_idempotent(harness: SentinelHarness) -> None:
    nodes = [harness.data_node("p-0"), harness.data_node("p-1")]
    endpoints = [n.endpoint for n in nodes]
    assert ping_all(endpoints, PASSWORD) == dict.fromkeys(endpoints)

    report = apply_parameters(endpoints, PASSWORD, {"maxmemory-policy": "allkeys-lru", "maxmemory": "64mb"})
    assert report.changed and not report.unverified and not report.not_persisted
    for node, applied in zip(nodes, report.nodes, strict=True):
        assert applied.endpoint == node.endpoint and applied.persisted
        assert {p.name: (p.before, p.after) for p in applied.parameters} == {
            "maxmemory": ("0", str(64 * 1024 * 1024)),
            "maxmemory-policy": ("noeviction", "allkeys-lru"),
        }
        conf = node.conf.read_text()
        assert "maxmemory-policy allkeys-lru" in conf
        assert "maxmemory 64mb" in conf
        with node.client() as client:
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}

    again = apply_parameters(endpoints, PASSWORD, {"maxmemory-policy": "allkeys-lru", "maxmemory": "64mb"})
    assert not again.changed
    assert all(n.persisted is None for n in again.nodes)


def test_apply_parameters_refused_value_names_the_parameter(harness: SentinelHarness) -> None:
    nodes = [harness.data_node("p-0"), harness.data_node("p-1")]
    with pytest.raises(OperationError) as caught:
        apply_parameters([n.endpoint for n in nodes], PASSWORD, {"maxmemory-policy": "sometimes", "hz": "20"})
    message = str(caught.value)
    assert "maxmemory-policy" in message and "allkeys-lru" in message  # Redis's own reason
    assert PASSWORD not in message
    for node in nodes:
        with node.client() as client:
            # CONFIG SET is atomic: the valid parameter in the same call did not go through either.
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert client.config_get("hz")["hz"] == "10"


def test_apply_parameters_without_config_file_reports_not_persisted(harness: SentinelHarness) -> None:
    node = harness.data_node("no-conf", config_file=False)
    report = apply_parameters(
        [node.endpoint], PASSWORD, {"maxmemory-policy": "allkeys-lfu", "masterauth": "x"}
    )
    (applied,) = report.nodes
    assert applied.changed and applied.persisted is False
    assert "config file" in (applied.persist_error or "")
    assert report.not_persisted == {node.endpoint: applied.persist_error}
    secret = next(p for p in applied.parameters if p.name == "masterauth")
    assert secret.after == REDACTED and secret.verified
    with node.client() as client:
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lfu"


def test_apply_parameters_wrong_password_is_secret_free(harness: SentinelHarness) -> None:
    node = harness.data_node("p-0")
    wrong = "not-the-Pa55word"
    with pytest.raises(OperationError) as caught:
        apply_parameters([node.endpoint], wrong, {"hz": "20"})
    assert wrong not in str(caught.value) and node.endpoint.address in str(caught.value)
    with node.client() as client:
        assert client.config_get("hz")["hz"] == "10"


@pytest.mark.parametrize(
    ("change", "field"),
    [({"quorum": 4}, "quorum"), ({"quorum": 0}, "quorum"), ({"announce": {"bogus": "1"}}, "announce")],
)
def test_bootstrap_rejects_invalid_settings_before_touching_anything(change: dict, field: str) -> None:
    endpoints = [Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), Endpoint("127.0.0.1", 3)]
    options: dict = {
        "master_name": MASTER_NAME,
        "password": PASSWORD,
        "quorum": 2,
        "down_after_ms": 1000,
        "failover_timeout_ms": 5000,
        **change,
    }
    with pytest.raises(SpecError) as caught:
        bootstrap_sentinel(endpoints[0], endpoints[1:], endpoints, **options)
    assert caught.value.field == field


class _Writer:
    """Writes w:1, w:2, ... on one connection to the master until the first refusal; ``acked`` are the
    writes the server acknowledged, every one of which must survive."""

    def __init__(self, master: Endpoint) -> None:
        self.master = master
        self.acked: list[str] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        client = redis.Redis(
            host=self.master.host, port=self.master.port, password=PASSWORD, socket_timeout=30
        )
        with client:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    client.set(f"w:{i}", "1")
                except Exception as exc:  # READONLY once it follows the new master: never acknowledged
                    self.refused.append(f"{type(exc).__name__}: {exc}")
                    return
                self.acked.append(f"w:{i}")

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: len(self.acked), lambda n: n >= 200, 30.0, "the writer's first writes")

    def finish(self) -> None:
        self._thread.join(timeout=60)
        self._stop.set()
        assert not self._thread.is_alive()


def assert_switchover_kept_every_write(d: Deployment, old: Endpoint, writer: _Writer) -> None:
    writer.finish()
    assert old == d.master.endpoint
    # The old master followed the new one at once: the write it held was refused, not acknowledged.
    assert writer.refused and writer.refused[0].startswith("ReadOnlyError"), writer.refused
    new = settled_failover(d, old)
    with d.by_endpoint(new).client() as client:
        present = client.exists(*writer.acked[-500:])
        missing = [k for k in writer.acked if not client.exists(k)]
    assert missing == [], f"{len(missing)} acknowledged writes lost: {missing[:10]}"
    assert present == min(500, len(writer.acked))


def test_switchover_under_writes_loses_no_acknowledged_write(deployment: Deployment) -> None:
    """A writer hammers the master while a planned switchover runs: every write the old master
    acknowledged is on the new master (plain SENTINEL FAILOVER loses the ones acknowledged between the
    promotion and the old master's demotion)."""
    d = deployment
    bootstrap(d)
    writer = _Writer(d.master.endpoint)
    writer.start()
    old = switchover(d.sentinel_endpoints, MASTER_NAME, PASSWORD, sentinel_password=PASSWORD)
    assert_switchover_kept_every_write(d, old, writer)


def test_switchover_whose_failover_reply_is_lost_holds_writes_and_follows(deployment: Deployment) -> None:
    """A real fault: the sentinel carries out SENTINEL FAILOVER but its reply never arrives (the proxy
    in front of it closes the connection right after delivering the command). The switchover must not
    take that for a refusal: lifting the write pause then lets the old master acknowledge writes until
    the sentinels demote it, all lost. It follows the failover under way instead, and asks no second
    sentinel (two forced failovers could promote two replicas)."""
    d = deployment
    bootstrap(d)
    proxies = [FreezingProxy(e) for e in d.sentinel_endpoints]
    try:
        for proxy in proxies:
            proxy.drop_reply_after(b"FAILOVER")
        writer = _Writer(d.master.endpoint)
        writer.start()
        old = switchover([p.endpoint for p in proxies], MASTER_NAME, PASSWORD, sentinel_password=PASSWORD)
        assert sum(p.replies_dropped for p in proxies) == 1  # the fault happened, once
        assert_switchover_kept_every_write(d, old, writer)
    finally:
        for proxy in proxies:
            proxy.close()
