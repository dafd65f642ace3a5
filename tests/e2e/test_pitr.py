"""PostgreSQL WAL archiving on real pods (issue 14): a Middleware with ``spec.backup.walArchiving``
archives from its pods to a real S3 server (SeaweedFS on the pod bridge, ``s3.py``) with the
barman in the PostgreSQL image, and its keys only from the BackupRepository's Secret.

One flow: segments switched on the primary reach S3 and the status says archiving works; a base
backup taken by a DBA (``moorage backup base --runtime kubernetes`` in a pod bound to the DBA
role: barman runs in the primary's container over pods/exec); a switchover, after which the new
primary archives on timeline 2; ``restore plan --to-latest`` sees both timelines and the base
backup; a new Middleware with ``spec.recovery`` (examples/postgresql-pitr.yaml's second document)
holds exactly the rows from before a moment after the switchover; a drill; the schedule's base
backup, taken by a Job in the primary's pod, pruning the older one; a scheduled drill run by the
operator's Job; one with a moment before the
window is refused; the source deleted with its data and its credentials, a new Middleware recovered
from its archive with its own password; and the source created again under the same name is
refused (its archive holds another cluster's WAL now).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from kubernetes import client

from backups.pitr import RESTORE_POINT_INDEX
from tests.e2e.cluster import GROUP, REPO_ROOT, VERSION, LocalCluster, wait_for
from tests.e2e.dba import dba_account, in_a_dba_pod
from tests.e2e.s3 import s3_client
from tests.e2e.test_backups import KEYS_SECRET, REPOSITORY, _cluster_ip, bucket  # noqa: F401  (fixture)
from tests.example_files import document
from tests.integration.s3_harness import S3Server

pytestmark = pytest.mark.e2e

# examples/postgresql-pitr.yaml: the archiving Middleware and the one recovered from its archive,
# sized for this node, and the nightly logical backup suspended (this test is about the archive).
EXAMPLE = "postgresql-pitr.yaml"
SMALL = {"resources": {"cpu": "150m", "memory": "256Mi"}, "storage": {"size": "512Mi"}}
SOURCE, RECOVERED = (document(EXAMPLE, "Middleware", index) for index in (0, 1))
NAME, COPY = SOURCE["metadata"]["name"], RECOVERED["metadata"]["name"]
SPEC = {**SOURCE["spec"], **SMALL, "backup": {**SOURCE["spec"]["backup"], "suspend": True}}
ARCHIVE_TIMEOUT = 180


def repository_url(server: S3Server, bucket_name: str) -> str:
    prefix = document("backup-repository.yaml", "BackupRepository")["spec"]["prefix"]
    return f"s3://{bucket_name}/{prefix}?endpoint={server.endpoint}"


def archive_root(namespace: str) -> str:
    prefix = document("backup-repository.yaml", "BackupRepository")["spec"]["prefix"].strip("/")
    return f"{prefix}/pitr/{namespace}/{NAME}"


@contextmanager
def superuser(cluster: LocalCluster, namespace: str, name: str = NAME) -> Iterator[psycopg.Connection[Any]]:
    """The superuser on the -rw Service (it follows the primary's role label), with the password
    of the Middleware's own Secret."""
    ip = _cluster_ip(cluster, namespace, f"{name}-rw")
    password = cluster.password(namespace, name)
    conn = wait_for(
        f"{name}-rw to accept a connection",
        lambda: psycopg.connect(
            host=ip,
            port=5432,
            dbname="postgres",
            user="postgres",
            password=password,
            connect_timeout=5,
            autocommit=True,
        ),
        120,
        interval=1.0,
    )
    with conn:
        yield conn


def scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def switch_segment(cluster: LocalCluster, namespace: str, mark: int) -> str:
    """A marker row, then the current segment closed (and so handed to archive_command): its name."""
    with superuser(cluster, namespace) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (n int PRIMARY KEY)")
        conn.execute("INSERT INTO marks VALUES (%s)", (mark,))
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return str(row[0])


def archived_segments(server: S3Server, bucket_name: str, namespace: str) -> set[str]:
    """Segment names (compression suffix dropped) under the archive's wals/ in S3."""
    s3: Any = s3_client(server)
    names: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket_name, Prefix=f"{archive_root(namespace)}/wals/"
    ):
        for item in page.get("Contents", []):
            names.add(item["Key"].rsplit("/", 1)[-1].split(".")[0])
    return names


def searched_segments(server: S3Server, bucket_name: str, namespace: str) -> set[str]:
    """Segments the archive script searched whole for restore points (backups/wal_batch.py)."""
    s3: Any = s3_client(server)
    names: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket_name, Prefix=f"{archive_root(namespace)}/{RESTORE_POINT_INDEX}/"
    ):
        for item in page.get("Contents", []):
            segment, leaf = item["Key"].rsplit("/", 2)[-2:]
            if leaf == "scanned":
                names.add(segment)
    return names


def cli(cluster: LocalCluster, server: S3Server, *args: str) -> Any:
    """The CLI on this host against the cluster's API and the S3 server, JSON out."""
    env = {
        **os.environ,
        "MOORAGE_RUNTIME": "kubernetes",
        "KUBECONFIG": str(cluster.kubeconfig),
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    done = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "moorage"), *args, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"moorage {' '.join(args)}: {done.stderr[-3000:]}{done.stdout[-2000:]}"
    return json.loads(done.stdout)


def failed(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    """The status of a Middleware once its phase is Failed (a refused spec)."""

    def refused() -> dict[str, Any] | None:
        status = cluster.middleware(namespace, name).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    result: dict[str, Any] = wait_for(f"{name} refused", refused, 120, interval=1.0)
    return result


def archiving_condition(cluster: LocalCluster, namespace: str) -> dict[str, Any] | None:
    conditions = (cluster.middleware(namespace, NAME).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "WALArchivingFailing"), None)


def test_pods_archive_take_a_base_backup_and_go_on_after_a_switchover(
    local_cluster: LocalCluster,
    module_namespace: str,
    bucket: str,  # noqa: F811  (the fixture imported above)
    pod_s3_server: S3Server,
) -> None:
    ns = module_namespace
    url = repository_url(pod_s3_server, bucket)
    local_cluster.create_middleware(ns, NAME, SPEC)
    local_cluster.wait_ready(ns, NAME, timeout=600)

    # Archiving from the pods, keys from the Secret only.
    first = switch_segment(local_cluster, ns, 1)
    wait_for(
        f"segment {first} in S3",
        lambda: first in archived_segments(pod_s3_server, bucket, ns),
        ARCHIVE_TIMEOUT,
        interval=2.0,
    )
    condition = wait_for(
        "WALArchivingFailing=False in the status",
        lambda: (c := archiving_condition(local_cluster, ns)) and c["status"] == "False" and c,
        ARCHIVE_TIMEOUT,
        interval=2.0,
    )
    assert condition["reason"] == "Archiving", condition
    statefulset = local_cluster.apps.read_namespaced_stateful_set(NAME, ns).to_dict()
    assert pod_s3_server.secret_key not in json.dumps(statefulset, default=str)

    # A base backup, taken where the data directory is: in the primary's container.
    with dba_account(local_cluster, ns) as account:
        taken = in_a_dba_pod(
            local_cluster,
            ns,
            account,
            f"moorage backup base {NAME} -n {ns} --runtime kubernetes --repo '{url}' -o json",
            pod="dba-base-backup",
            env_from_secret=KEYS_SECRET,
            diagnostics=("middlewares",),
            timeout=600,
        )
    assert taken["timeline"] == 1, taken
    info: Any = s3_client(pod_s3_server).get_object(  # type: ignore[attr-defined]
        Bucket=bucket, Key=f"{archive_root(ns)}/base/{taken['id']}/backup.info"
    )
    assert "status=DONE" in info["Body"].read().decode()

    # A switchover: the promoted replica archives on its new timeline.
    pods = {
        p.metadata.name: p.metadata.labels.get("moorage.io/role")
        for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
    }
    replica = next(name for name, role in pods.items() if role == "replica")
    cli(local_cluster, pod_s3_server, "switchover", NAME, "-n", ns, "--to", replica)
    second = switch_segment(local_cluster, ns, 2)
    assert second.startswith("00000002"), second
    wait_for(
        f"segment {second} (timeline 2) in S3",
        lambda: second in archived_segments(pod_s3_server, bucket, ns),
        ARCHIVE_TIMEOUT,
        interval=2.0,
    )

    plan = cli(
        local_cluster, pod_s3_server, "restore", "plan", "--to", NAME, "-n", ns, "--to-latest", "--repo", url
    )
    assert plan["compatible"] is True and plan["baseBackup"] == taken["id"], plan
    assert {t["timeline"] for t in plan["window"]["timelines"]} >= {1, 2}, plan
    assert plan["window"]["missingSegments"] == [], plan

    # Into a new Middleware, to a moment after the switchover: the base backup of timeline 1, then
    # the WAL of timelines 1 and 2, replayed by the new Middleware's own pods.
    time.sleep(1.1)
    with superuser(local_cluster, ns) as conn:
        between = scalar(conn, "SELECT clock_timestamp()")
        conn.execute("SELECT pg_create_restore_point('e2e between 2 and 3')")
    time.sleep(1.1)
    third = switch_segment(local_cluster, ns, 3)
    wait_for(
        f"segment {third} in S3",
        lambda: third in archived_segments(pod_s3_server, bucket, ns),
        ARCHIVE_TIMEOUT,
        interval=2.0,
    )

    # The pods' archive script searched every segment it archived with the image's pg_waldump:
    # the plan lists the restore point and starts from the base backup before it.
    wait_for(
        f"segment {third} searched for restore points",
        lambda: third in searched_segments(pod_s3_server, bucket, ns),
        ARCHIVE_TIMEOUT,
        interval=2.0,
    )
    to_point = cli(
        local_cluster, pod_s3_server, "restore", "plan", "--to", NAME, "-n", ns,
        "--to-restore-point", "e2e between 2 and 3", "--repo", url,
    )  # fmt: skip
    assert to_point["compatible"] is True and to_point["baseBackup"] == taken["id"], to_point
    assert "e2e between 2 and 3" in {p["name"] for p in to_point["window"]["restorePoints"]}, to_point
    assert to_point["window"]["segmentsNotSearchedForRestorePoints"] == 0, to_point["window"]
    # The example's second Middleware, with what its comment says to put in: a moment of the window.
    recovery = {**RECOVERED["spec"]["recovery"], "targetTime": between.isoformat()}
    assert recovery["source"] == NAME and recovery["repository"]["name"] == REPOSITORY
    copy_spec = {**RECOVERED["spec"], **SMALL, "recovery": recovery}
    local_cluster.create_middleware(ns, COPY, copy_spec)
    recovered = local_cluster.wait_ready(ns, COPY, timeout=600)
    assert recovered["status"]["recoveryBaseBackup"] == taken["id"], recovered["status"]
    assert all(m["healthy"] for m in recovered["status"]["members"]), recovered["status"]
    with superuser(local_cluster, ns, COPY) as conn:
        marks = {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()}
        timeline = scalar(conn, "SELECT timeline_id FROM pg_control_checkpoint()")
        streaming = scalar(conn, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
    assert marks == {1, 2}, marks  # exactly the rows committed before the moment
    assert timeline == 3, timeline  # promoted after the source's timeline 2
    assert streaming == 1, "the second member cloned the recovered one and follows it"
    with superuser(local_cluster, ns) as conn:
        assert {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()} == {1, 2, 3}

    # A drill, as a DBA runs it: markers written into the source, a random moment of the window
    # recovered by a scratch Middleware's own pods, exactly the earlier markers found there; the
    # scratch goes with its data, the outcome stays in the repository.
    with dba_account(local_cluster, ns) as account:
        drill = in_a_dba_pod(
            local_cluster,
            ns,
            account,
            f"moorage backup drill {NAME} -n {ns} --runtime kubernetes --repo '{url}' -o json",
            pod="dba-drill",
            env_from_secret=KEYS_SECRET,
            diagnostics=("middlewares",),
            timeout=900,
        )
    assert drill["ok"] is True and drill["baseBackup"] == taken["id"], drill
    assert drill["expectedPresent"] + drill["expectedAbsent"] >= 2 and drill["recoverySeconds"] > 0, drill

    def scratch_left() -> list[Any]:
        listed: Any = local_cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "middlewares", label_selector="moorage.io/scratch=drill"
        )
        return list(listed["items"])

    wait_for("the drill's scratch Middleware gone", lambda: not scratch_left(), 300, interval=2.0)
    drills = cli(local_cluster, pod_s3_server, "backup", "drills", NAME, "-n", ns, "--repo", url)
    assert drills["latestVerifiedPoint"] == drill["point"], drills
    # The operator reads it from the repository into the status (its schedule interval, 60 s).
    wait_for(
        "status.lastVerifiedRecoveryPoint",
        lambda: (
            (local_cluster.middleware(ns, NAME).get("status") or {}).get("lastVerifiedRecoveryPoint")
            == drill["point"]
        ),
        180,
        interval=3.0,
    )

    # The schedule, switched on with keepLast 1: never run before, it is due at once and makes a
    # logical MiddlewareBackup and a base one; the base one's Job (the backup ServiceAccount) runs
    # barman in the primary's pod, names the backup after the resource and prunes the DBA's older
    # base backup with the WAL only it needed.
    local_cluster.patch_middleware(ns, NAME, {"backup": {"suspend": False, "keepLast": 1}})

    def scheduled(method: str) -> dict[str, Any] | None:
        listed: Any = local_cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "middlewarebackups", label_selector=f"moorage.io/middleware={NAME}"
        )
        found = [i for i in listed["items"] if i["spec"].get("method") == method]
        return (
            found[0]
            if found and (found[0].get("status") or {}).get("phase") in ("Completed", "Failed")
            else None
        )

    base_backup = wait_for("the scheduled base backup done", lambda: scheduled("Base"), 600, interval=3.0)
    local_cluster.patch_middleware(ns, NAME, {"backup": {"suspend": True}})
    assert base_backup["metadata"]["labels"]["moorage.io/scheduled"] == "true", base_backup["metadata"]
    base_status = base_backup["status"]
    assert base_status["phase"] == "Completed", base_status
    newest = base_status["backupId"]
    info = s3_client(pod_s3_server).get_object(  # type: ignore[attr-defined]
        Bucket=bucket, Key=f"{archive_root(ns)}/base/{newest}/backup.info"
    )
    assert f"backup_name={base_backup['metadata']['name']}" in info["Body"].read().decode()
    listed_base: Any = s3_client(pod_s3_server).list_objects_v2(  # type: ignore[attr-defined]
        Bucket=bucket, Prefix=f"{archive_root(ns)}/base/"
    )
    assert {o["Key"].split("/base/")[1].split("/")[0] for o in listed_base.get("Contents", [])} == {newest}
    latest = cli(
        local_cluster, pod_s3_server, "restore", "plan", "--to", NAME, "-n", ns, "--to-latest", "--repo", url
    )
    assert latest["baseBackup"] == newest and latest["window"]["missingSegments"] == [], latest
    logical = wait_for("the scheduled logical backup done", lambda: scheduled("Logical"), 600, interval=3.0)
    assert logical["status"]["phase"] == "Completed", logical["status"]

    # A drill schedule: due at once (it fires every minute, the last drill was minutes ago), the
    # operator's Job runs `moorage backup drill` in a pod under the drill ServiceAccount, which
    # creates, checks and deletes the scratch Middleware; its record joins the repository's.
    drilled_before = len(
        cli(local_cluster, pod_s3_server, "backup", "drills", NAME, "-n", ns, "--repo", url)["drills"]
    )
    local_cluster.patch_middleware(ns, NAME, {"backup": {"suspend": False, "drillSchedule": "* * * * *"}})
    batch = client.BatchV1Api(local_cluster.api)
    selector = f"moorage.io/middleware={NAME},app.kubernetes.io/component=drill"

    def drill_job() -> Any:
        jobs = batch.list_namespaced_job(ns, label_selector=selector).items
        return jobs[0] if jobs else None

    job = wait_for("the scheduled drill's Job", drill_job, 180, interval=3.0)
    local_cluster.patch_middleware(ns, NAME, {"backup": {"suspend": True}})
    assert job.spec.template.spec.service_account_name == "moorage-drill", job.spec.template.spec
    finished = wait_for(
        "the drill Job finished",
        lambda: (j := drill_job()) and (j.status.succeeded or j.status.failed) and j,
        900,
        interval=3.0,
    )
    assert finished.status.succeeded == 1, finished.status
    drills_after = cli(local_cluster, pod_s3_server, "backup", "drills", NAME, "-n", ns, "--repo", url)
    assert len(drills_after["drills"]) == drilled_before + 1 and drills_after["drills"][-1]["ok"], (
        drills_after
    )
    assert len(batch.list_namespaced_job(ns, label_selector=selector).items) == 1, "one drill per firing"
    wait_for("the scheduled drill's scratch Middleware gone", lambda: not scratch_left(), 300, interval=2.0)

    # A moment before the archive's window is refused before any pod is made, naming the field.
    early = {**recovery, "targetTime": "2020-01-01T00:00:00Z"}
    local_cluster.create_middleware(ns, "too-early", {**copy_spec, "recovery": early})
    refused_early = failed(local_cluster, ns, "too-early")
    message = next(c for c in refused_early["conditions"] if c["type"] == "Provisioned")["message"]
    assert message.startswith("spec.recovery:") and "before the recoverable window" in message, message
    assert not local_cluster.pods(ns, "app.kubernetes.io/instance=too-early")

    # One archive, one cluster: deleted with its data and created again, the name's archive is not
    # empty, so the new cluster is refused before any pod is made.
    local_cluster.patch_middleware(ns, NAME, {"deletionPolicy": "Delete"})
    local_cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "middlewares", NAME)

    def gone() -> bool:
        claims = local_cluster.core.list_namespaced_persistent_volume_claim(
            ns, label_selector=f"app.kubernetes.io/instance={NAME}"
        ).items
        listed: Any = local_cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "middlewares")
        return not claims and NAME not in {m["metadata"]["name"] for m in listed["items"]}

    wait_for("the Middleware and its claims gone", gone, 300, interval=2.0)

    # Its archive outlives it: a new Middleware recovers from it to the end, although the source's
    # credentials went with it (the recovered superuser takes the new Middleware's own password).
    assert (
        local_cluster.core.list_namespaced_secret(
            ns, field_selector=f"metadata.name={NAME}-credentials"
        ).items
        == []
    )
    revived = f"{NAME}-revived"
    local_cluster.create_middleware(
        ns,
        revived,
        {
            **copy_spec,
            "topology": "standalone",
            "replicas": 1,
            "recovery": {"source": NAME, "repository": recovery["repository"]},
        },
    )
    local_cluster.wait_ready(ns, revived, timeout=600)
    with superuser(local_cluster, ns, revived) as conn:
        assert {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()} == {1, 2, 3}
    local_cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "middlewares", revived)

    local_cluster.create_middleware(ns, NAME, SPEC)
    status = failed(local_cluster, ns, NAME)
    message = next(c for c in status["conditions"] if c["type"] == "Provisioned")["message"]
    assert status["phaseReason"] == "InvalidSpec", status
    assert message.startswith("spec.backup.walArchiving:") and archive_root(ns) in message, message
    assert not local_cluster.pods(ns, f"app.kubernetes.io/instance={NAME}")
