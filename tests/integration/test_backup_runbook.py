"""The DBA runbook end to end: `moorage backup ...` / `moorage restore ...` as a user runs them, on
real Redis 7 deployments (local runtime) and a real S3 server (SeaweedFS, see s3_harness.py).

Covers: backup → list/show/verify (--deep into a scratch deployment) → restore plan into a
*different* topology (cluster → sentinel) → apply → data equal → rollback → the exact pre-restore
data; a corrupted backup refused before the target is touched; a restore failing half-way rolled
back by itself; a restore process killed half-way rolled back on request; prune and the audit log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from backups.repository import Repository
from backups.store import S3Store
from middleware.endpoints import Endpoint
from middleware.lifecycle import Lifecycle
from middleware.runtime.local import LocalRuntime
from tests.integration.harness import local_member_records, require_binary, wait_until
from tests.integration.s3_harness import S3Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _manifest(name: str, topology: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name},
        "spec": {"engine": "redis", "topology": topology, "plan": "small", **spec},
    }


CLUSTER = _manifest("orders", "cluster", shards=3, replicas=1)
SENTINEL = _manifest("cache", "sentinel", replicas=2, sentinels=3)


class Runbook:
    """The CLI in a subprocess with its own state dir and repository URL."""

    def __init__(self, state_dir: Path, s3: S3Server, bucket: str) -> None:
        self.state_dir = state_dir
        self.config = s3.config(bucket, prefix="runbook")
        S3Store(self.config).ensure_bucket()
        self.env = {
            **os.environ,
            "MOORAGE_STATE_DIR": str(state_dir),
            "MOORAGE_BACKUP_REPO": f"s3://{bucket}/runbook?endpoint={s3.endpoint}",
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "COLUMNS": "80",
        }
        self.lifecycle = Lifecycle(LocalRuntime(state_dir))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "operators.cli", *args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "operators.cli", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == expect, (
            f"moorage {' '.join(args)} exited {result.returncode}, expected {expect}:\n{result.stderr}"
        )
        return result

    def json(self, *args: str, expect: int = 0) -> Any:
        return json.loads(self.run(*args, "-o", "json", expect=expect).stdout)

    def repository(self) -> Repository:
        return Repository(S3Store(self.config))

    # -- data helpers -------------------------------------------------------------------------
    def masters(self, name: str, db: int = 0) -> list[redis.Redis]:
        deployment = self.lifecycle.existing("default", name)
        status = self.lifecycle.status("default", name)
        password = self.lifecycle.runtime.password(deployment.spec)
        return [
            redis.Redis(
                host=Endpoint.parse(m.address).host,
                port=Endpoint.parse(m.address).port,
                password=password,
                db=db,
            )
            for m in status.members
            if m.role == "master"
        ]

    def snapshot(self, name: str) -> dict[bytes, tuple[bytes, bool]]:
        """Every key → (value digest, has a TTL): equal snapshots mean equal data."""
        result: dict[bytes, tuple[bytes, bool]] = {}
        for client in self.masters(name):
            keys = list(client.scan_iter(count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("DEBUG", "DIGEST-VALUE", key)
                pipe.pttl(key)
            replies = pipe.execute()
            for i, key in enumerate(keys):
                digest = replies[2 * i]
                result[key] = (digest[0] if isinstance(digest, list) else digest, replies[2 * i + 1] > 0)
            client.close()
        return result

    def key_count(self, name: str) -> int:
        return sum(int(c.dbsize()) for c in self.masters(name))


def fill(clients: list[redis.Redis], prefix: str, count: int, *, cluster: bool) -> None:
    """Write ``count`` keys of several types; on a cluster each key goes to the master owning it."""
    if cluster:
        first = clients[0]
        rc = redis.RedisCluster(
            host=first.connection_pool.connection_kwargs["host"],
            port=first.connection_pool.connection_kwargs["port"],
            password=first.connection_pool.connection_kwargs["password"],
        )
        target: Any = rc
    else:
        target = clients[0]
    pipe = target.pipeline(transaction=False)
    for i in range(count):
        kind = i % 5
        key = f"{prefix}:{i}"
        if kind == 0:
            pipe.set(key, os.urandom(32))
        elif kind == 1:
            pipe.hset(key, mapping={"a": i, "b": "x" * (i % 17)})
        elif kind == 2:
            pipe.rpush(key, *range(i % 7 + 1))
        elif kind == 3:
            pipe.zadd(key, {f"m{j}": j for j in range(i % 5 + 1)})
        else:
            pipe.set(key, i, ex=3600)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    if cluster:
        rc.close()


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    require_binary("redis-server", "redis-server")


@pytest.fixture
def runbook(tmp_path: Path, s3_server: S3Server) -> Iterator[Runbook]:
    book = Runbook(tmp_path / "state", s3_server, "rb-" + os.urandom(4).hex())
    try:
        yield book
    finally:
        for namespace, name in book.lifecycle.runtime.list():
            book.lifecycle.down(namespace, name, purge=True)


def _up(book: Runbook, manifest: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / f"{manifest['metadata']['name']}.yaml"
    path.write_text(json.dumps(manifest))
    book.run("up", "-f", str(path))


def test_backup_verify_restore_into_another_topology_and_roll_back(runbook: Runbook, tmp_path: Path) -> None:
    _up(runbook, CLUSTER, tmp_path)
    _up(runbook, SENTINEL, tmp_path)
    fill(runbook.masters("orders"), "order", 6000, cluster=True)
    fill(runbook.masters("cache"), "cache", 500, cluster=False)
    source = runbook.snapshot("orders")
    before = runbook.snapshot("cache")
    assert len(source) == 6000 and len(before) == 500

    created = runbook.json("backup", "create", "orders")
    backup_id = created["backupId"]
    assert created["kind"] == "backup" and created["engine"] == "redis" and created["shards"] == 3
    assert [o["name"] for o in created["objects"]] == ["shard-0.rdb", "shard-1.rdb", "shard-2.rdb"]
    assert created["inventory"]["keys"] == 6000
    assert [b["backupId"] for b in runbook.json("backup", "list", "orders")] == [backup_id]
    assert runbook.json("backup", "show", backup_id)["location"].startswith("s3://")

    verified = runbook.json("backup", "verify", backup_id, "--deep")
    assert verified["ok"] is True and verified["deep"] is True
    assert verified["loaded"]["keys"] == 6000
    # The scratch deployment is gone afterwards.
    assert sorted(n for _, n in runbook.lifecycle.runtime.list()) == ["cache", "orders"]

    plan = runbook.json("restore", "plan", backup_id, "--to", "cache")
    assert plan["compatible"] is True
    assert plan["overwrites"]["keys"] == 500 and plan["incoming"]["keys"] == 6000
    assert runbook.snapshot("cache") == before, "plan must not change the target"

    applied = runbook.json("restore", "apply", backup_id, "--to", "cache", "--yes")
    assert applied["phase"] == "Applied" and applied["safetySnapshot"]
    assert runbook.snapshot("cache") == source, "the sentinel target holds exactly the cluster's data"

    rolled = runbook.json("restore", "rollback", applied["restoreId"], "--yes")
    assert rolled["phase"] == "RolledBack" and rolled["rolledBack"] is True
    assert runbook.snapshot("cache") == before, "rollback returns the exact pre-restore data"

    # `restore discard` is for point-in-time restores' data on the volumes: refused, nothing changed.
    refused = runbook.run("restore", "discard", applied["restoreId"], "--yes", expect=1)
    assert "kept a safety snapshot in the repository" in refused.stderr, refused.stderr
    assert runbook.snapshot("cache") == before

    status = runbook.json("restore", "status", applied["restoreId"])
    phases = [step["phase"] for step in status["history"]]
    assert phases == ["Snapshotting", "Restoring", "Verifying", "Applied", "RollingBack", "RolledBack"]
    events = [e["event"] for e in runbook.json("backup", "audit")]
    for event in ("backup-completed", "restore-applied", "restore-rolled-back"):
        assert event in events
    # The safety snapshot is a backup too, listed with --all, never pruned.
    kinds = {b["kind"] for b in runbook.json("backup", "list", "--all")}
    assert kinds == {"backup", "safety-snapshot"}


def test_incompatible_or_corrupted_backups_are_refused_before_touching_the_target(
    runbook: Runbook, tmp_path: Path
) -> None:
    _up(runbook, SENTINEL, tmp_path)
    _up(runbook, CLUSTER, tmp_path)
    clients = runbook.masters("cache")
    fill(clients, "cache", 300, cluster=False)
    (db4,) = runbook.masters("cache", db=4)
    db4.set("elsewhere", "1")
    backup_id = runbook.json("backup", "create", "cache")["backupId"]
    fill(runbook.masters("orders"), "order", 200, cluster=True)
    target_before = runbook.snapshot("orders")

    # A cluster has db 0 only: the plan says why, apply refuses, nothing changes.
    plan = runbook.json("restore", "plan", backup_id, "--to", "orders", expect=1)
    assert plan["compatible"] is False and "db4" in plan["reason"]
    refused = runbook.run("restore", "apply", backup_id, "--to", "orders", "--yes", expect=1)
    assert "db4" in refused.stderr and refused.stderr.count("\n") == 1
    assert runbook.snapshot("orders") == target_before

    # Corrupt one object in S3 (same size): verify and apply refuse; the target is untouched.
    db4.delete("elsewhere")
    good_id = runbook.json("backup", "create", "cache")["backupId"]
    manifest = runbook.repository().find(good_id)
    key = manifest.objects[0].key
    s3 = boto3.client(
        "s3",
        endpoint_url=runbook.config.endpoint,
        aws_access_key_id=runbook.config.access_key_id,
        aws_secret_access_key=runbook.config.secret_access_key,
        region_name="us-east-1",
    )
    body = bytearray(s3.get_object(Bucket=runbook.config.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=runbook.config.bucket, Key=key, Body=bytes(body))
    verified = runbook.json("backup", "verify", good_id, expect=1)
    assert verified["ok"] is False and "sha256" in " ".join(verified["problems"])
    refused = runbook.run("restore", "apply", good_id, "--to", "orders", "--yes", expect=1)
    assert "failed verification" in refused.stderr and "not touched" in refused.stderr
    assert runbook.snapshot("orders") == target_before
    assert runbook.json("restore", "list") == []


def test_a_restore_failing_half_way_rolls_back_by_itself(runbook: Runbook, tmp_path: Path) -> None:
    _up(runbook, CLUSTER, tmp_path)
    _up(runbook, SENTINEL, tmp_path)
    big = redis.RedisCluster(
        host="127.0.0.1",
        port=runbook.masters("orders")[0].connection_pool.connection_kwargs["port"],
        password=runbook.masters("orders")[0].connection_pool.connection_kwargs["password"],
    )
    for i in range(40):
        big.set(f"blob:{i}", os.urandom(256 << 10))  # 10 MiB in all
    big.close()
    backup_id = runbook.json("backup", "create", "orders")["backupId"]
    fill(runbook.masters("cache"), "cache", 200, cluster=False)
    before = runbook.snapshot("cache")
    # A real failure mid-load: the target's master runs out of memory after a few MiB.
    (master,) = runbook.masters("cache")
    master.config_set("maxmemory", str(4 << 20))
    master.config_set("maxmemory-policy", "noeviction")

    failed = runbook.run("restore", "apply", backup_id, "--to", "cache", "--yes", expect=1)
    assert "rolled back to its safety snapshot" in failed.stderr, failed.stderr
    master.config_set("maxmemory", "0")
    assert runbook.snapshot("cache") == before
    (record,) = runbook.json("restore", "list")
    assert record["phase"] == "RolledBack" and record["rolledBack"] is True
    assert "maxmemory" in " ".join(step["message"] for step in record["history"])


def _member_pids(book: Runbook, name: str, component: str) -> list[int]:
    records = local_member_records(book.state_dir, "default", name)
    return sorted(int(r["pid"]) for member, r in records.items() if f"-{component}-" in member)


def test_a_restore_waits_while_the_target_does_not_serve(runbook: Runbook, tmp_path: Path) -> None:
    """Two of three sentinels frozen (SIGSTOP): no majority names a master, which is what a Job
    started mid-failover sees. A restore waits for them (``--ready-timeout``) without touching
    anything, gives up cleanly when they stay away, and goes through once they answer again."""
    _up(runbook, SENTINEL, tmp_path)
    fill(runbook.masters("cache"), "cache", 200, cluster=False)
    before = runbook.snapshot("cache")
    backup_id = runbook.json("backup", "create", "cache")["backupId"]
    (master,) = runbook.masters("cache")
    master.set("written-after-the-backup", "1")
    keys_before_restore = master.dbsize()

    frozen = _member_pids(runbook, "cache", "sentinel")[:2]
    assert len(frozen) == 2
    waiting: subprocess.Popen[str] | None = None
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        refused = runbook.run(
            "restore", "apply", backup_id, "--to", "cache", "--yes", "--ready-timeout", "3", expect=1
        )
        assert "sentinels do not report a live master" in refused.stderr, refused.stderr
        assert runbook.json("restore", "list") == []  # not even a safety snapshot was started
        assert master.dbsize() == keys_before_restore and master.get("written-after-the-backup")

        waiting = runbook.popen("restore", "apply", backup_id, "--to", "cache", "--yes", "-o", "json")
        still_waiting_until = time.monotonic() + 5
        while time.monotonic() < still_waiting_until:
            assert waiting.poll() is None, waiting.communicate()
            time.sleep(0.2)
        assert master.get("written-after-the-backup"), "the restore changed data before the target served"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert waiting is not None
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stderr
    assert json.loads(stdout)["phase"] == "Applied"
    assert runbook.snapshot("cache") == before


def _scratch_servers() -> set[int]:
    """Live scratch redis-servers (a restore's temporary RDB readers, named by their private dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"redis-server" in cmdline and b"moorage-restore-" in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


def test_a_killed_restore_is_rolled_back_on_request(runbook: Runbook, tmp_path: Path) -> None:
    _up(runbook, CLUSTER, tmp_path)
    _up(runbook, SENTINEL, tmp_path)
    fill(runbook.masters("orders"), "order", 120_000, cluster=True)
    backup_id = runbook.json("backup", "create", "orders")["backupId"]
    fill(runbook.masters("cache"), "cache", 300, cluster=False)
    before = runbook.snapshot("cache")

    already = _scratch_servers()
    proc = runbook.popen("restore", "apply", backup_id, "--to", "cache", "--yes", "-o", "json")
    repository = runbook.repository()
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            restores = repository.list_restores()
            if restores and restores[0]["phase"] == "Restoring":
                count = runbook.key_count("cache")
                if 0 < count < 120_000:  # loading: flushed, part of the keys in
                    proc.send_signal(signal.SIGKILL)
                    killed_at = count
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert killed_at is not None, "the restore finished before it could be killed half-way"
    # The scratch redis-server the killed restore was reading from dies with it (no orphan left
    # holding a copy of the data).
    orphans = wait_until(
        lambda: _scratch_servers() - already,
        lambda pids: not pids,
        30,
        "the killed restore's scratch redis-server to exit",
    )
    assert orphans == set()
    (record,) = runbook.json("restore", "list")
    assert record["phase"] == "Restoring"
    assert runbook.snapshot("cache") != before

    rolled = runbook.json("restore", "rollback", record["restoreId"], "--yes")
    assert rolled["phase"] == "RolledBack"
    assert runbook.snapshot("cache") == before


def test_prune_keeps_the_newest_and_schedules_run(runbook: Runbook, tmp_path: Path) -> None:
    manifest = _manifest(
        "cache",
        "sentinel",
        replicas=2,
        sentinels=3,
        backup={"repository": {"name": "local"}, "schedule": "0 3 * * *", "keepLast": 2},
    )
    _up(runbook, manifest, tmp_path)
    fill(runbook.masters("cache"), "cache", 100, cluster=False)
    # Never backed up: the schedule is due now.
    (first,) = runbook.json("backup", "schedule", "run")
    assert first["due"] is True and first["backupId"] and first["nextRun"]
    (second,) = runbook.json("backup", "schedule", "run")
    assert second["due"] is False and second["backupId"] is None
    ids = [first["backupId"]] + [runbook.json("backup", "create", "cache")["backupId"] for _ in range(2)]
    dry = runbook.json("backup", "prune", "cache", "--keep-last", "1", "--dry-run")
    assert dry["pruned"] == ids[:2]
    assert len(runbook.json("backup", "list", "cache")) == 3
    pruned = runbook.json("backup", "prune", "cache", "--keep-last", "1")
    assert pruned["pruned"] == ids[:2]
    assert [b["backupId"] for b in runbook.json("backup", "list", "cache")] == ids[2:]
    assert "backup-pruned" in [e["event"] for e in runbook.json("backup", "audit")]
