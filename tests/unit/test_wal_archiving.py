"""spec.backup.walArchiving: the field's rules, the PostgreSQL config it renders, the archive script and
credentials the local runtime writes, the WALArchivingFailing condition and the window's upper bound.
Archiving itself runs on the real servers in tests/integration/test_pitr_local.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backups.pitr import (
    ARCHIVE_CREDENTIALS,
    ArchiveReport,
    BaseBackup,
    LocalArchiveFiles,
    RecoveryTarget,
    Segment,
    WalArchive,
    archive_script,
    archiving_transition,
    check_archive_is_ours,
    credentials_file,
    restore_script,
    system_id_of,
)
from backups.pitr_pods import (
    CLAIM_CONTAINER,
    IMAGE_BARMAN_BIN,
    PGPASS_FILE,
    POD_RESTORE_SPOOL,
    RESTORE_OF_LABEL,
    base_backup_command,
    claim_pod,
    data_moves_script,
    recovery_target,
    restore_in_place_script,
    retention_command,
    with_recovery,
    with_wal_archiving,
)
from backups.store import RepositoryConfig
from middleware.engines.base import Observation, wal_archiving_condition
from middleware.engines.postgresql.config import (
    ARCHIVE_SCRIPT,
    RECOVERY_SCRIPT,
    RESTORE_SCRIPT,
    SOURCE_RESTORE_SCRIPT,
    postgresql_conf,
)
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, SpecError
from middleware.models.backup import CredentialsSecret
from middleware.spec import check_change
from tests.unit.manifests import middleware_spec

BACKUP = {"repository": {"name": "s3"}, "schedule": "0 3 * * *", "walArchiving": True}
CONFIG = RepositoryConfig(
    bucket="pitr-bucket",
    endpoint="http://127.0.0.1:9000",
    access_key_id="AKIDEXAMPLE",
    secret_access_key="s3cr3t/key",
)


def postgres(**spec: Any) -> Any:
    return middleware_spec("ledger", "shop", {"engine": "postgresql", "topology": "replication", **spec})


def test_only_an_engine_with_a_wal_archives_and_the_error_names_the_field() -> None:
    with pytest.raises(SpecError) as refused:
        middleware_spec("cache", "shop", {"engine": "redis", "topology": "standalone", "backup": BACKUP})
    assert refused.value.field == "spec.backup.walArchiving" and "postgresql" in str(refused.value)


def test_archiving_may_be_turned_on_or_off_later_and_the_pods_then_roll() -> None:
    engine = get_engine("postgresql")
    plain, archiving = postgres(), postgres(backup=BACKUP)
    check_change(plain, archiving, engine)
    check_change(archiving, plain, engine)
    # On Kubernetes the pod template changes (the scripts installed, the keys in the environment),
    # so the StatefulSet rolls its pods onto archive_mode; locally the lifecycle restarts them.
    archive = WalArchive(CONFIG, "shop", archiving.name)
    before = next(m for m in engine.render(plain) if m["kind"] == "StatefulSet")["spec"]["template"]
    after = next(
        m
        for m in with_wal_archiving(archiving, engine.render(archiving), archive, CredentialsSecret(name="k"))
        if m["kind"] == "StatefulSet"
    )["spec"]["template"]
    assert before != after
    assert set(engine.spec_config_keys) == {"archive_mode", "archive_command", "archive_timeout"}


def test_the_config_archives_through_the_script_beside_it_only_when_asked() -> None:
    on = postgresql_conf(postgres(backup=BACKUP))
    assert "archive_mode = on" in on
    assert f'archive_command = \'"${{DATA_DIR}}/{ARCHIVE_SCRIPT}" "%p"\'' in on
    assert "archive_timeout = '60s'" in on
    assert "archive_mode" not in postgresql_conf(postgres())


def test_the_script_names_the_destination_and_never_a_key() -> None:
    archive = WalArchive(CONFIG, "shop", "ledger")
    script = archive_script(archive, Path("/opt/barman/bin"), Path("/opt/pg/bin/pg_waldump"))
    assert script.startswith("#!/bin/sh\n")
    assert (
        'exec /opt/barman/bin/python - --waldump /opt/pg/bin/pg_waldump "$spool" "$1" $ahead -- '
        "--zstd --compression-level low --cloud-provider aws-s3"
    ) in script
    assert "s3://pitr-bucket/pitr/shop ledger" in script and "--endpoint-url http://127.0.0.1:9000" in script
    assert ARCHIVE_CREDENTIALS in script
    assert "s3cr3t" not in script and "AKIDEXAMPLE" not in script
    keys = credentials_file(CONFIG)
    assert keys is not None and "aws_secret_access_key = s3cr3t/key" in keys
    assert credentials_file(RepositoryConfig(bucket="pitr-bucket")) is None


@pytest.mark.parametrize(
    ("compression", "option"),
    [("zstd", "--zstd --compression-level low "), ("lz4", "--lz4 --compression-level low "), ("none", "")],
)
def test_the_script_compresses_as_spec_backup_wal_compression_says(compression: str, option: str) -> None:
    spec = postgres(backup={**BACKUP, "walCompression": compression})
    assert spec.wal_compression == compression
    script = archive_script(
        WalArchive(CONFIG, "shop", "ledger"), Path("/b"), Path("/w"), compression=compression
    )
    assert f"$ahead -- {option}--cloud-provider aws-s3" in script
    with pytest.raises(SpecError, match=r"spec.backup.walCompression: 'brotli' is not one of"):
        archive_script(WalArchive(CONFIG, "shop", "ledger"), Path("/b"), Path("/w"), compression="brotli")
    with pytest.raises(SpecError, match="walCompression"):
        postgres(backup={**BACKUP, "walCompression": "brotli"})


def test_the_restore_script_fetches_ahead_into_a_spool_of_its_own_archive() -> None:
    ledger = restore_script(WalArchive(CONFIG, "shop", "ledger"), Path("/opt/barman/bin"))
    other = restore_script(WalArchive(CONFIG, "shop", "orders"), Path("/opt/barman/bin"))
    assert (
        '/opt/barman/bin/barman-cloud-wal-restore --parallel 8 --spool-dir "$here/wal-restore.spool/'
        in ledger
    )
    assert ledger.rstrip().endswith('s3://pitr-bucket/pitr/shop ledger "$1" "$2"')

    def spool(script: str) -> str:
        return script.split("--spool-dir ", 1)[1].split()[0]

    # A segment's name is the same in every archive: never handed over from another one's spool.
    assert spool(ledger) != spool(other)
    assert "s3cr3t" not in ledger


def test_local_archive_files_need_a_repository_unless_a_script_is_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = postgres(backup=BACKUP)
    member = get_engine("postgresql").members(spec)[0]
    assert LocalArchiveFiles(None)(postgres(), member, tmp_path) == {}
    with pytest.raises(SpecError) as refused:
        LocalArchiveFiles(None)(spec, member, tmp_path)
    assert refused.value.field == "spec.backup.walArchiving" and "MOORAGE_BACKUP_REPO" in str(refused.value)
    (tmp_path / ARCHIVE_SCRIPT).write_text("#!/bin/sh\n")
    assert LocalArchiveFiles(None)(spec, member, tmp_path) == {}

    bin_dir = tmp_path / "barman"
    bin_dir.mkdir()
    for tool in (
        "barman-cloud-wal-archive",
        "barman-cloud-wal-restore",
        "barman-cloud-backup",
        "barman-cloud-restore",
    ):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("MOORAGE_BARMAN_BIN", str(bin_dir))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/key")
    files = LocalArchiveFiles("s3://pitr-bucket/backups?endpoint=http://127.0.0.1:9000")(
        spec, member, tmp_path
    )
    assert files[ARCHIVE_SCRIPT][1] == 0o700 and files[ARCHIVE_CREDENTIALS][1] == 0o600
    assert f"exec {bin_dir / 'python'} - " in files[ARCHIVE_SCRIPT][0]


def archiver(**stat: Any) -> Observation:
    base = {"archivedCount": 4, "lastArchivedWal": "000000010000000000000004", "lastArchivedTime": "t4"}
    return Observation([], ready=True, reason="Ready", details={"walArchiving": {**base, **stat}})


def test_the_condition_follows_the_archivers_last_attempt() -> None:
    assert wal_archiving_condition(Observation([], ready=True, reason="Ready")) is None
    ok = wal_archiving_condition(archiver(failing=False, failedCount=0))
    assert ok is not None and ok[:2] == (False, "Archiving") and "4 segments archived" in ok[2]
    failing = wal_archiving_condition(
        archiver(failing=True, failedCount=3, lastFailedWal="000000010000000000000005", lastFailedTime="t5")
    )
    assert failing is not None and failing[:2] == (True, "ArchiveCommandFailing")
    assert "000000010000000000000005" in failing[2] and "3 failures" in failing[2]


def test_a_target_after_the_last_archived_segment_is_refused() -> None:
    end = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    first = Segment(1, 0, 2)
    backup = BaseBackup("20261205T100000", 1, first, first, end, "7400000000000000001")
    report = ArchiveReport(
        [backup], {1: [first, first.next()]}, last_archived={1: end + timedelta(minutes=5)}
    )
    assert report.check(RecoveryTarget(time=end + timedelta(minutes=1))) == backup
    with pytest.raises(MoorageError, match="after the end of the archive"):
        report.check(RecoveryTarget(time=end + timedelta(minutes=6)))
    window = report.window()
    assert (
        window["earliest"] == end.isoformat() and window["latest"] == (end + timedelta(minutes=5)).isoformat()
    )
    assert window["timelines"] == [
        {
            "timeline": 1,
            "firstSegment": first.name,
            "lastSegment": first.next().name,
            "lastArchivedAt": (end + timedelta(minutes=5)).isoformat(),
        }
    ]


def test_an_archive_is_used_only_by_its_own_cluster(tmp_path: Path) -> None:
    archive = WalArchive(CONFIG, "shop", "ledger")
    first = Segment(1, 0, 2)
    end = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    ours = ArchiveReport([BaseBackup("b1", 1, first, first, end, "7400000000000000001")], {1: [first]})
    empty = ArchiveReport([], {})
    check_archive_is_ours(empty, archive, None)  # a new cluster, an empty archive
    check_archive_is_ours(ours, archive, "7400000000000000001")  # its own (a PITR restore keeps it)
    with pytest.raises(SpecError, match="already holds 1 base backup"):
        check_archive_is_ours(ours, archive, None)
    with pytest.raises(SpecError, match=r"another cluster .*7400000000000000001.* this one is 7499"):
        check_archive_is_ours(ours, archive, "7499")
    with pytest.raises(SpecError, match=r"0 base backup.*1 WAL segment"):
        check_archive_is_ours(ArchiveReport([], {1: [first]}), archive, None)


def test_the_system_identifier_is_the_first_field_of_pg_control(tmp_path: Path) -> None:
    assert system_id_of(tmp_path) is None
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(
        (7400000000000000001).to_bytes(8, sys.byteorder) + b"\0" * 8
    )
    assert system_id_of(tmp_path) == "7400000000000000001"


# -- in pods (backups/pitr_pods.py): the operator adds the scripts and the keys' references ------


def test_pods_get_the_scripts_from_the_config_map_and_the_keys_only_as_secret_references() -> None:
    spec = postgres(backup=BACKUP)
    assert spec.archive_repository == "s3"
    rendered = get_engine("postgresql").render(spec)
    before = copy.deepcopy(rendered)
    archive = WalArchive(CONFIG, "shop", "ledger")
    manifests = with_wal_archiving(spec, rendered, archive, CredentialsSecret(name="s3-keys"))
    assert rendered == before  # a copy: the engine's render is left as it was

    config_map = next(m for m in manifests if m["kind"] == "ConfigMap")
    archive_sh, restore_sh = config_map["data"][ARCHIVE_SCRIPT], config_map["data"][RESTORE_SCRIPT]
    assert f"exec {IMAGE_BARMAN_BIN}/python - " in archive_sh
    assert 'spool="/tmp/wal-archive.spool/' in archive_sh  # the config directory is read-only there
    assert f"exec {IMAGE_BARMAN_BIN}/barman-cloud-wal-restore " in restore_sh
    assert "s3://pitr-bucket/pitr/shop ledger" in archive_sh
    pod = next(m for m in manifests if m["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]["command"][-1]
    # The init container refuses to start a member without the scripts, and installs them 0700.
    assert f"for f in {ARCHIVE_SCRIPT} {RESTORE_SCRIPT}; do" in init and "chmod 0700" in init
    postgres_env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
    assert postgres_env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-keys",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert "secretKeyRef" in postgres_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]
    text = json.dumps(manifests)
    assert "s3cr3t" not in text and "AKIDEXAMPLE" not in text

    # Without archiving neither the scripts nor the install step are rendered.
    plain = get_engine("postgresql").render(postgres())
    assert ARCHIVE_SCRIPT not in json.dumps(plain)


def test_a_base_backup_in_the_pod_uses_the_pgpass_file_never_a_password() -> None:
    command = base_backup_command(WalArchive(CONFIG, "shop", "ledger"))
    assert command[:2] == ["sh", "-c"]
    assert f"PGPASSFILE={PGPASS_FILE}" in command[2]
    assert f"{IMAGE_BARMAN_BIN}/barman-cloud-backup" in command[2] and "--host 127.0.0.1" in command[2]
    assert "s3cr3t" not in command[2] and "PGPASSWORD" not in command[2]


def test_a_named_base_backup_and_the_retention_in_the_pod() -> None:
    archive = WalArchive(CONFIG, "shop", "ledger")
    named = base_backup_command(archive, "ledger-20261206t030000z-base")
    assert "--name ledger-20261206t030000z-base" in named[2]
    assert "--name" not in base_backup_command(archive)[2]
    by_count = retention_command(archive, 2, None)[2]
    assert f"{IMAGE_BARMAN_BIN}/barman-cloud-backup-delete" in by_count
    assert "--retention-policy 'REDUNDANCY 2'" in by_count and "s3cr3t" not in by_count
    by_days = retention_command(archive, 2, 7)[2]
    assert "'RECOVERY WINDOW OF 7 DAYS' --minimum-redundancy 2" in by_days


@pytest.mark.parametrize(
    ("was", "now", "event"),
    [
        (None, None, None),  # archiving off, or no primary to ask
        (None, False, None),  # first seen working: nothing happened
        (None, True, "wal-archiving-failing"),  # first seen failing
        (False, True, "wal-archiving-failing"),
        (True, True, None),
        (True, False, "wal-archiving-recovered"),
        (False, False, None),
        (True, None, None),  # the primary not answering says nothing about archiving
    ],
)
def test_archiving_transitions_are_audited_once(
    was: bool | None, now: bool | None, event: str | None
) -> None:
    assert archiving_transition(was, now) == event


def test_the_archiver_metrics_follow_the_primarys_statistics() -> None:
    from prometheus_client import REGISTRY

    from operators.metrics import record_archiving

    record_archiving(
        "shop",
        "ledger",
        {"failing": True, "failedCount": 3, "lastArchivedTime": "2026-12-05 10:00:00.5+00"},
    )
    labels = {"namespace": "shop", "name": "ledger"}
    assert REGISTRY.get_sample_value("moorage_wal_archiving_failing", labels) == 1
    assert REGISTRY.get_sample_value("moorage_wal_archive_failed_count", labels) == 3
    last = datetime(2026, 12, 5, 10, 0, 0, 500000, tzinfo=UTC).timestamp()
    assert REGISTRY.get_sample_value("moorage_wal_last_archived_timestamp_seconds", labels) == last
    record_archiving("shop", "ledger", {"failing": False, "failedCount": 3, "lastArchivedTime": None})
    assert REGISTRY.get_sample_value("moorage_wal_archiving_failing", labels) == 0


# -- spec.recovery: a new Middleware from another one's archive -----------------------------------

RECOVERY = {"source": "ledger", "repository": {"name": "s3"}, "targetTime": "2026-12-05T10:00:00Z"}


def test_recovery_is_postgresql_only_one_target_and_fixed_at_creation() -> None:
    with pytest.raises(SpecError) as refused:
        middleware_spec("cache", "shop", {"engine": "redis", "topology": "standalone", "recovery": RECOVERY})
    assert refused.value.field == "spec.recovery"
    with pytest.raises(SpecError) as two:
        postgres(recovery={**RECOVERY, "targetLsn": "0/3000090"})
    assert "at most one of targetTime, targetLsn, targetRestorePoint" in str(two.value)
    with pytest.raises(SpecError) as changed:
        check_change(postgres(recovery=RECOVERY), postgres(), get_engine("postgresql"))
    assert changed.value.field == "spec.recovery"
    with pytest.raises(SpecError) as bad_time:
        recovery_target(postgres(recovery={**RECOVERY, "targetTime": "yesterday"}))
    assert bad_time.value.field == "spec.recovery.targetTime"
    latest = recovery_target(postgres(recovery={"source": "ledger", "repository": {"name": "s3"}}))
    assert latest.latest


def test_the_first_member_recovers_instead_of_initdb_and_every_member_forgets_the_settings() -> None:
    spec = postgres(recovery=RECOVERY)
    source = WalArchive(CONFIG, "shop", "ledger")
    manifests = with_recovery(
        spec, get_engine("postgresql").render(spec), source, "20261205T090000", CredentialsSecret(name="keys")
    )
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap")
    script = config_map["data"][RECOVERY_SCRIPT]
    assert f"{IMAGE_BARMAN_BIN}/barman-cloud-restore " in script and " ledger 20261205T090000 " in script
    assert "recovery_target_time = '2026-12-05T10:00:00+00:00'" in script
    assert "recovery_target_action = 'promote'" in script
    assert f'restore_command = \'"/etc/postgresql/{SOURCE_RESTORE_SCRIPT}" "%f" "%p"\'' in script
    assert 'recovery.signal"' in script and "moorage.first-start" in script
    assert "s3://pitr-bucket/pitr/shop ledger" in config_map["data"][SOURCE_RESTORE_SCRIPT]
    pod = next(m for m in manifests if m["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    # Restored beside the data directory and moved into place once whole: a cut-short restore
    # leaves no PG_VERSION behind for the next start to take as data.
    init_sh = init["command"][-1]
    restored = init_sh.index(f'sh "/etc/postgresql-templates/{RECOVERY_SCRIPT}" "$pgdata.restoring"')
    assert (
        init_sh.index('rm -rf "$pgdata.restoring"')
        < restored
        < init_sh.index('mv "$pgdata.restoring" "$pgdata"')
    )
    assert "initdb" not in init["command"][-1]
    # Segments fetched ahead go to the data volume, and what an earlier recovery left is not used.
    assert f'--parallel 8 --spool-dir "{POD_RESTORE_SPOOL}/' in config_map["data"][SOURCE_RESTORE_SCRIPT]
    assert script.index(f'rm -rf "{POD_RESTORE_SPOOL}"') < script.index("barman-cloud-restore")
    # Once promoted (no recovery.signal), the settings leave every member's data at its next start,
    # and what was fetched past the target with them.
    assert "sed -i -e '/^restore_command[ =]/d' -e '/^recovery_target/d'" in init["command"][-1]
    # The replay itself runs in the init container (no probe limits it), on a server that only
    # listens on this pod's socket, and the recovered superuser takes this Middleware's password:
    # the source's credentials are never needed.
    assert 'moorage.adopt-credentials"' in script
    finish = init_sh.index('if [ -e "$pgdata/moorage.adopt-credentials" ]')
    assert finish < init_sh.index("sed -i -e '/^restore_command")
    assert "listen_addresses='' -c unix_socket_directories=/tmp" in init_sh
    assert "printf 'local all postgres trust\\n' > /tmp/moorage-recovery-hba.conf" in init_sh  # no host line
    # Both passwords, so the next members can clone before the operator's bootstrap; no commit
    # waits for a synchronous standby (none exists yet); the replay never pauses as a hot standby.
    assert (
        "SET log_statement = 'none';\\nSET synchronous_commit = local;\\n"
        "ALTER ROLE postgres PASSWORD '%s';\\nALTER ROLE replicator PASSWORD '%s'" in init_sh
    )
    assert "-c hot_standby=off" in init_sh
    # "Still replaying" is asked of the server process itself, the shell's child: its lock file
    # may not be written yet when the first check runs on a busy node.
    assert "  server=$!" in init_sh and 'kill -0 "$server"' in init_sh and 'wait "$server"' in init_sh
    assert "status" not in init_sh[finish:]
    assert '"$POSTGRES_PASSWORD"' in init_sh and '"$REPLICATION_PASSWORD"' in init_sh
    assert "s3cr3t" not in init_sh
    assert "moorage.adopt-credentials" not in restore_in_place_script(source, "b", {})
    assert f'rm -rf "{POD_RESTORE_SPOOL}"' in init["command"][-1]
    for container in (init, pod["containers"][0]):
        keys = {e["name"]: e for e in container["env"]}
        assert keys["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "keys"
    assert "s3cr3t" not in json.dumps(manifests)
    (plain_sts,) = [m for m in get_engine("postgresql").render(postgres()) if m["kind"] == "StatefulSet"]
    plain = plain_sts["spec"]["template"]["spec"]
    assert "initdb" in plain["initContainers"][0]["command"][-1]


STAND_IN_BARMAN = {
    "barman/__init__.py": "",
    "barman/xlog.py": "import re\n"
    "def is_any_xlog_file(path):\n"
    "    return re.search(r'[0-9A-F]{24}$|[0-9A-F]{8}[.]history$', path) is not None\n",
    # The "interface" appends each upload to a file, and each index key to another.
    "barman/cloud_providers/__init__.py": "import os\n"
    "class Interface:\n"
    "    path = 'pitr/shop'\n"
    "    def __init__(self, log):\n"
    "        self.file = open(log, 'a')\n"
    "    def write(self, text):\n"
    "        self.file.write(text)\n"
    "    def upload_fileobj(self, fileobj, key):\n"
    "        with open(os.environ['INDEX_LOG'], 'a') as index:\n"
    "            index.write(f'{key} {fileobj.read().decode()}\\n')\n"
    "    def close(self):\n"
    "        self.file.close()\n"
    "def get_cloud_interface(config):\n"
    "    return Interface(config.log)\n",
    "barman/clients/__init__.py": "",
    # Records each upload in the file the "interface" is, and fails for segment 04.
    "barman/clients/cloud_walarchive.py": "import argparse, os, threading, time\n"
    "def parse_arguments(args):\n"
    "    return argparse.Namespace(log=os.environ['UPLOAD_LOG'], server_name=args[-2], wal=args[-1],\n"
    "                              compression=None, compression_level=None)\n"
    "class CloudWalUploader:\n"
    "    def __init__(self, cloud_interface, server_name, compression, compression_level):\n"
    "        self.log = cloud_interface\n"
    "    def upload_wal(self, path):\n"
    "        time.sleep(0.2)  # the uploads overlap, so each gets its own thread\n"
    "        if path.endswith('000000010000000000000004'):\n"
    "            raise OSError('S3 said no')\n"
    "        self.log.write(f'{path} {threading.get_ident()}\\n')\n",
}


def test_the_archive_script_uploads_ahead_in_one_process_and_never_notes_a_failed_upload(
    tmp_path: Path,
) -> None:
    """The archive script run by sh as PostgreSQL runs it (cwd: the data directory, ``$1``:
    pg_wal/NAME), its batch uploader (backups/wal_batch.py) run by this interpreter with a STAND-IN
    for barman's library that records each upload and its thread, and fails for one segment (the
    real barman runs in tests/integration/test_pitr_local.py and on pods in tests/e2e)."""
    bin_dir, data, library = tmp_path / "bin", tmp_path / "data", tmp_path / "stand-in"
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    for relative, text in STAND_IN_BARMAN.items():
        (library / relative).parent.mkdir(parents=True, exist_ok=True)
        (library / relative).write_text(text)
    log = tmp_path / "uploaded"
    log.write_text("")
    segments = [f"0000000100000000000000{n:02X}" for n in range(1, 7)]
    for name in segments:
        (data / "pg_wal" / name).write_bytes(b"")
        (data / "pg_wal" / "archive_status" / f"{name}.ready").write_bytes(b"")
    (data / "pg_wal" / "archive_status" / "00000002.history.ready").write_bytes(b"")
    script = data / "wal-archive"
    # A STAND-IN pg_waldump (the real one reads real WAL in tests/integration/test_pitr_barman.py):
    # a restore point in 02, 03 unreadable.
    waldump = tmp_path / "pg_waldump"
    waldump.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        "  *--start=0/2000000*) echo 'rmgr: XLOG len (rec/tot): 98/98, tx: 0, lsn: 0/02000110, "
        "prev 0/020000E8, desc: RESTORE_POINT nightly run' ;;\n"
        "  *--start=0/3000000*) echo 'pg_waldump: error: could not find a valid record' >&2; exit 1 ;;\n"
        "esac\n"
    )
    waldump.chmod(0o755)
    index = tmp_path / "index"
    index.write_text("")
    script.write_text(archive_script(WalArchive(CONFIG, "shop", "ledger"), bin_dir, waldump))
    env = {**os.environ, "PYTHONPATH": str(library), "UPLOAD_LOG": str(log), "INDEX_LOG": str(index)}

    def archive(name: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["sh", str(script), f"pg_wal/{name}"], cwd=data, capture_output=True, text=True, env=env
        )
        (data / "pg_wal" / "archive_status" / f"{name}.ready").unlink()
        return done

    def uploaded() -> list[str]:
        return sorted(line.split()[0] for line in log.read_text().splitlines())

    # Asked for 01: 01 and the next three (02, 03, 04) uploaded at once, each in its own thread,
    # 04's upload failing.
    first = archive(segments[0])
    assert first.returncode == 0, first.stderr
    assert uploaded() == [f"pg_wal/{n}" for n in segments[:3]]
    assert len({line.split()[1] for line in log.read_text().splitlines()}) == 3, (
        "not in threads of one process"
    )
    assert "uploading pg_wal/000000010000000000000004 ahead failed" in first.stderr
    # Each uploaded segment's restore points, then whether it was searched whole; none for 04.
    keys = index.read_text().splitlines()
    where = "pitr/shop/ledger/restore-points"
    assert sorted(keys) == [
        f"{where}/000000010000000000000001/scanned ",
        f"{where}/000000010000000000000002/0000000002000110.{b'nightly run'.hex()} ",
        f"{where}/000000010000000000000002/scanned ",
        f"{where}/000000010000000000000003/failed pg_waldump: error: could not find a valid record",
    ]
    assert keys.index(f"{where}/000000010000000000000002/scanned ") > keys.index(
        f"{where}/000000010000000000000002/0000000002000110.{b'nightly run'.hex()} "
    )
    # 02 and 03 were uploaded ahead: answered at once (nothing uploaded again, nor ahead).
    log.write_text("")
    assert archive(segments[1]).returncode == 0 and archive(segments[2]).returncode == 0
    assert log.read_text() == ""
    # 04 was not noted: asked for, it is uploaded (and fails: PostgreSQL keeps it and asks again).
    again = archive(segments[3])
    assert again.returncode == 1
    assert "archiving pg_wal/000000010000000000000004 failed: S3 said no" in again.stderr
    assert uploaded() == [f"pg_wal/{n}" for n in segments[4:]]


# -- a point-in-time restore in place on Kubernetes (backups/pitr_kubernetes.py) -----------------


def test_a_claim_pod_holds_one_members_volume_as_the_member_would_and_is_no_member() -> None:
    spec = postgres(backup=BACKUP, replicas=2, topology="replication")
    archive = WalArchive(CONFIG, "shop", spec.name)
    manifests = with_wal_archiving(
        spec, get_engine("postgresql").render(spec), archive, CredentialsSecret(name="s3-keys")
    )
    statefulset = next(m for m in manifests if m["kind"] == "StatefulSet")
    member = f"{statefulset['metadata']['name']}-1"
    pod = claim_pod(statefulset, member, f"data-{member}", "pitr-x-1")
    assert pod["metadata"]["name"] == f"{member}-restore"
    # Nothing that selects members (Services, the operator's observation) selects it.
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert not set(selector.items()) <= set(pod["metadata"]["labels"].items())
    assert pod["metadata"]["labels"][RESTORE_OF_LABEL] == statefulset["metadata"]["name"]
    spec_ = pod["spec"]
    assert spec_["volumes"][0] == {"name": "data", "persistentVolumeClaim": {"claimName": f"data-{member}"}}
    container = spec_["containers"][0]
    assert container["name"] == CLAIM_CONTAINER
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    member_container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == member_container["image"]
    assert spec_["securityContext"]["runAsUser"] == 999  # the files it moves stay postgres's
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    keys = {e["name"]: e for e in container["env"]}
    assert keys["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-keys"
    assert spec_["restartPolicy"] == "Never" and spec_["activeDeadlineSeconds"] > 0


def _moves(data: Path, action: str, suffix: str | None) -> subprocess.CompletedProcess[str]:
    script = data_moves_script(action, suffix).replace('"/data/', f'"{data}/')
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)


def test_the_data_moves_never_overwrite_and_say_when_they_moved(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("18\n")
    moved = _moves(tmp_path, "set-aside", "before-r1")
    assert moved.returncode == 0 and moved.stdout.split() == ["moved"]
    assert not pgdata.exists() and (tmp_path / "pgdata.before-r1" / "PG_VERSION").exists()
    again = _moves(tmp_path, "set-aside", "before-r1")  # nothing there any more: nothing to do
    assert again.returncode == 0 and again.stdout == ""

    pgdata.mkdir()  # the restored data
    refused = _moves(tmp_path, "bring-back", "before-r1")
    assert refused.returncode == 3 and "is in the way" in refused.stderr
    assert _moves(tmp_path, "discard", "after-r1").stdout.split() == ["moved"]
    assert (tmp_path / "pgdata.after-r1").is_dir()
    assert _moves(tmp_path, "bring-back", "before-r1").stdout.split() == ["moved"]
    assert (pgdata / "PG_VERSION").read_text() == "18\n"

    (tmp_path / "pgdata.before-r2").mkdir()
    clash = _moves(tmp_path, "set-aside", "before-r2")
    assert clash.returncode == 3 and "exists already" in clash.stderr and pgdata.exists()
    assert _moves(tmp_path, "discard", None).stdout.split() == ["moved"] and not pgdata.exists()
    with pytest.raises(ValueError, match="unknown data move"):
        data_moves_script("bring-back", None)


def test_restoring_in_place_replays_through_the_members_own_restore_script() -> None:
    archive = WalArchive(CONFIG, "shop", "ledger")
    settings = {"recovery_target_lsn": "0/3000060", "recovery_target_timeline": "2"}
    script = restore_in_place_script(archive, "20261206T050000", settings)
    assert f"{IMAGE_BARMAN_BIN}/barman-cloud-restore " in script and " ledger 20261206T050000 " in script
    assert f'restore_command = \'"/etc/postgresql/{RESTORE_SCRIPT}" "%f" "%p"\'' in script
    assert "recovery_target_lsn = '0/3000060'" in script and "recovery_target_timeline = '2'" in script
    assert script.index(f'rm -rf "{POD_RESTORE_SPOOL}"') < script.index("barman-cloud-restore")
    assert 'recovery.signal"' in script and "moorage.first-start" in script
    assert "s3cr3t" not in script
