"""``kubectl port-forward`` to a Service, for the CLI's interactive clients (``moorage connect --exec
--runtime kubernetes``): the engine's own client then runs on this machine against 127.0.0.1, the same
command as on the local runtime. kubectl is the one tool every Kubernetes user has that speaks the
API's streaming port-forward protocol; it reads the same ``$KUBECONFIG``."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from middleware.endpoints import Endpoint
from middleware.errors import MoorageError

# kubectl prints this once the local port listens.
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")
START_TIMEOUT = 30.0


@contextmanager
def port_forward(namespace: str, service: str, port: int) -> Iterator[Endpoint]:
    """A local address forwarding to ``service``'s ``port`` (a pod kubectl picks behind it) until the
    block ends. MoorageError, with kubectl's own words, when it cannot be set up."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise MoorageError("kubectl not found on PATH: it is needed to reach the Service from this machine")
    process = subprocess.Popen(
        [kubectl, "port-forward", "-n", namespace, f"svc/{service}", f":{port}", "--address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[int] = []
    ready = threading.Event()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:  # kept draining, so kubectl never blocks on a full pipe
            match = _FORWARDING.search(line)
            if match and not found:
                found.append(int(match.group(1)))
                ready.set()
        ready.set()  # kubectl exited

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        ready.wait(START_TIMEOUT)
        if not found:
            process.terminate()
            error = process.stderr.read().strip() if process.stderr is not None else ""
            raise MoorageError(
                f"kubectl port-forward to svc/{service} in {namespace} did not start: {error or 'no answer'}"
            )
        yield Endpoint("127.0.0.1", found[0])
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
