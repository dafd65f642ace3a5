"""WAL archiving in pods: the PostgreSQL manifests of an archiving Middleware, and the base backup
taken inside its primary's pod. Pure builders, except ``take_base_backup_in_pod``.

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
from typing import Any

from backups import pitr
from backups.store import S3Store
from middleware.engines.postgresql.config import ARCHIVE_SCRIPT, POSTGRES_PORT, RESTORE_SCRIPT, SUPERUSER
from middleware.engines.postgresql.render import SECRETS_FILE
from middleware.errors import MoorageError
from middleware.kube.builders import config_map_name, env_from_secret
from middleware.models.backup import CredentialsSecret
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

IMAGE_BARMAN_BIN = pitr.DEFAULT_BARMAN_DIR / "bin"
POSTGRES_CONTAINER = "postgresql"
# The pgpass file the init container writes: barman connects as the superuser through it, so no
# password is on the exec's command line.
PGPASS_FILE = SECRETS_FILE


def with_wal_archiving(
    spec: ResolvedSpec,
    manifests: Iterable[Manifest],
    archive: pitr.WalArchive,
    credentials: CredentialsSecret | None,
) -> list[Manifest]:
    """The rendered manifests with the archive and restore scripts in the ConfigMap and the
    repository's keys in the PostgreSQL container's environment (copies; the input is untouched)."""
    result = [copy.deepcopy(m) for m in manifests]
    config_name = config_map_name(spec)
    config_maps = [m for m in result if m["kind"] == "ConfigMap" and m["metadata"]["name"] == config_name]
    statefulsets = [m for m in result if m["kind"] == "StatefulSet"]
    if len(config_maps) != 1 or len(statefulsets) != 1:
        raise ValueError(
            f"expected one ConfigMap {config_map_name(spec)} and one StatefulSet, "
            f"got {len(config_maps)} and {len(statefulsets)}"
        )
    config_maps[0]["data"][ARCHIVE_SCRIPT] = pitr.archive_script(archive, IMAGE_BARMAN_BIN)
    config_maps[0]["data"][RESTORE_SCRIPT] = pitr.restore_script(archive, IMAGE_BARMAN_BIN)
    if credentials is not None:
        containers = statefulsets[0]["spec"]["template"]["spec"]["containers"]
        postgres = next(c for c in containers if c["name"] == POSTGRES_CONTAINER)
        postgres.setdefault("env", []).extend(
            [
                env_from_secret("AWS_ACCESS_KEY_ID", credentials.name, credentials.access_key_id_key),
                env_from_secret("AWS_SECRET_ACCESS_KEY", credentials.name, credentials.secret_access_key_key),
            ]
        )
    return result


def base_backup_command(archive: pitr.WalArchive) -> list[str]:
    """barman-cloud-backup as run inside the primary's container: it reads the data directory
    there, connects over the loopback with the pgpass file, and takes the keys from the container's
    environment."""
    backup = shlex.join(
        [
            *archive.command(IMAGE_BARMAN_BIN, "barman-cloud-backup"),
            *pitr.BASE_BACKUP_OPTIONS,
            *("--host", "127.0.0.1", "--port", str(POSTGRES_PORT), "--user", SUPERUSER),
        ]
    )
    region = shlex.quote(archive.config.region)
    return ["sh", "-c", f"PGPASSFILE={PGPASS_FILE} AWS_DEFAULT_REGION={region} exec {backup}"]


Exec = Callable[[list[str]], tuple[int, str]]


def take_base_backup_in_pod(
    store: S3Store, archive: pitr.WalArchive, system_id: str, run_in_primary: Exec
) -> pitr.BaseBackup:
    """``pitr.take_base_backup`` for a pod: the same archive checks, barman run through
    ``run_in_primary`` (an exec into the primary's PostgreSQL container: exit code, output)."""

    def run(command: list[str]) -> None:
        code, output = run_in_primary(command)
        if code != 0:
            tail = "\n".join(output.strip().splitlines()[-5:])
            raise MoorageError(f"barman-cloud-backup of {archive.namespace}/{archive.name} failed:\n{tail}")

    return pitr.base_backup_with(store, archive, system_id, lambda: run(base_backup_command(archive)))
