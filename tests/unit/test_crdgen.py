"""CRD generation: crds/ is fresh, every CRD is a valid structural schema, CEL rules sit where they must.

The CEL rules are checked here for presence, place and wording only, without a CEL evaluator; a real
kube-apiserver compiles and evaluates them in the tests/k8s tier (a later issue).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import Field, ValidationError

from middleware import crdgen
from middleware.models import ALL_RESOURCES, GROUP, VERSION, CustomResource, Middleware
from middleware.models.catalog import MiddlewareCatalog
from middleware.models.common import ObjectMeta, ResourceStatus, WireModel
from middleware.models.middleware import ENGINE_TOPOLOGIES, BackupPolicy, EngineName, Topology
from middleware.models.sync import RedisSync

ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = ROOT / "crds"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# Every keyword Kubernetes' JSONSchemaProps knows that a generated schema may use.
K8S_SCHEMA_KEYS = {
    "description",
    "type",
    "format",
    "nullable",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-validations",
}
OPENAPI_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
# Inside a junctor these make a schema non-structural (KEP-1002); our generator emits no junctors at all.
FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "nullable", "additionalProperties", "title"}


def crd_schema(doc: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_at(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    node = crd_schema(doc)
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def walk(node: dict[str, Any], path: str = "", in_items: bool = False) -> Iterator[tuple[str, dict, bool]]:
    """Every schema node with its path and whether it sits under array items (uncorrelatable for CEL)."""
    yield path or ".", node, in_items
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}", in_items)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]", True)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]", in_items)


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """The structural-schema rules of apiextensions v1, checked on every node of one openAPIV3Schema."""
    problems = []
    if set(schema) - {"description", "type", "properties", "required", "x-kubernetes-validations"}:
        problems.append(f".: root may only hold description/type/properties/required, has {sorted(schema)}")
    if schema.get("type") != "object" or schema.get("nullable"):
        problems.append(".: root must be a non-nullable object")
    props = schema.get("properties", {})
    if props.get("metadata") != {"type": "object"}:
        problems.append(".metadata: must be exactly {type: object}; the apiserver owns metadata")
    for meta in ("apiVersion", "kind"):
        if meta in props and set(props[meta]) - {"type", "description"}:
            problems.append(f".{meta}: must be a plain string (no enum/default at the root)")
    for path, node, in_items in walk(schema):
        unknown = set(node) - K8S_SCHEMA_KEYS
        if unknown:
            problems.append(f"{path}: keywords outside the Kubernetes schema subset: {sorted(unknown)}")
        untyped_ok = any(node.get(f"x-kubernetes-{x}") for x in ("int-or-string", "preserve-unknown-fields"))
        if "type" not in node and not untyped_ok:
            problems.append(f"{path}: no type")
        if "type" in node and node["type"] not in OPENAPI_TYPES:
            problems.append(f"{path}: type {node['type']!r} is not an OpenAPI v3 type")
        if node.get("nullable") and "type" not in node:
            problems.append(f"{path}: nullable without a type")
        if node.get("nullable") and "enum" in node:
            problems.append(f"{path}: nullable enum: the apiserver's enum check rejects null")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false is not allowed next to properties")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: an array needs a single items schema")
        if node.get("uniqueItems"):
            problems.append(f"{path}: uniqueItems is forbidden in CRDs")
        if node.get("x-kubernetes-preserve-unknown-fields") not in (None, True):
            problems.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent")
        if node.get("x-kubernetes-int-or-string") and node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: int-or-string and preserve-unknown-fields exclude each other")
        for junctor in JUNCTORS:
            for sub in node.get(junctor, []) if junctor != "not" else [node.get("not") or {}]:
                if FORBIDDEN_IN_JUNCTORS & set(sub):
                    problems.append(f"{path}.{junctor}: {sorted(FORBIDDEN_IN_JUNCTORS & set(sub))}")
        for index, rule in enumerate(node.get("x-kubernetes-validations", [])):
            where = f"{path} x-kubernetes-validations[{index}]"
            if not rule.get("rule", "").strip() or not rule.get("message", "").strip():
                problems.append(f"{where}: needs a rule and a message")
            if "\n" in rule.get("message", ""):
                problems.append(f"{where}: message must be one line")
            field_path = rule.get("fieldPath")
            if field_path is not None and field_path.lstrip(".") not in node.get("properties", {}):
                problems.append(f"{where}: fieldPath {field_path} is not a property here")
            if "oldSelf" in rule["rule"] and in_items:
                problems.append(f"{where}: oldSelf under list items cannot be correlated")
        if "default" in node:
            problems.extend(f"{path}: default {error}" for error in default_problems(node))
    return problems


def as_draft4(node: dict[str, Any]) -> dict[str, Any]:
    """The same constraints as a plain draft-4 JSON schema (OpenAPI v3's base), for jsonschema."""
    if node.get("x-kubernetes-int-or-string"):
        return {"type": ["integer", "string"]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key == "properties":
            out[key] = {name: as_draft4(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = as_draft4(value)
        else:
            out[key] = value
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def default_problems(node: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(as_draft4(node))
    return [error.message for error in validator.iter_errors(node["default"])]


def schema_errors(doc: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(as_draft4(crd_schema(doc)))
    return sorted(f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(resource))


GENERATED = {resource.KIND: crdgen.generate_crd(resource) for resource in ALL_RESOURCES}


# --- (a) crds/ on disk is what the models generate ------------------------------------------------------


def test_crds_directory_is_fresh() -> None:
    problems = crdgen.check(CRDS_DIR)
    assert not problems, f"crds/ is stale ({', '.join(problems)}): run `make crds`"


def test_one_file_per_resource_with_header() -> None:
    names = sorted(p.name for p in CRDS_DIR.iterdir())
    assert names == sorted([*(f"{GROUP}_{r.PLURAL}.yaml" for r in ALL_RESOURCES), crdgen.KUSTOMIZATION])
    for path in CRDS_DIR.glob(f"{GROUP}_*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# Generated by `make crds` from middleware/models — do not edit.\n")
        assert "&id" not in text, "YAML anchors make generated CRDs hard to read and diff"
        (doc,) = list(yaml.safe_load_all(text))
        assert doc == crdgen.generate_crd(next(r for r in ALL_RESOURCES if crdgen.filename(r) == path.name))


def test_kustomization_lists_every_crd_and_nothing_else() -> None:
    text = (CRDS_DIR / crdgen.KUSTOMIZATION).read_text(encoding="utf-8")
    assert text.startswith("# Generated by `make crds` from middleware/models — do not edit.\n")
    doc = yaml.safe_load(text)
    assert doc["kind"] == "Kustomization"
    assert doc["resources"] == sorted(crdgen.filename(r) for r in ALL_RESOURCES)
    # `kubectl apply -f crds/` and CRD consumers globbing crds/*.yaml must not take it for a CRD.
    assert not crdgen.KUSTOMIZATION.endswith((".yaml", ".yml", ".json"))


def test_output_is_deterministic() -> None:
    assert crdgen.expected_files() == crdgen.expected_files()


def test_check_reports_stale_missing_and_extra_files(tmp_path: Path) -> None:
    written = crdgen.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [*(crdgen.filename(r) for r in ALL_RESOURCES), crdgen.KUSTOMIZATION]
    )
    assert crdgen.check(tmp_path) == []

    middlewares = tmp_path / crdgen.filename(Middleware)
    middlewares.write_text(middlewares.read_text() + "# hand edit\n")
    (tmp_path / crdgen.filename(RedisSync)).unlink()
    (tmp_path / f"{GROUP}_oldthings.yaml").write_text("stale\n")
    assert crdgen.check(tmp_path) == [
        f"{crdgen.filename(Middleware)} (stale)",
        f"{crdgen.filename(RedisSync)} (missing)",
        f"{GROUP}_oldthings.yaml (not generated)",
    ]

    crdgen.write_all(tmp_path)
    assert crdgen.check(tmp_path) == []


def test_cli_check_exits_1_with_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert crdgen.filename(Middleware) in err
    assert "run `make crds`" in err
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0


# --- (b) strict validation against the official Kubernetes schema ---------------------------------------


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", list(GENERATED))
def test_crd_passes_strict_kubernetes_validation(kind: str, k8s_version: str) -> None:
    validated = kubernetes_validate.validate(GENERATED[kind], k8s_version, strict=True)
    assert validated == k8s_version.rsplit(".", 1)[0]


# --- (c) structural schema rules on every node ----------------------------------------------------------


@pytest.mark.parametrize("kind", list(GENERATED))
def test_schema_is_structural(kind: str) -> None:
    assert structural_problems(crd_schema(GENERATED[kind])) == []


def test_walker_catches_non_structural_nodes() -> None:
    bad = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {
                "type": "object",
                "title": "Spec",
                "properties": {
                    "a": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    "b": {"$ref": "#/$defs/B"},
                    "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
                    "d": {"type": "string", "nullable": True, "enum": ["x"]},
                    "e": {"type": "integer", "default": "seven"},
                },
            },
        },
    }
    found = "\n".join(structural_problems(bad))
    for expected in (
        ".metadata: must be exactly",
        ".spec: keywords outside the Kubernetes schema subset: ['title']",
        ".spec.a: no type",
        ".spec.a.anyOf: ['type']",
        ".spec.b: keywords outside the Kubernetes schema subset: ['$ref']",
        ".spec.c: properties and additionalProperties are mutually exclusive",
        ".spec.d: nullable enum",
        ".spec.e: default",
    ):
        assert expected in found


@pytest.mark.parametrize("kind", list(GENERATED))
def test_printer_columns_point_into_the_schema(kind: str) -> None:
    doc = GENERATED[kind]
    for column in doc["spec"]["versions"][0]["additionalPrinterColumns"]:
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        assert schema_at(doc, *parts)["type"] == column["type"], column


# --- (d) the generator on a tiny synthetic model --------------------------------------------------------


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(WireModel):
    """An inner thing."""

    size: int = Field(ge=1, description="How big.")


class TinySpec(WireModel):
    name: str = Field(description="The name.")
    nickname: str | None = Field(default=None, description="Optional, so nullable.")
    inner: Inner
    maybe_inner: Inner | None = None
    color: Color = Color.RED
    maybe_color: Color | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="A map.")
    tags: list[str] = Field(default_factory=list)
    pair: tuple[str, str] = ("a", "b")
    port: int | str = 80
    anything: dict[str, str | int | bool] = Field(default_factory=dict)
    mode: Literal["fast"] = "fast"


class Tiny(CustomResource):
    KIND: ClassVar[str] = "Tiny"
    PLURAL: ClassVar[str] = "tinies"
    SHORT_NAMES: ClassVar[list[str]] = ["tn"]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Cluster"
    PRINTER_COLUMNS: ClassVar[list[tuple[str, str, str, str]]] = [
        ("Color", "string", ".spec.color", "The color"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]

    kind: Literal["Tiny"] = "Tiny"
    metadata: ObjectMeta
    spec: TinySpec
    status: ResourceStatus | None = None


def test_generator_on_synthetic_model() -> None:
    doc = crdgen.generate_crd(Tiny)
    root = crd_schema(doc)
    spec = schema_at(doc, "spec")
    props = spec["properties"]

    assert root["required"] == ["spec"]
    assert root["properties"]["apiVersion"]["type"] == "string"
    assert "enum" not in root["properties"]["kind"] and "default" not in root["properties"]["kind"]
    assert root["properties"]["metadata"] == {"type": "object"}
    assert "nullable" not in root["properties"]["status"]
    assert spec["required"] == ["name", "inner"]

    assert props["name"] == {"description": "The name.", "type": "string"}
    assert props["nickname"] == {"description": "Optional, so nullable.", "type": "string", "nullable": True}
    assert props["inner"] == {
        "description": "An inner thing.",
        "type": "object",
        "properties": {"size": {"description": "How big.", "type": "integer", "minimum": 1}},
        "required": ["size"],
    }
    assert props["maybeInner"]["nullable"] is True
    assert props["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}
    assert props["maybeColor"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["labels"] == {
        "description": "A map.",
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["pair"] == {
        "type": "array",
        "default": ["a", "b"],
        "minItems": 2,
        "maxItems": 2,
        "items": {"type": "string"},
    }
    assert props["port"] == {"default": 80, "x-kubernetes-int-or-string": True}
    assert props["anything"]["additionalProperties"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["mode"] == {"type": "string", "enum": ["fast"], "default": "fast"}

    assert structural_problems(root) == []
    assert kubernetes_validate.validate(doc, "1.30.0", strict=True)
    assert doc["metadata"]["name"] == "tinies.moorage.io"
    assert doc["spec"]["scope"] == "Cluster"
    assert doc["spec"]["names"]["shortNames"] == ["tn"]
    assert doc["spec"]["versions"][0]["additionalPrinterColumns"] == [
        {"name": "Color", "type": "string", "jsonPath": ".spec.color", "description": "The color"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


class Node(WireModel):
    children: list[Node] = Field(default_factory=list)


class Mixed(WireModel):
    value: int | list[str]


def _resource(spec_type: type[WireModel]) -> type[CustomResource]:
    class Synthetic(CustomResource):
        KIND: ClassVar[str] = "Synthetic"
        PLURAL: ClassVar[str] = "synthetics"
        kind: Literal["Synthetic"] = "Synthetic"
        metadata: ObjectMeta
        spec: spec_type  # type: ignore[valid-type]

    return Synthetic


@pytest.mark.parametrize(
    ("spec_type", "message"),
    [(Node, "recursive"), (Mixed, "only unions of plain scalar types")],
)
def test_generator_refuses_what_has_no_structural_form(spec_type: type[WireModel], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        crdgen.generate_crd(_resource(spec_type))


# --- (e) the topology rule is ENGINE_TOPOLOGIES, engine by engine ---------------------------------------


def topology_rule(engine: EngineName) -> dict[str, str]:
    rules = schema_at(GENERATED["Middleware"], "spec")["x-kubernetes-validations"]
    (rule,) = [r for r in rules if r["rule"].startswith(f"self.engine != '{engine.value}' ")]
    return rule


def test_every_engine_has_topologies() -> None:
    assert set(ENGINE_TOPOLOGIES) == set(EngineName)


@pytest.mark.parametrize("engine", list(EngineName))
def test_topology_rule_lists_exactly_the_engine_topologies(engine: EngineName) -> None:
    rule = topology_rule(engine)
    match = re.fullmatch(rf"self\.engine != '{engine.value}' \|\| self\.topology in \[(.*)\]", rule["rule"])
    assert match, rule["rule"]
    listed = [t.strip().strip("'") for t in match.group(1).split(",")]
    allowed = [t.value for t in ENGINE_TOPOLOGIES[engine]]
    assert listed == allowed
    assert rule["message"] == f"topology does not suit engine {engine.value} (allowed: {', '.join(allowed)})"
    assert rule["fieldPath"] == ".topology"


# --- (f) names, printer columns, subresources -----------------------------------------------------------


@pytest.mark.parametrize("resource", ALL_RESOURCES, ids=lambda r: r.KIND)
def test_names_columns_and_subresources(resource: type[CustomResource]) -> None:
    doc = GENERATED[resource.KIND]
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"{resource.PLURAL}.{GROUP}"
    assert doc["spec"]["group"] == GROUP
    assert doc["spec"]["scope"] == resource.SCOPE
    assert doc["spec"]["names"] == {
        "kind": resource.KIND,
        "listKind": f"{resource.KIND}List",
        "plural": resource.PLURAL,
        "singular": resource.KIND.lower(),
        "shortNames": resource.SHORT_NAMES,
        "categories": resource.CATEGORIES,
    }
    assert resource.SHORT_NAMES, "every Moorage resource has a short name"
    (version,) = doc["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}
    columns = [
        (c["name"], c["type"], c["jsonPath"], c.get("description", ""))
        for c in version["additionalPrinterColumns"]
    ]
    assert columns == resource.PRINTER_COLUMNS
    assert columns, "kubectl get should show more than NAME"


def test_middleware_is_short_named_mw_and_catalog_is_cluster_scoped() -> None:
    assert GENERATED["Middleware"]["spec"]["names"]["shortNames"] == ["mw"]
    assert GENERATED["MiddlewareCatalog"]["spec"]["scope"] == "Cluster"


# --- CEL intent: the rules exist where they must, with their messages -----------------------------------

CEL_EXPECTATIONS = [
    ("Middleware", ("spec", "engine"), "self == oldSelf", "engine is immutable"),
    ("Middleware", ("spec", "topology"), "self == oldSelf", "topology is immutable"),
    ("Middleware", ("spec",), "!has(self.shards) || self.topology == 'cluster'", "shards is only valid"),
    ("Middleware", ("spec",), "!has(self.sentinels) || self.topology == 'sentinel'", "sentinels is only"),
    (
        "Middleware",
        ("spec",),
        "self.topology != 'standalone' || !has(self.replicas) || self.replicas == 1",
        "replicas must be 1 for topology 'standalone'",
    ),
    ("RedisSync", ("spec", "source"), "has(self.middleware) != has(self.addresses)", "exactly one of"),
    ("RedisSync", ("spec", "target"), "has(self.middleware) != has(self.addresses)", "exactly one of"),
    ("RedisSync", ("spec", "source"), "!has(self.addresses) || has(self.kind)", "kind is required"),
    ("RedisSync", ("spec", "target"), "!has(self.addresses) || has(self.kind)", "kind is required"),
    (
        "RedisSync",
        ("spec",),
        "!has(self.shakeVersion) || self.shakeVersion != 'v3' || !has(self.filter)",
        "redis-shake v3 takes filters as Lua scripts",
    ),
    ("RedisSync", ("spec", "source"), "!has(self.kubeconfig) || has(self.middleware)", "kubeconfig is only"),
    ("RedisSync", ("spec", "target"), "!has(self.kubeconfig) || has(self.middleware)", "kubeconfig is only"),
]


@pytest.mark.parametrize(("kind", "path", "rule", "message"), CEL_EXPECTATIONS)
def test_cel_rule_is_in_place(kind: str, path: tuple[str, ...], rule: str, message: str) -> None:
    rules = schema_at(GENERATED[kind], *path).get("x-kubernetes-validations", [])
    matching = [r for r in rules if r["rule"] == rule]
    assert len(matching) == 1, f"{kind} {'.'.join(path)}: {rules}"
    assert matching[0]["message"].startswith(message)


def test_cel_rules_exist_only_where_expected() -> None:
    where = {
        (kind, path)
        for kind, doc in GENERATED.items()
        for path, node, _ in walk(crd_schema(doc))
        if "x-kubernetes-validations" in node
    }
    assert where == {
        ("Middleware", ".spec"),
        ("Middleware", ".spec.engine"),
        ("Middleware", ".spec.topology"),
        ("RedisSync", ".spec"),
        ("RedisSync", ".spec.source"),
        ("RedisSync", ".spec.target"),
    }


def test_immutable_fields_are_required_so_transition_rules_always_run() -> None:
    spec = schema_at(GENERATED["Middleware"], "spec")
    assert {"engine", "topology"} <= set(spec["required"])
    assert "spec" in crd_schema(GENERATED["Middleware"])["required"]


def test_every_overlay_reaches_a_resource() -> None:
    assert crdgen.applied_overlays() == set(crdgen.OVERLAYS)


def test_overlay_naming_a_missing_field_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = crdgen.Overlay(fields={"no_such_field": {}})
    overlays = dict(crdgen.OVERLAYS)
    overlays[BackupPolicy] = broken
    monkeypatch.setattr(crdgen, "OVERLAYS", overlays)
    with pytest.raises(KeyError, match="no_such_field"):
        crdgen.generate_crd(Middleware)


# --- the schema agrees with the models --------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule", ["0 3 * * *", " */5 * * * 1-5 ", "0 3 * *", "0 3 * * * *", "", "@daily", "0\t3 * * *"]
)
def test_cron_pattern_agrees_with_the_model(schedule: str) -> None:
    def model_accepts() -> bool:
        try:
            BackupPolicy.model_validate({"repository": {"name": "r"}, "schedule": schedule})
        except ValidationError:
            return False
        return True

    assert bool(re.search(crdgen.CRON_PATTERN, schedule)) == model_accepts()
    assert schema_at(GENERATED["Middleware"], "spec", "backup", "schedule")["pattern"] == crdgen.CRON_PATTERN


def test_examples_and_default_catalog_validate_against_their_crds() -> None:
    # The CRD must accept what the models accept; these documents are the ones users meet first.
    by_kind = {doc["spec"]["names"]["kind"]: doc for doc in GENERATED.values()}
    documents = [
        doc
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc["apiVersion"].startswith(f"{GROUP}/")  # not the Secrets that go with them
    ]
    # One example at least of every kind Moorage defines.
    assert {doc["kind"] for doc in documents} == set(by_kind), "examples/ lacks a kind"
    catalog = yaml.safe_load((ROOT / "middleware" / "catalog" / "default.yaml").read_text())
    documents.append(
        MiddlewareCatalog.model_validate(
            {"kind": "MiddlewareCatalog", "metadata": {"name": "default"}, "spec": catalog}
        ).to_wire()
    )
    for doc in documents:
        assert schema_errors(by_kind[doc["kind"]], doc) == [], doc["metadata"]["name"]


def test_schema_rejects_what_the_model_rejects_structurally() -> None:
    doc = GENERATED["Middleware"]
    good = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Middleware", "metadata": {"name": "m"}}
    cases = {
        "engine": {"engine": "oracle", "topology": "standalone"},
        "shards": {"engine": "redis", "topology": "cluster", "shards": 0},
        "deletionPolicy": {"engine": "redis", "topology": "standalone", "deletionPolicy": "Shred"},
        "topology": {"engine": "redis"},
    }
    for field_name, spec in cases.items():
        errors = schema_errors(doc, {**good, "spec": spec})
        assert errors, field_name
        with pytest.raises(ValidationError):
            Middleware.model_validate({**good, "spec": spec})
    spec = {"engine": "redis", "topology": Topology.CLUSTER, "shards": 3, "parameters": {"a": 1, "b": True}}
    ok = Middleware.model_validate({**good, "spec": spec})
    assert schema_errors(doc, ok.to_wire()) == []


def test_a_drill_schedule_needs_wal_archiving() -> None:
    with pytest.raises(ValidationError, match="drillSchedule needs walArchiving"):
        BackupPolicy.model_validate(
            {"repository": {"name": "r"}, "schedule": "0 3 * * *", "drillSchedule": "0 4 * * *"}
        )
    with pytest.raises(ValidationError, match="must be a 5-field cron"):
        BackupPolicy.model_validate(
            {
                "repository": {"name": "r"},
                "schedule": "0 3 * * *",
                "walArchiving": True,
                "drillSchedule": "daily",
            }
        )
