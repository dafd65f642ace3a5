"""Backups on real pods, through the resources only: MiddlewareBackup and MiddlewareRestore Jobs run
as pods of the local cluster against a real S3 server (SeaweedFS on the pod bridge, ``s3.py``).

Per engine: known data is written, a MiddlewareBackup's Job uploads it (the manifest is then read
from S3 with boto3 and its checksums matched with the status), the data is changed, a
MiddlewareRestore (Apply) brings the backup back exactly, and a MiddlewareRestore (Rollback)
brings back exactly what the restore overwrote. PostgreSQL's Apply sets the databases aside in the
pod (renamed), its Rollback renames them back, and a Discard after a second Apply deletes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import psycopg
import pytest
import redis

from backups.kubernetes import SCRATCH_LABEL
from middleware.engines.postgresql.dump import rows_key, tables_key
from tests.e2e.cluster import GROUP, SMALL, VERSION, LocalCluster, wait_for
from tests.e2e.dba import dba_account, in_a_dba_pod
from tests.e2e.s3 import new_bucket, s3_client
from tests.example_files import document
from tests.integration.s3_harness import S3Server

pytestmark = pytest.mark.e2e

# The examples' own names: the repository and its keys' Secret are examples/backup-repository.yaml.
REPOSITORY = document("backup-repository.yaml", "BackupRepository")["metadata"]["name"]
KEYS_SECRET = document("backup-repository.yaml", "Secret")["metadata"]["name"]
JOB_TIMEOUT = 300
SERVING_TIMEOUT = 120
CONNECT_TIMEOUT = 60


@pytest.fixture(scope="module")
def bucket(local_cluster: LocalCluster, module_namespace: str, pod_s3_server: S3Server) -> str:
    """A bucket, and examples/backup-repository.yaml applied with what its comments tell a user to
    put in: the S3 server's endpoint, its bucket and its keys. Everything else (prefix, region,
    path style, server-side encryption) is the example's."""
    ns = module_namespace
    name = new_bucket(pod_s3_server)
    secret = document("backup-repository.yaml", "Secret")
    secret["stringData"] = {
        "AWS_ACCESS_KEY_ID": pod_s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": pod_s3_server.secret_key,
    }
    secret["metadata"]["namespace"] = ns
    local_cluster.apply(secret)
    repository = document("backup-repository.yaml", "BackupRepository")
    repository["spec"].update(endpoint=pod_s3_server.endpoint, bucket=name)
    local_cluster.apply(repository, ns)
    return name


# ---------------------------------------------------------------- resources


def _create(cluster: LocalCluster, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    cluster.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
        namespace,
    )


def _finished(cluster: LocalCluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    """The resource once its phase is Completed or Failed; on timeout, what the cluster shows."""

    def done() -> dict[str, Any] | None:
        body: Any = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return body if (body.get("status") or {}).get("phase") in ("Completed", "Failed") else None

    try:
        return wait_for(f"{plural}/{name} finished", done, JOB_TIMEOUT, interval=2.0)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_jobs_report(cluster, namespace)}") from None


def _completed(cluster: LocalCluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    body = _finished(cluster, namespace, plural, name)
    status = body["status"]
    assert status["phase"] == "Completed", (
        f"{plural}/{name}: {json.dumps(status, indent=1)}\n{_jobs_report(cluster, namespace)}"
    )
    return body


def _jobs_report(cluster: LocalCluster, namespace: str) -> str:
    """What a user would look at when a Job fails: the resources, events, operator log, Job logs."""
    parts = [
        cluster.kubectl("-n", namespace, "get", "mwbak,mwrestore,jobs,pods", "-o", "wide", check=False),
        cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)[-3000:],
        cluster.operator_log(tail=20),
    ]
    for pod in cluster.pods(namespace, "app.kubernetes.io/name=moorage-backup"):
        log = cluster.kubectl("-n", namespace, "logs", pod.metadata.name, check=False)
        parts.append(f"--- log of {pod.metadata.name}\n{log[-4000:]}")
    return "\n".join(parts)


def backup(cluster: LocalCluster, namespace: str, name: str, middleware: str) -> dict[str, Any]:
    """examples/middleware-backup.yaml under another name, for ``middleware``."""
    resource = document("middleware-backup.yaml", "MiddlewareBackup")
    resource["metadata"]["name"] = name
    resource["spec"]["middleware"]["name"] = middleware
    cluster.apply(resource, namespace)
    return _completed(cluster, namespace, "middlewarebackups", name)["status"]


def restore(
    cluster: LocalCluster, namespace: str, name: str, target: str, backup_id: str, action: str
) -> dict[str, Any]:
    """examples/middleware-restore.yaml: its first document for a Plan or an Apply (the action its
    comment says to set), its second, the undo, for a Rollback or a Discard."""
    undo = action in ("Rollback", "Discard")
    resource = document("middleware-restore.yaml", "MiddlewareRestore", 1 if undo else 0)
    assert resource["spec"]["action"] in (action, "Rollback" if undo else "Apply"), resource
    resource["metadata"]["name"] = name
    resource["spec"].update(backupId=backup_id, target={"name": target}, action=action)
    cluster.apply(resource, namespace)
    return _completed(cluster, namespace, "middlewarerestores", name)["status"]


def job_pod(cluster: LocalCluster, namespace: str, selector: str) -> Any:
    """The one pod a backup/restore Job ran; it ran to completion on the node."""
    pods = cluster.pods(namespace, selector)
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.spec.node_name, "the Job's pod never ran on a node"
    return pod


def restore_record(server: S3Server, bucket: str, restore_id: str) -> dict[str, Any]:
    """The restore's own record in the repository, read with boto3."""
    client: Any = s3_client(server)
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
        if o["Key"].endswith(f"/_restores/{restore_id}.json")
    ]
    assert len(keys) == 1, keys
    record: dict[str, Any] = json.loads(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    return record


def check_backup_in_s3(server: S3Server, bucket: str, status: dict[str, Any]) -> dict[str, Any]:
    """The manifest at the status' location, read with boto3: its objects exist with their size,
    and their checksums give the status' sha256."""
    assert re.fullmatch(r"[0-9a-f]{64}", status["sha256"]), status
    assert status["sizeBytes"] > 0, status
    prefix = f"s3://{bucket}/"
    assert status["location"].startswith(prefix), status
    key = status["location"][len(prefix) :] + "manifest.json"
    client: Any = s3_client(server)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["backupId"] == status["backupId"]
    assert manifest["kind"] == "backup"
    assert sum(o["size"] for o in manifest["objects"]) == status["sizeBytes"]
    for obj in manifest["objects"]:
        body = client.get_object(Bucket=bucket, Key=obj["key"])["Body"].read()
        assert len(body) == obj["size"], obj["key"]
        assert hashlib.sha256(body).hexdigest() == obj["sha256"], obj["key"]
    combined = "".join(sorted(f"{o['name']}:{o['sha256']}\n" for o in manifest["objects"]))
    assert hashlib.sha256(combined.encode()).hexdigest() == status["sha256"]
    return manifest


def check_job_has_no_secret(cluster: LocalCluster, namespace: str, server: S3Server) -> None:
    jobs = cluster.kubectl("-n", namespace, "get", "jobs", "-o", "json")
    assert json.loads(jobs)["items"], "no Job was created"
    assert server.secret_key not in jobs and server.access_key not in jobs


# ---------------------------------------------------------------- Redis (sentinel)

REDIS = "cache"


def _cluster_ip(cluster: LocalCluster, namespace: str, service: str) -> str:
    """A Service's ClusterIP: the host reaches it as a pod would (kube-proxy)."""
    spec: Any = cluster.core.read_namespaced_service(service, namespace).spec
    return str(spec.cluster_ip)


def _redis_master(cluster: LocalCluster, namespace: str) -> redis.Redis:
    ip = _cluster_ip(cluster, namespace, f"{REDIS}-master")
    return redis.Redis(
        host=ip,
        port=6379,
        password=cluster.password(namespace, REDIS),
        socket_timeout=10,
        decode_responses=True,
    )


def _master_service_writable(cluster: LocalCluster, namespace: str) -> redis.Redis:
    """The -master Service once it routes to the master in status only. Role labels are patched
    before the status says Ready, but the EndpointSlice and kube-proxy follow a moment later (and
    before bootstrap every fresh member called itself master): a client retries until then."""
    mw = cluster.middleware(namespace, REDIS)
    master = next(m["name"] for m in mw["status"]["members"] if m["role"] == "master")

    def routed() -> redis.Redis | None:
        endpoints: Any = cluster.core.read_namespaced_endpoints(f"{REDIS}-master", namespace)
        names = [a.target_ref.name for s in (endpoints.subsets or []) for a in (s.addresses or [])]
        if names != [master]:
            return None
        client = _redis_master(cluster, namespace)
        for _ in range(5):  # new connections, each balanced by kube-proxy anew
            client.connection_pool.disconnect()
            client.set("e2e:probe", "1")
        client.delete("e2e:probe")
        return client

    return wait_for(f"{REDIS}-master to route to {master} only", routed, 60, interval=1.0)


def _db(client: redis.Redis, db: int) -> redis.Redis:
    """The same server, another database."""
    kwargs = client.connection_pool.connection_kwargs
    return redis.Redis(
        host=kwargs["host"],
        port=kwargs["port"],
        password=kwargs["password"],
        socket_timeout=10,
        decode_responses=True,
        db=db,
    )


def redis_contents(client: redis.Redis) -> dict[tuple[int, str], tuple[str, Any, bool]]:
    """Every key of every database with its type and value (a TTL as "has one or not")."""
    out: dict[tuple[int, str], tuple[str, Any, bool]] = {}
    for db_name in client.info("keyspace"):
        conn = _db(client, int(db_name[2:]))
        for key in conn.scan_iter(count=500):
            kind = conn.type(key)
            value: Any
            if kind == "string":
                value = conn.get(key)
            elif kind == "hash":
                value = conn.hgetall(key)
            elif kind == "list":
                value = conn.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(conn.smembers(key))
            elif kind == "zset":
                value = conn.zrange(key, 0, -1, withscores=True)
            else:
                value = None
            out[(int(db_name[2:]), str(key))] = (str(kind), value, conn.ttl(key) > 0)
    return out


def redis_contents_when_serving(cluster: LocalCluster, namespace: str) -> dict[Any, Any]:
    """What the -master Service serves, once it answers (see ``pg_contents_when_serving``)."""
    return wait_for(
        f"{REDIS}-master to answer",
        lambda: redis_contents(_redis_master(cluster, namespace)),
        SERVING_TIMEOUT,
        interval=1.0,
    )


def write_known_redis_data(client: redis.Redis) -> None:
    pipe = client.pipeline()
    for i in range(500):
        pipe.set(f"user:{i}", f"name-{i}")
    for i in range(50):
        pipe.hset(f"profile:{i}", mapping={"a": str(i), "b": "x" * i})
        pipe.rpush(f"events:{i}", *[f"e{j}" for j in range(i + 1)])
        pipe.sadd(f"tags:{i}", *[f"t{j}" for j in range(i % 7 + 1)])
        pipe.zadd(f"rank:{i}", {f"m{j}": j * 1.5 for j in range(i % 5 + 1)})
    pipe.set("session:long", "kept", ex=86400)
    pipe.execute()
    _db(client, 3).set("db3:key", "in another database")


def change_redis_data(client: redis.Redis) -> None:
    pipe = client.pipeline()
    for i in range(0, 500, 3):
        pipe.delete(f"user:{i}")
    for i in range(1, 500, 3):
        pipe.set(f"user:{i}", "changed")
    pipe.hset("profile:7", "a", "changed")
    pipe.rpush("events:3", "late")
    for i in range(100):
        pipe.set(f"after-backup:{i}", str(i))
    pipe.execute()
    _db(client, 3).delete("db3:key")


def test_redis_sentinel_backup_restore_rollback(
    local_cluster: LocalCluster, module_namespace: str, bucket: str, pod_s3_server: S3Server
) -> None:
    ns = module_namespace
    local_cluster.create_middleware(
        ns,
        REDIS,
        {
            "engine": "redis",
            "topology": "sentinel",
            "replicas": 2,
            "sentinels": 3,
            "resources": SMALL,
            "storage": {"size": "256Mi"},
        },
    )
    local_cluster.wait_ready(ns, REDIS, timeout=420)
    client = _master_service_writable(local_cluster, ns)
    write_known_redis_data(client)
    assert client.execute_command("WAIT", 1, 5000) >= 1
    original = redis_contents(client)
    assert len(original) == 702  # 500 strings, 4 x 50 collections, 1 with a TTL, 1 in db 3

    status = backup(local_cluster, ns, "cache-1", REDIS)
    job_pod(local_cluster, ns, "moorage.io/backup=cache-1")
    check_job_has_no_secret(local_cluster, ns, pod_s3_server)
    manifest = check_backup_in_s3(pod_s3_server, bucket, status)
    assert manifest["middleware"] == REDIS and manifest["namespace"] == ns
    assert manifest["engine"] == "redis" and manifest["topology"] == "sentinel"
    assert status["backupId"].startswith(f"{REDIS}-")
    assert status["finishedAt"] and status["startedAt"]

    change_redis_data(client)
    changed = redis_contents(client)
    assert changed != original

    applied = restore(local_cluster, ns, "cache-restore", REDIS, status["backupId"], "Apply")
    job_pod(local_cluster, ns, "moorage.io/restore=cache-restore")
    assert applied["restoreId"] and applied["safetySnapshot"], applied
    assert applied["rolledBack"] is False
    assert redis_contents_when_serving(local_cluster, ns) == original
    # The master read the backup itself: it followed the restore Job's pod for one full resync.
    record = restore_record(pod_s3_server, bucket, applied["restoreId"])
    (action,) = record["loadActions"]
    assert re.fullmatch(r"data\.rdb: 702 keys, loaded by \S+ itself \(replication\)", action), action

    rolled = restore(local_cluster, ns, "cache-rollback", REDIS, status["backupId"], "Rollback")
    job_pod(local_cluster, ns, "moorage.io/restore=cache-rollback")
    assert rolled["restoreId"] == applied["restoreId"], rolled
    assert rolled["rolledBack"] is True, rolled
    assert redis_contents_when_serving(local_cluster, ns) == changed
    local_cluster.wait_ready(ns, REDIS, timeout=120)
    # The replicas followed the loads: every member holds the rolled-back data.
    password = local_cluster.password(ns, REDIS)
    replicas = local_cluster.pods(ns, f"app.kubernetes.io/instance={REDIS},moorage.io/role=replica")
    assert replicas
    clients = [
        redis.Redis(host=p.status.pod_ip, port=6379, password=password, decode_responses=True)
        for p in replicas
    ]
    wait_for(
        "every replica to hold the rolled-back data",
        lambda: all(redis_contents(c) == changed for c in clients),
        60,
    )


def test_a_backup_the_repository_refuses_fails_saying_why(
    local_cluster: LocalCluster, module_namespace: str, bucket: str, pod_s3_server: S3Server
) -> None:
    ns = module_namespace
    """Wrong keys: the Job cannot even audit its failure in the repository, so the reason comes
    from the Job's pod (its termination message) into the status."""
    local_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "wrong-keys", "namespace": ns},
            "stringData": {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"},
        }
    )
    _create(
        local_cluster,
        ns,
        "BackupRepository",
        "refusing",
        {"endpoint": pod_s3_server.endpoint, "bucket": bucket, "credentials": {"name": "wrong-keys"}},
    )
    _create(
        local_cluster,
        ns,
        "MiddlewareBackup",
        "refused",
        {"middleware": {"name": REDIS}, "repository": {"name": "refusing"}},
    )
    status = _finished(local_cluster, ns, "middlewarebackups", "refused")["status"]
    assert status["phase"] == "Failed", status
    condition = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert condition["status"] == "False" and condition["reason"] == "JobFailed"
    # e.g. "Job refused-backup failed: ...: error: S3 HeadBucket of s3://BUCKET failed: 403: Forbidden"
    assert "refused-backup failed" in condition["message"], condition
    assert "403" in condition["message"] and bucket in condition["message"], condition
    assert "wrong-secret" not in condition["message"]


# ---------------------------------------------------------------- PostgreSQL (standalone)

PG = "ledger"


def _pg(cluster: LocalCluster, namespace: str) -> psycopg.Connection:
    ip = _cluster_ip(cluster, namespace, f"{PG}-rw")
    secret: Any = cluster.core.read_namespaced_secret(f"{PG}-credentials", namespace)
    password = base64.b64decode(secret.data["app-password"]).decode()
    # Ready comes from the operator; kube-proxy programs the ClusterIP a moment later on a busy
    # node, and until then the host's packets to it leave by the default route (an egress proxy
    # answered "HTTP/1.1 400" once, in CI). A client reconnects, so do we: only connecting.
    return wait_for(
        f"{PG}-rw to accept a connection",
        lambda: psycopg.connect(
            host=ip,
            port=5432,
            dbname="app",
            user="app",
            password=password,
            connect_timeout=5,
            autocommit=True,
        ),
        CONNECT_TIMEOUT,
        interval=1.0,
    )


def pg_contents(cluster: LocalCluster, namespace: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the app database's public schema, ordered."""
    with _pg(cluster, namespace) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}


def pg_contents_when_serving(cluster: LocalCluster, namespace: str) -> dict[str, list[tuple[Any, ...]]]:
    """What -rw serves, once it answers. A restore loads through the primary's small CPU share
    (150m here): on a busy node its probes can time out for a few seconds, so the kubelet takes it
    out of the Service briefly after the MiddlewareRestore completed; a client retries, so do we.
    Only reaching it is retried: the contents are compared once."""
    return wait_for(
        f"{PG}-rw to answer", lambda: pg_contents(cluster, namespace), SERVING_TIMEOUT, interval=1.0
    )


def test_postgresql_standalone_backup_restore_rollback(
    local_cluster: LocalCluster, module_namespace: str, bucket: str, pod_s3_server: S3Server
) -> None:
    ns = module_namespace
    local_cluster.create_middleware(
        ns,
        PG,
        {
            "engine": "postgresql",
            "topology": "standalone",
            "extensions": ["vector"],
            "resources": {"cpu": "150m", "memory": "256Mi"},
            "storage": {"size": "512Mi"},
        },
    )
    local_cluster.wait_ready(ns, PG, timeout=420)
    with _pg(local_cluster, ns) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric)")
        conn.execute(
            "INSERT INTO accounts SELECT i, 'owner-' || i, i * 10.5 FROM generate_series(1, 2000) AS i"
        )
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO items VALUES (1, '[1,1,1]'), (2, '[5,5,5]'), (3, '[9,9,9]')")
    original = pg_contents(local_cluster, ns)
    assert len(original["accounts"]) == 2000

    status = backup(local_cluster, ns, "ledger-1", PG)
    job_pod(local_cluster, ns, "moorage.io/backup=ledger-1")
    manifest = check_backup_in_s3(pod_s3_server, bucket, status)
    assert manifest["engine"] == "postgresql" and manifest["middleware"] == PG
    deep_verify_in_a_dba_pod(local_cluster, ns, pod_s3_server, bucket, status["backupId"])

    with _pg(local_cluster, ns) as conn:
        conn.execute("DELETE FROM accounts WHERE id % 3 = 0")
        conn.execute("UPDATE accounts SET balance = -1 WHERE id % 3 = 1")
        conn.execute("INSERT INTO items VALUES (4, '[0,0,0]')")
        conn.execute("CREATE TABLE after_backup (n int PRIMARY KEY)")
        conn.execute("INSERT INTO after_backup SELECT generate_series(1, 10)")
    changed = pg_contents(local_cluster, ns)
    assert changed != original

    applied = restore(local_cluster, ns, "ledger-restore", PG, status["backupId"], "Apply")
    job_pod(local_cluster, ns, "moorage.io/restore=ledger-restore")
    # PostgreSQL's safety copy: the databases renamed aside in the pod (the snapshot: roles only).
    assert applied["safetySnapshot"] and applied["safetyCopy"] == "aside", applied
    assert pg_contents_when_serving(local_cluster, ns) == original
    assert len(databases_set_aside(local_cluster, ns)) == 2, "app and postgres set aside"

    rolled = restore(local_cluster, ns, "ledger-rollback", PG, status["backupId"], "Rollback")
    job_pod(local_cluster, ns, "moorage.io/restore=ledger-rollback")
    assert rolled["rolledBack"] is True, rolled
    assert pg_contents_when_serving(local_cluster, ns) == changed
    assert databases_set_aside(local_cluster, ns) == []

    # Restored again and kept: a Discard deletes the databases set aside.
    again = restore(local_cluster, ns, "ledger-again", PG, status["backupId"], "Apply")
    assert len(databases_set_aside(local_cluster, ns)) == 2
    freed = restore(local_cluster, ns, "ledger-free", PG, status["backupId"], "Discard")
    job_pod(local_cluster, ns, "moorage.io/restore=ledger-free")
    assert freed["restoreId"] == again["restoreId"] and freed["asideDiscarded"] is True, freed
    assert databases_set_aside(local_cluster, ns) == []
    assert pg_contents_when_serving(local_cluster, ns) == original


def databases_set_aside(cluster: LocalCluster, namespace: str) -> list[str]:
    with _pg(cluster, namespace) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'moorage-aside-%' ORDER BY 1")
        return [r[0] for r in rows]


def deep_verify_in_a_dba_pod(
    cluster: LocalCluster, namespace: str, server: S3Server, bucket: str, backup_id: str
) -> None:
    """``moorage backup verify --deep --runtime kubernetes`` as a DBA runs it: the operator
    provisions a scratch copy of the backup's Middleware on real pods, the CLI loads the backup
    into it and counts what arrived, and the scratch copy goes with its PVCs."""
    repository = document("backup-repository.yaml", "BackupRepository")["spec"]
    url = f"s3://{bucket}/{repository['prefix']}?endpoint={server.endpoint}"
    with dba_account(cluster, namespace) as account:
        report = in_a_dba_pod(
            cluster,
            namespace,
            account,
            f"moorage backup verify {backup_id} --deep --runtime kubernetes --repo '{url}' -o json",
            pod="dba-verify",
            env_from_secret=document("backup-repository.yaml", "Secret")["metadata"]["name"],
            diagnostics=("middlewares",),
            timeout=900,
        )
    assert report["ok"] is True and report["deep"] is True, report
    # What the test wrote before the backup: 2 tables, 2,000 + 3 rows in the app database.
    assert report["loaded"][tables_key("app")] == 2, report
    assert report["loaded"][rows_key("app")] == 2003, report
    # runbook._scratch_manifest names it verify-<6 hex>; its claims are <template>-verify-<hex>-<n>.
    scratch_claim = re.compile(r"-verify-[0-9a-f]{6}-[0-9]+$")

    def scratch_left() -> list[str]:
        middlewares = cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", label_selector=SCRATCH_LABEL
        )["items"]
        claims = cluster.core.list_namespaced_persistent_volume_claim(namespace).items
        return [m["metadata"]["name"] for m in middlewares] + [
            c.metadata.name for c in claims if scratch_claim.search(c.metadata.name)
        ]

    wait_for("the scratch Middleware to be gone with its PVCs", lambda: not scratch_left(), 180, interval=2)
