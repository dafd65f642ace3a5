"""A bare RESP2 pipeline over one socket, for the bulk paths of backup and restore.

redis-py spends ~20 µs of Python per command packing arguments and dispatching replies; moving a
dataset key by key with DUMP/PTTL/RESTORE is then bound by the client, not by Redis (a profile of a
200k-key restore: 80% in redis-py's pack/parse). Here commands are packed with one join per batch
and replies parsed by hiredis' C reader. Only what the bulk copy needs: AUTH, SELECT, pipelines.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import hiredis

from middleware.endpoints import Endpoint

Command = Sequence[bytes]
READ_SIZE = 1 << 20


class RespError(Exception):
    """The server answered a command with an error reply (``reply`` is its text)."""


def pack(commands: Sequence[Command]) -> bytes:
    """Commands as one RESP request buffer (arrays of bulk strings)."""
    parts: list[bytes] = []
    append = parts.append  # the hot loop of a bulk copy: a local name saves an attribute lookup per part
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
    return b"".join(parts)


class RespConnection:
    """One connection (TCP endpoint or unix socket path); not thread-safe, like a socket."""

    def __init__(
        self,
        address: Endpoint | str,
        password: str | None = None,
        *,
        db: int = 0,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if isinstance(address, Endpoint):
            self.where = address.address
            self.sock = socket.create_connection((address.host, address.port), timeout=connect_timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if address.tls is not None:
                try:
                    self.sock = address.tls.wrap(self.sock, address.host)
                except BaseException:
                    self.sock.close()
                    raise
        else:
            self.where = address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(connect_timeout)
            self.sock.connect(address)
        self.sock.settimeout(timeout)
        self.reader = hiredis.Reader()
        try:
            setup: list[Command] = []
            if password:
                setup.append((b"AUTH", password.encode()))
            if db:
                setup.append((b"SELECT", str(db).encode()))
            if setup:
                # The password never reaches an exception: only the server's error text does.
                for reply in self.pipeline(setup, raise_on_error=False):
                    if isinstance(reply, hiredis.ReplyError):
                        raise RespError(f"{self.where}: {reply}")
        except BaseException:
            self.sock.close()
            raise

    def pipeline(self, commands: Sequence[Command], *, raise_on_error: bool = True) -> list[Any]:
        """Send every command, then read one reply per command. Error replies raise ``RespError``
        (the first one) unless ``raise_on_error`` is False, when they are returned in place as
        ``hiredis.ReplyError``."""
        self.sock.sendall(pack(commands))
        replies: list[Any] = []
        want = len(commands)
        while len(replies) < want:
            reply = self.reader.gets()
            if reply is False:
                chunk = self.sock.recv(READ_SIZE)
                if not chunk:
                    raise ConnectionError(f"{self.where} closed the connection")
                self.reader.feed(chunk)
                continue
            replies.append(reply)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise RespError(f"{self.where}: {reply}")
        return replies

    def send(self, payload: bytes) -> None:
        """Write an already packed request (``pack`` or a caller's template); read its replies with
        ``receive``. Splitting the two lets a caller keep several servers busy at once."""
        self.sock.sendall(payload)

    def receive(self, count: int) -> list[Any]:
        """Read ``count`` replies; error replies come back in place as ``hiredis.ReplyError``."""
        replies: list[Any] = []
        append = replies.append  # the hot loop: one gets() per reply, so local names matter
        gets = self.reader.gets
        while count:
            reply = gets()
            if reply is False:
                chunk = self.sock.recv(READ_SIZE)
                if not chunk:
                    raise ConnectionError(f"{self.where} closed the connection")
                self.reader.feed(chunk)
                continue
            append(reply)
            count -= 1
        return replies

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_connection(
    endpoint: Endpoint,
    password: str | None = None,
    *,
    username: str | None = None,
    db: int = 0,
    timeout: float = 120.0,
) -> RespConnection:
    """A ``RespConnection`` that may also authenticate as an ACL user (``AUTH username password``)."""
    if not username:
        return RespConnection(endpoint, password, db=db, timeout=timeout)
    conn = RespConnection(endpoint, timeout=timeout)
    try:
        setup: list[Command] = [(b"AUTH", username.encode(), (password or "").encode())]
        if db:
            setup.append((b"SELECT", str(db).encode()))
        # The password never reaches an exception: only the server's error text does.
        for reply in conn.pipeline(setup, raise_on_error=False):
            if isinstance(reply, hiredis.ReplyError):
                raise RespError(f"{conn.where}: {reply}")
    except BaseException:
        conn.close()
        raise
    return conn
