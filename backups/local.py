"""Runbook targets on the local runtime (deployments started by ``moorage up``) and its port for
point-in-time restores."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backups import pitr, pitr_drill, pitr_restore
from backups.repository import Repository
from backups.runbook import Target
from middleware.engines.base import Connection, MemberPlan, Progress, no_progress
from middleware.engines.postgresql.binaries import find_bin_dir
from middleware.engines.postgresql.config import (
    FIRST_START_MARKER,
    PGDATA,
    REPLICATION_USER,
    RESTORE_SPOOL,
    SOURCE_RESTORE_SCRIPT,
    SUPERUSER,
    guc_quote,
    replication_password,
)
from middleware.errors import MoorageError, SpecError
from middleware.lifecycle import Lifecycle
from middleware.runtime.local import LocalRuntime

SCRATCH_NAMESPACE = "moorage-scratch"


class LocalTargets:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def get(self, namespace: str, name: str) -> Target:
        deployment = self.lifecycle.existing(namespace, name)
        manifest = self.lifecycle.runtime.applied_manifest(namespace, name) or {}
        return Target(
            namespace=namespace,
            name=name,
            spec=deployment.spec,
            engine=deployment.engine,
            conn=self.lifecycle.connection(deployment),
            manifest=manifest,
        )

    @contextmanager
    def scratch(self, manifest: dict[str, Any]) -> Iterator[Target]:
        # Apart from the user's deployments, so `moorage status` lists never show it.
        namespace = SCRATCH_NAMESPACE
        name = manifest["metadata"]["name"]
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        try:
            self.lifecycle.up(manifest)
            yield self.get(namespace, name)
        finally:
            # A scratch deployment is ours alone: its data goes with it.
            self.lifecycle.down(namespace, name, purge=True)

    def deployments(self) -> list[tuple[str, str]]:
        return self.lifecycle.runtime.list()


class LocalRecovery:
    """``backups.pitr_restore.RecoveryPort`` over the local runtime: members are processes, their
    PostgreSQL data directories ``members/<member>/data/pgdata`` on this machine, where barman's
    tools run as the ``postgres`` user. ``from_other_archive``: the WAL comes from another
    deployment's archive (this one need not archive itself), whose superuser password is
    ``other_password``: the restored data has it until the restored member is made this one's.
    Without ``other_password`` (that deployment is gone, its credentials with it) the restored
    member replays and promotes on a private socket first and takes this one's passwords there
    (``_replay_and_adopt``), as the init container of a pod recovered with spec.recovery does."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        namespace: str,
        name: str,
        *,
        from_other_archive: bool = False,
        other_password: str | None = None,
    ) -> None:
        self.lifecycle, self.namespace, self.name = lifecycle, namespace, name
        deployment = lifecycle.existing(namespace, name)
        if deployment.spec.engine != "postgresql":
            raise SpecError(
                "spec.engine",
                f"{namespace}/{name} is {deployment.spec.engine}: only PostgreSQL recovers to a point",
            )
        if not deployment.spec.wal_archiving and not from_other_archive:
            raise SpecError(
                "spec.backup.walArchiving",
                f"is off for {namespace}/{name}: there is no archived WAL to recover to a point with",
            )
        self.spec, self.engine = deployment.spec, deployment.engine
        self.manifest = lifecycle.runtime.applied_manifest(namespace, name) or deployment.middleware.to_wire()
        self.runtime = lifecycle.runtime
        assert isinstance(self.runtime, LocalRuntime)
        self.password = self.runtime.password(self.spec)
        self.other_password = other_password
        self.adopts_credentials = from_other_archive and other_password is None
        # The superuser password of the data in place (another deployment's, once restored from it).
        self.login_password = self.password

    def _pgdata(self, member: MemberPlan) -> Path:
        assert isinstance(self.runtime, LocalRuntime)
        return self.runtime.member_config_dir(self.spec, member) / PGDATA

    def connect(self) -> psycopg.Connection[Any]:
        """The superuser on the writable member, autocommit (found by asking each member: the
        status would log in with this deployment's password, which restored data may not have yet)."""
        for member in self.runtime.members(self.spec, self.engine):
            try:
                conn = psycopg.connect(
                    host=member.endpoint.host,
                    port=member.endpoint.port,
                    user="postgres",
                    password=self.login_password,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                )
            except psycopg.Error:
                continue
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return conn
            conn.close()
        raise MoorageError(f"{self.namespace}/{self.name} has no writable primary")

    def timeline(self) -> int | None:
        try:
            with self.connect() as conn:
                row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
        except (MoorageError, psycopg.Error):
            return None
        return int(row[0]) if row else None

    def stop(self) -> None:
        self.runtime.retire(self.spec, self.engine, self.engine.members(self.spec))

    def set_aside(self, suffix: str) -> list[str]:
        moved = []
        for member in self.engine.members(self.spec):
            pgdata = self._pgdata(member)
            if pgdata.exists():
                pgdata.rename(pgdata.with_name(f"{PGDATA}.{suffix}"))
                moved.append(member.name)
        return moved

    def discard_current(self, keep_as: str | None) -> None:
        for member in self.engine.members(self.spec):
            pgdata = self._pgdata(member)
            if not pgdata.exists():
                continue
            if keep_as is None:
                shutil.rmtree(pgdata)
            else:
                pgdata.rename(pgdata.with_name(f"{PGDATA}.{keep_as}"))

    def bring_back(self, suffix: str) -> None:
        self.login_password = self.password  # this deployment's own data again
        for member in self.engine.members(self.spec):
            aside = self._pgdata(member).with_name(f"{PGDATA}.{suffix}")
            if aside.exists():
                aside.rename(self._pgdata(member))

    def remove_set_aside(self, suffix: str) -> list[str]:
        removed = []
        for member in self.engine.members(self.spec):
            aside = self._pgdata(member).with_name(f"{PGDATA}.{suffix}")
            if aside.exists():
                shutil.rmtree(aside)
                removed.append(member.name)
        return removed

    def restore_base(
        self, archive: pitr.WalArchive, backup: pitr.BaseBackup, settings: dict[str, str]
    ) -> str:
        assert isinstance(self.runtime, LocalRuntime)
        member = self.engine.members(self.spec)[0]
        pgdata = self._pgdata(member)
        config_dir = self.runtime.member_config_dir(self.spec, member)
        barman_bin = pitr.find_barman()
        # What an earlier recovery fetched ahead is not trusted (the archive may be another one now).
        shutil.rmtree(config_dir / RESTORE_SPOOL, ignore_errors=True)
        pitr.run_as_postgres(
            [*archive.command(barman_bin, "barman-cloud-restore"), backup.backup_id, str(pgdata)],
            {**os.environ, **archive.environment()},
            f"barman-cloud-restore of {backup.backup_id}",
        )
        pgdata.chmod(0o700)
        if (archive.namespace, archive.name) == (self.namespace, self.name):
            # The member's own restore script (with the repository's keys beside it) is written when
            # it starts, like the archive script: this runtime's extra member files.
            script = config_dir / pitr.RESTORE_SCRIPT
        else:
            self.login_password = self.other_password or self.password
            script = config_dir / SOURCE_RESTORE_SCRIPT
            _write_private(script, pitr.restore_script(archive, barman_bin), 0o700)
            keys = pitr.credentials_file(archive.config)
            if keys is not None:
                _write_private(config_dir / pitr.ARCHIVE_CREDENTIALS, keys, 0o600)
        restore_command = f'"{script}" "%f" "%p"'
        with open(pgdata / "postgresql.auto.conf", "a") as auto:  # barman restored it as postgres's
            auto.write("# point-in-time recovery by Moorage; reset once promoted\n")
            recovery = {**settings, "restore_command": restore_command}
            auto.writelines(f"{key} = {guc_quote(value)}\n" for key, value in recovery.items())
        # recovery.signal: targeted recovery; the first-start marker keeps the start script from
        # adding standby.signal (standby mode would never stop at the target).
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        for signal_file in ("recovery.signal", FIRST_START_MARKER):
            (pgdata / signal_file).touch()
            if owner is not None:
                os.chown(pgdata / signal_file, owner.pw_uid, owner.pw_gid)
        return member.name

    def start_restored(self, member: str, timeout: float) -> None:
        plan = next(m for m in self.engine.members(self.spec) if m.name == member)
        started = time.monotonic()
        if self.adopts_credentials:
            self._replay_and_adopt(plan, timeout)
            timeout = max(timeout - (time.monotonic() - started), 60.0)
        self.runtime.apply(self.spec, self.engine, [plan], Connection([], self.password))
        deadline = time.monotonic() + timeout
        endpoint = next(
            m.endpoint for m in self.runtime.members(self.spec, self.engine) if m.plan.name == member
        )
        while time.monotonic() < deadline:
            if self.runtime.member_exited(self.spec, plan):
                tail = self.runtime.member_log_tail(self.spec, plan, lines=8)
                raise MoorageError(f"{member} stopped during recovery; its log ends:\n{tail}")
            try:
                with psycopg.connect(
                    host=endpoint.host, port=endpoint.port, user="postgres", password=self.login_password,
                    dbname="postgres", connect_timeout=3,
                ) as conn:  # fmt: skip
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return
            except psycopg.Error:
                pass  # still starting
            time.sleep(1.0)
        raise MoorageError(f"{member} did not reach the recovery target within {timeout:.0f}s")

    def _replay_and_adopt(self, plan: MemberPlan, timeout: float) -> None:
        """Restored data whose superuser password is unknown: replay it to the target and promote on
        a server that listens only on a socket in a private directory (0700, the postgres user's)
        trusting the superuser there, give the superuser and the replication role this deployment's
        passwords, and stop it; the member then starts as usual, already promoted. Hot standby is
        off, so lower settings than the source's never pause the replay. A server that stops on the
        way fails the step with the end of its log."""
        assert isinstance(self.runtime, LocalRuntime)
        pgdata = self._pgdata(plan)
        config = self.runtime.member_config_dir(self.spec, plan) / self.engine.config_file_for(plan)
        port = next(
            m.endpoint.port for m in self.runtime.members(self.spec, self.engine) if m.plan.name == plan.name
        )
        pg_ctl = str(find_bin_dir() / "pg_ctl")
        env = dict(os.environ)
        socket_dir = Path(tempfile.mkdtemp(prefix="moorage-adopt-"))
        log = socket_dir / "recovery.log"
        try:
            (socket_dir / "pg_hba.conf").write_text(f"local all {SUPERUSER} trust\n")
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                for path in (socket_dir, socket_dir / "pg_hba.conf"):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            # pg_ctl hands these to a shell: paths quoted.
            options = (
                f"-c config_file={shlex.quote(str(config))} "
                f"-c hba_file={shlex.quote(str(socket_dir / 'pg_hba.conf'))} -c port={port} "
                f"-c listen_addresses='' -c unix_socket_directories={shlex.quote(str(socket_dir))} "
                "-c hot_standby=off"
            )
            what = f"the replay of {plan.name} on a private socket"
            pitr.run_as_postgres(
                [pg_ctl, "-D", str(pgdata), "-l", str(log), "-W", "-o", options, "start"], env, what
            )
            deadline = time.monotonic() + timeout
            # pg_ctl -W returns before the server writes its pid file: give it a moment to appear.
            pid_deadline = time.monotonic() + 30
            while not (pgdata / "postmaster.pid").exists() and time.monotonic() < pid_deadline:
                time.sleep(0.2)
            while True:
                try:
                    with psycopg.connect(
                        host=str(socket_dir),
                        port=port,
                        user=SUPERUSER,
                        dbname="postgres",
                        connect_timeout=3,
                        autocommit=True,
                    ) as conn:
                        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                        if row is not None and not row[0]:
                            # Not logged; no commit waits for a synchronous standby (none runs).
                            conn.execute("SET log_statement = 'none'")
                            conn.execute("SET synchronous_commit = local")
                            for role, password in (
                                (SUPERUSER, self.password),
                                (REPLICATION_USER, replication_password(self.password)),
                            ):
                                conn.execute(
                                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                                        sql.Identifier(role), sql.Literal(password)
                                    )
                                )
                            break
                except psycopg.OperationalError:
                    pass  # not accepting connections until promoted (hot standby is off)
                if not (pgdata / "postmaster.pid").exists():
                    tail = (
                        "\n".join(log.read_text(errors="replace").splitlines()[-8:]) if log.exists() else ""
                    )
                    raise MoorageError(f"{plan.name} stopped during recovery; its log ends:\n{tail}")
                if time.monotonic() > deadline:
                    raise MoorageError(f"{plan.name} did not reach the recovery target within {timeout:.0f}s")
                time.sleep(1.0)
        except BaseException:
            # The failure is what matters; the restore then puts the data back anyway.
            with contextlib.suppress(MoorageError):
                self._stop_private(pg_ctl, pgdata, env)
            raise
        else:
            self._stop_private(pg_ctl, pgdata, env)
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)
        self.login_password = self.password

    @staticmethod
    def _stop_private(pg_ctl: str, pgdata: Path, env: dict[str, str]) -> None:
        if (pgdata / "postmaster.pid").exists():
            command = [pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "-t", "300", "stop"]
            pitr.run_as_postgres(command, env, "stopping the replay's server")

    def start_all(self) -> None:
        self.lifecycle.up(dict(self.manifest))

    def clear_recovery_settings(self, names: list[str]) -> None:
        """The restored member made this deployment's own: recovery settings reset and, when the
        data came from another deployment, its superuser password set to this one's (the roles
        derived from it follow at the next bootstrap) and that archive's restore script removed."""
        with self.connect() as conn:
            for setting in names:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")
            if self.login_password != self.password:
                conn.execute("SET log_statement = 'none'")  # a password never reaches the server log
                conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(self.password)))
        self.login_password = self.password
        assert isinstance(self.runtime, LocalRuntime)
        for member in self.engine.members(self.spec):
            config_dir = self.runtime.member_config_dir(self.spec, member)
            (config_dir / SOURCE_RESTORE_SCRIPT).unlink(missing_ok=True)
            shutil.rmtree(config_dir / RESTORE_SPOOL, ignore_errors=True)  # segments fetched past the target
            if not self.spec.wal_archiving:  # the keys were there for the other archive only
                (config_dir / pitr.ARCHIVE_CREDENTIALS).unlink(missing_ok=True)


def _write_private(path: Path, content: str, mode: int) -> None:
    """A file only its owner reads: the postgres user, who runs it (the member's start hands the
    whole directory over too, but a replay that adopts credentials runs before that start)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.fchown(handle.fileno(), owner.pw_uid, owner.pw_gid)
        handle.write(content)


@dataclass
class LocalScratch:
    """A drill's scratch deployment on this machine, recovered (``backups.pitr_drill.Recovered``)."""

    port: LocalRecovery
    recovery_seconds: float

    def connect(self) -> psycopg.Connection[Any]:
        return self.port.connect()


def drill_scratch(
    lifecycle: Lifecycle, source: LocalRecovery, repository: Repository
) -> Callable[[pitr_drill.DrillRecovery], AbstractContextManager[LocalScratch]]:
    """Scratch deployments for drills of ``source``: one standalone member of its version,
    parameters and extensions (a drill proves the data comes back, not the topology), archiving
    nothing, in the scratch namespace, restored from the source's archive with
    ``apply_point_in_time`` (the time measured is that restore's), removed with its data afterwards."""

    @contextmanager
    def scratch(recovery: pitr_drill.DrillRecovery) -> Iterator[LocalScratch]:
        spec = pitr_drill.scratch_spec(dict(source.manifest.get("spec") or {}))
        name = f"drill-{secrets.token_hex(3)}"
        manifest = {
            "apiVersion": source.manifest.get("apiVersion", "moorage.io/v1alpha1"),
            "kind": "Middleware",
            "metadata": {
                "name": name,
                "namespace": SCRATCH_NAMESPACE,
                "labels": {"moorage.io/drill": recovery.drill_id},
            },
            "spec": spec,
        }
        try:
            lifecycle.up(manifest)
            port = LocalRecovery(
                lifecycle, SCRATCH_NAMESPACE, name, from_other_archive=True, other_password=source.password
            )
            clock = time.monotonic()
            pitr_restore.apply_point_in_time(
                repository, port, SCRATCH_NAMESPACE, name, recovery.target, base=recovery.base_backup,
                restore_id=f"restore-{recovery.drill_id}", source=recovery.source,
            )  # fmt: skip
            yield LocalScratch(port, time.monotonic() - clock)
        finally:
            lifecycle.down(SCRATCH_NAMESPACE, name, purge=True)

    return scratch


@dataclass
class LocalDrills:
    """``runbook.Drills`` on this machine: what ``moorage backup drill NAME`` runs, for a schedule."""

    lifecycle: Lifecycle
    progress: Progress = no_progress

    def last_started(self, repository: Repository, namespace: str, name: str) -> datetime | None:
        return pitr_drill.last_drill_started(repository, namespace, name)

    def run(self, repository: Repository, namespace: str, name: str) -> dict[str, Any]:
        source = LocalRecovery(self.lifecycle, namespace, name)
        scratch = drill_scratch(self.lifecycle, source, repository)
        return pitr_drill.run_drill(repository, namespace, name, source, scratch, progress=self.progress)
