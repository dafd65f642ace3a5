"""The bare RESP pipeline used by the bulk restore path, against a real redis-server."""

from __future__ import annotations

import pytest

from middleware.engines.redis.resp import RespConnection, RespError, pack
from tests.integration.conftest import PASSWORD, RedisNodesFactory
from tests.integration.harness import require_binary

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    require_binary("redis-server", "redis-server")


def test_pack_is_resp_arrays_of_bulk_strings() -> None:
    assert pack([(b"SET", b"k", b"v\r\n")]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"
    assert pack([(b"PING",), (b"DBSIZE",)]) == b"*1\r\n$4\r\nPING\r\n*1\r\n$6\r\nDBSIZE\r\n"


def test_pipeline_round_trips_binary_values_and_reports_errors_in_place(
    redis_nodes: RedisNodesFactory,
) -> None:
    (node,) = redis_nodes(1, cluster=False)
    value = bytes(range(256)) * 4000  # ~1 MiB, every byte value, spans many reads
    with RespConnection(node.endpoint, PASSWORD, db=3) as conn:
        replies = conn.pipeline([(b"SET", b"blob", value), (b"GET", b"blob"), (b"DUMP", b"blob")])
        assert replies[:2] == [b"OK", value]
        payload = replies[2]
        results = conn.pipeline(
            [(b"RESTORE", b"copy", b"0", payload), (b"RESTORE", b"copy", b"0", payload), (b"DBSIZE",)],
            raise_on_error=False,
        )
        assert results[0] == b"OK"
        assert isinstance(results[1], Exception) and "BUSYKEY" in str(results[1])
        assert results[2] == 2
        with pytest.raises(RespError, match="BUSYKEY"):
            conn.pipeline([(b"RESTORE", b"copy", b"0", payload)])
        # The connection stays usable after an error reply, and SELECT took effect.
        assert conn.pipeline([(b"GET", b"copy")]) == [value]
        assert conn.pipeline([(b"CLIENT", b"INFO")])[0].split(b" db=")[1].startswith(b"3 ")


def test_a_wrong_password_is_refused_without_echoing_it(redis_nodes: RedisNodesFactory) -> None:
    (node,) = redis_nodes(1, cluster=False)
    wrong = "not-the-password-4821"
    with pytest.raises(RespError) as refused:
        RespConnection(node.endpoint, wrong)
    assert "WRONGPASS" in str(refused.value) and wrong not in str(refused.value)
