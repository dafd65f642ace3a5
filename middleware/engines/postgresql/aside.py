"""PostgreSQL's safety copy for a logical restore: every database renamed aside, not dumped.

A restore used to start with a full ``pg_dump`` of the target to the repository (its safety
snapshot): the slowest step of a restore, about four times the load itself. Instead each database
the restore replaces is closed to connections, its sessions ended, its tables counted, and renamed
``moorage-aside-<token>-<n>``: an entry in the catalog, whatever the data size, WAL-logged so the
standbys follow. The user roles, which a rename does not keep, are dumped into a small safety
snapshot (``globals.sql`` only). ``postgres`` is renamed too, with nothing in its place until the
load restores it (beside the largest database, first): our probes and cluster-wide statements fall
back to ``template1`` meanwhile (``replication.connect``). An empty one used to be created in its
place: a CREATE DATABASE (0.05-0.2 s of copying template0 into the WAL here) the load then dropped.

Putting back drops what the load wrote, renames each database back, opens it to connections and
loads the roles again. A database closed to connections is neither dumped, counted nor dropped by
a load (dump.py), so the copies stay out of every later backup and restore until ``drop_aside``
(``moorage restore discard``) deletes them. They take the space of the old data on the volume
until then: `restore apply --safety-copy snapshot` takes the old full dump instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from middleware.endpoints import Endpoint
from middleware.engines.base import (
    AsideCopy,
    Connection,
    DataSource,
    DumpObject,
    LoadReport,
    Progress,
    no_progress,
)
from middleware.engines.postgresql import replication
from middleware.engines.postgresql.dump import (
    DUMPED_DATABASES,
    GLOBALS,
    KEPT_DATABASE,
    KEPT_ROLE_REASON,
    MAINTENANCE_DB,
    MANAGED_ROLES,
    ROLES_KEY,
    USER_ROLES,
    count_tables,
    drop_database,
    dump_roles,
    extra_roles,
    load_globals,
    password_of,
    primary,
    roles_in,
    rows_key,
    tables_key,
)
from middleware.errors import OperationError
from middleware.spec import ResolvedSpec

ASIDE_PREFIX = "moorage-aside-"
# Ending a session is asynchronous: a rename waits this long for the ended sessions to be gone.
SESSIONS_GONE_SECONDS = 10.0
DATABASES = "databases"


class PostgresSetAside:
    """:class:`~middleware.engines.base.SetsAside` for PostgreSQL."""

    def dump_kept(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        return dump_roles(spec, conn, progress)

    def plan_aside(self, spec: ResolvedSpec, conn: Connection, tag: str) -> AsideCopy:
        password = password_of(conn)
        with replication.connect(primary(conn), password, MAINTENANCE_DB) as admin:
            databases = [r[0] for r in admin.execute(DUMPED_DATABASES).fetchall()]
        # Database names are at most 63 bytes: a short token of the restore, not the restore id.
        token = hashlib.sha256(tag.encode()).hexdigest()[:8]
        return AsideCopy({DATABASES: {db: f"{ASIDE_PREFIX}{token}-{i}" for i, db in enumerate(databases)}})

    def set_aside(
        self, spec: ResolvedSpec, conn: Connection, aside: AsideCopy, progress: Progress = no_progress
    ) -> AsideCopy:
        password = password_of(conn)
        endpoint = primary(conn)
        moved: dict[str, str] = aside.state[DATABASES]
        counts: dict[str, int] = {}
        with replication.connect(endpoint, password, MAINTENANCE_DB) as admin:
            counts[ROLES_KEY] = len(admin.execute(USER_ROLES, (list(MANAGED_ROLES),)).fetchall())
            for done, (database, renamed) in enumerate(moved.items()):
                progress(f"setting database {database} aside", done, len(moved))
                tables, rows = _close_and_count(admin, endpoint, password, database)
                counts[tables_key(database)] = tables
                counts[rows_key(database)] = rows
                _rename(admin, database, renamed)
        progress("data set aside", len(moved), len(moved))
        return AsideCopy(aside.state, counts)

    def put_back(
        self,
        spec: ResolvedSpec,
        conn: Connection,
        aside: AsideCopy,
        kept: DataSource,
        progress: Progress = no_progress,
    ) -> LoadReport:
        password = password_of(conn)
        endpoint = primary(conn)
        moved: dict[str, str] = aside.state[DATABASES]
        report = LoadReport(counts=dict(aside.counts))
        globals_object = next((o for o in kept.objects if o.name == GLOBALS), None)
        with replication.connect(endpoint, password, MAINTENANCE_DB) as admin:
            admin.execute("SET synchronous_commit = local")
            present = dict(
                admin.execute(
                    "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate"
                ).fetchall()
            )
            # Checked before anything changes: nothing is dropped when there is nothing to put back.
            gone = [
                f"{db} (as {renamed})"
                for db, renamed in moved.items()
                if renamed not in present and db not in present
            ]
            if gone:
                raise OperationError(f"the data set aside is gone: {', '.join(gone)}; nothing was changed")
            for done, (database, renamed) in enumerate(moved.items()):
                progress(f"putting database {database} back", done, len(moved))
                if renamed in present:
                    drop_database(admin, database)
                    _rename(admin, renamed, database)
                    report.actions.append(f"put database {database} back")
                # Also a database closed but not renamed yet when the restore was stopped.
                admin.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(database))
                )
            for database, open_to_connections in present.items():
                if open_to_connections and database not in moved and database != KEPT_DATABASE:
                    drop_database(admin, database)
                    report.actions.append(f"dropped database {database} (not in the data set aside)")
            if globals_object is not None:
                load_globals(admin, kept.open(GLOBALS))
                report.actions.append("restored roles")
        if globals_object is not None:
            dropped, kept_roles = extra_roles(endpoint, password, roles_in(globals_object))
            report.actions.extend(f"dropped role {role} (not in the data set aside)" for role in dropped)
            report.actions.extend(
                f"kept role {role} without LOGIN: {KEPT_ROLE_REASON}" for role in kept_roles
            )
            report.counts[ROLES_KEY] = report.counts.get(ROLES_KEY, 0) + len(kept_roles)
        progress("data put back", len(moved), len(moved))
        return report

    def drop_aside(self, spec: ResolvedSpec, conn: Connection, aside: AsideCopy) -> list[str]:
        password = password_of(conn)
        dropped = []
        with replication.connect(primary(conn), password, MAINTENANCE_DB) as admin:
            closed = {r[0] for r in admin.execute("SELECT datname FROM pg_database WHERE NOT datallowconn")}
            for renamed in aside.state[DATABASES].values():
                # Only a copy still set aside: never a database put back under its own name.
                if renamed.startswith(ASIDE_PREFIX) and renamed in closed:
                    drop_database(admin, renamed)
                    dropped.append(renamed)
        return dropped


def _close_and_count(
    admin: psycopg.Connection, endpoint: Endpoint, password: str, database: str
) -> tuple[int, int]:
    """Close ``database`` to new connections, end every other session on it, then count its tables
    and rows from a session opened before: nothing can write in between, so the counts are exactly
    what is set aside."""
    with replication.connect(endpoint, password, database) as session:
        name = sql.Identifier(database)
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
            (database, session.info.backend_pid),
        )
        return count_tables(session)


def _rename(admin: psycopg.Connection, old: str, new: str) -> None:
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    # Sessions ended by pg_terminate_backend (or our own counting one) take a moment to go.
    for attempt in Retrying(
        retry=retry_if_exception_type(psycopg.errors.ObjectInUse),
        stop=stop_after_delay(SESSIONS_GONE_SECONDS),
        wait=wait_fixed(0.05),
        reraise=True,
    ):
        with attempt:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,))
            admin.execute(statement)
