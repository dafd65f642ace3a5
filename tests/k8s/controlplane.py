"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd + kube-apiserver (+ controller-manager).

Started the way controller-runtime's envtest starts one: every listener is bound to 127.0.0.1 on a
free port, state lives in a temporary directory, and every process is stopped by its own PID
(SIGTERM, then SIGKILL after a deadline). There is no kubelet and no scheduler: pods are created
(by the StatefulSet controller, for example) but stay Pending; a test that needs a Running or Ready
pod writes that status itself through the pods/status subresource.

The binaries come from ``hack/build-control-plane.sh``, cached by version under
``$MOORAGE_K8S_CACHE`` (default ``~/.cache/moorage/k8s``): ``<version>/{kube-apiserver,
kube-controller-manager,etcd}``.

Certificates and keys are made with the ``openssl`` CLI (the ``cryptography`` package is not a
dependency): a throw-away CA, the apiserver's serving certificate for 127.0.0.1/localhost, and an
RSA service-account signing key pair. The admin user authenticates with a static token and is in
``system:masters``; authorization is RBAC.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

HOST = "127.0.0.1"
K8S_VERSION = os.environ.get("MOORAGE_K8S_VERSION", "v1.36.3")
BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/16"  # no traffic goes there; room for the bench's 500 ClusterIPs
START_TIMEOUT = 180.0  # a cold apiserver on a busy 2-core machine takes 20-60 s
STOP_TIMEOUT = 15.0
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_HINT = (
    "run `hack/build-control-plane.sh` (or `make test-k8s`), takes ~20-30 min the first time; "
    "binaries are cached in $MOORAGE_K8S_CACHE (default ~/.cache/moorage/k8s)"
)

_RUNNING: set[ControlPlane] = set()


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the failing process's log tail."""


def cache_dir() -> Path:
    root = os.environ.get("MOORAGE_K8S_CACHE") or str(Path.home() / ".cache" / "moorage" / "k8s")
    return Path(root) / K8S_VERSION


def missing_binaries(bin_dir: Path | None = None) -> list[str]:
    """Names of the cached binaries that are absent or not executable."""
    directory = bin_dir or cache_dir()
    return [name for name in BINARIES if not os.access(directory / name, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: its own session, and SIGKILL if the test process dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_pki(directory: Path) -> dict[str, Path]:
    """CA, serving cert for 127.0.0.1/localhost, service-account key pair. Returns the file paths."""
    if shutil.which("openssl") is None:
        raise ControlPlaneError("openssl not found (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = moorage-test-ca\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
    )
    (directory / "serving.ext").write_text(
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
             "-config", "ca.cnf", "-extensions", "v3_ca", cwd=directory)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "serving.key", "-out", "serving.csr",
             "-subj", "/CN=kube-apiserver", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "serving.crt", "-days", "7", "-extfile", "serving.ext", cwd=directory)  # fmt: skip
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=directory
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return {
        "ca_crt": directory / "ca.crt",
        "ca_key": directory / "ca.key",
        "serving_crt": directory / "serving.crt",
        "serving_key": directory / "serving.key",
        "sa_key": directory / "sa.key",
        "sa_pub": directory / "sa.pub",
    }


class _Process:
    """One control-plane binary in its own session, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # own session + SIGKILL when pytest dies: no orphans
        )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            code = self.popen.returncode
            raise ControlPlaneError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_until(what: str, probe: Callable[[], bool], deadline: float, processes: Sequence[_Process]) -> None:
    last_error = ""
    while True:
        for process in processes:
            process.check_alive()
        try:
            if probe():
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{_tail(p.log_path, 20)}" for p in processes)
            raise ControlPlaneError(f"timed out waiting for {what} (last error: {last_error})\n{logs}")
        time.sleep(0.5)


def _https_get(url: str, context: ssl.SSLContext, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1; ``with ControlPlane(dir) as cp:``."""

    def __init__(
        self,
        workdir: Path,
        *,
        bin_dir: Path | None = None,
        with_controller_manager: bool = True,
        disable_service_account_admission: bool | None = None,
        start_timeout: float = START_TIMEOUT,
        extra_apiserver_flags: Sequence[str] = (),
        extra_controller_manager_flags: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir or cache_dir()
        self.with_controller_manager = with_controller_manager
        # Without the controller-manager nothing creates each namespace's "default" ServiceAccount, and
        # the ServiceAccount admission plugin would refuse every pod; envtest disables it for that reason.
        self.disable_service_account_admission = (
            not with_controller_manager
            if disable_service_account_admission is None
            else disable_service_account_admission
        )
        self.start_timeout = start_timeout
        self.extra_apiserver_flags = list(extra_apiserver_flags)
        self.extra_controller_manager_flags = list(extra_controller_manager_flags)
        self.token = secrets.token_hex(24)
        self.etcd_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self.processes: list[_Process] = []
        self.pki: dict[str, Path] = {}

    # ------------------------------------------------------------------ paths
    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def ca_file(self) -> Path:
        return self.pki["ca_crt"]

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"{path} not found or not executable: {BUILD_HINT}")
        return str(path)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(f"missing {', '.join(missing)} in {self.bin_dir}: {BUILD_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.pki = make_pki(self.workdir / "pki")
        _RUNNING.add(self)
        try:
            deadline = time.monotonic() + self.start_timeout
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._write_kubeconfig()
            if self.with_controller_manager:
                self._start_controller_manager(deadline)
                self._wait_default_service_account(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process by its PID, newest first: SIGTERM, then SIGKILL after a deadline."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        _RUNNING.discard(self)

    # ------------------------------------------------------------------ etcd
    def _start_etcd(self, deadline: float) -> None:
        self.etcd_port = free_port()
        peer_port = free_port()
        client_url = f"http://{HOST}:{self.etcd_port}"
        peer_url = f"http://{HOST}:{peer_port}"
        data_dir = self.workdir / "etcd-data"
        data_dir.mkdir(exist_ok=True)
        process = _Process(
            "etcd",
            [
                self._binary("etcd"),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # test data only: no fsync keeps a busy disk from stalling it
                "--log-level=warn",
            ],
            self.logs_dir / "etcd.log",
        )
        self.processes.append(process)
        process.start()

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=5) as response:
                return b'"health":"true"' in response.read()

        _wait_until("etcd /health", healthy, deadline, [process])

    # ------------------------------------------------------------------ kube-apiserver
    def _start_apiserver(self, deadline: float) -> None:
        self.apiserver_port = free_port()
        cert_dir = self.workdir / "apiserver-certs"
        cert_dir.mkdir(exist_ok=True)
        token_file = self.workdir / "tokens.csv"
        token_file.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        token_file.chmod(0o600)
        flags = [
            self._binary("kube-apiserver"),
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={cert_dir}",
            f"--tls-cert-file={self.pki['serving_crt']}",
            f"--tls-private-key-file={self.pki['serving_key']}",
            f"--client-ca-file={self.pki['ca_crt']}",
            f"--etcd-servers=http://{HOST}:{self.etcd_port}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://localhost:{self.apiserver_port}/",
            f"--service-account-key-file={self.pki['sa_pub']}",
            f"--service-account-signing-key-file={self.pki['sa_key']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # the "kubernetes" Service's Endpoints would be 127.0.0.1, which Endpoints validation refuses
            # (an error logged every 10 s); nothing here routes to it anyway
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]
        if self.disable_service_account_admission:
            flags.append("--disable-admission-plugins=ServiceAccount")
        flags += self.extra_apiserver_flags
        process = _Process("kube-apiserver", flags, self.logs_dir / "kube-apiserver.log")
        self.processes.append(process)
        process.start()
        context = ssl.create_default_context(cafile=str(self.pki["ca_crt"]))

        def ready() -> bool:
            status, _ = _https_get(f"{self.server}/readyz", context, self.token)
            return status == 200

        _wait_until("kube-apiserver /readyz", ready, deadline, self.processes)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "moorage-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki["ca_crt"])},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "moorage-test",
                    "context": {"cluster": "moorage-test", "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": "moorage-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    # ------------------------------------------------------------------ kube-controller-manager
    def _start_controller_manager(self, deadline: float) -> None:
        self.controller_manager_port = free_port()
        cert_dir = self.workdir / "controller-manager-certs"
        cert_dir.mkdir(exist_ok=True)
        kubeconfig = str(self.kubeconfig)
        flags = [
            self._binary("kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={cert_dir}",
            "--leader-elect=false",
            # All default controllers except the ones that need a cloud provider (there is none).
            "--controllers=*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller",
            f"--service-account-private-key-file={self.pki['sa_key']}",
            f"--root-ca-file={self.pki['ca_crt']}",
            f"--cluster-signing-cert-file={self.pki['ca_crt']}",
            f"--cluster-signing-key-file={self.pki['ca_key']}",
            "--profiling=false",
            "--v=1",
            *self.extra_controller_manager_flags,
        ]
        process = _Process("kube-controller-manager", flags, self.logs_dir / "kube-controller-manager.log")
        self.processes.append(process)
        process.start()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; a local health probe only

        def healthy() -> bool:
            status, _ = _https_get(f"https://{HOST}:{self.controller_manager_port}/healthz", insecure)
            return status == 200

        _wait_until("kube-controller-manager /healthz", healthy, deadline, self.processes)

    def _wait_default_service_account(self, deadline: float) -> None:
        """Pods are admitted only once the namespace's "default" ServiceAccount exists."""
        context = ssl.create_default_context(cafile=str(self.pki["ca_crt"]))

        def exists() -> bool:
            url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
            status, _ = _https_get(url, context, self.token)
            return status == 200

        _wait_until("the default ServiceAccount", exists, deadline, self.processes)

    # ------------------------------------------------------------------ clients
    def get(self, path: str) -> tuple[int, str]:
        """GET a raw apiserver path as the admin user: (HTTP status, body)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return _https_get(f"{self.server}{path}", context, self.token)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ControlPlaneError("kubectl not found on PATH")
        result = subprocess.run(
            [kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result


@atexit.register
def _stop_leftovers() -> None:
    for control_plane in list(_RUNNING):
        control_plane.stop()
