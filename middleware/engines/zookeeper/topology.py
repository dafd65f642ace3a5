"""Which members a ZooKeeper spec asks for, named as their Kubernetes pods are.

One StatefulSet, one member per ordinal. A member's server id (``myid``) is its ordinal + 1:
ZooKeeper reserves 0 on some code paths, and ids must never be reused for a different member while
the old one may still be in the ensemble's configuration, which a fixed ordinal → id mapping gives.
"""

from __future__ import annotations

from middleware.engines.base import MemberPlan
from middleware.spec import ResolvedSpec

DATA_COMPONENT = "data"
# Port names as the runtimes know them (MemberPlan.ports); Kubernetes uses 2181/2888/3888.
CLIENT_PORT_NAME = "PORT"
PEER_PORT_NAME = "PEER_PORT"
ELECTION_PORT_NAME = "ELECTION_PORT"
PORT_NAMES = (CLIENT_PORT_NAME, PEER_PORT_NAME, ELECTION_PORT_NAME)


def workload(name: str) -> str:
    return name


def headless_service(name: str) -> str:
    return f"{name}-headless"


def client_service(name: str) -> str:
    return name


def server_id(member: MemberPlan) -> int:
    return member.ordinal + 1


def member_name(name: str, ordinal: int) -> str:
    return f"{workload(name)}-{ordinal}"


def plan_members(spec: ResolvedSpec) -> list[MemberPlan]:
    return [
        MemberPlan(
            name=member_name(spec.name, ordinal),
            component=DATA_COMPONENT,
            workload=workload(spec.name),
            ordinal=ordinal,
            ports=PORT_NAMES,
        )
        for ordinal in range(spec.replicas)
    ]
