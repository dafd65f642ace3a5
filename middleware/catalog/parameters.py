"""Typed parameter checking: every error names the parameter and the allowed values."""

from __future__ import annotations

import re
from collections.abc import Mapping

from middleware.errors import SpecError
from middleware.models.catalog import EngineEntry, ParameterDefinition, ParameterType

_BYTES_RE = re.compile(r"^(\d+)\s*(b|k|kb|m|mb|g|gb|ki|mi|gi)?$", re.IGNORECASE)
_BYTES_UNITS = {
    None: 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bytes(value: str) -> int:
    """Redis-style sizes ('100mb', '1gb', '4096') and Kubernetes binary suffixes ('1Gi')."""
    match = _BYTES_RE.match(value.strip())
    if not match:
        raise ValueError(value)
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _BYTES_UNITS[unit]


def _describe_allowed(definition: ParameterDefinition) -> str:
    if definition.type == ParameterType.ENUM:
        return "one of " + ", ".join(definition.values or [])
    if definition.type == ParameterType.BOOLEAN:
        return "true or false"
    if definition.type == ParameterType.STRING:
        return f"a string matching {definition.pattern}" if definition.pattern else "a string"
    low = "" if definition.minimum is None else f">= {_num(definition.minimum)}"
    high = "" if definition.maximum is None else f"<= {_num(definition.maximum)}"
    noun = {
        ParameterType.INTEGER: "an integer",
        ParameterType.NUMBER: "a number",
        ParameterType.BYTES: "a size in bytes (e.g. 100mb, 1gb)",
    }[ParameterType(definition.type)]
    bounds = " and ".join(b for b in (low, high) if b)
    return f"{noun} {bounds}".strip()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def format_parameter(definition: ParameterDefinition, value: object, boolean_format: tuple[str, str]) -> str:
    """Check one value against its definition and return it as the engine's config spells it."""
    field = f"spec.parameters.{definition.name}"
    allowed = _describe_allowed(definition)

    def bad() -> SpecError:
        return SpecError(field, f"{value!r} is not allowed: must be {allowed}")

    kind = ParameterType(definition.type)
    text = str(value).strip()
    if kind == ParameterType.BOOLEAN:
        lowered = str(value).lower()
        if isinstance(value, bool):
            return boolean_format[0] if value else boolean_format[1]
        if lowered in _TRUE:
            return boolean_format[0]
        if lowered in _FALSE:
            return boolean_format[1]
        raise bad()
    if kind == ParameterType.ENUM:
        if isinstance(value, bool) or text not in (definition.values or []):
            raise bad()
        return text
    if kind == ParameterType.STRING:
        if isinstance(value, bool) or (definition.pattern and not re.fullmatch(definition.pattern, text)):
            raise bad()
        return text
    number: float
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        if kind == ParameterType.INTEGER:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(text) if not isinstance(value, float) else int(value)
        elif kind == ParameterType.NUMBER:
            number = float(text)
        else:
            number = parse_bytes(text)
    except ValueError:
        raise bad() from None
    if definition.minimum is not None and number < definition.minimum:
        raise bad()
    if definition.maximum is not None and number > definition.maximum:
        raise bad()
    if kind == ParameterType.NUMBER:
        return _num(number)
    return str(int(number)) if kind == ParameterType.INTEGER else text.lower()


def validate_parameters(
    engine: EngineEntry, topology: str, parameters: Mapping[str, object], *, with_defaults: bool = True
) -> dict[str, str]:
    """All user parameters checked and formatted, plus catalog defaults for the ones not set.

    Unknown parameters are rejected (a typo must not be silently ignored) and the message lists the
    known ones, so the user can fix it without reading docs.
    """
    result: dict[str, str] = {}
    for name, value in parameters.items():
        definition = engine.parameter(name)
        if definition is None:
            known = ", ".join(sorted(p.name for p in engine.parameters))
            raise SpecError(
                f"spec.parameters.{name}", f"unknown parameter for {engine.name} (known: {known})"
            )
        if definition.topologies and topology not in definition.topologies:
            where = ", ".join(str(t) for t in definition.topologies)
            raise SpecError(f"spec.parameters.{name}", f"only valid for topology {where}, not {topology}")
        result[name] = format_parameter(definition, value, engine.boolean_format)
    if with_defaults:
        for definition in engine.parameters:
            if definition.name in result or definition.default is None:
                continue
            if definition.topologies and topology not in definition.topologies:
                continue
            result[definition.name] = format_parameter(definition, definition.default, engine.boolean_format)
    return result
