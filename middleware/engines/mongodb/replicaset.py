"""Live replica set operations over the MongoDB wire protocol (pymongo), one member at a time.

Every call connects to one member directly (``directConnection=True``): Moorage decides which member
it talks to (the seed, the primary) rather than letting the driver's server selection pick one, and
a member that is not in a replica set yet can only be reached that way.

- ``initiate``: idempotent ``replSetInitiate`` with members addressed by stable host names. An
  initialized set with the same name and members is a no-op; anything else initialized is refused.
- ``ensure_admin_user``: ``createUser`` once, through the localhost exception (no user exists yet,
  so the connection must reach the member over its loopback interface).
- ``observe``: roles and health from ``replSetGetStatus``, preferring the primary's view.
- ``add_member`` / ``remove_member``: ``replSetGetConfig`` → the same config with ``version + 1``
  and exactly one member more or less → ``replSetReconfig`` on the primary; a new member beyond 7
  voters joins with ``votes: 0, priority: 0``. ``add_member`` waits (bounded) for SECONDARY.

Errors from the server become ``OperationError`` with the server's own message and code name;
an unreachable member is ``NotReady`` (retry later). Passwords are never part of a message.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from middleware.endpoints import Endpoint
from middleware.engines.base import Report
from middleware.engines.mongodb.topology import MAX_MEMBERS, MAX_VOTERS
from middleware.errors import NotReady, OperationError

T = TypeVar("T")

# Server error codes Moorage reacts to (src/mongo/base/error_codes.yml).
UNAUTHORIZED = 13
NOT_YET_INITIALIZED = 94
USER_ALREADY_EXISTS = 51003
# Per call: a member that does not answer within this is treated as down for this attempt.
CONNECT_TIMEOUT_MS = 5000
# replSetReconfig waits for the new config to be majority-committed before it answers.
COMMAND_TIMEOUT_MS = 60000
WAIT_TIMEOUT = 120.0
POLL_INTERVAL = 0.5
# Roles a member can serve reads in; PRIMARY also takes writes.
SERVING_STATES = frozenset({"PRIMARY", "SECONDARY"})


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class MemberStatus:
    host: str
    state: str  # stateStr: PRIMARY, SECONDARY, STARTUP2, RECOVERING, ARBITER, (not reachable/healthy)...
    healthy: bool


@dataclass
class SetView:
    """The replica set as one member sees it (the primary's view when a primary answers)."""

    set_name: str | None = None
    primary: str | None = None
    members: dict[str, MemberStatus] = field(default_factory=dict)
    answered_by: Endpoint | None = None
    unreachable: list[Endpoint] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Connections and commands


@contextmanager
def connect(
    endpoint: Endpoint, credentials: Credentials | None = None, *, timeout_ms: int = CONNECT_TIMEOUT_MS
) -> Iterator[MongoClient[dict[str, Any]]]:
    options: dict[str, Any] = {
        "directConnection": True,
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "socketTimeoutMS": COMMAND_TIMEOUT_MS,
        "appname": "moorage",
        # One command at a time per member: no pool warm-up, no retried writes behind our back.
        "maxPoolSize": 1,
        "retryWrites": False,
        "retryReads": False,
    }
    if credentials is not None:
        options.update(username=credentials.username, password=credentials.password, authSource="admin")
    client: MongoClient[dict[str, Any]] = MongoClient(endpoint.host, endpoint.port, **options)
    try:
        yield client
    finally:
        client.close()


def command(client: MongoClient[dict[str, Any]], endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    """Run an admin command; the command name is the first key of ``body``."""
    name = next(iter(body))
    try:
        return dict(client.admin.command(body))
    except OperationFailure as error:
        raise server_error(f"{name} on {endpoint}", error) from None
    except ConnectionFailure as error:
        raise NotReady(f"{name}: cannot reach {endpoint}: {error}") from None
    except PyMongoError as error:
        raise OperationError(f"{name} on {endpoint}: {error}") from None


class ServerError(OperationError):
    """The server refused a command: ``code`` and ``code_name`` are the server's."""

    def __init__(self, what: str, code: int | None, code_name: str, message: str) -> None:
        self.code = code
        self.code_name = code_name
        self.server_message = message
        super().__init__(f"{what} failed: {message} ({code_name or 'code'} {code})")


def server_error(what: str, error: OperationFailure) -> ServerError:
    details = error.details or {}
    # errmsg only: str(error) appends the whole reply, which is noise in a one-line error.
    message = str(details.get("errmsg") or error)
    return ServerError(what, error.code, str(details.get("codeName", "")), message)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, detail: Callable[[], str]) -> T:
    """Poll ``check`` until it returns something truthy; NotReady with the last state otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise NotReady(f"timed out after {timeout:.0f}s waiting for {what} ({detail()})")
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------------------------------
# Pure config planning


def voters(config: dict[str, Any]) -> int:
    return sum(1 for m in config["members"] if m.get("votes", 1))


def member_hosts(config: dict[str, Any]) -> list[str]:
    return [m["host"] for m in config["members"]]


def initial_config(set_name: str, hosts: list[str]) -> dict[str, Any]:
    if not hosts:
        raise OperationError("a replica set needs at least one member")
    if len(hosts) > MAX_MEMBERS:
        raise OperationError(f"a replica set has at most {MAX_MEMBERS} members, {len(hosts)} asked for")
    if len(set(hosts)) != len(hosts):
        raise OperationError(f"member hosts are not unique: {hosts}")
    members: list[dict[str, Any]] = []
    for index, host in enumerate(hosts):
        member: dict[str, Any] = {"_id": index, "host": host}
        if index >= MAX_VOTERS:
            member.update(votes=0, priority=0)
        members.append(member)
    return {"_id": set_name, "members": members}


def _next_version(config: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(config)
    new["version"] = int(config["version"]) + 1
    # The term is the primary's to set (MongoDB 4.4+ fills it in); sending back an old one is noise.
    new.pop("term", None)
    return new


def plan_add(config: dict[str, Any], host: str) -> dict[str, Any]:
    """``config`` with exactly one member added; beyond 7 voters it neither votes nor can be elected
    (MongoDB requires priority 0 for a non-voting member)."""
    if host in member_hosts(config):
        raise ValueError(f"{host} is already a member")
    if len(config["members"]) >= MAX_MEMBERS:
        raise OperationError(f"a replica set has at most {MAX_MEMBERS} members")
    new = _next_version(config)
    member: dict[str, Any] = {"_id": max((m["_id"] for m in config["members"]), default=-1) + 1, "host": host}
    if voters(config) >= MAX_VOTERS:
        member.update(votes=0, priority=0)
    new["members"].append(member)
    return new


def plan_remove(config: dict[str, Any], host: str) -> dict[str, Any]:
    if host not in member_hosts(config):
        raise ValueError(f"{host} is not a member")
    if len(config["members"]) == 1:
        raise OperationError(f"{host} is the only member: a replica set cannot remove its last member")
    new = _next_version(config)
    new["members"] = [m for m in new["members"] if m["host"] != host]
    return new


def plan_promote(config: dict[str, Any]) -> dict[str, Any] | None:
    """After a voter left: give the vote to the first non-voter, if the set has room for it (one
    voter change per reconfig, as MongoDB requires)."""
    if voters(config) >= MAX_VOTERS:
        return None
    candidate = next((m for m in config["members"] if not m.get("votes", 1)), None)
    if candidate is None:
        return None
    new = _next_version(config)
    for member in new["members"]:
        if member["_id"] == candidate["_id"]:
            member["votes"] = 1
            member["priority"] = 1
    return new


# --------------------------------------------------------------------------------------------------
# Initiate and the admin user


def _hello_membership(hello: dict[str, Any]) -> tuple[str, set[str]] | None:
    if not hello.get("setName"):
        return None
    hosts = {*hello.get("hosts", []), *hello.get("passives", []), *hello.get("arbiters", [])}
    return str(hello["setName"]), hosts


def initiate(set_name: str, hosts: list[str], seed: Endpoint) -> Report:
    """``replSetInitiate`` on ``seed`` with ``hosts`` (``host:port``, stable names) unless done.

    ``hello`` first (it needs no authentication, so a re-run works after the admin user exists):
    a set with this name and exactly these members is a no-op; any other set is refused with
    nothing sent. Without a set name, ``replSetGetStatus`` must say NotYetInitialized before the
    initiate goes out (a member whose config is only unloadable answers differently).
    """
    report = Report(changed=False)
    wanted = initial_config(set_name, hosts)
    with connect(seed) as client:
        current = _hello_membership(command(client, seed, {"hello": 1}))
        if current is None:
            try:
                status = command(client, seed, {"replSetGetStatus": 1})
            except ServerError as error:
                if error.code != NOT_YET_INITIALIZED:
                    raise
            else:
                current = str(status.get("set", "")), {m["name"] for m in status.get("members", [])}
        if current is not None:
            name, existing = current
            if name == set_name and existing == set(hosts):
                return report
            raise OperationError(
                f"{seed} already belongs to replica set {name!r} with members {sorted(existing)}; "
                f"Moorage wants {set_name!r} with {sorted(hosts)}: refusing to initiate over it"
            )
        command(client, seed, {"replSetInitiate": wanted})
    report.add(f"initiated replica set {set_name} with {len(hosts)} members")
    return report


def membership(endpoints: list[Endpoint]) -> tuple[str, set[str]] | None:
    """(set name, member hosts) from ``hello`` of the first member that is in a set; None when
    nobody answers or no member is in a set yet."""
    for endpoint in endpoints:
        try:
            with connect(endpoint) as client:
                seen = _hello_membership(command(client, endpoint, {"hello": 1}))
        except NotReady:
            continue
        if seen is not None:
            return seen
    return None


def primary_of(endpoints: list[Endpoint], credentials: Credentials | None = None) -> str | None:
    """The primary's host as the members name it (``hello.primary``), from the first that knows."""
    for endpoint in endpoints:
        try:
            with connect(endpoint, credentials) as client:
                hello = command(client, endpoint, {"hello": 1})
        except NotReady:
            continue
        if hello.get("primary"):
            return str(hello["primary"])
    return None


def wait_for_primary(endpoints: list[Endpoint], timeout: float = WAIT_TIMEOUT) -> str:
    return wait_for(
        "a primary", lambda: primary_of(endpoints), timeout, lambda: f"asked {', '.join(map(str, endpoints))}"
    )


def ensure_admin_user(primary: Endpoint, credentials: Credentials) -> Report:
    """Create the admin user (role ``root``) on the primary unless it exists.

    Sent unauthenticated: before any user exists, only the localhost exception lets a client in,
    so ``primary`` must be reached over the member's loopback interface (locally 127.0.0.1; in
    Kubernetes a port-forward). Once a user exists the exception is closed and the server answers
    Unauthorized: the credentials are then checked instead.
    """
    report = Report(changed=False)
    create = {
        "createUser": credentials.username,
        "pwd": credentials.password,
        "roles": [{"role": "root", "db": "admin"}],
    }
    with connect(primary) as client:
        try:
            command(client, primary, create)
        except ServerError as error:
            if error.code == USER_ALREADY_EXISTS:
                return report
            if error.code != UNAUTHORIZED:
                raise
            _check_credentials(primary, credentials)
            return report
    report.add(f"created user {credentials.username}")
    return report


def _check_credentials(endpoint: Endpoint, credentials: Credentials) -> None:
    try:
        with connect(endpoint, credentials) as client:
            command(client, endpoint, {"connectionStatus": 1})
    except ServerError as error:
        raise OperationError(
            f"{endpoint} already has users and {credentials.username!r} cannot authenticate with the "
            f"password in the credentials Secret ({error.code_name or error.code})"
        ) from None


# --------------------------------------------------------------------------------------------------
# Observe


def status_view(status: dict[str, Any], endpoint: Endpoint) -> SetView:
    view = SetView(set_name=status.get("set"), answered_by=endpoint)
    for member in status.get("members", []):
        host = str(member["name"])
        state = str(member.get("stateStr", "UNKNOWN"))
        view.members[host] = MemberStatus(
            host, state, bool(member.get("health", 0)) and state != "(not reachable/healthy)"
        )
        if state == "PRIMARY":
            view.primary = host
    return view


def observe(endpoints: list[Endpoint], credentials: Credentials | None) -> SetView:
    """``replSetGetStatus`` from the members in order; the first view that names a primary wins
    (a partitioned member may still think an old primary is up), else the first answer."""
    first: SetView | None = None
    unreachable: list[Endpoint] = []
    for endpoint in endpoints:
        try:
            with connect(endpoint, credentials) as client:
                status = command(client, endpoint, {"replSetGetStatus": 1})
        except NotReady:
            unreachable.append(endpoint)
            continue
        except ServerError as error:
            if error.code == NOT_YET_INITIALIZED:
                continue
            raise
        view = status_view(status, endpoint)
        if status.get("myState") == 1:
            view.unreachable = unreachable
            return view
        first = first or view
    result = first or SetView()
    result.unreachable = unreachable
    return result


# --------------------------------------------------------------------------------------------------
# Membership changes


def _find_primary(endpoints: list[Endpoint], credentials: Credentials | None) -> Endpoint:
    """The endpoint (one of ``endpoints``) that says it is the writable primary."""
    for endpoint in endpoints:
        try:
            with connect(endpoint, credentials) as client:
                hello = command(client, endpoint, {"hello": 1})
        except NotReady:
            continue
        if hello.get("isWritablePrimary"):
            return endpoint
    raise NotReady(f"no primary among {', '.join(map(str, endpoints))}")


def _reconfig(client: MongoClient[dict[str, Any]], primary: Endpoint, config: dict[str, Any]) -> None:
    command(client, primary, {"replSetReconfig": config})


def member_state(primary: Endpoint, credentials: Credentials | None, host: str) -> str | None:
    try:
        with connect(primary, credentials) as client:
            status = command(client, primary, {"replSetGetStatus": 1})
    except NotReady:
        return None
    member = status_view(status, primary).members.get(host)
    return member.state if member else None


def add_member(
    endpoints: list[Endpoint],
    host: str,
    credentials: Credentials | None,
    *,
    timeout: float = WAIT_TIMEOUT,
) -> Report:
    """Add ``host`` with one ``replSetReconfig`` on the primary (no-op when it is a member already),
    then wait until it is SECONDARY: it has copied the data and may vote, so the next change can go."""
    report = Report(changed=False)
    primary = _find_primary(endpoints, credentials)
    with connect(primary, credentials) as client:
        config = command(client, primary, {"replSetGetConfig": 1})["config"]
        if host not in member_hosts(config):
            new = plan_add(config, host)
            _reconfig(client, primary, new)
            votes = "" if new["members"][-1].get("votes", 1) else " (non-voting: 7 members vote already)"
            report.add(f"added {host} as member {new['members'][-1]['_id']}{votes}")
    last: list[str | None] = [None]

    def secondary() -> bool:
        last[0] = member_state(primary, credentials, host)
        return last[0] == "SECONDARY"

    wait_for(f"{host} to be SECONDARY", secondary, timeout, lambda: f"state {last[0] or 'unknown'}")
    return report


def remove_member(
    endpoints: list[Endpoint],
    host: str,
    credentials: Credentials | None,
) -> Report:
    """Remove ``host`` with one ``replSetReconfig`` (no-op when it is not a member), then hand its
    vote to a non-voting member if one waits for it (a second reconfig: one voter change each).

    The primary is never removed: step it down first (``step_down``), so that the set elects a new
    primary while the leaving member can still vote for it.
    """
    report = Report(changed=False)
    primary = _find_primary(endpoints, credentials)
    with connect(primary, credentials) as client:
        hello = command(client, primary, {"hello": 1})
        if hello.get("me") == host:
            raise OperationError(f"{host} is the primary: step it down before removing it")
        config = command(client, primary, {"replSetGetConfig": 1})["config"]
        if host not in member_hosts(config):
            return report
        new = plan_remove(config, host)
        _reconfig(client, primary, new)
        report.add(f"removed {host}")
        promoted = plan_promote(new)
        if promoted is not None:
            _reconfig(client, primary, promoted)
            gained = next(
                m["host"] for m, o in zip(promoted["members"], new["members"], strict=True) if m != o
            )
            report.add(f"{gained} votes now")
    return report


def step_down(primary: Endpoint, credentials: Credentials | None, *, seconds: int = 60) -> None:
    """Ask the primary to step down; it waits (up to 10 s) for an electable secondary to catch up,
    so no acknowledged majority write is rolled back."""
    with connect(primary, credentials) as client:
        command(client, primary, {"replSetStepDown": seconds, "secondaryCatchUpPeriodSecs": 10})


def set_slow_ms(endpoints: list[Endpoint], credentials: Credentials | None, slow_ms: int) -> list[str]:
    """``slowms`` is mongod-wide (the profiling *level* is per database): applied live on every
    member that answers. Returns the members that did not."""
    missed = []
    for endpoint in endpoints:
        try:
            with connect(endpoint, credentials) as client:
                command(client, endpoint, {"profile": -1, "slowms": slow_ms})
        except NotReady:
            missed.append(str(endpoint))
    return missed
