"""One DBA scenario, the same commands on both runtimes: local processes and real pods.

Every step is the `moorage` CLI as a DBA types it, with only `--runtime` (here `MOORAGE_RUNTIME`)
telling the runtimes apart, and every check reads the CLI's own output: `up`, `connect --exec`
(psql; on Kubernetes through `kubectl port-forward` to the -rw Service), `switchover --to`, `set`
with a parameter that needs a restart (rolled out by a rolling restart), `restart`, `scale`,
`failover` after the primary is lost (a killed process; a pod deleted at once on a cordoned node),
`down` keeping the data, `up` again (every member restarted: the deployment heals itself), `down
--purge`. A writer commits one row per `connect --exec` session the whole time, each session finding
the primary anew (locally through the status, on Kubernetes through the Service), and at the end
every commit it saw acknowledged is in the table.

The local parameter needs the integration tier's PostgreSQL (the `postgres` OS user, the embedded-
postgres binaries); the kubernetes one the local cluster (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import REPO_ROOT, wait_for

pytestmark = pytest.mark.e2e

NAME = "scenario"
RESOURCES = {"cpu": "150m", "memory": "256Mi"}
# One command's bound: half the test's (tests/e2e/conftest.py), so a hang is reported with the
# cluster's view by the test rather than cut off by pytest-timeout.
COMMAND_TIMEOUT = 600


@dataclass
class Moorage:
    """The CLI against one runtime; ``namespace`` is where the scenario's Middleware lives."""

    runtime: str
    namespace: str
    env: dict[str, str]
    workdir: Path
    cluster: Any = None  # the LocalCluster, on Kubernetes

    def lose_member(self, member: str) -> None:
        """A member lost without warning and unable to come back by itself: locally its process
        killed (SIGKILL, no shutdown); on Kubernetes its pod deleted at once (grace 0: a crash, no
        preStop) with the node cordoned, so its replacement stays Pending, as on a lost node."""
        if self.cluster is None:
            state = json.loads((self.workdir / self.namespace / NAME / "state.json").read_text())
            os.kill(int(state["members"][member]["pid"]), signal.SIGKILL)
            return
        self._cordon(True)
        self.cluster.delete_pods(self.namespace, [member])

    def member_may_return(self) -> None:
        if self.cluster is not None:
            self._cordon(False)

    def _cordon(self, unschedulable: bool) -> None:
        for node in self.cluster.core.list_node().items:
            self.cluster.core.patch_node(node.metadata.name, {"spec": {"unschedulable": unschedulable}})

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [str(REPO_ROOT / ".venv" / "bin" / "moorage"), *args],
                env={**os.environ, **self.env},
                input=stdin,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            # Well inside the test's own timeout, so what hangs is shown, not only where pytest was.
            raise AssertionError(
                f"moorage {' '.join(args)} ({self.runtime}) still running after {COMMAND_TIMEOUT}s"
                f"{self._cluster_view()}"
            ) from None
        if check and done.returncode != 0:
            raise AssertionError(
                f"moorage {' '.join(args)} ({self.runtime}): {done.stderr[-3000:]}{self._cluster_view()}"
            )
        return done

    def _cluster_view(self) -> str:
        return "" if self.cluster is None else "\n" + self.cluster.describe(self.namespace)

    def json(self, *args: str) -> Any:
        """A command on the scenario's Middleware (`up` takes the namespace from the manifest)."""
        where = () if args[0] == "up" else ("-n", self.namespace)
        return json.loads(self.run(*args, *where, "-o", "json").stdout)

    def sql(self, statement: str) -> str:
        """psql through `moorage connect --exec`, unaligned tuples only; fails on an SQL error."""
        done = self.run(
            "connect", NAME, "-n", self.namespace, "--exec",
            stdin="\\set QUIET 1\n\\set ON_ERROR_STOP 1\n\\pset tuples_only on\n\\pset format unaligned\n"
            f"{statement}\n",
        )  # fmt: skip
        return done.stdout.strip()


class Writer(threading.Thread):
    """One row per `connect --exec` session, numbered; a number is acknowledged when its session
    printed the INSERT's tag and exited 0. A failed session is not retried with the same number."""

    def __init__(self, moorage: Moorage) -> None:
        super().__init__(daemon=True)
        self.moorage = moorage
        self.acked: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                done = self.moorage.run(
                    "connect", NAME, "-n", self.moorage.namespace, "--exec",
                    stdin=f"\\set ON_ERROR_STOP 1\nINSERT INTO acked VALUES ({n});\n",
                    check=False,
                )  # fmt: skip
            except AssertionError:
                continue  # a session that hung: not acknowledged, the next number goes on
            if done.returncode == 0 and "INSERT 0 1" in done.stdout:
                self.acked.add(n)
            else:
                time.sleep(0.5)

    def finish(self) -> set[int]:
        self.stop.set()
        self.join(timeout=120)
        return self.acked


@pytest.fixture(params=["local", "kubernetes"])
def moorage(request: pytest.FixtureRequest) -> Iterator[Moorage]:
    if request.param == "local":
        from tests.integration.test_postgresql import postgres_unavailable

        why = postgres_unavailable()
        if why is not None:
            pytest.skip(f"the local runtime's PostgreSQL: {why}")
        # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the postgres user must reach its data.
        state = Path(tempfile.mkdtemp(prefix="moorage-scenario-"))
        state.chmod(0o755)
        cli = Moorage(
            "local", "default", {"MOORAGE_RUNTIME": "local", "MOORAGE_STATE_DIR": str(state)}, state
        )
        try:
            yield cli
        finally:
            cli.run("down", NAME, "--purge", check=False)
            shutil.rmtree(state, ignore_errors=True)
        return
    cluster = request.getfixturevalue("local_cluster")
    namespace = cluster.new_namespace("scenario")
    workdir = Path(tempfile.mkdtemp(prefix="moorage-scenario-"))
    env = {"MOORAGE_RUNTIME": "kubernetes", "KUBECONFIG": str(cluster.kubeconfig)}
    try:
        yield Moorage("kubernetes", namespace, env, workdir, cluster)
    finally:
        Moorage("kubernetes", namespace, env, workdir, cluster).member_may_return()  # never left cordoned
        cluster.delete_namespace(namespace)
        shutil.rmtree(workdir, ignore_errors=True)


def _roles(doc: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["role"] for m in doc["members"]}


def _primary(doc: dict[str, Any]) -> str:
    return next(name for name, role in _roles(doc).items() if role == "primary")


def _primaries(doc: dict[str, Any]) -> list[str]:
    return sorted(name for name, role in _roles(doc).items() if role == "primary")


def test_the_dba_scenario_runs_the_same_on_both_runtimes(moorage: Moorage) -> None:
    manifest = moorage.workdir / "scenario.yaml"
    document = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": NAME, "namespace": moorage.namespace},
        "spec": {
            "engine": "postgresql",
            "topology": "replication",
            "replicas": 3,
            "resources": RESOURCES,
            "storage": {"size": "512Mi"},
        },
    }
    manifest.write_text(yaml.safe_dump(document))

    created = moorage.json("up", "-f", str(manifest))
    assert created["phase"] == "Ready", created
    assert sorted(_roles(created).values()) == ["primary", "replica", "replica"], created
    assert moorage.sql("CREATE TABLE acked (n int PRIMARY KEY); SELECT 'created';").endswith("created")

    writer = Writer(moorage)
    writer.start()
    wait_for("the writer's first commits", lambda: len(writer.acked) >= 3, 120)

    # A planned switchover to a named replica.
    target = f"{NAME}-2"
    switched = moorage.json("switchover", NAME, "--to", target)
    assert switched["phase"] == "Ready" and _primary(switched) == target, switched

    # A parameter that needs a restart: rolled out member by member before `set` returns.
    changed = moorage.json("set", NAME, "max_connections=250")
    assert changed == {"appliedLive": {}, "needsRestart": {"max_connections": "250"}}, changed
    assert moorage.sql("SHOW max_connections;") == "250"
    status = moorage.json("status", NAME)
    pending = next((c for c in status["conditions"] if c["type"] == "PendingRestart"), None)
    assert pending is None or pending["status"] == "False", status

    # A rolling restart on its own.
    restarted = moorage.json("restart", NAME)
    assert restarted["phase"] == "Ready" and all(m["healthy"] for m in restarted["members"]), restarted

    # Scale in to two members and back out to three.
    smaller = moorage.json("scale", NAME, "--replicas", "2")
    assert smaller["phase"] == "Ready" and len(smaller["members"]) == 2, smaller
    larger = moorage.json("scale", NAME, "--replicas", "3")
    assert larger["phase"] == "Ready" and len(larger["members"]) == 3, larger
    assert all(m["healthy"] for m in larger["members"]), larger

    # A failover: the primary lost, `moorage failover` promotes the most advanced replica (synchronous
    # replication: it holds every acknowledged commit); the lost member rejoins as a replica (pg_rewind)
    # once it can run again: locally `failover` starts it itself, on Kubernetes once the node is
    # schedulable again, while the CLI waits for Ready.
    lost = _primary(moorage.json("status", NAME))
    moorage.lose_member(lost)
    failing_over: dict[str, subprocess.CompletedProcess[str]] = {}
    command = threading.Thread(
        target=lambda: failing_over.update(
            done=moorage.run("failover", NAME, "-n", moorage.namespace, "-o", "json")
        ),
        daemon=True,
    )
    command.start()
    promoted = wait_for(
        f"a primary other than the lost {lost}",
        lambda: [p for p in _primaries(moorage.json("status", NAME)) if p != lost],
        300,
        interval=2,
    )
    moorage.member_may_return()
    command.join(timeout=900)
    assert "done" in failing_over, "moorage failover did not return"
    after = json.loads(failing_over["done"].stdout)
    assert after["phase"] == "Ready" and _primaries(after) == promoted, after
    rejoined = wait_for(
        f"{lost} back as a healthy replica",
        lambda: (
            (doc := moorage.json("status", NAME))["phase"] == "Ready"
            and _roles(doc).get(lost) == "replica"
            and all(m["healthy"] for m in doc["members"])
            and doc
        ),
        300,
        interval=2,
    )
    assert _primaries(rejoined) == promoted, rejoined

    so_far = len(writer.acked)
    wait_for("more commits after every change", lambda: len(writer.acked) >= so_far + 3, 120)
    acked = writer.finish()
    stored = {int(n) for n in moorage.sql("SELECT n FROM acked;").split()}
    assert acked and acked <= stored, f"acknowledged commits lost: {sorted(acked - stored)[:20]}"

    # `down` keeps the data; `up` brings it back; `down --purge` deletes it.
    moorage.run("down", NAME, "-n", moorage.namespace)
    again = moorage.json("up", "-f", str(manifest))
    assert again["phase"] == "Ready", again
    assert {int(n) for n in moorage.sql("SELECT n FROM acked;").split()} == stored
    moorage.run("down", NAME, "-n", moorage.namespace, "--purge")
    gone = moorage.run("status", NAME, "-n", moorage.namespace, check=False)
    assert gone.returncode != 0, gone.stdout
