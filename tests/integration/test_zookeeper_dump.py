"""ZooKeeper DataDump / DataLoad on real ZooKeeper 3.8 (Debian), 1-member ensembles.

A nested tree with binary data, a node only a digest user may read, a sequential node and an
ephemeral node held by a live session: dumped (the ephemeral node left out), changed, loaded back
(the tree equal in paths, data and ACLs; the live session's ephemeral node gone), loaded into a
fresh ensemble with another superuser password, and a corrupt dump makes the load fail loudly
before a good load repairs the tree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, Id, make_digest_acl

from middleware.engines.base import Connection
from middleware.engines.zookeeper.engine import ENGINE
from middleware.errors import OperationError
from middleware.runtime.local import LocalRuntime
from middleware.spec import ResolvedSpec
from tests.integration.dumpfiles import ChecksumMismatch, DirectorySource, save_dump
from tests.integration.test_zookeeper import Env, client, manifest, require_zookeeper

pytestmark = pytest.mark.integration

BINARY = bytes(range(256)) * 3
KEYS = 120


@pytest.fixture(autouse=True)
def _zookeeper_installed() -> None:
    require_zookeeper()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path / "state")
    try:
        yield environment
    finally:
        environment.cleanup()


class Ensemble:
    def __init__(self, env: Env, name: str) -> None:
        status = env.lifecycle.up(manifest(name, replicas=1)).to_wire()
        assert status["phase"] == "Ready", status
        self.hosts: str = status["endpoints"]["client"]
        deployment = env.lifecycle.existing("default", name)
        self.spec: ResolvedSpec = deployment.spec
        self.conn: Connection = env.lifecycle.connection(deployment)
        runtime = env.runtime
        assert isinstance(runtime, LocalRuntime)
        self.password = runtime.password(self.spec)

    def superuser(self) -> KazooClient:
        return client(self.hosts, auth_data=[("digest", f"super:{self.password}")])


def tree(ensemble: Ensemble) -> dict[str, Any]:
    """Every persistent znode but /zookeeper: data and ACLs, read as the superuser."""
    zk = ensemble.superuser()
    result: dict[str, Any] = {}
    try:
        stack = ["/"]
        while stack:
            path = stack.pop()
            data, stat = zk.get(path)
            if stat.ephemeralOwner:
                continue
            acls, _ = zk.get_acls(path)
            result[path] = (data, sorted((a.perms, a.id.scheme, a.id.id) for a in acls))
            for name in zk.get_children(path):
                child = f"/{name}" if path == "/" else f"{path}/{name}"
                if child != "/zookeeper":
                    stack.append(child)
    finally:
        zk.stop()
        zk.close()
    return result


def seed(ensemble: Ensemble) -> KazooClient:
    """The tree; returns the open session holding the ephemeral node."""
    zk = ensemble.superuser()
    zk.ensure_path("/app/config")
    for i in range(KEYS):
        zk.create(f"/app/config/key-{i:04d}", f"value-{i}".encode())
    zk.create("/app/blob", BINARY)
    zk.create("/app/empty", b"")
    zk.create("/app/deep/a/b/c/d", b"leaf", makepath=True)
    zk.create("/app/secret", b"classified", acl=[make_digest_acl("alice", "wonderland", all=True)])
    zk.create("/readonly", b"ro", acl=[ACL(1, Id("world", "anyone"))])  # READ only
    zk.create("/queue/item-", b"job", makepath=True, sequence=True)
    zk.create("/app/lock", b"held", ephemeral=True)
    return zk


def test_dump_change_load_and_into_a_fresh_ensemble(env: Env, tmp_path: Path) -> None:
    source_zk = Ensemble(env, "zsrc")
    holder = seed(source_zk)
    try:
        expected = tree(source_zk)
        assert "/app/lock" not in expected and "/app/secret" in expected
        before = ENGINE.data_inventory(source_zk.spec, source_zk.conn)
        assert before == {"znodes": len(expected) - 1}  # "/" is not counted

        dump = save_dump(ENGINE.data_dump(source_zk.spec, source_zk.conn), tmp_path / "dump")
        (obj,) = dump.objects
        assert obj.name == "znodes.jsonl"
        assert int(obj.meta["zxidEnd"], 16) >= int(obj.meta["zxidStart"], 16) > 0
        assert obj.meta["znodes"] == before["znodes"]
        with dump.path("znodes.jsonl").open() as lines:
            paths = [json.loads(line)["path"] for line in lines]
        assert "/app/lock" not in paths and not any(p.startswith("/zookeeper") for p in paths)
        assert paths[0] == "/"
        assert all(p.rsplit("/", 1)[0] in paths[:i] or p.count("/") == 1 for i, p in enumerate(paths[1:], 1))

        # Change the tree: deleted, rewritten, added nodes and an ACL change.
        holder.delete("/app/config/key-0003")
        holder.set("/app/blob", b"overwritten")
        holder.create("/extra/node", b"new", makepath=True)
        holder.set_acls("/app/empty", [make_digest_acl("bob", "x", all=True)])
        assert tree(source_zk) != expected

        report = ENGINE.data_load(source_zk.spec, source_zk.conn, dump)
        assert report.counts == before
        assert ENGINE.data_inventory(source_zk.spec, source_zk.conn) == report.counts
        assert tree(source_zk) == expected
        # The live session's ephemeral node was deleted with the old tree.
        assert holder.exists("/app/lock") is None
    finally:
        holder.stop()
        holder.close()

    # The restricted ACL holds after the restore: alice reads, an anonymous client may not.
    anonymous = client(source_zk.hosts)
    alice = client(source_zk.hosts, auth_data=[("digest", "alice:wonderland")])
    try:
        with pytest.raises(NoAuthError):
            anonymous.get("/app/secret")
        assert alice.get("/app/secret")[0] == b"classified"
        assert anonymous.get("/app/blob")[0] == BINARY
    finally:
        for zk in (anonymous, alice):
            zk.stop()
            zk.close()

    fresh = Ensemble(env, "zdst")
    assert fresh.password != source_zk.password
    report = ENGINE.data_load(fresh.spec, fresh.conn, dump)
    assert ENGINE.data_inventory(fresh.spec, fresh.conn) == report.counts == before
    assert tree(fresh) == expected


def test_corrupt_dump_raises_and_a_good_load_repairs(env: Env, tmp_path: Path) -> None:
    ensemble = Ensemble(env, "zcor")
    seed(ensemble).stop()
    expected = tree(ensemble)
    dump = save_dump(ENGINE.data_dump(ensemble.spec, ensemble.conn), tmp_path / "good")

    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    path = tmp_path / "bad" / "znodes.jsonl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # stays printable: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises((ChecksumMismatch, OperationError)):
        ENGINE.data_load(ensemble.spec, ensemble.conn, DirectorySource(tmp_path / "bad"))

    # Truncated half-way, with a matching checksum: the count in meta catches it.
    shutil.copytree(tmp_path / "good", tmp_path / "short")
    short = tmp_path / "short" / "znodes.jsonl"
    lines = short.read_bytes().splitlines(keepends=True)
    short.write_bytes(b"".join(lines[: len(lines) // 2]))
    index = json.loads((tmp_path / "short" / "index.json").read_text())
    index["objects"][0]["size"] = short.stat().st_size
    index["objects"][0]["sha256"] = hashlib.sha256(short.read_bytes()).hexdigest()
    (tmp_path / "short" / "index.json").write_text(json.dumps(index))
    with pytest.raises(OperationError, match="znodes"):
        ENGINE.data_load(ensemble.spec, ensemble.conn, DirectorySource(tmp_path / "short"))
    assert tree(ensemble) != expected

    report = ENGINE.data_load(ensemble.spec, ensemble.conn, dump)
    assert ENGINE.data_inventory(ensemble.spec, ensemble.conn) == report.counts
    assert tree(ensemble) == expected
