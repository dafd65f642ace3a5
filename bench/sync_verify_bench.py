"""Throughput of ``sync.verify`` (full mode) on one redis-server pair.

    python bench/sync_verify_bench.py --out bench/results.json

Both servers get the same N small string keys with ``DEBUG POPULATE`` (server-side, seconds for a
million keys), then a full verify (every key: TYPE + PTTL + GET on both sides in one pipelined round
trip per batch, then the reverse EXISTS pass) is timed ``--runs`` times; the median run is reported.
The ``sync_verify`` section of the output file is replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sync.verify import RedisURL, verify  # noqa: E402
from tests.integration.harness import RedisNodes  # noqa: E402

PASSWORD = "bench-pass"
SECTION = "sync_verify"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="moorage-bench-") as tmp:
        nodes = RedisNodes(Path(tmp), password=PASSWORD)
        try:
            # No AOF: loading a million keys should not be a disk benchmark.
            source = nodes.add("source", cluster=False, extra={"appendonly": "no"})
            target = nodes.add("target", cluster=False, extra={"appendonly": "no"})
            began = time.perf_counter()
            for process in (source, target):
                with process.client(socket_timeout=120) as client:
                    client.execute_command("DEBUG", "POPULATE", args.keys, "key", args.value_size)
                    assert client.dbsize() == args.keys
            load_seconds = time.perf_counter() - began
            print(f"loaded {args.keys} keys on both in {load_seconds:.1f}s", flush=True)
            reports = []
            for _ in range(max(1, args.runs)):
                report = verify(
                    RedisURL(source.endpoint, None, PASSWORD, 0), RedisURL(target.endpoint, None, PASSWORD, 0)
                )
                assert report.equal and report.checked == args.keys, report.as_dict()
                print(f"run: {report.seconds:.2f}s, {report.keys_per_second:.0f} keys/s", flush=True)
                reports.append(report)
        finally:
            nodes.stop_all()
    seconds = statistics.median(r.seconds for r in reports)
    result = {
        "keys": args.keys,
        "value_size": args.value_size,
        "equal": all(r.equal for r in reports),
        "runs": len(reports),
        "seconds": round(seconds, 2),
        "source_keys_per_second": round(args.keys / seconds),
        "runs_keys_per_second": [round(r.keys_per_second) for r in reports],
        "load_seconds": round(load_seconds, 2),
        "note": (
            "full verify (median run): source pass (TYPE+PTTL+GET pipelined in one round trip per batch"
            " on both sides at once, raw RESP + hiredis) + target EXISTS pass"
        ),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[SECTION] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
