"""A MiddlewareCatalog's own status: whether it merges over the default catalog (``Accepted``) or
not (``Invalid``, with the field and the reason), so an admin sees a bad override on the object
itself (`kubectl get mwcat`) instead of in every Middleware decoded with it."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import ValidationError

from middleware.catalog import merge_catalogs
from middleware.errors import SpecError
from middleware.models.common import ResourceStatus

ACCEPTED, INVALID = "Accepted", "Invalid"


def review(body: Mapping[str, Any]) -> ResourceStatus:
    """The status ``body`` should have: pure, from the document alone."""
    try:
        status = ResourceStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        status = ResourceStatus()
    status.observed_generation = body["metadata"].get("generation")
    spec = dict(body.get("spec") or {})
    try:
        merged = merge_catalogs([{"metadata": {"name": body["metadata"]["name"]}, "spec": spec}])
    except SpecError as exc:
        status.phase, status.phase_reason = INVALID, "InvalidCatalog"
        status.set_condition("Accepted", False, "InvalidCatalog", str(exc))
        return status
    engines = ", ".join(sorted(str(e.get("name")) for e in spec.get("engines") or []))
    images = len(spec.get("images") or [])
    summary = f"{images} image override(s)" + (f"; engines replaced: {engines}" if engines else "")
    status.phase, status.phase_reason = ACCEPTED, "Merged"
    status.set_condition("Accepted", True, "Merged", f"{summary}; {len(merged.engines)} engines in all")
    return status


def write(patch: MutableMapping[str, Any], status: ResourceStatus) -> None:
    patch["status"] = status.to_wire()
