"""Every file in examples/ is what its kind's model accepts, and the catalog override merges."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.catalog.catalog import load_default_catalog, merge_catalogs
from middleware.models import ALL_RESOURCES, GROUP, Middleware
from middleware.spec import resolve
from tests.example_files import EXAMPLES, documents

MODELS = {resource.KIND: resource for resource in ALL_RESOURCES}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in documents(path.name)
        if doc["apiVersion"].startswith(f"{GROUP}/")
    ]


@pytest.mark.parametrize(("name", "doc"), _documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_is_valid_for_its_model(name: str, doc: dict[str, Any]) -> None:
    model = MODELS[doc["kind"]].model_validate(doc)
    assert model.to_wire()["spec"], name


def test_middleware_examples_resolve_against_the_default_catalog() -> None:
    catalog = load_default_catalog()
    resolved = [
        resolve(Middleware.model_validate(doc), catalog)
        for _, doc in _documents()
        if doc["kind"] == "Middleware"
    ]
    assert {r.engine for r in resolved} == {"redis", "postgresql", "mongodb", "zookeeper"}


def test_the_catalog_override_example_merges_with_its_images_and_narrower_range() -> None:
    override = next(doc for name, doc in _documents() if name == "catalog-override.yaml")
    merged = merge_catalogs([override])
    redis = merged.engine("redis")
    assert [v.version for v in redis.versions] == ["7.0"]
    assert redis.version("7.0").image.startswith("registry.corp.example/")
    assert redis.parameter("maxclients").maximum == 5000
    assert merged.engine("postgresql").version("18").image == "registry.corp.example/pgvector:pg18"
