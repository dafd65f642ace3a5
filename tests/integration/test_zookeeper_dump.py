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
from kazoo.exceptions import NoAuthError, NodeExistsError
from kazoo.security import ACL, Id, make_digest_acl

from middleware.engines.base import Connection
from middleware.engines.zookeeper import dump as dump_module
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
        # What a backup records: the dump's own count, the ephemeral lock left out as the inventory does.
        assert ENGINE.counts_in_dump and ENGINE.data_dump_counts(dump.objects) == before
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


# Sequence counters. ZooKeeper names a sequential child after its parent's count of child creations;
# a restore that only recreated the surviving children would restart that count.


def _sequential_children(zk: KazooClient, parent: str, prefix: str, created: int, deleted: int) -> None:
    """A queue's life: ``created`` sequential items, the first ``deleted`` consumed (pipelined)."""
    for result in [zk.create_async(f"{parent}/{prefix}", b"job", sequence=True) for _ in range(created)]:
        result.get(timeout=60)
    for result in [zk.delete_async(f"{parent}/{prefix}{i:010d}") for i in range(deleted)]:
        result.get(timeout=60)


def _rewrite(directory: Path, lines: list[bytes]) -> None:
    """Replace a saved dump's znodes.jsonl, with a matching size and checksum in its index."""
    path = directory / "znodes.jsonl"
    path.write_bytes(b"".join(lines))
    index = json.loads((directory / "index.json").read_text())
    index["objects"][0]["size"] = path.stat().st_size
    index["objects"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "index.json").write_text(json.dumps(index))


def test_restored_queue_continues_its_sequence(env: Env, tmp_path: Path) -> None:
    source = Ensemble(env, "zseq")
    zk = source.superuser()
    try:
        zk.create("/queue", b"")
        _sequential_children(zk, "/queue", "item-", created=20, deleted=10)
        # A lock whose first holder is a live session: its ephemeral child is not restored, so the
        # restore creates fewer children than the dumped count (an odd cversion gap).
        zk.create("/locks", b"")
        zk.create("/locks/lock-", b"", sequence=True, ephemeral=True)
        zk.create("/locks/lock-", b"", sequence=True)
        before = {p: zk.exists(p) for p in ("/queue", "/locks")}
        assert (before["/queue"].cversion, before["/queue"].numChildren) == (30, 10)
        expected = tree(source)
        dump = save_dump(ENGINE.data_dump(source.spec, source.conn), tmp_path / "dump")
    finally:
        zk.stop()
        zk.close()

    target = Ensemble(env, "zseqdst")
    report = ENGINE.data_load(target.spec, target.conn, dump)
    assert any("raised the sequence counters" in action for action in report.actions), report.actions
    # No throwaway child stayed behind, and verification counts exactly the restored nodes.
    assert tree(target) == {p: v for p, v in expected.items() if p != "/locks/lock-0000000000"}
    assert ENGINE.data_inventory(target.spec, target.conn) == report.counts
    restored = target.superuser()
    try:
        for path, stat in before.items():
            assert restored.exists(path).cversion >= stat.cversion
        siblings = restored.get_children("/queue")
        assert sorted(siblings) == [f"item-{i:010d}" for i in range(10, 20)]
        # The next item is the one the source would have made: after every restored sibling.
        new = restored.create("/queue/item-", b"next", sequence=True)
        assert new == "/queue/item-0000000020"
        assert all(new.rsplit("/", 1)[1] > name for name in siblings)
        assert restored.create("/locks/lock-", b"", sequence=True) == "/locks/lock-0000000002"
    finally:
        restored.stop()
        restored.close()


def test_large_gap_restored_in_batches_without_leftovers(env: Env, tmp_path: Path) -> None:
    source = Ensemble(env, "zgap")
    zk = source.superuser()
    try:
        zk.create("/big", b"")
        _sequential_children(zk, "/big", "n-", created=5000, deleted=4999)
        dumped = zk.exists("/big")
        assert (dumped.cversion, dumped.numChildren) == (9999, 1)
        dump = save_dump(ENGINE.data_dump(source.spec, source.conn), tmp_path / "dump")
    finally:
        zk.stop()
        zk.close()

    target = Ensemble(env, "zgapdst")
    steps: list[tuple[str, float, float]] = []
    report = ENGINE.data_load(target.spec, target.conn, dump, lambda s, d, t: steps.append((s, d, t)))
    assert any("4999 throwaway create/delete pairs" in action for action in report.actions), report.actions
    counters = [(d, t) for s, d, t in steps if s == "restoring sequence counters"]
    assert counters and counters[-1] == (4999, 4999)
    assert ENGINE.data_inventory(target.spec, target.conn) == report.counts == {"znodes": 1 + 1}
    restored = target.superuser()
    try:
        stat = restored.exists("/big")
        assert stat.cversion >= dumped.cversion
        assert restored.get_children("/big") == ["n-0000004999"]

        # A parent already past the wanted count needs nothing: no pair, no change.
        assert dump_module.raise_sequence_counter(restored, "/big", 10) == 0
        assert restored.exists("/big").cversion == stat.cversion
        # Raising it further by an exact amount: one creation per pair, nothing left behind.
        assert dump_module.raise_sequence_counter(restored, "/big", 5003) == 3
        assert restored.get_children("/big") == ["n-0000004999"]
        assert restored.create("/big/n-", b"", sequence=True) == "/big/n-0000005003"
        with pytest.raises(OperationError, match="/gone"):
            dump_module.raise_sequence_counter(restored, "/gone", 5)
        # A transaction the server refuses (an ephemeral node has no children) fails whole, loudly.
        restored.create("/eph", b"", ephemeral=True)
        with pytest.raises(OperationError, match="/eph: raising its sequence counter failed"):
            dump_module.raise_sequence_counter(restored, "/eph", 3)
        assert restored.get_children("/eph") == []
    finally:
        restored.stop()
        restored.close()


def test_dump_without_cversion_still_loads(env: Env, tmp_path: Path) -> None:
    ensemble = Ensemble(env, "zold")
    zk = ensemble.superuser()
    try:
        zk.create("/queue", b"")
        _sequential_children(zk, "/queue", "item-", created=20, deleted=10)
        zk.create("/app/config", b"cfg", makepath=True)
        expected = tree(ensemble)
        dump = save_dump(ENGINE.data_dump(ensemble.spec, ensemble.conn), tmp_path / "dump")
        lines = dump.path("znodes.jsonl").read_bytes().splitlines(keepends=True)
        assert all(b'"cversion"' in line for line in lines)

        # The format before sequence counters were recorded: the same records without the two fields.
        shutil.copytree(tmp_path / "dump", tmp_path / "old")
        old_lines = []
        for line in lines:
            record = json.loads(line)
            del record["cversion"], record["numChildren"]
            old_lines.append((json.dumps(record) + "\n").encode())
        _rewrite(tmp_path / "old", old_lines)

        report = ENGINE.data_load(ensemble.spec, ensemble.conn, DirectorySource(tmp_path / "old"))
        assert not any("sequence counters" in action for action in report.actions)
        assert ENGINE.data_inventory(ensemble.spec, ensemble.conn) == report.counts
        assert tree(ensemble) == expected
        # As before: the counter restarts from the number of restored children, so the next item
        # is named like one that already exists.
        with pytest.raises(NodeExistsError):
            zk.create("/queue/item-", b"", sequence=True)

        # The current format repairs it on the next load.
        ENGINE.data_load(ensemble.spec, ensemble.conn, dump)
        assert tree(ensemble) == expected
        assert zk.create("/queue/item-", b"", sequence=True) == "/queue/item-0000000020"
    finally:
        zk.stop()
        zk.close()
