"""Changes refused before anything is touched, the same on both runtimes (middleware.spec.check_change)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.catalog import load_default_catalog
from middleware.engines.registry import get_engine
from middleware.errors import SpecError
from middleware.spec import ResolvedSpec, check_change, load_middleware, resolve


def _spec(engine: str = "postgresql", topology: str = "replication", **spec: Any) -> ResolvedSpec:
    document = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"engine": engine, "topology": topology, **spec},
    }
    return resolve(load_middleware(document), load_default_catalog())


def _check(old: ResolvedSpec, new: ResolvedSpec) -> None:
    check_change(old, new, get_engine(new.engine))


def test_the_topology_is_immutable() -> None:
    with pytest.raises(SpecError, match=r"spec\.topology: cannot change from 'replication' to 'standalone'"):
        _check(_spec(replicas=2), _spec(topology="standalone"))


@pytest.mark.parametrize(
    "name,low",
    [("max_connections", "150"), ("max_wal_senders", "5")],
)
def test_lowering_a_hot_standby_setting_with_standbys_is_refused_naming_it(name: str, low: str) -> None:
    with pytest.raises(SpecError) as refused:
        _check(_spec(replicas=3), _spec(replicas=3, parameters={name: low}))
    assert refused.value.field == f"spec.parameters.{name}"
    assert "lowering from" in refused.value.reason and "primary" in refused.value.reason


def test_raising_it_or_lowering_it_without_standbys_is_allowed() -> None:
    _check(_spec(replicas=3), _spec(replicas=3, parameters={"max_connections": "250"}))
    _check(_spec(topology="standalone"), _spec(topology="standalone", parameters={"max_connections": "150"}))
    # Other restart-only settings may go down: no standby constraint.
    _check(
        _spec(replicas=3, parameters={"shared_buffers": "256MB"}),
        _spec(replicas=3, parameters={"shared_buffers": "128MB"}),
    )


def test_other_engines_have_no_such_rule() -> None:
    _check(_spec("redis", "sentinel", replicas=3), _spec("redis", "sentinel", replicas=2))
