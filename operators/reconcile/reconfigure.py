"""Parameter changes on Kubernetes: the ConfigMap is re-rendered by the apply (members read it at
their next start) and ``middleware.provisioning``'s step has the engine apply the live ones to the
running members; here what it did becomes Events, and what only takes effect after a restart the
``PendingRestart`` condition (which the operator then rolls out), not dropped."""

from __future__ import annotations

import kopf

from middleware.models.middleware import MiddlewareStatus
from middleware.provisioning import Converged
from operators.reconcile import events
from operators.reconcile import status as st


def report(body: kopf.Body, status: MiddlewareStatus, converged: Converged) -> None:
    if converged.reconfigured.applied_live:
        # Names only: values could be anything a user put there; the spec holds them anyway.
        names = ", ".join(sorted(converged.reconfigured.applied_live))
        events.normal(body, reason="Reconfigured", message=f"applied live to every member: {names}")
    pending = converged.pending_restart
    if pending:
        message = f"{', '.join(pending)} take effect when the members restart with the re-rendered ConfigMap"
        if st.pending_restart(status, message):
            events.normal(body, reason="PendingRestart", message=message)
