"""Sync on the real redis-shake: supervised by Moorage against run by hand, same run, same configs.

    python bench/sync_bench.py --out bench/results.json [--keys 1000000] [--rounds 2]

Source: a 3-shard Redis Cluster (one master per shard, real redis-server processes from the
integration-test harness) loaded with ``--keys`` string keys, each in the slot its shard owns. Target:
one standalone redis-server, the node a sentinel deployment's master would be (redis-shake writes to
one master either way; the sentinels are not on the data path).

(a) full sync: ``LocalSyncs.start`` (what ``moorage sync start`` runs: plan, configs, share emptied,
    three redis-shake processes supervised) against the same three redis-shake processes started by
    hand on the configs ``moorage sync plan --out`` writes. Timed from the call to the target holding
    every key (DBSIZE polled every 0.2 s). Rounds alternate (ours, by hand, ours, ...) on a flushed
    target; the ratio is by-hand median / ours median (>= 0.95: supervision costs nothing).
(b) steady-state lag: a writer at a fixed rate into the source for ``--steady-seconds`` while a
    supervision pass runs every second; its heartbeat lag in seconds (``lagSeconds`` from the
    heartbeat key) is summarised.

The section ``sync`` of the output file is replaced; other sections are kept.
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

import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from middleware.engines.redis.cluster import create_cluster  # noqa: E402
from sync import manual  # noqa: E402
from sync.local_runner import LocalSyncs, find_binary  # noqa: E402
from sync.verify import RedisURL  # noqa: E402
from tests.integration.harness import RedisNodes, RedisProcess  # noqa: E402
from tests.integration.shake_harness import status_port_base  # noqa: E402

PASSWORD = "bench-pass"
SECTION = "sync"
NAME = "bench"
BATCH = 10_000


def load(masters: list[RedisProcess], keys: int) -> None:
    """``keys`` string keys, each written to the master that owns its slot (pipelined)."""
    owner: dict[int, int] = {}
    for index, master in enumerate(masters):
        with master.client() as client:
            for start, end, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(_[0][1]) == master.port:
                    owner.update(dict.fromkeys(range(int(start), int(end) + 1), index))
    clients = [m.client(socket_timeout=60) for m in masters]
    pipes = [c.pipeline(transaction=False) for c in clients]
    try:
        for i in range(keys):
            key = f"bench:{i}"
            pipes[owner[key_slot(key.encode())]].set(key, f"value-{i:08d}")
            if i % BATCH == BATCH - 1:
                for pipe in pipes:
                    pipe.execute()
        for pipe in pipes:
            pipe.execute()
    finally:
        for client in clients:
            client.close()


def wait_dbsize(target: redis.Redis, keys: int, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if target.dbsize() >= keys:
            return time.perf_counter()
        time.sleep(0.2)
    raise SystemExit(f"the target did not reach {keys} keys within {timeout:.0f}s")


def supervised_round(
    state: Path, source: RedisURL, target: RedisURL, binary: str, base: int, keys: int
) -> float:
    syncs = LocalSyncs(state)
    with redis.Redis(host=target.endpoint.host, port=target.endpoint.port, password=PASSWORD) as client:
        started = time.perf_counter()
        syncs.start(NAME, source, target, status_port_base=base, binary=binary)
        try:
            return wait_dbsize(client, keys, 900) - started
        finally:
            syncs.stop(NAME)


def by_hand_round(out: Path, source: RedisURL, target: RedisURL, binary: str, base: int, keys: int) -> float:
    planned = manual.write_configs(
        manual.plan_urls(NAME, source, target, status_port_base=base), out, source, target
    )
    with redis.Redis(host=target.endpoint.host, port=target.endpoint.port, password=PASSWORD) as client:
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                [binary, str(item.config)],
                cwd=item.config.parent if item.config else None,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for item in planned
        ]
        try:
            return wait_dbsize(client, keys, 900) - started
        finally:
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def steady_lag(
    state: Path,
    source: RedisURL,
    target: RedisURL,
    binary: str,
    base: int,
    masters: list[RedisProcess],
    args: Any,
) -> dict[str, Any]:
    syncs = LocalSyncs(state)
    syncs.start(NAME, source, target, status_port_base=base, binary=binary)
    running = threading.Event()
    running.set()
    written = [0]

    def writer() -> None:
        cluster = redis.RedisCluster(host="127.0.0.1", port=masters[0].port, password=PASSWORD)
        interval, n = 1.0 / args.steady_rate, 0
        next_at = time.perf_counter()
        try:
            while running.is_set():
                cluster.set(f"steady:{n}", n)
                n += 1
                next_at += interval
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        finally:
            written[0] = n
            cluster.close()

    lags: list[float] = []
    thread = threading.Thread(target=writer, daemon=True)
    try:
        # Caught up with the full sync first: every heartbeat arrived. (lagBytes is 0 early: redis-shake
        # ACKs the replication offset while it is still loading the RDB into the target.)
        deadline = time.monotonic() + 300
        while True:
            rows = syncs.supervise_once(NAME).workloads
            if all(w.heartbeat_lag_seconds == 0 for w in rows):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the sync did not catch up within 300 s")
            time.sleep(0.5)
        thread.start()
        started = time.monotonic()
        while time.monotonic() - started < args.steady_seconds:
            for row in syncs.supervise_once(NAME).workloads:
                if row.heartbeat_lag_seconds is not None:
                    lags.append(row.heartbeat_lag_seconds)
            time.sleep(1.0)
    finally:
        running.clear()
        if thread.is_alive():
            thread.join(timeout=10)
        syncs.stop(NAME)
    lags.sort()
    return {
        "write_rate_per_second": args.steady_rate,
        "seconds": args.steady_seconds,
        "writes": written[0],
        "samples": len(lags),
        "lag_seconds_median": round(statistics.median(lags), 3) if lags else None,
        "lag_seconds_p95": round(lags[int(0.95 * (len(lags) - 1))], 3) if lags else None,
        "lag_seconds_max": round(lags[-1], 3) if lags else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--steady-rate", type=float, default=1000.0, help="writes per second")
    args = parser.parse_args()
    binary = find_binary()

    with tempfile.TemporaryDirectory(prefix="moorage-sync-bench-") as tmp:
        root = Path(tmp)
        nodes = RedisNodes(root / "nodes", password=PASSWORD)
        try:
            masters = nodes.start(3, cluster=True, prefix="src")
            create_cluster([[m.endpoint] for m in masters], PASSWORD, timeout=60)
            target_node = nodes.add("target", cluster=False)
            loading = time.perf_counter()
            load(masters, args.keys)
            load_seconds = time.perf_counter() - loading
            source = RedisURL(masters[0].endpoint, None, PASSWORD, 0)
            target = RedisURL(target_node.endpoint, None, PASSWORD, 0)
            rounds: dict[str, list[float]] = {"supervised": [], "by_hand": []}
            for round_ in range(args.rounds):
                for kind in ("supervised", "by_hand"):
                    with target_node.client() as client:
                        client.flushall()
                    base = status_port_base(3)
                    work = root / f"{kind}-{round_}"
                    if kind == "supervised":
                        seconds = supervised_round(work, source, target, binary, base, args.keys)
                    else:
                        seconds = by_hand_round(work, source, target, binary, base, args.keys)
                    rounds[kind].append(round(seconds, 3))
                    print(f"{kind} round {round_}: {args.keys} keys in {seconds:.2f}s", file=sys.stderr)
            with target_node.client() as client:
                client.flushall()
            steady = steady_lag(root / "steady", source, target, binary, status_port_base(3), masters, args)
        finally:
            nodes.stop_all()

    ours, theirs = statistics.median(rounds["supervised"]), statistics.median(rounds["by_hand"])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "redis_shake": binary,
        "keys": args.keys,
        "load_seconds": round(load_seconds, 2),
        "full_sync_seconds": rounds,
        "full_sync_keys_per_second": {
            "supervised": round(args.keys / ours),
            "by_hand": round(args.keys / theirs),
        },
        "ratio_by_hand_over_supervised": round(theirs / ours, 3),
        "steady_state": steady,
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[SECTION] = result
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
