"""The Prometheus Operator's PodMonitor CRD, reduced to what an API server needs to serve the kind:
installed by the tests that check the operator renders a PodMonitor where the kind exists."""

from __future__ import annotations

from typing import Any

POD_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "podmonitors",
            "singular": "podmonitor",
            "kind": "PodMonitor",
            "listKind": "PodMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}
