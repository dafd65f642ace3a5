"""MongoDB DataDump / DataLoad round trips against FerretDB: a MongoDB-COMPATIBLE server (wire
protocol, SQLite storage), NOT a real mongod.

No mongod can be installed on these machines (docs/mongodb.md). FerretDB answers the same commands
the engine sends (listDatabases, listCollections, find/getMore, listIndexes, count, drop, create,
insert, createIndexes) over the real pymongo client stack, so these tests prove the dump format, the
streaming, the replace-on-load semantics and the inventory against a real server. Instance "a" runs
with ``--repl-set-name`` and so is reached through the replica-set client (discovery,
``secondaryPreferred`` reads, ``w: majority`` writes: a one-member set, nothing is replicated);
instance "b" is a plain server reached with ``directConnection``.

Instance "b" runs FerretDB's experimental SCRAM authentication with the engine's ``admin`` user, so
the credentialed connection (``authSource=admin``) is exercised there, and a wrong password is shown
to fail without the password in the error; "a" has no access control (``password=None``).
Not exercised here: MongoDB's own authorization (roles; FerretDB checks only who you are), reading
from a real secondary, WiredTiger's cursor behaviour under concurrent writes, and BSON types FerretDB
1.x does not store (Decimal128, nested arrays).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient

from middleware.engines.base import Connection, DumpOrigin, Member, MemberPlan
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError
from middleware.spec import ResolvedSpec, load_middleware, resolve
from tests.integration.dumpfiles import ChecksumMismatch, DirectorySource, save_dump
from tests.integration.ferretdb_harness import FerretDBProcess, ferretdb_binary

pytestmark = pytest.mark.integration

ENGINE = get_engine("mongodb")
NAME = "orders"
ORDERS = 2500  # more than one insert batch (1000) and more than one 1 MiB read of the stream
SEEDED = {"shop": ["customers", "empty", "orders"], "audit": ["events"]}

PASSWORD = 'fe rr$et "db" 100%'
Servers = Callable[..., FerretDBProcess]


def make_spec() -> ResolvedSpec:
    document = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": NAME, "namespace": "shop"},
        "spec": {"engine": "mongodb", "topology": "replicaset", "replicas": 1},
    }
    return resolve(load_middleware(document))


def connection(server: FerretDBProcess, password: str | None = None) -> Connection:
    plan = MemberPlan(name=f"{NAME}-0", component="data", workload=NAME, ordinal=0)
    return Connection(
        members=[Member(plan=plan, endpoint=server.endpoint, up=True)],
        password=password if password is not None else server.password,
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """``servers(name, repl_set_name=None, password=None)`` starts a FerretDB in its own fresh SQLite
    directory."""
    binary = ferretdb_binary()
    started: list[FerretDBProcess] = []

    def start(name: str, *, repl_set_name: str | None = None, password: str | None = None) -> FerretDBProcess:
        server = FerretDBProcess(
            binary, tmp_path / "ferretdb", name, repl_set_name=repl_set_name, password=password
        )
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def seed(client: MongoClient[Any]) -> None:
    base = dt.datetime(2024, 5, 1, 12, 30, 15, 123000)
    customers = client.shop.customers
    customers.insert_many(
        [
            {
                "_id": ObjectId(),
                "email": f"user{i}@example.com",
                "name": {"first": f"First{i}", "last": "Ünïcødé", "tags": ["a", "b", str(i)]},
                "since": base + dt.timedelta(days=i),
                "avatar": Binary(bytes(range(i % 256)) * 3),
            }
            for i in range(40)
        ]
    )
    customers.create_index([("email", ASCENDING)], unique=True, name="email_unique")
    client.shop.orders.insert_many(
        [
            {
                "_id": i,
                "customer": ObjectId(),
                "placed": base + dt.timedelta(minutes=i),
                "lines": [{"sku": f"sku-{i % 17}", "qty": i % 5 + 1, "price": 9.99 + i}],
                "address": {"street": "Main St", "number": i, "geo": {"lat": 52.5, "lon": 13.4}},
                "note": "x" * 400,
                "paid": i % 2 == 0,
                "coupon": None,
                "uuid": Binary(i.to_bytes(16, "big"), 4),
            }
            for i in range(ORDERS)
        ]
    )
    client.shop.create_collection("empty")
    events = client.audit.events
    events.insert_many(
        [
            {"_id": f"ev-{i:04d}", "kind": ["login", "logout", "order"][i % 3], "at": base, "seq": i}
            for i in range(300)
        ]
    )
    events.create_index([("kind", ASCENDING), ("at", DESCENDING)], name="kind_at")


def snapshot(client: MongoClient[Any]) -> dict[str, Any]:
    """Every user collection: documents sorted by _id, and its indexes by name (key, unique)."""
    state: dict[str, Any] = {}
    for db in sorted(set(client.list_database_names()) - {"admin", "local", "config"}):
        for coll in sorted(client[db].list_collection_names()):
            indexes = {
                ix["name"]: (list(ix["key"].items()), bool(ix.get("unique", False)))
                for ix in client[db][coll].list_indexes()
            }
            state[f"{db}.{coll}"] = {
                "documents": list(client[db][coll].find().sort("_id")),
                "indexes": indexes,
            }
    return state


def change(client: MongoClient[Any]) -> None:
    """What happens to a deployment after its backup: every kind of drift a load must undo."""
    client.shop.orders.delete_many({"_id": {"$lt": 100}})
    # A few documents only: FerretDB 1.x updates one document at a time (slow on thousands).
    client.shop.orders.update_many({"_id": {"$in": [200, 201, 2499]}}, {"$set": {"paid": "maybe"}})
    client.shop.orders.insert_one({"_id": 10_000_000, "late": True})
    client.shop.customers.drop_index("email_unique")
    client.shop.customers.create_index([("name.first", ASCENDING)], name="by_first")
    client.shop.empty.insert_one({"_id": 1})
    client.audit.drop_collection("events")
    client.audit.newcomer.insert_one({"_id": 1})
    client.scratch.stuff.insert_many([{"_id": i} for i in range(10)])


def dump_to(server: FerretDBProcess, directory: Path) -> DirectorySource:
    return save_dump(ENGINE.data_dump(make_spec(), connection(server)), directory)


def test_dump_change_load_restores_exactly_the_dump(servers: Servers, tmp_path: Path) -> None:
    server = servers("a", repl_set_name=NAME)
    spec, conn = make_spec(), connection(server)
    with server.client() as client:
        seed(client)
        original = snapshot(client)
    before = ENGINE.data_inventory(spec, conn)
    assert before == {
        "db/audit/events/documents": 300,
        "db/shop/customers/documents": 40,
        "db/shop/empty/documents": 0,
        "db/shop/orders/documents": ORDERS,
    }

    source = dump_to(server, tmp_path / "dump")
    # The dump counted the documents it streamed, as the inventory names them (what a backup records).
    assert ENGINE.counts_in_dump and ENGINE.data_dump_counts(source.objects) == before
    expected_names = []
    for db in sorted(SEEDED):
        for coll in SEEDED[db]:
            expected_names += [f"{db}/{coll}.bson", f"{db}/{coll}.indexes.json"]
    assert [o.name for o in source.objects] == expected_names
    orders = next(o for o in source.objects if o.name == "shop/orders.bson")
    assert orders.size > 1 << 20, "the orders stream should span several reads"
    assert orders.meta["database"] == "shop" and orders.meta["collection"] == "orders"

    with server.client() as client:
        change(client)
        assert snapshot(client) != original
    assert ENGINE.data_inventory(spec, conn) != before

    report = ENGINE.data_load(spec, conn, source)

    with server.client() as client:
        assert snapshot(client) == original
    assert report.counts == before
    assert ENGINE.data_inventory(spec, conn) == report.counts
    assert "dropped database scratch" in report.actions


def test_load_into_a_fresh_second_server(servers: Servers, tmp_path: Path) -> None:
    origin = servers("a", repl_set_name=NAME)
    # A plain server (the direct-connection path) with authentication on.
    target = servers("b", password=PASSWORD)
    with origin.client() as client:
        seed(client)
        original = snapshot(client)
    source = dump_to(origin, tmp_path / "dump")

    report = ENGINE.data_load(make_spec(), connection(target), source)

    with target.client() as client:
        loaded = snapshot(client)
    assert loaded == original
    assert loaded["shop.customers"]["indexes"]["email_unique"] == ([("email", 1)], True)
    assert loaded["audit.events"]["indexes"]["kind_at"] == ([("kind", 1), ("at", -1)], False)
    assert ENGINE.data_inventory(make_spec(), connection(target)) == report.counts
    # The unique index is real on the target, not just listed.
    with target.client() as client, pytest.raises(Exception, match="duplicate key"):
        client.shop.customers.insert_one({"email": "user1@example.com"})


def test_wrong_password_is_refused_without_showing_it(servers: Servers, tmp_path: Path) -> None:
    server = servers("b", password=PASSWORD)
    wrong = "not-the-password-42"
    with pytest.raises(MoorageError) as failure:
        ENGINE.data_inventory(make_spec(), connection(server, wrong))
    assert "Authentication failed" in str(failure.value)
    assert wrong not in str(failure.value) and PASSWORD not in str(failure.value)


def test_corrupt_object_fails_the_load_and_a_good_load_recovers(servers: Servers, tmp_path: Path) -> None:
    server = servers("a", repl_set_name=NAME)
    spec, conn = make_spec(), connection(server)
    with server.client() as client:
        seed(client)
        original = snapshot(client)
    good = dump_to(server, tmp_path / "good")
    shutil.copytree(good.directory, tmp_path / "bad")
    bad = DirectorySource(tmp_path / "bad")
    # Flip one byte inside a string value (the notes are 400 'x'): the BSON still parses, so only
    # the checksum at the end of the stream can catch it.
    path = bad.path("shop/orders.bson")
    data = bytearray(path.read_bytes())
    offset = data.index(b"x" * 400, len(data) // 2) + 7
    data[offset] = ord("y")
    path.write_bytes(bytes(data))

    with pytest.raises(ChecksumMismatch, match="orders"):
        ENGINE.data_load(spec, conn, bad)
    # The failed load left a half-replaced target (what a killed load leaves too) ...
    with server.client() as client:
        assert snapshot(client) != original

    # ... and loading a good dump over it (the runbook's rollback) gives exactly that dump back.
    report = ENGINE.data_load(spec, conn, good)
    with server.client() as client:
        assert snapshot(client) == original
    assert ENGINE.data_inventory(spec, conn) == report.counts


def test_compatibility_refuses_another_engine_or_format() -> None:
    spec = make_spec()
    assert ENGINE.data_compatibility(DumpOrigin("mongodb", "7.0", "replicaset", 1), spec) is None
    reason = ENGINE.data_compatibility(DumpOrigin("redis", "7.2", "cluster", 3), spec)
    assert reason is not None and "redis" in reason
    reason = ENGINE.data_compatibility(DumpOrigin("mongodb", "7.0", "replicaset", 1, {"format": "x"}), spec)
    assert reason is not None and "format" in reason
