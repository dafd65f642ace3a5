"""middleware/tls.py: the CA, member certificates, renewal and the Secret layout, checked with the
real ``cryptography`` and a real TLS handshake through Python's ``ssl`` (OpenSSL) on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from middleware import tls
from middleware.errors import SpecError

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> tls.KeyPair:
    return tls.new_ca("moorage test CA", now=NOW)


def member(ca: tls.KeyPair, **kw: object) -> tls.KeyPair:
    return tls.issue(
        ca,
        "cache-0",
        now=NOW,
        dns_names=["cache-0.cache-headless", "localhost"],
        ip_addresses=["127.0.0.1"],
        **kw,
    )  # type: ignore[arg-type]


def test_a_member_certificate_names_its_hosts_and_serves_both_ends(ca: tls.KeyPair) -> None:
    pair = member(ca)
    cert = pair.certificate
    assert tls.names_of(pair) == (["cache-0.cache-headless", "localhost"], ["127.0.0.1"])
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc == NOW + tls.MEMBER_VALIDITY
    assert cert.not_valid_before_utc == NOW - tls.BACKDATE
    cert.verify_directly_issued_by(ca.certificate)


def test_a_member_certificate_never_outlives_its_ca() -> None:
    short_ca = tls.new_ca("short", now=NOW, valid_for=timedelta(days=10))
    assert member(short_ca).not_after == short_ca.not_after


def test_a_certificate_without_any_name_is_refused(ca: tls.KeyPair) -> None:
    with pytest.raises(ValueError, match="at least one DNS name or IP address"):
        tls.issue(ca, "nameless", now=NOW)


def test_renewal_is_due_once_a_third_of_the_lifetime_is_left(ca: tls.KeyPair) -> None:
    pair = member(ca)  # 90 days (+5 minutes back-dated): due 30 days before its end
    end = pair.not_after
    assert not tls.renewal_due(pair, now=NOW)
    assert not tls.renewal_due(pair, now=end - timedelta(days=31))
    assert tls.renewal_due(pair, now=end - timedelta(days=29))
    assert tls.renewal_due(pair, now=end + timedelta(seconds=1))


def test_the_secret_layout_round_trips_and_each_fault_is_named(ca: tls.KeyPair) -> None:
    pair = member(ca)
    data = tls.TlsMaterial(pair, ca.cert_pem).secret_data()
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    read = tls.from_secret_data(data, where="spec.tls.secretName", now=NOW)
    assert read.member == pair and read.ca_pem == ca.cert_pem

    def fault(change: dict[str, bytes], match: str, now: datetime = NOW) -> None:
        with pytest.raises(SpecError, match=match) as raised:
            tls.from_secret_data({**data, **change}, where="spec.tls.secretName", now=now)
        assert raised.value.field == "spec.tls.secretName"
        assert b"PRIVATE" not in str(raised.value).encode()

    fault({"ca.crt": b""}, "has no ca.crt")
    fault({"tls.crt": b"not pem"}, "tls.crt is not a PEM certificate")
    fault({"tls.key": b"not pem"}, "tls.key is not an unencrypted PEM private key")
    fault({"tls.key": member(ca).key_pem}, "tls.key is not the key of the certificate")
    fault({"ca.crt": tls.new_ca("another", now=NOW).cert_pem}, "not signed by a CA in ca.crt")
    fault({}, "expired at", now=pair.not_after + timedelta(seconds=1))


def test_a_ca_bundle_with_the_issuer_among_others_is_accepted(ca: tls.KeyPair) -> None:
    pair = member(ca)
    bundle = tls.new_ca("older", now=NOW).cert_pem + ca.cert_pem
    data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": bundle}
    assert tls.from_secret_data(data, where="spec.tls.secretName", now=NOW).ca_pem == bundle


def _handshake(
    tmp_path: Path, server: tls.KeyPair, trusted_ca: bytes, client: tls.KeyPair | None, server_ca: bytes
) -> str | None:
    """A real TLS handshake on loopback, both ends verifying: None when it succeeds, else the
    error the client saw."""
    for name, data in (
        ("s.crt", server.cert_pem),
        ("s.key", server.key_pem),
        ("trusted.pem", trusted_ca),
        ("server-ca.pem", server_ca),
    ):
        (tmp_path / name).write_bytes(data)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "server-ca.pem"))
    server_ctx.load_cert_chain(str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "trusted.pem"))
    if client is not None:
        (tmp_path / "c.crt").write_bytes(client.cert_pem)
        (tmp_path / "c.key").write_bytes(client.key_pem)
        client_ctx.load_cert_chain(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            got = conn.recv(2)
            return None if got == b"ok" else f"read {got!r}"
    except (ssl.SSLError, OSError) as error:
        return str(error)
    finally:
        thread.join(5)
        listener.close()


def test_openssl_accepts_the_pair_and_refuses_another_ca(tmp_path: Path) -> None:
    other = tls.new_ca("another", now=datetime.now(UTC))
    now = datetime.now(UTC)
    real_ca = tls.new_ca("moorage CA", now=now)
    server = tls.issue(real_ca, "cache-0", now=now, dns_names=["localhost"])
    client = tls.issue(real_ca, "moorage", now=now, dns_names=["moorage-client"])
    assert _handshake(tmp_path, server, real_ca.cert_pem, client, real_ca.cert_pem) is None
    # The client trusts another CA: the server's certificate is refused.
    refused = _handshake(tmp_path, server, other.cert_pem, client, real_ca.cert_pem)
    assert refused is not None and "certificate verify failed" in refused, refused
    # The client's certificate comes from another CA: the server refuses it.
    stranger = tls.issue(other, "stranger", now=now, dns_names=["stranger"])
    assert _handshake(tmp_path, server, real_ca.cert_pem, stranger, real_ca.cert_pem) is not None
