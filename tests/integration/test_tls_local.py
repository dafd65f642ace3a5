"""spec.tls on the local runtime with real Redis 7 and Sentinel processes (Debian's, built with TLS),
through the `moorage` CLI as a user runs it.

What TLS must hold (issue 16): the members serve TLS only (a plaintext connection is refused, by
data nodes and sentinels alike), a certificate from another CA is refused, replication and the
sentinels' own traffic run over it (a switchover and a failover work), the exporters scrape over
it, and a renewed certificate is taken by the running members without dropping their clients.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from middleware import tls
from middleware.spec import load_middleware, resolve
from tests.integration.cli import Moorage, session
from tests.integration.harness import require_binary
from tests.integration.test_cli_redis import masters, wait_for, write_manifest

pytestmark = pytest.mark.integration


@pytest.fixture
def moorage(tmp_path: Path) -> Any:
    require_binary("redis-server", "redis-server")
    require_binary("redis-sentinel", "redis-sentinel")
    with session(tmp_path / "state") as cli:
        yield cli


def _tls_dir(moorage: Moorage, name: str) -> Path:
    return moorage.state_dir / "default" / name / "tls"


def _client(address: str, password: str, ca: Path, **extra: Any) -> redis.Redis:
    host, port = address.split(":")
    return redis.Redis(
        host=host,
        port=int(port),
        password=password,
        ssl=True,
        ssl_ca_certs=str(ca),
        ssl_cert_reqs="required",
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
        **extra,
    )


def _refuses_plaintext(address: str, password: str) -> bool:
    host, port = address.split(":")
    with redis.Redis(host=host, port=int(port), password=password, socket_timeout=5) as plain:
        try:
            plain.ping()
        except redis.ConnectionError:
            return True
    return False


def _served_serial(address: str, ca: Path) -> int:
    host, port = address.split(":")
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_a_sentinel_deployment_with_tls_serves_only_tls_and_fails_over(
    moorage: Moorage, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path / "s.yaml", "secure", engine="redis", topology="sentinel", replicas=2, tls={"enabled": True}
    )
    up = moorage.json("up", "-f", str(manifest))
    assert up["phase"] == "Ready", up
    assert sorted(m["role"] for m in up["members"]) == [
        "master",
        "replica",
        "sentinel",
        "sentinel",
        "sentinel",
    ]
    status = moorage.status("secure", "--reveal-secrets")
    password, ca = status["password"], _tls_dir(moorage, "secure") / "ca.crt"

    # Every member, data node or sentinel, refuses plaintext and answers over TLS.
    for member in status["members"]:
        assert _refuses_plaintext(member["address"], password), member
        with _client(member["address"], password, ca) as client:
            assert client.ping()

    # The master's writes reach the replica: replication runs over TLS too.
    master = masters(status)[0]
    with _client(master["address"], password, ca) as client:
        client.set("sealed", "yes")
        assert client.wait(1, 5000) == 1

    # A certificate of another CA is refused; so is a server check against another CA.
    other = tls.new_ca("another CA", now=datetime.now(UTC))
    stranger = tls.issue(other, "stranger", now=datetime.now(UTC), dns_names=["stranger"])
    (tmp_path / "stranger.crt").write_bytes(stranger.cert_pem)
    (tmp_path / "stranger.key").write_bytes(stranger.key_pem)
    (tmp_path / "other-ca.crt").write_bytes(other.cert_pem)
    with (
        _client(
            master["address"],
            password,
            ca,
            ssl_certfile=str(tmp_path / "stranger.crt"),
            ssl_keyfile=str(tmp_path / "stranger.key"),
        ) as presenting_stranger,
        pytest.raises(redis.ConnectionError),
    ):
        presenting_stranger.ping()
    with (
        _client(master["address"], password, tmp_path / "other-ca.crt") as trusting_other,
        pytest.raises(redis.ConnectionError),
    ):
        trusting_other.ping()

    # The exporters scrape their members over TLS.
    for member in status["members"]:
        with urllib.request.urlopen(f"http://{member['metrics']}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert "\nredis_up 1" in text, member

    # `connect` gives rediss:// URIs; the one for the master works with the deployment's CA.
    access = moorage.json("connect", "secure", "--reveal-secrets")
    assert access[0]["uri"].startswith("rediss://") and access[1]["uri"].startswith("rediss+sentinel://")
    with redis.Redis.from_url(access[0]["uri"], ssl_ca_certs=str(ca)) as client:
        assert client.get("sealed") == b"yes"

    # A switchover through the sentinels, over TLS: a new master with the data.
    switched = moorage.json("switchover", "secure")
    assert switched["phase"] == "Ready", switched
    assert masters(switched)[0]["name"] != master["name"], switched

    # The master's process killed: the sentinels (speaking TLS to each other and to the data nodes)
    # promote the other.
    current = masters(switched)[0]
    spec = resolve(load_middleware(json.loads(manifest.read_text())))
    moorage.runtime().kill_member(spec, current["name"])

    def promoted() -> dict[str, Any] | None:
        now = moorage.status("secure")
        healthy = [m for m in masters(now) if m["healthy"]]
        return now if healthy and healthy[0]["name"] != current["name"] else None

    after = wait_for("the sentinels to promote over TLS", promoted)
    with _client(masters(after)[0]["address"], password, ca) as client:
        assert client.get("sealed") == b"yes"


def test_a_certificate_due_for_renewal_is_renewed_by_up_and_taken_without_dropping_clients(
    moorage: Moorage, tmp_path: Path
) -> None:
    manifest = write_manifest(
        tmp_path / "s.yaml", "rotate", engine="redis", topology="sentinel", replicas=2, tls={"enabled": True}
    )
    assert moorage.json("up", "-f", str(manifest))["phase"] == "Ready"
    status = moorage.status("rotate", "--reveal-secrets")
    password, directory = status["password"], _tls_dir(moorage, "rotate")
    ca_file = directory / "ca.crt"
    master = masters(status)[0]
    sentinel = next(m for m in status["members"] if m["role"] == "sentinel")

    # The members' certificate replaced by one of the same CA with most of its life behind it (as
    # after two months of a 90-day certificate), and the members told to serve it (as a renewal
    # does); then `up` finds it due.
    ca = tls.KeyPair(ca_file.read_bytes(), (directory / "ca.key").read_bytes())
    old = tls.issue(
        ca,
        "rotate.default",
        now=datetime.now(UTC) - timedelta(days=70),
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    (directory / "tls.key").write_bytes(old.key_pem)
    (directory / "tls.crt").write_bytes(old.cert_pem)
    for member in status["members"]:
        with _client(member["address"], password, ca_file) as client:
            if member["role"] != "sentinel":
                client.execute_command("CONFIG", "SET", "tls-cert-file", str(directory / "tls.crt"))
    assert _served_serial(master["address"], ca_file) == old.certificate.serial_number

    connected = _client(master["address"], password, ca_file)
    connected.set("before", "1")
    again = moorage.json("up", "-f", str(manifest))
    assert again["phase"] == "Ready", again
    renewed = tls.KeyPair((directory / "tls.crt").read_bytes(), (directory / "tls.key").read_bytes())
    assert renewed.certificate.serial_number != old.certificate.serial_number
    assert not tls.renewal_due(renewed, now=datetime.now(UTC))

    # The data node serves the new certificate to new connections; the old connection still works.
    assert _served_serial(master["address"], ca_file) == renewed.certificate.serial_number
    assert connected.get("before") == b"1"
    connected.close()
    # The sentinel, restarted for it, serves the new one too, and the deployment is whole.
    assert _served_serial(sentinel["address"], ca_file) == renewed.certificate.serial_number
    final = moorage.status("rotate")
    assert final["phase"] == "Ready" and all(m["healthy"] for m in final["members"]), final
