"""The files in ``examples/`` as the tests read them: every tier applies the examples themselves, so
what a user copies is what was proven, not a look-alike written in a test."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def documents(file: str) -> list[dict[str, Any]]:
    """Every document of ``examples/<file>``, a fresh copy each call (tests change names)."""
    return [copy.deepcopy(doc) for doc in yaml.safe_load_all((EXAMPLES / file).read_text()) if doc]


def document(file: str, kind: str, index: int = 0) -> dict[str, Any]:
    """The ``index``-th document of ``kind`` in ``examples/<file>``."""
    found = [doc for doc in documents(file) if doc["kind"] == kind]
    assert len(found) > index, f"examples/{file} has {len(found)} {kind} documents"
    return found[index]
