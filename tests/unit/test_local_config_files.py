"""The local runtime rewrites a server's config file while the server may read or rewrite it."""

from __future__ import annotations

import threading
from pathlib import Path

from middleware.runtime.local import log_tail, replace_config

ZOO_CFG = "".join(f"key{i}={i * 1000}\n" for i in range(400))


def test_an_unchanged_config_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "zoo.cfg"
    path.write_text(ZOO_CFG)
    before = path.stat()
    replace_config(path, ZOO_CFG)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_changed_config_keeps_its_mode_and_no_scratch_file(tmp_path: Path) -> None:
    path = tmp_path / "redis.conf"
    path.write_text("port 1\n")
    path.chmod(0o640)
    replace_config(path, "port 2\n")
    assert path.read_text() == "port 2\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["redis.conf"]


def test_a_reader_never_sees_a_half_written_config(tmp_path: Path) -> None:
    # What a starting server does: read the whole file at any moment during the rewrites.
    path = tmp_path / "zoo.cfg"
    path.write_text(ZOO_CFG)
    versions = {ZOO_CFG, ZOO_CFG + "tickTime 3000\n"}
    seen: list[str] = []
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            seen.append(path.read_text())

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for round_ in range(300):
            replace_config(path, ZOO_CFG + ("tickTime 3000\n" if round_ % 2 == 0 else ""))
    finally:
        done.set()
        reader.join()
    assert seen, "the reader never ran"
    torn = [text for text in seen if text not in versions]
    assert not torn, f"{len(torn)} of {len(seen)} reads saw a partial file, e.g. {len(torn[0])} bytes"


def test_a_members_log_tail_keeps_the_reason_of_a_java_stack_trace() -> None:
    log = "\n".join(
        [
            "INFO starting",
            "ERROR Invalid config, exiting abnormally",
            "org.apache.zookeeper.server.quorum.QuorumPeerConfig$ConfigException: Error processing zoo.cfg",
            "\tat org.apache.zookeeper.server.quorum.QuorumPeerConfig.parse(QuorumPeerConfig.java:198)",
            'Caused by: java.lang.NumberFormatException: For input string: ""',
            *[f"\tat frame{i}" for i in range(12)],
            "\t... 2 more",
            "Invalid config, exiting abnormally",
        ]
    )
    tail = log_tail(log, 3).splitlines()
    assert tail[0] == 'Caused by: java.lang.NumberFormatException: For input string: ""'
    assert tail[-3:] == ["\tat frame11", "\t... 2 more", "Invalid config, exiting abnormally"]
    assert log_tail("one\ntwo\nthree", 2) == "two\nthree"
