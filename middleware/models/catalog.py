"""The ``MiddlewareCatalog`` resource: engines as data (versions, topologies, plans, parameters).

Adding an engine to Moorage is mostly a catalog entry plus one engine package; the default catalog
ships in ``middleware/catalog/default.yaml`` and a cluster admin can override parts of it (for
instance images from a private registry) with a MiddlewareCatalog object.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from middleware.models.common import (
    CustomResource,
    ObjectMeta,
    ResourceStatus,
    WireModel,
)
from middleware.models.middleware import EngineName, Topology


class ParameterType(StrEnum):
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    STRING = "string"
    ENUM = "enum"
    BYTES = "bytes"


class ParameterDefinition(WireModel):
    name: str
    type: ParameterType
    minimum: float | None = Field(default=None, description="integer/number/bytes: inclusive lower bound.")
    maximum: float | None = Field(default=None, description="integer/number/bytes: inclusive upper bound.")
    values: list[str] | None = Field(default=None, description="enum: the allowed values.")
    pattern: str | None = Field(default=None, description="string: a regular expression to match.")
    default: str | None = Field(
        default=None, description="Written into the config when the user sets nothing."
    )
    dynamic: bool = Field(description="True: applied live; False: needs a restart of the members.")
    description: str = ""
    topologies: list[Topology] | None = Field(
        default=None, description="Only valid for these topologies (all when unset)."
    )

    @model_validator(mode="after")
    def _shape(self) -> ParameterDefinition:
        if self.type == ParameterType.ENUM and not self.values:
            raise ValueError(f"parameter {self.name}: enum needs values")
        return self


class VersionEntry(WireModel):
    version: str
    image: str
    default: bool = False
    deprecated: bool = False


class TopologyEntry(WireModel):
    name: Topology
    default_replicas: int = Field(ge=1)
    min_replicas: int = Field(default=1, ge=1)
    default_shards: int | None = None
    min_shards: int | None = None
    default_sentinels: int | None = None
    components: list[str] = Field(
        description="Components in start order, e.g. [data, sentinel]: the data members come first."
    )


class PlanEntry(WireModel):
    name: str
    cpu: str
    memory: str
    storage: str


class EngineEntry(WireModel):
    name: EngineName
    description: str = ""
    versions: list[VersionEntry]
    exporter_image: str | None = Field(
        default=None,
        description=(
            "The image of the members' Prometheus exporter sidecar, run with its own entrypoint "
            "(unset: no exporter in pods)."
        ),
    )
    topologies: list[TopologyEntry]
    plans: list[PlanEntry]
    default_plan: str = "small"
    parameters: list[ParameterDefinition] = Field(default_factory=list)
    boolean_format: tuple[str, str] = Field(
        default=("yes", "no"), description="How this engine spells true and false in its config."
    )

    @model_validator(mode="after")
    def _consistent(self) -> EngineEntry:
        defaults = [v for v in self.versions if v.default]
        if len(defaults) != 1:
            raise ValueError(f"engine {self.name}: exactly one version must be the default")
        if self.default_plan not in {p.name for p in self.plans}:
            raise ValueError(f"engine {self.name}: default plan {self.default_plan!r} is not a plan")
        return self

    def version(self, version: str | None) -> VersionEntry | None:
        if version is None:
            return next(v for v in self.versions if v.default)
        return next((v for v in self.versions if v.version == version), None)

    def topology(self, name: str) -> TopologyEntry | None:
        return next((t for t in self.topologies if t.name == name), None)

    def plan(self, name: str) -> PlanEntry | None:
        return next((p for p in self.plans if p.name == name), None)

    def parameter(self, name: str) -> ParameterDefinition | None:
        return next((p for p in self.parameters if p.name == name), None)


class ImageOverride(WireModel):
    engine: EngineName
    version: str
    image: str


class ExporterImageOverride(WireModel):
    engine: EngineName
    image: str


class MiddlewareCatalogSpec(WireModel):
    engines: list[EngineEntry] = Field(
        default_factory=list, description="Full engine entries; replace the default entry of that engine."
    )
    images: list[ImageOverride] = Field(
        default_factory=list, description="Image overrides (e.g. a private registry) for known versions."
    )
    exporter_images: list[ExporterImageOverride] = Field(
        default_factory=list, description="Exporter image overrides, per engine."
    )


class MiddlewareCatalog(CustomResource):
    KIND: ClassVar[str] = "MiddlewareCatalog"
    PLURAL: ClassVar[str] = "middlewarecatalogs"
    SHORT_NAMES: ClassVar[list[str]] = ["mwcat"]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Cluster"
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Phase", "string", ".status.phase", "Accepted or Invalid"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["MiddlewareCatalog"] = "MiddlewareCatalog"
    metadata: ObjectMeta
    spec: MiddlewareCatalogSpec
    status: ResourceStatus | None = None
