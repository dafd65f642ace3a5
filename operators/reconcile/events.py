"""Kubernetes Events for the important steps. Posted with ``kopf.event`` directly: ``kopf.info`` obeys
the posting level, which is kept at WARNING so that handler log lines do not become Events."""

from __future__ import annotations

import kopf


def normal(body: kopf.Body, reason: str, message: str) -> None:
    kopf.event(body, type="Normal", reason=reason, message=message)


def warning(body: kopf.Body, reason: str, message: str) -> None:
    kopf.event(body, type="Warning", reason=reason, message=message)
