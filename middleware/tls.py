"""Certificates for members: a CA, member certificates it issues, their renewal, and the Secret
layout they are kept in.

The layout is cert-manager's (``tls.crt``, ``tls.key``, ``ca.crt`` in one Secret), so a user's own
Secret written by cert-manager and one generated here read the same way. Keys are ECDSA P-256:
small, fast handshakes, and accepted by every engine's TLS library (OpenSSL for Redis, PostgreSQL
and MongoDB, the JDK for ZooKeeper). Member certificates carry both server and client usage:
members are each other's clients (replication, the cluster bus, quorum traffic).

Pure functions over PEM bytes with the time passed in: no I/O, no clock, so renewal decisions are
testable at any moment.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from middleware.errors import SpecError

# cert-manager's keys (kubernetes.io/tls plus the CA it adds).
CERT_KEY = "tls.crt"
PRIVATE_KEY_KEY = "tls.key"
CA_KEY = "ca.crt"

CA_VALIDITY = timedelta(days=3650)
MEMBER_VALIDITY = timedelta(days=90)
# Renewed once less than this share of its lifetime is left (cert-manager renews at 2/3 by default).
RENEW_WHEN_LEFT = 1 / 3
# Issued a little in the past: a member whose clock is slightly behind must not see "not yet valid".
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class TlsMaterial:
    """What a member needs: its certificate and key, and the CA its peers' certificates chain to."""

    member: KeyPair
    ca_pem: bytes

    def secret_data(self) -> dict[str, bytes]:
        return {CERT_KEY: self.member.cert_pem, PRIVATE_KEY_KEY: self.member.key_pem, CA_KEY: self.ca_pem}


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a member's ECDSA key signs handshakes and agrees keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signs_certificates,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(common_name: str, *, now: datetime, valid_for: timedelta = CA_VALIDITY) -> KeyPair:
    """A self-signed CA that may only sign end-entity certificates (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    now: datetime,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    valid_for: timedelta = MEMBER_VALIDITY,
) -> KeyPair:
    """A member certificate signed by ``ca``, for these names (server and client usage)."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]
    if not names:
        raise ValueError("a member certificate needs at least one DNS name or IP address")
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key")
    key = _new_key()
    not_after = min(now + valid_for, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def renewal_due(pair: KeyPair, *, now: datetime, left: float = RENEW_WHEN_LEFT) -> bool:
    """True once less than ``left`` of the certificate's lifetime remains (or it has expired)."""
    cert = pair.certificate
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * left


def names_of(pair: KeyPair) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = pair.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def from_secret_data(data: Mapping[str, bytes], *, where: str, now: datetime) -> TlsMaterial:
    """Read and check a Secret in cert-manager's layout; errors name ``where`` (e.g.
    ``spec.tls.secretName``), the key at fault and why, and never any key material."""
    missing = [k for k in (CERT_KEY, PRIVATE_KEY_KEY, CA_KEY) if not data.get(k)]
    if missing:
        raise SpecError(
            where, f"the Secret has no {', '.join(missing)} (cert-manager's layout: tls.crt, tls.key, ca.crt)"
        )
    try:
        cert = x509.load_pem_x509_certificate(data[CERT_KEY])
    except ValueError:
        raise SpecError(where, f"{CERT_KEY} is not a PEM certificate") from None
    try:
        ca_certs = x509.load_pem_x509_certificates(data[CA_KEY])
    except ValueError:
        raise SpecError(where, f"{CA_KEY} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(data[PRIVATE_KEY_KEY], password=None)
    except (ValueError, TypeError):
        raise SpecError(where, f"{PRIVATE_KEY_KEY} is not an unencrypted PEM private key") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise SpecError(where, f"{PRIVATE_KEY_KEY} is not the key of the certificate in {CERT_KEY}")
    if not any(_issued_by(cert, ca) for ca in ca_certs):
        raise SpecError(where, f"the certificate in {CERT_KEY} is not signed by a CA in {CA_KEY}")
    if cert.not_valid_after_utc <= now:
        raise SpecError(
            where, f"the certificate in {CERT_KEY} expired at {cert.not_valid_after_utc.isoformat()}"
        )
    return TlsMaterial(KeyPair(data[CERT_KEY], data[PRIVATE_KEY_KEY]), data[CA_KEY])


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
