"""Status conditions semantics and config template filling (pure)."""

from __future__ import annotations

import pytest

from middleware.engines.base import PLACEHOLDERS
from middleware.engines.registry import get_engine
from middleware.errors import OperationError
from middleware.models.common import ConditionStatus, ResourceStatus
from middleware.runtime.local import fill_placeholders
from middleware.spec import load_middleware, resolve


def test_condition_transition_time_is_kept_unless_the_status_flips() -> None:
    status = ResourceStatus(observed_generation=3)
    assert status.set_condition("Ready", False, "Starting", "members starting")
    first = status.condition("Ready")
    assert first is not None and first.observed_generation == 3
    # Same status, new reason: updated, but the transition time stays.
    first.last_transition_time = "2026-01-01T00:00:00Z"
    assert status.set_condition("Ready", False, "Bootstrapping")
    second = status.condition("Ready")
    assert second is not None
    assert (second.reason, second.last_transition_time) == ("Bootstrapping", "2026-01-01T00:00:00Z")
    # Nothing changed: reported as no change.
    assert not status.set_condition("Ready", False, "Bootstrapping")
    # The status flips: a new transition time.
    assert status.set_condition("Ready", True, "ClusterOK")
    third = status.condition("Ready")
    assert third is not None and third.status == ConditionStatus.TRUE
    assert third.last_transition_time != "2026-01-01T00:00:00Z"
    assert [c.type for c in status.conditions] == ["Ready"]


def test_fill_placeholders_replaces_only_our_placeholders() -> None:
    template = "port ${PORT}\nnotify-keyspace-events Kg$x\ndir ${DATA_DIR}\n"
    assert fill_placeholders(template, {"PORT": "7000", "DATA_DIR": "/d"}) == (
        "port 7000\nnotify-keyspace-events Kg$x\ndir /d\n"
    )
    with pytest.raises(OperationError, match=r"unfilled placeholder \$\{DATA_DIR\}"):
        fill_placeholders(template, {"PORT": "7000"})


@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
def test_every_template_placeholder_is_one_the_runtimes_know(topology: str) -> None:
    spec = resolve(
        load_middleware(
            {
                "apiVersion": "moorage.io/v1alpha1",
                "kind": "Middleware",
                "metadata": {"name": "cache"},
                "spec": {"engine": "redis", "topology": topology},
            }
        )
    )
    values = {name: "x" for name in PLACEHOLDERS}
    for name, template in get_engine("redis").config_templates(spec).items():
        filled = fill_placeholders(template, values)
        assert "${" not in filled, name
        assert "requirepass" not in template, f"{name}: secrets must come from the included file"
