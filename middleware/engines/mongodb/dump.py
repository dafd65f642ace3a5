"""MongoDB DataDump / DataLoad: every user database as BSON streams, loaded back by replacement.

Dump objects, in this order, per database (sorted) and collection (sorted):

- ``<db>/<collection>.bson``: the documents, concatenated BSON exactly as the server sent them (the
  format of mongodump's ``.bson`` files), read by one cursor in natural order and streamed in
  chunks: documents are never decoded, and never all held in memory.
- ``<db>/<collection>.indexes.json``: the index specs except ``_id_``, as MongoDB Extended JSON
  (canonical, so the key order and number types of compound index keys survive).

Skipped: the ``admin``, ``local`` and ``config`` databases (users, roles, the oplog and sharding
state belong to the target deployment), ``system.*`` collections and views.

Load replaces: every database except those three is dropped first (so nothing from before survives,
including what a load killed half-way left), then each collection is created, its documents inserted
in batches decoded one document at a time from the stream, and its indexes created.

The client: on a replica set, a replica-set client over every member that is up (the dump reads with
``secondaryPreferred``, sparing the primary; inventory and load use the primary, and load writes
with ``w: majority``); on a server that is not in a replica set (a standalone, or FerretDB in the
tests) a direct connection to it. Which one is decided by ``hello``, which needs no credentials.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

from bson import json_util
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, ReadPreference
from pymongo.errors import CollectionInvalid, PyMongoError
from pymongo.read_preferences import _ServerMode

from middleware.endpoints import Endpoint
from middleware.engines.base import (
    Connection,
    DataSource,
    DumpObject,
    DumpOrigin,
    LoadReport,
    Progress,
    StoredObject,
    no_progress,
)
from middleware.engines.mongodb import replicaset
from middleware.engines.mongodb.config import ADMIN_USER
from middleware.engines.mongodb.topology import DATA_COMPONENT
from middleware.engines.streams import ChunkStream
from middleware.errors import NotReady, OperationError

ENGINE = "mongodb"
FORMAT = "bson-v1"
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
DOCUMENTS_SUFFIX = ".bson"
INDEXES_SUFFIX = ".indexes.json"
# Bytes handed to the caller per read of a dump stream.
CHUNK = 4 << 20
# An insert batch is flushed at whichever comes first (the server's own limit is 48 MB / 100k).
BATCH_DOCUMENTS = 1000
BATCH_BYTES = 8 << 20
# Documents are at most 16 MiB; a length prefix beyond this is corruption, not a document to buffer.
MAX_DOCUMENT_BYTES = 16 << 20
# Per getMore while dumping: bounds what one cursor batch holds in memory.
CURSOR_BATCH = 1000
COMMAND_TIMEOUT_MS = 300_000
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
PLAIN: CodecOptions[dict[str, Any]] = CodecOptions(document_class=dict)

Client = MongoClient[RawBSONDocument]


def inventory_key(database: str, collection: str) -> str:
    return f"db/{database}/{collection}/documents"


# --------------------------------------------------------------------------------------------------
# The client


def _set_name(endpoints: list[Endpoint]) -> tuple[Endpoint, str | None]:
    """The first member answering ``hello`` and its replica set name (None: not in a set)."""
    errors = []
    for endpoint in endpoints:
        try:
            with replicaset.connect(endpoint) as client:
                hello = replicaset.command(client, endpoint, {"hello": 1})
        except OperationError as error:
            errors.append(str(error))
            continue
        name = hello.get("setName")
        return endpoint, str(name) if name else None
    raise NotReady(f"no MongoDB member answers hello: {'; '.join(errors) or 'no member is up'}")


@contextmanager
def open_client(conn: Connection, read_preference: _ServerMode) -> Iterator[tuple[Client, bool]]:
    """A client for data operations and whether the deployment is a replica set.

    ``conn.password`` None connects without authentication (a server without access control, such
    as FerretDB's SQLite handler in the tests); otherwise as the admin user against ``admin``."""
    up = [m.endpoint for m in sorted(conn.of(DATA_COMPONENT), key=lambda m: m.plan.ordinal) if m.up]
    seed, set_name = _set_name(up)
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": replicaset.CONNECT_TIMEOUT_MS,
        "connectTimeoutMS": replicaset.CONNECT_TIMEOUT_MS,
        "socketTimeoutMS": COMMAND_TIMEOUT_MS,
        "appname": "moorage-backup",
        "document_class": RawBSONDocument,
        "read_preference": read_preference,
    }
    if conn.password:
        options.update(username=ADMIN_USER, password=conn.password, authSource="admin")
    client: Client
    if set_name is None:
        client = MongoClient(seed.host, seed.port, directConnection=True, **options)
    else:
        # Drops and inserts acknowledged by a majority: a failover during a load cannot undo part of
        # it after the runbook has verified it.
        hosts = [e.address for e in up]
        client = MongoClient(hosts, replicaSet=set_name, w="majority", **options)
    try:
        yield client, set_name is not None
    finally:
        client.close()


def _failed(what: str, error: PyMongoError) -> OperationError:
    # pymongo's messages carry the server's reason, never the credentials.
    return OperationError(f"{what}: {error}")


def _user_collections(client: Client, database: str) -> list[str]:
    """The database's collections Moorage dumps: real collections, not views, not ``system.*``."""
    names = client[database].list_collection_names(filter={"type": "collection"})
    return sorted(n for n in names if not n.startswith("system."))


def _user_databases(client: Client) -> list[str]:
    return sorted(n for n in client.list_database_names() if n not in SYSTEM_DATABASES)


# --------------------------------------------------------------------------------------------------
# Dump


def _document_chunks(client: Client, database: str, collection: str, counter: list[int]) -> Iterator[bytes]:
    """The collection's documents as raw BSON, joined into chunks of about CHUNK bytes."""
    what = f"dumping {database}.{collection}"
    buffer = bytearray()
    try:
        cursor = (
            client[database].get_collection(collection, codec_options=RAW).find({}, batch_size=CURSOR_BATCH)
        )
        with cursor:
            for document in cursor:
                buffer += document.raw
                counter[0] += 1
                if len(buffer) >= CHUNK:
                    yield bytes(buffer)
                    buffer.clear()
    except PyMongoError as error:
        raise _failed(what, error) from None
    if buffer:
        yield bytes(buffer)


def _index_specs(client: Client, database: str, collection: str) -> list[dict[str, Any]]:
    specs = []
    try:
        # Plain ordered dicts (not raw BSON): a compound key keeps its field order through JSON.
        indexes = client[database].get_collection(collection, codec_options=PLAIN).list_indexes()
        for index in indexes:
            # "v" (the index format version) is the target server's choice, as with mongorestore's
            # defaults; "ns" is the source's own namespace.
            spec = {k: v for k, v in index.items() if k not in ("v", "ns")}
            if spec.get("name") != "_id_":
                specs.append(spec)
    except PyMongoError as error:
        raise _failed(f"listing the indexes of {database}.{collection}", error) from None
    return specs


def dump(conn: Connection, progress: Progress = no_progress) -> Iterator[DumpObject]:
    with open_client(conn, ReadPreference.SECONDARY_PREFERRED) as (client, _):
        try:
            plan = [(db, coll) for db in _user_databases(client) for coll in _user_collections(client, db)]
        except PyMongoError as error:
            raise _failed("listing databases and collections to dump", error) from None
        for done, (database, collection) in enumerate(plan):
            progress(f"dumping {database}.{collection}", done, len(plan))
            meta = {"database": database, "collection": collection, "format": FORMAT}
            counter = [0]
            stream = ChunkStream(_document_chunks(client, database, collection, counter))
            yield DumpObject(
                f"{database}/{collection}{DOCUMENTS_SUFFIX}",
                io.BufferedReader(stream, CHUNK),
                {**meta, "kind": "documents"},
            )
            # Index specs after the documents: they are read once the documents are streamed.
            specs = json_util.dumps(
                _index_specs(client, database, collection), json_options=CANONICAL_JSON_OPTIONS
            )
            yield DumpObject(
                f"{database}/{collection}{INDEXES_SUFFIX}",
                io.BytesIO(specs.encode()),
                {**meta, "kind": "indexes", "documents": counter[0]},
            )
        progress("dump complete", len(plan), len(plan))


# --------------------------------------------------------------------------------------------------
# Inventory, compatibility


def inventory(conn: Connection) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open_client(conn, ReadPreference.PRIMARY) as (client, _):
        try:
            for database in _user_databases(client):
                for collection in _user_collections(client, database):
                    # Exact (a scan), unlike collection metadata counts after an unclean shutdown.
                    counts[inventory_key(database, collection)] = client[database][
                        collection
                    ].count_documents({})
        except PyMongoError as error:
            raise _failed("counting documents", error) from None
    return counts


def dumped_counts(objects: Sequence[StoredObject]) -> dict[str, int]:
    """What a stored dump holds, named as ``inventory`` names it: the documents of each collection
    as the dump streamed them (recorded with its indexes, once its documents were read)."""
    return {
        inventory_key(str(obj.meta["database"]), str(obj.meta["collection"])): int(obj.meta["documents"])
        for obj in objects
        if obj.meta.get("kind") == "indexes"
    }


def compatibility(origin: DumpOrigin) -> str | None:
    if origin.engine != ENGINE:
        return f"the backup is of {origin.engine}, the target runs {ENGINE}"
    dump_format = origin.meta.get("format")
    if dump_format is not None and dump_format != FORMAT:
        return f"the backup's MongoDB dump format is {dump_format!r}; this Moorage reads {FORMAT!r}"
    return None


# --------------------------------------------------------------------------------------------------
# Load


def _target(obj: StoredObject) -> tuple[str, str, str]:
    """(database, collection, kind) of a stored object, from its meta or else its name."""
    database, collection, kind = obj.meta.get("database"), obj.meta.get("collection"), obj.meta.get("kind")
    if isinstance(database, str) and isinstance(collection, str) and kind in ("documents", "indexes"):
        return database, collection, str(kind)
    db, sep, rest = obj.name.partition("/")
    for suffix, what in ((DOCUMENTS_SUFFIX, "documents"), (INDEXES_SUFFIX, "indexes")):
        if sep and rest.endswith(suffix) and len(rest) > len(suffix):
            return db, rest[: -len(suffix)], what
    raise OperationError(
        f"dump object {obj.name!r} is not <db>/<collection>{DOCUMENTS_SUFFIX} or {INDEXES_SUFFIX}"
    )


def _documents(stream: BinaryIO, name: str) -> Iterator[RawBSONDocument]:
    """Documents of a ``.bson`` stream one at a time (bounded: one document in memory at most).

    Like ``bson.decode_file_iter``, but a corrupt length prefix is refused before it is buffered.
    The stream is read to EOF, where a DataSource checks the object's checksum."""
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) != 4:
            raise OperationError(f"{name}: cut off in the length of a document")
        (size,) = struct.unpack("<i", head)
        if not 5 <= size <= MAX_DOCUMENT_BYTES:
            raise OperationError(f"{name}: a document length of {size} bytes is corrupt")
        body = stream.read(size - 4)
        if len(body) != size - 4:
            raise OperationError(f"{name}: cut off inside a document")
        try:
            yield RawBSONDocument(head + body, RAW)
        except BSONError as error:
            raise OperationError(f"{name}: invalid BSON: {error}") from None


def _ensure_collection(client: Client, database: str, collection: str) -> None:
    # Already there: its indexes object came first.
    with contextlib.suppress(CollectionInvalid):
        client[database].create_collection(collection)


def _insert(client: Client, database: str, collection: str, batch: list[RawBSONDocument]) -> None:
    client[database][collection].insert_many(batch, ordered=True)


def _load_documents(
    client: Client, source: DataSource, obj: StoredObject, database: str, collection: str
) -> int:
    loaded = 0
    batch: list[RawBSONDocument] = []
    size = 0
    with source.open(obj.name) as stream:
        for document in _documents(stream, obj.name):
            batch.append(document)
            size += len(document.raw)
            if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
                _insert(client, database, collection, batch)
                loaded += len(batch)
                batch, size = [], 0
    if batch:
        _insert(client, database, collection, batch)
        loaded += len(batch)
    return loaded


def _load_indexes(
    client: Client, source: DataSource, obj: StoredObject, database: str, collection: str
) -> int:
    # Index specs are small (one entry per index): read whole, still through the checksummed stream.
    with source.open(obj.name) as stream:
        text = stream.read()
    try:
        specs = json_util.loads(text, json_options=CANONICAL_JSON_OPTIONS)
    except ValueError as error:
        raise OperationError(f"{obj.name}: not a JSON list of index specs: {error}") from None
    if not isinstance(specs, list) or not all(
        isinstance(s, dict) and "key" in s and "name" in s for s in specs
    ):
        raise OperationError(f"{obj.name}: not a JSON list of index specs with key and name")
    if specs:
        client[database].command("createIndexes", collection, indexes=specs)
    return len(specs)


def load(conn: Connection, source: DataSource, progress: Progress = no_progress) -> LoadReport:
    report = LoadReport()
    objects = source.objects
    targets = [(obj, *_target(obj)) for obj in objects]
    with open_client(conn, ReadPreference.PRIMARY) as (client, _):
        step = ""
        try:
            step = "listing the target's databases"
            existing = _user_databases(client)
            for database in existing:
                step = f"dropping database {database}"
                client.drop_database(database)
                report.actions.append(f"dropped database {database}")
            for done, (obj, database, collection, kind) in enumerate(targets):
                step = f"loading {obj.name}"
                progress(step, done, len(targets))
                _ensure_collection(client, database, collection)
                report.counts.setdefault(inventory_key(database, collection), 0)
                if kind == "documents":
                    n = _load_documents(client, source, obj, database, collection)
                    report.counts[inventory_key(database, collection)] += n
                    report.actions.append(f"inserted {n} documents into {database}.{collection}")
                else:
                    n = _load_indexes(client, source, obj, database, collection)
                    report.actions.append(f"created {n} indexes on {database}.{collection}")
        except PyMongoError as error:
            raise _failed(step, error) from None
        progress("load complete", len(targets), len(targets))
    return report
