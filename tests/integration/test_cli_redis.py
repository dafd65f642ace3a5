"""The `moorage` CLI end to end on the local runtime, with real Redis 7 processes from Debian.

Each test runs the real console script in a subprocess against its own state directory, exactly as
a user would, and checks the result against the Redis servers themselves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from middleware.spec import load_middleware, resolve
from tests.integration.cli import Moorage, session
from tests.integration.harness import require_binary

pytestmark = pytest.mark.integration

DEADLINE = 60.0


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    require_binary("redis-server", "redis-server")
    require_binary("redis-cli", "redis-tools")


@pytest.fixture
def moorage(tmp_path: Path) -> Iterator[Moorage]:
    with session(tmp_path / "state") as cli:
        yield cli


def write_manifest(path: Path, name: str, **spec: Any) -> Path:
    doc = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(json.dumps(doc))
    return path


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def masters(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in status["members"] if m["role"] == "master"]


def cluster_client(status: dict[str, Any]) -> RedisCluster:
    host, port = masters(status)[0]["address"].split(":")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, int(port))], password=status["password"], decode_responses=True
    )


class Writer(threading.Thread):
    """Writes numbered keys until stopped (bounded by a count), recording which writes succeeded."""

    def __init__(self, client: RedisCluster, prefix: str, limit: int = 200_000) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix, self.limit = client, prefix, limit
        self.written: list[str] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        for i in range(self.limit):
            if self.halt.is_set():
                return
            key = f"{self.prefix}:{i}"
            try:
                self.client.set(key, str(i))
                self.written.append(key)
            except (redis.RedisError, AttributeError):
                # AttributeError: redis-py 8.1's RedisCluster raises it instead of a RedisError when
                # a MOVED points at a node it has not seen yet (during a shard add).
                # A write refused during a slot move (TRYAGAIN) is not acknowledged: the client
                # would retry it; only acknowledged writes must survive.
                self.errors += 1
                time.sleep(0.01)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


def assert_all_present(client: RedisCluster, keys: list[str]) -> None:
    missing = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        values = [client.get(k) for k in chunk]
        missing += [k for k, v in zip(chunk, values, strict=True) if v is None]
    assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[:5]}"


def test_cluster_lifecycle_scale_while_writing_failover_and_rejoin(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "cluster.yaml", "orders", engine="redis", topology="cluster", shards=3
    )
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready", up
    assert len(up["members"]) == 6 and len(masters(up)) == 3

    status = moorage.status("orders", "--reveal-secrets")
    client = cluster_client(status)
    keys = [f"seed:{i}" for i in range(20_000)]
    pipe = client.pipeline()
    for key in keys:
        pipe.set(key, key)
    pipe.execute()

    writer = Writer(client, "live")
    writer.start()
    try:
        scaled = moorage.json("scale", "orders", "--shards", "4")
        assert len(masters(scaled)) == 4, scaled
        assert len(scaled["members"]) == 8
        back = moorage.json("scale", "orders", "--shards", "3")
        assert len(masters(back)) == 3 and len(back["members"]) == 6, back
    finally:
        writer.stop()
    assert writer.written, "the writer never succeeded: the test proved nothing"
    assert_all_present(client, keys + writer.written)

    # Kill a master: its replica must be promoted, and status must say so.
    victim = masters(moorage.status("orders"))[0]
    shard = victim["shard"]
    middleware = load_middleware(json.loads(manifest.read_text()))
    spec = resolve(middleware)
    moorage.runtime().kill_member(spec, victim["name"])

    def promoted() -> dict[str, Any] | None:
        now = moorage.status("orders")
        shard_masters = [m for m in masters(now) if m["shard"] == shard and m["healthy"]]
        return now if shard_masters and shard_masters[0]["name"] != victim["name"] else None

    after = wait_for(f"a replica of shard {shard} to be promoted", promoted)
    assert next(m for m in after["members"] if m["name"] == victim["name"])["healthy"] is False

    # `up` again is the reconcile: it restarts the dead member, which rejoins as a replica.
    again = moorage.json("up", "-f", str(manifest))
    rejoined = next(m for m in again["members"] if m["name"] == victim["name"])
    assert rejoined["role"] == "replica" and rejoined["healthy"], again
    assert again["phase"] == "Ready" and len(masters(again)) == 3
    assert_all_present(client, keys)
    client.close()


def test_sentinel_master_failover_is_reflected_in_status(moorage: Moorage, tmp_path: Path) -> None:
    require_binary("redis-sentinel", "redis-sentinel")
    manifest = write_manifest(tmp_path / "s.yaml", "session", engine="redis", topology="sentinel")
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready", up
    roles = sorted(m["role"] for m in up["members"])
    assert roles == ["master", "replica", "replica", "sentinel", "sentinel", "sentinel"]

    status = moorage.status("session", "--reveal-secrets")
    old_master = masters(status)[0]
    host, port = old_master["address"].split(":")
    with redis.Redis(host=host, port=int(port), password=status["password"]) as client:
        client.set("survives", "failover")
        client.wait(2, 5000)

    spec = resolve(load_middleware(json.loads(manifest.read_text())))
    moorage.runtime().kill_member(spec, old_master["name"])

    def new_master() -> dict[str, Any] | None:
        now = moorage.status("session")
        current = [m for m in masters(now) if m["healthy"]]
        return now if current and current[0]["name"] != old_master["name"] else None

    after = wait_for("sentinels to promote a new master", new_master)
    host, port = masters(after)[0]["address"].split(":")
    with redis.Redis(host=host, port=int(port), password=status["password"]) as client:
        assert client.get("survives") == b"failover"

    # Restarting the old master must not give two masters: it comes back as a replica.
    again = moorage.json("up", "-f", str(manifest))
    assert len(masters(again)) == 1 and masters(again)[0]["name"] != old_master["name"], again
    assert again["phase"] == "Ready"

    # `connect` names the current master; the URI it prints is the one a client uses.
    access = moorage.json("connect", "session", "--reveal-secrets")
    assert [a["user"] for a in access] == ["default", "default"], access
    assert access[1]["uri"].startswith("redis+sentinel://") and access[1]["uri"].endswith("/session")
    with redis.Redis.from_url(access[0]["uri"]) as client:
        assert client.get("survives") == b"failover"
        assert client.execute_command("ROLE")[0] == b"master"
    masked = moorage.run("connect", "session").stdout
    assert status["password"] not in masked and "****" in masked, masked


def test_invalid_spec_is_one_line_on_stderr_and_starts_nothing(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "bad.yaml", "bad", engine="redis", topology="cluster", parameters={"maxclients": 1}
    )
    result = moorage.run("up", "-f", str(manifest), check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: invalid spec: spec.parameters.maxclients: 1 is not allowed: must be an integer "
        ">= 16 and <= 100000"
    ], result.stderr
    assert moorage.runtime().list() == []
    assert not (moorage.state_dir / "default" / "bad").exists()


def test_parameters_live_and_restart_and_down_keeps_data(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "one.yaml", "single", engine="redis", topology="standalone")
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready" and [m["role"] for m in up["members"]] == ["master"]
    status = moorage.status("single", "--reveal-secrets")
    host, port = status["members"][0]["address"].split(":")

    # Auth is on by default.
    with redis.Redis(host=host, port=int(port)) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()

    report = moorage.json("set", "single", "maxmemory-policy=allkeys-lfu", "io-threads=2")
    assert report == {"appliedLive": {"maxmemory-policy": "allkeys-lfu"}, "needsRestart": {"io-threads": "2"}}
    # The restart-only one was rolled out by a restart before `set` returned (a new process).
    status = moorage.status("single", "--reveal-secrets")
    host, port = status["members"][0]["address"].split(":")
    with redis.Redis(host=host, port=int(port), password=status["password"], decode_responses=True) as client:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lfu"}
        assert client.config_get("io-threads") == {"io-threads": "2"}
        client.set("kept", "yes")
        # `connect --exec` opens redis-cli, authenticated through its environment (REDISCLI_AUTH).
        session = moorage.run("connect", "single", "--exec", stdin="SET via-exec yes\nGET kept\n")
        assert session.stdout.split() == ["OK", "yes"], session.stdout
        assert client.get("via-exec") == "yes"
        client.save()

    moorage.run("down", "single")
    stopped = moorage.run("status", "single", check=False)
    assert stopped.returncode == 1
    assert "stopped with its data kept" in stopped.stderr and "--purge" in stopped.stderr
    again = moorage.json("up", "-f", str(manifest))
    address = again["members"][0]["address"]
    host, port = address.split(":")
    with redis.Redis(host=host, port=int(port), password=status["password"], decode_responses=True) as client:
        assert client.get("kept") == "yes"
        # Both the live change and the restart-only one survived the restart via the config file.
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lfu"}
        assert client.config_get("io-threads") == {"io-threads": "2"}

    bad = moorage.run("set", "single", "maxmemory-policy=sometimes", check=False)
    assert bad.returncode == 2 and "spec.parameters.maxmemory-policy" in bad.stderr

    moorage.run("down", "single", "--purge")
    assert not (moorage.state_dir / "default" / "single").exists()


def test_cluster_replicas_per_shard_scale_up_and_down(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "c.yaml", "carts", engine="redis", topology="cluster", shards=3, replicas=1
    )
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready" and len(up["members"]) == 3 and len(masters(up)) == 3

    grown = moorage.json("scale", "carts", "--replicas", "2")
    assert grown["phase"] == "Ready", grown
    for shard in range(3):
        roles = sorted(m["role"] for m in grown["members"] if m["shard"] == shard)
        assert roles == ["master", "replica"], grown
    assert all(m["healthy"] for m in grown["members"])

    shrunk = moorage.json("scale", "carts", "--replicas", "1")
    assert shrunk["phase"] == "Ready", shrunk
    assert sorted(m["name"] for m in shrunk["members"]) == [f"carts-shard-{i}-0" for i in range(3)]
    # The removed replicas are forgotten by the cluster, not just stopped.
    status = moorage.status("carts", "--reveal-secrets")
    host, port = masters(status)[0]["address"].split(":")
    with redis.Redis(host=host, port=int(port), password=status["password"], decode_responses=True) as node:
        known = node.execute_command("CLUSTER", "NODES").strip().splitlines()
    assert len(known) == 3, known


def test_sentinel_replicas_scale_up_and_down(moorage: Moorage, tmp_path: Path) -> None:
    require_binary("redis-sentinel", "redis-sentinel")
    manifest = write_manifest(tmp_path / "s.yaml", "queue", engine="redis", topology="sentinel", replicas=2)
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready", up

    grown = moorage.json("scale", "queue", "--replicas", "3")
    data = [m for m in grown["members"] if m["role"] != "sentinel"]
    assert sorted(m["role"] for m in data) == ["master", "replica", "replica"], grown
    assert grown["phase"] == "Ready" and all(m["healthy"] for m in grown["members"])

    # A planned switchover through the sentinels: a new master, the old one a healthy replica.
    before = masters(grown)[0]["name"]
    switched = moorage.json("switchover", "queue")
    assert switched["phase"] == "Ready", switched
    assert len(masters(switched)) == 1 and masters(switched)[0]["name"] != before, switched
    assert next(m for m in switched["members"] if m["name"] == before)["role"] == "replica"

    # A rolling restart: sentinels and replicas first, then a switchover, then the old master.
    master = masters(switched)[0]
    host, port = master["address"].split(":")
    password = moorage.status("queue", "--reveal-secrets")["password"]
    with redis.Redis(host=host, port=int(port), password=password) as client:
        client.set("kept", "across the restart")
        # Both replicas hold it before the restart begins. Right after a switchover the replicas
        # re-attach to the new master and ACK once a second: a loaded machine (two test runs at
        # once) took more than 5 s.
        assert client.wait(2, 30000) == 2
    state = moorage.state_dir / "default" / "queue" / "state.json"
    pids = {m: r["pid"] for m, r in json.loads(state.read_text())["members"].items()}
    rolled = moorage.json("restart", "queue")
    assert rolled["phase"] == "Ready" and all(m["healthy"] for m in rolled["members"]), rolled
    assert len(masters(rolled)) == 1 and masters(rolled)[0]["name"] != master["name"], rolled
    now = {m: r["pid"] for m, r in json.loads(state.read_text())["members"].items()}
    assert all(now[m] != pids[m] for m in pids), (pids, now)  # every process is a new one
    host, port = masters(rolled)[0]["address"].split(":")
    with redis.Redis(host=host, port=int(port), password=password) as client:
        assert client.get("kept") == b"across the restart"

    shrunk = moorage.json("scale", "queue", "--replicas", "1")
    # Scaling in keeps ordinal 0 only; if it was a replica after the switchover, the master is
    # handed over to it first.
    data = [m for m in shrunk["members"] if m["role"] != "sentinel"]
    assert [m["name"] for m in data] == ["queue-0"] and data[0]["role"] == "master", shrunk
    assert shrunk["phase"] == "Ready"
