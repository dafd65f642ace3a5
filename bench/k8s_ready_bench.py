"""Time from apply to Ready on real pods, per engine, on the local cluster.

    python bench/k8s_ready_bench.py --out bench/results.json [--runs 3] [--kubeconfig PATH]

Uses the running local cluster (``make cluster-up``; ``--kubeconfig`` or $MOORAGE_E2E_KUBECONFIG),
else brings one up and takes it down again. Per engine and run: a fresh namespace, the Middleware
applied, then the time until its status says Ready for that generation (the operator in its pod
did everything: StatefulSets, pods scheduled and started by the kubelet, bootstrap through pod DNS).
Beside it, as the reference measured in the same run, the time until the same pods are merely all
Ready (what the kubelet and the StatefulSet controller alone take): the ratio is what the
operator's bootstrap adds. Results go under the ``k8s_ready`` key; other keys are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.cluster import LocalCluster, cluster_command  # noqa: E402

SMALL = {"cpu": "100m", "memory": "192Mi"}
SCENARIOS: dict[str, dict[str, Any]] = {
    "redis-cluster-3x2": {
        "engine": "redis",
        "topology": "cluster",
        "shards": 3,
        "replicas": 2,
        "resources": SMALL,
        "storage": {"size": "256Mi"},
    },
    "redis-sentinel-3+3": {
        "engine": "redis",
        "topology": "sentinel",
        "replicas": 3,
        "sentinels": 3,
        "resources": SMALL,
        "storage": {"size": "256Mi"},
    },
    "postgresql-replication-3": {
        "engine": "postgresql",
        "topology": "replication",
        "replicas": 3,
        "extensions": ["vector"],
        "resources": {"cpu": "150m", "memory": "256Mi"},
        "storage": {"size": "512Mi"},
    },
    "zookeeper-ensemble-3": {
        "engine": "zookeeper",
        "topology": "ensemble",
        "replicas": 3,
        "resources": {"cpu": "200m", "memory": "384Mi"},
        "storage": {"size": "256Mi"},
    },
}


def _pods_ready_at(cluster: LocalCluster, namespace: str, name: str, expected: int) -> bool:
    pods = cluster.pods(namespace, f"app.kubernetes.io/instance={name}")
    ready = [
        p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    return len(ready) >= expected


def measure(cluster: LocalCluster, label: str, spec: dict[str, Any]) -> dict[str, float]:
    namespace = cluster.new_namespace("bench")
    name = "bench"
    expected = (spec.get("shards") or 1) * spec.get("replicas", 1) + (spec.get("sentinels") or 0)
    try:
        start = time.monotonic()
        cluster.create_middleware(namespace, name, spec)
        pods_ready = None
        while True:
            now = time.monotonic()
            if pods_ready is None and _pods_ready_at(cluster, namespace, name, expected):
                pods_ready = now - start
            mw = cluster.middleware(namespace, name)
            status = mw.get("status") or {}
            if (
                status.get("phase") == "Ready"
                and status.get("observedGeneration") == mw["metadata"]["generation"]
            ):
                ready = now - start
                break
            if now - start > 600:
                raise RuntimeError(f"{label}: not Ready after 600 s:\n{cluster.describe(namespace)}")
            time.sleep(0.25)
        return {"ready_s": round(ready, 2), "pods_ready_s": round(pods_ready or ready, 2)}
    finally:
        cluster.delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kubeconfig", default=os.environ.get("MOORAGE_E2E_KUBECONFIG"))
    args = parser.parse_args()
    state = None
    if args.kubeconfig:
        cluster = LocalCluster(Path(args.kubeconfig))
    else:
        state = Path("/var/tmp/moorage-bench-cluster")
        up = cluster_command("up", state)
        if up.returncode != 0:
            print(up.stdout, up.stderr, file=sys.stderr)
            return 1
        cluster = LocalCluster(state / "kubeconfig")
    try:
        results: dict[str, Any] = {}
        for label, spec in SCENARIOS.items():
            runs = [measure(cluster, label, spec) for _ in range(args.runs)]
            ready = statistics.median(r["ready_s"] for r in runs)
            pods = statistics.median(r["pods_ready_s"] for r in runs)
            results[label] = {
                "apply_to_ready_s_median": ready,
                "pods_ready_s_median": pods,
                "operator_overhead_ratio": round(ready / pods, 2) if pods else None,
                "runs": runs,
            }
            print(
                f"{label:28} apply->Ready {ready:6.1f}s   pods Ready {pods:6.1f}s   ratio {ready / pods:4.2f}"
            )
    finally:
        if state is not None:
            cluster_command("down", state)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["k8s_ready"] = {
        "what": "apply -> Middleware Ready on real pods of the local cluster (kubelet, containerd), "
        "beside apply -> all member pods Ready (reference, same run)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
