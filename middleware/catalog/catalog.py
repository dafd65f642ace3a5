"""Loading the default catalog and layering a cluster admin's ``MiddlewareCatalog`` over it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import yaml

from middleware.errors import SpecError
from middleware.models.catalog import EngineEntry, MiddlewareCatalogSpec
from middleware.models.middleware import EngineName


class Catalog:
    """An immutable view of engine entries, keyed by engine name."""

    def __init__(self, spec: MiddlewareCatalogSpec) -> None:
        self._engines: dict[str, EngineEntry] = {str(e.name): e for e in spec.engines}
        self.spec = spec

    @property
    def engines(self) -> list[EngineEntry]:
        return list(self._engines.values())

    def engine(self, name: str | EngineName) -> EngineEntry:
        try:
            return self._engines[str(name)]
        except KeyError:
            known = ", ".join(sorted(self._engines))
            raise SpecError("spec.engine", f"unknown engine {name!r} (catalog has: {known})") from None

    def with_overrides(self, override: MiddlewareCatalogSpec) -> Catalog:
        """A new catalog: whole engine entries replaced, then image overrides applied.

        An image override for a version the catalog does not know is an error, not a silent no-op:
        an admin who mistypes a version must hear about it.
        """
        merged = {name: entry.model_copy(deep=True) for name, entry in self._engines.items()}
        for entry in override.engines:
            merged[str(entry.name)] = entry.model_copy(deep=True)
        for index, image in enumerate(override.images):
            engine = merged.get(str(image.engine))
            version = engine.version(image.version) if engine else None
            if engine is None or version is None:
                raise SpecError(
                    f"spec.images[{index}]",
                    f"no version {image.version!r} of engine {image.engine!r} in the catalog",
                )
            version.image = image.image
        for index, exporter in enumerate(override.exporter_images):
            engine = merged.get(str(exporter.engine))
            if engine is None:
                raise SpecError(
                    f"spec.exporterImages[{index}]", f"no engine {exporter.engine!r} in the catalog"
                )
            engine.exporter_image = exporter.image
        return Catalog(MiddlewareCatalogSpec(engines=list(merged.values())))


def parse_catalog(document: dict[str, Any]) -> MiddlewareCatalogSpec:
    return MiddlewareCatalogSpec.model_validate(document)


@cache
def load_default_catalog() -> Catalog:
    text = resources.files("middleware.catalog").joinpath("default.yaml").read_text(encoding="utf-8")
    return Catalog(parse_catalog(yaml.safe_load(text)))


def merge_catalogs(documents: Iterable[Mapping[str, Any]], base: Catalog | None = None) -> Catalog:
    """``base`` (the default catalog) with every ``MiddlewareCatalog`` document layered on top in
    name order, so the result does not depend on listing order. Errors name the catalog object."""
    merged = base or load_default_catalog()
    for document in sorted(documents, key=lambda d: d["metadata"]["name"]):
        name = document["metadata"]["name"]
        try:
            merged = merged.with_overrides(parse_catalog(dict(document.get("spec") or {})))
        except SpecError as exc:
            raise SpecError(f"MiddlewareCatalog {name} {exc.field}", exc.reason) from None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise SpecError(f"MiddlewareCatalog {name}", str(exc).splitlines()[0]) from None
    return merged
