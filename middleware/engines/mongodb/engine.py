"""The MongoDB engine: the engine protocol on top of topology, config, render and replicaset.

Creation: every member starts at once (Parallel), then ``bootstrap`` initiates the replica set
with every member by its stable host name, waits for a primary and creates the admin user once.
Scaling changes membership with ``replSetReconfig``, one member per reconfig: joiners (started by
the runtime before ``scale``) are added in ordinal order, each waited on until SECONDARY; leavers
are removed highest ordinal first, after a step-down if one of them is the primary.

There is no local MongoDB: no registry ships a ``mongod`` this machine can install, so ``up`` on the
local runtime stops with an explanation (``command``) rather than pretending. ``moorage render``
gives the Kubernetes manifests.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from middleware.endpoints import Endpoint
from middleware.engines.base import (
    ClientAccess,
    Connection,
    DataSource,
    DumpObject,
    DumpOrigin,
    EngineDefaults,
    LoadReport,
    Member,
    MemberPlan,
    Observation,
    ObservedMember,
    Progress,
    ReconfigureReport,
    Report,
    StoredObject,
    no_progress,
    userinfo,
)
from middleware.engines.mongodb import dump, replicaset
from middleware.engines.mongodb.config import (
    ADMIN_USER,
    CONFIG_FILE,
    generate_keyfile_key,
    keyfile_from_password,
    mongod_conf,
)
from middleware.engines.mongodb.render import render as render_manifests
from middleware.engines.mongodb.render import render_credentials, render_keyfile
from middleware.engines.mongodb.topology import DATA_COMPONENT, plan_members, replica_set_name
from middleware.errors import MoorageError, NotReady
from middleware.spec import ResolvedSpec

MONGOD = "mongod"
NO_LOCAL_MONGOD = (
    "MongoDB cannot run on the local runtime on this machine: no mongod binary (no package registry "
    "ships one that installs here); use `moorage render` for Kubernetes"
)
# Parameters mongod applies without a restart, and how (see reconfigure).
LIVE_PARAMETERS = frozenset({"slowOpThresholdMs"})


class MongoDBEngine(EngineDefaults):
    name = "mongodb"
    # Its readiness probe asks for PRIMARY or SECONDARY: true only after replSetInitiate.
    ready_before_bootstrap = False
    counts_in_dump = True

    # -- static facts --------------------------------------------------------------------------
    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        return plan_members(spec)

    def config_templates(self, spec: ResolvedSpec) -> dict[str, str]:
        return {CONFIG_FILE: mongod_conf(spec, replica_set_name(spec.name))}

    def config_file_for(self, member: MemberPlan) -> str:
        return CONFIG_FILE

    def command(self, spec: ResolvedSpec, member: MemberPlan, config_path: str) -> list[str]:
        # The local runtime would report "mongod is not installed: run `make setup`", which is wrong
        # here: `make setup` cannot install one. Say what is true instead.
        if shutil.which(MONGOD) is None:
            raise MoorageError(NO_LOCAL_MONGOD)
        return [MONGOD, "--config", config_path]

    def secrets_file(self, member: MemberPlan, password: str) -> str:
        # The member's keyFile (security.keyFile = ${SECRETS_FILE}), written 0600 by the runtime.
        return keyfile_from_password(password)

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        client = endpoints.get("client", "")
        scheme, sep, rest = client.partition("://")
        if not sep:
            raise NotReady("no client endpoint observed yet (is it Ready?)")
        uri = f"{scheme}://{userinfo(ADMIN_USER, password)}{rest}"
        return [ClientAccess(ADMIN_USER, "replica set (the driver finds the primary)", uri, password)]

    def render(self, spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[dict[str, Any]]:
        return render_manifests(spec, cluster_domain=cluster_domain)

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        return render_credentials(spec, password)

    def render_keyfile(self, spec: ResolvedSpec, key: str) -> dict[str, Any]:
        return render_keyfile(spec, key)

    def render_secrets(self, spec: ResolvedSpec, password: str) -> list[dict[str, Any]]:
        # A fresh random key: it is only ever created once, with the credentials, like them.
        return [render_credentials(spec, password), render_keyfile(spec, generate_keyfile_key())]

    # -- live ----------------------------------------------------------------------------------
    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Report:
        report = Report(changed=False)
        members = _spec_members(spec, conn)
        endpoints = [m.endpoint for m in members]
        credentials = _credentials(conn)
        progress("initiating the replica set", 0, 3)
        _merge(report, _converge(spec, conn, credentials))
        progress("waiting for a primary", 1, 3)
        primary = Endpoint.parse(replicaset.wait_for_primary(endpoints))
        progress("creating the admin user", 2, 3)
        _merge(report, replicaset.ensure_admin_user(primary, credentials))
        last: list[replicaset.SetView] = []

        def all_serving() -> bool:
            view = replicaset.observe(endpoints, credentials)
            last[:] = [view]
            return all(_serving(view, m.endpoint.address) for m in members)

        replicaset.wait_for(
            "every member to be PRIMARY or SECONDARY",
            all_serving,
            replicaset.WAIT_TIMEOUT,
            lambda: _describe(last[0]) if last else "no answer",
        )
        progress("replica set ready", 3, 3)
        return report

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        members = _by_ordinal([m for m in conn.of(DATA_COMPONENT) if m.plan.ordinal < spec.replicas])
        view = replicaset.observe([m.endpoint for m in members if m.up], _credentials(conn))
        observed = []
        for member in members:
            status = view.members.get(member.endpoint.address)
            if status is None:
                role = "unknown" if not member.up or view.answered_by is None else "not-a-member"
                healthy = False
            else:
                role = status.state.lower()
                healthy = status.healthy and status.state in replicaset.SERVING_STATES
            observed.append(ObservedMember(member.plan.name, member.endpoint.address, role, healthy))
        wanted = {m.endpoint.address for m in members}
        problems = []
        if view.answered_by is None:
            problems.append("no member answers replSetGetStatus")
        elif view.primary is None:
            problems.append("no primary")
        if view.answered_by is not None and set(view.members) != wanted:
            problems.append(f"members are {sorted(view.members)}, the spec wants {sorted(wanted)}")
        not_serving = [m.name for m in observed if not m.healthy]
        if not_serving:
            problems.append(f"not PRIMARY or SECONDARY: {', '.join(not_serving)}")
        reason = "PrimaryOK"
        if problems:
            reason = "NoPrimary" if view.primary is None else "MembersNotReady"
        hosts = ",".join(m.endpoint.address for m in members)
        details: dict[str, Any] = {"replicaSet": view.set_name or replica_set_name(spec.name)}
        if view.primary is not None:
            details["primary"] = next((m.name for m in observed if m.address == view.primary), view.primary)
        return Observation(
            members=observed,
            ready=not problems,
            reason=reason,
            message="; ".join(problems),
            endpoints={
                "client": f"mongodb://{hosts}/?replicaSet={replica_set_name(spec.name)}&authSource=admin"
            },
            details=details,
        )

    def scale(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Report:
        return _converge(new, conn, _credentials(conn), progress=progress)

    def reconfigure(self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]) -> ReconfigureReport:
        """``slowOpThresholdMs`` is mongod-wide and set live (``profile: -1, slowms``). The profiling
        *mode* is per database at run time, so a live change would cover only the databases Moorage
        knows of; it is applied from mongod.conf on the next (rolling) restart instead, like the
        storage and network settings."""
        report = ReconfigureReport()
        for name, value in changed.items():
            if name not in LIVE_PARAMETERS:
                report.needs_restart[name] = value
                continue
            missed = replicaset.set_slow_ms(
                [m.endpoint for m in conn.of(DATA_COMPONENT) if m.up], _credentials(conn), int(value)
            )
            if missed:
                raise NotReady(f"{name} not applied on {', '.join(missed)}: they did not answer")
            report.applied_live[name] = value
        return report

    # -- data (DataDump / DataLoad: middleware/engines/mongodb/dump.py) ------------------------
    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        return dump.dump(conn, progress)

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        return dump.inventory(conn)

    def data_dump_counts(self, objects: Sequence[StoredObject]) -> dict[str, int]:
        return dump.dumped_counts(objects)

    def data_compatibility(self, origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
        return dump.compatibility(origin)

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        return dump.load(conn, source, progress)


def _by_ordinal(members: list[Member]) -> list[Member]:
    return sorted(members, key=lambda m: m.plan.ordinal)


def _credentials(conn: Connection) -> replicaset.Credentials:
    if not conn.password:
        raise MoorageError("no admin password for the replica set (the credentials are missing)")
    return replicaset.Credentials(ADMIN_USER, conn.password)


def _spec_members(spec: ResolvedSpec, conn: Connection) -> list[Member]:
    wanted = {m.name for m in plan_members(spec)}
    members = _by_ordinal([m for m in conn.of(DATA_COMPONENT) if m.plan.name in wanted])
    missing = sorted(wanted - {m.plan.name for m in members})
    if missing:
        raise NotReady(f"members {', '.join(missing)} have no address yet")
    return members


def _merge(report: Report, other: Report) -> None:
    for action in other.actions:
        report.add(action)


def _serving(view: replicaset.SetView, host: str) -> bool:
    status = view.members.get(host)
    return status is not None and status.healthy and status.state in replicaset.SERVING_STATES


def _describe(view: replicaset.SetView) -> str:
    states = ", ".join(f"{host} {status.state}" for host, status in sorted(view.members.items()))
    return f"primary {view.primary or 'none'}; {states or 'no members seen'}"


def _other_primary(up: list[Endpoint], credentials: replicaset.Credentials, old: str) -> bool:
    primary = replicaset.primary_of(up, credentials)
    return primary is not None and primary != old


def _converge(
    spec: ResolvedSpec,
    conn: Connection,
    credentials: replicaset.Credentials,
    progress: Progress = no_progress,
) -> Report:
    """Initiate a new set, or bring an existing one to the spec's members one reconfig at a time."""
    members = _spec_members(spec, conn)
    wanted = [m.endpoint.address for m in members]
    up = [m.endpoint for m in _by_ordinal(conn.of(DATA_COMPONENT)) if m.up]
    set_name = replica_set_name(spec.name)
    seen = replicaset.membership(up)
    if seen is None or seen[0] != set_name:
        # No set yet (or someone else's: initiate refuses that with a clear error).
        return replicaset.initiate(set_name, wanted, members[0].endpoint)
    report = Report(changed=False)
    current = seen[1]
    joining = [host for host in wanted if host not in current]
    # Leavers by ordinal, highest first; hosts Moorage does not know go last.
    ordinal = {m.endpoint.address: m.plan.ordinal for m in conn.of(DATA_COMPONENT)}
    leaving = sorted(current - set(wanted), key=lambda h: -ordinal.get(h, -1))
    total = len(joining) + len(leaving)
    for done, host in enumerate(joining):
        progress(f"adding {host}", done, total)
        _merge(report, replicaset.add_member(up, host, credentials))
    for done, host in enumerate(leaving, start=len(joining)):
        progress(f"removing {host}", done, total)
        primary = replicaset.primary_of(up, credentials)
        if primary == host:
            replicaset.step_down(Endpoint.parse(host), credentials)
            report.add(f"stepped down {host}")
            replicaset.wait_for(
                "a new primary",
                functools.partial(_other_primary, up, credentials, host),
                replicaset.WAIT_TIMEOUT,
                lambda: "the set is electing",
            )
        _merge(report, replicaset.remove_member(up, host, credentials))
    progress("membership converged", total, total)
    return report


ENGINE = MongoDBEngine()
