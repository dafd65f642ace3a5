"""The default catalog as data, parameter checking, and spec resolution (pure, no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.catalog import load_default_catalog, validate_parameters
from middleware.catalog.catalog import parse_catalog
from middleware.errors import SpecError
from middleware.models.catalog import MiddlewareCatalogSpec
from middleware.models.middleware import ENGINE_TOPOLOGIES, EngineName
from middleware.spec import load_middleware, resolve


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": spec.pop("name", "cache"), "namespace": "team-a"},
        "spec": {"engine": "redis", "topology": "cluster", **spec},
    }


@pytest.mark.parametrize("engine", list(EngineName))
def test_every_engine_is_in_the_default_catalog_with_its_topologies(engine: EngineName) -> None:
    entry = load_default_catalog().engine(engine)
    assert {t.name for t in entry.topologies} == set(ENGINE_TOPOLOGIES[engine])
    assert {p.name for p in entry.plans} == {"small", "medium", "large"}
    assert entry.parameters, f"{engine} has no typed parameters"
    for topology in entry.topologies:
        # Every default must pass its own definition (validate_parameters checks defaults too).
        defaults = validate_parameters(entry, str(topology.name), {}, with_defaults=True)
        assert set(defaults) <= {p.name for p in entry.parameters}


@pytest.mark.parametrize(
    ("parameters", "field", "reason_part"),
    [
        ({"maxclients": 5}, "spec.parameters.maxclients", "integer >= 16 and <= 100000"),
        ({"maxclients": "many"}, "spec.parameters.maxclients", "integer"),
        ({"maxclients": 1.5}, "spec.parameters.maxclients", "integer"),
        ({"maxmemory-policy": "lru"}, "spec.parameters.maxmemory-policy", "one of noeviction, allkeys-lru"),
        ({"appendonly": "maybe"}, "spec.parameters.appendonly", "true or false"),
        ({"maxmemory": "lots"}, "spec.parameters.maxmemory", "size in bytes"),
        ({"save": "every minute"}, "spec.parameters.save", "matching"),
        (
            {"no-such-thing": 1},
            "spec.parameters.no-such-thing",
            "unknown parameter for redis (known: appendfsync",
        ),
        ({"databases": 4}, "spec.parameters.databases", "only valid for topology standalone, sentinel"),
    ],
)
def test_invalid_parameters_name_the_parameter_and_the_allowed_values(
    parameters: dict[str, Any], field: str, reason_part: str
) -> None:
    with pytest.raises(SpecError) as caught:
        resolve(load_middleware(manifest(parameters=parameters)))
    assert caught.value.field == field
    assert reason_part in caught.value.reason


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"appendonly": False}, "no"),
        ({"appendonly": "true"}, "yes"),
        ({"maxmemory": "100mb"}, "100mb"),
        ({"maxmemory": 1048576}, "1048576"),
        ({"maxclients": "20000"}, "20000"),
        ({"maxmemory-policy": "allkeys-lfu"}, "allkeys-lfu"),
    ],
)
def test_valid_parameters_are_normalized_to_the_engine_spelling(given: dict[str, Any], expected: str) -> None:
    spec = resolve(load_middleware(manifest(parameters=given)))
    assert spec.parameters[next(iter(given))] == expected


def test_defaults_come_from_the_catalog_and_respect_topology() -> None:
    cluster = resolve(load_middleware(manifest()))
    assert (cluster.shards, cluster.replicas, cluster.sentinels) == (3, 2, 0)
    assert cluster.parameters["cluster-node-timeout"] == "5000"
    assert "databases" not in cluster.parameters  # cluster mode has database 0 only
    sentinel = resolve(load_middleware(manifest(topology="sentinel")))
    assert (sentinel.shards, sentinel.replicas, sentinel.sentinels) == (1, 3, 3)
    assert "cluster-node-timeout" not in sentinel.parameters
    assert sentinel.resources.cpu_limit == sentinel.resources.cpu == "250m"  # Guaranteed QoS
    assert sentinel.image == "docker.io/library/redis:7.0.15"


@pytest.mark.parametrize(
    ("spec", "field", "reason_part"),
    [
        ({"topology": "ensemble"}, "spec", "does not suit engine 'redis'"),
        ({"topology": "sentinel", "shards": 3}, "spec", "shards is only valid for topology 'cluster'"),
        ({"shards": 2}, "spec.shards", "at least 3"),
        ({"shards": 100}, "spec.shards", "less than or equal to 64"),
        ({"version": "6.2"}, "spec.version", "unknown version '6.2' of redis (catalog has: 7.0, 7.2)"),
        ({"plan": "huge"}, "spec.plan", "unknown plan 'huge'"),
        ({"replicas": 0}, "spec.replicas", "greater than or equal to 1"),
        ({"topology": "standalone", "replicas": 2}, "spec", "replicas must be 1"),
        ({"resources": {"cpu": "lots", "memory": "1Gi"}}, "spec.resources.cpu", "not a Kubernetes quantity"),
        ({"deletionPolicy": "Maybe"}, "spec.deletionPolicy", "Retain"),
        ({"unknownField": 1}, "spec.unknownField", "Extra inputs are not permitted"),
        ({"name": "Bad_Name"}, "metadata.name", "RFC 1035"),
        ({"name": "x" * 41}, "metadata.name", "longer than 40"),
    ],
)
def test_invalid_specs_are_rejected_with_the_field_and_the_reason(
    spec: dict[str, Any], field: str, reason_part: str
) -> None:
    with pytest.raises(SpecError) as caught:
        resolve(load_middleware(manifest(**spec)))
    assert caught.value.field == field
    assert reason_part in caught.value.reason


def test_catalog_overrides_replace_images_and_reject_unknown_versions() -> None:
    base = load_default_catalog()
    override = MiddlewareCatalogSpec.model_validate(
        {"images": [{"engine": "redis", "version": "7.0", "image": "registry.corp/redis:7.0.15"}]}
    )
    merged = base.with_overrides(override)
    assert resolve(load_middleware(manifest()), merged).image == "registry.corp/redis:7.0.15"
    # The shared default catalog is untouched by an override.
    assert resolve(load_middleware(manifest()), base).image == "docker.io/library/redis:7.0.15"
    bad = MiddlewareCatalogSpec.model_validate(
        {"images": [{"engine": "redis", "version": "9.9", "image": "registry.corp/redis:9"}]}
    )
    with pytest.raises(SpecError, match=r"spec.images\[0\]: no version '9.9' of engine 'redis'"):
        base.with_overrides(bad)


def test_a_catalog_engine_needs_exactly_one_default_version() -> None:
    document = load_default_catalog().spec.to_wire()
    document["engines"][0]["versions"][1]["default"] = True
    with pytest.raises(ValueError, match="exactly one version must be the default"):
        parse_catalog(document)
