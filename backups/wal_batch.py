"""Upload a batch of WAL segments to a barman cloud archive in one process.

``python - [--waldump PATH] SPOOL FIRST [AHEAD...] -- BARMAN_ARGS...`` (the archive script feeds
this file's text to barman's own interpreter on stdin): FIRST is the path of the segment
PostgreSQL asked for, AHEAD the names of those it will ask for next (in the same directory). Every
one is uploaded at once, each in its own thread, with barman's library (the same
``CloudWalUploader`` that ``barman-cloud-wal-archive`` runs, its arguments parsed by the same
parser, so the archive's layout is barman's own). The exit code is FIRST's: PostgreSQL keeps a
segment whose upload failed and asks again. Each AHEAD uploaded is noted as an empty file in SPOOL;
a failed one is not, so it is uploaded again when asked for.

Why one process: barman's tool is one process per segment, and starting one (the interpreter,
boto3, barman) costs about as much CPU as uploading a 16 MB segment; under a write load that start
is what made the archiver fall behind (bench/results.json, ``pitr``).

Each segment is also searched for restore points (``pg_create_restore_point``) with
``pg_waldump --rmgr=XLOG``, given as ``--waldump PATH`` (milliseconds per segment), and what it
found is written next to barman's layout, after the segment itself:
``restore-points/SEGMENT/LSN.NAME`` (the LSN as 16 hex digits, the name's UTF-8 bytes in hex) for
each, then ``restore-points/SEGMENT/scanned`` last, or ``.../failed`` (holding the reason) when
pg_waldump could not read it. ``restore plan`` reads these keys (backups/pitr.py) to refuse a
restore point the WAL never names, and to start from a base backup that ends before it, instead of
a recovery that fails at the end of the archive. A search that fails never fails the archiving.

Runs as a script (by barman's interpreter), so it imports nothing of Moorage: only the standard
library and barman.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

SEGMENT = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
SEGMENT_BYTES = 16 << 20  # PostgreSQL's default segment size, and ours
# pg_waldump's line for a restore point: "... lsn: 0/0920F010, prev 0/0920EEE8, desc: RESTORE_POINT NAME"
RESTORE_POINT = re.compile(
    r"lsn: ([0-9A-F]+)/([0-9A-F]+), prev [0-9A-F]+/[0-9A-F]+, desc: RESTORE_POINT (.*)$"
)
INDEX = "restore-points"


def restore_points(waldump: str, path: str) -> tuple[list[tuple[int, str]], str | None]:
    """The restore points in segment ``path`` as (LSN, name), and why the search failed (None: it
    read the whole segment). A record that runs into the next segment is read from there (pg_wal
    holds it: the server is writing past the segment it archives)."""
    found = SEGMENT.fullmatch(os.path.basename(path))
    assert found is not None
    timeline, log, number = (int(part, 16) for part in found.groups())
    start = log * (1 << 32) + number * SEGMENT_BYTES
    end = start + SEGMENT_BYTES

    def lsn(value: int) -> str:
        return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

    command = [waldump, "--path", os.path.dirname(path) or ".", "--rmgr=XLOG", f"--timeline={timeline}"]
    command += [f"--start={lsn(start)}", f"--end={lsn(end)}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"{waldump}: {exc}"
    points = []
    for line in done.stdout.splitlines():
        record = RESTORE_POINT.search(line)
        if record:
            points.append(((int(record[1], 16) << 32) + int(record[2], 16), record[3]))
    if done.returncode != 0:
        return points, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return points, None


def index_restore_points(interface: Any, server_name: str, waldump: str | None, path: str) -> None:
    """Write what the search of segment ``path`` found (see the module's doc); S3 errors raise."""
    name = os.path.basename(path)
    if not SEGMENT.fullmatch(name):
        return  # a history file, a .partial or .backup label: no records to search
    if waldump:
        points, failure = restore_points(waldump, path)
    else:
        points, failure = [], "no pg_waldump given (--waldump)"
    # barman's own layout: os.path.join(interface.path, server_name, "wals", ...) (cloud_walarchive)
    prefix = "/".join(p for p in (interface.path, server_name, INDEX, name) if p)
    upload = interface.upload_fileobj
    for lsn, point in points:
        upload(io.BytesIO(b""), f"{prefix}/{lsn:016X}.{point.encode().hex()}")
    if failure is None:
        upload(io.BytesIO(b""), f"{prefix}/scanned")
    else:
        upload(io.BytesIO(failure.encode()), f"{prefix}/failed")


def upload(path: str, barman_args: list[str], waldump: str | None = None) -> None:
    """One segment, exactly as ``barman-cloud-wal-archive BARMAN_ARGS PATH`` uploads it, then its
    restore points (``index_restore_points``)."""
    from barman.clients.cloud_walarchive import CloudWalUploader, parse_arguments
    from barman.cloud_providers import get_cloud_interface
    from barman.xlog import is_any_xlog_file

    if not is_any_xlog_file(path):
        raise ValueError(f"{path} is not the name of a WAL file")
    config = parse_arguments([*barman_args, path])
    # One cloud interface per thread: boto3 sessions are not meant to be shared between threads.
    interface = get_cloud_interface(config)
    with closing(interface):
        uploader = CloudWalUploader(
            cloud_interface=interface,
            server_name=config.server_name,
            compression=config.compression,
            compression_level=config.compression_level,
        )
        uploader.upload_wal(path)
        index_restore_points(interface, config.server_name, waldump, path)


def main(argv: list[str]) -> int:
    waldump = None
    if argv[:1] == ["--waldump"]:
        waldump, argv = argv[1], argv[2:]
    if "--" not in argv or argv.index("--") < 2:
        print(
            "usage: wal_batch.py [--waldump PATH] SPOOL FIRST [AHEAD...] -- BARMAN_ARGS...", file=sys.stderr
        )
        return 2
    split = argv.index("--")
    spool, first, barman_args = argv[0], argv[1], argv[split + 1 :]
    paths = [first, *(os.path.join(os.path.dirname(first), name) for name in argv[2:split])]
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {path: pool.submit(upload, path, barman_args, waldump) for path in paths}
    code = 0
    for path, future in futures.items():
        error = future.exception()
        if path == first:
            if error is not None:
                print(f"archiving {path} failed: {error}", file=sys.stderr)
                code = 1
        elif error is None:
            with open(os.path.join(spool, os.path.basename(path)), "w"):
                pass
        else:
            print(
                f"uploading {path} ahead failed (it is tried again when asked for): {error}", file=sys.stderr
            )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
