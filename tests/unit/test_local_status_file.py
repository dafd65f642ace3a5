"""The local runtime's status file is replaced atomically: a reader in another process (``moorage
status`` while ``moorage set`` restarts members and saves the status) never reads a truncated file.
Once, in CI, a `set` read its own status file empty while another writer was rewriting it
(json.decoder.JSONDecodeError: Expecting value)."""

from __future__ import annotations

import threading
from pathlib import Path

from middleware.runtime.local import LocalRuntime

# Large enough that writing it takes more than one write() call.
STATUS = {"phase": "Ready", "members": [{"name": f"m-{i}", "message": "x" * 200} for i in range(400)]}


def test_a_reader_never_sees_a_half_written_status(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path)
    runtime.save_status("default", "scenario", STATUS)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            runtime.save_status("default", "scenario", STATUS)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reads = [runtime.load_status("default", "scenario") for _ in range(1000)]
    finally:
        stop.set()
        thread.join()
    assert all(read == STATUS for read in reads)
    # Nothing left beside it: each writer's scratch file was renamed into place.
    assert (
        sorted(p.name for p in (tmp_path / "default" / "scenario").iterdir() if p.name.startswith(".")) == []
    )
