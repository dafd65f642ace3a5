"""A point-in-time restore of a Middleware in place, on real pods (issue 14), as a DBA runs it:
``moorage restore apply --to NAME --to-lsn L --runtime kubernetes`` in a pod bound to the DBA role,
then ``moorage restore rollback``.

A 2-member archiving Middleware gets marks 1 and 2 around a base backup, the target is the LSN right
after mark 2, and mark 3 follows. A restore to a restore point the WAL never names is refused
before anything is touched; with the archive's search for restore points deleted (as for WAL
archived before the search existed) it fails late, in PostgreSQL's recovery, and is undone by
itself: marks 1, 2 and 3, Ready. Then the restore to the
LSN holds the Middleware, scales its StatefulSet to 0, sets every member's data aside through a pod
per claim, restores the base backup into the first member's volume, lets it recover to the target
and promote, and re-seeds the second member from it: exactly marks 1 and 2, on a new timeline, the
second member streaming, archiving on that timeline, no claim pod and no hold left. The rollback
brings back the data from before: exactly marks 1, 2 and 3 (mark 4, written after the restore,
stays in the data kept aside, until ``restore discard`` deletes that from both volumes while the
members run on). The claims are the same objects throughout.
"""

from __future__ import annotations

from typing import Any

import pytest

from backups.pitr import RESTORE_POINT_INDEX
from backups.pitr_pods import POSTGRES_CONTAINER, RESTORE_OF_LABEL
from middleware.operations import RESTORE_HOLD_ANNOTATION
from tests.e2e.cluster import LocalCluster, wait_for
from tests.e2e.dba import dba_account, in_a_dba_pod
from tests.e2e.s3 import s3_client
from tests.e2e.test_backups import KEYS_SECRET, bucket  # noqa: F401  (fixture)
from tests.e2e.test_pitr import (
    ARCHIVE_TIMEOUT,
    NAME,
    SPEC,
    archive_root,
    archived_segments,
    failed,
    repository_url,
    scalar,
    searched_segments,
    superuser,
    switch_segment,
)
from tests.integration.s3_harness import S3Server

pytestmark = pytest.mark.e2e


def marks(cluster: LocalCluster, namespace: str) -> set[int]:
    with superuser(cluster, namespace) as conn:
        return {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()}


def settled(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """Ready again with both members healthy, not Progressing, the hold gone and no pod holding a
    claim."""

    def ready() -> dict[str, Any] | None:
        body = cluster.middleware(namespace, NAME)
        status = body.get("status") or {}
        members = status.get("members") or []
        if status.get("phase") != "Ready" or len(members) != 2 or not all(m["healthy"] for m in members):
            return None
        progressing = next((c for c in status.get("conditions") or [] if c["type"] == "Progressing"), None)
        if progressing is not None and progressing["status"] == "True":
            return None  # the hold's RestoreInProgress is set back once the hold is gone
        return body

    body: dict[str, Any] = wait_for(f"{NAME} Ready with 2 healthy members", ready, 600, interval=2.0)
    assert RESTORE_HOLD_ANNOTATION not in (body["metadata"].get("annotations") or {}), body["metadata"]
    assert not cluster.pods(namespace, f"{RESTORE_OF_LABEL}={NAME}")
    return body


def test_a_dba_restores_a_middleware_in_place_to_a_point_and_rolls_it_back(
    local_cluster: LocalCluster,
    module_namespace: str,
    bucket: str,  # noqa: F811  (the fixture imported above)
    pod_s3_server: S3Server,
) -> None:
    ns = module_namespace
    url = repository_url(pod_s3_server, bucket)
    local_cluster.create_middleware(ns, NAME, SPEC)
    local_cluster.wait_ready(ns, NAME, timeout=600)
    switch_segment(local_cluster, ns, 1)

    with dba_account(local_cluster, ns) as account:

        def as_dba(command: str, pod: str, expect_failure: bool = False) -> Any:
            return in_a_dba_pod(
                local_cluster,
                ns,
                account,
                f"moorage {command} --runtime kubernetes --repo '{url}' -o json",
                pod=pod,
                env_from_secret=KEYS_SECRET,
                diagnostics=("middlewares", "pods"),
                timeout=900,
                expect_failure=expect_failure,
            )

        taken = as_dba(f"backup base {NAME} -n {ns}", "dba-base")
        with superuser(local_cluster, ns) as conn:
            conn.execute("INSERT INTO marks VALUES (2)")
            target = scalar(conn, "SELECT pg_current_wal_lsn()")
        after = switch_segment(local_cluster, ns, 3)
        wait_for(
            f"segment {after} in S3",
            lambda: after in archived_segments(pod_s3_server, bucket, ns),
            ARCHIVE_TIMEOUT,
            interval=2.0,
        )
        claims_before = {
            c.metadata.name: c.metadata.uid
            for c in local_cluster.core.list_namespaced_persistent_volume_claim(
                ns, label_selector=f"app.kubernetes.io/instance={NAME}"
            ).items
        }

        # A restore point the WAL never names is refused before anything is touched: the archive
        # script searched every segment it archived for restore points.
        wait_for(
            f"segment {after} searched for restore points",
            lambda: after in searched_segments(pod_s3_server, bucket, ns),
            ARCHIVE_TIMEOUT,
            interval=2.0,
        )
        refused = as_dba(
            f"restore apply --to {NAME} -n {ns} --to-restore-point no-such-point --yes",
            "dba-refused-restore",
            expect_failure=True,
        )
        assert "'no-such-point' is in none of the archived WAL segments" in refused, refused
        assert "set aside" not in refused and marks(local_cluster, ns) == {1, 2, 3}, refused

        # Where the segments were never searched (archived before Moorage searched them: the
        # search's keys deleted here), the name is left to PostgreSQL's recovery. The restore then
        # fails late (PostgreSQL replays to the end of the archive and stops, "recovery ended
        # before configured recovery target was reached"), puts the data set aside back and says so.
        s3: Any = s3_client(pod_s3_server)
        index = s3.list_objects_v2(Bucket=bucket, Prefix=f"{archive_root(ns)}/{RESTORE_POINT_INDEX}/")
        keys = [{"Key": item["Key"]} for item in index.get("Contents", [])]
        assert keys and not index.get("IsTruncated"), index
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        failure = as_dba(
            f"restore apply --to {NAME} -n {ns} --to-restore-point no-such-point --yes",
            "dba-failed-restore",
            expect_failure=True,
        )
        assert "failed and was undone" in failure and "recovery ended before" in failure, failure
        settled(local_cluster, ns)
        assert marks(local_cluster, ns) == {1, 2, 3}
        # Both members came back fenced (as after any full stop) and the operator's heal promoted
        # one of them: a timeline after the original one.
        with superuser(local_cluster, ns) as conn:
            before = scalar(conn, "SELECT timeline_id FROM pg_control_checkpoint()")

        record = as_dba(f"restore apply --to {NAME} -n {ns} --to-lsn {target} --yes", "dba-restore")
        assert record["phase"] == "Applied" and record["backupId"] == taken["id"], record
        assert record["setAside"] == [f"{NAME}-0", f"{NAME}-1"], record
        settled(local_cluster, ns)
        assert marks(local_cluster, ns) == {1, 2}  # exactly the rows committed up to the target
        with superuser(local_cluster, ns) as conn:
            restored = scalar(conn, "SELECT timeline_id FROM pg_control_checkpoint()")
        assert restored == before + 1, (before, restored)  # promoted at the target
        wait_for(
            "the second member streaming from the restored one",
            lambda: scalar_on_primary(local_cluster, ns, "SELECT count(*) FROM pg_stat_replication") == 1,
            120,
            interval=2.0,
        )
        # The restored primary archives again, on its new timeline.
        fourth = switch_segment(local_cluster, ns, 4)
        assert fourth.startswith(f"{restored:08X}"), fourth
        wait_for(
            f"segment {fourth} (timeline {restored}) in S3",
            lambda: fourth in archived_segments(pod_s3_server, bucket, ns),
            ARCHIVE_TIMEOUT,
            interval=2.0,
        )

        back = as_dba(f"restore rollback {record['restoreId']} --yes", "dba-rollback")
        assert back["phase"] == "RolledBack" and back["rolledBack"] is True, back
        settled(local_cluster, ns)
        assert marks(local_cluster, ns) == {1, 2, 3}  # the data from before, exactly

        # Kept for good: the restored data goes from both volumes, in the running members' own
        # containers; the members run on with the same rows.
        def set_aside(member: str) -> list[str]:
            listing = local_cluster.kubectl(
                "-n", ns, "exec", member, "-c", POSTGRES_CONTAINER, "--", "ls", "-a", "/data"
            )  # fmt: skip
            return sorted(n for n in listing.split() if n.startswith("pgdata."))

        after = f"pgdata.after-{record['restoreId']}"
        assert [set_aside(m) for m in (f"{NAME}-0", f"{NAME}-1")] == [[after], [after]]
        kept = as_dba(f"restore discard {record['restoreId']} --yes", "dba-discard")
        assert kept["discarded"] == f"after-{record['restoreId']}", kept
        assert [set_aside(m) for m in (f"{NAME}-0", f"{NAME}-1")] == [[], []]
        assert marks(local_cluster, ns) == {1, 2, 3}
    claims_after = {
        c.metadata.name: c.metadata.uid
        for c in local_cluster.core.list_namespaced_persistent_volume_claim(
            ns, label_selector=f"app.kubernetes.io/instance={NAME}"
        ).items
    }
    assert claims_after == claims_before  # the same volumes throughout: nothing deleted


def scalar_on_primary(cluster: LocalCluster, namespace: str, query: str) -> Any:
    with superuser(cluster, namespace) as conn:
        return scalar(conn, query)


def test_archiving_turned_on_for_a_middleware_with_data_rolls_its_pods_onto_it(
    local_cluster: LocalCluster,
    module_namespace: str,
    bucket: str,  # noqa: F811  (the fixture imported above)
    pod_s3_server: S3Server,
) -> None:
    """spec.backup.walArchiving set on a 2-member Middleware that was created without it. With
    another cluster's base backup under its prefix (copied from a second Middleware's real one):
    refused naming the field, no pod rolled. With the prefix cleared: the changed pod template rolls
    the pods onto archive_mode, the data stays, the status says Archiving and a switched segment
    reaches S3 under this Middleware's prefix."""
    ns, name = module_namespace, f"{NAME}-later"
    policy = {k: v for k, v in SPEC["backup"].items() if k not in ("walArchiving", "drillSchedule")}
    local_cluster.create_middleware(ns, name, {**SPEC, "backup": policy})
    local_cluster.wait_ready(ns, name, timeout=600)
    with superuser(local_cluster, ns, name) as conn:
        conn.execute("CREATE TABLE marks (n int PRIMARY KEY)")
        conn.execute("INSERT INTO marks VALUES (1)")
        assert scalar(conn, "SHOW archive_mode") == "off"

    # First with another cluster's base backup under this name's prefix (a bucket reused): refused
    # naming the field, before any pod rolls.
    other = f"{NAME}-other"
    local_cluster.create_middleware(
        ns,
        other,
        {**SPEC, "topology": "standalone", "replicas": 1, "backup": {**policy, "walArchiving": True}},
    )
    local_cluster.wait_ready(ns, other, timeout=600)
    with dba_account(local_cluster, ns) as account:
        in_a_dba_pod(
            local_cluster,
            ns,
            account,
            f"moorage backup base {other} -n {ns} --runtime kubernetes "
            f"--repo '{repository_url(pod_s3_server, bucket)}' -o json",
            pod="dba-other-base",
            env_from_secret=KEYS_SECRET,
            timeout=600,
        )
    s3: Any = s3_client(pod_s3_server)
    root = archive_root(ns).removesuffix(NAME)
    theirs = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{root}{other}/")
        for item in page.get("Contents", [])
    ]
    for key in theirs:
        s3.copy_object(
            Bucket=bucket,
            Key=key.replace(f"/{other}/", f"/{name}/", 1),
            CopySource={"Bucket": bucket, "Key": key},
        )
    pods_before = {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={name}")
    }
    local_cluster.patch_middleware(ns, name, {"backup": {**policy, "walArchiving": True}})
    refused = failed(local_cluster, ns, name)
    message = next(c for c in refused["conditions"] if c["type"] == "Provisioned")["message"]
    assert message.startswith("spec.backup.walArchiving:") and "belongs to another cluster" in message, (
        message
    )
    assert {
        p.metadata.name: p.metadata.uid for p in local_cluster.pods(ns, f"app.kubernetes.io/instance={name}")
    } == (pods_before)
    with superuser(local_cluster, ns, name) as conn:
        assert scalar(conn, "SHOW archive_mode") == "off"

    # As the refusal says: that prefix cleared, and the spec applied again.
    mine = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{root}{name}/")
        for item in page.get("Contents", [])
    ]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in mine]})
    local_cluster.patch_middleware(ns, name, {"backup": {**policy, "walArchiving": None}})  # merge: removed
    local_cluster.wait_ready(ns, name, timeout=300)
    local_cluster.patch_middleware(ns, name, {"backup": {**policy, "walArchiving": True}})

    def archiving() -> dict[str, Any] | None:
        status = local_cluster.middleware(ns, name).get("status") or {}
        condition = next(
            (c for c in status.get("conditions") or [] if c["type"] == "WALArchivingFailing"), None
        )
        ready = status.get("phase") == "Ready" and all(m["healthy"] for m in status.get("members") or [])
        return condition if ready and condition and condition["status"] == "False" else None

    condition = wait_for(f"{name} Ready and archiving", archiving, 600, interval=2.0)
    assert condition["reason"] == "Archiving", condition
    with superuser(local_cluster, ns, name) as conn:
        assert scalar(conn, "SHOW archive_mode") == "on"
        assert {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()} == {1}
        conn.execute("INSERT INTO marks VALUES (2)")
        segment = scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())")
    wals = archive_root(ns).removesuffix(NAME) + f"{name}/wals/"

    def archived() -> set[str]:
        s3: Any = s3_client(pod_s3_server)
        return {
            item["Key"].rsplit("/", 1)[-1].split(".")[0]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=wals)
            for item in page.get("Contents", [])
        }

    wait_for(f"segment {segment} in S3", lambda: segment in archived(), ARCHIVE_TIMEOUT, interval=2.0)
