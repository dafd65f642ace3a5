"""Fixtures and collection rules shared by more than one tier.

The S3 server (SeaweedFS, on ports chosen free) is session-scoped: it is defined once for the whole
session, here, so every tier shares one server instead of starting one per conftest.

`make test` runs the suite on two pytest-xdist workers (``--dist loadgroup``). Each module stays
on one worker (its module-scoped servers start once), and the whole e2e tier stays on one worker:
the local cluster binds fixed ports and paths, so only one may run, and the e2e tests share it for
the session. The e2e tier is collected first, so its worker starts on it at once while the other
worker takes the unit, integration and k8s modules: the two halves take about as long.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.s3_harness import cutting_proxy, s3_config, s3_server  # noqa: F401  (fixtures)

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = "e2e" if E2E_DIR in item.path.parents else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
