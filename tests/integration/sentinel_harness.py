"""Redis Sentinel deployments on 127.0.0.1 for the Sentinel integration tests, over ``harness``.

Data nodes and sentinels are ``harness.RedisProcess`` instances: each has a fresh directory whose
config file survives restarts (sentinel rewrites its own), and is stopped by its own PID.
``SentinelHarness.stop_all`` is meant for a fixture finalizer; harness's atexit hook catches what an
interrupted run leaves behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from middleware.endpoints import Endpoint
from tests.integration.harness import RedisNodes, RedisProcess, require_binary

# Sentinel data nodes keep no AOF: a restarted node comes back with the RDB it last received, if any.
DATA_NODE = {"appendonly": "no"}


@dataclass
class Deployment:
    master: RedisProcess
    replicas: list[RedisProcess]
    sentinels: list[RedisProcess]

    @property
    def data(self) -> list[RedisProcess]:
        return [self.master, *self.replicas]

    @property
    def data_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.data]

    @property
    def replica_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.replicas]

    @property
    def sentinel_endpoints(self) -> list[Endpoint]:
        return [p.endpoint for p in self.sentinels]

    def by_endpoint(self, endpoint: Endpoint) -> RedisProcess:
        return next(p for p in [*self.data, *self.sentinels] if p.endpoint == endpoint)


class SentinelHarness(RedisNodes):
    """redis-server data nodes and redis-sentinel processes sharing one password, all stopped together."""

    def __init__(self, root: Path, password: str | None) -> None:
        require_binary("redis-server", "redis-server redis-sentinel")
        self.sentinel_binary = require_binary("redis-sentinel", "redis-sentinel")
        super().__init__(root, password=password)

    def data_node(self, name: str, *, config_file: bool = True) -> RedisProcess:
        return self.add(name, config_file=config_file, extra=DATA_NODE)

    def sentinel(self, name: str) -> RedisProcess:
        return self.add(name, binary=self.sentinel_binary, sentinel=True)

    def deployment(self, replicas: int = 2, sentinels: int = 3) -> Deployment:
        """Unwired processes: every data node starts as an empty master, sentinels monitor nothing."""
        return Deployment(
            master=self.data_node("data-0"),
            replicas=[self.data_node(f"data-{i}") for i in range(1, replicas + 1)],
            sentinels=[self.sentinel(f"sentinel-{i}") for i in range(sentinels)],
        )
