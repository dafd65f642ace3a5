"""The rolling-restart order both runtimes follow (``middleware.rolling.next_step``)."""

from __future__ import annotations

import pytest

from middleware.rolling import MemberState, StepKind, next_step


def pg(restarted: set[str], primary: str = "db-0", down: frozenset[str] = frozenset()) -> list[MemberState]:
    return [
        MemberState(name, "primary" if name == primary else "replica", name not in down, name in restarted)
        for name in ("db-0", "db-1", "db-2")
    ]


def test_replicas_first_highest_ordinal_first_then_a_switchover_then_the_old_primary() -> None:
    steps = []
    restarted: set[str] = set()
    primary = "db-0"
    for _ in range(10):
        step = next_step(pg(restarted, primary), healthy=True)
        steps.append((step.kind, step.member))
        if step.kind == StepKind.DONE:
            break
        if step.kind == StepKind.RESTART:
            assert step.member is not None
            restarted.add(step.member)
        if step.kind == StepKind.SWITCHOVER:
            primary = "db-2"  # the engine promoted a restarted replica
    assert steps == [
        (StepKind.RESTART, "db-2"),
        (StepKind.RESTART, "db-1"),
        (StepKind.SWITCHOVER, "db-0"),
        (StepKind.RESTART, "db-0"),
        (StepKind.DONE, None),
    ]


@pytest.mark.parametrize(
    ("members", "healthy", "reason"),
    [
        (pg({"db-2"}, down=frozenset({"db-2"})), True, "waiting for db-2 to be up"),
        (pg({"db-2"}), False, "healthy again"),
    ],
)
def test_nothing_is_restarted_while_a_member_is_down_or_the_deployment_unhealthy(
    members: list[MemberState], healthy: bool, reason: str
) -> None:
    step = next_step(members, healthy)
    assert step.kind == StepKind.WAIT and reason in step.reason


def test_a_sharded_master_is_switched_over_to_a_restarted_replica_of_its_own_shard() -> None:
    members = [
        MemberState("c-shard-0-0", "master", True, False, shard=0),
        MemberState("c-shard-0-1", "replica", True, True, shard=0),
        MemberState("c-shard-1-0", "master", True, True, shard=1),
        MemberState("c-shard-1-1", "replica", True, True, shard=1),
    ]
    step = next_step(members, healthy=True)
    assert (step.kind, step.member, step.target) == (StepKind.SWITCHOVER, "c-shard-0-0", "c-shard-0-1")


def test_sentinels_and_followers_before_the_leader_and_ordinals_compared_as_numbers() -> None:
    members = [
        MemberState("z-0", "leader", True, False),
        MemberState("z-9", "follower", True, True),
        MemberState("z-10", "follower", True, False),
    ]
    assert next_step(members, healthy=True).member == "z-10"


def test_an_unhealthy_member_not_restarted_yet_is_restarted_instead_of_waited_for() -> None:
    # The fenced old primary came back in its old pod as a standby that cannot replay (old settings).
    members = [
        MemberState("db-0", "replica", True, False, healthy=False),
        MemberState("db-1", "replica", True, True),
        MemberState("db-2", "primary", True, True),
    ]
    step = next_step(members, healthy=False)
    assert (step.kind, step.member) == (StepKind.RESTART, "db-0")
    # One already restarted that is unhealthy is waited for: restarting it again would not help.
    again = [MemberState(m.name, m.role, m.up, True, healthy=m.healthy) for m in members]
    assert next_step(again, healthy=False).kind == StepKind.WAIT
