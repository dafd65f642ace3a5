"""PostgreSQL 18 + pgvector on real pods, through the operator only: replication, pgvector through
the ``-rw`` Service from another pod, and a writable primary again after the primary pod (then
every pod) is deleted, with no acknowledged commit lost."""

from __future__ import annotations

import base64
import json
import time

import psycopg
import pytest

from tests.e2e.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

NAME = "vectors"
PG_IMAGE = "localhost/moorage/postgresql:18"
RESOURCES = {"cpu": "150m", "memory": "256Mi"}

# Inserts rows 1, 2, ... through the -rw Service and prints "ack N" once the commit returned. Each
# insert is bounded by `timeout`: a connection to a primary whose pod vanished mid-statement (no RST
# ever comes back) would otherwise hang psql, and the writer with it, for the kernel's retransmission
# time.
WRITER = r"""
i=0
while [ ! -e /tmp/stop ]; do
  i=$((i+1))
  if timeout 10 psql -qtAX -v ON_ERROR_STOP=1 -c "INSERT INTO ${TABLE:-acked} VALUES ($i)" >/dev/null 2>&1
  then
    echo "ack $i"
  fi
  sleep 0.05
done
echo "stopped at $i"
sleep 3600
"""


def _acks(cluster: LocalCluster, namespace: str, writer: str = "writer") -> int:
    return sum(1 for line in cluster.pod_log(namespace, writer).splitlines() if line.startswith("ack "))


def _acked(cluster: LocalCluster, namespace: str, writer: str) -> set[int]:
    return {
        int(line.split()[1])
        for line in cluster.pod_log(namespace, writer).splitlines()
        if line.startswith("ack ")
    }


def _start_writer(cluster: LocalCluster, namespace: str, pod: str, table: str) -> None:
    """A writer pod committing numbered rows into ``table`` through -rw; returns after its first commit."""
    with _rw(cluster, namespace) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (n int PRIMARY KEY)")
    env = {
        "PGHOST": f"{NAME}-rw",
        "PGDATABASE": "app",
        "PGUSER": "app",
        "PGPASSWORD": _app_password(cluster, namespace),
        "PGCONNECT_TIMEOUT": "3",
        "TABLE": table,
    }
    cluster.run_pod(namespace, pod, PG_IMAGE, WRITER, env=env)
    wait_for("the writer's first commit", lambda: _acks(cluster, namespace, pod) > 0, 120)


def _stop_writer(cluster: LocalCluster, namespace: str, pod: str) -> set[int]:
    """Stop the writer and return the rows whose commit it saw acknowledged."""
    cluster.exec(namespace, pod, ["touch", "/tmp/stop"])
    wait_for("the writer to stop", lambda: "stopped at" in cluster.pod_log(namespace, pod), 60)
    return _acked(cluster, namespace, pod)


def _app_password(cluster: LocalCluster, namespace: str) -> str:
    secret = cluster.core.read_namespaced_secret(f"{NAME}-credentials", namespace)
    return base64.b64decode(secret.data["app-password"]).decode()


def _rw(cluster: LocalCluster, namespace: str, *, superuser: bool = False) -> psycopg.Connection:
    """The -rw Service's ClusterIP from the host (kube-proxy routes it as for a pod)."""
    ip = cluster.core.read_namespaced_service(f"{NAME}-rw", namespace).spec.cluster_ip
    user, password = (
        ("postgres", cluster.password(namespace, NAME))
        if superuser
        else ("app", _app_password(cluster, namespace))
    )
    # kube-proxy may program the ClusterIP a moment after Ready (see test_backups._pg): reconnect.
    return wait_for(
        f"{NAME}-rw to accept a connection",
        lambda: psycopg.connect(
            host=ip,
            port=5432,
            dbname="app",
            user=user,
            password=password,
            connect_timeout=5,
            autocommit=True,
            # A commit waiting for a standby that never comes must not hang the test for the whole
            # pytest timeout: it ends the statement (with a warning), and the next check fails.
            options="-c statement_timeout=30s",
        ),
        60,
        interval=1.0,
    )


def _writable(cluster: LocalCluster, namespace: str) -> bool:
    with _rw(cluster, namespace) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (at timestamptz)")
        conn.execute("INSERT INTO probe VALUES (now())")
    return True


def _primary(cluster: LocalCluster, namespace: str) -> str:
    mw = cluster.middleware(namespace, NAME)
    return next(m["name"] for m in mw["status"]["members"] if m["role"] == "primary")


def test_replication_ready_and_pgvector_from_a_pod(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    local_cluster.create_middleware(
        module_namespace,
        NAME,
        {
            "engine": "postgresql",
            "topology": "replication",
            "replicas": 3,
            "extensions": ["vector"],
            "resources": RESOURCES,
            "storage": {"size": "512Mi"},
        },
    )
    mw = local_cluster.wait_ready(module_namespace, NAME, timeout=480)
    roles = sorted(m["role"] for m in mw["status"]["members"])
    assert roles == ["primary", "replica", "replica"]
    script = (
        "psql -v ON_ERROR_STOP=1 -qtAX "
        "-c 'CREATE EXTENSION IF NOT EXISTS vector' "
        "-c 'CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))' "
        "-c \"INSERT INTO items VALUES (1, '[1,1,1]'), (2, '[5,5,5]'), (3, '[9,9,9]')\" "
        "-c 'CREATE INDEX ON items USING hnsw (embedding vector_l2_ops)' "
        "-c \"SELECT id FROM items ORDER BY embedding <-> '[4.5,5,5.5]' LIMIT 1\" "
        "-c 'CREATE TABLE acked (n int PRIMARY KEY)'"
    )
    local_cluster.run_pod(
        module_namespace,
        "pgvector-client",
        PG_IMAGE,
        script,
        env={
            "PGHOST": f"{NAME}-rw",
            "PGDATABASE": "app",
            "PGUSER": "app",
            "PGPASSWORD": _app_password(local_cluster, module_namespace),
        },
    )
    phase = local_cluster.wait_pod_phase(
        module_namespace, "pgvector-client", ["Succeeded", "Failed"], timeout=180
    )
    log = local_cluster.pod_log(module_namespace, "pgvector-client")
    assert phase == "Succeeded", log
    assert log.strip().splitlines()[-1] == "2", log  # the nearest neighbour of [4.5,5,5.5]
    # Synchronous replication: the commits reached a standby before they returned.
    with _rw(local_cluster, module_namespace, superuser=True) as conn:
        sync = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync','quorum')")
        assert sync.fetchone()[0] >= 1


def test_switchover_and_refusals_through_the_cli_nothing_lost(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    """`moorage switchover --to` against the cluster: the operator fences the primary, promotes the
    named replica, relabels, and the old primary rejoins as a replica, while a writer commits through
    -rw. Requests it cannot do are refused with the engine's reason, in the CLI and in the status."""
    ns = module_namespace
    _start_writer(local_cluster, ns, "switch-writer", "switched")

    old = _primary(local_cluster, ns)
    target = next(
        m["name"] for m in local_cluster.middleware(ns, NAME)["status"]["members"] if m["name"] != old
    )
    done = local_cluster.moorage("switchover", NAME, "-n", ns, "--to", target, "-o", "json")
    assert done.returncode == 0, done.stderr
    roles = {m["name"]: m["role"] for m in json.loads(done.stdout)["members"]}
    assert roles[target] == "primary", roles
    assert roles[old] == "replica", roles  # the CLI returns once the old primary rejoined (Ready)
    record = local_cluster.middleware(ns, NAME)["status"]["lastOperation"]
    assert (record["action"], record["target"], record["result"]) == ("switchover", target, "Succeeded")
    pod = local_cluster.core.read_namespaced_pod(target, ns)
    assert pod.metadata.labels["moorage.io/role"] == "primary"

    # Writes go on through the same Service to the new primary.
    so_far = _acks(local_cluster, ns, "switch-writer")
    wait_for(
        "ten commits acknowledged after the switchover",
        lambda: _acks(local_cluster, ns, "switch-writer") >= so_far + 10,
        120,
        interval=1,
    )
    acked = _stop_writer(local_cluster, ns, "switch-writer")
    with _rw(local_cluster, ns) as conn:
        stored = {row[0] for row in conn.execute("SELECT n FROM switched")}
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    assert acked - stored == set(), f"acknowledged commits lost: {sorted(acked - stored)[:20]}"

    # Refusals: the reason in the CLI's error, the status and an Event; nothing changes.
    refused = local_cluster.moorage("failover", NAME, "-n", ns)
    assert refused.returncode == 1, refused.stdout
    assert "a primary is reachable and writable" in refused.stderr, refused.stderr
    record = local_cluster.middleware(ns, NAME)["status"]["lastOperation"]
    assert (record["action"], record["result"]) == ("failover", "Failed"), record
    unknown = local_cluster.moorage("switchover", NAME, "-n", ns, "--to", f"{NAME}-9")
    assert unknown.returncode == 1
    assert f"{NAME}-9 is not a streaming replica" in unknown.stderr, unknown.stderr
    events = local_cluster.kubectl("-n", ns, "get", "events", "--field-selector", "reason=FailoverFailed")
    assert "use switchover" in events, events
    assert _primary(local_cluster, ns) == target


def test_connect_prints_uris_that_work_from_a_pod(local_cluster: LocalCluster, module_namespace: str) -> None:
    """`moorage connect --runtime kubernetes`: the URIs name the Services, so they work from any pod
    in the cluster and follow failovers; the app user's password is in them with --reveal-secrets."""
    done = local_cluster.moorage("connect", NAME, "-n", module_namespace, "--reveal-secrets", "-o", "json")
    assert done.returncode == 0, done.stderr
    access = json.loads(done.stdout)
    assert [(a["user"], a["uri"].split("@")[1]) for a in access] == [
        ("app", f"{NAME}-rw.{module_namespace}.svc:5432/app"),
        ("app", f"{NAME}-ro.{module_namespace}.svc:5432/app"),
        ("postgres", f"{NAME}-rw.{module_namespace}.svc:5432/postgres"),
    ]
    script = (
        'psql "$RW" -qtAX -c "SELECT current_user || \' \' || pg_is_in_recovery()" && '
        'psql "$RO" -qtAX -c "SELECT current_user || \' \' || pg_is_in_recovery()"'
    )
    env = {"RW": access[0]["uri"], "RO": access[1]["uri"]}
    local_cluster.run_pod(module_namespace, "connect-client", PG_IMAGE, script, env=env)
    phase = local_cluster.wait_pod_phase(
        module_namespace, "connect-client", ["Succeeded", "Failed"], timeout=120
    )
    log = local_cluster.pod_log(module_namespace, "connect-client")
    assert phase == "Succeeded", log
    assert log.split() == ["app", "false", "app", "true"], log
    masked = local_cluster.moorage("connect", NAME, "-n", module_namespace, "-o", "json")
    assert access[0]["password"] not in masked.stdout and "****" in masked.stdout

    # `--exec`: psql on this machine, through `kubectl port-forward` to the -rw Service.
    session = local_cluster.moorage(
        "connect", NAME, "-n", module_namespace, "--exec", stdin="SELECT current_user, pg_is_in_recovery();\n"
    )
    assert session.returncode == 0, session.stderr
    assert session.stdout.split()[-5:] == ["app", "|", "f", "(1", "row)"], session.stdout


def test_set_rolls_out_a_restart_only_parameter_nothing_lost(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    """`moorage set --runtime kubernetes` with a parameter that needs a restart: the operator marks it
    PendingRestart and asks itself for a rolling restart (the replicas' pods first, a switchover, then
    the old primary's pod, each Ready before the next); the CLI returns once that is done, while a
    writer commits through -rw. A lowering that would stall a standby is refused before any change.
    Then `moorage restart` rolls every pod once more."""
    ns = module_namespace
    generation = local_cluster.middleware(ns, NAME)["metadata"]["generation"]
    refused = local_cluster.moorage("set", NAME, "-n", ns, "max_connections=100")
    assert refused.returncode != 0 and "spec.parameters.max_connections" in refused.stderr, refused.stderr
    assert local_cluster.middleware(ns, NAME)["metadata"]["generation"] == generation  # nothing written

    _start_writer(local_cluster, ns, "roll-writer", "rolled")
    before = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    old_primary = _primary(local_cluster, ns)

    done = local_cluster.moorage("set", NAME, "-n", ns, "max_connections=250", "-o", "json", timeout=1200)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"appliedLive": {}, "needsRestart": {"max_connections": "250"}}
    after = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    assert set(after) == set(before) and all(after[n] != before[n] for n in before), (before, after)
    assert _primary(local_cluster, ns) != old_primary  # switched over before its pod was evicted
    status = local_cluster.middleware(ns, NAME)["status"]
    last = status["lastOperation"]
    assert (last["action"], last["result"]) == ("restart", "Succeeded"), last
    assert last["id"].startswith("parameters-") and "target" not in last, last  # asked by the operator
    pending = next((c for c in status["conditions"] if c["type"] == "PendingRestart"), None)
    assert pending is not None and pending["status"] == "False", pending
    assert status["phase"] == "Ready"
    with _rw(local_cluster, ns, superuser=True) as conn:
        assert conn.execute("SHOW max_connections").fetchone()[0] == "250"

    so_far = _acks(local_cluster, ns, "roll-writer")
    wait_for(
        "ten commits after the rollout", lambda: _acks(local_cluster, ns, "roll-writer") >= so_far + 10, 120
    )

    restarted = local_cluster.moorage("restart", NAME, "-n", ns, "-o", "json", timeout=1200)
    assert restarted.returncode == 0, restarted.stderr
    doc = json.loads(restarted.stdout)
    assert doc["phase"] == "Ready" and all(m["healthy"] for m in doc["members"]), doc
    again = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    assert all(again[n] != after[n] for n in after), (after, again)
    last = local_cluster.middleware(ns, NAME)["status"]["lastOperation"]
    assert (last["action"], last["result"]) == ("restart", "Succeeded") and not last["id"].startswith(
        "parameters-"
    ), last

    so_far = _acks(local_cluster, ns, "roll-writer")
    wait_for(
        "ten commits after the restart", lambda: _acks(local_cluster, ns, "roll-writer") >= so_far + 10, 120
    )
    acked = _stop_writer(local_cluster, ns, "roll-writer")
    with _rw(local_cluster, ns) as conn:
        stored = {row[0] for row in conn.execute("SELECT n FROM rolled")}
    assert acked - stored == set(), f"acknowledged commits lost: {sorted(acked - stored)[:20]}"


def test_primary_pod_deleted_writable_again_nothing_lost(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    env = {
        "PGHOST": f"{NAME}-rw",
        "PGDATABASE": "app",
        "PGUSER": "app",
        "PGPASSWORD": _app_password(local_cluster, module_namespace),
        "PGCONNECT_TIMEOUT": "3",
    }
    local_cluster.run_pod(module_namespace, "writer", PG_IMAGE, WRITER, env=env)
    wait_for(
        "the writer's first commit", lambda: "ack " in local_cluster.pod_log(module_namespace, "writer"), 120
    )
    old_primary = _primary(local_cluster, module_namespace)
    deleted_at = time.monotonic()
    local_cluster.delete_pods(module_namespace, [old_primary])
    time.sleep(2)  # the writer must have seen the primary gone before "writable" means anything
    wait_for(
        "a writable primary behind -rw", lambda: _writable(local_cluster, module_namespace), 120, interval=1
    )
    recovered = time.monotonic() - deleted_at
    assert recovered <= 60, f"writable again only after {recovered:.0f}s"
    local_cluster.wait_ready(module_namespace, NAME, timeout=300)

    # Every pod at once: the deployment comes back writable by itself.
    pods = [
        p.metadata.name for p in local_cluster.pods(module_namespace, f"app.kubernetes.io/instance={NAME}")
    ]
    uids = local_cluster.delete_pods(module_namespace, pods)
    local_cluster.wait_replaced(module_namespace, uids, timeout=300)
    wait_for(
        "a writable primary after every pod restarted",
        lambda: _writable(local_cluster, module_namespace),
        180,
        interval=2,
    )
    local_cluster.wait_ready(module_namespace, NAME, timeout=300)
    # Commits go through the same Service name again: ten more acknowledged after the recovery.
    so_far = _acks(local_cluster, module_namespace)
    wait_for(
        "ten commits acknowledged after every pod restarted",
        lambda: _acks(local_cluster, module_namespace) >= so_far + 10,
        120,
        interval=1,
    )

    local_cluster.exec(module_namespace, "writer", ["touch", "/tmp/stop"])
    wait_for(
        "the writer to stop", lambda: "stopped at" in local_cluster.pod_log(module_namespace, "writer"), 60
    )
    acked = {
        int(line.split()[1])
        for line in local_cluster.pod_log(module_namespace, "writer").splitlines()
        if line.startswith("ack ")
    }
    with _rw(local_cluster, module_namespace) as conn:
        stored = {row[0] for row in conn.execute("SELECT n FROM acked")}
    assert acked - stored == set(), f"acknowledged commits lost: {sorted(acked - stored)[:20]}"


def _sql_in(cluster: LocalCluster, namespace: str, pod: str, statement: str) -> str:
    """One statement as the superuser inside a member's pod, through its own pgpass file."""
    psql = "PGPASSFILE=/etc/postgresql-secrets/pgpass psql -h 127.0.0.1 -U postgres -d app -qtAX"
    return cluster.exec(
        namespace, pod, ["sh", "-c", f'{psql} -c "{statement}"'], container="postgresql"
    ).strip()


def test_a_standby_promoted_by_hand_leaves_the_others_diverged_and_they_are_rewound(
    local_cluster: LocalCluster, module_namespace: str
) -> None:
    """A DBA promotes a standby behind Moorage's back (`pg_ctl promote`) while the primary still takes
    a commit that the other standby replays, then stops the old primary. Both the old primary and
    that standby now hold WAL the new primary's timeline never had: neither can ever stream from it.
    The operator names them in the status and evicts their pods (a `Rejoining` Event each, not within
    60 s of a container's start); their init containers rewind them, and the Middleware is Ready on
    the new primary's history, without the commit it never had."""
    ns = module_namespace
    local_cluster.wait_ready(ns, NAME, timeout=300)
    old = _primary(local_cluster, ns)
    others = sorted(
        m["name"] for m in local_cluster.middleware(ns, NAME)["status"]["members"] if m["name"] != old
    )
    promoted, follower = others
    _sql_in(local_cluster, ns, old, "CREATE TABLE IF NOT EXISTS fork (n int)")
    wait_for(
        "the table on both standbys",
        lambda: all(
            _sql_in(local_cluster, ns, pod, "SELECT count(*) FROM pg_tables WHERE tablename = 'fork'") == "1"
            for pod in others
        ),
        60,
    )

    # Two writable primaries for a few seconds: the operator refuses to act on that (SplitBrain).
    local_cluster.exec(
        ns, promoted, ["pg_ctl", "promote", "-w", "-D", "/data/pgdata"], container="postgresql"
    )
    _sql_in(local_cluster, ns, old, "INSERT INTO fork VALUES (1)")  # acknowledged by the follower
    wait_for(
        "the follower to replay the commit the promoted member never had",
        lambda: _sql_in(local_cluster, ns, follower, "SELECT count(*) FROM fork") == "1",
        60,
    )
    uids = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    local_cluster.exec(
        ns,
        old,
        ["pg_ctl", "stop", "-m", "fast", "-w", "-D", "/data/pgdata"],
        container="postgresql",
        check=False,
    )

    def diverged_named() -> str | None:
        conditions = local_cluster.middleware(ns, NAME)["status"].get("conditions") or []
        message = str(next((c for c in conditions if c["type"] == "Ready"), {}).get("message"))
        return message if "diverged" in message else None

    wait_for("the status to name a diverged member", diverged_named, 180, interval=2)
    mw = local_cluster.wait_ready(ns, NAME, timeout=420)
    roles = {m["name"]: m["role"] for m in mw["status"]["members"]}
    assert roles == {promoted: "primary", old: "replica", follower: "replica"}, roles
    assert all(m["healthy"] for m in mw["status"]["members"]), mw["status"]["members"]
    events = local_cluster.kubectl("-n", ns, "get", "events", "--field-selector", "reason=Rejoining")
    assert follower in events, events
    now = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    assert now[follower] != uids[follower] and now[old] != uids[old], (uids, now)  # evicted, recreated
    assert now[promoted] == uids[promoted]
    # On the promoted member's history: the commit it never had is on no member.
    for pod in (promoted, old, follower):
        assert _sql_in(local_cluster, ns, pod, "SELECT count(*) FROM fork") == "0", pod
