"""Which members a MongoDB spec asks for, named as their Kubernetes pods are.

One StatefulSet, one replica set member per ordinal. A member's replica set ``_id`` is not derived
from the ordinal: MongoDB assigns nothing itself, and Moorage picks ``max(_id) + 1`` when it adds a
member, so an ``_id`` is never reused while an old config that named it may still be around.
"""

from __future__ import annotations

from middleware.engines.base import MemberPlan
from middleware.spec import ResolvedSpec

DATA_COMPONENT = "data"
PORT_NAME = "PORT"
# MongoDB's limits: at most 7 voting members and 50 members in a replica set.
MAX_VOTERS = 7
MAX_MEMBERS = 50


def workload(name: str) -> str:
    return name


def headless_service(name: str) -> str:
    return f"{name}-headless"


def client_service(name: str) -> str:
    return name


def replica_set_name(name: str) -> str:
    # The Middleware name: unique in its namespace, a DNS label, so valid as a replSetName.
    return name


def member_name(name: str, ordinal: int) -> str:
    return f"{workload(name)}-{ordinal}"


def plan_members(spec: ResolvedSpec) -> list[MemberPlan]:
    return [
        MemberPlan(
            name=member_name(spec.name, ordinal),
            component=DATA_COMPONENT,
            workload=workload(spec.name),
            ordinal=ordinal,
            ports=(PORT_NAME,),
        )
        for ordinal in range(spec.replicas)
    ]
