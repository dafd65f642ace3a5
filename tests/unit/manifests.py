"""Helpers the engines' render tests share: picking manifests, the golden-file dump and comparison,
and strict validation against the Kubernetes schemas."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from middleware.spec import ResolvedSpec, load_middleware, resolve

K8S_VERSIONS = ("1.30", "1.37")

# The default headline of a golden mismatch; ``{name}`` is the golden file's name and ``{test}`` the
# test file as run from the repository root.
REGENERATE = (
    "render() no longer matches {name}. If the change is intended, regenerate with\n"
    "  UPDATE_GOLDEN=1 .venv/bin/pytest {test}\n"
    "and review the diff.\n"
)


def middleware_spec(name: str, namespace: str, spec: dict[str, Any]) -> ResolvedSpec:
    document = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return resolve(load_middleware(document))


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name)


def pod_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template of the one StatefulSet."""
    (sts,) = of_kind(manifests, "StatefulSet")
    pod: dict[str, Any] = sts["spec"]["template"]["spec"]
    return pod


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def server_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The engine's own container: the first one (the metrics exporter's sidecar comes after)."""
    main: dict[str, Any] = pod["containers"][0]
    assert main["name"] != "metrics"
    return main


def engine_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container but the metrics exporter's sidecar (which has sizes and a command of its own)."""
    return [c for c in all_containers(pod) if c["name"] != "metrics"]


# --- golden ---------------------------------------------------------------------------------------


class _GoldenDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Config files and scripts read as themselves in the golden files, not as one escaped line.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_GoldenDumper.add_representer(str, _represent_str)


def dump(manifests: list[dict[str, Any]]) -> str:
    return yaml.dump_all(
        manifests, Dumper=_GoldenDumper, sort_keys=False, default_flow_style=False, width=110
    )


def assert_golden(
    manifests: list[dict[str, Any]], golden_path: Path, test_file: str, *, mismatch: str = REGENERATE
) -> None:
    """Compares the dump of ``manifests`` with ``golden_path``; ``UPDATE_GOLDEN=1`` rewrites it.

    ``test_file`` is the calling test's ``__file__``; ``mismatch`` is the headline of the failure
    (formatted with ``name`` and ``test``), followed by the start of the unified diff.
    """
    text = dump(manifests)
    assert list(yaml.safe_load_all(text)) == manifests, "the golden dump must round-trip"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden_path.parent.mkdir(parents=True, exist_ok=True)
        golden_path.write_text(text, encoding="utf-8")
    assert golden_path.exists(), f"{golden_path} is missing: run UPDATE_GOLDEN=1 .venv/bin/pytest {test_file}"
    golden = golden_path.read_text(encoding="utf-8")
    if golden != text:
        diff = "".join(
            difflib.unified_diff(
                golden.splitlines(keepends=True),
                text.splitlines(keepends=True),
                str(golden_path),
                "render()",
                n=2,
            )
        )
        headline = mismatch.format(name=golden_path.name, test=f"tests/unit/{Path(test_file).name}")
        pytest.fail(f"{headline}{diff[:6000]}")


# --- schema ---------------------------------------------------------------------------------------


def assert_strict_valid(manifests: Iterable[dict[str, Any]], versions: Iterable[str] = K8S_VERSIONS) -> None:
    """Every manifest passes the strict schema of every Kubernetes version in ``versions``."""
    manifests = list(manifests)
    for version in versions:
        for manifest in manifests:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} at {where}: {error.message}")


# --- QoS ------------------------------------------------------------------------------------------


def assert_guaranteed_qos(container: dict[str, Any], where: str | None = None) -> None:
    """Requests equal limits, so the pod is in the Guaranteed QoS class."""
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], where
