"""Parameter changes (``middleware.reconfiguring``): what changed, and a removed parameter reported
for the restart. The engine side (live CONFIG SET / ALTER SYSTEM) runs on real servers in the
integration tests (`test_cli_redis`, `test_postgresql`) and on real pods in the e2e tier."""

from __future__ import annotations

from middleware.engines.base import Connection, Engine
from middleware.engines.registry import get_engine
from middleware.reconfiguring import ParameterChange, parameter_change, reconfigure
from middleware.spec import ResolvedSpec
from tests.unit.manifests import middleware_spec


def test_changed_and_removed_are_told_apart() -> None:
    change = parameter_change({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "20", "d": "4"})
    assert change == ParameterChange(changed={"b": "20", "d": "4"}, removed=["c"])
    assert change
    assert not parameter_change({"a": "1"}, {"a": "1"})


class NoConfigWrites:
    def update_config(self, spec: ResolvedSpec, engine: Engine, directives: dict[str, str]) -> None:
        raise AssertionError("nothing changed, so no config is written")


def test_a_removed_parameter_waits_for_a_restart_without_touching_the_members() -> None:
    """The running members keep the old value until they restart with the re-rendered config: the
    report asks for that restart, on either runtime."""
    spec = middleware_spec("cache", "shop", {"engine": "redis", "topology": "standalone"})
    conn = Connection([], None)  # no member is reached: nothing is applied live
    report = reconfigure(
        NoConfigWrites(), spec, get_engine("redis"), conn, parameter_change({"maxmemory": "1gb"}, {})
    )
    assert report.needs_restart == {"maxmemory": ""}
    assert report.applied_live == {}
