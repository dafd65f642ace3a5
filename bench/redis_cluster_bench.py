"""Redis Cluster live operations: ours (redis-py) against ``redis-cli --cluster``, same run, same servers.

    python bench/redis_cluster_bench.py --out bench/results.json

(a) create 3 shards x 1 replica on 6 fresh redis-server processes: ``create_cluster`` (returns once
    every node says cluster_state ok and agrees on slots and roles) against ``redis-cli --cluster
    create --cluster-replicas 1 --cluster-yes`` (timed until it returns, and until every node is ok).
(b) reshard throughput: 3 masters loaded with N keys, one empty master joined, then the rebalance
    onto it is timed: ``rebalance_cluster`` against ``redis-cli --cluster rebalance
    --cluster-use-empty-masters``. Keys moved are counted on the new master (DBSIZE).

Every round starts from fresh processes with identical configs (the integration-test harness). The
password reaches redis-cli through REDISCLI_AUTH, never argv. The section ``redis_cluster`` of the
output file is replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from middleware.endpoints import Endpoint  # noqa: E402
from middleware.engines.redis import cluster  # noqa: E402
from tests.integration.harness import RedisNodes, RedisProcess  # noqa: E402

PASSWORD = "bench-pass"
SECTION = "redis_cluster"


def redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None or shutil.which("redis-server") is None:
        sys.exit(
            "redis-server/redis-cli not found: run `make setup` (apt-get install redis-server redis-tools)"
        )
    return path


def cli(*args: str, timeout: float = 300.0) -> float:
    """Run redis-cli with the password from the environment; returns wall seconds."""
    env = {**os.environ, "REDISCLI_AUTH": PASSWORD}
    started = time.perf_counter()
    result = subprocess.run(
        [redis_cli(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "[ERR]" in result.stdout:
        raise RuntimeError(
            f"redis-cli {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return elapsed


def wait_ok(endpoints: Sequence[Endpoint], timeout: float = 60.0) -> None:
    cluster.wait_for_cluster_ok(endpoints, PASSWORD, timeout=timeout)


# A freshly started Redis master refuses to report cluster_state ok for its first 2 s (its
# "writable delay"). Pods are long up when an operator bootstraps them, so both contenders start the
# clock only once the nodes are past that; otherwise the bench would time Redis, not the tools.
SETTLE_S = 2.2


def fresh(root: Path, name: str, count: int) -> tuple[RedisNodes, list[RedisProcess]]:
    group = RedisNodes(root / name, password=PASSWORD)
    try:
        nodes = group.start(count)
    except BaseException:
        group.stop_all()
        raise
    time.sleep(SETTLE_S)
    return group, nodes


# --- (a) create ------------------------------------------------------------------------------------


def create_ours(root: Path, round_no: int) -> dict[str, float]:
    group, nodes = fresh(root, f"create-ours-{round_no}", 6)
    try:
        shards = [[nodes[i].endpoint, nodes[i + 1].endpoint] for i in range(0, 6, 2)]
        started = time.perf_counter()
        cluster.create_cluster(shards, PASSWORD)
        elapsed = time.perf_counter() - started
        wait_ok([p.endpoint for p in nodes])  # already true: create returns only then
        return {"until_ok_s": elapsed}
    finally:
        group.stop_all()


def create_cli(root: Path, round_no: int) -> dict[str, float]:
    group, nodes = fresh(root, f"create-cli-{round_no}", 6)
    try:
        addresses = [p.endpoint.address for p in nodes]
        started = time.perf_counter()
        returned = cli("--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes")
        wait_ok([p.endpoint for p in nodes])
        return {"returned_s": returned, "until_ok_s": time.perf_counter() - started}
    finally:
        group.stop_all()


# --- (b) reshard -----------------------------------------------------------------------------------


def load_keys(nodes: Sequence[RedisProcess], count: int, value_size: int) -> float:
    """Fill the cluster straight into each owner with big pipelines (no cluster client overhead)."""
    owner_of: dict[int, RedisProcess] = {}
    with nodes[0].client() as client:
        for first, last, *rest in client.execute_command("CLUSTER", "SLOTS"):
            port = int(rest[0][1])
            owner = next(p for p in nodes if p.port == port)
            for slot in range(int(first), int(last) + 1):
                owner_of[slot] = owner
    value = "v" * value_size
    per_owner: dict[RedisProcess, list[str]] = defaultdict(list)
    for i in range(count):
        key = f"key:{i}"
        per_owner[owner_of[key_slot(key.encode())]].append(key)
    started = time.perf_counter()
    for owner, keys in per_owner.items():
        with owner.client(socket_timeout=60) as client:
            for start in range(0, len(keys), 5000):
                pipe = client.pipeline(transaction=False)
                for key in keys[start : start + 5000]:
                    pipe.set(key, value)
                pipe.execute()
    return time.perf_counter() - started


def reshard_setup(root: Path, name: str, keys: int, value_size: int) -> tuple[RedisNodes, list[RedisProcess]]:
    group, nodes = fresh(root, name, 4)
    try:
        cluster.create_cluster([[p.endpoint] for p in nodes[:3]], PASSWORD)
        load_keys(nodes[:3], keys, value_size)
        return group, nodes
    except BaseException:
        group.stop_all()
        raise


def dbsize(process: RedisProcess) -> int:
    with process.client() as client:
        return int(client.dbsize())


def check_total(nodes: Sequence[RedisProcess], keys: int) -> None:
    total = sum(dbsize(p) for p in nodes)
    if total != keys:
        raise RuntimeError(f"keys lost or duplicated during the reshard: {total} != {keys}")


def reshard_ours(root: Path, keys: int, value_size: int, round_no: int) -> dict[str, float]:
    group, nodes = reshard_setup(root, f"reshard-ours-{round_no}", keys, value_size)
    try:
        endpoints = [p.endpoint for p in nodes]
        # Each contender joins the empty master its own way (MEET vs add-node); joining is not what
        # is measured, so it happens before the clock starts.
        joined = time.perf_counter()
        with nodes[0].client() as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[3].port, nodes[3].bus_port)
        wait_ok(endpoints)
        join_s = time.perf_counter() - joined
        started = time.perf_counter()
        report = cluster.rebalance_cluster(endpoints, PASSWORD)
        elapsed = time.perf_counter() - started
        moved = dbsize(nodes[3])
        check_total(nodes, keys)
        return {
            "join_s": join_s,
            "rebalance_s": elapsed,
            "keys_moved": moved,
            "slots_moved": report.moved_slots,
            "keys_per_s": moved / elapsed,
        }
    finally:
        group.stop_all()


def reshard_cli(root: Path, keys: int, value_size: int, round_no: int) -> dict[str, float]:
    group, nodes = reshard_setup(root, f"reshard-cli-{round_no}", keys, value_size)
    try:
        endpoints = [p.endpoint for p in nodes]
        joined = time.perf_counter()
        cli("--cluster", "add-node", nodes[3].endpoint.address, nodes[0].endpoint.address)
        wait_ok(endpoints)
        join_s = time.perf_counter() - joined
        elapsed = cli("--cluster", "rebalance", nodes[0].endpoint.address, "--cluster-use-empty-masters")
        wait_ok(endpoints)
        moved = dbsize(nodes[3])
        check_total(nodes, keys)
        slots = cluster.observe_cluster(endpoints, PASSWORD).by_endpoint(nodes[3].endpoint)
        return {
            "join_s": join_s,
            "rebalance_s": elapsed,
            "keys_moved": moved,
            "slots_moved": slots.slot_count if slots else 0,
            "keys_per_s": moved / elapsed,
        }
    finally:
        group.stop_all()


# --- driver ----------------------------------------------------------------------------------------


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 4) for key in runs[0]}


def rounds(fn: Callable[[int], dict[str, float]], count: int) -> dict[str, Any]:
    runs = [fn(i) for i in range(count)]
    return {"median": median_of(runs), "runs": runs}


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    return next((part.split("=", 1)[1] for part in out.split() if part.startswith("v=")), out.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=16)
    parser.add_argument("--create-rounds", type=int, default=3)
    parser.add_argument("--reshard-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    redis_cli()

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moorage-bench-") as tmp:
        root = Path(tmp)
        print("create: ours ...", flush=True)
        ours_create = rounds(lambda i: create_ours(root, i), args.create_rounds)
        print("create: redis-cli ...", flush=True)
        cli_create = rounds(lambda i: create_cli(root, i), args.create_rounds)
        print(f"reshard ({args.keys} keys): ours ...", flush=True)
        ours_reshard = rounds(
            lambda i: reshard_ours(root, args.keys, args.value_size, i), args.reshard_rounds
        )
        print(f"reshard ({args.keys} keys): redis-cli ...", flush=True)
        cli_reshard = rounds(lambda i: reshard_cli(root, args.keys, args.value_size, i), args.reshard_rounds)

    ours_c, cli_c = ours_create["median"], cli_create["median"]
    ours_r, cli_r = ours_reshard["median"], cli_reshard["median"]
    section: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {
            "redis": redis_version(),
            "redis_py": redis.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "create_3x1": {
            "ours": ours_create,
            "redis_cli": cli_create,
            # > 1: ours reaches "every node ok" sooner than redis-cli does.
            "speedup_until_ok": round(cli_c["until_ok_s"] / ours_c["until_ok_s"], 2),
            "note": f"clock starts {SETTLE_S}s after the servers started (past Redis's writable delay)",
        },
        "reshard_add_empty_master": {
            "keys": args.keys,
            "value_size": args.value_size,
            "layout": "3 masters (no replicas) + 1 empty master, rebalanced to 4096 slots each",
            "ours": ours_reshard,
            "redis_cli": cli_reshard,
            # > 1: ours moves keys faster.
            "throughput_ratio": round(ours_r["keys_per_s"] / cli_r["keys_per_s"], 2),
        },
        "total_bench_s": round(time.perf_counter() - began, 1),
    }

    existing: dict[str, Any] = {}
    if args.out.exists():
        try:
            existing = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            print(f"warning: {args.out} was not valid JSON; rewriting it", file=sys.stderr)
    existing[SECTION] = section
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")

    print(
        f"create 3x1: ours {ours_c['until_ok_s']:.2f}s, redis-cli {cli_c['returned_s']:.2f}s "
        f"(ok everywhere after {cli_c['until_ok_s']:.2f}s) -> x{section['create_3x1']['speedup_until_ok']}"
    )
    print(
        f"reshard: ours {ours_r['keys_per_s']:.0f} keys/s ({ours_r['rebalance_s']:.2f}s), "
        f"redis-cli {cli_r['keys_per_s']:.0f} keys/s ({cli_r['rebalance_s']:.2f}s) "
        f"-> x{section['reshard_add_empty_master']['throughput_ratio']}"
    )
    print(f"wrote section {SECTION!r} of {args.out} in {section['total_bench_s']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
