"""Upload a batch of WAL segments to a barman cloud archive in one process.

``python - SPOOL FIRST [AHEAD...] -- BARMAN_ARGS...`` (the archive script feeds this file's text to
barman's own interpreter on stdin): FIRST is the path of the segment PostgreSQL asked for, AHEAD
the names of those it will ask for next (in the same directory). Every one is uploaded at once,
each in its own thread, with barman's library (the same ``CloudWalUploader`` that
``barman-cloud-wal-archive`` runs, its arguments parsed by the same parser, so the archive's layout
is barman's own). The exit code is FIRST's: PostgreSQL keeps a
segment whose upload failed and asks again. Each AHEAD uploaded is noted as an empty file in SPOOL;
a failed one is not, so it is uploaded again when asked for.

Why one process: barman's tool is one process per segment, and starting one (the interpreter,
boto3, barman) costs about as much CPU as uploading a 16 MB segment; under a write load that start
is what made the archiver fall behind (bench/results.json, ``pitr``).

Runs as a script (by barman's interpreter), so it imports nothing of Moorage: only the standard
library and barman.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing


def upload(path: str, barman_args: list[str]) -> None:
    """One segment, exactly as ``barman-cloud-wal-archive BARMAN_ARGS PATH`` uploads it."""
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


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") < 2:
        print("usage: wal_batch.py SPOOL FIRST [AHEAD...] -- BARMAN_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    spool, first, barman_args = argv[0], argv[1], argv[split + 1 :]
    paths = [first, *(os.path.join(os.path.dirname(first), name) for name in argv[2:split])]
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {path: pool.submit(upload, path, barman_args) for path in paths}
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
