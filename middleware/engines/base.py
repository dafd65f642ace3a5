"""The one protocol every engine package implements, and the data both runtimes share.

Names follow KubeBlocks' lifecycle actions where they exist: ``bootstrap`` (PostProvision),
``observe`` (RoleProbe), ``scale`` (MemberJoin/MemberLeave), ``reconfigure`` (Reconfigure),
``switchover`` (Switchover).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from middleware.endpoints import ClientTls, Endpoint
from middleware.errors import OperationError
from middleware.models.middleware import MemberStatus
from middleware.spec import ResolvedSpec

# Placeholders in config templates. The Kubernetes runtime fills them in an init container from the
# pod's own name; the local runtime fills them from its port allocation. Secrets never appear in a
# template: they go to a separate file written with mode 0600 (local) or from a Secret (Kubernetes).
PLACEHOLDERS = ("BIND", "PORT", "BUS_PORT", "DATA_DIR", "ANNOUNCE_HOST", "SECRETS_FILE")

Progress = Callable[[str, float, float], None]
"""progress(step description, done, total): long operations report through this."""


def no_progress(_step: str, _done: float, _total: float) -> None:
    return None


@dataclass(frozen=True)
class MemberPlan:
    """One planned member. ``name`` is the pod name in Kubernetes and the process name locally."""

    name: str
    component: str  # "data" or "sentinel" (engine-defined)
    workload: str  # StatefulSet name in Kubernetes
    ordinal: int
    shard: int | None = None
    # Ports the member listens on, by role; the local runtime allocates real ones for each.
    ports: tuple[str, ...] = ("PORT",)


@dataclass(frozen=True)
class MemberAddress:
    """Where peers reach a member: its host (pod DNS name, or 127.0.0.1) and its ports by name."""

    host: str
    ports: dict[str, int]

    def endpoint(self, port_name: str = "PORT") -> Endpoint:
        return Endpoint(self.host, self.ports[port_name])


Addressing = dict[str, MemberAddress]
"""Every planned member's address, by member name: what an engine needs to write configs that list
peers (zoo.cfg's server lines, primary_conninfo)."""


@dataclass
class Member:
    """A planned member as a runtime sees it: where it answers and whether its process is up."""

    plan: MemberPlan
    endpoint: Endpoint
    up: bool


@dataclass
class Connection:
    """What live operations need: every member's endpoint plus the credentials."""

    members: list[Member]
    password: str | None

    def of(self, component: str, shard: int | None = None) -> list[Member]:
        return [
            m
            for m in self.members
            if m.plan.component == component and (shard is None or m.plan.shard == shard)
        ]

    def endpoint(self, name: str) -> Endpoint:
        return next(m.endpoint for m in self.members if m.plan.name == name)


@dataclass
class ObservedMember:
    name: str
    address: str
    role: str
    healthy: bool
    shard: int | None = None


@dataclass
class Observation:
    """What an engine reports about a running deployment (RoleProbe for all members)."""

    members: list[ObservedMember]
    ready: bool
    reason: str
    message: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Members that can follow the others again only after a restart with their data, which the
    # runtime does (PostgreSQL: a standby whose history went past the point where the primary's
    # timeline forked off; its start rewinds it onto the primary's).
    restart_to_rejoin: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClientAccess:
    """How a client connects: the user, what this address is for, and a URI ready to paste (with the
    password in it: the caller masks it unless asked to reveal it)."""

    user: str
    purpose: str
    uri: str
    password: str


@dataclass(frozen=True)
class ClientCommand:
    """The engine's own interactive client (psql, redis-cli, ZooKeeper's shell) against one address.
    No secret in ``argv``, which any user of the machine can read in the process list: the password
    goes in ``env``, in the variable the client documents for it (PGPASSWORD, REDISCLI_AUTH)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    """What a live operation did; ``changed`` is False when it was a no-op (idempotent re-run)."""

    changed: bool
    actions: list[str] = field(default_factory=list)

    def add(self, action: str) -> None:
        self.actions.append(action)
        self.changed = True


# ``Observation.details`` key of an engine that archives its write-ahead log (spec.backup.walArchiving):
# the primary's archiver statistics (PostgreSQL's pg_stat_archiver, camelCase).
WAL_ARCHIVING = "walArchiving"
WAL_ARCHIVING_CONDITION = "WALArchivingFailing"


def wal_archiving_condition(observation: Observation) -> tuple[bool, str, str] | None:
    """The ``WALArchivingFailing`` condition (status, reason, message) from an observation, or None
    when the engine reported no archiver (archiving off, or no primary to ask)."""
    stat = observation.details.get(WAL_ARCHIVING)
    if not isinstance(stat, dict):
        return None
    last = f"last archived {stat.get('lastArchivedWal') or '-'} at {stat.get('lastArchivedTime') or '-'}"
    if stat.get("failing"):
        return (
            True,
            "ArchiveCommandFailing",
            f"archiving {stat.get('lastFailedWal')} failed at {stat.get('lastFailedTime')} "
            f"({stat.get('failedCount')} failures so far; the segments are kept until it succeeds); {last}",
        )
    return False, "Archiving", f"{stat.get('archivedCount')} segments archived; {last}"


def member_statuses(observation: Observation, metrics: Mapping[str, str]) -> list[MemberStatus]:
    """The status's members from an observation, each with its exporter's address (``metrics``, by
    member name) where it has one: one shape for both runtimes' status."""
    return [
        MemberStatus(
            name=m.name,
            address=m.address,
            role=m.role,
            healthy=m.healthy,
            shard=m.shard,
            metrics=metrics.get(m.name),
        )
        for m in observation.members
    ]


@dataclass(frozen=True, kw_only=True)
class Exporter:
    """A member's Prometheus exporter (KubeBlocks' component "exporter"), run beside the member (a
    process next to it on the local runtime, a sidecar container from the catalog's exporter image
    in its pod), reading it over loopback and serving ``/metrics``. The engine's password reaches
    it only through the environment variable ``password_env``, never its command line (``ps``)."""

    # The local runtime's binary, as Debian's package names it (a pod runs its image's entrypoint).
    binary: str
    # Where it listens in a pod: the exporter's customary port, the pods' ``metrics`` port.
    port: int
    password_env: str
    # Arguments after the binary; ``${LISTEN}`` is the host:port to serve on, ``${TARGET}`` the
    # member's host:port. The environment's values may name ``${TARGET}`` too.
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    # Served by the member's own process (ZooKeeper's Prometheus provider) on ``port``: no process
    # or sidecar beside it, no binary, no password; the member's config names the port
    # (``${METRICS_PORT}``), and in a pod the main container declares it.
    in_process: bool = False

    def arguments(self, listen: str, target: str, tls_dir: str = "") -> list[str]:
        """``${TLS_DIR}``: where the member's certificates are (cert-manager's file names)."""
        return [
            a.replace("${LISTEN}", listen).replace("${TARGET}", target).replace("${TLS_DIR}", tls_dir)
            for a in self.args
        ]

    def environment(self, target: str) -> dict[str, str]:
        """Without the password, which the runtime adds from where it keeps it."""
        return {name: value.replace("${TARGET}", target) for name, value in self.env}


# Where hack/install-exporters.sh puts what the local runtime's exporters need (Debian's exporter
# binaries in bin/, ZooKeeper's metrics jars in share/zookeeper-metrics/); $MOORAGE_EXPORTER_DIR wins.
EXPORTER_DIR_ENV = "MOORAGE_EXPORTER_DIR"
DEFAULT_EXPORTER_DIR = "/opt/moorage/exporters"


def exporter_dirs() -> list[str]:
    """Where to look for the local runtime's exporters, in order."""
    configured = os.environ.get(EXPORTER_DIR_ENV)
    return [*([configured] if configured else []), DEFAULT_EXPORTER_DIR]


@dataclass
class ReconfigureReport:
    applied_live: dict[str, str] = field(default_factory=dict)
    needs_restart: dict[str, str] = field(default_factory=dict)


# -- data movement (KubeBlocks' DataDump / DataLoad) ------------------------------------------------
# Engines produce and consume *streams*; where the bytes go (S3, a file) is the backups layer's
# business. Every stream is read in bounded chunks, so memory never grows with the data.


@dataclass
class DumpObject:
    """One object of a dump: a file name inside the backup folder, its bytes as a stream, and
    engine metadata the loader needs (shard and slot ranges, database name, format). ``meta`` is
    recorded once the stream has been read to its end and closed, so a stream may add to it what
    it only knows then (PostgreSQL's ``archiveBytes``)."""

    name: str
    stream: BinaryIO
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredObject:
    """An object of a stored dump as a loader sees it (its bytes come from ``DataSource.open``)."""

    name: str
    size: int
    meta: dict[str, Any] = field(default_factory=dict)


class DataSource(Protocol):
    """A stored dump, as handed to ``data_load``: the objects in dump order, each opened as a
    stream whose checksum the source checks (a corrupt object fails its read, not silently)."""

    @property
    def objects(self) -> list[StoredObject]: ...

    def open(self, name: str) -> BinaryIO: ...


@dataclass(frozen=True)
class DumpOrigin:
    """What a dump was taken from (from the backup manifest), for compatibility checks."""

    engine: str
    version: str
    topology: str
    shards: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What ``data_load`` wrote, as counts comparable with ``data_inventory`` of the target."""

    counts: dict[str, int] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    # How far below ``counts`` the target may legitimately be when it is checked: data that expires
    # by itself (Redis keys restored with a short TTL) can be gone by then without anything lost.
    tolerance: dict[str, int] = field(default_factory=dict)

    def problems(self, found: dict[str, int]) -> list[str]:
        """Differences between what a target holds and what this load wrote, within tolerance."""
        issues = []
        for name in sorted(set(found) | set(self.counts)):
            want, have = self.counts.get(name, 0), found.get(name, 0)
            if not want - self.tolerance.get(name, 0) <= have <= want:
                issues.append(f"{name}: {have} found, {want} loaded")
        return issues


SPOOL_LIMIT_ENV = "MOORAGE_RESTORE_SPOOL_BYTES"
"""Bytes a load may write to its temporary directory (a restore Job sets it from its scratch volume)."""


@dataclass
class AsideCopy:
    """What a restore moved aside *inside* the target instead of copying it out first: renamed, not
    copied, so it costs no time whatever the data size (the safety copy of a logical restore on
    engines that can; see :class:`SetsAside`)."""

    # The engine's own record of what went where; JSON, no secrets (it goes in the restore record).
    state: dict[str, Any]
    # What the data held when it was set aside, as ``data_inventory`` counts it: putting it back
    # is checked against these.
    counts: dict[str, int] = field(default_factory=dict)


class SetsAside(Protocol):
    """A restore's safety copy by renaming inside the target (PostgreSQL: each database renamed
    aside and closed to connections) instead of a full dump to the repository. Whatever a rename
    does not cover (PostgreSQL's roles) is dumped by ``dump_kept`` into a small safety snapshot."""

    def dump_kept(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        """What setting aside does not keep, as dump objects (stored as the safety snapshot)."""
        ...

    def plan_aside(self, spec: ResolvedSpec, conn: Connection, tag: str) -> AsideCopy:
        """Where the data will go, touching nothing (recorded before anything moves, so a restore
        killed half-way through setting aside can still be put back)."""
        ...

    def set_aside(
        self, spec: ResolvedSpec, conn: Connection, aside: AsideCopy, progress: Progress = no_progress
    ) -> AsideCopy:
        """Move the data as planned, leaving the target empty for the load; ``counts`` filled."""
        ...

    def put_back(
        self,
        spec: ResolvedSpec,
        conn: Connection,
        aside: AsideCopy,
        kept: DataSource,
        progress: Progress = no_progress,
    ) -> LoadReport:
        """Replace whatever the target holds with the data set aside (and ``kept``'s objects); works
        after a partial ``set_aside`` too. The report's counts are ``aside.counts``."""
        ...

    def drop_aside(self, spec: ResolvedSpec, conn: Connection, aside: AsideCopy) -> list[str]:
        """Delete the data set aside for good; returns what was deleted."""
        ...


class Engine(Protocol):
    name: str
    # Restores keep their safety copy this way where not None; a full dump to the repository
    # (the safety snapshot) otherwise.
    data_aside: SetsAside | None
    # True where the dump counts what it writes (its objects' meta), as ``data_inventory`` names the
    # counts: a backup records ``data_dump_counts`` of what it stored instead of counting the whole
    # target in a pass of its own first (PostgreSQL: in the dump's own snapshot; MongoDB: the
    # documents streamed; ZooKeeper: the znodes walked).
    counts_in_dump: bool
    # False where a member's readiness probe passes only once bootstrap made it part of the
    # deployment (a MongoDB member is ready as primary or secondary): on Kubernetes, bootstrap then
    # runs as soon as every member's container has started instead of waiting for Ready.
    ready_before_bootstrap: bool
    # Config settings that follow the spec on a member whose config file is otherwise kept as the
    # engine rewrote it (the local runtime writes that file once): rewritten from the template at
    # every apply, in effect at the next restart (PostgreSQL's archive settings).
    spec_config_keys: tuple[str, ...]

    def start_waves(self, spec: ResolvedSpec) -> list[list[MemberPlan]]:
        """Members grouped by start order: each wave is up before the next is prepared (a primary
        before the replicas cloned from it). Most engines start everything in one wave."""
        ...

    def member_files(self, spec: ResolvedSpec, member: MemberPlan, addressing: Addressing) -> dict[str, str]:
        """Extra per-member files for the data directory (e.g. ZooKeeper's myid), written once before
        the first start. No secrets: those go to ``secrets_file``."""
        ...

    def prepare_commands(
        self, spec: ResolvedSpec, member: MemberPlan, data_dir: str, conn: Connection
    ) -> list[list[str]]:
        """Commands that initialise an empty data directory before the first start (initdb, a base
        backup from the primary), run as ``process_user``. ``conn`` holds the members already up."""
        ...

    def process_user(self, member: MemberPlan) -> str | None:
        """The OS user a member runs as on the local runtime (None: the current user)."""
        ...

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        """The credentials Secret for a generated password (created once, never overwritten)."""
        ...

    def render_secrets(self, spec: ResolvedSpec, password: str) -> list[dict[str, Any]]:
        """Every Secret a new deployment needs (credentials, and e.g. MongoDB's keyFile), each
        generated once: applying a fresh one over an existing one would lock the members out."""
        ...

    def check_change(self, old: ResolvedSpec, new: ResolvedSpec) -> None:
        """Refuse (SpecError naming the field) a change from ``old`` to ``new`` this engine cannot
        carry out safely; called before anything is touched, on both runtimes."""
        ...

    def switchover(self, spec: ResolvedSpec, conn: Connection, target: str | None = None) -> Report:
        """Planned change of primary (Switchover), to ``target`` member or the best candidate."""
        ...

    def failover(self, spec: ResolvedSpec, conn: Connection) -> Report:
        """Promote a replica when the primary is gone (engines without automatic failover)."""
        ...

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        """Connection URIs per user, from the status endpoints (``observe``'s names) or the Services'
        (``service_endpoints``)."""
        ...

    def client_address(self, spec: ResolvedSpec, endpoints: Mapping[str, str]) -> str:
        """The ``host:port`` an interactive session opens (the primary's, where there is one), from
        the same endpoints as ``client_access``."""
        ...

    def client_command(
        self, spec: ResolvedSpec, address: str, password: str, tls: ClientTls | None = None
    ) -> ClientCommand:
        """The engine's own client against ``address`` (``moorage connect --exec``); ``tls``: the
        deployment's CA and certificate where it has spec.tls."""
        ...

    def service_endpoints(self, spec: ResolvedSpec, observed: Mapping[str, str]) -> dict[str, str]:
        """``observed`` with the Kubernetes Services' names where a Service serves that endpoint
        (``NAME-rw.NAMESPACE.svc:5432``): stable across failovers, for clients in the cluster."""
        ...

    def exporter(self, spec: ResolvedSpec, member: MemberPlan) -> Exporter | None:
        """The member's Prometheus exporter, or None (no exporter for this engine or member, or
        ``spec.monitoring.enabled`` false)."""
        ...

    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        """Every member the spec asks for, in start order (e.g. sentinels after the data members)."""
        ...

    def config_templates(self, spec: ResolvedSpec) -> dict[str, str]:
        """Config file templates by file name (e.g. redis.conf, sentinel.conf), with placeholders."""
        ...

    def config_file_for(self, member: MemberPlan) -> str:
        """Which template a member starts from."""
        ...

    def command(self, spec: ResolvedSpec, member: MemberPlan, config_path: str) -> list[str]:
        """The process command line for a member, given its rendered config file path."""
        ...

    def secrets_file(self, member: MemberPlan, password: str) -> str:
        """Contents of the member's secrets file (included by the config)."""
        ...

    def render(self, spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[dict[str, Any]]:
        """Pure: the Kubernetes manifests for the spec (no Secret data: credentials are separate)."""
        ...

    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Report: ...

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation: ...

    def scale(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Report:
        """Called after the runtime has started the members ``new`` adds and before it stops the
        members ``old`` had and ``new`` drops: data is moved off leaving members here."""
        ...

    def reconfigure(
        self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]
    ) -> ReconfigureReport: ...

    def reload_certificates(self, spec: ResolvedSpec, conn: Connection) -> list[str]:
        """Make running members serve the certificate files renewed in place (spec.tls), without
        a restart and without dropping their connections; returns the members that take them only
        by a restart, which the runtime then restarts one at a time."""
        ...

    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        """DataDump: the deployment's data as objects, yielded one at a time; the caller reads each
        stream to the end (and closes it) before asking for the next."""
        ...

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        """What the deployment holds now, as counts by name ("keys", "db/app/tables", "znodes"):
        what a restore would overwrite, and what a restore is verified against."""
        ...

    def data_dump_counts(self, objects: Sequence[StoredObject]) -> dict[str, int]:
        """Where ``counts_in_dump``: what a stored dump holds, from its objects' meta, named as
        ``data_inventory`` names it."""
        ...

    def data_compatibility(self, origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
        """Why a dump from ``origin`` cannot be loaded into ``spec`` (None: it can)."""
        ...

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        """DataLoad: replace the deployment's data with the dump's. Returns counts that the
        target's ``data_inventory`` must equal afterwards."""
        ...


class EngineDefaults:
    """Defaults for the optional parts of the protocol; engines inherit and override what they need."""

    data_aside: SetsAside | None = None
    counts_in_dump: bool = False

    ready_before_bootstrap: bool = True
    spec_config_keys: tuple[str, ...] = ()

    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        raise NotImplementedError

    def start_waves(self, spec: ResolvedSpec) -> list[list[MemberPlan]]:
        return [self.members(spec)]

    def member_files(self, spec: ResolvedSpec, member: MemberPlan, addressing: Addressing) -> dict[str, str]:
        return {}

    def prepare_commands(
        self, spec: ResolvedSpec, member: MemberPlan, data_dir: str, conn: Connection
    ) -> list[list[str]]:
        return []

    def process_user(self, member: MemberPlan) -> str | None:
        return None

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        # Imported here: the kube builders are only needed when rendering for Kubernetes.
        from middleware.kube.builders import credentials_secret

        return credentials_secret(spec, password)

    def render_secrets(self, spec: ResolvedSpec, password: str) -> list[dict[str, Any]]:
        return [self.render_credentials(spec, password)]

    def check_change(self, old: ResolvedSpec, new: ResolvedSpec) -> None:
        return None

    def reload_certificates(self, spec: ResolvedSpec, conn: Connection) -> list[str]:
        return []  # an engine without TLS yet (spec.resolve refuses spec.tls for it)

    def switchover(self, spec: ResolvedSpec, conn: Connection, target: str | None = None) -> Report:
        raise OperationError(f"switchover is not supported for {spec.engine} {spec.topology}")

    def failover(self, spec: ResolvedSpec, conn: Connection) -> Report:
        raise OperationError(
            f"{spec.engine} {spec.topology} fails over by itself (or has no replicas): nothing to trigger"
        )

    def client_address(self, spec: ResolvedSpec, endpoints: Mapping[str, str]) -> str:
        raise OperationError(f"no interactive client for {spec.engine}: use a URI from `moorage connect`")

    def client_command(
        self, spec: ResolvedSpec, address: str, password: str, tls: ClientTls | None = None
    ) -> ClientCommand:
        raise OperationError(f"no interactive client for {spec.engine}: use a URI from `moorage connect`")

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        raise OperationError(f"connection help is not available for {spec.engine} yet")

    def service_endpoints(self, spec: ResolvedSpec, observed: Mapping[str, str]) -> dict[str, str]:
        return dict(observed)

    def exporter(self, spec: ResolvedSpec, member: MemberPlan) -> Exporter | None:
        return None

    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        raise OperationError(f"backups are not supported for {spec.engine} yet")

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        raise OperationError(f"backups are not supported for {spec.engine} yet")

    def data_dump_counts(self, objects: Sequence[StoredObject]) -> dict[str, int]:
        raise OperationError("this engine's dumps do not count what they hold")

    def data_compatibility(self, origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
        if origin.engine != spec.engine:
            return f"the backup is of {origin.engine}, the target runs {spec.engine}"
        return None

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        raise OperationError(f"restores are not supported for {spec.engine} yet")


def userinfo(user: str, password: str) -> str:
    """``user:password@`` for a URI, both percent-encoded (a generated password may hold ``/``)."""
    return f"{quote(user, safe='')}:{quote(password, safe='')}@"


def service_host(spec: ResolvedSpec, service: str, port: int) -> str:
    return f"{service}.{spec.namespace}.svc:{port}"
