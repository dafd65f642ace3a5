"""Point-in-time recovery (issue 14) measured side by side with the raw tools, at two data sizes.

    python bench/pitr_bench.py --out bench/results.json [--small-mb 100] [--large-mb 1000]

A real S3 server (SeaweedFS ``weed mini`` on free ports, as bench/backup_bench.py starts it) and one
standalone PostgreSQL with ``spec.backup.walArchiving`` on the local runtime, archiving with
barman's cloud tools. At each size (a table filled to that many MB):

- base backup: ours (``backups.pitr.take_base_backup``: barman-cloud-backup to S3, in a child
  interpreter whose children's peak RSS is read with getrusage) against ``pg_basebackup`` to the
  local disk (``-X fetch``, plain format), ratio = raw seconds / ours;
- WAL archiving under a write load (large size only): inserts for ``--load-seconds``, the
  archiver's backlog (segments written but not yet archived) sampled each second, and whether it
  grows: its maximum, its value at the end and the segments archived per second; first as fast as
  the writer goes, then paced to half of what the archiver uploaded alone afterwards;
- recovery: the whole ``apply_point_in_time`` to the end of the archive (data set aside, the base
  backup restored from S3, the WAL of the load replayed, promoted), against ``pg_basebackup`` of
  the same data as the raw reference.

The ``pitr`` section of the output file is replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from backup_bench import _start_s3, _stop  # noqa: E402

from backups import pitr, pitr_restore  # noqa: E402
from backups.local import LocalRecovery  # noqa: E402
from backups.repository import Repository  # noqa: E402
from backups.store import RepositoryConfig, S3Store  # noqa: E402
from middleware.engines.postgresql.binaries import find_bin_dir  # noqa: E402
from middleware.engines.postgresql.config import replication_password  # noqa: E402
from middleware.lifecycle import Lifecycle  # noqa: E402
from operators.cli.local import local_runtime  # noqa: E402

SECTION = "pitr"
NAMESPACE = "default"
NAME = "bench-pitr"
MB = 1_000_000


def _repo_url(bucket: str) -> str:
    return f"s3://{bucket}/bench?endpoint={os.environ['MOORAGE_BENCH_S3']}"


def _lifecycle(state: Path, bucket: str) -> Lifecycle:
    return Lifecycle(local_runtime(state, _repo_url(bucket)))


def _repository(bucket: str) -> Repository:
    return Repository(S3Store(RepositoryConfig.from_url(_repo_url(bucket))))


def _connect(lifecycle: Lifecycle) -> Any:
    import psycopg

    deployment = lifecycle.existing(NAMESPACE, NAME)
    host, port = lifecycle.status(NAMESPACE, NAME).endpoints["rw"].rsplit(":", 1)
    return psycopg.connect(
        host=host,
        port=int(port),
        user="postgres",
        password=lifecycle.runtime.password(deployment.spec),
        dbname="postgres",
        autocommit=True,
    )


def _child_base_backup(state: Path, bucket: str) -> dict[str, Any]:
    """One base backup in this (fresh) interpreter; barman's peak RSS from its rusage."""
    lifecycle = _lifecycle(state, bucket)
    repository = _repository(bucket)
    deployment = lifecycle.existing(NAMESPACE, NAME)
    host, port = lifecycle.status(NAMESPACE, NAME).endpoints["rw"].rsplit(":", 1)
    began = time.perf_counter()
    taken = pitr.take_base_backup(
        repository.store,
        pitr.WalArchive(repository.config, NAMESPACE, NAME),
        host,
        int(port),
        lifecycle.runtime.password(deployment.spec),
    )
    return {
        "seconds": round(time.perf_counter() - began, 2),
        "backup_id": taken.backup_id,
        # ru_maxrss of the children: the largest of barman's processes (KiB on Linux).
        "barman_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def _base_backup(state: Path, bucket: str, env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--state", str(state), "--bucket", bucket]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"base backup exited {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _pg_basebackup(lifecycle: Lifecycle, out: Path) -> float:
    deployment = lifecycle.existing(NAMESPACE, NAME)
    host, port = lifecycle.status(NAMESPACE, NAME).endpoints["rw"].rsplit(":", 1)
    env = {**os.environ, "PGPASSWORD": replication_password(lifecycle.runtime.password(deployment.spec))}
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    subprocess.run(
        [
            str(find_bin_dir() / "pg_basebackup"),
            *("-h", host, "-p", port, "-U", "replicator", "-D", str(out)),
            *("-X", "fetch", "-c", "fast", "--no-sync"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - began
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def _pg_basebackup_to_s3(lifecycle: Lifecycle, bucket: str) -> float:
    """The floor of any base backup to this S3 server: ``pg_basebackup`` writing one tar to its
    stdout (``-X none``: the WAL is archived apart, as with barman) streamed by boto3's multipart
    upload, no catalog, no checksums. What a streamed uploader of our own could reach at best."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    deployment = lifecycle.existing(NAMESPACE, NAME)
    host, port = lifecycle.status(NAMESPACE, NAME).endpoints["rw"].rsplit(":", 1)
    env = {**os.environ, "PGPASSWORD": replication_password(lifecycle.runtime.password(deployment.spec))}
    s3 = boto3.client("s3", endpoint_url=os.environ["MOORAGE_BENCH_S3"], region_name="us-east-1")
    key = f"floor/base-{secrets.token_hex(4)}.tar"
    began = time.perf_counter()
    with subprocess.Popen(
        [
            str(find_bin_dir() / "pg_basebackup"),
            *("-h", host, "-p", port, "-U", "replicator", "-D", "-", "-F", "t"),
            *("-X", "none", "-c", "fast"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        s3.upload_fileobj(
            proc.stdout,
            bucket,
            key,
            Config=TransferConfig(multipart_chunksize=64 * 1024 * 1024, max_concurrency=4),
        )
        stderr = proc.stderr.read() if proc.stderr is not None else b""
        if proc.wait() != 0:
            raise RuntimeError(f"pg_basebackup to stdout exited {proc.returncode}: {stderr.decode()[-2000:]}")
    seconds = time.perf_counter() - began
    s3.delete_object(Bucket=bucket, Key=key)
    return seconds


def _fill_to(lifecycle: Lifecycle, megabytes: int) -> int:
    """Rows of ~1 kB until the database holds ``megabytes``; returns its size in bytes."""
    with _connect(lifecycle) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (id bigserial PRIMARY KEY, body text)")
        while True:
            size = int(conn.execute("SELECT pg_database_size('postgres')").fetchone()[0])
            if size >= megabytes * MB:
                conn.execute("CHECKPOINT")
                return size
            batch = max(1, min(100_000, (megabytes * MB - size) // 1100 + 1))
            conn.execute(
                "INSERT INTO filler (body) SELECT string_agg(md5(random()::text), '') "
                "FROM generate_series(1, %s) g, generate_series(1, 32) h GROUP BY g",
                (batch,),
            )


def _archive_under_load(
    lifecycle: Lifecycle, seconds: float, mb_per_s: float | None = None
) -> dict[str, Any]:
    """Inserts for ``seconds`` (as fast as they go, or paced to ``mb_per_s`` of WAL); each second
    the backlog: segments between the last archived one and the one being written."""

    def position(name: str | None) -> int:
        return int(name[8:16], 16) * 0x100 + int(name[16:24], 16) if name else 0

    samples: list[int] = []
    with _connect(lifecycle) as writer, _connect(lifecycle) as watcher:
        start_lsn = writer.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        archived_before = int(watcher.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0])
        began = time.perf_counter()
        next_sample = began
        while time.perf_counter() - began < seconds:
            writer.execute(
                "INSERT INTO filler (body) SELECT string_agg(md5(random()::text), '') "
                "FROM generate_series(1, 2000) g, generate_series(1, 32) h GROUP BY g"
            )
            if mb_per_s is not None:
                written = int(
                    writer.execute(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start_lsn,)
                    ).fetchone()[0]
                )
                ahead = written / MB / mb_per_s - (time.perf_counter() - began)
                if ahead > 0:
                    time.sleep(min(ahead, 1.0))
            if time.perf_counter() >= next_sample:
                current, archived = watcher.execute(
                    "SELECT pg_walfile_name(pg_current_wal_lsn()), last_archived_wal FROM pg_stat_archiver"
                ).fetchone()
                samples.append(max(0, position(current) - position(archived) - 1))
                next_sample += 1.0
        elapsed = time.perf_counter() - began
        wal_bytes = int(
            writer.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start_lsn,)).fetchone()[0]
        )
        archived = int(watcher.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0])
    half = len(samples) // 2
    first, second = samples[:half] or [0], samples[half:] or [0]
    return {
        "load_seconds": round(elapsed, 1),
        "wal_mb_written": round(wal_bytes / MB, 1),
        "wal_mb_per_s": round(wal_bytes / MB / elapsed, 1),
        "segments_archived": archived - archived_before,
        "segments_archived_per_s": round((archived - archived_before) / elapsed, 2),
        "backlog_segments_max": max(samples, default=0),
        "backlog_segments_end": samples[-1] if samples else 0,
        "backlog_mean_first_half": round(sum(first) / len(first), 1),
        "backlog_mean_second_half": round(sum(second) / len(second), 1),
        "backlog_grows": (sum(second) / len(second)) > (sum(first) / len(first)) + 2,
    }


def _wait_archived(lifecycle: Lifecycle, timeout: float = 900) -> float:
    """Switch the segment and wait until the archiver caught up; returns the seconds it took."""
    began = time.perf_counter()
    with _connect(lifecycle) as conn:
        last = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        while time.perf_counter() - began < timeout:
            archived = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if archived is not None and archived >= last:
                return time.perf_counter() - began
            time.sleep(0.5)
    raise RuntimeError(f"segment {last} not archived within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--small-mb", type=int, default=100)
    parser.add_argument("--large-mb", type=int, default=1000)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument(
        "--wal-compression", default="zstd", help="spec.backup.walCompression of the benched Middleware"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child_base_backup(args.state, args.bucket)))
        return 0

    pitr.find_barman()  # says how to get barman before anything starts
    result: dict[str, Any] = {
        "sizes_mb": [args.small_mb, args.large_mb],
        "wal_compression": args.wal_compression,
    }
    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="moorage-pitr-bench-"))
        work.chmod(0o755)  # the postgres OS user reaches its data dir under it
        cleanup.callback(shutil.rmtree, work, True)
        state, weed_dir = work / "state", work / "seaweedfs"
        for path in (state, weed_dir):
            path.mkdir(mode=0o755)
        endpoint, access_key, secret_key, proc = _start_s3(weed_dir)
        cleanup.callback(_stop, proc)
        os.environ.update(
            MOORAGE_BENCH_S3=endpoint, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key
        )
        bucket = "pitr-bench-" + secrets.token_hex(4)
        S3Store(RepositoryConfig.from_url(_repo_url(bucket))).ensure_bucket()
        lifecycle = _lifecycle(state, bucket)
        cleanup.callback(lambda: lifecycle.down(NAMESPACE, NAME, purge=True))
        lifecycle.up(
            {
                "apiVersion": "moorage.io/v1alpha1",
                "kind": "Middleware",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {
                    "engine": "postgresql",
                    "topology": "standalone",
                    "resources": {"cpu": "1", "memory": "1Gi"},
                    "backup": {
                        "repository": {"name": "s3"},
                        "schedule": "0 3 * * *",
                        "walArchiving": True,
                        "walCompression": args.wal_compression,
                    },
                },
            }
        )
        runs = []
        for megabytes in (args.small_mb, args.large_mb):
            size = _fill_to(lifecycle, megabytes)
            _wait_archived(lifecycle)
            raw = _pg_basebackup(lifecycle, work / "raw")
            floor = _pg_basebackup_to_s3(lifecycle, bucket)
            ours = _base_backup(state, bucket, dict(os.environ))
            runs.append(
                {
                    "database_mb": round(size / MB),
                    "pg_basebackup_seconds": round(raw, 2),
                    "pg_basebackup_mb_per_s": round(size / MB / raw, 1),
                    "pg_basebackup_streamed_to_s3_seconds": round(floor, 2),
                    "ratio_streamed_to_s3_vs_pg_basebackup": round(raw / floor, 2),
                    "ratio_base_backup_vs_streamed_to_s3": round(floor / ours["seconds"], 2),
                    "base_backup_seconds": ours["seconds"],
                    "base_backup_mb_per_s": round(size / MB / ours["seconds"], 1),
                    "ratio_base_backup_vs_pg_basebackup": round(raw / ours["seconds"], 2),
                    "barman_peak_rss_mib": ours["barman_peak_rss_mib"],
                }
            )
        result["base_backup"] = runs
        result["barman_peak_rss_growth_large_over_small"] = round(
            runs[1]["barman_peak_rss_mib"] / runs[0]["barman_peak_rss_mib"], 2
        )
        result["archiving_under_load"] = _archive_under_load(lifecycle, args.load_seconds)
        saturated = result["archiving_under_load"]
        saturated["catch_up_seconds_after_load"] = round(_wait_archived(lifecycle), 1)
        # The archiver alone: the backlog left at the end of the load, uploaded with no writer.
        capacity = saturated["backlog_segments_end"] * 16 / max(saturated["catch_up_seconds_after_load"], 0.1)
        saturated["archiver_alone_mb_per_s"] = round(capacity, 1)
        # A sustained load the archiver must keep up with: half of what it uploads alone, paced.
        paced = _archive_under_load(lifecycle, args.load_seconds, mb_per_s=max(capacity / 2, 1.0))
        paced["catch_up_seconds_after_load"] = round(_wait_archived(lifecycle), 1)
        result["archiving_paced_load"] = paced

        repository = _repository(bucket)
        recovery = LocalRecovery(lifecycle, NAMESPACE, NAME)
        clock = time.perf_counter()
        record = pitr_restore.apply_point_in_time(
            repository, recovery, NAMESPACE, NAME, pitr.RecoveryTarget(latest=True)
        )
        recover_seconds = time.perf_counter() - clock
        raw = _pg_basebackup(lifecycle, work / "raw")
        with _connect(lifecycle) as conn:
            size = int(conn.execute("SELECT pg_database_size('postgres')").fetchone()[0])
        result["recovery"] = {
            "phase": record["phase"],
            "database_mb": round(size / MB),
            "wal_replayed_mb": round(
                result["archiving_under_load"]["wal_mb_written"]
                + result["archiving_paced_load"]["wal_mb_written"],
                1,
            ),
            "seconds": round(recover_seconds, 1),
            "pg_basebackup_seconds_same_data": round(raw, 1),
        }
    result.update(
        {
            "total_seconds": round(time.perf_counter() - began, 1),
            "notes": [
                "ratio_*: raw seconds / our seconds (1.0: as fast as the raw tool; higher: faster)",
                "base backup: barman-cloud-backup to S3 (SeaweedFS on this host) against pg_basebackup "
                "-X fetch to the local disk of the same server; pg_basebackup_streamed_to_s3: "
                "pg_basebackup -Ft -D - -X none piped into boto3's multipart upload to the same S3 (the "
                "floor of any base backup to this S3 server)",
                "barman_peak_rss_mib: ru_maxrss of the largest barman process of the run",
                "archiving_under_load: backlog = segments between the one being written and the last "
                "archived; backlog_grows: second half's mean over the first half's by more than 2",
                "archiving_under_load: the writer as fast as it goes (it shares the 2 cores with the "
                "archiver and S3); archiver_alone_mb_per_s: the backlog left at its end over the "
                "seconds to upload it with no writer; archiving_paced_load: the writer paced to half "
                "of that",
                "recovery: apply_point_in_time to the end of the archive: data set aside, base backup "
                "restored from S3, the load's WAL replayed, promoted",
            ],
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    print(json.dumps(result, indent=2))
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[SECTION] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
