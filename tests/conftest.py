"""Fixtures and test scheduling shared by more than one tier.

The S3 server (SeaweedFS, on ports chosen free) is session-scoped: it is defined once for the whole
session, here, so every tier shares one server instead of starting one per conftest.

`make test` runs the suite on two pytest-xdist workers with ``--dist loadscope`` and the scopes
below: each module stays on one worker (its module-scoped servers start once), and the whole e2e
tier is one scope, so one worker: the local cluster binds fixed ports and paths, only one may run,
and the e2e tests share it for the session. The e2e tier is collected first, so its worker starts on
it at once while the other worker takes the unit, integration and k8s modules.
(``xdist_group`` marks cannot do this with pytest 9.2: xdist 3.8 renames ``item._nodeid``, which
pytest no longer reads, so the marks are silently ignored.)
"""

from __future__ import annotations

from typing import Any

from tests.integration.s3_harness import cutting_proxy, s3_config, s3_server  # noqa: F401  (fixtures)

E2E_PREFIX = "tests/e2e/"


def test_scope(nodeid: str) -> str:
    """The scheduling unit of a test: the e2e tier as a whole, else its module."""
    return "e2e" if nodeid.startswith(E2E_PREFIX) else nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return test_scope(nodeid)

    return TierScheduling(config, log)
