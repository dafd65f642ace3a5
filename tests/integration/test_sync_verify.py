"""``moorage sync verify`` against real redis-server processes: a 3-shard cluster source, a standalone
target.

The target is filled by the test itself with plain redis-py DUMP/RESTORE (keeping TTLs), then given
the differences each test needs (missing, extra, changed, expired keys): verify is tested on target
states made to order, which a sync could not produce on demand. That copying is test setup, not a sync
implementation; the data path through the real redis-shake, ending in verify finding no difference,
is tested in test_sync_local.py, test_sync_cutover.py and test_sync_manual.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from middleware.engines.redis.cluster import create_cluster
from sync import verify as verify_module
from sync.verify import parse_url, verify
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 120


@dataclass
class Pair:
    source_url: str
    target_url: str
    cluster: redis.RedisCluster
    target: redis.Redis
    keys: int


def _url(process: RedisProcess, password: str | None = PASSWORD) -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{process.endpoint.address}"


def _load(cluster: redis.RedisCluster) -> None:
    """Every type, small and large encodings (listpack/intset and hashtable/quicklist/skiplist)."""
    for i in range(300):
        cluster.set(f"str:{i}", f"value-{i}")
    cluster.set("bin:\x00\xff", b"\x00\x01binary\xff")
    cluster.set("ttl:short", "x", ex=3600)
    cluster.set("ttl:long", "y", ex=86400)
    cluster.hset("hash:small", mapping={f"f{i}": str(i) for i in range(10)})
    cluster.hset("hash:large", mapping={f"f{i}": str(i) * 10 for i in range(3000)})
    cluster.rpush("list:small", *[str(i) for i in range(10)])
    cluster.rpush("list:large", *[f"item-{i}" for i in range(2500)])
    cluster.sadd("set:ints", *range(20))
    cluster.sadd("set:large", *[f"m{i}" for i in range(2000)])
    cluster.zadd("zset:small", {f"m{i}": i / 3 for i in range(10)})
    cluster.zadd("zset:large", {f"m{i}": i * 1.5 for i in range(1500)})
    for i in range(5):
        cluster.xadd("stream:events", {"n": str(i), "kind": "tick"})
    cluster.expire("hash:small", 7200)


def _copy(cluster: redis.RedisCluster, target: redis.Redis) -> None:
    """Test setup only: DUMP/RESTORE every key with its remaining TTL (not a sync implementation)."""
    for node in cluster.get_primaries():
        client = cluster.get_redis_connection(node)
        for key in client.scan_iter(count=1000):
            payload = client.dump(key)
            pttl = client.pttl(key)
            assert payload is not None
            target.restore(key, max(pttl, 0), payload, replace=True)


@pytest.fixture
def pair(redis_group: RedisNodes) -> Iterator[Pair]:
    shards = redis_group.start(3, cluster=True, prefix="src")
    create_cluster([[p.endpoint] for p in shards], PASSWORD, timeout=30)
    target_process = redis_group.add("target", cluster=False)
    cluster = redis.RedisCluster(
        host=shards[0].endpoint.host, port=shards[0].port, password=PASSWORD, socket_timeout=5
    )
    target = redis.Redis(host=target_process.endpoint.host, port=target_process.port, password=PASSWORD)
    try:
        _load(cluster)
        _copy(cluster, target)
        keys = int(target.dbsize())
        assert keys == sum(int(p.client().dbsize()) for p in shards) == 312
        yield Pair(_url(shards[1]), _url(target_process), cluster, target, keys)
    finally:
        cluster.close()
        target.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", "verify", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_equal_copy_exits_zero(pair: Pair) -> None:
    result = _cli("--source", pair.source_url, "--target", pair.target_url, "-o", "json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["equal"] is True
    assert report["checked"] == pair.keys
    assert report["scannedTarget"] == pair.keys
    assert report["extraOnTarget"] == 0
    # The password never shows, not even percent-encoded.
    assert PASSWORD not in result.stdout + result.stderr
    assert quote(PASSWORD, safe="") not in result.stdout + result.stderr


def test_every_kind_of_difference_is_reported(pair: Pair) -> None:
    pair.target.delete("str:1")  # missing
    pair.target.set("str:2", "changed")  # value
    pair.target.delete("list:small")
    pair.target.sadd("list:small", "now-a-set")  # type
    pair.target.expire("str:3", 100_000)  # ttl (source has none)
    pair.target.set("only-on-target", "x")  # extra
    pair.target.hset("hash:large", "f2999", "changed")  # value, large (chunked) path
    pair.target.zadd("zset:small", {"m0": 99})  # value, zset order and score

    result = _cli(
        "--source",
        pair.source_url,
        "--target",
        pair.target_url,
        "-o",
        "json",
        "--max-diffs",
        "100",
    )
    assert result.returncode == 1, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["equal"] is False
    assert report["missingOnTarget"] == 1
    assert report["typeMismatches"] == 1
    assert report["ttlMismatches"] == 1
    assert report["valueMismatches"] == 3
    assert report["extraOnTarget"] == 1
    found = {(d["key"], d["kind"]) for d in report["firstDifferences"]}
    assert found == {
        ("str:1", "missing"),
        ("str:2", "value"),
        ("list:small", "type"),
        ("str:3", "ttl"),
        ("only-on-target", "extra"),
        ("hash:large", "value"),
        ("zset:small", "value"),
    }


def test_ttl_within_tolerance_is_equal_and_beyond_is_not(pair: Pair) -> None:
    source = parse_url(pair.source_url)
    target = parse_url(pair.target_url)
    pair.target.expire("ttl:long", 86400 - 30)
    assert verify(source, target, ttl_tolerance=60).equal
    report = verify(source, target, ttl_tolerance=5)
    assert (report.ttl_mismatch, report.total_differences) == (1, 1)


def test_sampled_mode_finds_difference_and_reports_sampled_counts(pair: Pair) -> None:
    pair.target.set("str:7", "changed")
    result = _cli(
        "--source",
        pair.source_url,
        "--target",
        pair.target_url,
        "--sample",
        "1.0",
        "--seed",
        "7",
        "-o",
        "json",
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["sampleRatio"] == 1.0 and report["seed"] == 7
    assert report["valueMismatches"] == 1 and report["checked"] == pair.keys

    # A partial sample checks a deterministic subset: same seed, same keys, same counts.
    partial = verify(parse_url(pair.source_url), parse_url(pair.target_url), sample_ratio=0.3, seed=7)
    again = verify(parse_url(pair.source_url), parse_url(pair.target_url), sample_ratio=0.3, seed=7)
    assert partial.scanned_source == pair.keys
    assert 0 < partial.checked < pair.keys
    assert (partial.checked, partial.value_mismatch) == (again.checked, again.value_mismatch)
    assert partial.value_mismatch == int(verify_module.sampled(b"str:7", 0.3, 7))


def test_password_from_env_and_small_batches(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches smaller than the data set and SCAN replies, so batching edges are exercised.
    monkeypatch.setattr(verify_module, "BATCH", 7)
    monkeypatch.setattr(verify_module, "SMALL_COLLECTION", 5)
    monkeypatch.setattr(verify_module, "CHUNK", 64)
    monkeypatch.setenv("MOORAGE_SOURCE_PASSWORD", PASSWORD)
    source = parse_url(
        pair.source_url.replace(f":{quote(PASSWORD, safe='')}@", ""), password_env="MOORAGE_SOURCE_PASSWORD"
    )
    report = verify(source, parse_url(pair.target_url))
    assert report.equal, report.as_dict()
    assert report.checked == pair.keys


def test_bad_input_and_wrong_password_exit_two(pair: Pair) -> None:
    bad = _cli("--source", "http://nowhere:1", "--target", pair.target_url)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "scheme" in bad.stderr
    wrong = _cli("--source", pair.source_url.replace("it-s3cret", "wrong"), "--target", pair.target_url)
    assert wrong.returncode == 2, wrong.stderr
    assert "error:" in wrong.stderr and "wrong" not in wrong.stderr.replace("error:", "")


def test_cluster_target_routes_every_key_to_its_owner(pair: Pair) -> None:
    """The other direction: a standalone source against a 3-shard cluster target, so each batch's probe
    is split across the target's masters and the replies put back in key order."""
    pair.cluster.delete("str:5")  # missing
    pair.cluster.set("str:6", "changed")  # value, string
    pair.cluster.hset("hash:large", "f0", "changed")  # value, large hash (chunked)
    pair.cluster.rpush("list:small", "one-more")  # value, small list
    pair.cluster.expire("str:8", 100_000)  # ttl
    pair.cluster.set("only-in-cluster", "x")  # extra, on a cluster target

    report = verify(parse_url(pair.target_url), parse_url(pair.source_url), max_diffs=100)

    assert report.checked == pair.keys and report.vanished == 0
    assert (report.missing, report.type_mismatch, report.ttl_mismatch) == (1, 0, 1)
    assert (report.value_mismatch, report.extra) == (3, 1)
    assert report.scanned_target == pair.keys  # one key deleted, one added
    found = {(d.key, d.kind) for d in report.differences}
    assert found == {
        ("str:5", "missing"),
        ("str:6", "value"),
        ("hash:large", "value"),
        ("list:small", "value"),
        ("str:8", "ttl"),
        ("only-in-cluster", "extra"),
    }


def test_acl_user_in_url(pair: Pair) -> None:
    """``redis://user:password@`` authenticates as that ACL user on every connection, the bulk ones too."""
    secret = "verifier-pw"
    pair.target.acl_setuser(
        "verifier",
        enabled=True,
        passwords=[f"+{secret}"],
        keys=["*"],
        commands=["+@read", "+info", "+ping", "+select", "+client"],
    )
    address = pair.target_url.rsplit("@", 1)[1]
    as_user = parse_url(f"redis://verifier:{secret}@{address}")
    report = verify(as_user, parse_url(pair.target_url))
    assert report.equal, report.as_dict()
    assert report.checked == report.checked_target == pair.keys
    assert secret not in json.dumps(report.as_dict())

    wrong = _cli("--source", f"redis://verifier:not-{secret}@{address}", "--target", pair.target_url)
    assert wrong.returncode == 2, wrong.stderr
    assert secret not in wrong.stderr + wrong.stdout


def test_acl_user_on_a_cluster_source(pair: Pair) -> None:
    """Cluster discovery runs as the URL's ACL user too: a user that exists only as an ACL user (the
    default user's password is not given) still finds every master and compares every key."""
    secret = "cluster-reader-pw"
    for node in pair.cluster.get_nodes():
        client = pair.cluster.get_redis_connection(node)
        client.acl_setuser(
            "clusterreader",
            enabled=True,
            passwords=[f"+{secret}"],
            keys=["*"],
            commands=["+@read", "+info", "+ping", "+cluster", "+client"],
        )
    address = pair.source_url.rsplit("@", 1)[1]
    report = verify(parse_url(f"redis://clusterreader:{secret}@{address}"), parse_url(pair.target_url))
    assert report.equal, report.as_dict()
    assert report.checked == pair.keys
    assert secret not in json.dumps(report.as_dict())
