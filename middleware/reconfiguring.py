"""Parameter changes, once for every runtime (KubeBlocks' Reconfigure).

The engine applies the live ones to the running members; those that take effect only after a
restart, and removed ones (the engine's default comes back with the re-rendered config at the next
start), are reported in ``needs_restart``. Each runtime then rolls them out by a rolling restart
(``middleware.restarting``): the CLI at once, the operator through its ``PendingRestart`` condition
and a restart request. The ``ConfigPort`` makes a restart pick the new values up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from middleware.engines.base import Connection, Engine, ReconfigureReport
from middleware.spec import ResolvedSpec


@dataclass(frozen=True)
class ParameterChange:
    changed: dict[str, str]  # set to a new value
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


def parameter_change(old: Mapping[str, str], new: Mapping[str, str]) -> ParameterChange:
    return ParameterChange(
        changed={k: v for k, v in new.items() if old.get(k) != v},
        removed=sorted(set(old) - set(new)),
    )


class ConfigPort(Protocol):
    def update_config(self, spec: ResolvedSpec, engine: Engine, directives: dict[str, str]) -> None:
        """Make the members' next start use ``directives`` (the local runtime rewrites their config
        files; on Kubernetes the re-rendered ConfigMap already holds them)."""
        ...


def reconfigure(
    port: ConfigPort, spec: ResolvedSpec, engine: Engine, conn: Connection, change: ParameterChange
) -> ReconfigureReport:
    report = engine.reconfigure(spec, conn, change.changed) if change.changed else ReconfigureReport()
    if change.changed:
        port.update_config(spec, engine, change.changed)
    for name in change.removed:
        # Still running with the old value: the default returns only with a restart.
        report.needs_restart.setdefault(name, "")
    return report
