"""Fixtures over ``harness``: every process a test starts is stopped when the test ends, pass or fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import RedisNodes, RedisProcess
from tests.integration.shake_harness import shake_binary

PASSWORD = "it-s3cret pass"  # a space on purpose: quoting in redis.conf must hold

RedisNodesFactory = Callable[..., list[RedisProcess]]


@pytest.fixture
def redis_group(tmp_path: Path) -> Iterator[RedisNodes]:
    """One group of redis-server processes (password ``PASSWORD``), stopped at teardown."""
    group = RedisNodes(tmp_path / "redis", password=PASSWORD)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def redis_nodes(redis_group: RedisNodes) -> RedisNodesFactory:
    """``redis_nodes(count, cluster=True)`` starts more nodes in the test's group."""

    def start(count: int, *, cluster: bool = True) -> list[RedisProcess]:
        return redis_group.start(count, cluster=cluster)

    return start


@pytest.fixture(scope="session")
def redis_shake() -> str:
    """The real redis-shake v4 binary (``hack/build-redis-shake.sh``): a skip naming the script when it
    is missing, a failure instead with ``MOORAGE_SHAKE_REQUIRED=1`` (``make test``)."""
    return shake_binary()
