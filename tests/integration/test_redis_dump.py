"""Redis DataDump / DataLoad on real Redis 7 deployments started by the Lifecycle on the LocalRuntime.

Deployments (shared by the tests of this module, each test sets the data it relies on):
- ``src``: cluster, 3 shards x (master + 1 replica): dumps are read from the replicas;
- ``sen``: sentinel, master + 1 replica + 3 sentinels: a different topology, and multi-db data;
- ``dst``: cluster, 3 shards without replicas: a fresh cluster with its own slot layout.

Equality is exact: the same key names, ``DEBUG DIGEST-VALUE`` per key (type, value, stream groups)
and the same TTLs within a tolerance (they count down while the test runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.base import DataSource, DumpOrigin, StoredObject
from middleware.engines.redis import dump as redis_dump
from middleware.engines.redis import live
from middleware.engines.redis.engine import ENGINE
from middleware.errors import OperationError
from middleware.lifecycle import Deployment, Lifecycle
from middleware.runtime.local import LocalRuntime
from tests.integration.dumpfiles import ChecksumMismatch, DirectorySource, save_dump
from tests.integration.harness import require_binary

pytestmark = pytest.mark.integration

KEYS_PER_TYPE = 500  # x 6 types = 3000 keys, plus one large value
LARGE = 6 << 20  # larger than one read of the snapshot stream: the end mark spans reads
TTL_TOLERANCE_MS = 600_000  # TTLs are about an hour; they only have to survive the round trip


@pytest.fixture(scope="module", autouse=True)
def _redis_installed() -> None:
    require_binary("redis-server", "redis-server")
    require_binary("redis-sentinel", "redis-sentinel")


def manifest(name: str, topology: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name},
        "spec": {"engine": "redis", "topology": topology, **spec},
    }


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    runtime = LocalRuntime(tmp_path_factory.mktemp("state"))
    try:
        yield Lifecycle(runtime)
    finally:
        for namespace, name in runtime.list():
            runtime.delete(namespace, name, purge=True)


@dataclass
class Env:
    lifecycle: Lifecycle
    deployment: Deployment

    @property
    def spec(self) -> Any:
        return self.deployment.spec

    @property
    def conn(self) -> Any:
        return self.lifecycle.connection(self.deployment)

    @property
    def password(self) -> str:
        return str(self.conn.password)

    def masters(self) -> list[Endpoint]:
        return [
            m.endpoint for m in self.conn.of("data") if live.node_role(m.endpoint, self.password).is_master
        ]

    def client(self, endpoint: Endpoint, db: int = 0) -> redis.Redis:
        return live.connect(endpoint, self.password, db=db, decode_responses=False, socket_timeout=30)

    def writer(self) -> Any:
        """A client that writes anywhere in the deployment (cluster-aware on a cluster)."""
        if self.spec.topology == "cluster":
            first = self.masters()[0]
            return redis.RedisCluster(host=first.host, port=first.port, password=self.password)
        return self.client(self.masters()[0])

    def flush(self) -> None:
        for endpoint in self.masters():
            self.client(endpoint).flushall()

    def sync_replicas(self) -> None:
        """Wait until every replica has what its master has (dumps are read from replicas)."""
        replicas = self.spec.replicas - 1
        for endpoint in self.masters():
            assert self.client(endpoint).execute_command("WAIT", replicas, 30000) >= replicas


def up(lifecycle: Lifecycle, doc: dict[str, Any]) -> Env:
    status = lifecycle.up(doc)
    assert status.phase == "Ready", status
    return Env(lifecycle, lifecycle.existing("default", doc["metadata"]["name"]))


@pytest.fixture(scope="module")
def src(lifecycle: Lifecycle) -> Env:
    return up(lifecycle, manifest("src", "cluster", shards=3, replicas=2))


@pytest.fixture(scope="module")
def sen(lifecycle: Lifecycle) -> Env:
    return up(lifecycle, manifest("sen", "sentinel", replicas=2, sentinels=3))


@pytest.fixture(scope="module")
def dst(lifecycle: Lifecycle) -> Env:
    return up(lifecycle, manifest("dst", "cluster", shards=3, replicas=1))


def fill(env: Env) -> int:
    """Every data type, binary keys and values, TTLs on some keys, one large value. Returns keys."""
    env.flush()
    client = env.writer()
    pipe = client.pipeline(transaction=False)
    for i in range(KEYS_PER_TYPE):
        pipe.set(b"str:\x00\xff:%d" % i, bytes(range(256)) + b"%d" % i)
        pipe.hset(f"hash:{i}", mapping={f"f{j}": f"v{i}-{j}" for j in range(5)})
        pipe.rpush(f"list:{i}", *[f"item{j}" for j in range(5)])
        pipe.sadd(f"set:{i}", *[f"m{j}" for j in range(i % 7 + 1)])
        pipe.zadd(f"zset:{i}", {f"z{j}": j * 1.5 for j in range(4)})
        pipe.xadd(f"stream:{i}", {"n": str(i)})
        pipe.xgroup_create(f"stream:{i}", "readers", id="0")
        if i % 7 == 0:
            for kind in ("hash", "list", "set", "zset", "stream"):
                pipe.pexpire(f"{kind}:{i}", 3_600_000 + i)
            pipe.pexpire(b"str:\x00\xff:%d" % i, 3_600_000 + i)
    pipe.set("large", random.Random(5).randbytes(LARGE))  # incompressible: RDB uses LZF
    pipe.execute()
    client.close()
    env.sync_replicas()
    return 6 * KEYS_PER_TYPE + 1


Snapshot = dict[tuple[int, bytes], tuple[bytes, int]]


def snapshot(env: Env, dbs: tuple[int, ...] = (0,)) -> Snapshot:
    """(db, key) -> (DEBUG DIGEST-VALUE, PTTL) over every master."""
    result: Snapshot = {}
    for endpoint in env.masters():
        for db in dbs:
            client = env.client(endpoint, db)
            keys = list(client.scan_iter(count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("DEBUG", "DIGEST-VALUE", key)
                pipe.pttl(key)
            replies = pipe.execute()
            for n, key in enumerate(keys):
                digest = replies[2 * n][0]
                assert (db, key) not in result, f"{key!r} is on two masters"
                result[(db, key)] = (digest, int(replies[2 * n + 1]))
    return result


def assert_same_data(actual: Snapshot, expected: Snapshot) -> None:
    missing, extra = sorted(expected.keys() - actual.keys()), sorted(actual.keys() - expected.keys())
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    wrong = [k for k in expected if actual[k][0] != expected[k][0]]
    assert not wrong, f"{len(wrong)} keys differ, e.g. {wrong[:5]}"
    for key, (_, ttl) in expected.items():
        got = actual[key][1]
        if ttl < 0:
            assert got == ttl, key
        else:
            assert 0 < got <= ttl and ttl - got < TTL_TOLERANCE_MS, (key, ttl, got)


def dump(env: Env, directory: Path) -> DirectorySource:
    return save_dump(ENGINE.data_dump(env.spec, env.conn), directory)


def load(env: Env, source: DataSource) -> dict[str, int]:
    report = ENGINE.data_load(env.spec, env.conn, source)
    # The runbook's post-restore verification, verbatim.
    assert ENGINE.data_inventory(env.spec, env.conn) == report.counts
    return report.counts


def origin_of(source: DataSource, topology: str, shards: int) -> DumpOrigin:
    return DumpOrigin("redis", "7.0", topology, shards, {"objects": [o.meta for o in source.objects]})


# --- cluster ---------------------------------------------------------------------------------------


def test_cluster_dump_reads_replicas_and_restores_the_same_cluster_exactly(src: Env, tmp_path: Path) -> None:
    keys = fill(src)
    expected = snapshot(src)
    digests = {e: src.client(e).execute_command("DEBUG", "DIGEST") for e in src.masters()}
    assert ENGINE.data_inventory(src.spec, src.conn) == {"keys": keys, "db0/keys": keys}

    saved = dump(src, tmp_path / "dump")

    objects = saved.objects
    assert [o.name for o in objects] == ["shard-0.rdb", "shard-1.rdb", "shard-2.rdb"]
    masters = {e.address for e in src.masters()}
    slots: list[int] = []
    for o in objects:
        assert o.meta["role"] == "replica" and o.meta["node"] not in masters, o.meta
        assert o.meta["transfer"] == "diskless"  # Redis 7 + the engine's config: diskless sync
        assert o.meta["redisVersion"].startswith("7.")
        assert o.meta["masterReplOffset"] > 0
        slots += [s for first, last in o.meta["slots"] for s in range(first, last + 1)]
        assert o.size > 0
    assert sorted(slots) == list(range(16384))
    assert sum(o.meta["keyspace"]["db0"] for o in objects) == keys
    assert any(o.size > LARGE for o in objects)

    # Change the data every way: deleted, overwritten, new keys, changed TTLs.
    writer = src.writer()
    for i in range(0, 100):
        writer.delete(f"hash:{i}")
        writer.set(f"list:{i + 100}", "overwritten")
        writer.set(f"new:{i}", "new")
        writer.persist(f"zset:{7 * i}")
    writer.close()

    steps: list[tuple[str, float, float]] = []
    counts = ENGINE.data_load(src.spec, src.conn, saved, lambda *step: steps.append(step)).counts

    assert counts == {"keys": keys, "db0/keys": keys} == ENGINE.data_inventory(src.spec, src.conn)
    loading = [(done, total) for step, done, total in steps if step == "loading keys"]
    assert loading[-1] == (keys, keys) and [d for d, _ in loading] == sorted(d for d, _ in loading)
    assert_same_data(snapshot(src), expected)
    # Same slot layout, so every master holds exactly what it held when the dump was taken.
    assert {e: src.client(e).execute_command("DEBUG", "DIGEST") for e in src.masters()} == digests


def test_cluster_to_sentinel_and_disk_based_dump_back_into_another_cluster(
    src: Env, sen: Env, dst: Env, tmp_path: Path
) -> None:
    keys = fill(src)
    expected = snapshot(src)
    from_cluster = dump(src, tmp_path / "from-cluster")
    # Whatever the targets hold before, including another db, is gone afterwards.
    sen.writer().set("stale", "x")
    sen.client(sen.masters()[0], 5).set("stale-db5", "x")
    dst.writer().set("stale", "x")

    assert load(sen, from_cluster) == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(sen, dbs=(0, 5)), expected)

    # The node serving a snapshot decides its form: disk-based here (``$<length>`` payload).
    data_nodes = [m.endpoint for m in sen.conn.of("data")]
    for endpoint in data_nodes:
        sen.client(endpoint).config_set("repl-diskless-sync", "no")
    sen.sync_replicas()
    try:
        from_sentinel = dump(sen, tmp_path / "from-sentinel")
    finally:
        for endpoint in data_nodes:
            sen.client(endpoint).config_set("repl-diskless-sync", "yes")
    (meta,) = [o.meta for o in from_sentinel.objects]
    assert [o.name for o in from_sentinel.objects] == ["data.rdb"]
    assert meta["transfer"] == "disk" and meta["role"] == "replica"
    assert meta["keyspace"] == {"db0": keys}
    assert ENGINE.data_compatibility(origin_of(from_sentinel, "sentinel", 1), dst.spec) is None

    assert load(dst, from_sentinel) == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(dst), expected)
    # Every key lives on the master that owns its slot, so cluster clients find every one.
    total = 0
    for endpoint in dst.masters():
        client = dst.client(endpoint)
        owned = {
            slot
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS")
            if int(master[1]) == endpoint.port
            for slot in range(first, last + 1)
        }
        assert owned
        node_keys = list(client.scan_iter(count=1000))
        assert all(key_slot(k) in owned for k in node_keys)
        sample = sorted(owned)[:: max(1, len(owned) // 50)]
        assert sum(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", s) for s in sample) == sum(
            1 for k in node_keys if key_slot(k) in set(sample)
        )
        total += int(client.dbsize())
    assert total == keys
    reader = redis.RedisCluster(host=dst.masters()[0].host, port=dst.masters()[0].port, password=dst.password)
    assert reader.get(b"str:\x00\xff:42") == bytes(range(256)) + b"42"
    assert reader.lrange("list:3", 0, -1) == [f"item{j}".encode() for j in range(5)]
    reader.close()


# --- failures and retries ----------------------------------------------------------------------------


class _FailingHalfway(io.RawIOBase):
    """A source stream that breaks half-way, as a dropped S3 connection would."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            raise ConnectionResetError("source connection reset half-way")
        data = self._inner.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


class BreakingSource:
    """A DataSource whose object ``broken`` fails half-way through its bytes."""

    def __init__(self, inner: DirectorySource, broken: str) -> None:
        self._inner = inner
        self._broken = broken

    @property
    def objects(self) -> list[StoredObject]:
        return self._inner.objects

    def open(self, name: str) -> BinaryIO:
        stream = self._inner.open(name)
        if name != self._broken:
            return stream
        size = next(o.size for o in self.objects if o.name == name)
        return io.BufferedReader(_FailingHalfway(stream, size // 2))  # type: ignore[return-value]


def _copy_with_rewritten_object(saved: DirectorySource, directory: Path, name: str, offset: int) -> None:
    """A copy of the dump whose object ``name`` has a flipped byte at ``offset``; index untouched."""
    shutil.copytree(saved.directory, directory)
    path = directory / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_or_interrupted_loads_fail_and_a_second_load_is_exact(
    src: Env, sen: Env, tmp_path: Path
) -> None:
    keys = fill(src)
    expected = snapshot(src)
    saved = dump(src, tmp_path / "dump")
    small = min(saved.objects, key=lambda o: o.size)

    # A flipped byte: the source's checksum check fails the read, and the error reaches the caller.
    _copy_with_rewritten_object(saved, tmp_path / "flipped", small.name, small.size // 2)
    with pytest.raises(ChecksumMismatch):
        ENGINE.data_load(sen.spec, sen.conn, DirectorySource(tmp_path / "flipped"))

    # A flipped byte with a matching checksum (corrupted before it was stored): redis-server refuses it.
    _copy_with_rewritten_object(saved, tmp_path / "bad-rdb", small.name, small.size // 2)
    index_path = tmp_path / "bad-rdb" / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["objects"]:
        if entry["name"] == small.name:
            entry["sha256"] = hashlib.sha256((tmp_path / "bad-rdb" / small.name).read_bytes()).hexdigest()
    index_path.write_text(json.dumps(index))
    with pytest.raises(OperationError, match=f"{small.name}: redis-server could not open the RDB"):
        ENGINE.data_load(sen.spec, sen.conn, DirectorySource(tmp_path / "bad-rdb"))

    # Killed half-way through the second object: the first object's keys are in, the rest not.
    with pytest.raises(ConnectionResetError):
        ENGINE.data_load(sen.spec, sen.conn, BreakingSource(saved, saved.objects[1].name))
    partial = ENGINE.data_inventory(sen.spec, sen.conn)["keys"]
    assert 0 < partial < keys

    # Loading again from that state (as a rollback would) ends with exactly the dump's data.
    assert load(sen, saved) == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(sen), expected)


def test_a_target_refusing_keys_half_way_fails_the_load_and_leaves_no_reader_running(
    src: Env, sen: Env, tmp_path: Path
) -> None:
    """The scratch server is read ahead by a thread (``dump._read_ahead``): a RESTORE the target
    refuses (out of memory: a real maxmemory, no eviction) fails the load with the target's error,
    the reading thread stops with it, and the next load is exact."""
    keys = fill(src)
    expected = snapshot(src)
    saved = dump(src, tmp_path / "dump")
    (master,) = sen.masters()
    client = sen.client(master)
    sen.flush()
    room = int(client.info("memory")["used_memory"]) + (LARGE // 2)  # less than the large value
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(room))
    try:
        with pytest.raises(OperationError, match=r"RESTORE of \d+ keys into .* failed.*OOM"):
            ENGINE.data_load(sen.spec, sen.conn, saved)
    finally:
        client.config_set("maxmemory", "0")
    assert [t.name for t in threading.enumerate() if t.name == "moorage-redis-read-ahead"] == []
    assert load(sen, saved) == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(sen), expected)


# --- databases and versions --------------------------------------------------------------------------


def test_keys_outside_db0_round_trip_on_sentinel_and_are_refused_by_a_cluster(
    sen: Env, dst: Env, tmp_path: Path
) -> None:
    sen.flush()
    master = sen.masters()[0]
    for db, count in ((0, 20), (3, 7)):
        client = sen.client(master, db)
        for i in range(count):
            client.set(f"k{i}", f"db{db}")
    sen.sync_replicas()
    expected = snapshot(sen, dbs=(0, 3))
    saved = dump(sen, tmp_path / "dump")
    assert saved.objects[0].meta["keyspace"] == {"db0": 20, "db3": 7}

    reason = ENGINE.data_compatibility(origin_of(saved, "sentinel", 1), dst.spec)
    assert reason is not None and "db3 (7 keys)" in reason and "db0 only" in reason
    dst.writer().set("kept", "yes")
    before = ENGINE.data_inventory(dst.spec, dst.conn)
    with pytest.raises(OperationError, match="db3"):
        ENGINE.data_load(dst.spec, dst.conn, saved)
    assert ENGINE.data_inventory(dst.spec, dst.conn) == before  # refused before anything was touched

    sen.client(master, 3).set("extra", "x")
    assert load(sen, saved) == {"keys": 27, "db0/keys": 20, "db3/keys": 7}
    assert_same_data(snapshot(sen, dbs=(0, 3)), expected)


def test_compatibility_refuses_a_newer_redis_and_names_both_versions(sen: Env, lifecycle: Lifecycle) -> None:
    newer = DumpOrigin("redis", "7.2", "sentinel", 1, {"objects": [{"redisVersion": "7.2.4"}]})
    reason = ENGINE.data_compatibility(newer, sen.spec)
    assert reason is not None and "7.2.4" in reason and "7.0" in reason
    on_72 = lifecycle.prepare(manifest("later", "sentinel", version="7.2")).spec
    assert ENGINE.data_compatibility(newer, on_72) is None
    older = DumpOrigin("redis", "7.0", "cluster", 3, {"objects": [{"redisVersion": "7.0.15"}]})
    assert ENGINE.data_compatibility(older, on_72) is None
    other = DumpOrigin("postgresql", "18", "replication", 1)
    assert ENGINE.data_compatibility(other, sen.spec) == "the backup is of postgresql, the target runs redis"


# --- same shape: loaded by replication ---------------------------------------------------------------


def _sentinel_down_after(env: Env) -> dict[str, int]:
    values = {}
    for member in env.conn.of("sentinel"):
        state = live.call(
            member.endpoint,
            env.password,
            lambda c: c.execute_command("SENTINEL", "MASTER", env.spec.name),
        )
        fields = dict(zip(state[::2], state[1::2], strict=True))
        values[member.endpoint.address] = int(fields["down-after-milliseconds"])
    return values


def _target_settings(env: Env, master: Endpoint) -> dict[str, Any]:
    client = env.client(master)
    settings = {
        "role": client.execute_command("ROLE")[0],
        **client.config_get("masterauth"),
        **client.config_get("repl-diskless-load"),
    }
    client.close()
    return settings


def test_a_one_rdb_dump_loads_into_a_sentinel_master_by_replication_and_everything_is_put_back(
    sen: Env, tmp_path: Path
) -> None:
    """The master reads the dump itself (it follows this process for one full resync); sentinels
    hold failovers meanwhile, and the master's own settings and role are back after it."""
    keys = fill(sen)
    sen.client(sen.masters()[0], 3).set("in-db3", "x")
    sen.sync_replicas()
    expected = snapshot(sen, dbs=(0, 3))
    with_ttl = sum(1 for (db, _), (_, ttl) in expected.items() if db == 0 and ttl > 0)
    saved = dump(sen, tmp_path / "dump")
    (master,) = sen.masters()
    settings, down_after = _target_settings(sen, master), _sentinel_down_after(sen)
    sen.writer().set("stale", "x")
    sen.client(master, 5).set("stale-db5", "x")

    held: list[dict[str, int]] = []
    steps: list[tuple[str, float, float]] = []

    def watch(step: str, done: float, total: float) -> None:
        steps.append((step, done, total))
        if step == "sending the RDB to the target" and not held:
            held.append(_sentinel_down_after(sen))

    report = ENGINE.data_load(sen.spec, sen.conn, saved, watch)
    assert report.actions == [f"data.rdb: {keys + 1} keys, loaded by {master.address} itself (replication)"]
    # While the master followed this process, no sentinel would have called it down for 10 minutes.
    assert held and all(ms >= 600_000 for ms in held[0].values()) and len(held[0]) == 3, held
    # Progress: the bytes sent, up to the object's size, then the target's own parsing, to its end.
    size = saved.objects[0].size
    sent = [done for step, done, _ in steps if step == "sending the RDB to the target"]
    assert sent == sorted(sent) and sent[-1] == size
    assert ("the target is loading the RDB", size, size) in steps
    assert report.counts == {"keys": keys + 1, "db0/keys": keys, "db3/keys": 1}
    assert ENGINE.data_inventory(sen.spec, sen.conn) == report.counts
    # Keys with a TTL may expire before a restore is verified: they are the tolerance.
    assert report.tolerance == {"keys": with_ttl, "db0/keys": with_ttl}
    assert_same_data(snapshot(sen, dbs=(0, 3, 5)), expected)
    assert sen.masters() == [master]
    assert _target_settings(sen, master) == settings
    assert _sentinel_down_after(sen) == down_after
    # The load returns once the replica follows the master's history since the load, at its
    # offset: it serves the restored data, not the "stale" key from before (WAIT alone cannot tell:
    # the master's offset starts again with the load, so the old, longer one counts as caught up).
    (replica,) = [m.endpoint for m in sen.conn.of("data") if m.endpoint != master]
    followed = sen.client(replica).info("replication")
    assert followed["master_link_status"] == "up", followed
    assert followed["master_replid"] == sen.client(master).info("replication")["master_replid"], followed
    assert ("replicas resynchronising", 1, 1) in steps
    assert sen.client(replica).dbsize() == keys
    assert sen.client(replica).get("stale") is None


def test_a_replica_that_does_not_resynchronise_in_time_is_named_not_failed(sen: Env) -> None:
    """The load is done on the master: a replica still on the old history when the wait ends is
    named in the report (it serves the data from before until it resynchronises), the load kept."""
    (master,) = sen.masters()
    (replica,) = [m.endpoint for m in sen.conn.of("data") if m.endpoint != master]
    steps: list[tuple[str, float, float]] = []
    # The master itself as a "replica": it follows no one, so it never takes the master's history.
    notes = redis_dump._await_replicas(
        master, [replica, master], sen.conn.password, lambda *step: steps.append(step), timeout=1.0
    )
    assert notes == [
        f"replica {master.address} had not resynchronised after 1 s: it serves the data from before "
        "the restore until it does"
    ]
    assert steps[0] == ("replicas resynchronising", 0, 2) and ("replicas resynchronising", 1, 2) in steps


def test_a_corrupt_rdb_never_completes_a_load_by_replication(sen: Env, tmp_path: Path) -> None:
    """The target parses nothing until the end mark, which is sent only after the stored object's
    checksum (a byte flipped in storage) and the RDB's own CRC64 (a byte flipped before it was
    stored, so the store's checksum matches it) both held: either way it keeps serving its own data
    (Redis 7 would terminate on an RDB it cannot parse) and is put back as it was."""
    fill(sen)
    saved = dump(sen, tmp_path / "dump")
    (obj,) = saved.objects
    (master,) = sen.masters()
    sen.writer().set("kept", "yes")
    before = snapshot(sen)
    settings = _target_settings(sen, master)
    pid = sen.client(master).info("server")["process_id"]

    _copy_with_rewritten_object(saved, tmp_path / "flipped", obj.name, obj.size // 2)
    with pytest.raises(ChecksumMismatch):
        ENGINE.data_load(sen.spec, sen.conn, DirectorySource(tmp_path / "flipped"))
    assert_same_data(snapshot(sen), before)

    _copy_with_rewritten_object(saved, tmp_path / "bad-rdb", obj.name, obj.size // 2)
    index_path = tmp_path / "bad-rdb" / "index.json"
    index = json.loads(index_path.read_text())
    index["objects"][0]["sha256"] = hashlib.sha256((tmp_path / "bad-rdb" / obj.name).read_bytes()).hexdigest()
    index_path.write_text(json.dumps(index))
    with pytest.raises(OperationError, match="RDB's own CRC64 does not match"):
        ENGINE.data_load(sen.spec, sen.conn, DirectorySource(tmp_path / "bad-rdb"))
    assert_same_data(snapshot(sen), before)

    assert sen.client(master).info("server")["process_id"] == pid  # never restarted
    assert sen.masters() == [master]
    assert _target_settings(sen, master) == settings


@contextlib.contextmanager
def _unwritable(directory: Path) -> Iterator[None]:
    """No file can be created in ``directory`` while inside: read-only permissions, or for root
    (whom permissions do not stop) the immutable attribute."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr (e2fsprogs): cannot make a directory unwritable")
    made = subprocess.run([chattr, "+i", str(directory)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"root, and chattr +i failed ({made.stderr.strip()}): cannot make it unwritable")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_a_target_that_cannot_take_a_resync_is_loaded_key_by_key(sen: Env, tmp_path: Path) -> None:
    """A real refusal on the target's side: with a data directory it cannot write, it cannot open
    the temporary file a resync needs and drops the connection; the load goes on key by key and is
    exact."""
    keys = fill(sen)
    expected = snapshot(sen)
    saved = dump(sen, tmp_path / "dump")
    (master,) = sen.masters()
    directory = Path(str(sen.client(master).config_get("dir")["dir"]))
    with _unwritable(directory):
        report = ENGINE.data_load(sen.spec, sen.conn, saved)
    assert report.actions[0].startswith("key by key: loading by replication was not possible")
    assert report.counts == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(sen), expected)
    assert sen.masters() == [master]


class _SlowSource:
    """A DataSource whose streams hand out 64 KiB every 50 ms: a load that takes long enough for a
    test to kill the process doing it, half-way through the transfer."""

    def __init__(self, inner: DirectorySource) -> None:
        self._inner = inner

    @property
    def objects(self) -> list[StoredObject]:
        return self._inner.objects

    def open(self, name: str) -> BinaryIO:
        inner = self._inner.open(name)

        class Slow(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                time.sleep(0.05)
                data = inner.read(min(len(buffer), 64 << 10))
                buffer[: len(data)] = data
                return len(data)

        return io.BufferedReader(Slow())  # type: ignore[return-value]


def _kill_a_load_half_way(env: Env, saved: DirectorySource, master: Endpoint) -> None:
    """Start a load of ``saved`` into ``env`` in a child process and SIGKILL it during the transfer."""
    pid = os.fork()
    if pid == 0:  # the child: a load that is killed before it ends
        try:
            ENGINE.data_load(env.spec, env.conn, _SlowSource(saved))
        finally:
            os._exit(0)
    client = env.client(master)
    try:
        deadline = time.monotonic() + 30
        while client.info("replication").get("master_sync_in_progress") != 1:
            assert time.monotonic() < deadline, "the load never started its transfer"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert client.execute_command("ROLE")[0] == b"slave"
    client.close()


def test_a_load_by_replication_killed_half_way_is_undone_by_the_next_reconcile(
    sen: Env, lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """The process loading is SIGKILLed during the transfer: the master is left following a dead
    address with the one-time masterauth, and the sentinels holding failovers. It still holds its
    own data (nothing was parsed), and the next reconcile (``moorage up``) makes it a master again
    with its own masterauth and the spec's down-after."""
    fill(sen)
    saved = dump(sen, tmp_path / "dump")
    sen.writer().set("kept", "yes")
    before = snapshot(sen)
    (master,) = sen.masters()
    settings, down_after = _target_settings(sen, master), _sentinel_down_after(sen)

    _kill_a_load_half_way(sen, saved, master)
    assert all(ms >= 600_000 for ms in _sentinel_down_after(sen).values())
    # Observed as not ready, saying why (the operator's periodic observation heals from there).
    observed = lifecycle.status("default", "sen")
    assert observed.phase != "Ready" and "down-after-milliseconds is not 5000" in str(observed), observed

    status = lifecycle.up(manifest("sen", "sentinel", replicas=2, sentinels=3))
    assert status.phase == "Ready", status
    assert sen.masters() == [master]
    assert _target_settings(sen, master) == settings
    assert _sentinel_down_after(sen) == down_after
    assert_same_data(snapshot(sen), before)


def test_a_standalone_left_following_a_killed_load_is_a_master_again_after_up(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    solo = up(lifecycle, manifest("solo", "standalone"))
    try:
        fill(solo)
        saved = dump(solo, tmp_path / "dump")
        before = snapshot(solo)
        master = solo.conn.of("data")[0].endpoint
        settings = _target_settings(solo, master)

        _kill_a_load_half_way(solo, saved, master)

        assert lifecycle.up(manifest("solo", "standalone")).phase == "Ready"
        assert _target_settings(solo, master) == settings
        assert_same_data(snapshot(solo), before)
    finally:
        lifecycle.down("default", "solo", purge=True)


def test_a_reconcile_during_a_load_by_replication_leaves_it_alone(
    sen: Env, lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """``moorage up`` (like the operator's periodic heal) while a load is moving data: the master
    follows the loading process with the load's token, but its link is up, so it is not released;
    the load ends by replication and exact."""
    keys = fill(sen)
    expected = snapshot(sen)
    saved = dump(sen, tmp_path / "dump")
    sen.flush()
    (master,) = sen.masters()
    pid = os.fork()
    if pid == 0:  # the child: a slow load, exit status 0 only if it went by replication
        code = 1
        try:
            report = ENGINE.data_load(sen.spec, sen.conn, _SlowSource(saved))
            code = 0 if report.actions[0].endswith("(replication)") else 2
        finally:
            os._exit(code)
    client = sen.client(master)
    deadline = time.monotonic() + 30
    while client.info("replication").get("master_sync_in_progress") != 1:
        assert time.monotonic() < deadline, "the load never started its transfer"
        time.sleep(0.05)
    # Its bootstrap waits while the master follows the load (not a master yet), then finds it one.
    assert lifecycle.up(manifest("sen", "sentinel", replicas=2, sentinels=3)).phase == "Ready"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ENGINE.data_inventory(sen.spec, sen.conn) == {"keys": keys, "db0/keys": keys}
    assert_same_data(snapshot(sen), expected)
    assert sen.masters() == [master]


# --- spec.tls ---------------------------------------------------------------------------------------


def test_a_tls_deployment_dumps_over_tls_and_loads_into_another_key_by_key(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """With spec.tls the snapshot stream and the load run over TLS with the deployment's CA (its
    plaintext port is closed); a TLS target is loaded key by key, since loading by replication
    would have it dial this process over TLS."""
    sealed = up(lifecycle, manifest("sealed", "sentinel", replicas=2, sentinels=3, tls={"enabled": True}))
    target = up(lifecycle, manifest("sealed-copy", "standalone", tls={"enabled": True}))
    assert all(m.endpoint.tls is not None for m in sealed.conn.members)
    keys = fill(sealed)
    expected = snapshot(sealed)
    saved = dump(sealed, tmp_path / "dump")
    report = ENGINE.data_load(target.spec, target.conn, saved)
    assert report.counts["keys"] == keys
    assert ENGINE.data_inventory(target.spec, target.conn) == report.counts
    assert report.actions[0] == (
        f"key by key: loading by replication was not possible ({target.masters()[0].address} "
        "replicates over TLS, which this loader does not serve)"
    ), report.actions
    assert_same_data(snapshot(target), expected)
