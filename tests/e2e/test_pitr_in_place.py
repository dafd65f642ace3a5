"""A point-in-time restore of a Middleware in place, on real pods (issue 14), as a DBA runs it:
``moorage restore apply --to NAME --to-lsn L --runtime kubernetes`` in a pod bound to the DBA role,
then ``moorage restore rollback``.

A 2-member archiving Middleware gets marks 1 and 2 around a base backup, the target is the LSN right
after mark 2, and mark 3 follows. A restore to a restore point the WAL never names fails late, in
PostgreSQL's recovery, and is undone by itself: marks 1, 2 and 3, Ready. Then the restore to the
LSN holds the Middleware, scales its StatefulSet to 0, sets every member's data aside through a pod
per claim, restores the base backup into the first member's volume, lets it recover to the target
and promote, and re-seeds the second member from it: exactly marks 1 and 2, on a new timeline, the
second member streaming, archiving on that timeline, no claim pod and no hold left. The rollback
brings back the data from before: exactly marks 1, 2 and 3 (mark 4, written after the restore,
stays in the data kept aside). The claims are the same objects throughout.
"""

from __future__ import annotations

from typing import Any

import pytest

from backups.pitr_pods import RESTORE_OF_LABEL
from middleware.operations import RESTORE_HOLD_ANNOTATION
from tests.e2e.cluster import LocalCluster, wait_for
from tests.e2e.dba import dba_account, in_a_dba_pod
from tests.e2e.test_backups import KEYS_SECRET, bucket  # noqa: F401  (fixture)
from tests.e2e.test_pitr import (
    ARCHIVE_TIMEOUT,
    NAME,
    SPEC,
    archived_segments,
    repository_url,
    scalar,
    superuser,
    switch_segment,
)
from tests.integration.s3_harness import S3Server

pytestmark = pytest.mark.e2e


def marks(cluster: LocalCluster, namespace: str) -> set[int]:
    with superuser(cluster, namespace) as conn:
        return {row[0] for row in conn.execute("SELECT n FROM marks").fetchall()}


def settled(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """Ready again with both members healthy, the hold gone and no pod holding a claim."""

    def ready() -> dict[str, Any] | None:
        body = cluster.middleware(namespace, NAME)
        status = body.get("status") or {}
        members = status.get("members") or []
        if status.get("phase") != "Ready" or len(members) != 2 or not all(m["healthy"] for m in members):
            return None
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

        # A restore that fails late (a restore point the WAL never names: PostgreSQL replays to the
        # end of the archive and stops, "recovery ended before configured recovery target was
        # reached") puts the data set aside back and says so.
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
