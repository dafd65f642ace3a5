"""Network addresses of members, shared by every runtime and every engine's live operations.

An endpoint of a deployment with TLS carries how to reach it (``ClientTls``): every client that
dials an ``Endpoint`` (the Redis clients, the raw RESP and replication streams) takes TLS from it,
so no call site has to be told; one that builds an endpoint from an address a member reported
(a sentinel's master, a master's replicas) gives it the ``tls`` of the endpoint it asked.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientTls:
    """The files a client uses: the CA that signed the members' certificates, and a certificate
    and key of that CA to present (members may require one; ours always present it)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """Verifies the member's certificate and its name (the host dialled: 127.0.0.1 or a pod's
        DNS name, both in the certificates the runtimes issue)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def wrap(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        return self.context().wrap_socket(sock, server_hostname=host)


@dataclass(frozen=True, order=True)
class Endpoint:
    """Where one member answers: a pod DNS name in Kubernetes, 127.0.0.1 on the local runtime."""

    host: str
    port: int
    # Not part of the identity: the same member whether or not this copy knows its TLS.
    tls: ClientTls | None = field(default=None, compare=False, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: str, tls: ClientTls | None = None) -> Endpoint:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {address!r} is not host:port")
        return cls(host=host, port=int(port), tls=tls)

    def with_address(self, address: str) -> Endpoint:
        """Another member of the same deployment (an address this one reported), reached as this one."""
        return Endpoint.parse(address, self.tls)

    def __str__(self) -> str:
        return self.address
