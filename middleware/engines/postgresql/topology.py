"""Which members a PostgreSQL spec asks for, named as their Kubernetes pods are.

One StatefulSet ``NAME``; ordinal 0 is the first primary only (after a switchover or failover any
member may be the primary). Replicas are cloned from the primary, so they start in a second wave.
"""

from __future__ import annotations

from middleware.engines.base import MemberPlan
from middleware.spec import ResolvedSpec

DATA_COMPONENT = "data"


def workload(name: str) -> str:
    return name


def headless_service(name: str) -> str:
    return f"{name}-headless"


def rw_service(name: str) -> str:
    return f"{name}-rw"


def ro_service(name: str) -> str:
    return f"{name}-ro"


def plan_members(spec: ResolvedSpec) -> list[MemberPlan]:
    name = workload(spec.name)
    return [
        MemberPlan(name=f"{name}-{ordinal}", component=DATA_COMPONENT, workload=name, ordinal=ordinal)
        for ordinal in range(spec.replicas)
    ]


def start_waves(spec: ResolvedSpec) -> list[list[MemberPlan]]:
    members = plan_members(spec)
    waves = [members[:1], members[1:]]
    return [wave for wave in waves if wave]
