"""A TCP proxy on 127.0.0.1 that can freeze the connections it carries, for sync fault tests.

``freeze()`` stops moving bytes on every connection open at that moment, in both directions, without
closing anything: the peers see a silent link (a blackholed network path, a hung middlebox), which
is what redis-shake's silent stall looks like from outside (upstream #956: its status port answers,
its offsets stop). Connections opened afterwards flow normally, so a restarted redis-shake, or the
supervisor's own probes, get through. ``thaw()`` lets the frozen ones move again.

``cut()`` is a cut network path instead: every connection open at that moment is closed and new ones
are closed as soon as they are accepted, until ``mend()``.

``drop_reply_after(marker)`` is a request carried out whose reply never arrives: the first chunk a
client sends that holds ``marker`` is delivered upstream, and that connection is closed before
anything comes back (once; ``replies_dropped`` counts it).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from middleware.endpoints import Endpoint

HOST = "127.0.0.1"


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()


class FreezingProxy:
    def __init__(self, upstream: Endpoint) -> None:
        self.upstream = upstream
        self._server = socket.create_server((HOST, 0))
        self.endpoint = Endpoint(HOST, self._server.getsockname()[1])
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._cut = threading.Event()
        self._drop_marker: bytes | None = None
        self.replies_dropped = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.endpoint}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((self.upstream.host, self.upstream.port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pump, args=(link,), daemon=True).start()

    def _pump(self, link: _Link) -> None:
        pairs = {link.client: link.upstream, link.upstream: link.client}
        try:
            while not link.closed.is_set():
                if link.frozen.is_set():
                    link.closed.wait(0.05)
                    continue
                ready, _, _ = select.select(list(pairs), [], [], 0.05)
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    pairs[sock].sendall(data)
                    if sock is link.client and self._take_drop(data):
                        return
        except OSError:
            return
        finally:
            link.close()

    def drop_reply_after(self, marker: bytes) -> None:
        self._drop_marker = marker

    def _take_drop(self, data: bytes) -> bool:
        with self._lock:
            if self._drop_marker is None or self._drop_marker not in data:
                return False
            self._drop_marker = None
            self.replies_dropped += 1
            return True

    def freeze(self) -> int:
        """Freeze every connection open now; how many."""
        with self._lock:
            live = [link for link in self._links if not link.closed.is_set()]
        for link in live:
            link.frozen.set()
        return len(live)

    def thaw(self) -> None:
        with self._lock:
            for link in self._links:
                link.frozen.clear()

    def cut(self) -> int:
        """Cut the path until ``mend()``: closes every connection open now; how many."""
        self._cut.set()
        with self._lock:
            live = [link for link in self._links if not link.closed.is_set()]
        for link in live:
            link.close()
        return len(live)

    def mend(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for link in self._links:
                link.close()
