"""The Middleware examples that have a local form, run as their headers tell a user to run them
(`moorage up -f examples/FILE`), on real servers, checked against what their comments promise.

PostgreSQL's example is run the same way in ``test_postgresql.py``; MongoDB's cannot run here (no
``mongod`` can be installed on these machines: docs/mongodb.md). The kinds with no local form
(BackupRepository, MiddlewareBackup, MiddlewareRestore, RedisSync) are applied on real pods in
``tests/e2e``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from backups.store import S3Store
from tests.example_files import EXAMPLES, document
from tests.integration.cli import Moorage, session
from tests.integration.harness import require_binary
from tests.integration.s3_harness import S3Server
from tests.integration.test_zookeeper import require_zookeeper


@pytest.fixture
def moorage(tmp_path: Path) -> Iterator[Moorage]:
    with session(tmp_path / "state") as cli:
        yield cli


def _up(moorage: Moorage, file: str) -> dict[str, Any]:
    status: dict[str, Any] = moorage.json("up", "-f", str(EXAMPLES / file))
    assert status["phase"] == "Ready", status
    assert all(m["healthy"] for m in status["members"]), status
    return status


def _roles(status: dict[str, Any]) -> Counter[str]:
    return Counter(m["role"] for m in status["members"])


def _client(moorage: Moorage, name: str, member: dict[str, Any]) -> redis.Redis:
    password = moorage.status(name, "--reveal-secrets")["password"]
    host, port = member["address"].rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), password=password, decode_responses=True)


def test_redis_standalone_example(moorage: Moorage) -> None:
    require_binary("redis-server", "redis-server")
    spec = document("redis-standalone.yaml", "Middleware")
    name = spec["metadata"]["name"]
    status = _up(moorage, "redis-standalone.yaml")
    # "One Redis, no replicas"; "the password is generated once ... (`moorage status --reveal-secrets`)".
    assert _roles(status) == {"master": 1}
    with _client(moorage, name, status["members"][0]) as client:
        assert client.set("example", "works") and client.get("example") == "works"
    password = moorage.status(name, "--reveal-secrets")["password"]
    again = _up(moorage, "redis-standalone.yaml")  # applying the same file again changes nothing
    assert moorage.status(name, "--reveal-secrets")["password"] == password
    assert [m["address"] for m in again["members"]] == [m["address"] for m in status["members"]]
    with _client(moorage, name, again["members"][0]) as client:
        assert client.get("example") == "works"


def test_redis_sentinel_example(moorage: Moorage) -> None:
    require_binary("redis-sentinel", "redis-sentinel")
    status = _up(moorage, "redis-sentinel.yaml")
    # "1 master + 2 replicas, watched by 3 sentinels".
    assert _roles(status) == {"master": 1, "replica": 2, "sentinel": 3}


def test_redis_cluster_example(moorage: Moorage) -> None:
    require_binary("redis-server", "redis-server")
    spec = document("redis-cluster.yaml", "Middleware")
    name = spec["metadata"]["name"]
    status = _up(moorage, "redis-cluster.yaml")
    # "A 3-shard Redis cluster, one replica per shard (replicas counts the master too)".
    assert _roles(status) == {"master": 3, "replica": 3}
    per_shard = Counter((m["shard"], m["role"]) for m in status["members"])
    assert per_shard == {(shard, role): 1 for shard in range(3) for role in ("master", "replica")}
    wanted = spec["spec"]["parameters"]["maxmemory-policy"]
    for member in status["members"]:
        with _client(moorage, name, member) as client:
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": wanted}, member


def test_zookeeper_example_and_the_scale_its_header_names(moorage: Moorage) -> None:
    require_zookeeper()
    status = _up(moorage, "zookeeper.yaml")
    assert len(status["members"]) == 3
    assert _roles(status)["leader"] == 1, status
    # The header: "scale it with `moorage scale zookeeper --replicas 5`".
    grown = moorage.json("scale", "zookeeper", "--replicas", "5")
    assert grown["phase"] == "Ready" and len(grown["members"]) == 5, grown
    assert all(m["healthy"] for m in grown["members"]), grown


def test_backup_schedule_example_runs_locally_with_the_repository_given(
    moorage: Moorage, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header: "the operator creates a MiddlewareBackup when the schedule fires"; locally,
    `moorage backup schedule run` (from cron) does the same into the `--repo` given
    (docs/backups.md)."""
    require_binary("redis-sentinel", "redis-sentinel")
    spec = document("backup-schedule.yaml", "Middleware")
    name = spec["metadata"]["name"]
    bucket = "examples-" + os.urandom(4).hex()
    S3Store(s3_server.config(bucket)).ensure_bucket()
    monkeypatch.setenv("MOORAGE_BACKUP_REPO", f"s3://{bucket}/moorage?endpoint={s3_server.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

    status = _up(moorage, "backup-schedule.yaml")
    assert _roles(status) == {"master": 1, "replica": 2, "sentinel": 3}
    (first,) = moorage.json("backup", "schedule", "run")
    assert first["name"] == name and first["due"] is True and first["backupId"], first
    (second,) = moorage.json("backup", "schedule", "run")  # "0 3 * * *" has not fired again
    assert second["due"] is False and second["backupId"] is None, second
    listed = moorage.json("backup", "list", name)
    assert [b["backupId"] for b in listed] == [first["backupId"]]
