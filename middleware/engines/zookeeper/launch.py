"""Start one ZooKeeper server on the local runtime: fix its view of the ensemble, then become it.

``python launch.py CONFIG -- java ... QuorumPeerMain CONFIG`` checks the member's dynamic config,
rewrites it when needed, and ``exec``s the server: same PID, so the runtime stops the server itself.
It runs on every start, like the init container does in Kubernetes (see ``render.py``), because a
member's config must be right at *each* start, and ZooKeeper itself owns the file afterwards.

Why a member's config may need fixing before it starts:

- A member added by a scale-out must not start with the full new member list as participants: two
  new members could then elect each other, a split brain next to the real ensemble. ZooKeeper's
  documented way is to start a joiner with the *committed* configuration plus itself, so that it
  can only follow the current leader (as a non-voting follower) until ``reconfig`` adds it.
- A member removed by a scale-in keeps the configuration without itself; ZooKeeper refuses to start
  with it ("My id N not in the peer list"), so a later scale-out needs the same fix.

The committed configuration comes from the live ensemble (the ``conf`` four-letter word). When no
member answers, the ensemble is being created (or is entirely down) and the file stays as it is.

This module is run as a script by path, so it imports nothing but the standard library; the engine
reuses its parsing and four-letter-word code.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# zoo.cfg names the JVM argument file holding the superuser digest here: the runtime fills the path
# (${SECRETS_FILE}); ZooKeeper ignores the key (it becomes an unused system property).
SECRETS_FILE_PROPERTY = "moorage.secretsFile"
METRICS_PROVIDER_PROPERTY = "metricsProvider.className"
METRICS_PROVIDER_CLASS = "org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider"
# The provider's own jar; the classpath names its directory with a wildcard (java's `dir/*`).
METRICS_PROVIDER_JAR_PREFIX = "zookeeper-prometheus-metrics-"
DYNAMIC_FILE_PROPERTY = "dynamicConfigFile"
INITIAL_DYNAMIC_FILE = "zoo.cfg.dynamic"
MYID_FILE = "myid"
NOT_SERVING = "not currently serving"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
_SERVER_LINE_RE = re.compile(
    r"^server\.(?P<id>\d+)=(?P<host>[^:;]+):(?P<peer>\d+):(?P<election>\d+)"
    r"(?::(?P<role>participant|observer))?(?:;(?:(?P<chost>[^:;]+):)?(?P<cport>\d+))?$"
)
_MAX_REPLY_BYTES = 1 << 20


class LaunchError(Exception):
    """The member cannot start safely; the message says why and what to do."""


@dataclass(frozen=True)
class ServerSpec:
    """One ``server.N=host:peer:election:role;clienthost:clientport`` line of a dynamic config."""

    server_id: int
    host: str
    peer_port: int
    election_port: int
    role: str = "participant"
    client_host: str = "0.0.0.0"
    client_port: int | None = None

    @property
    def value(self) -> str:
        text = f"{self.host}:{self.peer_port}:{self.election_port}:{self.role}"
        if self.client_port is not None:
            text += f";{self.client_host}:{self.client_port}"
        return text

    @property
    def line(self) -> str:
        return f"server.{self.server_id}={self.value}"

    def client_address(self) -> tuple[str, int] | None:
        """Where a client reaches this server: a wildcard bind address means "the server's host"."""
        if self.client_port is None:
            return None
        host = self.host if self.client_host in WILDCARD_HOSTS else self.client_host
        return host, self.client_port

    @classmethod
    def parse(cls, line: str) -> ServerSpec:
        match = _SERVER_LINE_RE.match(line.strip())
        if not match:
            raise ValueError(f"not a ZooKeeper server line: {line!r}")
        return cls(
            server_id=int(match["id"]),
            host=match["host"],
            peer_port=int(match["peer"]),
            election_port=int(match["election"]),
            role=match["role"] or "participant",
            client_host=match["chost"] or "0.0.0.0",
            client_port=int(match["cport"]) if match["cport"] else None,
        )


@dataclass(frozen=True)
class Membership:
    """The ensemble's configuration as a server reports it: its servers and the config version."""

    servers: dict[int, ServerSpec]
    version: int

    @property
    def voters(self) -> set[int]:
        return {i for i, s in self.servers.items() if s.role == "participant"}

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1


def parse_servers(text: str) -> dict[int, ServerSpec]:
    servers = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("server."):
            spec = ServerSpec.parse(line)
            servers[spec.server_id] = spec
    return servers


def parse_conf(reply: str) -> Membership | None:
    """The ``membership:`` part of a ``conf`` reply; None when the server is not serving."""
    if NOT_SERVING in reply or "membership:" not in reply:
        return None
    section = reply.split("membership:", 1)[1]
    version = re.search(r"^version=([0-9a-fA-F]+)\s*$", section, re.M)
    servers = parse_servers(section)
    if not servers:
        return None
    return Membership(servers, int(version.group(1), 16) if version else 0)


def four_letter_word(host: str, port: int, word: str, timeout: float = 2.0) -> str:
    """Send a four-letter word and read the whole reply (the server closes the connection)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        while size < _MAX_REPLY_BYTES:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def read_properties(path: Path) -> dict[str, str]:
    """zoo.cfg as ZooKeeper reads it: ``key=value`` (or ``key value``), ``#`` comments."""
    properties = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=") if "=" in line else line.partition(" ")
        properties[key.strip()] = value.strip()
    return properties


def live_membership(candidates: list[tuple[str, int]], timeout: float = 1.0) -> Membership | None:
    """The newest committed configuration any reachable, serving member reports."""
    newest: Membership | None = None
    for host, port in candidates:
        try:
            membership = parse_conf(four_letter_word(host, port, "conf", timeout))
        except OSError:
            continue
        if membership is not None and (newest is None or membership.version > newest.version):
            newest = membership
    return newest


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".moorage-tmp")
    tmp.write_text(text)
    tmp.replace(path)


def prepare(config_path: Path) -> str:
    """Make the member's dynamic config safe to start with; returns what was done (for the log)."""
    properties = read_properties(config_path)
    data_dir = Path(properties.get("dataDir") or config_path.parent)
    try:
        myid = int((data_dir / MYID_FILE).read_text().strip())
    except (OSError, ValueError) as error:
        raise LaunchError(f"cannot read the server id from {data_dir / MYID_FILE}: {error}") from None
    initial_path = config_path.parent / INITIAL_DYNAMIC_FILE
    dynamic_path = Path(properties.get(DYNAMIC_FILE_PROPERTY) or initial_path)
    view = parse_servers(dynamic_path.read_text()) if dynamic_path.exists() else {}
    initial = parse_servers(initial_path.read_text()) if initial_path.exists() else {}
    me = view.get(myid) or initial.get(myid)
    if me is None:
        raise LaunchError(f"server {myid} has no address in {dynamic_path} or {initial_path}")
    peers = {**initial, **view}
    candidates = [a for i, s in sorted(peers.items()) if i != myid and (a := s.client_address()) is not None]
    live = live_membership(candidates)
    if live is None:
        if myid in view:
            return f"no ensemble member answers: starting with {dynamic_path.name} as it is"
        raise LaunchError(
            f"server {myid} is not in its own configuration ({dynamic_path}) and no ensemble member "
            "answers to tell the current one: start the ensemble first"
        )
    if myid in live.servers:
        if myid in view:
            # ZooKeeper adopts the newer committed config from its peers by itself.
            return f"member of the ensemble (config version {live.version:x})"
        servers = dict(live.servers)
        action = "rejoining"
    else:
        # Current committed config + this server as the only joiner: it can follow the leader but
        # never form a quorum with other joiners (ZooKeeper's reconfig guide, "adding servers").
        servers = {**live.servers, myid: me}
        action = "joining"
    # Unversioned, so the server adopts the committed config (a higher version) from its peers.
    _write_atomically(initial_path, "".join(s.line + "\n" for _, s in sorted(servers.items())))
    _point_config_at(config_path, initial_path)
    return f"{action}: starting from config version {live.version:x} + server {myid}"


def _point_config_at(config_path: Path, dynamic_path: Path) -> None:
    lines = [
        ln
        for ln in config_path.read_text().splitlines()
        if ln.split("=", 1)[0].strip() != DYNAMIC_FILE_PROPERTY
    ]
    lines.append(f"{DYNAMIC_FILE_PROPERTY}={dynamic_path}")
    _write_atomically(config_path, "\n".join(lines) + "\n")


def server_command(config_path: Path, command: list[str]) -> list[str]:
    """The server's command line with the JVM argument file (the superuser digest) added."""
    if not command:
        raise LaunchError("no server command given after --")
    secrets = read_properties(config_path).get(SECRETS_FILE_PROPERTY)
    if secrets:
        if not Path(secrets).is_file():
            raise LaunchError(f"the secrets file {secrets} is missing")
        # A JVM @argfile: the digest never appears in the process list.
        command = [command[0], f"@{secrets}", *command[1:]]
    if shutil.which(command[0]) is None:
        raise LaunchError(f"{command[0]} is not installed: run `make setup` (apt-get install zookeeper)")
    if "-cp" in command:
        classpath = command[command.index("-cp") + 1]
        missing = [e for e in classpath.split(":") if e.endswith(".jar") and not Path(e).exists()]
        if missing:
            raise LaunchError(f"{', '.join(missing)} not found: run `make setup` (apt-get install zookeeper)")
        if read_properties(config_path).get(METRICS_PROVIDER_PROPERTY) == METRICS_PROVIDER_CLASS:
            wildcards = [Path(e[:-1]) for e in classpath.split(":") if e.endswith("/*")]
            if not any(d.is_dir() and any(d.glob(f"{METRICS_PROVIDER_JAR_PREFIX}*.jar")) for d in wildcards):
                where = ", ".join(map(str, wildcards)) or "the classpath"
                raise LaunchError(
                    "ZooKeeper's Prometheus metrics provider is not installed (no "
                    f"{METRICS_PROVIDER_JAR_PREFIX}*.jar in {where}): run `make setup` "
                    "(hack/install-exporters.sh), or set spec.monitoring.enabled: false"
                )
    return command


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: launch.py ZOO_CFG -- COMMAND...", file=sys.stderr)
        return 2
    config_path = Path(argv[0])
    try:
        print(f"moorage: {prepare(config_path)}", file=sys.stderr, flush=True)
        command = server_command(config_path, argv[2:])
    except (LaunchError, ValueError, OSError) as error:
        # One line in the member's log, which the runtime shows when the member exits at start.
        print(f"moorage: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
