"""The Redis engine: the engine protocol implemented on top of topology, config, render and the
live-operation modules. Decisions that depend on topology are made here; the mechanics live in
``cluster.py`` (Redis Cluster), ``sentinel.py`` (Sentinel) and ``live.py`` (per node).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.base import (
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
    no_progress,
    service_host,
    userinfo,
)
from middleware.engines.redis import cluster, dump, live, sentinel
from middleware.engines.redis.config import (
    REDIS_PORT,
    SENTINEL_PORT,
    exporter,
    redis_conf,
    secrets_conf,
    sentinel_conf,
)
from middleware.engines.redis.render import render as render_manifests
from middleware.engines.redis.render import render_credentials
from middleware.engines.redis.replica_load import Unavailable, release_interrupted_load
from middleware.engines.redis.topology import (
    DATA_COMPONENT,
    SENTINEL_COMPONENT,
    plan_members,
    sentinel_master_name,
)
from middleware.errors import NotReady, OperationError
from middleware.models.middleware import Topology
from middleware.spec import ResolvedSpec

log = logging.getLogger(__name__)

# Sentinel timings: fast enough to fail over within seconds, slow enough not to flap on a GC pause.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 30000
# The role a data member is labelled with while it claims master against the sentinels' word.
STALE_MASTER_ROLE = "stale-master"


class RedisEngine(EngineDefaults):
    name = "redis"

    # -- static facts --------------------------------------------------------------------------
    def members(self, spec: ResolvedSpec) -> list[MemberPlan]:
        return plan_members(spec)

    def config_templates(self, spec: ResolvedSpec) -> dict[str, str]:
        templates = {"redis.conf": redis_conf(spec)}
        if spec.topology == Topology.SENTINEL:
            templates["sentinel.conf"] = sentinel_conf(spec)
        return templates

    def config_file_for(self, member: MemberPlan) -> str:
        return "sentinel.conf" if member.component == SENTINEL_COMPONENT else "redis.conf"

    def command(self, spec: ResolvedSpec, member: MemberPlan, config_path: str) -> list[str]:
        if member.component == SENTINEL_COMPONENT:
            return ["redis-server", config_path, "--sentinel"]
        return ["redis-server", config_path]

    def secrets_file(self, member: MemberPlan, password: str) -> str:
        return secrets_conf(password, sentinel=member.component == SENTINEL_COMPONENT)

    def render(self, spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[dict[str, Any]]:
        return render_manifests(spec, cluster_domain=cluster_domain)

    def render_credentials(self, spec: ResolvedSpec, password: str) -> dict[str, Any]:
        return render_credentials(spec, password)

    def exporter(self, spec: ResolvedSpec, member: MemberPlan) -> Exporter | None:
        return exporter(spec)

    # -- live ----------------------------------------------------------------------------------
    def bootstrap(self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress) -> Report:
        report = Report(changed=False)
        if spec.topology == Topology.CLUSTER:
            shards = [_endpoints(_by_ordinal(conn.of(DATA_COMPONENT, shard))) for shard in range(spec.shards)]
            # Heal first: after every member restarted on a new address (pods rescheduled), the
            # members still know each other by id at the old addresses, and forming would wait for
            # a cluster_state ok that only the heal's MEETs at the current addresses can bring.
            healed = cluster.heal_cluster(_endpoints(conn.of(DATA_COMPONENT)), conn.password)
            if healed.changed:
                report.add(f"healed: {'; '.join(healed.actions)}")
            result = cluster.create_cluster(shards, conn.password)
            if result.changed:
                report.add(f"cluster: {'; '.join(result.actions)}")
        elif spec.topology == Topology.SENTINEL:
            data = _endpoints(_by_ordinal(conn.of(DATA_COMPONENT)))
            sentinels = _endpoints(_by_ordinal(conn.of(SENTINEL_COMPONENT)))
            result_s = sentinel.bootstrap_sentinel(
                data[0],
                data[1:],
                sentinels,
                master_name=sentinel_master_name(spec),
                password=conn.password,
                sentinel_password=conn.password,
                quorum=len(sentinels) // 2 + 1,
                down_after_ms=DOWN_AFTER_MS,
                failover_timeout_ms=FAILOVER_TIMEOUT_MS,
            )
            if result_s.released_from is not None:
                report.add(
                    f"{result_s.master.address} followed {result_s.released_from.address} (an interrupted "
                    "restore): master again"
                )
            if result_s.changed:
                report.add(f"sentinel: master {result_s.master.address}")
            # A member restarted after a failover may come back believing it is master.
            view = self._sentinel_view(spec, conn)
            demoted = sentinel.demote_stray_masters(view, conn.password) if view.conflicts else []
            for endpoint in demoted:
                report.add(f"demoted stray master {endpoint.address}")
        else:
            for endpoint in _endpoints(conn.of(DATA_COMPONENT)):
                released = release_interrupted_load(endpoint, conn.password)
                if released is not None:
                    report.add(
                        f"{endpoint.address} followed {released.address} (an interrupted restore): "
                        "master again"
                    )
        return report

    def _sentinel_view(self, spec: ResolvedSpec, conn: Connection) -> sentinel.SentinelView:
        return sentinel.observe_sentinel(
            _endpoints(conn.of(SENTINEL_COMPONENT)),
            sentinel_master_name(spec),
            conn.password,
            sentinel_password=conn.password,
            data_nodes=_endpoints(conn.of(DATA_COMPONENT)),
        )

    def observe(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        if spec.topology == Topology.CLUSTER:
            return self._observe_cluster(spec, conn)
        if spec.topology == Topology.SENTINEL:
            return self._observe_sentinel(spec, conn)
        return self._observe_standalone(conn)

    def _observe_cluster(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        view = cluster.observe_cluster(_endpoints(conn.members), conn.password)
        nodes = {node.endpoint: node for node in view.nodes}
        members = []
        for member in conn.of(DATA_COMPONENT):
            node = nodes.get(member.endpoint) if member.up else None
            healthy = node is not None and node.healthy
            role = node.role if node is not None and member.up else "unknown"
            members.append(
                ObservedMember(member.plan.name, member.endpoint.address, role, healthy, member.plan.shard)
            )
        masters_per_shard = {
            shard: sum(1 for m in members if m.shard == shard and m.role == "master" and m.healthy)
            for shard in range(spec.shards)
        }
        problems = []
        if view.cluster_state != "ok":
            problems.append(f"cluster_state {view.cluster_state}")
        if view.slots_assigned != cluster.SLOTS:
            problems.append(f"{view.slots_assigned}/{cluster.SLOTS} slots assigned")
        if view.open_slots:
            problems.append(f"{len(view.open_slots)} open slots")
        headless = [s for s, count in masters_per_shard.items() if count != 1]
        if headless:
            problems.append(f"shards without exactly one healthy master: {headless}")
        entry = ",".join(m.address for m in members if m.role == "master" and m.healthy)
        return Observation(
            members=members,
            ready=not problems,
            reason="ClusterOK" if not problems else "ClusterNotReady",
            message="; ".join(problems),
            endpoints={"cluster": entry},
        )

    def _observe_sentinel(self, spec: ResolvedSpec, conn: Connection) -> Observation:
        view = self._sentinel_view(spec, conn)
        members = []
        for member in _by_ordinal(conn.of(DATA_COMPONENT)):
            role_of = view.nodes.get(member.endpoint)
            if not member.up or role_of is None:
                members.append(ObservedMember(member.plan.name, member.endpoint.address, "unknown", False))
                continue
            is_master = view.master is not None and live.same_node(view.master, member.endpoint)
            if is_master:
                role, healthy = "master", role_of.is_master
            elif role_of.is_replica:
                role, healthy = "replica", role_of.link_up
            elif view.master is not None:
                # Claims master while the sentinels name another (an old master back from a
                # restart, not yet reconfigured): never labelled master, or the -master Service
                # would send writes to data the sentinels are about to replace.
                role, healthy = STALE_MASTER_ROLE, False
            else:
                role, healthy = "master", False
            members.append(ObservedMember(member.plan.name, member.endpoint.address, role, healthy))
        for member in _by_ordinal(conn.of(SENTINEL_COMPONENT)):
            reachable = member.up and member.endpoint in view.sentinels_reachable
            members.append(ObservedMember(member.plan.name, member.endpoint.address, "sentinel", reachable))
        problems = []
        if not view.healthy:
            if view.master is None:
                problems.append("sentinels do not agree on a master")
            if view.master_down:
                problems.append("master is down")
            if view.failover_in_progress:
                problems.append("failover in progress")
            if not view.quorum_ok:
                problems.append(f"quorum: {view.quorum_detail}")
            problems += [f"{c.kind} {c.endpoint.address}: {c.detail}" for c in view.conflicts]
        # A hold a restore left behind (its process died before putting it back) would delay every
        # failover by minutes: not Ready, so the heal (bootstrap) sets the spec's value again.
        held = sorted(s.address for s, ms in view.down_after_ms.items() if ms != DOWN_AFTER_MS)
        if held:
            problems.append(f"sentinels {', '.join(held)}: down-after-milliseconds is not {DOWN_AFTER_MS}")
        endpoints = {
            "sentinels": ",".join(m.endpoint.address for m in conn.of(SENTINEL_COMPONENT)),
            "masterName": sentinel_master_name(spec),
        }
        if view.master is not None:
            endpoints["master"] = view.master.address
        return Observation(
            members=members,
            ready=not problems,
            reason="SentinelOK" if not problems else "SentinelNotReady",
            message="; ".join(problems),
            endpoints=endpoints,
        )

    def _observe_standalone(self, conn: Connection) -> Observation:
        members = []
        for member in conn.of(DATA_COMPONENT):
            healthy = False
            if member.up:
                try:
                    healthy = live.node_role(member.endpoint, conn.password).is_master
                except NotReady:
                    healthy = False
            members.append(ObservedMember(member.plan.name, member.endpoint.address, "master", healthy))
        ready = all(m.healthy for m in members) and bool(members)
        return Observation(
            members=members,
            ready=ready,
            reason="Ready" if ready else "NotReachable",
            endpoints={"master": members[0].address} if members else {},
        )

    def scale(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Report:
        report = Report(changed=False)
        if new.topology == Topology.CLUSTER:
            self._scale_cluster(old, new, conn, progress, report)
        elif new.topology == Topology.SENTINEL:
            self._scale_sentinel(old, new, conn, report)
        return report

    def _scale_cluster(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, progress: Progress, report: Report
    ) -> None:
        def moved(done: int, total: int) -> None:
            progress("moving slots", done, total)

        everyone = _endpoints(conn.of(DATA_COMPONENT))
        if new.shards > old.shards:
            existing = [m.endpoint for m in conn.of(DATA_COMPONENT) if (m.plan.shard or 0) < old.shards]
            added = [
                _endpoints(_by_ordinal(conn.of(DATA_COMPONENT, shard)))
                for shard in range(old.shards, new.shards)
            ]
            result = cluster.add_shards(existing, added, conn.password, progress=moved)
            report.add(f"added shards {old.shards}..{new.shards - 1}: {'; '.join(result.actions)}")
        elif new.shards < old.shards:
            view = cluster.observe_cluster(everyone, conn.password)
            leaving_shards = range(new.shards, old.shards)
            leaving_members = {m.endpoint for s in leaving_shards for m in conn.of(DATA_COMPONENT, s)}
            leaving_masters = [
                node.endpoint
                for node in view.masters
                if node.endpoint is not None and node.endpoint in leaving_members
            ]
            result = cluster.remove_shards(everyone, leaving_masters, conn.password, progress=moved)
            report.add(f"removed shards {new.shards}..{old.shards - 1}: {'; '.join(result.actions)}")
        if new.replicas != old.replicas:
            for shard in range(min(old.shards, new.shards)):
                self._scale_shard_replicas(old, new, conn, shard, report)

    def _scale_shard_replicas(
        self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, shard: int, report: Report
    ) -> None:
        members = _by_ordinal(conn.of(DATA_COMPONENT, shard))
        staying = [m for m in members if m.plan.ordinal < new.replicas]
        leaving = [m for m in members if m.plan.ordinal >= new.replicas]

        # Only current cluster members: shards are handled in order, so earlier shards already have
        # their new shape, later ones their old; this shard has both. Newcomers of later shards have
        # not met the cluster yet, and waiting for them to see this change would never end.
        def in_cluster(member: Member) -> bool:
            member_shard = member.plan.shard or 0
            if member_shard == shard:
                return True
            replicas = new.replicas if member_shard < shard else old.replicas
            return member.plan.ordinal < replicas

        everyone = [m.endpoint for m in conn.of(DATA_COMPONENT) if in_cluster(m)]
        view = cluster.observe_cluster(everyone, conn.password)
        shard_endpoints = {m.endpoint for m in members}
        master = next((n.endpoint for n in view.masters if n.endpoint in shard_endpoints), None)
        if master is None:
            raise NotReady(f"shard {shard} has no master right now; retry when it has one")
        if any(m.endpoint == master for m in leaving):
            # The master itself is leaving: hand over to a staying replica first (CLUSTER FAILOVER).
            master = next(m.endpoint for m in staying)
            cluster.failover(master, conn.password)
            report.add(f"shard {shard}: failed over to {master.address} before scaling in")
        added = [m.endpoint for m in staying if m.plan.ordinal >= old.replicas]
        removed = [m.endpoint for m in leaving]
        if added or removed:
            cluster.set_replicas(everyone, master, conn.password, add=added, remove=removed)
            report.add(f"shard {shard}: replicas +{len(added)} -{len(removed)}")

    def _scale_sentinel(self, old: ResolvedSpec, new: ResolvedSpec, conn: Connection, report: Report) -> None:
        if new.sentinels != old.sentinels:
            raise OperationError("changing the number of sentinels is not supported yet: recreate instead")
        sentinels = _endpoints(conn.of(SENTINEL_COMPONENT))
        name = sentinel_master_name(new)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        for member in data:
            if old.replicas <= member.plan.ordinal < new.replicas:
                sentinel.add_replica(
                    sentinels, name, member.endpoint, conn.password, sentinel_password=conn.password
                )
                report.add(f"added replica {member.plan.name}")
        leaving = [m for m in data if m.plan.ordinal >= new.replicas]
        if not leaving:
            return
        view = self._sentinel_view(new, conn)
        master = next((m for m in leaving if view.master and live.same_node(view.master, m.endpoint)), None)
        # Leaving replicas go first: when the master itself leaves, the sentinels must then have only
        # staying replicas to choose from (they cannot be told which one to promote).
        for member in [m for m in leaving if m is not master]:
            sentinel.remove_replica(
                sentinels, name, member.endpoint, conn.password, sentinel_password=conn.password
            )
            report.add(f"removed replica {member.plan.name}")
        if master is not None:
            # After SENTINEL RESET the sentinels know no replica until their next INFO (up to 10 s):
            # wait until they list the staying ones again, or the failover finds nobody to promote.
            for member in data:
                if member not in leaving:
                    sentinel.add_replica(
                        sentinels, name, member.endpoint, conn.password, sentinel_password=conn.password
                    )
            old_master = sentinel.failover(sentinels, name, conn.password, sentinel_password=conn.password)
            sentinel.wait_for_new_master(
                sentinels, name, old_master, conn.password, sentinel_password=conn.password
            )
            report.add(f"failed over away from {old_master.address} before scaling in")
            sentinel.remove_replica(
                sentinels, name, master.endpoint, conn.password, sentinel_password=conn.password
            )
            report.add(f"removed replica {master.plan.name}")

    def client_access(
        self, spec: ResolvedSpec, endpoints: Mapping[str, str], password: str
    ) -> list[ClientAccess]:
        auth = userinfo("default", password)
        # rediss: TLS, the server's certificate checked against the deployment's CA (docs/security.md).
        scheme = "rediss" if spec.tls else "redis"
        if spec.topology == Topology.CLUSTER:
            entry = _first(endpoints, "cluster")
            purpose = "cluster (any node; cluster-mode clients follow MOVED)"
            return [ClientAccess("default", purpose, f"{scheme}://{auth}{entry}", password)]
        master = _first(endpoints, "master")
        access = [
            ClientAccess("default", "master (reads and writes)", f"{scheme}://{auth}{master}", password)
        ]
        if spec.topology == Topology.SENTINEL:
            sentinels, name = endpoints.get("sentinels", ""), endpoints.get("masterName", "")
            purpose = f"sentinels (ask them for master {name!r}; same password)"
            uri = f"{scheme}+sentinel://{auth}{sentinels}/{name}"
            access.append(ClientAccess("default", purpose, uri, password))
        return access

    def client_address(self, spec: ResolvedSpec, endpoints: Mapping[str, str]) -> str:
        return _first(endpoints, "cluster" if spec.topology == Topology.CLUSTER else "master")

    def client_command(
        self, spec: ResolvedSpec, address: str, password: str, tls: ClientTls | None = None
    ) -> ClientCommand:
        """redis-cli (-c in a cluster: it follows MOVED to the node's own address, which from
        outside a Kubernetes cluster is reachable only where pod IPs are)."""
        endpoint = Endpoint.parse(address)
        argv = ["redis-cli", "-h", endpoint.host, "-p", str(endpoint.port)]
        if spec.topology == Topology.CLUSTER:
            argv.append("-c")
        if tls is not None:
            argv += ["--tls", "--cacert", tls.ca_file]
            if tls.cert_file and tls.key_file:
                argv += ["--cert", tls.cert_file, "--key", tls.key_file]
        return ClientCommand(argv, {"REDISCLI_AUTH": password})

    def service_endpoints(self, spec: ResolvedSpec, observed: Mapping[str, str]) -> dict[str, str]:
        endpoints = dict(observed)
        if spec.topology == Topology.SENTINEL:
            endpoints["master"] = service_host(spec, f"{spec.name}-master", REDIS_PORT)
            endpoints["sentinels"] = service_host(spec, f"{spec.name}-sentinel", SENTINEL_PORT)
        elif spec.topology == Topology.CLUSTER:
            endpoints["cluster"] = service_host(spec, spec.name, REDIS_PORT)
        else:
            endpoints["master"] = service_host(spec, spec.name, REDIS_PORT)
        return endpoints

    def switchover(self, spec: ResolvedSpec, conn: Connection, target: str | None = None) -> Report:
        """Sentinel: writes paused until the replicas have them, then SENTINEL FAILOVER (the sentinels
        pick the replica; a target cannot be chosen).
        Cluster: CLUSTER FAILOVER on the given replica, coordinated so no acknowledged write is lost."""
        report = Report(changed=False)
        if spec.topology == Topology.SENTINEL:
            if target is not None:
                raise OperationError("sentinel picks the new master itself: run switchover without --to")
            sentinels = _endpoints(conn.of(SENTINEL_COMPONENT))
            name = sentinel_master_name(spec)
            old = sentinel.switchover(sentinels, name, conn.password, sentinel_password=conn.password)
            new = sentinel.wait_for_new_master(
                sentinels, name, old, conn.password, sentinel_password=conn.password
            )
            report.add(f"master {old.address} -> {new.address}")
            return report
        if spec.topology == Topology.CLUSTER:
            if target is None:
                raise OperationError("name the replica to promote: switchover NAME --to MEMBER")
            member = next((m for m in conn.members if m.plan.name == target), None)
            if member is None:
                raise OperationError(f"no member {target!r} in {spec.name}")
            cluster.failover(member.endpoint, conn.password)
            report.add(f"{target} promoted")
            return report
        raise OperationError("a standalone Redis has no replica to switch over to")

    def reconfigure(self, spec: ResolvedSpec, conn: Connection, changed: dict[str, str]) -> ReconfigureReport:
        report = ReconfigureReport()
        dynamic: dict[str, str] = {}
        for key, value in changed.items():
            if key in spec.dynamic_parameters:
                dynamic[key] = value
            else:
                report.needs_restart[key] = value
        if dynamic:
            live.apply_parameters(_endpoints(conn.of(DATA_COMPONENT)), conn.password, dynamic)
            report.applied_live.update(dynamic)
        return report

    def reload_certificates(self, spec: ResolvedSpec, conn: Connection) -> list[str]:
        """A data node reads its certificate files again on CONFIG SET of the tls-* files (the
        same paths): new connections get the new certificate, established ones stay. A sentinel
        reads them only when it starts (SENTINEL CONFIG SET has no tls settings)."""
        for member in conn.of(DATA_COMPONENT):
            live.reload_tls_files(member.endpoint, conn.password)
        return [m.plan.name for m in conn.members if m.plan.component != DATA_COMPONENT]

    # -- data (DataDump / DataLoad): the mechanics are in dump.py -----------------------------------
    def data_dump(
        self, spec: ResolvedSpec, conn: Connection, progress: Progress = no_progress
    ) -> Iterator[DumpObject]:
        # Sources are chosen now, so an unhealthy deployment fails the call rather than a next().
        return dump.dump_shards(self._dump_sources(spec, conn), conn.password, progress)

    def data_inventory(self, spec: ResolvedSpec, conn: Connection) -> dict[str, int]:
        return dump.inventory(self._load_target(spec, conn).masters, conn.password)

    def data_compatibility(self, origin: DumpOrigin, spec: ResolvedSpec) -> str | None:
        reason = super().data_compatibility(origin, spec)
        if reason is not None:
            return reason
        objects = origin.meta.get("objects")
        metas = objects if isinstance(objects, list) else [origin.meta]
        return self._incompatibility(metas, spec, fallback_version=origin.version)

    def data_load(
        self, spec: ResolvedSpec, conn: Connection, source: DataSource, progress: Progress = no_progress
    ) -> LoadReport:
        return dump.load_dump(
            self._load_target(spec, conn),
            conn.password,
            source,
            lambda metas: self._incompatibility(metas, spec),
            progress,
            by_replication=dump.load_method() == "auto",
        )

    @staticmethod
    def _incompatibility(
        metas: Sequence[Mapping[str, Any]], spec: ResolvedSpec, fallback_version: str | None = None
    ) -> str | None:
        return dump.incompatibility(
            metas,
            target_version=spec.version,
            target_is_cluster=spec.topology == Topology.CLUSTER,
            target_databases=int(spec.parameters.get("databases", "16")),
            fallback_version=fallback_version,
        )

    def _dump_sources(self, spec: ResolvedSpec, conn: Connection) -> list[dump.ShardSource]:
        if spec.topology == Topology.CLUSTER:
            return self._cluster_dump_sources(spec, conn)
        data = _by_ordinal(conn.of(DATA_COMPONENT))
        if spec.topology != Topology.SENTINEL:
            return [dump.ShardSource("data.rdb", data[0].endpoint, "master")]
        master = self._sentinel_master(spec, conn)
        for member in data:
            if live.same_node(member.endpoint, master) or not member.up:
                continue
            try:
                role = live.node_role(member.endpoint, conn.password, attempts=1)
            except NotReady:
                continue
            if role.link_up and live.same_node(role.master, master):
                return [dump.ShardSource("data.rdb", member.endpoint, "replica")]
        return [dump.ShardSource("data.rdb", master, "master")]

    def _sentinel_master(self, spec: ResolvedSpec, conn: Connection) -> Endpoint:
        view = self._sentinel_view(spec, conn)
        if view.master is None or view.master_down:
            raise NotReady(f"{spec.name}: the sentinels do not report a live master; retry after failover")
        # The member's own endpoint, not the announced name: that is what this runtime reaches.
        return next(
            (m.endpoint for m in conn.of(DATA_COMPONENT) if live.same_node(m.endpoint, view.master)),
            view.master,
        )

    def _cluster_view(self, spec: ResolvedSpec, conn: Connection) -> cluster.ClusterView:
        view = cluster.observe_cluster(_endpoints(conn.of(DATA_COMPONENT)), conn.password)
        if not view.slots_covered:
            raise NotReady(f"{spec.name}: only {view.slots_assigned}/{cluster.SLOTS} slots are served")
        if view.open_slots:
            raise NotReady(f"{spec.name}: slots are being migrated; retry when the reshard is done")
        return view

    def _cluster_dump_sources(self, spec: ResolvedSpec, conn: Connection) -> list[dump.ShardSource]:
        view = self._cluster_view(spec, conn)
        sources = []
        dumped: set[str] = set()
        for shard in range(spec.shards):
            members = _by_ordinal(conn.of(DATA_COMPONENT, shard))
            rank = {m.endpoint: m.plan.ordinal for m in members}
            master = next((n for n in view.masters if n.endpoint in rank and n.healthy), None)
            if master is None or master.endpoint is None:
                raise NotReady(f"{spec.name}: shard {shard} has no healthy master right now")
            replicas = sorted(
                (n for n in view.replicas_of(master.id) if n.healthy and n.endpoint in rank),
                key=lambda n: rank[n.endpoint] if n.endpoint is not None else 0,
            )
            node, role = (replicas[0].endpoint, "replica") if replicas else (master.endpoint, "master")
            assert node is not None
            sources.append(dump.ShardSource(f"shard-{shard}.rdb", node, role, shard, master.slots))
            dumped.add(master.id)
        stray = [n for n in view.masters if n.slots and n.id not in dumped]
        if stray:
            raise NotReady(f"{spec.name}: masters outside the planned shards serve slots: {stray[0].id[:8]}")
        return sources

    def _load_target(self, spec: ResolvedSpec, conn: Connection) -> dump.LoadTarget:
        if spec.topology == Topology.SENTINEL:
            hold = partial(
                _failover_held,
                _endpoints(_by_ordinal(conn.of(SENTINEL_COMPONENT))),
                sentinel_master_name(spec),
                conn.password,
            )
            master = self._sentinel_master(spec, conn)
            replicas = tuple(
                m.endpoint for m in conn.of(DATA_COMPONENT) if not live.same_node(m.endpoint, master)
            )
            return dump.LoadTarget((master,), hold_failover=hold, replicas=replicas)
        if spec.topology != Topology.CLUSTER:
            return dump.LoadTarget((_by_ordinal(conn.of(DATA_COMPONENT))[0].endpoint,))
        view = self._cluster_view(spec, conn)
        masters = [n for n in view.masters if n.endpoint is not None]
        unhealthy = [n for n in masters if not n.healthy]
        if unhealthy:
            raise NotReady(f"{spec.name}: master {unhealthy[0].endpoint} is not healthy")
        owner = [0] * cluster.SLOTS
        for index, node in enumerate(masters):
            for first, last in node.slots:
                owner[first : last + 1] = [index] * (last - first + 1)
        return dump.LoadTarget(tuple(n.endpoint for n in masters if n.endpoint is not None), tuple(owner))


@contextlib.contextmanager
def _failover_held(
    sentinels: list[Endpoint], master_name: str, sentinel_password: str | None, seconds: float
) -> Iterator[None]:
    """Sentinels hold failovers while the master loads by replication; if they cannot, it loads
    key by key instead."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(sentinel.failover_held(sentinels, master_name, sentinel_password, seconds))
        except sentinel.HoldRefused as why:
            raise Unavailable(str(why)) from None
        yield


def _by_ordinal(members: list[Member]) -> list[Member]:
    return sorted(members, key=lambda m: m.plan.ordinal)


def _endpoints(members: list[Member]) -> list[Endpoint]:
    return [m.endpoint for m in members]


ENGINE = RedisEngine()


def _first(endpoints: Mapping[str, str], key: str) -> str:
    """One address of a named endpoint (a comma list for some); a clear error when not observed."""
    value = endpoints.get(key, "").split(",")[0]
    if not value:
        raise NotReady(f"no {key} endpoint observed yet (is it Ready?)")
    return value
