"""A workload's share of the target (``sync.share``), on real servers and the real redis-shake.

Why it exists, shown on redis-shake v4.2.0 itself: a second full sync into the same target (what every
restart is) appends every list again (upstream #921), and ``sync verify`` sees it; emptying the
workload's share first makes the second run come out equal. Then what a share is: a cluster source
shard's slots (on a standalone and on a cluster target), a key filter, the databases synced.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster import create_cluster
from middleware.models.sync import RedisEndpointKind, SyncFilter
from sync import manual, shake_config
from sync.plan import RedisTopology, ShakeWorkload, Shard, WriterTarget, plan, standalone
from sync.share import clear_share
from sync.verify import RedisURL, verify
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess
from tests.integration.shake_harness import ShakeProcess, status_port_base

pytestmark = pytest.mark.integration


def _url(process: RedisProcess, db: int = 0) -> RedisURL:
    return RedisURL(process.endpoint, None, PASSWORD, db)


def _full_sync(binary: str, source: RedisProcess, target: RedisProcess, directory: Path) -> None:
    """One redis-shake run to the end of its full sync, then stopped (as a restart would)."""
    (item,) = manual.write_configs(
        manual.plan_urls("orders", _url(source), _url(target), status_port_base=status_port_base(1)),
        directory,
        _url(source),
        _url(target),
    )
    assert item.config is not None
    shake = ShakeProcess(binary, item.config).start()
    try:
        shake.wait_streaming()
    finally:
        shake.stop()


def test_a_second_full_sync_needs_an_empty_share(
    redis_group: RedisNodes, redis_shake: str, tmp_path: Path
) -> None:
    source = redis_group.add("source", cluster=False)
    target = redis_group.add("target", cluster=False)
    with source.client() as client:
        client.rpush("queue", *range(10))
        client.hset("profile", mapping={"a": 1, "b": 2})
        client.set("plain", "v")
    _full_sync(redis_shake, source, target, tmp_path / "first")
    assert verify(_url(source), _url(target)).equal

    with source.client() as client:  # meanwhile on the source, while no redis-shake runs
        client.hdel("profile", "b")
        client.delete("plain")
    _full_sync(redis_shake, source, target, tmp_path / "again")
    report = verify(_url(source), _url(target))
    with target.client() as client:
        assert client.llen("queue") == 20, "redis-shake v4.2.0 appended the list a second time (#921)"
    assert {d.key for d in report.differences} == {"queue", "profile", "plain"}, report.differences

    (workload,) = plan("orders", standalone(source.endpoint), standalone(target.endpoint))
    assert clear_share(workload, _url(target)) == 3
    _full_sync(redis_shake, source, target, tmp_path / "emptied")
    assert verify(_url(source), _url(target)).equal


def _shard_workload(slots: tuple[tuple[int, int], ...], flt: SyncFilter | None = None) -> ShakeWorkload:
    source = RedisTopology(RedisEndpointKind.CLUSTER, (Shard(Endpoint("src", 1), (), slots),))
    (workload,) = plan("orders", source, standalone(Endpoint("dst", 2)))
    return replace(workload, filter=flt or SyncFilter())


def test_a_shard_share_on_a_standalone_target_with_a_filter_and_databases(redis_group: RedisNodes) -> None:
    target = redis_group.add("target", cluster=False)
    keys = [f"{prefix}{i}" for prefix in ("a:", "a:tmp:", "b:") for i in range(300)]
    with target.client() as client:
        client.mset(dict.fromkeys(keys, "v"))
    with redis.Redis(port=target.port, password=PASSWORD, db=3) as other_db:
        other_db.set("a:1", "in db 3")  # a cluster source syncs db 0 only
    prefixes = SyncFilter(allow_key_prefixes=["a:"], block_key_prefixes=["a:tmp:"])
    workload = _shard_workload(((0, 8191),), prefixes)
    doomed = {
        k for k in keys if k.startswith("a:") and not k.startswith("a:tmp:") and key_slot(k.encode()) <= 8191
    }
    assert 0 < len(doomed) < 300
    assert clear_share(workload, _url(target)) == len(doomed)
    with target.client() as client:
        assert set(client.keys("*")) == set(keys) - doomed
    with redis.Redis(port=target.port, password=PASSWORD, db=3) as other_db:
        assert other_db.get("a:1") == b"in db 3"

    # A standalone source syncs every database (or the allowed ones): its share spans them.
    (whole,) = plan("orders", standalone(Endpoint("src", 1)), standalone(target.endpoint))
    only_3 = replace(whole, filter=SyncFilter(allow_dbs=[3]))
    assert clear_share(only_3, _url(target)) == 1
    assert clear_share(whole, _url(target)) == len(keys) - len(doomed)
    with target.client() as client:
        assert client.dbsize() == 0


def test_a_shard_share_on_a_cluster_target(redis_group: RedisNodes) -> None:
    members = redis_group.start(3, cluster=True, prefix="dst")
    create_cluster([[m.endpoint] for m in members], PASSWORD, timeout=60)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    try:
        keys = [f"k:{i}" for i in range(1000)]
        for key in keys:
            cluster.set(key, "v")
        # The source shard's slots span two of the target's masters.
        workload = _shard_workload(((5000, 12000),))
        doomed = {k for k in keys if 5000 <= key_slot(k.encode()) <= 12000}
        assert clear_share(workload, _url(members[1])) == len(doomed)
        nodes = [cluster.get_redis_connection(node) for node in cluster.get_primaries()]
        left = {k.decode() for node in nodes for k in node.scan_iter(count=1000)}
        assert left == set(keys) - doomed
    finally:
        cluster.close()


def _clear_share_cli(document: Path) -> subprocess.CompletedProcess[str]:
    """`moorage sync clear-share FILE`, as the redis-shake pod's init container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", "clear-share", str(document)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_pods_clear_share_step_empties_the_share_the_secret_describes(
    redis_group: RedisNodes, tmp_path: Path
) -> None:
    """The share document goes into the workload's config Secret beside shake.toml (the writer's
    address and password taken from the rendered config itself); the init container's command
    empties exactly that share, and refuses to let redis-shake start while the target is down."""
    target = redis_group.add("target", cluster=False)
    keys = [f"{prefix}{i}" for prefix in ("a:", "b:") for i in range(300)]
    with target.client() as client:
        client.mset(dict.fromkeys(keys, "v"))
    workload = replace(
        _shard_workload(((0, 8191),), SyncFilter(allow_key_prefixes=["a:"])),
        writer=WriterTarget(RedisEndpointKind.STANDALONE, (target.endpoint,)),
    )
    config = shake_config.render_v4(workload, source_password="src-secret", target_password=PASSWORD)
    objects = shake_config.manifests([workload], "ns", {workload.name: config}, share_image="moorage:test")
    secret, deployment = objects
    document = tmp_path / shake_config.SHARE_FILE
    document.write_bytes(base64.b64decode(secret["data"][shake_config.SHARE_FILE]))
    assert "src-secret" not in document.read_text(), "the share document holds the target's password only"
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == "moorage:test"
    assert init["command"] == [
        "moorage",
        "sync",
        "clear-share",
        f"/etc/redis-shake/{shake_config.SHARE_FILE}",
    ]

    doomed = {k for k in keys if k.startswith("a:") and key_slot(k.encode()) <= 8191}
    cleared = _clear_share_cli(document)
    assert cleared.returncode == 0, cleared.stderr
    assert f"({len(doomed)} keys)" in cleared.stdout and PASSWORD not in cleared.stdout + cleared.stderr
    with target.client() as client:
        assert set(client.keys("*")) == set(keys) - doomed

    target.stop()
    down = _clear_share_cli(document)
    assert down.returncode == 1 and "could not be emptied" in down.stderr, down.stderr
    assert PASSWORD not in down.stdout + down.stderr
    (tmp_path / "bad.json").write_text("{}")
    bad = _clear_share_cli(tmp_path / "bad.json")
    assert bad.returncode == 2 and "not a share document" in bad.stderr, bad.stderr
