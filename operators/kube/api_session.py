"""kopf's connection to the API server, with a bounded connection pool.

kopf's own session opens connections without limit (``TCPConnector(limit=0)``): every request that
finds no idle connection opens a new one. 500 Middlewares created at once made the operator hold
912 TLS connections to the API server, each with asyncio's 128 KiB TLS read buffer: 114 MiB of its
171 MiB peak (tracemalloc), and as many TLS handshakes for the API server to serve
(bench/operator_bench.py, docs/operator.md). Here the pool is bounded: requests beyond it wait for
a free connection instead of opening one.

The bound must leave room for kopf's watch streams, each of which holds a connection for minutes:
a pool as small as the watches would starve every other request. ``run`` (the ``moorage operator``
command) says how many namespaces are watched before kopf starts; with a namespace glob the count
changes as namespaces come and go, and the pool stays unbounded as in kopf.
"""

from __future__ import annotations

import dataclasses

import aiohttp
import kopf


def is_glob(pattern: str) -> bool:
    """A namespace pattern kopf matches against the namespaces it sees (``team-*``)."""
    return any(c in pattern for c in "*?[!")


@dataclasses.dataclass(frozen=True)
class WatchScope:
    """What the operator watches: every namespace (one stream per resource kind), a fixed list of
    namespaces (one stream per kind and namespace), or globs (not known in advance)."""

    clusterwide: bool
    namespaces: tuple[str, ...] = ()
    peering: bool = False

    def streams(self, kinds: int) -> int | None:
        """Watch streams kopf keeps open, or None when globs make the number open-ended."""
        if self.clusterwide:
            scopes = 1
        elif any(is_glob(n) for n in self.namespaces):
            return None
        else:
            scopes = len(self.namespaces)
        # A peering object is watched per scope too.
        return scopes * (kinds + (1 if self.peering else 0))


_scope: WatchScope | None = None


def set_watch_scope(scope: WatchScope | None) -> None:
    """Called before ``kopf.run``; without it (``kopf run -m operators.main``) the pool is kopf's."""
    global _scope
    _scope = scope


def connection_limit(scope: WatchScope | None, kinds: int, request_connections: int) -> int:
    """The pool size for ``aiohttp.TCPConnector(limit=...)``: the watch streams plus
    ``request_connections`` for everything else; 0 (no limit) when the watches are not known."""
    streams = scope.streams(kinds) if scope is not None else None
    if streams is None:
        return 0
    return streams + request_connections


def limited_session(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """The session kopf would build from ``info`` (TLS context, Authorization header, proxy), with
    ``limit`` connections at most. Must run in kopf's event loop (an async login handler)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def watched_scope() -> WatchScope | None:
    return _scope
