"""Per-node Redis operations shared by the Sentinel and Cluster topologies.

Everything here talks to one node at a time with redis-py, over short timeouts, and never lets a
password reach a log line or an exception message.
"""

from __future__ import annotations

import inspect
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tenacity import (
    retry,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from middleware.endpoints import ClientTls, Endpoint
from middleware.errors import NotReady, OperationError

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
REDACTED = "<redacted>"
# Values of these parameters are credentials: never echoed in reports, logs or errors.
SECRET_PARAMETERS = frozenset(
    {"requirepass", "masterauth", "tls-key-file-pass", "tls-client-key-file-pass", "sentinel-pass"}
)
NETWORK_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)

T = TypeVar("T")

# CLIENT SETINFO only exists from Redis 7.2; skipping it saves a failing round trip per connection on
# 7.0. redis-py 8 spells that ``driver_info=None``; older releases ``lib_name=None, lib_version=None``.
_NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def _network_retry(attempts: int) -> Callable[[Callable[[], T]], Callable[[], T]]:
    # A brief blip (pod restart, connection reset) should not fail a whole operation; anything longer
    # is NotReady and left to the caller's own retry loop (kopf, CLI).
    return retry(
        retry=retry_if_exception_type(NETWORK_ERRORS)
        & retry_if_not_exception_type(redis.AuthenticationError),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_fixed(0.2),
        reraise=True,
    )


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def describe_error(exc: BaseException, *secrets: str | None) -> str:
    """One line naming the failure, safe to log or raise: any known secret is replaced."""
    message = str(exc).strip() or type(exc).__name__
    return scrub(f"{type(exc).__name__}: {message}", secrets)


def connect(
    endpoint: Endpoint,
    password: str | None = None,
    *,
    socket_timeout: float = SOCKET_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    **kw: Any,
) -> redis.Redis:
    """A client for one node (data node or sentinel) with short timeouts and no hidden retries.

    redis-py 8 retries failed commands with exponential backoff by default, which turns one dead
    pod into seconds of stalls across a whole observation; callers retry explicitly instead.
    RESP2 is pinned so reply shapes do not depend on the server's protocol negotiation.
    """
    options: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "password": password or None,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
    }
    if endpoint.tls is not None:
        options.update(tls_options(endpoint.tls))
    options.update(_NO_CLIENT_SETINFO)
    options.update(kw)
    return redis.Redis(**options)


def reload_tls_files(endpoint: Endpoint, password: str | None) -> None:
    """CONFIG SET of a data node's tls-* files to the paths they have: Redis loads them again, so
    a certificate renewed in place is served to new connections."""

    def reload(client: redis.Redis) -> None:
        files = client.config_get("tls-*-file")
        names = ("tls-cert-file", "tls-key-file", "tls-ca-cert-file")
        args = [item for name in names if files.get(name) for item in (name, files[name])]
        if args:
            client.execute_command("CONFIG", "SET", *args)

    call(endpoint, password, reload)


def tls_options(tls: ClientTls) -> dict[str, Any]:
    """redis-py's options for a member with TLS: the member's certificate verified against the
    deployment's CA and its name, ours presented."""
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }


def call(
    endpoint: Endpoint,
    password: str | None,
    fn: Callable[[redis.Redis], T],
    *,
    attempts: int = 3,
    **kw: Any,
) -> T:
    """Run ``fn`` on a fresh connection, always closed; network failures become ``NotReady``.

    ``fn`` is retried on network errors, so it must be safe to repeat (ROLE, CONFIG SET, REPLICAOF
    to the same master are).
    """
    client = connect(endpoint, password, **kw)
    try:
        return _network_retry(attempts)(lambda: fn(client))()
    except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError) as exc:
        raise OperationError(
            f"redis {endpoint.address} refused auth: {describe_error(exc, password)}"
        ) from None
    except redis.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS")):
            raise OperationError(
                f"redis {endpoint.address} refused auth: {describe_error(exc, password)}"
            ) from None
        raise
    except NETWORK_ERRORS as exc:
        raise NotReady(f"redis {endpoint.address} unreachable: {describe_error(exc, password)}") from None
    finally:
        client.close()


def ping_all(endpoints: Iterable[Endpoint], password: str | None = None) -> dict[Endpoint, str | None]:
    """PING every node: ``None`` when it answered, otherwise why not (secret-free)."""
    result: dict[Endpoint, str | None] = {}
    for endpoint in endpoints:
        try:
            call(endpoint, password, lambda c: c.ping())
            result[endpoint] = None
        except (NotReady, OperationError, redis.RedisError) as exc:
            result[endpoint] = describe_error(exc, password)
    return result


@dataclass(frozen=True)
class ReplicaOffset:
    endpoint: Endpoint
    offset: int


@dataclass(frozen=True)
class NodeRole:
    """ROLE, parsed. ``link`` is the replica's link state: connect, connecting, sync or connected."""

    endpoint: Endpoint
    role: Literal["master", "replica", "sentinel"]
    offset: int = 0
    replicas: tuple[ReplicaOffset, ...] = ()
    master: Endpoint | None = None
    link: str | None = None
    monitored_masters: tuple[str, ...] = ()

    @property
    def is_master(self) -> bool:
        return self.role == "master"

    @property
    def is_replica(self) -> bool:
        return self.role == "replica"

    @property
    def link_up(self) -> bool:
        # "connected" is ROLE's name for INFO's master_link_status:up (initial sync finished).
        return self.role == "replica" and self.link == "connected"


def parse_role(endpoint: Endpoint, reply: list[Any]) -> NodeRole:
    kind = str(reply[0])
    if kind == "master":
        replicas = tuple(
            ReplicaOffset(Endpoint(str(item[0]), int(item[1]), endpoint.tls), int(item[2]))
            for item in reply[2] or []
        )
        return NodeRole(endpoint, "master", offset=int(reply[1]), replicas=replicas)
    if kind == "slave":
        return NodeRole(
            endpoint,
            "replica",
            master=Endpoint(str(reply[1]), int(reply[2]), endpoint.tls),
            link=str(reply[3]),
            offset=int(reply[4]),
        )
    if kind == "sentinel":
        return NodeRole(endpoint, "sentinel", monitored_masters=tuple(str(name) for name in reply[1] or []))
    raise OperationError(f"redis {endpoint.address}: unexpected ROLE reply kind {kind!r}")


def node_role(endpoint: Endpoint, password: str | None = None, **kw: Any) -> NodeRole:
    return call(endpoint, password, lambda c: parse_role(endpoint, c.role()), **kw)


def replication_info(endpoint: Endpoint, password: str | None = None) -> dict[str, Any]:
    return call(endpoint, password, lambda c: dict(c.info("replication")))


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except OSError:
        return frozenset()


def same_node(a: Endpoint | None, b: Endpoint | None) -> bool:
    """True when both name the same listener, even if one side reports an IP and the other a name.

    Sentinels and ROLE report whatever address was announced or configured; callers hold pod DNS
    names. Comparing resolved addresses avoids treating one node as two.
    """
    if a is None or b is None or a.port != b.port:
        return False
    if a.host == b.host:
        return True
    return bool(_addresses(a.host) & _addresses(b.host))


# --- live parameters -------------------------------------------------------------------------------

_MEMORY = re.compile(r"^(\d+)(k|kb|m|mb|g|gb)$")
_MEMORY_UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_QUOTED = re.compile(r"'([^']+)'")


def normalize_value(value: str) -> str:
    """Redis reports values canonically (``100mb`` reads back as ``104857600``); compare like that."""
    text = " ".join(value.strip().strip('"').lower().split())
    match = _MEMORY.match(text)
    if match:
        return str(int(match.group(1)) * _MEMORY_UNITS[match.group(2)])
    return text


def _shown(name: str, value: str | None) -> str | None:
    return REDACTED if value is not None and name in SECRET_PARAMETERS else value


@dataclass(frozen=True)
class ParameterChange:
    name: str
    before: str | None
    after: str | None
    changed: bool
    verified: bool


@dataclass
class NodeApply:
    endpoint: Endpoint
    parameters: list[ParameterChange] = field(default_factory=list)
    persisted: bool | None = None  # None: nothing changed, so nothing to persist
    persist_error: str | None = None

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.parameters)

    @property
    def unverified(self) -> list[str]:
        return [p.name for p in self.parameters if not p.verified]


@dataclass
class ApplyReport:
    nodes: list[NodeApply] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(n.changed for n in self.nodes)

    @property
    def not_persisted(self) -> dict[Endpoint, str]:
        return {n.endpoint: n.persist_error or "" for n in self.nodes if n.persisted is False}

    @property
    def unverified(self) -> dict[Endpoint, list[str]]:
        return {n.endpoint: n.unverified for n in self.nodes if n.unverified}


def _refused_parameter(message: str, names: list[str]) -> str:
    for candidate in _QUOTED.findall(message):
        if candidate.lower() in names:
            return candidate.lower()
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def apply_parameters(
    endpoints: Iterable[Endpoint], password: str | None, params: Mapping[str, str]
) -> ApplyReport:
    """CONFIG SET the given (caller-vetted dynamic) parameters on every node, persist, verify.

    All nodes are read first so an unreachable node stops the run before anything changes. Per node
    the changed parameters go in one CONFIG SET, which Redis 7 applies atomically. CONFIG REWRITE
    failures (no config file, read-only volume) are reported, not raised: the runtime value is live.
    """
    wanted = {name.lower(): str(value) for name, value in params.items()}
    endpoints = list(endpoints)
    report = ApplyReport()
    if not wanted:
        report.nodes = [NodeApply(e) for e in endpoints]
        return report
    secrets = [password, *(v for k, v in wanted.items() if k in SECRET_PARAMETERS)]
    names = sorted(wanted)

    current: dict[Endpoint, dict[str, str]] = {}
    for endpoint in endpoints:
        current[endpoint] = call(endpoint, password, lambda c: _config_get(c, names))

    done: list[Endpoint] = []
    for endpoint in endpoints:
        before = current[endpoint]
        todo = {k: v for k, v in wanted.items() if normalize_value(before.get(k, "\0")) != normalize_value(v)}
        node = NodeApply(endpoint)
        if todo:
            try:
                call(endpoint, password, _config_setter(todo))
            except redis.ResponseError as exc:
                reason = scrub(str(exc), secrets)
                name = _refused_parameter(reason, sorted(todo))
                already = f" (already applied on {', '.join(e.address for e in done)})" if done else ""
                raise OperationError(
                    f"redis {endpoint.address} refused parameter {name}: {reason}{already}"
                ) from None
            node.persisted, node.persist_error = _persist(endpoint, password, secrets)
            done.append(endpoint)
        after = call(endpoint, password, lambda c: _config_get(c, names))
        for name in names:
            verified = normalize_value(after.get(name, "\0")) == normalize_value(wanted[name])
            if not verified:
                log.warning(
                    "redis %s: %s reads back as %r after CONFIG SET",
                    endpoint.address,
                    name,
                    _shown(name, after.get(name)),
                )
            node.parameters.append(
                ParameterChange(
                    name=name,
                    before=_shown(name, before.get(name)),
                    after=_shown(name, after.get(name)),
                    changed=name in todo,
                    verified=verified,
                )
            )
        if node.changed:
            log.info("redis %s: applied %s", endpoint.address, ", ".join(sorted(todo)))
        report.nodes.append(node)
    return report


def _config_get(client: redis.Redis, names: list[str]) -> dict[str, str]:
    reply = client.config_get(*names)
    return {str(k): str(v) for k, v in reply.items() if k is not None and v is not None}


def _config_setter(values: Mapping[str, str]) -> Callable[[redis.Redis], object]:
    flat = [part for item in values.items() for part in item]
    return lambda client: client.config_set(*flat)


def _persist(endpoint: Endpoint, password: str | None, secrets: list[str | None]) -> tuple[bool, str | None]:
    try:
        call(endpoint, password, lambda c: c.config_rewrite())
    except redis.ResponseError as exc:
        reason = scrub(str(exc), secrets)
        log.warning(
            "redis %s: CONFIG REWRITE failed, change is live but not persisted: %s", endpoint.address, reason
        )
        return False, reason
    return True, None
