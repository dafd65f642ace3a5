"""`moorage connect`: the URIs each engine gives per user, from status endpoints (local) and from
its Services (Kubernetes). Pure; the URIs are used for real in tests/integration/test_cli_redis.py
and tests/e2e/test_postgresql.py."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.engines.registry import get_engine
from middleware.errors import NotReady
from middleware.spec import ResolvedSpec, load_middleware, resolve

PASSWORD = "p@ss/w:rd"  # characters a URI must escape
QUOTED = "p%40ss%2Fw%3Ard"


def spec(engine: str, topology: str, **extra: Any) -> ResolvedSpec:
    return resolve(
        load_middleware(
            {
                "apiVersion": "moorage.io/v1alpha1",
                "kind": "Middleware",
                "metadata": {"name": "db", "namespace": "prod"},
                "spec": {"engine": engine, "topology": topology, **extra},
            }
        )
    )


def uris(s: ResolvedSpec, endpoints: dict[str, str]) -> list[tuple[str, str]]:
    return [(a.user, a.uri) for a in get_engine(s.engine).client_access(s, endpoints, PASSWORD)]


def test_postgresql_app_user_first_then_a_replica_then_the_superuser() -> None:
    s = spec("postgresql", "replication", replicas=3)
    found = get_engine("postgresql").client_access(
        s, {"rw": "127.0.0.1:5001", "ro": "127.0.0.1:5002,127.0.0.1:5003"}, PASSWORD
    )
    assert [(a.user, a.uri.split("@")[1]) for a in found] == [
        ("app", "127.0.0.1:5001/app"),
        ("app", "127.0.0.1:5002/app"),
        ("postgres", "127.0.0.1:5001/postgres"),
    ]
    # The app user has its own password, derived from the deployment's; the superuser's is quoted.
    assert found[0].password != PASSWORD and found[0].password in found[0].uri
    assert found[2].uri == f"postgresql://postgres:{QUOTED}@127.0.0.1:5001/postgres"


def test_postgresql_on_kubernetes_names_the_services() -> None:
    s = spec("postgresql", "replication", replicas=2)
    endpoints = get_engine("postgresql").service_endpoints(s, {"rw": "db-0.db-headless:5432"})
    assert endpoints == {"rw": "db-rw.prod.svc:5432", "ro": "db-ro.prod.svc:5432"}


@pytest.mark.parametrize(
    ("topology", "observed", "expected"),
    [
        ("standalone", {"master": "127.0.0.1:7000"}, [("default", f"redis://default:{QUOTED}@127.0.0.1:7000")]),
        ("cluster", {"cluster": "127.0.0.1:7000,127.0.0.1:7001"}, [("default", f"redis://default:{QUOTED}@127.0.0.1:7000")]),
        (
            "sentinel",
            {"master": "127.0.0.1:7000", "sentinels": "127.0.0.1:26379,127.0.0.1:26380", "masterName": "db"},
            [
                ("default", f"redis://default:{QUOTED}@127.0.0.1:7000"),
                ("default", f"redis+sentinel://default:{QUOTED}@127.0.0.1:26379,127.0.0.1:26380/db"),
            ],
        ),
    ],
)  # fmt: skip
def test_redis_per_topology(topology: str, observed: dict[str, str], expected: list[tuple[str, str]]) -> None:
    assert uris(spec("redis", topology), observed) == expected


def test_redis_sentinel_on_kubernetes_names_the_master_and_sentinel_services() -> None:
    s = spec("redis", "sentinel")
    endpoints = get_engine("redis").service_endpoints(s, {"master": "10.0.0.5:6379", "masterName": "db"})
    assert endpoints == {
        "master": "db-master.prod.svc:6379",
        "sentinels": "db-sentinel.prod.svc:26379",
        "masterName": "db",
    }


def test_mongodb_puts_the_admin_user_into_the_replica_set_uri() -> None:
    client = "mongodb://db-0.db-headless.prod.svc:27017/?replicaSet=db&authSource=admin"
    assert uris(spec("mongodb", "replicaset"), {"client": client}) == [
        ("admin", f"mongodb://admin:{QUOTED}@db-0.db-headless.prod.svc:27017/?replicaSet=db&authSource=admin")
    ]


def test_zookeeper_gives_the_connect_string_and_the_superuser() -> None:
    s = spec("zookeeper", "ensemble")
    assert get_engine("zookeeper").service_endpoints(s, {}) == {"client": "db.prod.svc:2181"}
    assert uris(s, {"client": "127.0.0.1:2181,127.0.0.1:2182"}) == [
        ("-", "127.0.0.1:2181,127.0.0.1:2182"),
        ("super", "127.0.0.1:2181,127.0.0.1:2182"),
    ]


@pytest.mark.parametrize(
    ("engine", "topology"),
    [
        ("postgresql", "replication"),
        ("redis", "sentinel"),
        ("mongodb", "replicaset"),
        ("zookeeper", "ensemble"),
    ],
)
def test_nothing_observed_yet_is_said_not_guessed(engine: str, topology: str) -> None:
    with pytest.raises(NotReady, match="observed yet"):
        uris(spec(engine, topology), {})


# --- `moorage connect --exec`: the engine's own client, the password never in argv -----------------


@pytest.mark.parametrize(
    "engine,topology,endpoints,address,client,secret_env",
    [
        ("postgresql", "replication", {"rw": "127.0.0.1:5001", "ro": "127.0.0.1:5002"}, "127.0.0.1:5001",
         "psql", "PGPASSWORD"),
        ("redis", "sentinel", {"master": "127.0.0.1:6380", "sentinels": "127.0.0.1:26379"}, "127.0.0.1:6380",
         "redis-cli", "REDISCLI_AUTH"),
        ("redis", "cluster", {"cluster": "127.0.0.1:7001,127.0.0.1:7002"}, "127.0.0.1:7001", "redis-cli",
         "REDISCLI_AUTH"),
        ("zookeeper", "ensemble", {"client": "127.0.0.1:2181,127.0.0.1:2182"}, "127.0.0.1:2181",
         "org.apache.zookeeper.ZooKeeperMain", None),
    ],
)  # fmt: skip
def test_exec_opens_the_engines_client_on_the_primary_with_no_secret_in_argv(
    engine: str, topology: str, endpoints: dict[str, str], address: str, client: str, secret_env: str | None
) -> None:
    s = spec(engine, topology)
    found = get_engine(engine).client_address(s, endpoints)
    assert found == address
    command = get_engine(engine).client_command(s, found, PASSWORD)
    assert any(arg.endswith(client) for arg in command.argv), command.argv
    assert not any(PASSWORD in arg or QUOTED in arg for arg in command.argv), command.argv
    if secret_env is not None:
        assert command.env[secret_env]  # the password (PostgreSQL: the app user's, derived from it)
    port = address.rsplit(":", 1)[1]
    assert any(port in arg for arg in command.argv)
    assert ("-c" in command.argv) == (topology == "cluster")  # redis-cli follows MOVED in a cluster


def test_exec_before_a_primary_is_observed_is_not_ready_and_mongodb_has_no_shell_here() -> None:
    with pytest.raises(NotReady, match="no primary observed"):
        get_engine("postgresql").client_address(spec("postgresql", "replication", replicas=2), {})
    with pytest.raises(Exception, match="no interactive client for mongodb"):
        get_engine("mongodb").client_address(spec("mongodb", "replicaset"), {"client": "mongodb://h:1"})
