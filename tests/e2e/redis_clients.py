"""Clients for Redis on the local cluster: a writer in a pod, and checks from the host.

The host sits on the pod bridge, so a test reads pod IPs straight from the API and talks to them;
names the servers announce (pod DNS names) are mapped to those IPs, as a client in another cluster
would with ``address_remap``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from redis.cluster import RedisCluster

from tests.e2e.cluster import LocalCluster, wait_for

REDIS_IMAGE = "localhost/moorage/redis:7.0"

# Writes k1, k2, ... through redis-cli and prints "ack kN" only for a write the server acknowledged:
# the log is the list of keys that must survive every fault. Each write is bounded by `timeout`: a
# connection to a member that vanished mid-write (its pod gone, no RST ever sent) would otherwise
# hang redis-cli for the kernel's retransmission time, and the writer with it.
WRITER = r"""
i=0
while [ ! -e /tmp/stop ]; do
  i=$((i+1))
  if [ "$(timeout 5 redis-cli $CLIENT_ARGS -h "$HOST" -p 6379 SET "k$i" "v$i" 2>/dev/null)" = "OK" ]; then
    echo "ack k$i"
  fi
  sleep 0.02
done
echo "stopped at $i"
sleep 3600
"""


def start_writer(cluster: LocalCluster, namespace: str, name: str, host: str, *, cluster_mode: bool) -> str:
    pod = f"{name}-writer"
    cluster.run_pod(
        namespace,
        pod,
        REDIS_IMAGE,
        WRITER,
        env={
            "HOST": host,
            "CLIENT_ARGS": "-c" if cluster_mode else "",
            "REDISCLI_AUTH": cluster.password(namespace, name),
        },
    )
    cluster.wait_pod_phase(namespace, pod, ["Running"])
    wait_for("the writer's first acknowledged write", lambda: "ack k" in cluster.pod_log(namespace, pod), 120)
    return pod


def acknowledged(cluster: LocalCluster, namespace: str, pod: str) -> int:
    return sum(1 for line in cluster.pod_log(namespace, pod).splitlines() if line.startswith("ack "))


def wait_for_acks(
    cluster: LocalCluster, namespace: str, pod: str, at_least: int, timeout: float = 120
) -> int:
    """Until the writer has ``at_least`` acknowledged writes: proof that writes go through now."""
    return int(
        wait_for(
            f"{at_least} acknowledged writes from {pod}",
            lambda: (n := acknowledged(cluster, namespace, pod)) >= at_least and n,
            timeout,
            interval=1,
        )
    )


def stop_writer(cluster: LocalCluster, namespace: str, pod: str) -> list[str]:
    """Stops the loop and returns the keys whose writes were acknowledged."""
    cluster.exec(namespace, pod, ["touch", "/tmp/stop"])
    wait_for("the writer to stop", lambda: "stopped at" in cluster.pod_log(namespace, pod), 60)
    return [
        line.split()[1] for line in cluster.pod_log(namespace, pod).splitlines() if line.startswith("ack ")
    ]


def pod_addresses(cluster: LocalCluster, namespace: str, name: str) -> dict[str, str]:
    """Announced name (``<pod>.<headless>.<ns>.svc.cluster.local``) -> pod IP, for every member."""
    out = {}
    for pod in cluster.pods(namespace, f"app.kubernetes.io/instance={name}"):
        if pod.status.pod_ip:
            subdomain = pod.spec.subdomain or ""
            out[f"{pod.metadata.name}.{subdomain}.{namespace}.svc.cluster.local"] = pod.status.pod_ip
            out[pod.metadata.name] = pod.status.pod_ip
    return out


def cluster_client(cluster: LocalCluster, namespace: str, name: str) -> RedisCluster:
    addresses = pod_addresses(cluster, namespace, name)
    seed = next(ip for pod, ip in addresses.items() if "." not in pod)

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        host, port = address
        return addresses.get(host, host), port

    return RedisCluster(
        host=seed,
        port=6379,
        password=cluster.password(namespace, name),
        address_remap=remap,
        decode_responses=True,
        socket_timeout=10,
    )


def missing_keys(client: Any, keys: Iterable[str]) -> list[str]:
    """Keys whose value is not the one the writer wrote."""
    keys = list(keys)
    missing = []
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        values = client.mget_nonatomic(batch) if isinstance(client, RedisCluster) else client.mget(batch)
        missing += [k for k, v in zip(batch, values, strict=True) if v != "v" + k[1:]]
    return missing


def node_client(ip: str, password: str) -> redis.Redis:
    return redis.Redis(host=ip, port=6379, password=password, decode_responses=True, socket_timeout=5)
