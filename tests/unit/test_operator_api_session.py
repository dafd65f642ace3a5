"""kopf's API session: how many connections the pool allows, and what the session carries."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from operators import main
from operators.kube import api_session
from operators.kube.api_session import WatchScope, connection_limit


@pytest.mark.parametrize(
    ("scope", "limit"),
    [
        (WatchScope(clusterwide=True), 5 + 32),
        (WatchScope(clusterwide=True, peering=True), 6 + 32),
        (WatchScope(clusterwide=False, namespaces=("a",)), 5 + 32),
        (WatchScope(clusterwide=False, namespaces=("a", "b", "c"), peering=True), 3 * 6 + 32),
    ],
)
def test_the_pool_holds_the_watch_streams_and_the_request_budget(scope: WatchScope, limit: int) -> None:
    assert connection_limit(scope, kinds=5, request_connections=32) == limit


@pytest.mark.parametrize(
    "scope", [None, WatchScope(clusterwide=False, namespaces=("team-*",)), WatchScope(False, ("a", "b?"))]
)
def test_an_unknown_number_of_watches_leaves_the_pool_unbounded(scope: WatchScope | None) -> None:
    # A pool smaller than the watches would starve every other request: kopf's own (no limit) then.
    assert connection_limit(scope, kinds=5, request_connections=32) == 0


def test_every_kind_with_a_handler_is_counted() -> None:
    registry = kopf.get_default_registry()
    plurals = {
        handler.selector.plural or handler.selector.any_name
        for handlers in (registry._changing, registry._indexing, registry._spawning, registry._watching)
        for handler in handlers.get_all_handlers()
        if handler.selector is not None
    }
    assert plurals == {plural for _group, _version, plural in main.WATCHED_KINDS}


def test_the_session_carries_the_credentials_and_the_limit() -> None:
    # Its TLS context (kopf's, from the kubeconfig's CA) is exercised by the k8s tier: every operator
    # test there logs in through this session against the real API server.
    info = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="not-a-real-token", insecure=False)

    async def build() -> tuple[int, str, str]:
        context = api_session.limited_session(info, limit=7)
        session = context.aiohttp_session
        try:
            connector = session.connector
            assert connector is not None
            return connector.limit, session.headers["Authorization"], context.server
        finally:
            await session.close()

    assert asyncio.run(build()) == (7, "Bearer not-a-real-token", "https://127.0.0.1:6443")
