"""A MiddlewareCatalog's status says whether it merges over the default catalog (the example's
header promises `kubectl get mwcat corp` shows Accepted, or Invalid with the reason)."""

from __future__ import annotations

from operators.reconcile.catalog import ACCEPTED, INVALID, review
from tests.example_files import document


def test_the_example_override_is_accepted() -> None:
    body = document("catalog-override.yaml", "MiddlewareCatalog")
    body["metadata"]["generation"] = 3
    status = review(body)
    assert (status.phase, status.phase_reason, status.observed_generation) == (ACCEPTED, "Merged", 3)
    accepted = status.condition("Accepted")
    assert accepted is not None and accepted.status == "True"
    assert "2 image override(s); engines replaced: redis" in accepted.message


def test_an_override_of_an_unknown_version_is_invalid_with_the_field_and_reason() -> None:
    body = document("catalog-override.yaml", "MiddlewareCatalog")
    body["spec"]["images"] = [
        {"engine": "redis", "version": "6.2", "image": "registry.corp.example/redis:6.2"}
    ]
    body["spec"]["engines"] = []
    status = review(body)
    assert (status.phase, status.phase_reason) == (INVALID, "InvalidCatalog")
    refused = status.condition("Accepted")
    assert refused is not None and refused.status == "False"
    assert "MiddlewareCatalog corp" in refused.message and "6.2" in refused.message, refused.message
    # Fixed: accepted again, the condition flips.
    body["status"] = status.to_wire()
    body["spec"]["images"] = []
    again = review(body)
    assert again.phase == ACCEPTED and (again.condition("Accepted") or refused).status == "True"
