"""A PostgreSQL logical restore whose safety copy is the data set aside (renamed) inside the target,
on real PostgreSQL 18 + pgvector (local runtime) and a real S3 server (SeaweedFS).

The runbook restores a backup over changed data, and the test compares every table row by row
(ordered md5), the indexes, the roles and the database owners: after the restore exactly the
backup's, after the rollback exactly what the restore overwrote (a role the restore had to keep
because it owned objects in the data set aside included). A discard deletes the copies and makes
rollback refuse. A corrupt object in S3 fails the load half-way and the data set aside is put back
by itself. Setting aside stopped half-way (an exception after the first database) is put back
exactly. With the databases set aside (``postgres`` too), probes answer from template1. The
snapshot safety copy still works for PostgreSQL when asked for. An archive of several
tables restores through ``pg_restore -j`` from a spooled file, exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backups.local import LocalTargets
from backups.repository import Repository
from backups.runbook import (
    SET_ASIDE,
    RestoreFailed,
    RestoreRefused,
    SafetyCopy,
    apply_restore,
    create_backup,
    discard_restore,
    rollback_restore,
)
from backups.store import RepositoryConfig, S3Store
from middleware.engines.base import AsideCopy, no_progress
from middleware.engines.postgresql import dump, replication
from middleware.engines.postgresql.aside import ASIDE_PREFIX, PostgresSetAside
from middleware.errors import NotReady
from middleware.lifecycle import Lifecycle
from tests.integration.dumpfiles import save_dump
from tests.integration.harness import local_member_records
from tests.integration.test_postgresql import (  # noqa: F401 (fixtures)
    _postgres_available,
    lifecycle,
    state_dir,
)
from tests.integration.test_postgresql_dump import ROWS, fingerprint, seed, superuser, up

pytestmark = pytest.mark.integration

NAMESPACE = "default"


class Deployed:
    """One standalone PostgreSQL seeded as in test_postgresql_dump, with its backup in S3."""

    def __init__(self, lifecycle: Lifecycle, s3_config: RepositoryConfig, name: str) -> None:  # noqa: F811
        self.lifecycle = lifecycle
        _, self.endpoint, self.password = up(lifecycle, name)
        self.name = name
        self.repository = Repository(S3Store(s3_config))
        seed(self.endpoint, self.password)

    def target(self) -> Any:
        return LocalTargets(self.lifecycle).get(NAMESPACE, self.name)

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.endpoint, self.password)

    def aside(self) -> list[tuple[str, bool]]:
        """The databases set aside, and whether each is closed to connections."""
        with superuser(self.endpoint, self.password) as db:
            return [
                (r[0], r[1])
                for r in db.execute(
                    "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                    (ASIDE_PREFIX + "%",),
                )
            ]

    def change(self) -> None:
        """What a restore must overwrite, and its rollback bring back: rows, a database, and a role
        that owns a table (so the restore can only keep it, without LOGIN)."""
        with superuser(self.endpoint, self.password) as db:
            db.execute("CREATE ROLE intruder LOGIN PASSWORD 'intruder-1'")
            db.execute("DROP DATABASE analytics WITH (FORCE)")
            db.execute("CREATE DATABASE junk")
        with superuser(self.endpoint, self.password, "app") as db:
            db.execute("DELETE FROM docs WHERE id % 3 = 0")
            db.execute("CREATE TABLE intruder_notes (n int)")
            db.execute("INSERT INTO intruder_notes SELECT generate_series(1, 25)")
            db.execute("ALTER TABLE intruder_notes OWNER TO intruder")


@pytest.fixture
def deployed(lifecycle: Lifecycle, s3_config: RepositoryConfig) -> Iterator[Deployed]:  # noqa: F811
    yield Deployed(lifecycle, s3_config, "ledger")


def test_a_backup_waits_for_a_primary_that_does_not_answer_yet(deployed: Deployed) -> None:
    """The server frozen (SIGSTOP: connections time out, as during a failover): the backup's dump
    does not start, and goes through once it answers. Nothing counted the target before it."""
    target = deployed.target()
    held = target.engine.data_inventory(target.spec, target.conn)
    records = local_member_records(deployed.lifecycle.runtime.root, NAMESPACE, deployed.name)
    (pid,) = [int(record["pid"]) for record in records.values()]
    outcome: dict[str, Any] = {}

    def back_up() -> None:
        try:
            outcome["backup"] = create_backup(deployed.repository, deployed.target(), ready_timeout=120)
        except BaseException as error:
            outcome["error"] = error

    os.kill(pid, signal.SIGSTOP)
    try:
        worker = threading.Thread(target=back_up)
        worker.start()
        time.sleep(8)  # more than two connection timeouts (3 s each)
        assert worker.is_alive() and not outcome, outcome
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(180)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["backup"].inventory == held


def test_restore_sets_the_data_aside_rolls_back_exactly_and_discard_deletes_it(deployed: Deployed) -> None:
    backed_up = deployed.fingerprint()
    target = deployed.target()
    held = target.engine.data_inventory(target.spec, target.conn)
    backup = create_backup(deployed.repository, deployed.target())
    # The backup's inventory is what its dump counted (in each database's snapshot).
    assert backup.inventory == held
    deployed.change()
    changed = deployed.fingerprint()
    assert changed != backed_up

    target = deployed.target()
    overwritten = target.engine.data_inventory(target.spec, target.conn)
    record = apply_restore(deployed.repository, backup.backup_id, deployed.target())
    assert record["phase"] == "Applied" and record["safetyCopy"] == "aside", record
    # What was overwritten, counted while setting aside (no count of its own before).
    assert record["overwrote"] == overwritten == record[SET_ASIDE]["counts"]
    # Exactly the backup's data, and its roles plus one: the role owning a table in the data set
    # aside is kept, without LOGIN (the restore's own check counted it as loaded).
    restored = deployed.fingerprint()
    assert {k: v for k, v in restored.items() if k != "roles"} == {
        k: v for k, v in backed_up.items() if k != "roles"
    }
    assert sorted(restored["roles"]) == sorted([*backed_up["roles"], ("intruder", False, False)])
    assert record["loaded"]["roles"] == 2 and record[SET_ASIDE]["counts"]["roles"] == 2
    # Every database the target had, closed to connections under its new name; the safety
    # snapshot in the repository holds the roles only.
    assert [closed for _, closed in deployed.aside()] == [False, False, False]  # app, junk, postgres
    assert sorted(record[SET_ASIDE]["state"]["databases"]) == ["app", "junk", "postgres"]
    assert [o.name for o in deployed.repository.find(record["safetySnapshot"]).objects] == ["globals.sql"]

    rolled = rollback_restore(deployed.repository, record["restoreId"], deployed.target())
    assert rolled["phase"] == "RolledBack" and rolled["rolledBack"] is True
    assert deployed.fingerprint() == changed, "rollback returns exactly what the restore overwrote"
    assert deployed.aside() == []
    with pytest.raises(RestoreRefused, match="rolled back already"):
        rollback_restore(deployed.repository, record["restoreId"], deployed.target())

    # Restored again, then the copies discarded: the space is freed and there is no way back.
    again = apply_restore(deployed.repository, backup.backup_id, deployed.target())
    assert len(deployed.aside()) == 3
    discarded = discard_restore(deployed.repository, again["restoreId"], deployed.target())
    assert discarded["asideDiscarded"] is True and "no longer be rolled back" in discarded["message"]
    assert deployed.aside() == []
    assert deployed.fingerprint() == restored
    with pytest.raises(RestoreRefused, match="was discarded"):
        rollback_restore(deployed.repository, again["restoreId"], deployed.target())
    with pytest.raises(RestoreRefused, match="discarded already"):
        discard_restore(deployed.repository, again["restoreId"], deployed.target())
    events = [e["event"] for e in deployed.repository.audit_log()]
    assert events.count("restore-applied") == 2 and "restore-discarded" in events


def test_a_corrupt_object_fails_the_load_and_the_data_set_aside_is_put_back(deployed: Deployed) -> None:
    backup = create_backup(deployed.repository, deployed.target())
    deployed.change()
    changed = deployed.fingerprint()
    # One byte flipped in the middle of the app database's archive, in S3 itself.
    entry = next(o for o in backup.objects if o.name == "db/app.pgdump.zst")
    store = deployed.repository.store
    data = bytearray(store.get_bytes(entry.key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(entry.key, bytes(data))

    with pytest.raises(RestoreFailed, match="its data set aside was put back") as failed:
        apply_restore(deployed.repository, backup.backup_id, deployed.target())
    assert "corrupt" in str(failed.value)
    assert deployed.fingerprint() == changed
    assert deployed.aside() == []
    (record,) = deployed.repository.list_restores()
    assert record["phase"] == "RolledBack" and record["rolledBack"] is True


def test_setting_aside_stopped_half_way_is_put_back_exactly(deployed: Deployed, tmp_path: Path) -> None:
    target = deployed.target()
    before = deployed.fingerprint()
    inventory = target.engine.data_inventory(target.spec, target.conn)
    ops = PostgresSetAside()
    kept = save_dump(ops.dump_kept(target.spec, target.conn), tmp_path / "kept")
    planned = ops.plan_aside(target.spec, target.conn, "half-way")
    assert list(planned.state["databases"]) == ["analytics", "app", "postgres"]

    def stop_at_the_second(step: str, done: float, total: float) -> None:
        if step.startswith("setting database") and done == 1:
            raise KeyboardInterrupt("stopped while setting aside")

    with pytest.raises(KeyboardInterrupt):
        ops.set_aside(target.spec, target.conn, planned, stop_at_the_second)
    assert [name for name, _ in deployed.aside()] == [planned.state["databases"]["analytics"]]

    # Put back with the counts unknown (the record never got them): renamed back, reopened.
    report = ops.put_back(target.spec, target.conn, AsideCopy(planned.state), kept)
    assert "put database analytics back" in report.actions
    assert deployed.fingerprint() == before
    assert target.engine.data_inventory(target.spec, target.conn) == inventory
    assert deployed.aside() == []


def test_with_postgres_set_aside_probes_and_cluster_statements_use_template1(
    deployed: Deployed, tmp_path: Path
) -> None:
    """Nothing stands in for ``postgres`` between setting aside and the load: the probes, the
    load's search for the primary and cluster-wide statements are answered from template1."""
    target = deployed.target()
    before = deployed.fingerprint()
    ops = PostgresSetAside()
    kept = save_dump(ops.dump_kept(target.spec, target.conn), tmp_path / "kept")
    aside = ops.set_aside(
        target.spec, target.conn, ops.plan_aside(target.spec, target.conn, "gap"), no_progress
    )
    with pytest.raises(psycopg.OperationalError, match='database "postgres" does not exist'):
        psycopg.connect(
            host=deployed.endpoint.host,
            port=deployed.endpoint.port,
            user="postgres",
            password=deployed.password,
            dbname="postgres",
        )
    state = replication.probe(deployed.endpoint, deployed.password)
    assert state.writable
    assert dump.primary(target.conn) == deployed.endpoint
    with replication.connect(deployed.endpoint, deployed.password) as db:
        assert db.execute("SELECT current_database()").fetchone()[0] == "template1"
    # Only the cluster database falls back: any other missing one is refused as before.
    with (
        pytest.raises(NotReady, match='database "app" does not exist'),
        replication.connect(deployed.endpoint, deployed.password, "app"),
    ):
        pass
    # Nothing but the catalog entries of the copies: no database open to connections is left.
    assert target.engine.data_inventory(target.spec, target.conn) == {"roles": 1}
    ops.put_back(target.spec, target.conn, aside, kept)
    assert deployed.fingerprint() == before
    with replication.connect(deployed.endpoint, deployed.password) as db:
        assert db.execute("SELECT current_database()").fetchone()[0] == "postgres"


def test_the_snapshot_safety_copy_is_still_there_for_postgresql(deployed: Deployed) -> None:
    backup = create_backup(deployed.repository, deployed.target())
    deployed.change()
    changed = deployed.fingerprint()
    record = apply_restore(
        deployed.repository, backup.backup_id, deployed.target(), safety_copy=SafetyCopy.SNAPSHOT
    )
    assert record["safetyCopy"] == "snapshot" and SET_ASIDE not in record
    assert deployed.aside() == []
    snapshot = deployed.repository.find(record["safetySnapshot"])
    assert "db/app.pgdump.zst" in [o.name for o in snapshot.objects]
    with superuser(deployed.endpoint, deployed.password, "app") as db:
        assert db.execute("SELECT count(*) FROM docs").fetchone()[0] == ROWS
    rollback_restore(deployed.repository, record["restoreId"], deployed.target())
    # The snapshot path drops the role owning nothing after its table went with the app database,
    # then loads it back from the snapshot: the same state as before the restore.
    assert deployed.fingerprint() == changed
    with pytest.raises(RestoreRefused, match="kept a safety snapshot in the repository"):
        discard_restore(deployed.repository, record["restoreId"], deployed.target())


def test_an_archive_with_several_tables_restores_with_parallel_workers(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    backed_up = deployed.fingerprint()
    backup = create_backup(deployed.repository, deployed.target())
    # The seeded archives are small: lowered so that `analytics` (2 tables) takes pg_restore -j.
    monkeypatch.setattr(dump, "PARALLEL_RESTORE_MIN_BYTES", 0)
    objects = {o.name: o for o in deployed.repository.source(backup).objects}
    analytics, app_db = objects["db/analytics.pgdump.zst"], objects["db/app.pgdump.zst"]
    assert dump.restore_jobs(analytics) == min(2, os.cpu_count() or 1)
    assert dump.restore_jobs(app_db) == 1, "one table: streamed"
    parallel: list[list[str]] = []
    real_run = subprocess.run

    def watching(argv: list[str], **kwargs: Any) -> Any:
        if any(arg.startswith("--jobs=") for arg in argv):
            parallel.append(argv)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(dump.subprocess, "run", watching)
    with superuser(deployed.endpoint, deployed.password, "analytics") as db:
        db.execute("DELETE FROM metrics.events WHERE kind = 'kind-1'")
    record = apply_restore(deployed.repository, backup.backup_id, deployed.target())
    assert record["phase"] == "Applied"
    assert len(parallel) == (1 if (os.cpu_count() or 1) > 1 else 0)
    assert deployed.fingerprint() == backed_up
