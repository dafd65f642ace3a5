"""The PostgreSQL engine: the engine protocol on top of topology, config, render and replication.

Safety rule: never two writable primaries. Every start is a standby start (``config.START_SCRIPT``)
except a fresh primary's first one, and only ``bootstrap``, ``switchover`` and ``failover`` promote:
bootstrap only when every member is up and none is writable, switchover only after the old primary is
shut down, failover only when the primary is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.base import (
    WAL_ARCHIVING,
    Addressing,
    ClientAccess,
    ClientCommand,
    Connection,
    DataSource,
    DumpObject,
    DumpOrigin,
    EngineDefaults,
    Exporter,
    LoadReport,
    Member,
    MemberPlan,
    Observation,
    ObservedMember,
    Progress,
    ReconfigureReport,
    Report,
    SetsAside,
    StoredObject,
    no_progress,
    service_host,
    userinfo,
)
from middleware.engines.postgresql import dump, replication
from middleware.engines.postgresql.aside import PostgresSetAside
from middleware.engines.postgresql.binaries import find_bin_dir, not_traversable_by_others
from middleware.engines.postgresql.config import (
    APP_DATABASE,
    APP_USER,
    APPEND_SCRIPT,
    FIRST_START_MARKER,
    INCLUDE_SCRIPT,
    PGDATA,
    POSTGRES_PORT,
    PWFILE_SCRIPT,
    REPLICATION_USER,
    REWIND_OR_CLONE_SCRIPT,
    START_SCRIPT,
    SUPERUSER,
    app_password,
    conninfo,
    exporter,
    guc_quote,
    pg_hba_conf,
    pgpass,
    postgresql_conf,
)
from middleware.engines.postgresql.render import PRIMARY_ROLE, REPLICA_ROLE, render_credentials
from middleware.engines.postgresql.render import render as render_manifests
from middleware.engines.postgresql.replication import NodeState
from middleware.engines.postgresql.topology import (
    DATA_COMPONENT,
    plan_members,
    ro_service,
    rw_service,
    start_waves,
)
from middleware.errors import MoorageError, NotReady, OperationError, SpecError
from middleware.spec import ResolvedSpec

log = logging.getLogger(__name__)

POSTGRESQL_CONF = "postgresql.conf"
PROCESS_USER = "postgres"
STREAM_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 30.0
STARTUP_TIMEOUT = 30.0


class PostgresEngine(EngineDefaults):
    name = "postgresql"
    # spec.backup.walArchiving may be turned on or off later (the lifecycle restarts the members).
    spec_config_keys = ("archive_mode", "archive_command", "archive_timeout")
    # A logical restore renames the databases aside instead of dumping them first (aside.py).
    data_aside: SetsAside | None = PostgresSetAside()
    counts_in_dump = True

    # -- static facts --------------------------------------------------------------------------
    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        return plan_members(spec)

    def start_waves(self, spec: ResolvedSpec) -> list[list[MemberPlan]]:
        return start_waves(spec)

    def process_user(self, member: MemberPlan) -> str | None:
        return PROCESS_USER

    def config_templates(self, spec: ResolvedSpec) -> dict[str, str]:
        return {POSTGRESQL_CONF: postgresql_conf(spec)}

    def config_file_for(self, member: MemberPlan) -> str:
        return POSTGRESQL_CONF

    def member_files(self, spec: ResolvedSpec, member: MemberPlan, addressing: Addressing) -> dict[str, str]:
        return {"pg_hba.conf": pg_hba_conf(spec)}

    def command(self, spec: ResolvedSpec, member: MemberPlan, config_path: str) -> list[str]:
        pgdata = str(Path(config_path).parent / PGDATA)
        return ["sh", "-c", START_SCRIPT, "postgres-start", str(find_bin_dir()), config_path, pgdata]

    def secrets_file(self, member: MemberPlan, password: str) -> str:
        return pgpass(password)

    def render(self, spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[dict[str, Any]]:
        return render_manifests(spec, cluster_domain=cluster_domain)

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        return render_credentials(spec, password)

    def exporter(self, spec: ResolvedSpec, member: MemberPlan) -> Exporter | None:
        return exporter(spec)

    # -- preparing a member before it starts -----------------------------------------------------
    def prepare_commands(
        self, spec: ResolvedSpec, member: MemberPlan, data_dir: str, conn: Connection
    ) -> list[list[str]]:
        """Run before every start of ``member``. Empty data: clone the current primary, or initdb on
        ordinal 0 when there is none. Existing data and a primary elsewhere: rewind onto it (a no-op
        unless this member diverged, i.e. it is an old primary) and follow it."""
        bin_dir = find_bin_dir()
        pgdata = Path(data_dir) / PGDATA
        for needed in (bin_dir, Path(data_dir)):
            blocked = not_traversable_by_others(needed)
            if blocked is not None:
                raise MoorageError(
                    f"{blocked} is not traversable by the {PROCESS_USER} user, which runs PostgreSQL: "
                    f"chmod o+x it, or use a state directory / virtualenv outside it"
                )
        others = [m for m in conn.members if m.plan.name != member.name]
        primary = _single_primary(_answering_states(others, conn.password))
        follow = (
            [
                "sh",
                "-c",
                APPEND_SCRIPT,
                "append",
                replication.primary_conninfo_line(primary.endpoint, member.name, "${SECRETS_FILE}"),
                str(pgdata / "postgresql.auto.conf"),
            ]
            if primary is not None
            else None
        )
        clone_source = (
            conninfo(
                host=primary.endpoint.host,
                port=primary.endpoint.port,
                user=REPLICATION_USER,
                application_name=member.name,
                passfile="${SECRETS_FILE}",
            )
            if primary is not None
            else ""
        )
        if not (pgdata / "PG_VERSION").exists():
            if primary is not None:
                # The replication role must exist before anyone clones; bootstrap re-checks it later.
                replication.ensure_roles(primary.endpoint, _password(conn), ())
                assert follow is not None
                return [
                    [
                        str(bin_dir / "pg_basebackup"),
                        "-D",
                        str(pgdata),
                        "-d",
                        clone_source,
                        "-X",
                        "stream",
                        "-c",
                        "fast",
                    ],
                    follow,
                ]
            if member.ordinal != 0:
                raise NotReady(f"{member.name} needs a primary to clone from, and none is up")
            pwfile = str(Path(data_dir) / "initdb.pwfile")
            return [
                ["sh", "-c", PWFILE_SCRIPT, "pwfile", "${SECRETS_FILE}", pwfile],
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--data-checksums",
                    "--no-locale",
                    "--encoding=UTF8",
                ],
                ["rm", "-f", pwfile],
                ["touch", str(pgdata / FIRST_START_MARKER)],
            ]
        if primary is None:
            return []
        assert follow is not None
        rewind_source = conninfo(
            host=primary.endpoint.host, port=primary.endpoint.port, user=SUPERUSER, passfile="${SECRETS_FILE}"
        )
        conf = str(Path(data_dir) / POSTGRESQL_CONF)
        # pg_rewind runs crash recovery first when the member was killed, then rewinds if it diverged
        # (a no-op otherwise); when it cannot, the member is cloned afresh.
        return [
            ["sh", "-c", INCLUDE_SCRIPT, "include", guc_quote(conf), str(pgdata / POSTGRESQL_CONF)],
            [
                "sh",
                "-c",
                REWIND_OR_CLONE_SCRIPT,
                "rejoin",
                str(bin_dir / "pg_rewind"),
                str(bin_dir / "pg_basebackup"),
                str(pgdata),
                rewind_source,
                clone_source,
            ],
            follow,
        ]

    # -- live ----------------------------------------------------------------------------------
    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Report:
        """Heal and set up (every `up` runs it): exactly one primary, every standby following it, the
        roles, the application database and its extensions."""
        report = Report(changed=False)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        states = _answering_states(data, conn.password)
        primary = _single_primary(states)
        if primary is None:
            down = [m.plan.name for m in data if m.endpoint not in {s.endpoint for s in states}]
            if down:
                raise NotReady(
                    f"no primary and {', '.join(down)} not reachable: start them (moorage up) or fail over"
                )
            primary = _most_advanced(states, data)
            replication.promote(primary.endpoint, conn.password)
            report.add(f"promoted {_name(data, primary.endpoint)} (no member was writable)")
        for action in replication.ensure_roles(primary.endpoint, _password(conn), spec.extensions):
            report.add(action)
        self._follow(data, primary.endpoint, conn, report)
        return report

    def _follow(self, data: list[Member], primary: Endpoint, conn: Connection, report: Report) -> None:
        for member in data:
            if member.endpoint == primary or not member.up:
                continue
            if replication.point_to(member.endpoint, primary, member.plan.name, conn.password):
                report.add(f"{member.plan.name} now follows {primary.address}")

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        states = {s.endpoint: s for s in _states(data, conn.password)}
        writable = [s for s in states.values() if s.writable]
        primary = writable[0] if len(writable) == 1 else None
        stats = replication.replication_stats(primary.endpoint, conn.password) if primary else {}
        members: list[ObservedMember] = []
        lag: dict[str, int] = {}
        for member in data:
            state = states.get(member.endpoint)
            if state is None:
                members.append(ObservedMember(member.plan.name, member.endpoint.address, "unknown", False))
                continue
            if state.writable:
                members.append(ObservedMember(member.plan.name, member.endpoint.address, PRIMARY_ROLE, True))
                continue
            stat = stats.get(member.plan.name)
            healthy = (
                primary is not None
                and state.streaming
                and state.upstream == primary.endpoint.address
                and stat is not None
                and stat.state == "streaming"
            )
            if stat is not None:
                lag[member.plan.name] = stat.lag_bytes
            members.append(ObservedMember(member.plan.name, member.endpoint.address, REPLICA_ROLE, healthy))
        problems = []
        if len(writable) > 1:
            problems.append(
                "more than one writable primary: " + ", ".join(s.endpoint.address for s in writable)
            )
        elif not writable:
            problems.append("no primary")
        stuck = _diverged(data, states, primary, conn.password)
        problems += [
            f"{m.name} is {m.role} and not healthy" + (f": {stuck[m.name]}" if m.name in stuck else "")
            for m in members
            if not m.healthy
        ]
        endpoints = {}
        if primary is not None:
            endpoints["rw"] = primary.endpoint.address
        replicas = [m.address for m in members if m.role == REPLICA_ROLE and m.healthy]
        if replicas:
            endpoints["ro"] = ",".join(replicas)
        details: dict[str, Any] = {
            "lagBytes": lag,
            "synchronous": {n: s.sync_state for n, s in stats.items()},
        }
        if spec.wal_archiving and primary is not None:
            details[WAL_ARCHIVING] = replication.archiver_stat(primary.endpoint, conn.password).to_wire()
        return Observation(
            members=members,
            ready=not problems,
            reason="Ready" if not problems else ("SplitBrain" if len(writable) > 1 else "NotReady"),
            message="; ".join(problems),
            endpoints=endpoints,
            details=details,
            restart_to_rejoin=sorted(stuck),
        )

    def check_change(self, old: ResolvedSpec, new: ResolvedSpec) -> None:
        """A standby refuses to replay from a primary whose hot-standby settings exceed its own, so
        lowering one is only safe with the primary restarted before its standbys (CloudNativePG does
        an in-place primary restart for this); Moorage's rolling restart restarts the primary last,
        so such a lowering is refused rather than left to stall a standby."""
        if max(old.replicas, new.replicas) < 2:
            return
        for name in HOT_STANDBY_PARAMETERS:
            before, after = _integer(old.parameters.get(name)), _integer(new.parameters.get(name))
            if before is not None and after is not None and after < before:
                raise SpecError(
                    f"spec.parameters.{name}",
                    f"lowering from {before} to {after} is not supported with standbys: a standby may "
                    f"not run with a lower {name} than its primary, and the rolling restart restarts "
                    "the primary last (docs/postgresql.md, Parameters)",
                )

    # -- planned and unplanned role changes -----------------------------------------------------------
    def client_address(self, spec: ResolvedSpec, endpoints: Mapping[str, str]) -> str:
        rw = endpoints.get("rw")
        if not rw:
            raise NotReady("no primary observed yet (is it Ready?)")
        return rw

    def client_command(
        self, spec: ResolvedSpec, address: str, password: str, tls: ClientTls | None = None
    ) -> ClientCommand:
        """psql as the ``app`` user on the ``app`` database (the superuser is one ``\\c`` away for
        those who know its password); the psql shipped with the server binaries, else PATH's."""
        endpoint = Endpoint.parse(address)
        try:
            psql = str(find_bin_dir() / "psql")
        except MoorageError:
            psql = "psql"
        conninfo = f"host={endpoint.host} port={endpoint.port} user={APP_USER} dbname={APP_DATABASE}"
        return ClientCommand([psql, conninfo], {"PGPASSWORD": app_password(password)})

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        rw = endpoints.get("rw")
        if not rw:
            raise NotReady("no primary observed yet (is it Ready?)")
        app = app_password(password)

        def uri(user: str, secret: str, host: str, database: str) -> str:
            return f"postgresql://{userinfo(user, secret)}{host}/{database}"

        access = [
            ClientAccess(APP_USER, "primary (reads and writes)", uri(APP_USER, app, rw, APP_DATABASE), app)
        ]
        ro = endpoints.get("ro", "").split(",")[0]
        if ro:
            purpose = "a replica (reads; may lag)"
            access.append(ClientAccess(APP_USER, purpose, uri(APP_USER, app, ro, APP_DATABASE), app))
        purpose = "primary, superuser (administration only)"
        access.append(ClientAccess(SUPERUSER, purpose, uri(SUPERUSER, password, rw, "postgres"), password))
        return access

    def service_endpoints(self, spec: ResolvedSpec, observed: Mapping[str, str]) -> dict[str, str]:
        endpoints = dict(observed)
        endpoints["rw"] = service_host(spec, rw_service(spec.name), POSTGRES_PORT)
        if spec.replicas > 1:
            endpoints["ro"] = service_host(spec, ro_service(spec.name), POSTGRES_PORT)
        return endpoints

    def switchover(self, spec: ResolvedSpec, conn: Connection, target: str | None = None) -> Report:
        """Planned: the old primary is shut down first (fenced; its last WAL reaches the standbys), the
        chosen standby is promoted once it has everything, the others follow it. The old primary is
        started again by the runtime (``moorage up``, or the kubelet) and rejoins as a replica."""
        report = Report(changed=False)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        states = _states(data, conn.password)
        old = _single_primary(states)
        if old is None:
            raise NotReady("no primary to switch over from")
        candidates = [
            s for s in states if not s.writable and s.streaming and s.upstream == old.endpoint.address
        ]
        if target is not None:
            candidates = [s for s in candidates if _name(data, s.endpoint) == target]
            if not candidates:
                raise OperationError(f"{target} is not a streaming replica of the current primary")
        if not candidates:
            raise NotReady("no streaming replica to switch over to")
        new = max(candidates, key=lambda s: (s.lsn, -_ordinal(data, s.endpoint)))
        last_lsn = replication.stop_server(old.endpoint, conn.password)
        report.add(f"stopped primary {_name(data, old.endpoint)} at LSN {last_lsn}")
        others = [m for m in data if m.endpoint not in (old.endpoint, new.endpoint)]
        replication.wait_for(
            lambda: _has_everything(new.endpoint, others, conn.password, last_lsn),
            CATCH_UP_TIMEOUT,
            f"{new.endpoint.address} to receive the old primary's last WAL (its shutdown checkpoint, "
            f"past LSN {last_lsn}) and all any other standby has",
        )
        replication.promote(new.endpoint, conn.password)
        report.add(f"promoted {_name(data, new.endpoint)}")
        self._follow([m for m in data if m.endpoint != old.endpoint], new.endpoint, conn, report)
        return report

    def failover(self, spec: ResolvedSpec, conn: Connection) -> Report:
        """Unplanned: the primary is unreachable. The most advanced standby is promoted (with
        synchronous replication it holds every commit), the others follow it. Refused while any
        member still answers as writable."""
        report = Report(changed=False)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        states = _states(data, conn.password)
        if any(s.writable for s in states):
            raise OperationError("a primary is reachable and writable: use switchover, not failover")
        if not states:
            raise NotReady("no member is reachable")
        new = _most_advanced(states, data)
        replication.promote(new.endpoint, conn.password)
        report.add(f"promoted {_name(data, new.endpoint)} at LSN {new.lsn}")
        self._follow(
            [m for m in data if m.endpoint in {s.endpoint for s in states}], new.endpoint, conn, report
        )
        return report

    # -- shape and parameters ---------------------------------------------------------------------
    def scale(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Report:
        """New members were cloned from the primary before starting; leaving members are stopped by
        the runtime after this. A leaving primary hands over first, to the most advanced staying
        replica streaming from it (waited for up to STARTUP_TIMEOUT)."""
        report = Report(changed=False)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        states = _states(data, conn.password)
        primary = _single_primary(states)
        leaving = {m.endpoint for m in data if m.plan.ordinal >= new.replicas}
        if primary is not None and primary.endpoint in leaving:
            # To the most advanced staying member that streams from it: the first one up may be a
            # replica still reconnecting (after a restart), which a switchover refuses.
            staying = [m for m in data if m.endpoint not in leaving]
            address = primary.endpoint.address
            streaming: list[NodeState] = []

            def a_staying_member_streams() -> bool:
                streaming[:] = [
                    s
                    for s in _states(staying, conn.password)
                    if not s.writable and s.streaming and s.upstream == address
                ]
                return bool(streaming)

            replication.wait_for(
                a_staying_member_streams,
                STARTUP_TIMEOUT,
                f"a staying member to stream from the leaving primary {_name(data, primary.endpoint)}",
            )
            best = max(streaming, key=lambda s: (s.lsn, -_ordinal(data, s.endpoint)))
            for action in self.switchover(new, conn, target=_name(data, best.endpoint)).actions:
                report.add(action)
        for member in data:
            if old.replicas <= member.plan.ordinal < new.replicas:
                report.add(f"added replica {member.plan.name}")
        for member in data:
            if member.endpoint in leaving:
                report.add(f"removing replica {member.plan.name}")
        return report

    def reconfigure(self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]) -> ReconfigureReport:
        report = ReconfigureReport()
        dynamic = {k: v for k, v in changed.items() if k in spec.dynamic_parameters}
        report.needs_restart.update({k: v for k, v in changed.items() if k not in dynamic})
        if dynamic:
            endpoints = [m.endpoint for m in conn.of(DATA_COMPONENT) if m.up]
            pending = replication.apply_settings(endpoints, conn.password, dynamic)
            report.needs_restart.update(pending)
            report.applied_live.update({k: v for k, v in dynamic.items() if k not in pending})
        return report

    # -- backups (DataDump / DataLoad): see dump.py and docs/postgresql.md ---------------------------
    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        return dump.dump(spec, conn, progress)

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        return dump.inventory(spec, conn)

    def data_dump_counts(self, objects: Sequence[StoredObject]) -> dict[str, int]:
        return dump.dumped_counts(objects)

    def data_compatibility(self, origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
        return dump.compatibility(origin, spec)

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        return dump.load(spec, conn, source, progress)


def _password(conn: Connection) -> str:
    if not conn.password:
        raise OperationError("postgresql needs the deployment's password")
    return conn.password


def _states(members: list[Member], password: str | None) -> list[NodeState]:
    states = []
    for member in members:
        if not member.up:
            continue
        state = replication.try_probe(member.endpoint, password)
        if state is not None:
            states.append(state)
    return states


def _answering_states(members: list[Member], password: str | None) -> list[NodeState]:
    """States of the members that are up, once each answers queries: a server accepts TCP a moment
    before it leaves "the database system is starting up" (bounded wait)."""
    up = [m for m in members if m.up]
    found: list[list[NodeState]] = [[]]

    def all_answer() -> bool:
        found[0] = _states(up, password)
        return len(found[0]) == len(up)

    try:
        replication.wait_for(all_answer, STARTUP_TIMEOUT, "members to answer queries")
    except NotReady:
        log.warning("not every member answers yet: %d of %d", len(found[0]), len(up))
    return found[0]


def _single_primary(states: list[NodeState]) -> NodeState | None:
    writable = [s for s in states if s.writable]
    if len(writable) > 1:
        raise OperationError(
            "more than one writable primary: "
            + ", ".join(s.endpoint.address for s in writable)
            + "; refusing to act"
        )
    return writable[0] if writable else None


def _most_advanced(states: list[NodeState], data: list[Member]) -> NodeState:
    # Highest WAL position; ties go to the lowest ordinal, so a full restart keeps ordinal 0 primary.
    return max(states, key=lambda s: (s.lsn, -_ordinal(data, s.endpoint)))


def _diverged(
    data: list[Member],
    states: Mapping[Endpoint, replication.NodeState],
    primary: replication.NodeState | None,
    password: str | None,
) -> dict[str, str]:
    """Standbys that do not stream and replayed past the primary's fork of their timeline: member
    name -> why, with what it takes. Asked only of standbys not streaming (a healthy deployment
    costs no query); one that does not answer the question is left for the next look."""
    if primary is None:
        return {}
    waiting = [
        m for m in data if (s := states.get(m.endpoint)) is not None and not s.writable and not s.streaming
    ]
    if not waiting:
        return {}
    try:
        history = replication.history(primary.endpoint, password)
    except NotReady:
        return {}
    found = {}
    for member in waiting:
        try:
            why = replication.diverged(member.endpoint, password, history)
        except NotReady:
            continue
        if why is not None:
            found[member.plan.name] = f"diverged ({why}): restarting it rewinds it"
    return found


def _has_everything(candidate: Endpoint, others: list[Member], password: str | None, last_lsn: int) -> bool:
    """The candidate may be promoted without leaving anyone behind on another history: it holds the
    stopped primary's shutdown checkpoint (written after ``last_lsn``) and at least what every other
    standby that answers holds (a standby ahead of the fork point could not follow it)."""
    state = replication.try_probe(candidate, password)
    if state is None or state.lsn <= last_lsn:
        return False
    return all(other.lsn <= state.lsn for other in _states(others, password))


def _by_ordinal(members: list[Member]) -> list[Member]:
    return sorted(members, key=lambda m: m.plan.ordinal)


def _name(data: list[Member], endpoint: Endpoint) -> str:
    return next((m.plan.name for m in data if m.endpoint == endpoint), endpoint.address)


def _ordinal(data: list[Member], endpoint: Endpoint) -> int:
    return next((m.plan.ordinal for m in data if m.endpoint == endpoint), 1 << 30)


ENGINE = PostgresEngine()


# Settings a hot standby must hold at least at its primary's value (PostgreSQL docs, "Hot Standby").
HOT_STANDBY_PARAMETERS = (
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_wal_senders",
    "max_worker_processes",
)


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
