"""Parameter changes on Kubernetes: ``middleware.reconfiguring`` with the kopf glue. The ConfigMap is
re-rendered by the apply (members read it at their next start); the engine applies the live ones to
the running members, and those that only take effect after a restart are reported in the
``PendingRestart`` condition and an Event, not dropped (the operator then asks for a rolling
restart, see ``operation.request_rollout``)."""

from __future__ import annotations

import kopf

from middleware.engines.base import Connection, Engine, ReconfigureReport
from middleware.models.middleware import MiddlewareStatus
from middleware.reconfiguring import ParameterChange, reconfigure
from middleware.spec import ResolvedSpec
from operators.reconcile import events
from operators.reconcile import status as st


class RenderedConfig:
    """``middleware.reconfiguring.ConfigPort`` on Kubernetes: the apply already re-rendered the
    ConfigMap the members start from, so there is nothing left to write."""

    def update_config(self, spec: ResolvedSpec, engine: Engine, directives: dict[str, str]) -> None:
        return None


def apply(
    body: kopf.Body,
    status: MiddlewareStatus,
    spec: ResolvedSpec,
    engine: Engine,
    conn: Connection,
    change: ParameterChange,
) -> ReconfigureReport:
    report = reconfigure(RenderedConfig(), spec, engine, conn, change) if change else ReconfigureReport()
    if report.applied_live:
        # Names only: values could be anything a user put there; the spec holds them anyway.
        names = ", ".join(sorted(report.applied_live))
        events.normal(body, reason="Reconfigured", message=f"applied live to every member: {names}")
    pending = sorted(report.needs_restart)
    if pending:
        message = f"{', '.join(pending)} take effect when the members restart with the re-rendered ConfigMap"
        if st.pending_restart(status, message):
            events.normal(body, reason="PendingRestart", message=message)
    return report
