"""Certificates from ``middleware/tls.py`` on a real Redis 7 (Debian's, built with TLS): a server
on its TLS port only, clients that must present a certificate of the same CA.

What every engine's TLS must hold (issue 16), proven here for the certificates themselves: a
plaintext connection is refused, a certificate from another CA is refused either way, and a
rotated member certificate is taken by the running server without dropping its clients.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from middleware import tls
from tests.integration.harness import free_port, require_binary

pytestmark = pytest.mark.integration


def _write(directory: Path, name: str, pair: tls.KeyPair) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    key.chmod(0o600)
    return cert, key


class Pki:
    def __init__(self, directory: Path) -> None:
        now = datetime.now(UTC)
        self.directory = directory
        self.ca = tls.new_ca("moorage test CA", now=now)
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.server = _write(
            directory,
            "server",
            tls.issue(self.ca, "cache-0", now=now, dns_names=["localhost"], ip_addresses=["127.0.0.1"]),
        )
        self.client = _write(
            directory, "client", tls.issue(self.ca, "moorage", now=now, dns_names=["moorage"])
        )
        other = tls.new_ca("another CA", now=now)
        self.other_ca_file = directory / "other-ca.crt"
        self.other_ca_file.write_bytes(other.cert_pem)
        self.stranger = _write(
            directory, "stranger", tls.issue(other, "stranger", now=now, dns_names=["stranger"])
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def server(pki: Pki, tmp_path: Path) -> Iterator[int]:
    binary = require_binary("redis-server", "redis-server")
    port = free_port()
    cert, key = pki.server
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(pki.ca_file),
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            "--logfile",
            str(tmp_path / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not listen on its TLS port"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _client(port: int, ca_file: Path, cert: tuple[Path, Path] | None) -> redis.Redis:
    return redis.Redis(
        host="localhost",
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca_file),
        ssl_certfile=str(cert[0]) if cert else None,
        ssl_keyfile=str(cert[1]) if cert else None,
        ssl_check_hostname=True,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),  # a refusal is the answer, not something to retry
    )


def _served_serial(port: int, pki: Pki) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(pki.client[0]), str(pki.client[1]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_a_client_of_the_same_ca_is_served_and_everything_else_is_refused(server: int, pki: Pki) -> None:
    client = _client(server, pki.ca_file, pki.client)
    assert client.ping() is True
    client.close()

    plain = redis.Redis(host="127.0.0.1", port=server, socket_timeout=3, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # plaintext on the TLS port: the server never answers a RESP command

    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        _client(server, pki.other_ca_file, pki.client).ping()  # we do not trust the server's CA

    with pytest.raises(redis.ConnectionError):
        _client(server, pki.ca_file, pki.stranger).ping()  # the server does not trust ours

    with pytest.raises(redis.ConnectionError):
        _client(server, pki.ca_file, None).ping()  # no client certificate at all


def test_a_rotated_member_certificate_is_taken_without_dropping_clients(server: int, pki: Pki) -> None:
    client = _client(server, pki.ca_file, pki.client)
    client.set("before", "rotation")
    first = _served_serial(server, pki)

    renewed = tls.issue(
        pki.ca, "cache-0", now=datetime.now(UTC), dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    cert, key = _write(pki.directory, "server-renewed", renewed)
    # Both in one CONFIG SET: set alone, the new certificate does not match the old key and the
    # server refuses the change.
    client.execute_command("CONFIG", "SET", "tls-cert-file", str(cert), "tls-key-file", str(key))

    # The connection opened before the rotation goes on; new connections get the new certificate.
    assert client.get("before") == b"rotation"
    assert _served_serial(server, pki) == renewed.certificate.serial_number != first
    fresh = _client(server, pki.ca_file, pki.client)
    assert fresh.get("before") == b"rotation"
    fresh.close()
    client.close()
