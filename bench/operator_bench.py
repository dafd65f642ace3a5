"""Operator reconcile latency and memory for 500 Middlewares on a real apiserver.

    python bench/operator_bench.py --out bench/results.json [--count 500]

Starts etcd + kube-apiserver (tests/k8s/controlplane.py; no controller-manager, so the StatefulSets
the operator creates make no pods: this measures the operator, not pod churn), installs crds/, runs
``python -m operators.cli.operator_command --namespace bench --standalone`` as a subprocess, then creates
COUNT small redis standalone Middlewares one after another. Latency per object is from just before
its create call to the first watch event showing ``status.observedGeneration == generation`` (the
operator's first status write). Peak RSS is the operator's ``VmHWM`` from /proc at the end.

The same run first measures the floor of this machine (issue 15): a plain client, on its own fresh
control plane, that does what the operator must do before its first status write and nothing else:
it watches the Middlewares and, for each with as many threads as the operator has handler threads,
server-side-applies the objects its render holds (through the same ``KubernetesRuntime``), creates
the credentials Secret and writes ``status.observedGeneration`` (``--plain-client``, a subprocess
like the operator). ``ratio_operator_vs_plain_p50`` is the operator's median over the client's.
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
import traceback
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/PID/stat (fields 14 and 15, in ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def api_requests(plane: ControlPlane) -> dict[str, int]:
    """What the API server served, by verb and resource, from its own ``apiserver_request_total``:
    the profile of a run (the bench's own creates and watch included, the same in both phases)."""
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = {
            name: quoted.strip('"')
            for name, _, quoted in (
                part.partition("=") for part in labels_text[len("apiserver_request_total{") : -1].split(",")
            )
        }
        resource, subresource = labels.get("resource") or "-", labels.get("subresource")
        key = f"{labels.get('verb', '')} {resource}{'/' + subresource if subresource else ''}"
        if labels.get("group", "") in ("", "apps", "moorage.io", "policy", "events.k8s.io"):
            counts[key] = counts.get(key, 0) + int(float(value))
    return dict(sorted(((k, v) for k, v in counts.items() if v >= 50), key=lambda kv: -kv[1]))


def plain_client(threads: int) -> None:
    """The floor: watch Middlewares and, per new one, apply its rendered objects and write its
    observedGeneration, with no operator logic (no catalog objects, no members, no conditions)."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, watch

    from middleware.engines.registry import get_engine
    from middleware.runtime.kubernetes import KubernetesRuntime
    from middleware.spec import load_middleware, resolve

    rt = KubernetesRuntime.from_environment(connections=threads)
    custom = client.CustomObjectsApi(rt.api)

    def reconcile(body: dict[str, Any]) -> None:
        try:
            apply(body)
        except Exception:
            traceback.print_exc()

    def apply(body: dict[str, Any]) -> None:
        spec = resolve(load_middleware(body))
        engine = get_engine(spec.engine)
        for manifest in engine.render(spec):
            rt.apply(manifest, owner=body)
        rt.create(engine.render_credentials(spec, "not-a-secret-bench-password"))
        status = {"status": {"observedGeneration": body["metadata"]["generation"], "phase": "Provisioning"}}
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, body["metadata"]["name"], status
        )

    submitted: set[str] = set()
    with ThreadPoolExecutor(threads) as pool:
        while True:
            # Watched as the operator does, re-listed when the watch ends (a re-list shows every
            # object again as ADDED; each is applied once).
            stream = watch.Watch()
            for event in stream.stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=10
            ):
                body = event["object"]
                name = body["metadata"]["name"]
                if name not in submitted and not body.get("status"):
                    submitted.add(name)
                    pool.submit(reconcile, body)


def run(count: int, timeout: float, *, plain: bool = False) -> dict[str, Any]:
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
        if plain:
            threads = OperatorConfig.from_environment().handler_threads
            argv = [sys.executable, str(Path(__file__).resolve()), "--plain-client", str(threads)]
        with log_path.open("wb") as log:
            operator = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # let kopf list and start its watches before the clock starts
            if operator.poll() is not None:
                raise SystemExit(f"operator exited at start:\n{log_path.read_text()[-3000:]}")
            rss_idle_kib = vm_kib(operator.pid, "VmRSS")
            cpu_before = cpu_seconds(operator.pid)
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
            requests = api_requests(plane)
            cpu_used = cpu_seconds(operator.pid) - cpu_before if operator.poll() is None else None
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
            if len(seen) < count:  # say why, before the scratch directory goes
                print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr, flush=True)
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
        "api_requests": requests,
        "cpu_seconds": round(cpu_used, 1) if cpu_used is not None else None,
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
    parser.add_argument("--plain-client", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_client:
        plain_client(args.plain_client)
        return 0
    floor = run(args.count, args.timeout, plain=True)
    print(json.dumps(floor, indent=2), flush=True)
    result = run(args.count, args.timeout)
    result["plain_client"] = {
        key: floor[key] for key in ("reconciled", "create_all_s", "until_all_status_s", "status_latency_s")
    } | {"rss_mib": floor["operator_rss_mib"]}
    result["ratio_operator_vs_plain_p50"] = round(
        result["status_latency_s"]["p50"] / floor["status_latency_s"]["p50"], 2
    )
    print(json.dumps(result, indent=2), flush=True)
    # Read, update one key, write: the other benchmarks' results stay as they are.
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["operator"] = result
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if result["reconciled"] == result["middlewares"] else 1


if __name__ == "__main__":
    sys.exit(main())
