"""Every member's Prometheus exporter on the local runtime (docs/monitoring.md), with Debian's real
exporters (hack/install-exporters.sh) beside real Redis 7 and PostgreSQL 18 members, and ZooKeeper
3.8's own Prometheus provider inside real members, driven through the `moorage` CLI as a user would:
scraped for the engines' own series, followed through a killed member and a killed exporter, and
turned off by spec.monitoring.enabled."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from middleware.runtime.local import find_exporter
from middleware.runtime.processes import process_start_time
from middleware.spec import load_middleware, resolve
from tests.integration.cli import Moorage, session
from tests.integration.harness import local_member_records, require_binary
from tests.integration.test_postgresql import postgres_unavailable
from tests.prometheus_scrape import scrape

pytestmark = pytest.mark.integration

REQUIRED_ENV = "MOORAGE_EXPORTERS_REQUIRED"
DEADLINE = 60.0


@pytest.fixture(autouse=True)
def _exporters_installed() -> None:
    require_binary("redis-server", "redis-server")
    missing = [
        b for b in ("prometheus-redis-exporter", "prometheus-postgres-exporter") if find_exporter(b) is None
    ]
    if missing:
        why = f"{', '.join(missing)} not installed: run `make setup` (hack/install-exporters.sh)"
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def moorage() -> Iterator[Moorage]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the postgres user must reach its data.
    state = Path(tempfile.mkdtemp(prefix="moorage-metrics-"))
    state.chmod(0o755)
    with session(state) as cli:
        yield cli


def write(path: Path, name: str, **spec: Any) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "moorage.io/v1alpha1",
                "kind": "Middleware",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
    )
    return path


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as error:  # the exporter not listening yet
            last = error
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def exporter_pid(moorage: Moorage, name: str, member: str) -> int:
    return int(local_member_records(moorage.state_dir, "default", name)[member]["exporter"]["pid"])


def test_redis_members_and_sentinels_export_their_own_series(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write(tmp_path / "r.json", "sessions", engine="redis", topology="sentinel", replicas=2)
    moorage.run("up", "-f", str(manifest))
    status = moorage.status("sessions")
    members = {m["name"]: m for m in status["members"]}
    assert len(members) == 5 and all(m.get("metrics") for m in members.values()), members
    for name, member in members.items():
        samples = scrape(member["metrics"])
        assert samples["redis_up"] == 1, name
        assert samples["redis_connected_clients"] >= 1, name
        if member["role"] == "sentinel":
            assert samples["redis_sentinel_masters"] == 1, name
        else:
            assert any(s.startswith("redis_instance_info{") for s in samples), name
    master = next(m for m in members.values() if m["role"] == "master")
    replica = next(m for m in members.values() if m["role"] == "replica")
    assert scrape(master["metrics"])["redis_connected_slaves"] == 1

    # The password reaches the exporter through its environment, never its command line.
    pid = exporter_pid(moorage, "sessions", master["name"])
    secret = json.loads((moorage.state_dir / "default" / "sessions" / "credentials.json").read_text())[
        "password"
    ]
    assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")

    # A member killed (a real SIGKILL): its exporter stays and says so; `up` brings both back.
    spec = resolve(load_middleware(json.loads(manifest.read_text())))
    moorage.runtime().kill_member(spec, replica["name"])
    wait_for("redis_up 0 for the killed replica", lambda: scrape(replica["metrics"])["redis_up"] == 0)
    # The exporter killed too: the next `up` starts it again, on the same address.
    os.kill(exporter_pid(moorage, "sessions", master["name"]), signal.SIGKILL)
    wait_for("the exporter gone", lambda: process_start_time(pid) is None, timeout=10)
    moorage.run("up", "-f", str(manifest))
    assert exporter_pid(moorage, "sessions", master["name"]) != pid
    after = {m["name"]: m for m in moorage.status("sessions")["members"]}
    assert after[master["name"]]["metrics"] == master["metrics"]
    wait_for("redis_up 1 again", lambda: scrape(replica["metrics"])["redis_up"] == 1)
    assert scrape(master["metrics"])["redis_up"] == 1


def test_postgresql_members_export_pg_up_and_replication(moorage: Moorage, tmp_path: Path) -> None:
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    manifest = write(tmp_path / "p.json", "notes", engine="postgresql", topology="replication", replicas=2)
    moorage.run("up", "-f", str(manifest))
    members = {m["name"]: m for m in moorage.status("notes")["members"]}
    primary = next(m for m in members.values() if m["role"] == "primary")
    replica = next(m for m in members.values() if m["role"] == "replica")
    for member in (primary, replica):
        samples = wait_for(
            f"pg_up 1 on {member['name']}", lambda m=member: (s := scrape(m["metrics"]))["pg_up"] == 1 and s
        )
        assert any(s.startswith("pg_stat_database_xact_commit{") for s in samples)
    # The primary sees its replica streaming (the series an alert on replication lag reads).
    streaming = wait_for(
        "the replica in pg_stat_replication",
        lambda: [
            s for s in scrape(primary["metrics"]) if s.startswith("pg_stat_replication_pg_wal_lsn_diff{")
        ],
    )
    assert f'application_name="{replica["name"]}"' in streaming[0]


def test_monitoring_disabled_stops_the_exporters(moorage: Moorage, tmp_path: Path) -> None:
    manifest = write(tmp_path / "c.json", "cache", engine="redis", topology="standalone")
    moorage.run("up", "-f", str(manifest))
    (member,) = moorage.status("cache")["members"]
    assert scrape(member["metrics"])["redis_up"] == 1
    pid = exporter_pid(moorage, "cache", member["name"])
    write(manifest, "cache", engine="redis", topology="standalone", monitoring={"enabled": False})
    moorage.run("up", "-f", str(manifest))
    (after,) = moorage.status("cache")["members"]
    assert "metrics" not in after
    assert process_start_time(pid) is None
    with pytest.raises(OSError):
        scrape(member["metrics"])
    # And on again.
    write(manifest, "cache", engine="redis", topology="standalone")
    moorage.run("up", "-f", str(manifest))
    (again,) = moorage.status("cache")["members"]
    assert wait_for("redis_up 1", lambda: scrape(again["metrics"])["redis_up"] == 1)


def test_zookeeper_members_serve_their_own_metrics(moorage: Moorage, tmp_path: Path) -> None:
    from tests.integration.test_zookeeper import require_zookeeper

    require_zookeeper()
    manifest = write(tmp_path / "z.json", "coord", engine="zookeeper", topology="ensemble", replicas=3)
    moorage.run("up", "-f", str(manifest))
    members = {m["name"]: m for m in moorage.status("coord")["members"]}
    assert len(members) == 3 and all(m.get("metrics") for m in members.values()), members
    # no exporter process: the server's own JVM serves /metrics on the port allocated for it
    records = local_member_records(moorage.state_dir, "default", "coord")
    assert not any("exporter" in record for record in records.values())
    for name, member in members.items():
        samples = wait_for(f"{name}'s metrics", lambda m=member: scrape(m["metrics"]))
        assert samples["znode_count"] >= 1, name
        assert samples["quorum_size"] == 3, name
        assert any(s.startswith("jvm_memory_bytes_used{") for s in samples), name
    leaders = [n for n, m in members.items() if scrape(m["metrics"]).get("leader_uptime", 0) > 0]
    assert leaders == [next(n for n, m in members.items() if m["role"] == "leader")]

    # Off: the status stops naming an address at once; the provider is part of the server, so it
    # stops serving at each member's next start (a rolling restart here; in pods the template rolls).
    write(
        manifest, "coord", engine="zookeeper", topology="ensemble", replicas=3, monitoring={"enabled": False}
    )
    moorage.run("up", "-f", str(manifest))
    for member in moorage.status("coord")["members"]:
        assert "metrics" not in member, member
    moorage.run("restart", "coord")
    for member in members.values():
        with pytest.raises(OSError):
            scrape(member["metrics"])
    assert all(m["healthy"] for m in moorage.status("coord")["members"])
