"""Live PostgreSQL operations over psycopg 3: roles, promotion, re-pointing standbys, fencing.

Every call connects as the superuser over TCP with scram (there is no socket or trust path), does
one thing and disconnects. Every wait has a deadline. Passwords travel as connection parameters
or SQL literals, never into log messages.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from middleware.endpoints import Endpoint
from middleware.engines.postgresql.config import (
    APP_DATABASE,
    APP_USER,
    PASSFILE_SETTING,
    REPLICATION_USER,
    SUPERUSER,
    app_password,
    conninfo,
    replication_password,
)
from middleware.engines.postgresql.lsn import format_lsn, parse_lsn
from middleware.errors import NotReady, OperationError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3
# Cluster-wide statements (probes, roles, promotion, statistics) run in ``postgres``; while a
# restore has it set aside and not restored yet, in ``template1``, which every cluster has.
CLUSTER_DATABASE = "postgres"
FALLBACK_DATABASE = "template1"
POLL = 0.1


def _connect(endpoint: Endpoint, password: str | None, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=SUPERUSER,
        password=password,
        dbname=dbname,
        connect_timeout=CONNECT_TIMEOUT,
        autocommit=True,
        application_name="moorage",
    )


@contextlib.contextmanager
def connect(
    endpoint: Endpoint, password: str | None, dbname: str = CLUSTER_DATABASE
) -> Iterator[psycopg.Connection]:
    try:
        connection = _connect(endpoint, password, dbname)
    except psycopg.OperationalError as error:
        # The message names host and port only; libpq never echoes the password.
        refused = NotReady(f"postgresql {endpoint.address}: {str(error).strip().splitlines()[0]}")
        # FATAL: the server answered (a server that does not answer is not asked twice). For the
        # cluster database that is one that does not exist or takes no connections right now.
        if dbname != CLUSTER_DATABASE or "FATAL" not in str(error):
            raise refused from None
        try:
            connection = _connect(endpoint, password, FALLBACK_DATABASE)
        except psycopg.OperationalError:
            raise refused from None
    try:
        yield connection
    finally:
        connection.close()


@dataclass(frozen=True)
class NodeState:
    endpoint: Endpoint
    in_recovery: bool
    # Primary: current WAL insert position. Standby: the furthest of flushed-received and replayed.
    lsn: int
    upstream: str | None  # host:port the walreceiver streams from
    streaming: bool

    @property
    def writable(self) -> bool:
        return not self.in_recovery


def probe(endpoint: Endpoint, password: str | None) -> NodeState:
    with connect(endpoint, password) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(),"
            " CASE WHEN pg_is_in_recovery()"
            "  THEN GREATEST(COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0'), 0),"
            "                COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0))"
            "  ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END::bigint"
        ).fetchone()
        assert row is not None
        receiver = conn.execute(
            "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver"
        ).fetchone()
    upstream = f"{receiver[1]}:{receiver[2]}" if receiver and receiver[1] else None
    streaming = bool(receiver and receiver[0] == "streaming")
    return NodeState(endpoint, bool(row[0]), int(row[1]), upstream, streaming)


def try_probe(endpoint: Endpoint, password: str | None) -> NodeState | None:
    try:
        return probe(endpoint, password)
    except NotReady:
        return None


@contextlib.contextmanager
def _answer_or_not_ready(endpoint: Endpoint) -> Iterator[None]:
    """A question the member could not answer now (it went away mid-query, it is promoting): "not
    yet", as for one that does not take the connection."""
    try:
        yield
    except psycopg.Error as error:
        raise NotReady(f"postgresql {endpoint.address}: {str(error).strip().splitlines()[0]}") from None


@dataclass(frozen=True)
class History:
    """A primary's timeline and, per earlier timeline of its history, where it left that one."""

    timeline: int
    forks: dict[int, int]


def history(primary: Endpoint, password: str | None) -> History:
    with connect(primary, password) as conn, _answer_or_not_ready(primary):
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        timeline = int(str(row[0])[:8], 16)
        if timeline == 1:
            return History(timeline, {})
        # Timeline history files stay in pg_wal (never recycled); each line: parent, switch point, why.
        text = conn.execute("SELECT pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",)).fetchone()
    forks = {}
    for line in str(text[0] if text else "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and "/" in parts[1]:
            forks[int(parts[0])] = parse_lsn(parts[1])
    return History(timeline, forks)


def diverged(standby: Endpoint, password: str | None, primary: History) -> str | None:
    """Why ``standby`` cannot stream from a primary with this history, or None: it replayed WAL of an
    older timeline past the point where the primary's history left that timeline (an old primary
    with commits no standby had, a standby promoted past; pg_rewind takes it back).

    PostgreSQL tells no standby's replay timeline directly: the later of its last restartpoint's
    and its minimum recovery point's is taken (pg_rewind sets the latter to the source's, so a
    rewound member is not named again while it replays towards it). A standby that crossed onto the
    primary's timeline but recorded neither yet could be named: restarting it rewinds nothing."""
    with connect(standby, password) as conn, _answer_or_not_ready(standby):
        row = conn.execute(
            "SELECT GREATEST((pg_control_checkpoint()).timeline_id,"
            "                (pg_control_recovery()).min_recovery_end_timeline),"
            " COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0)::bigint"
        ).fetchone()
    assert row is not None
    timeline, replayed = int(row[0]), int(row[1])
    if timeline >= primary.timeline:
        return None
    fork = primary.forks.get(timeline)
    if fork is not None and replayed <= fork:
        return None
    left = f"left it at {format_lsn(fork)}" if fork is not None else "never had it"
    return (
        f"replayed timeline {timeline} up to {format_lsn(replayed)}, and the primary's history "
        f"(timeline {primary.timeline}) {left}"
    )


@dataclass(frozen=True)
class StandbyStat:
    application_name: str
    state: str
    sync_state: str
    lag_bytes: int


def replication_stats(primary: Endpoint, password: str | None) -> dict[str, StandbyStat]:
    """pg_stat_replication on the primary, by application_name (= member name): replay lag in bytes."""
    with connect(primary, password) as conn:
        rows = conn.execute(
            "SELECT application_name, state, sync_state,"
            " COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1)::bigint"
            " FROM pg_stat_replication"
        ).fetchall()
    return {r[0]: StandbyStat(r[0], r[1] or "", r[2] or "", int(r[3])) for r in rows}


@dataclass(frozen=True)
class ArchiverStat:
    """pg_stat_archiver of one server: what it archived last and what failed last."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: str | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: str | None
    failing: bool  # the last attempt failed (a failure newer than the last success)

    def to_wire(self) -> dict[str, object]:
        return {
            "archivedCount": self.archived_count,
            "lastArchivedWal": self.last_archived_wal,
            "lastArchivedTime": self.last_archived_time,
            "failedCount": self.failed_count,
            "lastFailedWal": self.last_failed_wal,
            "lastFailedTime": self.last_failed_time,
            "failing": self.failing,
        }


def archiver_stat(primary: Endpoint, password: str | None) -> ArchiverStat:
    with connect(primary, password) as conn:
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time::text, failed_count,"
            " last_failed_wal, last_failed_time::text,"
            " COALESCE(last_failed_time > COALESCE(last_archived_time, '-infinity'), false)"
            " FROM pg_stat_archiver"
        ).fetchone()
    assert row is not None  # one row, always
    return ArchiverStat(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5], bool(row[6]))


def ensure_roles(primary: Endpoint, password: str, extensions: tuple[str, ...]) -> list[str]:
    """Replication and application roles, the application database and its extensions. Idempotent:
    returns what it changed. Passwords are re-set every time, so they always match the Secret."""
    actions: list[str] = []
    with connect(primary, password) as conn:
        # Not logged: ALTER ROLE ... PASSWORD would otherwise reach the server log with
        # log_statement=ddl, and it must never be in any log.
        conn.execute("SET log_statement = 'none'")
        # Administrative commits must not wait for a synchronous standby: there is none yet while
        # the first replicas are being cloned (they need the replication role to exist).
        conn.execute("SET synchronous_commit = local")
        conn.execute("SET log_min_duration_statement = -1")
        for role, secret, attributes in (
            (REPLICATION_USER, replication_password(password), "REPLICATION LOGIN"),
            (APP_USER, app_password(password), "LOGIN"),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} WITH " + attributes + " PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(role), sql.Literal(secret)
                )
            )
            if not exists:
                actions.append(f"created role {role}")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(APP_DATABASE), sql.Identifier(APP_USER)
                )
            )
            actions.append(f"created database {APP_DATABASE}")
    if extensions:
        with connect(primary, password, APP_DATABASE) as conn:
            conn.execute("SET synchronous_commit = local")
            available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
            installed = {r[0] for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
            for extension in extensions:
                if extension in installed:
                    continue
                if extension not in available:
                    raise OperationError(
                        f"spec.extensions: {extension!r} is not available on this server "
                        f"(available: {', '.join(sorted(available))})"
                    )
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
                actions.append(f"created extension {extension}")
    return actions


def promote(endpoint: Endpoint, password: str | None, timeout: float = 30.0) -> None:
    with connect(endpoint, password) as conn:
        row = conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()
    if not row or not row[0]:
        raise OperationError(f"{endpoint.address} did not finish promotion within {timeout:.0f}s")
    wait_for(lambda: _writable(endpoint, password), timeout, f"{endpoint.address} to accept writes")


def _writable(endpoint: Endpoint, password: str | None) -> bool:
    state = try_probe(endpoint, password)
    return state is not None and state.writable


def point_to(standby: Endpoint, primary: Endpoint, application_name: str, password: str | None) -> bool:
    """Make a standby stream from ``primary``; True when its primary_conninfo had to change.

    primary_conninfo reloads without a restart (PostgreSQL 13+): the walreceiver reconnects. The
    passfile is the standby's own pgpass, which it reports itself (its path differs per member)."""
    with connect(standby, password) as conn:
        passfile = conn.execute(
            sql.SQL("SELECT current_setting({}, true)").format(sql.Literal(PASSFILE_SETTING))
        ).fetchone()
        wanted = conninfo(
            host=primary.host,
            port=primary.port,
            user=REPLICATION_USER,
            application_name=application_name,
            **({"passfile": passfile[0]} if passfile and passfile[0] else {}),
        )
        current = conn.execute("SHOW primary_conninfo").fetchone()
        if current and current[0] == wanted:
            return False
        conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(wanted)))
        conn.execute("SELECT pg_reload_conf()")
    return True


def primary_conninfo_line(primary: Endpoint, application_name: str, passfile: str) -> str:
    """The postgresql.auto.conf line a freshly cloned or rewound member starts with."""
    value = conninfo(
        host=primary.host,
        port=primary.port,
        user=REPLICATION_USER,
        application_name=application_name,
        passfile=passfile,
    )
    return "primary_conninfo = '" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def stop_server(endpoint: Endpoint, password: str | None, timeout: float = 60.0) -> int:
    """Fence a member: a fast shutdown of its postmaster, through its own superuser connection, so it
    works the same in a pod and locally. Returns the last WAL position it had written before the
    shutdown; returns once the member is proved fenced (``fenced``).

    A fast shutdown of a primary first sends every WAL record, the shutdown checkpoint included, to
    its connected standbys and waits for them to flush it: once it is over, a standby whose position
    is past the returned one has everything."""
    with connect(endpoint, password) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            " ELSE pg_current_wal_lsn() END, '0/0')::bigint,"
            " split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"
        ).fetchone()
        assert row is not None
        last_lsn, pid_text = int(row[0] or 0), str(row[1]).strip()
        if not pid_text.isdigit():
            raise OperationError(f"{endpoint.address}: unexpected postmaster.pid content")
        # SIGINT is PostgreSQL's fast shutdown; the backend running this is one of its casualties.
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                sql.SQL("COPY (SELECT 1) TO PROGRAM {}").format(sql.Literal(f"kill -INT {pid_text}"))
            )
    wait_for(lambda: fenced(endpoint, password), timeout, f"{endpoint.address} to shut down")
    return last_lsn


def fenced(endpoint: Endpoint, password: str | None) -> bool:
    """Proof that a member takes no writes: nothing listens on its port (the connection is refused),
    or the server answering there is in recovery (the kubelet or ``moorage up`` started it again,
    fenced). A name that does not resolve or a connect that times out proves nothing (a busy node's
    DNS, a slow network): taking it for "stopped" promoted a standby while the old primary was still
    shutting down and sending WAL, leaving the other members on a history the new primary lacks."""
    import socket

    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT):
            pass
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    state = try_probe(endpoint, password)  # None while it shuts down or starts up: ask again
    return state is not None and state.in_recovery


def wait_streaming(standby: Endpoint, primary: Endpoint, password: str | None, timeout: float) -> NodeState:
    last: list[NodeState | None] = [None]

    def check() -> bool:
        state = try_probe(standby, password)
        last[0] = state
        return bool(state and state.in_recovery and state.streaming and state.upstream == primary.address)

    wait_for(check, timeout, f"{standby.address} to stream from {primary.address}")
    assert last[0] is not None
    return last[0]


def wait_for(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def apply_settings(
    endpoints: list[Endpoint], password: str | None, settings: dict[str, str]
) -> dict[str, str]:
    """ALTER SYSTEM + reload on every member (standbys too: the setting must survive a switchover).
    Returns the settings PostgreSQL still reports as pending a restart."""
    pending: dict[str, str] = {}
    for endpoint in endpoints:
        with connect(endpoint, password) as conn:
            for key, value in settings.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(value))
                )
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 5.0
            names = list(settings)
            while True:
                rows = conn.execute(
                    "SELECT name, pending_restart FROM pg_settings WHERE name = ANY(%s)", (names,)
                ).fetchall()
                pending.update({r[0]: settings[r[0]] for r in rows if r[1]})
                # The reload is asynchronous: wait until this backend sees the new values.
                current = {
                    r[0]: r[1]
                    for r in conn.execute(
                        "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,)
                    ).fetchall()
                }
                if all(current.get(k) is not None for k in names) or time.monotonic() > deadline:
                    break
                time.sleep(POLL)
    return pending
