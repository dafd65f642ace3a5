"""Operator reconcile latency and memory for 500 Middlewares on a real apiserver.

    python bench/operator_bench.py --out bench/results.json [--count 500]

Starts etcd + kube-apiserver (tests/k8s/controlplane.py; no controller-manager, so the StatefulSets
the operator creates make no pods: this measures the operator, not pod churn), installs crds/, runs
``python -m operators.cli.operator_command --namespace bench --standalone`` as a subprocess, then creates
COUNT small redis standalone Middlewares one after another. Latency per object is from just before
its create call to the first watch event showing ``status.observedGeneration == generation`` (the
operator's first status write). Peak RSS is the operator's ``VmHWM`` from /proc at the end.
Results go under the ``operator`` key of the results file; other keys are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from operators.settings import OperatorConfig  # noqa: E402
from tests.k8s.controlplane import ControlPlane  # noqa: E402

NAMESPACE = "bench"
GROUP, VERSION, PLURAL = "moorage.io", "v1alpha1", "middlewares"


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def watch_status(api: Any, seen: dict[str, float], stop: threading.Event) -> None:
    """Record when each Middleware's status first shows its current generation observed."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(api)
    while not stop.is_set():
        stream = watch.Watch()
        try:
            for event in stream.stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=30
            ):
                obj = event["object"]
                name = obj["metadata"]["name"]
                observed = (obj.get("status") or {}).get("observedGeneration")
                if name not in seen and observed == obj["metadata"].get("generation"):
                    seen[name] = time.monotonic()
                if stop.is_set():
                    stream.stop()
                    break
        except Exception:
            # A dropped watch is re-listed: every object comes back as ADDED, so nothing is missed.
            if stop.is_set():
                return
            time.sleep(0.5)


def run(count: int, timeout: float) -> dict[str, Any]:
    from kubernetes import client

    with (
        tempfile.TemporaryDirectory(prefix="moorage-bench-") as tmp,
        ControlPlane(Path(tmp), with_controller_manager=False) as plane,
    ):
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        plane.kubectl("create", "namespace", NAMESPACE)
        api = plane.api_client()
        log_path = Path(tmp) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        argv = [sys.executable, "-m", "operators.cli.operator_command", "--namespace", NAMESPACE,
                "--standalone", "--metrics-port", "0"]  # fmt: skip
        with log_path.open("wb") as log:
            operator = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # let kopf list and start its watches before the clock starts
            if operator.poll() is not None:
                raise SystemExit(f"operator exited at start:\n{log_path.read_text()[-3000:]}")
            rss_idle_kib = vm_kib(operator.pid, "VmRSS")
            seen: dict[str, float] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch_status, args=(api, seen, stop), daemon=True)
            watcher.start()
            custom = client.CustomObjectsApi(api)
            created: dict[str, float] = {}
            began = time.monotonic()
            for i in range(count):
                name = f"bench-{i:04d}"
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Middleware",
                    "metadata": {"name": name},
                    "spec": {"engine": "redis", "topology": "standalone"},
                }
                created[name] = time.monotonic()
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
            create_seconds = time.monotonic() - began
            print(f"created {count} Middlewares in {create_seconds:.1f}s", flush=True)
            deadline = time.monotonic() + timeout
            while len(seen) < count and time.monotonic() < deadline and operator.poll() is None:
                time.sleep(0.5)
            all_done = time.monotonic() - began
            stop.set()
            peak_kib = vm_kib(operator.pid, "VmHWM") if operator.poll() is None else None
            rss_end_kib = vm_kib(operator.pid, "VmRSS") if operator.poll() is None else None
        finally:
            if operator.poll() is None:
                operator.send_signal(signal.SIGTERM)
                try:
                    operator.wait(30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait(10)
            api.close()
    latencies = [seen[n] - created[n] for n in created if n in seen]
    if not latencies:
        raise SystemExit(f"no Middleware got a status within {timeout}s; see the operator log")
    return {
        "middlewares": count,
        "reconciled": len(latencies),
        "handler_threads": OperatorConfig.from_environment().handler_threads,
        "create_all_s": round(create_seconds, 2),
        "until_all_status_s": round(all_done, 2),
        "status_latency_s": {
            "p50": round(statistics.median(latencies), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "max": round(max(latencies), 3),
        },
        "operator_rss_mib": {
            "idle": round(rss_idle_kib / 1024, 1),
            "end": round(rss_end_kib / 1024, 1) if rss_end_kib else None,
            "peak_vmhwm": round(peak_kib / 1024, 1) if peak_kib else None,
        },
        "note": (
            "create -> first status write with observedGeneration; redis standalone, one namespace, "
            "no controller-manager (StatefulSets make no pods), operator standalone; apiserver, etcd "
            "and the operator share the machine"
        ),
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every status")
    args = parser.parse_args(argv)
    result = run(args.count, args.timeout)
    print(json.dumps(result, indent=2), flush=True)
    # Read, update one key, write: the other benchmarks' results stay as they are.
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["operator"] = result
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if result["reconciled"] == result["middlewares"] else 1


if __name__ == "__main__":
    sys.exit(main())
