"""The ZooKeeper engine on real ZooKeeper 3.8 from Debian (`apt-get install zookeeper`, Java 17).

Through LocalRuntime + Lifecycle (as the CLI drives them) and through the `moorage` CLI itself:
an ensemble is created, scaled 3 → 5 → 3 (→ 4, bringing back a member voted out earlier) with
dynamic reconfig while a client writes, never losing its leader; a member that lost its data
rejoins and serves the whole tree again; a scale-in that would leave no quorum is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NodeExistsError
from kazoo.security import make_digest_acl

from middleware.endpoints import Endpoint
from middleware.engines.base import Connection, exporter_dirs
from middleware.engines.zookeeper import ensemble
from middleware.engines.zookeeper.engine import DEBIAN_CLASSPATH, ENGINE, METRICS_JARS_SUBDIR
from middleware.engines.zookeeper.launch import METRICS_PROVIDER_JAR_PREFIX, four_letter_word
from middleware.errors import OperationError
from middleware.lifecycle import Deployment, Lifecycle
from middleware.runtime.local import LocalRuntime
from middleware.spec import ResolvedSpec
from tests.integration.cli import REPO, Moorage, session
from tests.integration.harness import local_member_records, require_binary

pytestmark = pytest.mark.integration

DEADLINE = 60.0
NAME = "coord"


def require_zookeeper() -> None:
    """Skip (with the fix) unless Java, Debian's ZooKeeper jars and the Prometheus provider's jars
    (members export metrics by default) are installed; under MOORAGE_EXPORTERS_REQUIRED=1 (make
    test) a missing provider fails instead."""
    require_binary("java", "openjdk-17-jre-headless")
    missing = [e for e in DEBIAN_CLASSPATH.split(":") if e.endswith(".jar") and not Path(e).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: run `make setup` (apt-get install zookeeper)")
    if not any(
        Path(d, METRICS_JARS_SUBDIR).glob(f"{METRICS_PROVIDER_JAR_PREFIX}*.jar") for d in exporter_dirs()
    ):
        why = (
            "ZooKeeper's Prometheus provider jars not installed: run `make setup` (hack/install-exporters.sh)"
        )
        if os.environ.get("MOORAGE_EXPORTERS_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _zookeeper_installed() -> None:
    require_zookeeper()


def manifest(name: str = NAME, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name},
        "spec": {"engine": "zookeeper", "topology": "ensemble", **spec},
    }


class Env:
    def __init__(self, state_dir: Path) -> None:
        self.runtime = LocalRuntime(state_dir)
        self.lifecycle = Lifecycle(self.runtime)

    def deployment(self, replicas: int, name: str = NAME) -> Deployment:
        return self.lifecycle.prepare(manifest(name, replicas=replicas))

    def spec(self, replicas: int, name: str = NAME) -> ResolvedSpec:
        return self.deployment(replicas, name).spec

    def conn(self, replicas: int, name: str = NAME) -> Connection:
        return self.lifecycle.connection(self.deployment(replicas, name))

    def cleanup(self) -> None:
        for namespace, name in self.runtime.list():
            self.runtime.delete(namespace, name, purge=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path / "state")
    try:
        yield environment
    finally:
        environment.cleanup()


def addresses(status: dict[str, Any], names: list[str] | None = None) -> str:
    return ",".join(m["address"] for m in status["members"] if names is None or m["name"] in names)


def roles(status: dict[str, Any]) -> list[str]:
    return sorted(m["role"] for m in status["members"])


def client(hosts: str, **kwargs: Any) -> KazooClient:
    zk = KazooClient(hosts=hosts, timeout=10.0, **kwargs)
    zk.start(timeout=DEADLINE)
    return zk


def wait_for(what: str, check: Any, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Witness(threading.Thread):
    """A client that writes numbered znodes through the members that stay, and polls those members
    for a leader, until stopped (bounded either way). Quorum kept means: every write acknowledged,
    and every poll found a leader."""

    def __init__(self, hosts: str, staying: list[Endpoint], limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.zk = client(hosts)
        self.staying = staying
        self.limit = limit
        self.written: list[str] = []
        self.failures: list[str] = []
        self.polls = 0
        self.leaderless_polls = 0
        self.halt = threading.Event()

    def run(self) -> None:
        self.zk.ensure_path("/witness")
        for i in range(self.limit):
            if self.halt.is_set():
                return
            path = f"/witness/{i:06d}"
            try:
                self.zk.create(path, str(i).encode())
                self.written.append(path)
            except NodeExistsError:
                self.written.append(path)
            except KazooException as error:
                self.failures.append(f"{path}: {error!r}")
            if i % 20 == 0:
                self.polls += 1
                view = ensemble.observe(self.staying)
                if view.leader is None:
                    self.leaderless_polls += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=DEADLINE)
        self.zk.stop()
        self.zk.close()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_ports_released(env: Env, member: str) -> None:
    """A SIGKILLed JVM's sockets outlive its PID for a moment (its threads are still exiting).
    `up` right then would find the ports busy and give the member new ones, and a ZooKeeper server
    cannot change its addresses behind the ensemble's back (they are in the replicated config):
    wait, as a crash some seconds ago would have."""
    ports = local_member_records(env.runtime.root, "default", NAME)[member]["ports"].values()
    wait_for(f"the ports of {member} to be released", lambda: all(_bindable(p) for p in ports))


def seed(hosts: str, count: int = 200) -> list[str]:
    zk = client(hosts)
    try:
        zk.ensure_path("/app/config")
        paths = []
        for i in range(count):
            path = f"/app/config/key-{i:04d}"
            zk.create(path, f"value-{i}".encode())
            paths.append(path)
        return paths
    finally:
        zk.stop()
        zk.close()


def assert_tree(hosts: str, paths: list[str]) -> None:
    """Read every path from the given server(s) only, after a sync so the read is not stale."""
    zk = client(hosts, randomize_hosts=False)
    try:
        zk.sync("/")
        missing = [p for p in paths if zk.exists(p) is None]
        assert not missing, f"{len(missing)} znodes missing on {hosts}, e.g. {missing[:5]}"
    finally:
        zk.stop()
        zk.close()


def test_ensemble_scales_3_5_3_4_with_reconfig_never_losing_quorum(env: Env) -> None:
    status = env.lifecycle.up(manifest(replicas=3)).to_wire()
    assert status["phase"] == "Ready", status
    assert roles(status) == ["follower", "follower", "leader"]
    assert all(m["healthy"] for m in status["members"])
    assert status["endpoints"]["client"] == addresses(status)
    paths = seed(status["endpoints"]["client"])

    staying_names = [f"{NAME}-{i}" for i in range(3)]
    staying = [Endpoint.parse(m["address"]) for m in status["members"] if m["name"] in staying_names]
    witness = Witness(addresses(status, staying_names), staying)
    witness.start()
    try:
        grown = env.lifecycle.up(manifest(replicas=5)).to_wire()
        assert grown["phase"] == "Ready", grown
        assert roles(grown) == ["follower"] * 4 + ["leader"]
        assert all(m["healthy"] for m in grown["members"])
        view = ensemble.observe([Endpoint.parse(m["address"]) for m in grown["members"]])
        assert view.membership is not None and view.membership.voters == {1, 2, 3, 4, 5}
        assert view.synced_voters() == {1, 2, 3, 4, 5}

        shrunk = env.lifecycle.up(manifest(replicas=3)).to_wire()
        assert shrunk["phase"] == "Ready", shrunk
        assert sorted(m["name"] for m in shrunk["members"]) == staying_names
    finally:
        witness.stop()
    assert witness.written, "the witness never wrote: the test proved nothing"
    assert witness.polls > 0
    assert witness.failures == [], witness.failures[:5]
    assert witness.leaderless_polls == 0
    view = ensemble.observe(staying)
    assert view.membership is not None and view.membership.voters == {1, 2, 3}
    # The voted-out members were stopped by the runtime after they left, not before.
    assert [m.up for m in env.runtime.members(env.spec(5), ENGINE)][3:] == [False, False]
    for member in shrunk["members"]:
        assert_tree(member["address"], paths + witness.written)

    # A member voted out earlier comes back: its old config does not list it any more, and the
    # launcher starts it from the committed config + itself, then reconfig votes it in.
    again = env.lifecycle.up(manifest(replicas=4)).to_wire()
    assert again["phase"] == "Ready", again
    assert roles(again) == ["follower"] * 3 + ["leader"]
    returning = next(m for m in again["members"] if m["name"] == f"{NAME}-3")
    assert returning["healthy"]
    assert_tree(returning["address"], paths)


def test_a_member_that_lost_its_data_rejoins_and_serves_the_tree(env: Env) -> None:
    status = env.lifecycle.up(manifest(replicas=3)).to_wire()
    paths = seed(status["endpoints"]["client"])
    victim = next(m for m in status["members"] if m["role"] == "follower")
    spec = env.spec(3)

    env.runtime.kill_member(spec, victim["name"])
    data_dir = env.runtime.root / "default" / NAME / "members" / victim["name"] / "data"
    shutil.rmtree(data_dir / "version-2")
    assert (data_dir / "myid").exists() and (data_dir / "zoo.cfg").exists()
    # The ensemble keeps serving with two of three.
    degraded = env.lifecycle.status("default", NAME).to_wire()
    assert degraded["phase"] == "Degraded", degraded
    assert next(m for m in degraded["members"] if m["name"] == victim["name"])["healthy"] is False

    env.runtime.start_member(spec, ENGINE, victim["name"])

    def back() -> dict[str, Any] | None:
        now = env.lifecycle.status("default", NAME).to_wire()
        member = next(m for m in now["members"] if m["name"] == victim["name"])
        return now if now["phase"] == "Ready" and member["healthy"] else None

    wait_for(f"{victim['name']} to sync again", back)
    assert (data_dir / "version-2").is_dir()
    assert_tree(victim["address"], paths)

    # The whole member directory lost (a new, empty volume): `up` writes a fresh config and myid,
    # and the member rejoins from the live ensemble the same way.
    env.runtime.kill_member(spec, victim["name"])
    wait_for_ports_released(env, victim["name"])
    shutil.rmtree(data_dir.parent)
    again = env.lifecycle.up(manifest(replicas=3)).to_wire()
    assert again["phase"] == "Ready", again
    assert next(m for m in again["members"] if m["name"] == victim["name"])["healthy"]
    assert_tree(victim["address"], paths)


def test_scale_in_that_would_lose_the_quorum_is_refused(env: Env) -> None:
    env.lifecycle.up(manifest(replicas=5))
    old, new = env.spec(5), env.spec(3)
    # Two of the three members that would stay die; the five-member ensemble still has 3 of 5.
    for name in (f"{NAME}-1", f"{NAME}-2"):
        env.runtime.kill_member(old, name)
    conn = env.conn(5)
    up = [m for m in conn.members if m.up]
    assert len(up) == 3
    with pytest.raises(OperationError, match="quorum"):
        ENGINE.scale(old, new, conn)
    view = ensemble.observe([m.endpoint for m in up])
    assert view.membership is not None and view.membership.voters == {1, 2, 3, 4, 5}
    assert view.leader is not None and view.quorum_ok


def test_reconfig_needs_the_superuser(env: Env) -> None:
    status = env.lifecycle.up(manifest(replicas=3)).to_wire()
    assert status["phase"] == "Ready"
    hosts = status["endpoints"]["client"]
    anonymous = client(hosts)
    try:
        with pytest.raises(NoAuthError):
            anonymous.reconfig(joining=None, leaving="3", new_members=None)
    finally:
        anonymous.stop()
        anonymous.close()
    # The generated password is the digest superuser's; it is in no config file or command line.
    password = env.runtime.password(env.spec(3))
    member_dir = env.runtime.root / "default" / NAME / "members" / f"{NAME}-0"
    for path in member_dir.rglob("*"):
        if path.is_file() and path.name != "member.log":
            assert password not in path.read_text(errors="replace"), path
    assert oct((member_dir / "secrets.conf").stat().st_mode & 0o777) == "0o600"
    pid = local_member_records(env.runtime.root, "default", NAME)[f"{NAME}-0"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert "QuorumPeerMain" in cmdline and "superDigest" not in cmdline and password not in cmdline
    # The superuser passes every ACL: it reads a znode only its owner may read.
    owner = client(hosts, auth_data=[("digest", "owner:owner-pw")])
    try:
        owner.create("/private", b"secret", acl=[make_digest_acl("owner", "owner-pw", all=True)])
    finally:
        owner.stop()
        owner.close()
    anonymous = client(hosts)
    admin = client(hosts, auth_data=[("digest", f"super:{password}")])
    try:
        with pytest.raises(NoAuthError):
            anonymous.get("/private")
        assert admin.get("/private")[0] == b"secret"
    finally:
        for zk in (anonymous, admin):
            zk.stop()
            zk.close()


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def moorage(tmp_path: Path) -> Iterator[Moorage]:
    # Wide enough that the status table keeps each member's role and the endpoints on one line.
    with session(tmp_path / "state", columns=200) as cli:
        yield cli


def test_cli_up_the_example_scale_status_set_and_purge(moorage: Moorage) -> None:
    example = REPO / "examples" / "zookeeper.yaml"
    up = moorage.json("up", "-f", str(example))
    name = up["name"]
    assert up["phase"] == "Ready", up
    assert up["engine"] == "zookeeper" and up["topology"] == "ensemble"
    assert roles(up) == ["follower", "follower", "leader"]
    paths = seed(up["endpoints"]["client"], count=50)

    status = moorage.json("status", name)
    assert roles(status) == ["follower", "follower", "leader"]
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"

    grown = moorage.json("scale", name, "--replicas", "5")
    assert grown["phase"] == "Ready" and roles(grown) == ["follower"] * 4 + ["leader"], grown
    shrunk = moorage.json("scale", name, "--replicas", "3")
    assert shrunk["phase"] == "Ready" and len(shrunk["members"]) == 3, shrunk
    assert_tree(shrunk["endpoints"]["client"], paths)

    # Every ZooKeeper parameter is read at start only: rolled out by a rolling restart before `set`
    # returns, the tree kept.
    report = moorage.json("set", name, "tickTime=3000")
    assert report == {"appliedLive": {}, "needsRestart": {"tickTime": "3000"}}
    rolled = moorage.json("status", name)
    assert rolled["phase"] == "Ready" and sorted(roles(rolled)) == ["follower", "follower", "leader"], rolled
    for member in rolled["members"]:
        endpoint = Endpoint.parse(member["address"])
        assert "tickTime=3000" in four_letter_word(endpoint.host, endpoint.port, "conf").splitlines()
    assert_tree(rolled["endpoints"]["client"], paths)
    # `connect --exec` opens ZooKeeper's own shell on the ensemble.
    session = moorage.run("connect", name, "--exec", stdin="create /via-exec hello\nget /via-exec\nquit\n")
    said = session.stdout + session.stderr  # the shell prints "Created" on stderr, values on stdout
    assert "Created /via-exec" in said and "hello" in session.stdout and "log4j:WARN" not in said, said
    bad = moorage.run("set", name, "tickTime=5", check=False)
    assert bad.returncode == 2 and "spec.parameters.tickTime" in bad.stderr

    table = moorage.run("status", name).stdout
    assert "leader" in table and "client:" in table

    # `down` keeps the data; the whole ensemble comes back with its tree and the new tickTime.
    moorage.run("down", name)
    again = moorage.json("up", "-f", str(example))
    assert again["phase"] == "Ready" and roles(again) == ["follower", "follower", "leader"], again
    assert_tree(again["endpoints"]["client"], paths)
    for member in again["members"]:
        endpoint = Endpoint.parse(member["address"])
        assert "tickTime=3000" in four_letter_word(endpoint.host, endpoint.port, "conf").splitlines()

    moorage.run("down", name, "--purge")
    assert not (moorage.state_dir / "default" / name).exists()
