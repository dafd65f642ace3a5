"""Engine registry: ``spec.engine`` → the engine package's implementation."""

from __future__ import annotations

import importlib

from middleware.engines.base import Engine
from middleware.errors import SpecError

_ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    _ENGINES[engine.name] = engine
    return engine


# Engine packages by name, imported on first use: asking for Redis never imports psycopg or kazoo.
_BUILTIN = {
    "redis": "middleware.engines.redis.engine",
    "postgresql": "middleware.engines.postgresql.engine",
    "zookeeper": "middleware.engines.zookeeper.engine",
    "mongodb": "middleware.engines.mongodb.engine",
}


def get_engine(name: str) -> Engine:
    if name not in _ENGINES and name in _BUILTIN:
        module = importlib.import_module(_BUILTIN[name])
        register(module.ENGINE)
    try:
        return _ENGINES[name]
    except KeyError:
        available = ", ".join(available_engines()) or "none"
        raise SpecError(
            "spec.engine",
            f"engine {name!r} is in the catalog but not implemented yet (available: {available})",
        ) from None


def available_engines() -> list[str]:
    return sorted(set(_ENGINES) | set(_BUILTIN))
