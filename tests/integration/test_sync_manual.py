"""``moorage sync plan`` and ``moorage sync cutover --source --target``: redis-shake run by hand.

Real: a 3-shard cluster source (one replica per shard) and a standalone target, the plan observed
from them, the configs written, CLIENT PAUSE, offsets and verify. Stand-in (no redis-shake binary can
be installed here): ``PsyncStandIn``, named as such, connects to each planned reader announcing the
planned status port, as redis-shake would; it moves no data, the test fills the target itself.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from middleware.endpoints import Endpoint
from middleware.engines.redis.cluster import create_cluster
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, wait_until
from tests.integration.psync_standin import PsyncStandIn

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASE = 18080


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "MOORAGE_SOURCE_PASSWORD": PASSWORD, "MOORAGE_TARGET_PASSWORD": PASSWORD},
        check=False,
    )


def _url(process: RedisProcess, password: str | None = None) -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{process.endpoint.address}"


def test_plan_writes_configs_and_cutover_checks_the_hand_run_workloads(
    redis_group: RedisNodes, tmp_path: Path
) -> None:
    members = redis_group.start(6, cluster=True, prefix="src")
    create_cluster([[members[i].endpoint, members[i + 3].endpoint] for i in range(3)], PASSWORD, timeout=60)
    target = redis_group.add("target", cluster=False)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    standins: list[PsyncStandIn] = []
    try:
        for i in range(400):
            cluster.set(f"item:{i}", i)
        for replica in members[3:]:
            with replica.client() as r:
                # A replica still in its first sync is not healthy, and the plan reads the master.
                wait_until(
                    lambda r=r: r.info("replication"),
                    lambda info: info.get("master_link_status") == "up",
                    30,
                    f"{replica.endpoint} linked to its master",
                )
        out = tmp_path / "shake"
        # Passwords come from the environment: never on the command line, never in the output.
        planned = _cli("plan", "--source", _url(members[1]), "--target", _url(target), "--name", "orders",
                       "--out", str(out), "-o", "json")  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        assert PASSWORD not in planned.stdout + planned.stderr
        rows = json.loads(planned.stdout)["workloads"]
        assert [r["name"] for r in rows] == [f"orders-shard-{i}" for i in range(3)]
        assert [r["statusPort"] for r in rows] == [BASE, BASE + 1, BASE + 2]
        masters = {m.endpoint.address for m in members[:3]}
        for row in rows:
            assert row["readsReplica"] and row["shardMaster"] in masters
            with redis.Redis(
                host="127.0.0.1", port=Endpoint.parse(row["reads"]).port, password=PASSWORD
            ) as r:
                info = r.info("replication")
            assert info["role"] == "slave" and f"127.0.0.1:{info['master_port']}" == row["shardMaster"]
            config_path = Path(row["config"])
            assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
            config = tomllib.loads(config_path.read_text())
            assert config["sync_reader"]["address"] == row["reads"]
            assert config["sync_reader"]["cluster"] is False
            assert config["sync_reader"]["password"] == PASSWORD
            assert config["redis_writer"]["address"] == target.endpoint.address
            assert config["advanced"]["status_port"] == row["statusPort"]
            assert config["advanced"]["dir"] == str((config_path.parent / "work").resolve())

        # Nothing connected yet: refused before any pause.
        refused = _cli("cutover", "--source", _url(members[0]), "--target", _url(target), "--name", "orders",
                       "--yes", "--pause", "20", "--drain-timeout", "5", "-o", "json")  # fmt: skip
        assert refused.returncode == 1, refused.stderr
        assert json.loads(refused.stdout)["step"] == "preflight"

        for row in rows:
            standins.append(PsyncStandIn(Endpoint.parse(row["reads"]), row["statusPort"], PASSWORD))
        for row, standin in zip(rows, standins, strict=True):
            with redis.Redis(host="127.0.0.1", port=standin.node.port, password=PASSWORD) as r:
                wait_until(
                    lambda r=r: r.info("replication"),
                    lambda info, port=row["statusPort"]: any(
                        isinstance(v, dict) and v.get("port") == port and v.get("state") == "online"
                        for v in info.values()
                    ),
                    30,
                    f"{row['name']}'s stand-in to stream",
                )
        with target.client() as t:
            for node in cluster.get_primaries():
                source = cluster.get_redis_connection(node)
                for key in source.scan_iter(count=1000):
                    t.restore(key, 0, source.dump(key), replace=True)  # test setup, not a sync

        done = _cli("cutover", "--source", _url(members[0]), "--target", _url(target), "--name", "orders",
                    "--yes", "--pause", "30", "--drain-timeout", "10", "--unpause", "-o", "json")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] and report["lagBytes"] == {f"orders-shard-{i}": 0 for i in range(3)}
        assert "stop the redis-shake processes now" in report["reason"]
        assert report["verify"]["equal"] and report["verify"]["checked"] == 400
        assert sorted(report["paused"]) == sorted(masters) and report["unpaused"]
    finally:
        for standin in standins:
            standin.close()
        cluster.close()


def test_cutover_needs_either_a_name_or_both_urls() -> None:
    neither = _cli("cutover", "--yes")
    assert (
        neither.returncode == 2 and "either a RedisSync NAME, or both --source and --target" in neither.stderr
    )
    both = _cli(
        "cutover", "orders", "--source", "redis://127.0.0.1:1", "--target", "redis://127.0.0.1:2", "--yes"
    )
    assert both.returncode == 2 and "either a RedisSync NAME" in both.stderr
    half = _cli("cutover", "--source", "redis://127.0.0.1:1", "--yes")
    assert half.returncode == 2
