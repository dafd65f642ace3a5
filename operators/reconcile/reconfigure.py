"""Parameter changes: the ConfigMap is re-rendered by the apply (members read it at their next
start); here the engine applies the live ones to the running members, and those that only take
effect after a restart are reported in the ``PendingRestart`` condition and an Event, not dropped."""

from __future__ import annotations

from collections.abc import Mapping

import kopf

from middleware.engines.base import Connection, Engine, ReconfigureReport
from middleware.models.middleware import MiddlewareStatus
from middleware.spec import ResolvedSpec
from operators.reconcile import events
from operators.reconcile import status as st


def changed_parameters(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """Parameters set to a new value. A removed one keeps its running value until a restart (the
    engine's default then comes from the re-rendered config), so it is reported with the restart."""
    return {k: v for k, v in new.items() if old.get(k) != v}


def apply(
    body: kopf.Body,
    status: MiddlewareStatus,
    spec: ResolvedSpec,
    engine: Engine,
    conn: Connection,
    changed: dict[str, str],
    removed: list[str],
) -> ReconfigureReport:
    report = engine.reconfigure(spec, conn, changed) if changed else ReconfigureReport()
    if report.applied_live:
        # Names only: values could be anything a user put there; the spec holds them anyway.
        names = ", ".join(sorted(report.applied_live))
        events.normal(body, reason="Reconfigured", message=f"applied live to every member: {names}")
    pending = sorted({*report.needs_restart, *removed})
    if pending:
        message = f"{', '.join(pending)} take effect when the members restart with the re-rendered ConfigMap"
        if st.pending_restart(status, message):
            events.normal(body, reason="PendingRestart", message=message)
    return report
