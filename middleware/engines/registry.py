"""Engine registry: ``spec.engine`` → the engine package's implementation."""

from __future__ import annotations

from middleware.engines.base import Engine
from middleware.errors import SpecError

_ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    _ENGINES[engine.name] = engine
    return engine


def get_engine(name: str) -> Engine:
    _load_builtin()
    try:
        return _ENGINES[name]
    except KeyError:
        available = ", ".join(sorted(_ENGINES)) or "none"
        raise SpecError(
            "spec.engine",
            f"engine {name!r} is in the catalog but not implemented yet (available: {available})",
        ) from None


def available_engines() -> list[str]:
    _load_builtin()
    return sorted(_ENGINES)


def _load_builtin() -> None:
    # Imported lazily so that importing the registry never drags every engine's client library in.
    if _ENGINES:
        return
    from middleware.engines.redis.engine import ENGINE as redis_engine

    register(redis_engine)
