"""Point-in-time recovery in pods: the PostgreSQL manifests of an archiving Middleware
(``with_wal_archiving``) and of one recovered from another's archive (``with_recovery``), and the
base backup taken inside a primary's pod. Pure builders, except ``take_base_backup_in_pod``.

The engine renders ``archive_command`` as ``${DATA_DIR}/wal-archive`` and an init container that
copies ``wal-archive`` and ``wal-restore`` from the ConfigMap next to the config; the scripts name
the repository, which only the operator knows, so it adds them here (``with_wal_archiving``). The
S3 keys reach the PostgreSQL container as ``secretKeyRef`` env from the BackupRepository's
credentials Secret (PostgreSQL's archiver inherits its environment, boto3 reads it); a key never
appears in a manifest, a script or a command line. The image carries barman's cloud tools at the
path the local runtime uses (hack/build-images.sh, ``DEFAULT_BARMAN_DIR``).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from backups import pitr
from backups.store import S3Store
from middleware.engines.postgresql.binaries import SHARED_BIN
from middleware.engines.postgresql.config import (
    ADOPT_MARKER,
    ARCHIVE_SCRIPT,
    FIRST_START_MARKER,
    POSTGRES_PORT,
    RECOVERY_SCRIPT,
    RESTORE_SCRIPT,
    RESTORE_SPOOL,
    SOURCE_RESTORE_SCRIPT,
    SUPERUSER,
    guc_quote,
)
from middleware.engines.postgresql.render import CONFIG_DIR, DATA_DIR, PGDATA, SECRETS_FILE
from middleware.errors import MoorageError, SpecError
from middleware.kube.builders import config_map_name, env_from_secret
from middleware.models.backup import CredentialsSecret
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

IMAGE_BARMAN_BIN = pitr.DEFAULT_BARMAN_DIR / "bin"
# The image's PostgreSQL (hack/build-images.sh PG_HOME, the wheel's layout: binaries.SHARED_BIN).
IMAGE_WALDUMP = Path("/opt/moorage/postgresql") / SHARED_BIN / "pg_waldump"
POSTGRES_CONTAINER = "postgresql"
INIT_CONTAINER = "init"
# The pgpass file the init container writes: barman connects as the superuser through it, so no
# password is on the exec's command line.
PGPASS_FILE = SECRETS_FILE
# Segments fetched ahead during a recovery: on the data volume (/tmp is a small emptyDir).
POD_RESTORE_SPOOL = f"{DATA_DIR}/{RESTORE_SPOOL}"


# A point-in-time restore in place: one pod per member's claim while the StatefulSet is scaled down.
CLAIM_CONTAINER = "restore"
RESTORE_OF_LABEL = "moorage.io/restore-of"
# Ends by itself if the restore that made it died without deleting it (the claim is then free for
# `restore rollback`, which makes its own).
CLAIM_POD_DEADLINE_SECONDS = 24 * 3600


def claim_pod_name(member: str) -> str:
    return f"{member}-restore"


def claim_pod(statefulset: Manifest, member: str, claim: str, restore_id: str) -> Manifest:
    """A pod that holds one member's data volume, at the path the member has it, while a restore in
    place works on it over exec (set the data aside, restore a base backup into it, bring it back).
    It runs the PostgreSQL container's image, user, resources and environment (the repository's
    keys arrive as the same secretKeyRef: barman reads them), and sleeps. Not labelled as a member:
    no Service or observation picks it up."""
    template = statefulset["spec"]["template"]
    pod_spec = template["spec"]
    container = next(c for c in pod_spec["containers"] if c["name"] == POSTGRES_CONTAINER)
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == DATA_DIR)
    meta = statefulset["metadata"]
    placement = {k: pod_spec[k] for k in ("nodeSelector", "tolerations") if k in pod_spec}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": claim_pod_name(member),
            "namespace": meta["namespace"],
            "labels": {RESTORE_OF_LABEL: meta["name"], "moorage.io/restore-id": restore_id},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": CLAIM_POD_DEADLINE_SECONDS,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": copy.deepcopy(pod_spec.get("securityContext") or {}),
            **copy.deepcopy(placement),
            "containers": [
                {
                    "name": CLAIM_CONTAINER,
                    "image": container["image"],
                    "imagePullPolicy": container.get("imagePullPolicy", "IfNotPresent"),
                    # exec, not a shell loop: the only process, it exits on the pod's deletion
                    "command": ["sleep", str(CLAIM_POD_DEADLINE_SECONDS)],
                    "env": copy.deepcopy(container.get("env") or []),
                    "resources": copy.deepcopy(container.get("resources") or {}),
                    "securityContext": copy.deepcopy(container.get("securityContext") or {}),
                    "volumeMounts": [
                        {"name": data["name"], "mountPath": DATA_DIR},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": data["name"], "persistentVolumeClaim": {"claimName": claim}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def data_moves_script(action: str, suffix: str | None) -> str:
    """The shell a claim pod runs to move ``PGDATA``; it prints ``moved`` when it moved
    something. ``set-aside``: pgdata -> pgdata.<suffix> (refused if that exists: nothing is ever
    overwritten); ``discard``: pgdata -> pgdata.<suffix>, or deleted when there is no suffix;
    ``bring-back``: pgdata.<suffix> -> pgdata (any pgdata left there was discarded before);
    ``remove``: pgdata.<suffix> deleted (the current data untouched)."""
    current = PGDATA
    other = f"{current}.{suffix}" if suffix else None
    if action in ("set-aside", "discard") and other is not None:
        return (
            f'set -eu; [ -d "{current}" ] || exit 0; '
            f'[ ! -e "{other}" ] || {{ echo "{other} exists already" >&2; exit 3; }}; '
            f'mv "{current}" "{other}"; echo moved'
        )
    if action == "discard":
        return f'set -eu; [ -d "{current}" ] || exit 0; rm -rf "{current}"; echo moved'
    if action == "bring-back" and other is not None:
        return (
            f'set -eu; [ -d "{other}" ] || exit 0; '
            f'[ ! -e "{current}" ] || {{ echo "{current} is in the way" >&2; exit 3; }}; '
            f'mv "{other}" "{current}"; echo moved'
        )
    if action == "remove" and other is not None:
        return f'set -eu; [ -e "{other}" ] || exit 0; rm -rf "{other}"; echo moved'
    raise ValueError(f"unknown data move {action!r} (suffix {suffix!r})")


def with_wal_archiving(
    spec: ResolvedSpec,
    manifests: Iterable[Manifest],
    archive: pitr.WalArchive,
    credentials: CredentialsSecret | None,
) -> list[Manifest]:
    """The rendered manifests with the archive and restore scripts in the ConfigMap and the
    repository's keys in the PostgreSQL container's environment (copies; the input is untouched)."""
    result = [copy.deepcopy(m) for m in manifests]
    config_map, statefulset = _config_map_and_statefulset(spec, result)
    # The config directory is read-only in the container: the notes of segments uploaded ahead go
    # to the pod's /tmp (lost with the pod, which only means those are uploaded again).
    spool = f"/tmp/{pitr.ARCHIVE_SPOOL}"
    config_map["data"][ARCHIVE_SCRIPT] = pitr.archive_script(
        archive, IMAGE_BARMAN_BIN, IMAGE_WALDUMP, spool, compression=spec.wal_compression
    )
    config_map["data"][RESTORE_SCRIPT] = pitr.restore_script(archive, IMAGE_BARMAN_BIN, POD_RESTORE_SPOOL)
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    _add_keys(next(c for c in containers if c["name"] == POSTGRES_CONTAINER), credentials)
    return result


def _config_map_and_statefulset(spec: ResolvedSpec, manifests: list[Manifest]) -> tuple[Manifest, Manifest]:
    config_name = config_map_name(spec)
    config_maps = [m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == config_name]
    statefulsets = [m for m in manifests if m["kind"] == "StatefulSet"]
    if len(config_maps) != 1 or len(statefulsets) != 1:
        raise ValueError(
            f"expected one ConfigMap {config_name} and one StatefulSet, "
            f"got {len(config_maps)} and {len(statefulsets)}"
        )
    return config_maps[0], statefulsets[0]


def _add_keys(container: Manifest, credentials: CredentialsSecret | None) -> None:
    """The repository's keys as secretKeyRef env (barman's boto3 reads them), once."""
    if credentials is None:
        return
    env = container.setdefault("env", [])
    for name, key in (
        ("AWS_ACCESS_KEY_ID", credentials.access_key_id_key),
        ("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key_key),
    ):
        if not any(e["name"] == name for e in env):
            env.append(env_from_secret(name, credentials.name, key))


def base_backup_command(archive: pitr.WalArchive, name: str | None = None) -> list[str]:
    """barman-cloud-backup as run inside the primary's container: it reads the data directory
    there, connects over the loopback with the pgpass file, and takes the keys from the container's
    environment."""
    backup = shlex.join(
        [
            *archive.command(IMAGE_BARMAN_BIN, "barman-cloud-backup"),
            *pitr.base_backup_options(name),
            *("--host", "127.0.0.1", "--port", str(POSTGRES_PORT), "--user", SUPERUSER),
        ]
    )
    region = shlex.quote(archive.config.region)
    return ["sh", "-c", f"PGPASSFILE={PGPASS_FILE} AWS_DEFAULT_REGION={region} exec {backup}"]


Exec = Callable[[list[str]], tuple[int, str]]


def retention_command(archive: pitr.WalArchive, keep_last: int, keep_days: int | None) -> list[str]:
    """barman-cloud-backup-delete as run inside a member's container (the keys in its environment)."""
    delete = shlex.join(
        [
            *archive.command(IMAGE_BARMAN_BIN, "barman-cloud-backup-delete"),
            *pitr.retention_options(keep_last, keep_days),
        ]
    )
    return ["sh", "-c", f"AWS_DEFAULT_REGION={shlex.quote(archive.config.region)} exec {delete}"]


def _run_barman(run_in_pod: Exec, command: list[str], what: str) -> None:
    code, output = run_in_pod(command)
    if code != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise MoorageError(f"{what} failed:\n{tail}")


def take_base_backup_in_pod(
    store: S3Store, archive: pitr.WalArchive, system_id: str, run_in_primary: Exec, *, name: str | None = None
) -> pitr.BaseBackup:
    """``pitr.take_base_backup`` for a pod: the same archive checks, barman run through
    ``run_in_primary`` (an exec into the primary's PostgreSQL container: exit code, output)."""
    what = f"barman-cloud-backup of {archive.namespace}/{archive.name}"
    return pitr.base_backup_with(
        store,
        archive,
        system_id,
        lambda: _run_barman(run_in_primary, base_backup_command(archive, name), what),
    )


def prune_base_backups_in_pod(
    store: S3Store, archive: pitr.WalArchive, run_in_pod: Exec, *, keep_last: int, keep_days: int | None
) -> list[str]:
    """``pitr.prune_base_backups`` with barman run in a member's pod."""
    what = f"barman-cloud-backup-delete of {archive.namespace}/{archive.name}"
    command = retention_command(archive, keep_last, keep_days)
    return pitr.prune_base_backups_with(store, archive, lambda: _run_barman(run_in_pod, command, what))


def recovery_target(spec: ResolvedSpec) -> pitr.RecoveryTarget:
    """spec.recovery's target (none given: the end of the archive); a SpecError names the field."""
    recovery = spec.recovery
    assert recovery is not None
    if recovery.target_time is not None:
        try:
            moment = datetime.fromisoformat(recovery.target_time.replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(
                "spec.recovery.targetTime",
                f"{recovery.target_time!r} is not a time like 2026-12-05T10:00:00Z",
            ) from None
        try:
            return pitr.RecoveryTarget(time=moment)
        except SpecError as exc:
            raise SpecError("spec.recovery.targetTime", exc.reason) from None
    if recovery.target_lsn is not None:
        try:
            return pitr.RecoveryTarget(lsn=recovery.target_lsn)
        except SpecError as exc:
            raise SpecError("spec.recovery.targetLsn", exc.reason) from None
    if recovery.target_restore_point is not None:
        return pitr.RecoveryTarget(name=recovery.target_restore_point)
    return pitr.RecoveryTarget(latest=True)


def recovery_script(source: pitr.WalArchive, backup_id: str, target: pitr.RecoveryTarget) -> str:
    """What the first member's init container runs instead of initdb (``$1``: the data directory):
    the base backup restored from the source's archive, the recovery settings appended (WAL fetched
    through the source's restore script, stop at the target and promote), recovery.signal, the
    first-start marker (the start script then starts it as the one writable member) and the marker
    that has the init container run the recovery and set this Middleware's password."""
    return _restore_base_script(
        source,
        backup_id,
        {"restore_command": f'"{CONFIG_DIR}/{SOURCE_RESTORE_SCRIPT}" "%f" "%p"', **target.settings()},
        f"# Written by Moorage (spec.recovery): base backup {backup_id} of "
        f"{source.namespace}/{source.name} from {source.destination}, recovered to {target.settings()}.",
        "# point-in-time recovery by Moorage (spec.recovery); the init container removes it once promoted",
        # The init container then recovers and gives the superuser this Middleware's password.
        (FIRST_START_MARKER, ADOPT_MARKER),
    )


def restore_in_place_script(archive: pitr.WalArchive, backup_id: str, settings: dict[str, str]) -> str:
    """What a point-in-time restore in place runs in the first member's claim pod (``$1``: the data
    directory, set aside before): the base backup of the Middleware's own archive, the recovery
    settings (WAL fetched through the member's own restore script, which its init container
    installs when it starts), recovery.signal and the first-start marker. The restore resets the
    settings once the member promoted."""
    return _restore_base_script(
        archive,
        backup_id,
        {"restore_command": f'"{CONFIG_DIR}/{RESTORE_SCRIPT}" "%f" "%p"', **settings},
        f"# Written by Moorage (restore apply): base backup {backup_id} of {archive.namespace}/"
        f"{archive.name} from {archive.destination}, recovered with {settings}.",
        "# point-in-time recovery by Moorage; reset once promoted",
        (FIRST_START_MARKER,),
    )


def _restore_base_script(
    archive: pitr.WalArchive,
    backup_id: str,
    settings: dict[str, str],
    header: str,
    marker: str,
    flags: tuple[str, ...],
) -> str:
    restore = shlex.join([*archive.command(IMAGE_BARMAN_BIN, "barman-cloud-restore"), backup_id])
    lines = [
        "#!/bin/sh",
        header,
        "set -eu",
        "pgdata=$1",
        f'rm -rf "{POD_RESTORE_SPOOL}"  # what an earlier recovery fetched ahead is not trusted',
        f"export AWS_DEFAULT_REGION={shlex.quote(archive.config.region)}",
        f'{restore} "$pgdata"',
        'chmod 0700 "$pgdata"',
        "cat >> \"$pgdata/postgresql.auto.conf\" <<'EOF'",
        marker,
        *(f"{key} = {guc_quote(value)}" for key, value in settings.items()),
        "EOF",
        ': > "$pgdata/recovery.signal"',
        *(f': > "$pgdata/{flag}"' for flag in flags),
        "",
    ]
    return "\n".join(lines)


def with_recovery(
    spec: ResolvedSpec,
    manifests: Iterable[Manifest],
    source: pitr.WalArchive,
    backup_id: str,
    credentials: CredentialsSecret | None,
) -> list[Manifest]:
    """The manifests of a Middleware created from ``source``'s archive (spec.recovery): the recovery
    and source restore scripts in the ConfigMap, the repository's keys (secretKeyRef) in the init
    container, which restores, and in the PostgreSQL container, which fetches the WAL."""
    result = [copy.deepcopy(m) for m in manifests]
    config_map, statefulset = _config_map_and_statefulset(spec, result)
    config_map["data"][RECOVERY_SCRIPT] = recovery_script(source, backup_id, recovery_target(spec))
    config_map["data"][SOURCE_RESTORE_SCRIPT] = pitr.restore_script(
        source, IMAGE_BARMAN_BIN, POD_RESTORE_SPOOL
    )
    pod = statefulset["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        if container["name"] in (POSTGRES_CONTAINER, INIT_CONTAINER):
            _add_keys(container, credentials)
    return result
