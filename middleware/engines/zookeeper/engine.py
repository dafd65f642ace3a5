"""The ZooKeeper engine: the engine protocol on top of topology, config, render and ensemble.

Creation starts every member at once (they form the first quorum together) from a dynamic config
listing all of them. Scaling changes membership with dynamic reconfig, one server at a time:
members added by a scale-out are started first (the runtime does that before ``scale``), follow the
leader as non-voting learners, and are then voted in; members a scale-in drops are voted out here,
before the runtime stops them. Nothing is ever reinstalled.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.base import (
    Addressing,
    ClientAccess,
    ClientCommand,
    Connection,
    DataSource,
    DumpObject,
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
    StoredObject,
    exporter_dirs,
    no_progress,
    service_host,
)
from middleware.engines.zookeeper import config, dump, ensemble, launch
from middleware.engines.zookeeper.config import (
    CLIENT_PORT,
    CONFIG_FILE,
    DYNAMIC_FILE,
    MYID,
    SUPER_USER,
    dynamic_config,
    secrets_file,
    server_spec,
    zoo_cfg,
)
from middleware.engines.zookeeper.render import heap_mib, render_credentials
from middleware.engines.zookeeper.render import render as render_manifests
from middleware.engines.zookeeper.topology import (
    CLIENT_PORT_NAME,
    DATA_COMPONENT,
    ELECTION_PORT_NAME,
    PEER_PORT_NAME,
    client_service,
    plan_members,
    server_id,
)
from middleware.errors import NotReady
from middleware.spec import ResolvedSpec

# The local runtime runs Debian's ZooKeeper 3.8 (`apt-get install zookeeper`) on Java 17.
DEBIAN_CLASSPATH = ":".join(
    [
        "/etc/zookeeper/conf",
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/slf4j-log4j12.jar",
        "/usr/share/java/log4j-1.2.jar",
    ]
)
DEBIAN_LOG4J = "file:/etc/zookeeper/conf/log4j.properties"
# The Prometheus provider's jars (hack/install-exporters.sh) and the servlet API its Jetty endpoint
# needs (Debian's libservlet-api-java, which zookeeper's Jetty already depends on). Always on the
# classpath: the launcher refuses a config that asks for the provider when its jars are missing.
METRICS_JARS_SUBDIR = "share/zookeeper-metrics"
SERVLET_API_JAR = "/usr/share/java/servlet-api.jar"
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Quick to start: a local ensemble is for development and tests. The heap follows the spec's memory
# as in a pod (render.heap_mib): ZooKeeper holds the whole tree in it, so a fixed small heap would
# make a local member die of the first tree larger than that.
LOCAL_JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
)


class ZooKeeperEngine(EngineDefaults):
    name = "zookeeper"
    counts_in_dump = True

    # The metrics lines follow the spec (monitoring on or off, the port the runtime allocated).
    spec_config_keys = config.METRICS_KEYS

    # -- static facts --------------------------------------------------------------------------
    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        return plan_members(spec)

    def exporter(self, spec: ResolvedSpec, member: MemberPlan) -> Exporter | None:
        return config.exporter(spec)

    def config_templates(self, spec: ResolvedSpec) -> dict[str, str]:
        return {CONFIG_FILE: zoo_cfg(spec)}

    def config_file_for(self, member: MemberPlan) -> str:
        return CONFIG_FILE

    def member_files(self, spec: ResolvedSpec, member: MemberPlan, addressing: Addressing) -> dict[str, str]:
        # Every member of the spec as a participant: right for the members that create the
        # ensemble together. A member started later by a scale-out gets the same list, and the
        # launcher narrows it to the committed config + itself before the server starts.
        servers = []
        for planned in plan_members(spec):
            address = addressing[planned.name]
            servers.append(
                server_spec(
                    server_id(planned),
                    address.host,
                    peer=address.ports[PEER_PORT_NAME],
                    election=address.ports[ELECTION_PORT_NAME],
                    client=address.ports[CLIENT_PORT_NAME],
                )
            )
        return {MYID: f"{server_id(member)}\n", DYNAMIC_FILE: dynamic_config(servers)}

    def command(self, spec: ResolvedSpec, member: MemberPlan, config_path: str) -> list[str]:
        server = [
            "java",
            f"-Xmx{heap_mib(spec)}m",
            "-XX:+ExitOnOutOfMemoryError",
            *LOCAL_JVM_FLAGS,
            # Log to stdout: the runtime keeps it in member.log, as kubelet keeps a pod's log.
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            f"-Dlog4j.configuration={DEBIAN_LOG4J}",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            ":".join(
                [
                    DEBIAN_CLASSPATH,
                    *(f"{d}/{METRICS_JARS_SUBDIR}/*" for d in exporter_dirs()),
                    SERVLET_API_JAR,
                ]
            ),
            MAIN_CLASS,
            config_path,
        ]
        # The launcher is run by path with the interpreter running Moorage: it only needs the
        # standard library, so it works whether or not Moorage is installed in that interpreter.
        return [sys.executable, str(Path(launch.__file__)), config_path, "--", *server]

    def secrets_file(self, member: MemberPlan, password: str) -> str:
        return secrets_file(password)

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        hosts = endpoints.get("client", "")
        if not hosts:
            raise NotReady("no client endpoint observed yet (is it Ready?)")
        # ZooKeeper has no URI scheme of its own: a connect string, and the superuser's digest auth
        # (zkCli: addauth digest super:PASSWORD) for what needs it (reconfig, ACL repairs).
        return [
            ClientAccess("-", "ensemble (connect string; no authentication to read and write)", hosts, ""),
            ClientAccess(SUPER_USER, "superuser (addauth digest super:PASSWORD)", hosts, password),
        ]

    def client_address(self, spec: ResolvedSpec, endpoints: Mapping[str, str]) -> str:
        first = endpoints.get("client", "").split(",")[0]
        if not first:
            raise NotReady("no client endpoint observed yet (is it Ready?)")
        return first

    def client_command(
        self, spec: ResolvedSpec, address: str, password: str, tls: ClientTls | None = None
    ) -> ClientCommand:
        """ZooKeeper's own shell (what zkCli.sh runs), on the classpath the members run with; no
        authentication to read and write (``addauth digest super:PASSWORD`` for reconfig and ACLs)."""
        return ClientCommand(
            [
                "java",
                # The shell's own output only: the client library's log lines are errors or nothing.
                "-Dzookeeper.root.logger=ERROR,CONSOLE",
                f"-Dlog4j.configuration={DEBIAN_LOG4J}",
                "-cp",
                DEBIAN_CLASSPATH,
                "org.apache.zookeeper.ZooKeeperMain",
                "-server",
                address,
            ]
        )

    def service_endpoints(self, spec: ResolvedSpec, observed: Mapping[str, str]) -> dict[str, str]:
        return {**observed, "client": service_host(spec, client_service(spec.name), CLIENT_PORT)}

    def render(self, spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[dict[str, Any]]:
        return render_manifests(spec, cluster_domain=cluster_domain)

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        return render_credentials(spec, password)

    # -- live ----------------------------------------------------------------------------------
    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Report:
        report = Report(changed=False)
        target = _target(spec, conn)
        result = ensemble.converge(target, _up_endpoints(conn), conn.password or "", progress=progress)
        for action in result.actions:
            report.add(action)
        # Ready for clients means every member of the spec votes and is synced, not just a quorum.
        ensemble.wait_for(
            "every member to be a synced voter",
            lambda: _all_synced(target, conn),
            detail=lambda: ensemble.describe(ensemble.observe(_up_endpoints(conn))),
        )
        return report

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        members = _by_ordinal([m for m in conn.of(DATA_COMPONENT) if m.plan.ordinal < spec.replicas])
        view = ensemble.observe([m.endpoint for m in members if m.up])
        membership = view.membership
        voters = membership.voters if membership else set()
        leader = view.leader
        observed = []
        for member in members:
            state = view.states.get(member.endpoint) if member.up else None
            sid = server_id(member.plan)
            if state is None:
                role, healthy = "unknown", False
            else:
                role = state.mode
                if state.mode == "follower" and sid not in voters:
                    # Following the leader but not (yet, or any more) voting: a joiner before its
                    # reconfig, or a member voted out.
                    role = "learner"
                healthy = state.synced and sid in voters and state.server_id == sid
            observed.append(ObservedMember(member.plan.name, member.endpoint.address, role, healthy))
        problems = []
        if leader is None:
            problems.append("no leader")
        elif not view.quorum_ok and membership is not None:
            problems.append(f"{len(view.synced_voters())} synced voters, a quorum needs {membership.quorum}")
        wanted = {server_id(m.plan) for m in members}
        if membership is not None and voters != wanted:
            problems.append(f"voters are servers {sorted(voters)}, the spec wants {sorted(wanted)}")
        details: dict[str, Any] = {}
        if membership is not None:
            details = {
                "configVersion": f"{membership.version:x}",
                "voters": len(voters),
                "quorum": membership.quorum,
                "syncedVoters": len(view.synced_voters()),
            }
        if leader is not None:
            details["leader"] = next((m.name for m in observed if m.address == leader.endpoint.address), "")
        reason = "QuorumOK"
        if problems:
            reason = (
                "NoLeader" if leader is None else ("NoQuorum" if not view.quorum_ok else "MembershipPending")
            )
        return Observation(
            members=observed,
            ready=not problems,
            reason=reason,
            message="; ".join(problems),
            endpoints={"client": ",".join(m.endpoint.address for m in members)},
            details=details,
        )

    def scale(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Report:
        report = Report(changed=False)
        result = ensemble.converge(
            _target(new, conn), _up_endpoints(conn), conn.password or "", progress=progress
        )
        for action in result.actions:
            report.add(action)
        return report

    def reconfigure(self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]) -> ReconfigureReport:
        # ZooKeeper reads zoo.cfg only at start: every parameter needs a (rolling) restart.
        return ReconfigureReport(needs_restart=dict(changed))

    # -- backups (DataDump / DataLoad): see dump.py and docs/zookeeper.md ----------------------------
    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        return dump.dump(spec, conn, progress)

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        return dump.inventory(spec, conn)

    def data_dump_counts(self, objects: Sequence[StoredObject]) -> dict[str, int]:
        return dump.dumped_counts(objects)

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        return dump.load(spec, conn, source, progress)


def _by_ordinal(members: list[Member]) -> list[Member]:
    return sorted(members, key=lambda m: m.plan.ordinal)


def _up_endpoints(conn: Connection) -> list[Endpoint]:
    return [m.endpoint for m in _by_ordinal(conn.of(DATA_COMPONENT)) if m.up]


def _target(spec: ResolvedSpec, conn: Connection) -> dict[int, Endpoint]:
    wanted = {m.name for m in plan_members(spec)}
    target = {server_id(m.plan): m.endpoint for m in conn.of(DATA_COMPONENT) if m.plan.name in wanted}
    missing = sorted(wanted - {m.plan.name for m in conn.of(DATA_COMPONENT)})
    if missing:
        raise NotReady(f"members {', '.join(missing)} have no address yet")
    return target


def _all_synced(target: dict[int, Endpoint], conn: Connection) -> bool:
    view = ensemble.observe(_up_endpoints(conn))
    return view.leader is not None and set(target) <= view.synced_voters()


ENGINE = ZooKeeperEngine()
