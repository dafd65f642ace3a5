"""LocalRuntime: each member is a local process on 127.0.0.1, started from the same config templates
the Kubernetes runtime puts in ConfigMaps (placeholders filled with local ports and paths).

State lives on disk (``.moorage/`` by default) so deployments outlive the CLI process; members are
stopped by their own PIDs, checked against the process start time so a recycled PID is never killed.
It runs our engines and nothing else: it is not a kubelet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.base import (
    DEFAULT_EXPORTER_DIR,
    EXPORTER_DIR_ENV,
    Addressing,
    Connection,
    Engine,
    Exporter,
    Member,
    MemberAddress,
    MemberPlan,
    exporter_dirs,
)
from middleware.errors import MoorageError, OperationError
from middleware.runtime.processes import LOOPBACK, port_free, process_start_time, reap
from middleware.spec import ResolvedSpec

log = logging.getLogger(__name__)

STATE_DIR_ENV = "MOORAGE_STATE_DIR"
STOP_GRACE_SECONDS = 10.0
PORT_RELEASE_SECONDS = 10.0
RESTART_ANSWER_SECONDS = 30.0
METRICS_PORT = "METRICS"
# A deployment's TLS files (spec.tls), in cert-manager's names; the CA's key stays here too.
CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE = "ca.crt", "ca.key", "tls.crt", "tls.key"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".moorage")


def log_tail(log: str, lines: int) -> str:
    """A member's last log lines, led by the stack trace's causes when they scrolled out of them:
    a JVM's last lines are the bottom of a trace, its reason is in a "Caused by:" above."""
    recent = log.splitlines()[-200:]
    tail = recent[-lines:]
    causes = [ln for ln in recent[:-lines] if ln.startswith("Caused by: ")][-2:]
    return "\n".join([*causes, *(["\t..."] if causes else []), *tail])


def replace_config(path: Path, text: str) -> None:
    """Give a server's existing config file new content, if it has any: whole and in one step.

    The server may be reading the file at that very moment (a member starting; ZooKeeper read a
    half-written zoo.cfg as "Invalid config" once in CI) or rewriting it itself (CONFIG REWRITE,
    ZooKeeper's reconfig), so an unchanged file is not touched and a changed one is replaced by
    rename, keeping its owner and mode (the server may run as another user).
    """
    if path.read_text() == text:
        return
    scratch = path.with_name(f".{path.name}.moorage-tmp")
    scratch.write_text(text)
    stat = path.stat()
    os.chmod(scratch, stat.st_mode & 0o7777)
    if (stat.st_uid, stat.st_gid) != (os.geteuid(), os.getegid()):
        os.chown(scratch, stat.st_uid, stat.st_gid)
    scratch.replace(path)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by rename: a reader in another process (``moorage status`` while a ``set``
    saves the status) sees the old file or the new one, never a truncated one. The scratch name is
    this writer's own, so two writers never share one."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        scratch.write_text(text)
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)


def _plan(engine: Engine, spec: ResolvedSpec, name: str) -> MemberPlan:
    return next(m for m in engine.members(spec) if m.name == name)


def _write_private(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` whole with ``content``, created with ``mode`` from the start (a key is
    never readable by others, a script never runnable half-written, not even for a moment)."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    scratch.replace(path)


def fill_placeholders(template: str, values: dict[str, str]) -> str:
    """Replace ``${NAME}`` placeholders only; any other ``$`` in a config value is left alone."""
    text = template
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    leftover = re.search(r"\$\{[A-Z_]+\}", text)
    if leftover:
        raise OperationError(f"config template has an unfilled placeholder {leftover.group(0)}")
    return text


def find_exporter(binary: str) -> str | None:
    """The exporter's path: ``$MOORAGE_EXPORTER_DIR/bin``, then /opt/moorage/exporters/bin, then PATH."""
    for directory in exporter_dirs():
        if os.access(Path(directory) / "bin" / binary, os.X_OK):
            return str(Path(directory) / "bin" / binary)
    return shutil.which(binary)


def _allocate_port(taken: set[int]) -> int:
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        # Redis derives nothing from the port when cluster-port is explicit, but keep clear of the
        # conventional +10000 bus offset of any port we hand out, in case a config relies on it.
        if port not in taken and port + 10000 not in taken and port < 55000:
            return port
    raise OperationError("could not find a free port on 127.0.0.1")


def _accepts(endpoint: Endpoint, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


# Files a layer above adds to a member's config directory, by name: (content, mode). The backups layer
# writes the WAL archive script of an archiving PostgreSQL and its S3 keys this way (the runtime knows
# neither repositories nor their credentials).
ExtraMemberFiles = Callable[[ResolvedSpec, MemberPlan, Path], dict[str, tuple[str, int]]]


class LocalRuntime:
    def __init__(
        self, state_dir: Path | str | None = None, *, extra_member_files: ExtraMemberFiles | None = None
    ) -> None:
        self.root = Path(state_dir) if state_dir else default_state_dir()
        self.extra_member_files = extra_member_files

    # -- layout ---------------------------------------------------------------------------------
    def _dir(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def _member_dir(self, spec: ResolvedSpec, member: MemberPlan) -> Path:
        return self._dir(spec.namespace, spec.name) / "members" / member.name

    def member_config_dir(self, spec: ResolvedSpec, member: MemberPlan) -> Path:
        """Where a member's config files live (the ``${DATA_DIR}`` of its templates); an engine's own
        data directory may sit below it (PostgreSQL's ``pgdata``)."""
        return self._member_dir(spec, member) / "data"

    def _state_path(self, namespace: str, name: str) -> Path:
        return self._dir(namespace, name) / "state.json"

    def _read_state(self, namespace: str, name: str) -> dict[str, Any]:
        path = self._state_path(namespace, name)
        if not path.exists():
            return {"members": {}}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _write_state(self, namespace: str, name: str, state: dict[str, Any]) -> None:
        path = self._state_path(namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(state, indent=2, sort_keys=True))

    @contextlib.contextmanager
    def _locked(self, namespace: str, name: str) -> Iterator[None]:
        # Two CLI invocations on one deployment must not both allocate ports or start members.
        directory = self._dir(namespace, name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- TLS (spec.tls) ----------------------------------------------------------------------------
    def _tls_dir(self, spec: ResolvedSpec) -> Path:
        return self._dir(spec.namespace, spec.name) / "tls"

    def client_tls(self, spec: ResolvedSpec) -> ClientTls | None:
        """How our clients reach the members: the deployment's CA, and the members' certificate to
        present (every member is 127.0.0.1 here, so one certificate serves them all)."""
        if not spec.tls:
            return None
        directory = self._tls_dir(spec)
        return ClientTls(
            ca_file=str(directory / CA_FILE),
            cert_file=str(directory / CERT_FILE),
            key_file=str(directory / KEY_FILE),
        )

    def _ensure_tls(self, spec: ResolvedSpec, *, now: datetime | None = None) -> bool:
        """The deployment's CA (made once, kept) and the members' certificate for 127.0.0.1 and
        localhost, issued when missing and again once a third of its lifetime is left (cert-manager
        renews at two thirds too). Keys are written 0600, every file replaced whole. Returns whether
        a certificate was issued for members that may already run with the previous one."""
        from middleware import tls

        now = now or datetime.now(UTC)
        directory = self._tls_dir(spec)
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = directory / CA_FILE, directory / CA_KEY_FILE
        if ca_cert.exists() and ca_key.exists():
            ca = tls.KeyPair(ca_cert.read_bytes(), ca_key.read_bytes())
        else:
            ca = tls.new_ca(f"moorage {spec.namespace}/{spec.name} CA", now=now)
            _write_private(ca_key, ca.key_pem)
            _write_private(ca_cert, ca.cert_pem, mode=0o644)
        cert, key = directory / CERT_FILE, directory / KEY_FILE
        existing = None
        if cert.exists() and key.exists():
            existing = tls.KeyPair(cert.read_bytes(), key.read_bytes())
        if existing is not None and not tls.renewal_due(existing, now=now):
            return False
        member = tls.issue(
            ca, f"{spec.name}.{spec.namespace}", now=now, dns_names=["localhost"], ip_addresses=[LOOPBACK]
        )
        # The key first: a member reloading between the two files must not pair a new certificate
        # with the old key.
        _write_private(key, member.key_pem)
        _write_private(cert, member.cert_pem, mode=0o644)
        return existing is not None

    def _take_renewed_certificates(self, spec: ResolvedSpec, engine: Engine, password: str) -> None:
        """Running members load the renewed certificate in place; those that cannot (a Redis
        sentinel) are restarted one at a time, each answering again before the next."""
        running = [m for m in self.members(spec, engine) if m.up]
        if not running:
            return
        for name in engine.reload_certificates(spec, Connection(running, password)):
            log.info("%s: restarting to serve the renewed certificate", name)
            record = self._read_state(spec.namespace, spec.name)["members"][name]
            self._stop(record)
            for port_name in record["ports"]:
                self._port_reusable(record, port_name)  # its sockets released, briefly awaited
            self._restart_in_lock(spec, engine, name)
            endpoint = Endpoint(LOOPBACK, int(record["ports"]["PORT"]))
            deadline = time.monotonic() + RESTART_ANSWER_SECONDS
            while not _accepts(endpoint):
                if time.monotonic() > deadline:
                    tail = self.member_log_tail(spec, _plan(engine, spec, name))
                    raise OperationError(
                        f"{name} did not answer within {RESTART_ANSWER_SECONDS:.0f}s of its restart for "
                        f"the renewed certificate; its log ends: {tail}"
                    )
                time.sleep(0.1)

    # -- Runtime protocol -------------------------------------------------------------------------
    def password(self, spec: ResolvedSpec) -> str:
        path = self._dir(spec.namespace, spec.name) / "credentials.json"
        if path.exists():
            return str(json.loads(path.read_text())["password"])
        path.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"password": password}, handle)
        return password

    def record_manifest(self, spec: ResolvedSpec, manifest: dict[str, Any]) -> None:
        directory = self._dir(spec.namespace, spec.name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "middleware.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))

    def apply(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        members: list[MemberPlan] | None = None,
        conn: Connection | None = None,
    ) -> list[MemberPlan]:
        """Start ``members`` (default: all planned) that are not running; returns those it started.

        Ports are allocated for every planned member first, so configs that list peers (the
        addressing) are complete even when only one wave is being started.
        """
        with self._locked(spec.namespace, spec.name):
            password = self.password(spec)
            if spec.tls and self._ensure_tls(spec):
                self._take_renewed_certificates(spec, engine, password)
            templates = engine.config_templates(spec)
            state = self._read_state(spec.namespace, spec.name)
            planned = engine.members(spec)
            taken = {p for m in state["members"].values() for p in m["ports"].values()}
            for member in planned:
                record = state["members"].setdefault(member.name, {"ports": {}})
                exporter = engine.exporter(spec, member)
                for port_name in [*member.ports, *([METRICS_PORT] if exporter else [])]:
                    if port_name not in record["ports"] or not self._port_reusable(record, port_name):
                        record["ports"][port_name] = _allocate_port(taken)
                    taken.add(record["ports"][port_name])
            self._write_state(spec.namespace, spec.name, state)
            addressing: Addressing = {
                m.name: MemberAddress(LOOPBACK, dict(state["members"][m.name]["ports"])) for m in planned
            }
            started: list[MemberPlan] = []
            for member in planned if members is None else members:
                record = state["members"][member.name]
                # Asked for first: they may be refused (an archive that is another cluster's), and
                # then before a running member's config changed.
                extra = self._extra_member_files(spec, member)
                config_path = self._write_config(spec, engine, member, record, templates, password)
                self._write_member_files(spec, engine, member, addressing, extra)
                exporter = engine.exporter(spec, member)
                if not self._alive(record):
                    self._prepare(spec, engine, member, record, conn or Connection([], password))
                    self._start(spec, engine, member, record, config_path)
                    started.append(member)
                self._run_exporter(spec, exporter, member, record, password)
                self._write_state(spec.namespace, spec.name, state)
            return started

    def _extra_member_files(self, spec: ResolvedSpec, member: MemberPlan) -> dict[str, tuple[str, int]]:
        if self.extra_member_files is None:
            return {}
        return self.extra_member_files(spec, member, self._member_dir(spec, member) / "data")

    def _write_member_files(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        member: MemberPlan,
        addressing: Addressing,
        extra: dict[str, tuple[str, int]],
    ) -> None:
        data_dir = self._member_dir(spec, member) / "data"
        for file_name, content in engine.member_files(spec, member, addressing).items():
            path = data_dir / file_name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        for file_name, (content, mode) in extra.items():
            # Replaced whole, never half-written: the server may run the file at any moment.
            _write_private(data_dir / file_name, content.encode(), mode)
        self._hand_over(spec, engine, member)

    def _hand_over(self, spec: ResolvedSpec, engine: Engine, member: MemberPlan) -> None:
        # Engines that refuse to run as root (PostgreSQL) get their directory chowned to their user.
        user = engine.process_user(member)
        if user is None:
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise MoorageError(f"user {user!r} does not exist: run `make setup`") from None
        # Only what this runtime wrote itself (the directories and the files directly in them); the
        # engine's own files already belong to its user, and walking a large data dir is costly.
        member_dir = self._member_dir(spec, member)
        for path in [member_dir, *member_dir.iterdir(), *(member_dir / "data").iterdir()]:
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare(
        self, spec: ResolvedSpec, engine: Engine, member: MemberPlan, record: dict[str, Any], conn: Connection
    ) -> None:
        # Before every start, not only the first: engines decide from the data directory and the
        # members up what is needed (initdb, a clone, a rewind onto the current primary, nothing).
        data_dir = self._member_dir(spec, member) / "data"
        values = self._placeholder_values(spec, member, record)
        user = engine.process_user(member)
        for command in engine.prepare_commands(spec, member, str(data_dir), conn):
            command = [fill_placeholders(arg, values) for arg in command]
            full = ["runuser", "-u", user, "--", *command] if user and os.geteuid() == 0 else command
            result = subprocess.run(full, cwd=data_dir, capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                tail = "\n".join((result.stderr or result.stdout).splitlines()[-5:])
                raise OperationError(f"preparing {member.name}: {command[0]} failed:\n{tail}")

    def _port_reusable(self, record: dict[str, Any], port_name: str) -> bool:
        """Keep a member's port unless someone else really took it.

        A member's address is part of its peers' state (ZooKeeper's replicated config, sentinel's
        replica list), so moving it is a last resort. A process just killed may hold its sockets for
        a moment after it stopped counting as alive (a JVM tearing down): wait for that, briefly.
        """
        if self._alive(record):
            return True
        port = int(record["ports"][port_name])
        deadline = time.monotonic() + PORT_RELEASE_SECONDS
        while not port_free(port):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _write_config(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        member: MemberPlan,
        record: dict[str, Any],
        templates: dict[str, str],
        password: str,
    ) -> Path:
        member_dir = self._member_dir(spec, member)
        data_dir = member_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        secrets_path = member_dir / "secrets.conf"
        if not secrets_path.exists():
            fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(engine.secrets_file(member, password))
        file_name = engine.config_file_for(member)
        # The config lives in the data dir: engines rewrite it (CONFIG REWRITE, sentinel state), and
        # those rewrites (e.g. who is master now) must survive restarts. Written once, then kept.
        config_path = data_dir / file_name
        values = self._placeholder_values(spec, member, record)
        rendered = fill_placeholders(templates[file_name], values)
        if not config_path.exists():
            config_path.write_text(rendered)
        else:
            self._sync_lines(config_path, values, rendered, engine.spec_config_keys)
        return config_path

    def _placeholder_values(
        self, spec: ResolvedSpec, member: MemberPlan, record: dict[str, Any]
    ) -> dict[str, str]:
        member_dir = self._member_dir(spec, member)
        ports = record["ports"]
        return {
            "BIND": LOOPBACK,
            "PORT": str(ports["PORT"]),
            "BUS_PORT": str(ports.get("BUS_PORT", 0)),
            "METRICS_PORT": str(ports.get(METRICS_PORT, 0)),
            "DATA_DIR": str(member_dir / "data"),
            "ANNOUNCE_HOST": LOOPBACK,
            "SECRETS_FILE": str(member_dir / "secrets.conf"),
            "TLS_DIR": str(self._tls_dir(spec)),
        }

    @staticmethod
    def _sync_lines(
        config_path: Path, values: dict[str, str], rendered: str, spec_keys: tuple[str, ...]
    ) -> None:
        # Ports may have been re-allocated while the member was down, and the engine's
        # ``spec_config_keys`` follow the spec; everything else is the engine's own (rewritten)
        # state and stays as it is.
        lines = config_path.read_text().splitlines()
        for directive, key in (("port", "PORT"), ("cluster-port", "BUS_PORT")):
            lines = [f"{directive} {values[key]}" if ln.split(" ", 1)[0] == directive else ln for ln in lines]
        if spec_keys:

            def setting(line: str) -> str | None:
                name, equals, _ = line.partition("=")
                return name.strip() if equals and not line.lstrip().startswith("#") else None

            wanted = [ln for ln in rendered.splitlines() if setting(ln) in spec_keys]
            lines = [ln for ln in lines if setting(ln) not in spec_keys] + wanted
        replace_config(config_path, "\n".join(lines) + "\n")

    def _start(
        self, spec: ResolvedSpec, engine: Engine, member: MemberPlan, record: dict[str, Any], config: Path
    ) -> None:
        member_dir = self._member_dir(spec, member)
        command = engine.command(spec, member, str(config))
        if shutil.which(command[0]) is None:
            raise MoorageError(
                f"{command[0]} is not installed: run `make setup` (or apt-get install the engine's package)"
            )
        user = engine.process_user(member)
        as_user: dict[str, Any] = {}
        if user is not None and os.geteuid() == 0:
            # Switch user in the child itself (not through runuser, which forks and waits): the PID
            # recorded must be the server's own, or stopping or killing it would leave it running.
            entry = pwd.getpwnam(user)
            as_user = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(user, entry.pw_gid),
                "env": {**os.environ, "HOME": entry.pw_dir, "USER": user, "LOGNAME": user},
            }
        with open(member_dir / "member.log", "ab") as log_file:
            process = subprocess.Popen(
                command,
                cwd=member_dir / "data",
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI and its terminal
                **as_user,
            )
        record["pid"] = process.pid
        record["starttime"] = process_start_time(process.pid)
        # An in-process exporter is configured at start: one turned on later serves from the next.
        exporter = engine.exporter(spec, member)
        record["serves_metrics"] = exporter is not None and exporter.in_process
        log.info("started %s (pid %d)", member.name, process.pid)

    def _run_exporter(
        self,
        spec: ResolvedSpec,
        exporter: Exporter | None,
        member: MemberPlan,
        record: dict[str, Any],
        password: str,
    ) -> None:
        """The member's exporter running beside it (started again if it died), or stopped when the
        spec has none now (spec.monitoring.enabled false). Not a reason to fail the member: without
        its binary the member runs unobserved, the log says why, and its status has no address."""
        running = record.get("exporter", {})
        if exporter is None or exporter.in_process:
            self._stop(running)
            record.pop("exporter", None)
            return
        if self._alive(running):
            return
        binary = find_exporter(exporter.binary)
        if binary is None:
            log.warning(
                "%s: %s not found (in $%s/bin, %s/bin or PATH): no metrics; run `make setup` "
                "(hack/install-exporters.sh) or set spec.monitoring.enabled: false",
                member.name,
                exporter.binary,
                EXPORTER_DIR_ENV,
                DEFAULT_EXPORTER_DIR,
            )
            record.pop("exporter", None)
            return
        member_dir = self._member_dir(spec, member)
        target = f"{LOOPBACK}:{record['ports']['PORT']}"
        listen = f"{LOOPBACK}:{record['ports'][METRICS_PORT]}"
        env = {**os.environ, **exporter.environment(target), exporter.password_env: password}
        with open(member_dir / "exporter.log", "ab") as log_file:
            process = subprocess.Popen(
                [binary, *exporter.arguments(listen, target, str(self._tls_dir(spec)))],
                cwd=member_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record["exporter"] = {"pid": process.pid, "starttime": process_start_time(process.pid)}
        log.info("started %s's exporter (pid %d) on %s", member.name, process.pid, listen)

    def metrics_addresses(self, spec: ResolvedSpec, engine: Engine) -> dict[str, str]:
        """Each member's exporter (host:port) that is running, by member name: the exporter's
        process, or the member's own for an in-process one."""
        state = self._read_state(spec.namespace, spec.name)
        plans = {plan.name: plan for plan in engine.members(spec)}
        addresses = {}
        for name, record in state["members"].items():
            plan = plans.get(name)
            exporter = engine.exporter(spec, plan) if plan is not None else None
            if exporter is None or METRICS_PORT not in record["ports"]:
                continue
            if exporter.in_process:
                serving = bool(record.get("serves_metrics")) and self._alive(record)
            else:
                serving = self._alive(record.get("exporter", {}))
            if serving:
                addresses[name] = f"{LOOPBACK}:{record['ports'][METRICS_PORT]}"
        return addresses

    def _alive(self, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        start = process_start_time(int(pid))
        return start is not None and start == record.get("starttime")

    def members(self, spec: ResolvedSpec, engine: Engine) -> list[Member]:
        state = self._read_state(spec.namespace, spec.name)
        result = []
        for member in engine.members(spec):
            record = state["members"].get(member.name)
            if record is None or "PORT" not in record["ports"]:
                continue
            endpoint = Endpoint(LOOPBACK, int(record["ports"]["PORT"]), self.client_tls(spec))
            up = self._alive(record) and _accepts(endpoint)
            result.append(Member(plan=member, endpoint=endpoint, up=up))
        return result

    def member_log_tail(self, spec: ResolvedSpec, member: MemberPlan, lines: int = 5) -> str:
        path = self._member_dir(spec, member) / "member.log"
        if not path.exists():
            return ""
        return log_tail(path.read_text(errors="replace"), lines)

    def member_exited(self, spec: ResolvedSpec, member: MemberPlan) -> bool:
        record = self._read_state(spec.namespace, spec.name)["members"].get(member.name, {})
        return bool(record.get("pid")) and not self._alive(record)

    def kill_member(self, spec: ResolvedSpec, name: str, sig: int = signal.SIGKILL) -> None:
        """Chaos and tests: kill a member's process without any cleanup (as a node failure would)."""
        with self._locked(spec.namespace, spec.name):
            state = self._read_state(spec.namespace, spec.name)
            record = state["members"][name]
            self._signal_and_wait(record, sig, STOP_GRACE_SECONDS)

    def retire(self, spec: ResolvedSpec, engine: Engine, members: list[MemberPlan]) -> None:
        with self._locked(spec.namespace, spec.name):
            state = self._read_state(spec.namespace, spec.name)
            for member in members:
                record = state["members"].get(member.name)
                if record:
                    self._stop(record)
                    record.pop("pid", None)
                    self._stop(record.get("exporter", {}))
                    record.pop("exporter", None)
            self._write_state(spec.namespace, spec.name, state)

    def update_config(self, spec: ResolvedSpec, engine: Engine, directives: dict[str, str]) -> None:
        with self._locked(spec.namespace, spec.name):
            for member in engine.members(spec):
                path = self._member_dir(spec, member) / "data" / engine.config_file_for(member)
                if not path.exists() or member.component != "data":
                    continue
                lines = path.read_text().splitlines()
                for key, value in directives.items():
                    replacement = f"{key} {value}"
                    indexes = [i for i, ln in enumerate(lines) if ln.split(" ", 1)[0] == key]
                    if indexes:
                        lines[indexes[0]] = replacement
                        lines = [ln for i, ln in enumerate(lines) if i not in indexes[1:]]
                    else:
                        lines.append(replacement)
                replace_config(path, "\n".join(lines) + "\n")

    def _stop(self, record: dict[str, Any]) -> None:
        self._signal_and_wait(record, signal.SIGTERM, STOP_GRACE_SECONDS)

    def _signal_and_wait(self, record: dict[str, Any], sig: int, grace: float) -> None:
        if not self._alive(record):
            return
        pid = int(record["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while self._alive(record) and time.monotonic() < deadline:
            reap(pid)
            time.sleep(0.05)
        if self._alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self._alive(record):
                reap(pid)
                time.sleep(0.05)
        reap(pid)

    def start_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> None:
        """Start one stopped member again with its existing data (a pod restart)."""
        with self._locked(spec.namespace, spec.name):
            self._restart_in_lock(spec, engine, name)

    def _restart_in_lock(self, spec: ResolvedSpec, engine: Engine, name: str) -> None:
        state = self._read_state(spec.namespace, spec.name)
        member = next(m for m in engine.members(spec) if m.name == name)
        record = state["members"][name]
        if not self._alive(record):
            config = self._member_dir(spec, member) / "data" / engine.config_file_for(member)
            self._start(spec, engine, member, record, config)
        if METRICS_PORT in record["ports"]:
            self._run_exporter(spec, engine.exporter(spec, member), member, record, self.password(spec))
        self._write_state(spec.namespace, spec.name, state)

    def delete(self, namespace: str, name: str, *, purge: bool) -> None:
        directory = self._dir(namespace, name)
        if not directory.exists():
            raise MoorageError(f"no deployment {namespace}/{name} in {self.root}")
        with self._locked(namespace, name):
            state = self._read_state(namespace, name)
            for record in state["members"].values():
                self._stop(record)
                record.pop("pid", None)
                self._stop(record.get("exporter", {}))
                record.pop("exporter", None)
            self._write_state(namespace, name, state)
        if purge:
            shutil.rmtree(directory)
        else:
            # Like a deleted Middleware with deletionPolicy Retain: data and credentials stay, and
            # `moorage up` with the same name picks them up again.
            (directory / "middleware.yaml").unlink(missing_ok=True)
            (directory / "status.json").unlink(missing_ok=True)

    def applied_manifest(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._dir(namespace, name) / "middleware.yaml"
        if not path.exists():
            return None
        data: dict[str, Any] = yaml.safe_load(path.read_text())
        return data

    def has_data(self, namespace: str, name: str) -> bool:
        return (self._dir(namespace, name) / "members").is_dir()

    def save_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = self._dir(namespace, name) / "status.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(status, indent=2, sort_keys=True))

    def load_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = self._dir(namespace, name) / "status.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def list(self) -> list[tuple[str, str]]:
        if not self.root.exists():
            return []
        return sorted((p.parent.parent.name, p.parent.name) for p in self.root.glob("*/*/middleware.yaml"))
