"""The real `moorage` console command, run the way a user runs it, for the CLI tests of every engine.

Each ``Moorage`` owns one state directory (``MOORAGE_STATE_DIR``), so tests never see each other's
deployments; ``session`` purges whatever a test left deployed there, pass or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from middleware.runtime.local import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
# `up` waits for every member to be Ready; a slow machine must fail on the CLI's own deadline first.
CLI_TIMEOUT = 300
# A narrow terminal by default: errors must still be one line however little room they get.
NARROW_COLUMNS = 60


class Moorage:
    """Runs the CLI in a subprocess against ``state_dir``; ``columns`` is the terminal width it sees."""

    def __init__(self, state_dir: Path, *, columns: int = NARROW_COLUMNS) -> None:
        self.state_dir = state_dir
        self.columns = columns

    def run(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MOORAGE_STATE_DIR": str(self.state_dir), "COLUMNS": str(self.columns)}
        result = subprocess.run(
            [sys.executable, "-m", "operators.cli", *args],
            cwd=REPO,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"moorage {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def status(self, name: str, *extra: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("status", name, *extra)
        return doc

    def runtime(self) -> LocalRuntime:
        return LocalRuntime(self.state_dir)

    def cleanup(self) -> None:
        for namespace, name in self.runtime().list():
            self.run("down", name, "-n", namespace, "--purge", check=False)


@contextmanager
def session(state_dir: Path, *, columns: int = NARROW_COLUMNS) -> Iterator[Moorage]:
    """A ``Moorage`` whose deployments are all purged on exit, so a failed test leaves no process."""
    cli = Moorage(state_dir, columns=columns)
    try:
        yield cli
    finally:
        cli.cleanup()
