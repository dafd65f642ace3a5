"""What the observe timer reads from the cluster: why a member's pod is not becoming ready
(operators.reconcile.observe.pod_problem), and whether a change is still in flight."""

from __future__ import annotations

import json
from typing import Any

import pytest

from operators.reconcile import observe
from operators.reconcile.observe import pod_problem


def _pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "db-0"}, "status": status}


def test_a_starting_pod_has_no_problem() -> None:
    starting = _pod(
        containerStatuses=[{"name": "redis", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    )
    assert pod_problem(starting) is None
    assert pod_problem(_pod()) is None


def test_unschedulable_says_why() -> None:
    pod = _pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
            }
        ]
    )
    assert pod_problem(pod) == "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."


def test_crash_loop_names_the_container_and_its_last_log_line() -> None:
    pod = _pod(
        containerStatuses=[
            {
                "name": "postgresql",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "message": "starting\nFATAL:  data directory has wrong ownership\n",
                    }
                },
            }
        ]
    )
    assert pod_problem(pod) == (
        "container postgresql: CrashLoopBackOff "
        "(exit 1; last log line: FATAL:  data directory has wrong ownership)"
    )


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff"])
def test_missing_image_in_an_init_container(reason: str) -> None:
    pod = _pod(
        initContainerStatuses=[
            {
                "name": "config",
                "state": {
                    "waiting": {
                        "reason": reason,
                        "message": 'image "localhost/moorage/redis:7.0" is not present',
                    }
                },
            }
        ]
    )
    assert (
        pod_problem(pod) == f'container config: {reason}: image "localhost/moorage/redis:7.0" is not present'
    )


def test_bootstrap_gate_is_ready_or_started_per_engine() -> None:
    from middleware.engines.registry import get_engine
    from middleware.runtime.kubernetes import member_up

    running = {
        "status": {
            "containerStatuses": [
                {"name": "mongod", "started": True, "ready": False, "state": {"running": {}}}
            ]
        }
    }
    ready = {
        "status": {
            "containerStatuses": [
                {"name": "redis", "started": True, "ready": True, "state": {"running": {}}}
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    # MongoDB's readiness needs the replica set that its bootstrap initiates: started is enough.
    assert member_up(get_engine("mongodb"), running)
    assert not member_up(get_engine("redis"), running)
    assert member_up(get_engine("redis"), ready)
    assert not member_up(
        get_engine("mongodb"),
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": "mongod",
                        "started": False,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ]
            }
        },
    )


# ---------------------------------------------------------------- the timer and an in-flight change


def _body(spec: dict, applied: dict | None) -> dict:
    annotations = {} if applied is None else {"moorage.io/applied-spec": json.dumps(applied, sort_keys=True)}
    return {"metadata": {"name": "orders", "annotations": annotations}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "applied", "in_flight"),
    [
        ({"engine": "redis", "shards": 4}, {"engine": "redis", "shards": 3}, True),
        ({"engine": "redis", "shards": 3}, {"shards": 3, "engine": "redis"}, False),
        ({"engine": "redis", "shards": 3}, None, False),
        (
            {"engine": "redis", "parameters": {"maxmemory": "1gb"}},
            {"engine": "redis", "parameters": {}},
            True,
        ),
    ],
)
def test_the_timer_leaves_phase_to_an_unfinished_change(
    spec: dict, applied: dict | None, in_flight: bool
) -> None:
    assert observe._change_in_flight(_body(spec, applied)) is in_flight
