"""Process and port facts shared by everything that runs servers on this host (the local runtime's
members, the local redis-shake workloads): read from /proc and the socket layer, no state."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def process_start_time(pid: int) -> str | None:
    """``pid``'s start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None when it
    is gone or a zombie. Recorded with a PID, it tells our process from a later one that reuses it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after the closing parenthesis are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state == "Z" else start


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child: an unreaped child lingers as a zombie, whose /proc
    entry would read as "alive"."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind ``host:port`` now. Servers bind with SO_REUSEADDR (Redis, Go's
    listeners), so a port whose last owner died and left connections in TIME_WAIT counts as free:
    a restarted member or workload must get its old address back (peers and sources know it by it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
