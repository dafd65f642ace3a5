"""A side in another cluster: the names its servers announce are mapped to its pods' IPs.

Moorage's Redis announces pod DNS names (``cluster-announce-hostname``, sentinel
``announce-hostnames``), which resolve only inside that cluster. The operator dials pod IPs instead.
"""

from __future__ import annotations

from middleware.endpoints import Endpoint
from middleware.models.sync import RedisEndpointKind
from operators.kube.redis_sync import SideAccess, _pod_ip_prefixes
from sync.plan import RedisTopology, Replica, Shard, renamed

STATEFULSET = {
    "kind": "StatefulSet",
    "metadata": {"name": "cache-redis"},
    "spec": {"serviceName": "cache-headless"},
}
PODS = {
    "cache-redis-0": {"status": {"podIP": "10.8.0.11"}},
    "cache-redis-1": {"status": {"podIP": "10.8.0.12"}},
    "cache-redis-2": {"status": {}},  # no IP yet: left out, not guessed
    "other-redis-0": {"status": {"podIP": "10.8.0.99"}},  # another workload's pod
}


def test_prefixes_cover_the_pods_with_an_ip_whatever_the_domain() -> None:
    prefixes = _pod_ip_prefixes("shop", [STATEFULSET, {"kind": "Service"}], PODS)
    assert prefixes == (
        ("cache-redis-0.cache-headless.shop.svc.", "10.8.0.11"),
        ("cache-redis-1.cache-headless.shop.svc.", "10.8.0.12"),
    )


def test_a_sentinel_side_reported_by_name_is_planned_on_pod_ips() -> None:
    side = SideAccess(
        RedisEndpointKind.SENTINEL,
        (Endpoint("10.8.0.11", 6379),),
        pod_ips=_pod_ip_prefixes("shop", [STATEFULSET], PODS),
    )
    reported = RedisTopology(
        RedisEndpointKind.SENTINEL,
        (
            Shard(
                Endpoint("cache-redis-1.cache-headless.shop.svc.cluster-b.example", 6379),
                (Replica(Endpoint("cache-redis-0.cache-headless.shop.svc.cluster-b.example", 6379), True),),
            ),
        ),
        sentinels=(Endpoint("cache-redis-0.cache-headless.shop.svc.cluster-b.example", 26379),),
        master_name="cache",
    )
    mapped = renamed(reported, side.dialable)
    assert mapped.shards[0].master == Endpoint("10.8.0.12", 6379)
    assert mapped.shards[0].replicas == (Replica(Endpoint("10.8.0.11", 6379), True),)
    assert mapped.sentinels == (Endpoint("10.8.0.11", 26379),)
    # A name that is not one of the side's pods (e.g. an external replica) is kept as reported.
    outside = Endpoint("cache-redis-2.cache-headless.shop.svc.cluster-b.example", 6379)
    assert side.dialable(outside) == outside
    assert side.dialable(Endpoint("10.0.0.5", 6379)) == Endpoint("10.0.0.5", 6379)
