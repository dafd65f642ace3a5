"""The point-in-time restore flow (``backups.pitr_restore``) with its runtime port held in memory
(``InMemoryRecovery``) and the repository on a real S3 server (SeaweedFS) holding a fabricated
archive listing. PostgreSQL, barman and the data directories are real in
tests/integration/test_pitr_local.py; here the order of the steps, the refusal before anything is
touched, the undo of a failed restore and what the record says."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backups import pitr, pitr_restore
from backups.repository import Repository
from backups.runbook import RestoreFailed
from backups.store import S3Store
from middleware.errors import MoorageError
from tests.integration.s3_harness import S3Server

END = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


class InMemoryRecovery:
    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.data = {"db-0": "current", "db-1": "current"}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_at == name:
            raise MoorageError(f"{name}: the member stopped during recovery")

    def timeline(self) -> int | None:
        return 1

    def stop(self) -> None:
        self._call("stop")

    def set_aside(self, suffix: str) -> list[str]:
        self._call(f"set_aside {suffix.split('-')[0]}")
        for member, state in list(self.data.items()):
            self.data[f"{member}.{suffix}"] = state
            del self.data[member]
        return ["db-0", "db-1"]

    def discard_current(self, keep_as: str | None) -> None:
        self._call(f"discard_current {keep_as.split('-')[0] if keep_as else None}")
        for member in ("db-0", "db-1"):
            state = self.data.pop(member, None)
            if state is not None and keep_as:
                self.data[f"{member}.{keep_as}"] = state

    def bring_back(self, suffix: str) -> None:
        self._call(f"bring_back {suffix.split('-')[0]}")
        for member in ("db-0", "db-1"):
            self.data[member] = self.data.pop(f"{member}.{suffix}")

    def remove_set_aside(self, suffix: str) -> list[str]:
        self._call(f"remove_set_aside {suffix.split('-')[0]}")
        removed = [m for m in ("db-0", "db-1") if self.data.pop(f"{m}.{suffix}", None) is not None]
        return removed

    def restore_base(
        self, archive: pitr.WalArchive, backup: pitr.BaseBackup, settings: dict[str, str]
    ) -> str:
        self._call("restore_base")
        self.settings = settings
        self.data["db-0"] = f"restored from {backup.backup_id}"
        return "db-0"

    def start_restored(self, member: str, timeout: float) -> None:
        self._call("start_restored")

    def start_all(self) -> None:
        self._call("start_all")

    def clear_recovery_settings(self, names: list[str]) -> None:
        self._call("clear_recovery_settings")


@pytest.fixture
def repository(s3_server: S3Server) -> Repository:
    store = S3Store(s3_server.config("pitr-" + os.urandom(4).hex(), prefix="backups"))
    store.ensure_bucket()
    archive = pitr.WalArchive(store.config, "shop", "ledger")
    info = "\n".join(
        [
            "status=DONE",
            "timeline=1",
            "begin_wal=000000010000000000000002",
            "end_wal=000000010000000000000002",
            f"end_time={END.isoformat()}",
            "systemid=7400000000000000001",
        ]
    )
    store.put_bytes(archive.key("base", "b1", "backup.info"), info.encode())
    for n in (2, 3, 4):
        store.put_bytes(archive.key("wals", "0000000100000000", f"0000000100000000000000{n:02X}"), b"x")
    return Repository(store)


def apply(repository: Repository, port: InMemoryRecovery, when: datetime) -> dict[str, Any]:
    return pitr_restore.apply_point_in_time(
        repository, port, "shop", "ledger", pitr.RecoveryTarget(time=when)
    )


def test_a_restore_sets_the_data_aside_restores_clears_the_settings_before_the_clones(
    repository: Repository,
) -> None:
    port = InMemoryRecovery()
    record = apply(repository, port, END + timedelta(seconds=1))
    assert port.calls == [
        "stop",
        "set_aside before",
        "restore_base",
        "start_restored",
        "clear_recovery_settings",
        "start_all",
    ]
    assert port.settings["recovery_target_timeline"] == "1"
    assert port.settings["recovery_target_action"] == "promote"
    assert record["phase"] == "Applied" and record["backupId"] == "b1" and record["kind"] == "pointInTime"
    assert repository.load_restore(record["restoreId"])["phase"] == "Applied"
    assert port.data["db-0"] == "restored from b1"

    pitr_restore.rollback_point_in_time(repository, port, record)
    assert port.data["db-0"] == "current" and port.data["db-1"] == "current"
    assert any(k.startswith("db-0.after-") for k in port.data), "the restored data is kept beside"
    stored = repository.load_restore(record["restoreId"])
    assert stored["phase"] == "RolledBack" and stored["rolledBack"] is True
    with pytest.raises(MoorageError, match="already rolled back"):
        pitr_restore.rollback_point_in_time(repository, port, stored)


def test_a_point_outside_the_window_touches_nothing(repository: Repository) -> None:
    port = InMemoryRecovery()
    with pytest.raises(MoorageError, match="before the recoverable window"):
        apply(repository, port, END - timedelta(minutes=1))
    assert port.calls == [] and port.data == {"db-0": "current", "db-1": "current"}


def test_a_failed_restore_puts_the_data_back_and_says_so(repository: Repository) -> None:
    port = InMemoryRecovery(fail_at="start_restored")
    with pytest.raises(RestoreFailed, match="failed and was undone: start_restored"):
        apply(repository, port, END + timedelta(seconds=1))
    assert port.calls[-4:] == ["stop", "discard_current None", "bring_back before", "start_all"]
    assert port.data == {"db-0": "current", "db-1": "current"}
    (record,) = [r for r in repository.list_restores() if r.get("kind") == "pointInTime"]
    assert record["phase"] == "Failed" and record["rolledBack"] is True
    assert [h["phase"] for h in record["history"]][-2:] == ["RollingBack", "Failed"]


def test_a_restore_from_another_deployments_archive_follows_that_ones_timeline(
    repository: Repository,
) -> None:
    port = InMemoryRecovery()  # "copy": its own timeline (1) is not the one to follow
    archives: list[pitr.WalArchive] = []
    original = port.restore_base

    def restore_base(archive: pitr.WalArchive, backup: pitr.BaseBackup, settings: dict[str, str]) -> str:
        archives.append(archive)
        return original(archive, backup, settings)

    port.restore_base = restore_base  # type: ignore[method-assign]
    record = pitr_restore.apply_point_in_time(
        repository,
        port,
        "shop",
        "copy",
        pitr.RecoveryTarget(time=END + timedelta(seconds=1)),
        source=pitr_restore.Source("shop", "ledger", 3),
    )
    assert [(a.namespace, a.name) for a in archives] == [("shop", "ledger")]
    assert port.settings["recovery_target_timeline"] == "3"
    assert record["source"] == "shop/ledger" and record["target"] == "copy" and record["backupId"] == "b1"
    # The copy's own (empty) archive is refused as a source: nothing touched.
    empty = InMemoryRecovery()
    with pytest.raises(MoorageError):
        pitr_restore.apply_point_in_time(
            repository, empty, "shop", "ledger-2", pitr.RecoveryTarget(time=END + timedelta(seconds=1))
        )
    assert empty.calls == []


def test_discard_removes_what_was_set_aside_and_a_discarded_restore_cannot_be_rolled_back(
    repository: Repository,
) -> None:
    port = InMemoryRecovery()
    record = apply(repository, port, END + timedelta(seconds=1))
    rid = record["restoreId"]
    # (db-1 clones db-0 when it starts: the port in memory holds no data for it)
    assert set(port.data) == {"db-0", f"db-0.before-{rid}", f"db-1.before-{rid}"}
    port.calls.clear()
    discarded = pitr_restore.discard_point_in_time(repository, port, record)
    assert port.calls == ["remove_set_aside before"]  # nothing stopped: the deployment runs on
    assert set(port.data) == {"db-0"} and port.data["db-0"] == "restored from b1"
    assert discarded["phase"] == "Applied" and discarded["discarded"] == f"before-{rid}", discarded
    assert "no longer be rolled back" in discarded["message"]
    assert repository.load_restore(rid)["discarded"] == f"before-{rid}"
    with pytest.raises(MoorageError, match=f"the data from before restore {rid} was removed"):
        pitr_restore.rollback_point_in_time(repository, port, repository.load_restore(rid))
    assert port.calls == ["remove_set_aside before"]  # the refused rollback touched nothing
    # Again: nothing left, said so.
    again = pitr_restore.discard_point_in_time(repository, port, repository.load_restore(rid))
    assert "removed from no member" in again["message"], again


def test_discard_after_a_rollback_removes_the_restored_data_and_refuses_a_failed_restore(
    repository: Repository,
) -> None:
    port = InMemoryRecovery()
    record = apply(repository, port, END + timedelta(seconds=1))
    rid = record["restoreId"]
    rolled = pitr_restore.rollback_point_in_time(repository, port, record)
    assert port.data[f"db-0.after-{rid}"] == "restored from b1"
    discarded = pitr_restore.discard_point_in_time(repository, port, rolled)
    assert discarded["phase"] == "RolledBack" and discarded["discarded"] == f"after-{rid}"
    assert set(port.data) == {"db-0", "db-1"} and port.data["db-0"] == "current"

    failing = InMemoryRecovery(fail_at="start_restored")
    with pytest.raises(RestoreFailed) as failure:
        apply(repository, failing, END + timedelta(seconds=1))
    failed_id = str(failure.value).split()[2]
    with pytest.raises(MoorageError, match="failed and was undone: it left nothing set aside"):
        pitr_restore.discard_point_in_time(repository, failing, repository.load_restore(failed_id))
