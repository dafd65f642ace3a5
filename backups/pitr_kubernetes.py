"""``backups.pitr_restore.RecoveryPort`` in a cluster: a point-in-time restore of a Middleware in
place, on its own pods and volumes (``moorage restore apply --to NAME --to-time T --runtime
kubernetes``, and its ``restore rollback``).

PostgreSQL must be stopped while its data directory is replaced, and only a pod can reach a
member's volume. So the restore holds the Middleware (``RESTORE_HOLD_ANNOTATION``: the operator
neither re-applies the StatefulSet nor heals meanwhile), scales its StatefulSet to 0, and works on
each member's claim through a pod that mounts it (``pitr_pods.claim_pod``, over exec: the moves
are renames, the base backup is restored by barman in the PostgreSQL image). The first member then
starts alone and recovers to the target; once it promoted, the StatefulSet goes back to its size,
the hold is lifted and the other members clone the restored one. The orchestration is
``pitr_restore``'s, the same as the local runtime's.

Restoring from another Middleware's archive into an existing one is the local runtime's only; in a
cluster a new Middleware with ``spec.recovery`` does that (docs/backups.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from backups import pitr, pitr_pods
from backups.kubernetes import API_VERSION, KubernetesTargets
from middleware.engines.postgresql.config import POSTGRES_PORT, SUPERUSER
from middleware.engines.postgresql.render import PGDATA
from middleware.errors import MoorageError, SpecError
from middleware.kube.builders import DATA_VOLUME, ROLE_LABEL
from middleware.operations import RESTORE_HOLD_ANNOTATION
from middleware.runtime.kubernetes import KubernetesRuntime, pod_ready

POLL_SECONDS = 2.0
EXEC_TIMEOUT_SECONDS = 300.0
# barman-cloud-restore of a large base backup: as long as a base backup may take.
RESTORE_BASE_TIMEOUT_SECONDS = 6 * 3600.0


class KubernetesRecovery:
    """The members of ``namespace/name`` (PostgreSQL with walArchiving) as a ``RecoveryPort``;
    ``restore_id`` names the hold and the claim pods."""

    def __init__(
        self,
        rt: KubernetesRuntime,
        namespace: str,
        name: str,
        restore_id: str,
        *,
        ready_timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        target = KubernetesTargets(rt).get(namespace, name)
        if target.spec.engine != "postgresql":
            raise SpecError(
                "spec.engine",
                f"{namespace}/{name} is {target.spec.engine}: only PostgreSQL recovers to a point",
            )
        if not target.spec.wal_archiving:
            raise SpecError(
                "spec.backup.walArchiving",
                f"is off for {namespace}/{name}: there is no archived WAL to recover to a point with",
            )
        self.rt, self.namespace, self.name, self.restore_id = rt, namespace, name, restore_id
        self.members = [m.name for m in target.engine.members(target.spec)]
        statefulsets = [m for m in target.engine.render(target.spec) if m["kind"] == "StatefulSet"]
        assert len(statefulsets) == 1, "PostgreSQL renders one StatefulSet"
        self.statefulset = statefulsets[0]["metadata"]["name"]
        self.ready_timeout, self.clock, self.sleep = ready_timeout, clock, sleep

    # -- the port ---------------------------------------------------------------------------
    def timeline(self) -> int | None:
        for member in self.members:
            pod = self.rt.get("v1", "Pod", self.namespace, member)
            if pod is None or not pod_ready(pod):
                continue
            code, output = self._sql(
                member, "SELECT pg_is_in_recovery(), timeline_id FROM pg_control_checkpoint()"
            )
            if code == 0 and output.strip().startswith("f|"):
                return int(output.strip().split("|")[1])
        return None

    def stop(self) -> None:
        self._hold(self.restore_id)
        self._scale(0)
        self._wait("the members to stop", lambda: not self._member_pods() or None)

    def set_aside(self, suffix: str) -> list[str]:
        return self._move("set-aside", suffix)

    def discard_current(self, keep_as: str | None) -> None:
        self._move("discard", keep_as)

    def bring_back(self, suffix: str) -> None:
        self._move("bring-back", suffix)

    def remove_set_aside(self, suffix: str) -> list[str]:
        """In each member's own container, where its volume is mounted: the members run on."""
        removed: list[str] = []
        script = pitr_pods.data_moves_script("remove", suffix)
        for member in self.members:
            pod = self.rt.get("v1", "Pod", self.namespace, member)
            if pod is None or not pod_ready(pod):
                raise MoorageError(
                    f"{member} is not running: its volume is out of reach (removed so far: "
                    f"{', '.join(removed) or 'none'}); run the command again once it is Ready"
                )
            code, output = self._in_member(member, ["sh", "-c", script])
            if code != 0:
                raise MoorageError(f"removing {member}'s pgdata.{suffix} failed:\n{_tail(output)}")
            if "moved" in output.split():
                removed.append(member)
        return removed

    def restore_base(
        self, archive: pitr.WalArchive, backup: pitr.BaseBackup, settings: dict[str, str]
    ) -> str:
        if (archive.namespace, archive.name) != (self.namespace, self.name):
            raise MoorageError(
                "in a cluster a Middleware is restored in place from its own archive only: create a new "
                "Middleware with spec.recovery to recover from another one's (docs/backups.md)"
            )
        member = self.members[0]
        pod = self._claim_pods([member]).get(member)
        if pod is None:
            raise MoorageError(f"{member} has no volume claim ({DATA_VOLUME}-{member}) to restore into")
        script = pitr_pods.restore_in_place_script(archive, backup.backup_id, settings)
        command = ["sh", "-c", script, "restore-in-place", PGDATA]
        code, output = self.rt.exec_in_pod(
            self.namespace, pod, pitr_pods.CLAIM_CONTAINER, command, RESTORE_BASE_TIMEOUT_SECONDS
        )
        if code != 0:
            raise MoorageError(
                f"barman-cloud-restore of {backup.backup_id} into {member} failed:\n{_tail(output)}"
            )
        return member

    def start_restored(self, member: str, timeout: float) -> None:
        self._delete_claim_pods()
        self._scale(self.members.index(member) + 1)
        deadline = self.clock() + timeout
        while True:
            pod = self.rt.get("v1", "Pod", self.namespace, member)
            if pod is not None:
                self._raise_if_failed(pod)
                if pod_ready(pod):
                    code, output = self._sql(member, "SELECT pg_is_in_recovery()")
                    if code == 0 and output.strip() == "f":
                        break
            if self.clock() > deadline:
                raise MoorageError(f"{member} did not reach the recovery target within {timeout:.0f}s")
            self.sleep(POLL_SECONDS)
        # The -rw Service selects the primary by this label: the others clone through it, before the
        # operator (held until then) looks again.
        self.rt.label_pod(self.namespace, member, {ROLE_LABEL: "primary"})

    def start_all(self) -> None:
        self._delete_claim_pods()
        self._scale(len(self.members))
        # Lifted before the wait: after a rollback every member may start fenced as a standby, and
        # the operator's heal is what promotes one of them again.
        self._hold(None)

        def settled() -> bool | None:
            pods = {p["metadata"]["name"]: p for p in self._member_pods()}
            for pod in pods.values():
                self._raise_if_failed(pod)
            if set(pods) != set(self.members) or not all(pod_ready(p) for p in pods.values()):
                return None
            writable = [
                m for m in self.members if self._sql(m, "SELECT pg_is_in_recovery()")[1].strip() == "f"
            ]
            return len(writable) == 1 or None

        self._wait("every member Ready behind one primary", settled)

    def clear_recovery_settings(self, names: list[str]) -> None:
        member = self.members[0]
        resets = [f"ALTER SYSTEM RESET {name}" for name in names]
        code, output = self._sql(member, *resets, "SELECT pg_reload_conf()")
        if code != 0:
            raise MoorageError(f"resetting the recovery settings on {member} failed:\n{_tail(output)}")
        self.rt.exec_in_pod(
            self.namespace,
            member,
            pitr_pods.POSTGRES_CONTAINER,
            ["rm", "-rf", pitr_pods.POD_RESTORE_SPOOL],  # segments fetched past the target
            EXEC_TIMEOUT_SECONDS,
        )

    # -- helpers ----------------------------------------------------------------------------
    def _hold(self, restore_id: str | None) -> None:
        patch = {"metadata": {"annotations": {RESTORE_HOLD_ANNOTATION: restore_id}}}
        if self.rt.merge_patch(API_VERSION, "Middleware", self.namespace, self.name, patch) is None:
            raise MoorageError(f"Middleware {self.namespace}/{self.name} is gone")

    def _scale(self, replicas: int) -> None:
        patch = {"spec": {"replicas": replicas}}
        if self.rt.merge_patch("apps/v1", "StatefulSet", self.namespace, self.statefulset, patch) is None:
            raise MoorageError(f"StatefulSet {self.namespace}/{self.statefulset} is gone")

    def _member_pods(self) -> list[dict[str, Any]]:
        statefulset = self.rt.get("apps/v1", "StatefulSet", self.namespace, self.statefulset)
        if statefulset is None:
            return []
        selector = statefulset["spec"]["selector"]["matchLabels"]
        return [p for p in self.rt.pods(self.namespace, selector) if p["metadata"]["name"] in self.members]

    def _claim_pods(self, members: list[str]) -> dict[str, str]:
        """A pod holding each member's claim (made unless there), once it runs: member -> pod name
        (a member whose claim does not exist, never started, has none: nothing to move there)."""
        statefulset = self.rt.get("apps/v1", "StatefulSet", self.namespace, self.statefulset)
        if statefulset is None:
            raise MoorageError(f"StatefulSet {self.namespace}/{self.statefulset} is gone")
        statefulset.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        names: dict[str, str] = {}
        for member in members:
            claim = f"{DATA_VOLUME}-{member}"
            if self.rt.get("v1", "PersistentVolumeClaim", self.namespace, claim) is None:
                continue
            self.rt.create(pitr_pods.claim_pod(statefulset, member, claim, self.restore_id))
            names[member] = pitr_pods.claim_pod_name(member)

        def running() -> bool | None:
            for name in names.values():
                pod = self.rt.get("v1", "Pod", self.namespace, name)
                phase = ((pod or {}).get("status") or {}).get("phase")
                if phase in ("Failed", "Succeeded"):
                    raise MoorageError(f"pod {name} ended ({phase}) before the restore could use it")
                if phase != "Running":
                    return None
            return True

        self._wait("the pods holding the members' volumes", running)
        return names

    def _delete_claim_pods(self) -> None:
        labels = {pitr_pods.RESTORE_OF_LABEL: self.statefulset}
        for pod in self.rt.pods(self.namespace, labels):
            self.rt.delete("v1", "Pod", self.namespace, pod["metadata"]["name"])
        # Gone before a member starts: never two PostgreSQL processes' worth of hands on one volume.
        self._wait(
            "the pods holding the volumes to go", lambda: not self.rt.pods(self.namespace, labels) or None
        )

    def _move(self, action: str, suffix: str | None) -> list[str]:
        moved = []
        script = pitr_pods.data_moves_script(action, suffix)
        for member, pod in self._claim_pods(self.members).items():
            code, output = self.rt.exec_in_pod(
                self.namespace, pod, pitr_pods.CLAIM_CONTAINER, ["sh", "-c", script], EXEC_TIMEOUT_SECONDS
            )
            if code != 0:
                raise MoorageError(f"{action} of {member}'s data failed:\n{_tail(output)}")
            if "moved" in output.split():
                moved.append(member)
        return moved

    def _sql(self, member: str, *statements: str) -> tuple[int, str]:
        """psql as the superuser over the member's loopback (its pgpass file), one statement per
        -c (ALTER SYSTEM runs outside a transaction); unaligned, tuples only."""
        command = [
            "env", f"PGPASSFILE={pitr_pods.PGPASS_FILE}",
            "psql", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", SUPERUSER, "-d", "postgres",
            "-XAtq", "-v", "ON_ERROR_STOP=1",
            *(part for statement in statements for part in ("-c", statement)),
        ]  # fmt: skip
        return self._in_member(member, command)

    def _in_member(self, member: str, command: list[str]) -> tuple[int, str]:
        """``command`` in the member's PostgreSQL container: exit code and output."""
        try:
            return self.rt.exec_in_pod(
                self.namespace, member, pitr_pods.POSTGRES_CONTAINER, command, EXEC_TIMEOUT_SECONDS
            )
        except ApiException as exc:  # the container stopped between the pod's status and the exec
            return -1, f"exec into {member}: {exc.status} {exc.reason}"

    def _raise_if_failed(self, pod: dict[str, Any]) -> None:
        """A member that stopped (its init failed, PostgreSQL exited or restarted) fails the step at
        once, with the end of its log, instead of at the timeout."""
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for kind in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(kind) or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                failed = terminated and terminated.get("exitCode", 0) != 0
                if failed or container.get("restartCount", 0) > 0:
                    # The stopped run is the current one when the status shows it terminated, the
                    # previous one once the kubelet restarted it; it may restart between the status
                    # read and this call, so the other run is read when the first has nothing.
                    log, first = "", not failed
                    for previous in (first, not first):
                        log = self.rt.pod_log(
                            self.namespace, name, container["name"], previous=previous, lines=15
                        ).strip()
                        if log:
                            break
                    raise MoorageError(f"{name}: {container['name']} stopped; its log ends:\n{log}")

    def _wait(self, what: str, done: Callable[[], bool | None]) -> None:
        deadline = self.clock() + self.ready_timeout
        while not done():
            if self.clock() > deadline:
                raise MoorageError(f"gave up waiting for {what} after {self.ready_timeout:.0f}s")
            self.sleep(POLL_SECONDS)


def _tail(output: str, lines: int = 8) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])
