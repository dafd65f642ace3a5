"""Which members a Redis spec asks for, named as their Kubernetes pods are.

Topology facts are data here: per topology, the components in start order and how members map to
StatefulSets. Cluster: one StatefulSet per shard (ordinal 0 starts as the shard's master). Sentinel:
one data StatefulSet (ordinal 0 starts as master) and one sentinel StatefulSet, started after it.
"""

from __future__ import annotations

from middleware.engines.base import MemberPlan
from middleware.models.middleware import Topology
from middleware.spec import ResolvedSpec

SENTINEL_COMPONENT = "sentinel"
DATA_COMPONENT = "data"


def shard_workload(name: str, shard: int) -> str:
    return f"{name}-shard-{shard}"


def data_workload(name: str) -> str:
    return name


def sentinel_workload(name: str) -> str:
    return f"{name}-sentinel"


def headless_service(name: str, component: str = DATA_COMPONENT) -> str:
    return f"{name}-headless" if component == DATA_COMPONENT else f"{name}-{component}-headless"


def sentinel_master_name(spec: ResolvedSpec) -> str:
    # The name sentinels know the master by; clients (and redis-shake) use it too.
    return spec.name


def plan_members(spec: ResolvedSpec) -> list[MemberPlan]:
    members: list[MemberPlan] = []
    if spec.topology == Topology.CLUSTER:
        for shard in range(spec.shards):
            workload = shard_workload(spec.name, shard)
            members += [
                MemberPlan(
                    name=f"{workload}-{ordinal}",
                    component=DATA_COMPONENT,
                    workload=workload,
                    ordinal=ordinal,
                    shard=shard,
                    ports=("PORT", "BUS_PORT"),
                )
                for ordinal in range(spec.replicas)
            ]
        return members
    workload = data_workload(spec.name)
    members += [
        MemberPlan(name=f"{workload}-{ordinal}", component=DATA_COMPONENT, workload=workload, ordinal=ordinal)
        for ordinal in range(spec.replicas)
    ]
    if spec.topology == Topology.SENTINEL:
        workload = sentinel_workload(spec.name)
        members += [
            MemberPlan(
                name=f"{workload}-{ordinal}", component=SENTINEL_COMPONENT, workload=workload, ordinal=ordinal
            )
            for ordinal in range(spec.sentinels)
        ]
    return members
