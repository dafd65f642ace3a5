"""MongoDB replica set command conversations against mockupdb: a SCRIPTED MongoDB wire-protocol peer,
NOT a real mongod.

No mongod can be installed on these machines (see docs/mongodb.md, "Testing gap"). mockupdb speaks
the wire protocol on 127.0.0.1 and hands every command pymongo sends to the test, which asserts the
exact document and writes the reply a mongod would give. So these tests prove what Moorage *sends*
and how it *reacts* to replies (including errors); they prove nothing about what a real mongod then
does (elections, initial sync, majority commit).

Not marked ``integration``: they need no engine binary and finish in seconds. They live here because
they run a network peer and pymongo's real client stack, not pure functions.

Every wait is bounded: ``receives`` with a timeout, each operation run on a thread (``mockupdb.go``)
and joined with a timeout. Authentication is not scripted (a SCRAM conversation is not worth faking):
membership calls run without credentials here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mockupdb import MockupDB

from middleware.endpoints import Endpoint
from middleware.engines.mongodb import replicaset
from middleware.engines.mongodb.replicaset import Credentials
from middleware.errors import OperationError

SET = "orders"
HOSTS = [f"orders-{i}.orders-headless.shop.svc.cluster.local:27017" for i in range(3)]
RECEIVE_TIMEOUT = 5.0
RESULT_TIMEOUT = 15.0


@pytest.fixture
def peer() -> Iterator[MockupDB]:
    """One scripted wire-protocol peer (pymongo 4.20 needs max_wire_version 21 to talk to it)."""
    server = MockupDB(auto_ismaster=True, max_wire_version=21)
    server.run()
    # pymongo ends its implicit sessions when a client closes: not part of any conversation.
    server.autoresponds("endSessions", {"ok": 1})
    try:
        yield server
    finally:
        server.stop()


def endpoint(server: MockupDB) -> Endpoint:
    return Endpoint("localhost", server.port)


def expect(server: MockupDB, name: str) -> Any:
    """The next command, which must be ``name``; returns the request to reply to."""
    request = server.receives(timeout=RECEIVE_TIMEOUT)
    got = next(iter(request.doc))
    assert got == name, f"expected {name}, got {got}: {dict(request.doc)}"
    assert request.doc["$db"] == "admin"
    return request


def body(request: Any) -> dict[str, Any]:
    """The command document without the wire-protocol fields pymongo adds."""
    return {k: v for k, v in request.doc.items() if not k.startswith("$") and k != "lsid"}


def nothing_more(server: MockupDB) -> None:
    assert not server.got(timeout=0.3), "an unexpected command was sent"


def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """Start ``fn`` on a daemon thread (it blocks on the peer's replies); the returned callable joins
    it within RESULT_TIMEOUT and returns its result or re-raises its exception as it was (mockupdb's
    ``go`` rebuilds exceptions from their message, which loses the server's error code)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(RESULT_TIMEOUT)
        assert not thread.is_alive(), f"{fn.__name__} did not finish within {RESULT_TIMEOUT}s"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return result


def config(hosts: list[str], version: int = 3, **votes: Any) -> dict[str, Any]:
    members: list[dict[str, Any]] = []
    for i, host in enumerate(hosts):
        member: dict[str, Any] = {"_id": i, "host": host, "arbiterOnly": False, "hidden": False}
        member.update({"votes": 1, "priority": 1} if i < 7 else {"votes": 0, "priority": 0})
        members.append(member)
    return {"_id": SET, "version": version, "term": 5, "protocolVersion": 1, "members": members, **votes}


def uninitialized_hello() -> dict[str, Any]:
    return {"isWritablePrimary": False, "secondary": False, "isreplicaset": True, "maxWireVersion": 21}


def primary_hello(hosts: list[str], me: str) -> dict[str, Any]:
    return {
        "isWritablePrimary": True,
        "secondary": False,
        "setName": SET,
        "hosts": hosts,
        "primary": me,
        "me": me,
        "maxWireVersion": 21,
    }


def status(members: dict[str, str]) -> dict[str, Any]:
    return {
        "set": SET,
        "myState": 1,
        "members": [
            {"_id": i, "name": host, "health": 1, "stateStr": state}
            for i, (host, state) in enumerate(members.items())
        ],
    }


# --- initiate ----------------------------------------------------------------------------------


def test_mockupdb_fresh_initiate_sends_the_exact_config_with_stable_host_names(peer: MockupDB) -> None:
    result = run(replicaset.initiate, SET, HOSTS, endpoint(peer))
    expect(peer, "hello").ok(uninitialized_hello())
    expect(peer, "replSetGetStatus").command_err(
        code=94, errmsg="no replset config has been received", codeName="NotYetInitialized"
    )
    initiate = expect(peer, "replSetInitiate")
    assert body(initiate) == {
        "replSetInitiate": {
            "_id": SET,
            "members": [{"_id": i, "host": host} for i, host in enumerate(HOSTS)],
        }
    }
    initiate.ok()
    report = result()
    assert report.changed and report.actions == [f"initiated replica set {SET} with 3 members"]
    nothing_more(peer)


def test_mockupdb_initiate_with_more_than_seven_members_gives_the_rest_no_vote(peer: MockupDB) -> None:
    hosts = [f"m-{i}.h:27017" for i in range(9)]
    result = run(replicaset.initiate, SET, hosts, endpoint(peer))
    expect(peer, "hello").ok(uninitialized_hello())
    expect(peer, "replSetGetStatus").command_err(code=94, errmsg="no config", codeName="NotYetInitialized")
    initiate = expect(peer, "replSetInitiate")
    members = body(initiate)["replSetInitiate"]["members"]
    assert [m.get("votes", 1) for m in members] == [1] * 7 + [0, 0]
    assert [m.get("priority", 1) for m in members] == [1] * 7 + [0, 0]
    initiate.ok()
    result()


def test_mockupdb_already_initialized_with_the_same_members_sends_no_initiate(peer: MockupDB) -> None:
    result = run(replicaset.initiate, SET, HOSTS, endpoint(peer))
    expect(peer, "hello").ok(primary_hello(list(reversed(HOSTS)), HOSTS[0]))
    report = result()
    assert not report.changed and report.actions == []
    nothing_more(peer)


@pytest.mark.parametrize(
    "hello",
    [
        {"setName": "someone-else", "hosts": HOSTS},
        {"setName": SET, "hosts": HOSTS[:2]},
        {"setName": SET, "hosts": HOSTS[:2], "passives": ["stranger:27017", HOSTS[2]]},
    ],
    ids=["other-set-name", "fewer-members", "other-members"],
)
def test_mockupdb_conflicting_existing_config_is_refused_and_nothing_sent(
    peer: MockupDB, hello: dict[str, Any]
) -> None:
    result = run(replicaset.initiate, SET, HOSTS, endpoint(peer))
    expect(peer, "hello").ok({"isWritablePrimary": True, **hello})
    with pytest.raises(OperationError, match=r"already belongs to replica set .* refusing to initiate"):
        result()
    nothing_more(peer)


def test_mockupdb_config_seen_only_by_replsetgetstatus_is_still_compared(peer: MockupDB) -> None:
    # A member without a set name in hello (e.g. REMOVED) but with a config: still not ours to reset.
    result = run(replicaset.initiate, SET, HOSTS, endpoint(peer))
    expect(peer, "hello").ok(uninitialized_hello())
    expect(peer, "replSetGetStatus").ok(status({"x-0:27017": "REMOVED"}) | {"set": "legacy"})
    with pytest.raises(OperationError, match="'legacy'"):
        result()
    nothing_more(peer)


def test_mockupdb_unauthorized_status_surfaces_and_no_initiate_is_sent(peer: MockupDB) -> None:
    # Not over localhost, with users: the server refuses; Moorage must not guess and initiate.
    result = run(replicaset.initiate, SET, HOSTS, endpoint(peer))
    expect(peer, "hello").ok(uninitialized_hello())
    expect(peer, "replSetGetStatus").command_err(
        code=13, errmsg="command replSetGetStatus requires authentication", codeName="Unauthorized"
    )
    with pytest.raises(OperationError, match=r"requires authentication \(Unauthorized 13\)"):
        result()
    nothing_more(peer)


# --- the admin user ------------------------------------------------------------------------------


def test_mockupdb_admin_user_created_once_and_existing_user_is_a_no_op(peer: MockupDB) -> None:
    credentials = Credentials("admin", "s3cret")
    result = run(replicaset.ensure_admin_user, endpoint(peer), credentials)
    create = expect(peer, "createUser")
    assert body(create) == {
        "createUser": "admin",
        "pwd": "s3cret",
        "roles": [{"role": "root", "db": "admin"}],
    }
    create.ok()
    assert result().actions == ["created user admin"]

    again = run(replicaset.ensure_admin_user, endpoint(peer), credentials)
    expect(peer, "createUser").command_err(
        code=51003, errmsg='User "admin@admin" already exists', codeName="Location51003"
    )
    assert not again().changed
    assert "s3cret" not in repr(credentials)


# --- membership changes --------------------------------------------------------------------------


def test_mockupdb_add_member_bumps_version_and_adds_exactly_one_member(peer: MockupDB) -> None:
    new_host = "orders-3.orders-headless.shop.svc.cluster.local:27017"
    current = config(HOSTS, version=3)
    result = run(replicaset.add_member, [endpoint(peer)], new_host, None, timeout=20)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "replSetGetConfig").ok(config=current)
    reconfig = expect(peer, "replSetReconfig")
    sent = body(reconfig)["replSetReconfig"]
    assert sent["version"] == 4
    assert "term" not in sent, "the term is the primary's to set"
    assert sent["members"][:3] == current["members"]
    assert sent["members"][3:] == [{"_id": 3, "host": new_host}]
    assert {k: v for k, v in sent.items() if k not in ("version", "members")} == {
        "_id": SET,
        "protocolVersion": 1,
    }
    reconfig.ok()
    # Waits for the joiner to finish its initial sync.
    expect(peer, "replSetGetStatus").ok(status({**dict.fromkeys(HOSTS, "SECONDARY"), new_host: "STARTUP2"}))
    expect(peer, "replSetGetStatus").ok(status({**dict.fromkeys(HOSTS, "SECONDARY"), new_host: "SECONDARY"}))
    report = result()
    assert report.actions == [f"added {new_host} as member 3"]
    nothing_more(peer)


def test_mockupdb_add_member_already_in_config_sends_no_reconfig(peer: MockupDB) -> None:
    result = run(replicaset.add_member, [endpoint(peer)], HOSTS[2], None, timeout=10)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "replSetGetConfig").ok(config=config(HOSTS))
    expect(peer, "replSetGetStatus").ok(status(dict.fromkeys(HOSTS, "SECONDARY")))
    assert not result().changed
    nothing_more(peer)


def test_mockupdb_eighth_member_joins_without_vote_or_priority(peer: MockupDB) -> None:
    hosts = [f"m-{i}.h:27017" for i in range(7)]
    result = run(replicaset.add_member, [endpoint(peer)], "m-7.h:27017", None, timeout=10)
    expect(peer, "hello").ok(primary_hello(hosts, hosts[0]))
    expect(peer, "replSetGetConfig").ok(config=config(hosts, version=12))
    reconfig = expect(peer, "replSetReconfig")
    sent = body(reconfig)["replSetReconfig"]
    assert sent["version"] == 13
    assert sent["members"][-1] == {"_id": 7, "host": "m-7.h:27017", "votes": 0, "priority": 0}
    assert sum(1 for m in sent["members"] if m.get("votes", 1)) == 7
    reconfig.ok()
    expect(peer, "replSetGetStatus").ok(status(dict.fromkeys([*hosts, "m-7.h:27017"], "SECONDARY")))
    assert "non-voting" in result().actions[0]


def test_mockupdb_add_member_times_out_with_the_last_state(peer: MockupDB) -> None:
    new_host = "orders-3.h:27017"
    result = run(replicaset.add_member, [endpoint(peer)], new_host, None, timeout=1)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "replSetGetConfig").ok(config=config(HOSTS))
    expect(peer, "replSetReconfig").ok()
    peer.autoresponds("replSetGetStatus", status({**dict.fromkeys(HOSTS, "SECONDARY"), new_host: "STARTUP2"}))
    with pytest.raises(Exception, match=r"waiting for orders-3\.h:27017 to be SECONDARY .*state STARTUP2"):
        result()


def test_mockupdb_remove_member_bumps_version_and_removes_exactly_one(peer: MockupDB) -> None:
    result = run(replicaset.remove_member, [endpoint(peer)], HOSTS[2], None)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    current = config(HOSTS, version=8)
    expect(peer, "replSetGetConfig").ok(config=current)
    reconfig = expect(peer, "replSetReconfig")
    sent = body(reconfig)["replSetReconfig"]
    assert sent["version"] == 9
    assert sent["members"] == current["members"][:2]
    reconfig.ok()
    assert result().actions == [f"removed {HOSTS[2]}"]
    nothing_more(peer)


def test_mockupdb_removing_a_voter_hands_the_vote_to_a_non_voter(peer: MockupDB) -> None:
    hosts = [f"m-{i}.h:27017" for i in range(8)]
    result = run(replicaset.remove_member, [endpoint(peer)], "m-3.h:27017", None)
    expect(peer, "hello").ok(primary_hello(hosts, hosts[0]))
    expect(peer, "hello").ok(primary_hello(hosts, hosts[0]))
    expect(peer, "replSetGetConfig").ok(config=config(hosts, version=20))
    first = expect(peer, "replSetReconfig")
    removed = body(first)["replSetReconfig"]
    assert removed["version"] == 21 and "m-3.h:27017" not in [m["host"] for m in removed["members"]]
    assert sum(1 for m in removed["members"] if m["votes"]) == 6
    first.ok()
    second = expect(peer, "replSetReconfig")
    promoted = body(second)["replSetReconfig"]
    assert promoted["version"] == 22
    assert promoted["members"][-1] == {**removed["members"][-1], "votes": 1, "priority": 1}
    assert promoted["members"][:-1] == removed["members"][:-1], "one voter change per reconfig"
    second.ok()
    assert result().actions == ["removed m-3.h:27017", "m-7.h:27017 votes now"]


def test_mockupdb_the_primary_is_never_removed(peer: MockupDB) -> None:
    result = run(replicaset.remove_member, [endpoint(peer)], HOSTS[0], None)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    with pytest.raises(OperationError, match="is the primary: step it down"):
        result()
    nothing_more(peer)


def test_mockupdb_reconfig_error_surfaces_with_the_server_message(peer: MockupDB) -> None:
    message = (
        "New config is rejected :: caused by :: replSetReconfig should only be run on a writable PRIMARY"
    )
    result = run(replicaset.add_member, [endpoint(peer)], "orders-3.h:27017", None, timeout=5)
    expect(peer, "hello").ok(primary_hello(HOSTS, HOSTS[0]))
    expect(peer, "replSetGetConfig").ok(config=config(HOSTS))
    expect(peer, "replSetReconfig").command_err(
        code=103, errmsg=message, codeName="NewReplicaSetConfigurationIncompatible"
    )
    with pytest.raises(OperationError) as caught:
        result()
    error = caught.value
    assert isinstance(error, replicaset.ServerError)
    assert error.code == 103 and error.code_name == "NewReplicaSetConfigurationIncompatible"
    assert message in str(error) and str(error).startswith("replSetReconfig on localhost:")
    # Nothing else after a refused reconfig: no waiting for a member that was never added.
    nothing_more(peer)


def test_mockupdb_no_primary_is_not_ready(peer: MockupDB) -> None:
    result = run(replicaset.add_member, [endpoint(peer)], "orders-3.h:27017", None, timeout=5)
    expect(peer, "hello").ok(
        {**primary_hello(HOSTS, HOSTS[1]), "isWritablePrimary": False, "secondary": True}
    )
    with pytest.raises(Exception, match="no primary among"):
        result()
    nothing_more(peer)
