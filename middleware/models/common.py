"""Shared pieces of every custom resource: metadata, status shape, conditions, quantities.

Pydantic models here are the single source of truth for the CRDs in ``crds/`` (``make crds``).
Field names are snake_case in Python and camelCase on the wire, like Kubernetes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "moorage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Rendered objects append suffixes such as "-shard-12-headless" to the name; StatefulSet pod names must
# stay within 63 characters including the ordinal and controller-revision-hash label, so we cap here.
MAX_NAME_LENGTH = 40
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected (typos must not pass)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def validate_name(value: str, *, what: str = "name") -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} {value!r} is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must be lowercase letters, digits and '-', start with a letter "
            "and end with a letter or digit (RFC 1035 label)"
        )
    return value


def validate_quantity(value: str) -> str:
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 1Gi)")
    return value


_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def quantity_to_number(value: str) -> float:
    """Parse a Kubernetes quantity ("512Mi", "500m", "2") into a plain number (bytes or cores)."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix in _BINARY_SUFFIX:
        return number * _BINARY_SUFFIX[suffix]
    if suffix in _DECIMAL_SUFFIX:
        return number * _DECIMAL_SUFFIX[suffix]
    raise ValueError(f"{value!r} has an unknown suffix {suffix!r}")


class ObjectMeta(WireModel):
    """The part of Kubernetes metadata Moorage reads; everything else is passed through untouched."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, what="metadata.name")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(WireModel):
    """A Kubernetes-style condition (same fields as metav1.Condition)."""

    type: str
    status: ConditionStatus
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = ""
    last_transition_time: str = Field(default_factory=lambda: now_rfc3339())
    observed_generation: int | None = None


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_precise() -> str:
    """RFC 3339 with microseconds, always the same width: such stamps order as strings."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ResourceStatus(WireModel):
    """Status shape shared by every Moorage resource (CloudNativePG style)."""

    phase: str | None = None
    phase_reason: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)

    def set_condition(
        self, type_: str, status: ConditionStatus | bool, reason: str, message: str = ""
    ) -> bool:
        """Set one condition; keep lastTransitionTime unless the status flips. True if anything changed."""
        if isinstance(status, bool):
            status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
        for index, existing in enumerate(self.conditions):
            if existing.type != type_:
                continue
            if (existing.status, existing.reason, existing.message) == (status, reason, message):
                return False
            transition = existing.last_transition_time if existing.status == status else now_rfc3339()
            self.conditions[index] = Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=self.observed_generation,
            )
            return True
        self.conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                observed_generation=self.observed_generation,
            )
        )
        return True

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Resources(WireModel):
    """Requests equal limits (Guaranteed QoS) unless limits are given explicitly."""

    cpu: str = Field(description="CPU request, e.g. 500m.")
    memory: str = Field(description="Memory request, e.g. 512Mi.")
    cpu_limit: str | None = Field(default=None, description="Defaults to cpu (Guaranteed QoS).")
    memory_limit: str | None = Field(default=None, description="Defaults to memory (Guaranteed QoS).")

    @field_validator("cpu", "memory", "cpu_limit", "memory_limit")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        return None if value is None else validate_quantity(value)


class Storage(WireModel):
    size: str = Field(description="PVC size per member, e.g. 10Gi. Can grow, never shrink.")
    storage_class_name: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        return validate_quantity(value)


class LocalObjectReference(WireModel):
    name: str


class NamespacedReference(WireModel):
    name: str
    namespace: str | None = Field(default=None, description="Defaults to the referring object's.")


class SecretKeyReference(WireModel):
    name: str
    key: str


class CustomResource(WireModel):
    """Base for the top-level resources: apiVersion/kind/metadata/spec/status."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[list[str]] = []
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Namespaced"
    CATEGORIES: ClassVar[list[str]] = ["moorage"]
    # (name, type, jsonPath, description); rendered as additionalPrinterColumns.
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = []

    # Spelled out: mypy cannot see that the f-string API_VERSION equals this Literal.
    api_version: Literal["moorage.io/v1alpha1"] = "moorage.io/v1alpha1"
    kind: str
    metadata: ObjectMeta
