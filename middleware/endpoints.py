"""Network addresses of members, shared by every runtime and every engine's live operations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Endpoint:
    """Where one member answers: a pod DNS name in Kubernetes, 127.0.0.1 on the local runtime."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: str) -> Endpoint:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {address!r} is not host:port")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        return self.address
