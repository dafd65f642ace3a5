"""``moorage sync plan`` and ``moorage sync cutover --source --target``: redis-shake run by hand.

Real: a 3-shard cluster source (one replica per shard) and a standalone target, the plan observed
from them, the configs written, and the real redis-shake v4.2.0 run by hand on each of them, as the
docs tell a user to (``redis-shake DIR/<workload>/shake.toml``): it moves the data, and the cutover
finds its connections, drains, verifies and leaves stopping them to the user.
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
from middleware.errors import NotReady
from middleware.models.sync import RedisEndpointKind
from sync.observe import observe_topology
from tests.integration.conftest import PASSWORD
from tests.integration.harness import RedisNodes, RedisProcess, wait_until
from tests.integration.shake_harness import ShakeProcess, status_port_base

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOORAGE_SOURCE_PASSWORD": PASSWORD, "MOORAGE_TARGET_PASSWORD": PASSWORD}
    if state is not None:
        env["MOORAGE_STATE_DIR"] = str(state)  # no local sync of that name there: hand-run processes
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _url(process: RedisProcess, password: str | None = None) -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{process.endpoint.address}"


def test_plan_writes_configs_and_cutover_checks_the_hand_run_workloads(
    redis_group: RedisNodes, redis_shake: str, tmp_path: Path
) -> None:
    members = redis_group.start(6, cluster=True, prefix="src")
    create_cluster([[members[i].endpoint, members[i + 3].endpoint] for i in range(3)], PASSWORD, timeout=60)
    target = redis_group.add("target", cluster=False)
    cluster = redis.RedisCluster(host="127.0.0.1", port=members[0].port, password=PASSWORD)
    shakes: list[ShakeProcess] = []
    state = tmp_path / "state"
    base = status_port_base()
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
                       "--out", str(out), "--status-port-base", str(base), "-o", "json")  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        assert PASSWORD not in planned.stdout + planned.stderr
        rows = json.loads(planned.stdout)["workloads"]
        assert [r["name"] for r in rows] == [f"orders-shard-{i}" for i in range(3)]
        assert [r["statusPort"] for r in rows] == [base, base + 1, base + 2]
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
        cut = ("cutover", "--source", _url(members[0]), "--target", _url(target), "--name", "orders",
               "--status-port-base", str(base), "--yes")  # fmt: skip
        refused = _cli(*cut, "--pause", "20", "--drain-timeout", "5", "-o", "json", state=state)
        assert refused.returncode == 1, refused.stderr
        assert json.loads(refused.stdout)["step"] == "preflight"

        # The user runs redis-shake on each config, from its directory.
        for row in rows:
            shakes.append(ShakeProcess(redis_shake, Path(row["config"])).start())
        for row, shake in zip(rows, shakes, strict=True):
            shake.wait_streaming()
            reads = Endpoint.parse(row["reads"])
            with redis.Redis(host=reads.host, port=reads.port, password=PASSWORD) as r:
                wait_until(
                    lambda r=r: r.info("replication"),
                    lambda info, port=row["statusPort"]: any(
                        isinstance(v, dict) and v.get("port") == port and v.get("state") == "online"
                        for v in info.values()
                    ),
                    30,
                    f"{row['name']}'s redis-shake to stream from {row['reads']}",
                )
        for i in range(400, 500):  # written while redis-shake streams
            cluster.set(f"item:{i}", i)

        done = _cli(*cut, "--pause", "30", "--drain-timeout", "20", "--unpause", "-o", "json", state=state)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] and report["lagBytes"] == {f"orders-shard-{i}": 0 for i in range(3)}
        assert "stop the redis-shake processes now" in report["reason"]
        assert report["verify"]["equal"] and report["verify"]["checked"] == 500
        assert sorted(report["paused"]) == sorted(masters) and report["unpaused"]
        assert all(shake.running() for shake in shakes), "stopping hand-run processes is left to the user"
    finally:
        for shake in shakes:
            shake.stop()
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


def test_a_cluster_side_whose_names_do_not_resolve_here_is_named_with_the_reason() -> None:
    """Pod DNS names seen from outside their cluster: the refusal says which node and why, not
    that the cluster has no masters (what a cutover run from a node used to print)."""
    nodes = [Endpoint(f"shop-shard-{i}-0.shop-headless.ns.svc.cluster.invalid", 6379) for i in range(3)]
    with pytest.raises(NotReady, match="no node of the cluster answers from here") as refused:
        observe_topology(RedisEndpointKind.CLUSTER, data_nodes=nodes, password="secret-password")
    assert "shop-shard-0-0.shop-headless.ns.svc.cluster.invalid:6379" in str(refused.value)
    assert "secret-password" not in str(refused.value)
