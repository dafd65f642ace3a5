"""Install ``deploy/`` on the test control plane, and act as the operator's ServiceAccount.

Shared by test_install.py and test_rbac.py. The install is one server-side apply with
``--force-conflicts``: the session's ``crds`` fixture may have created the same CRDs already.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.controlplane import REPO_ROOT, ControlPlane

DEPLOY_DIR = REPO_ROOT / "deploy"
NAMESPACE = "moorage-system"
SERVICE_ACCOUNT = "moorage-operator"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
ESTABLISH_TIMEOUT = 60.0


def build() -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/`` (no cluster needed), as documents."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl not found on PATH"
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY_DIR)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize deploy/ failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def wait_established(plane: ControlPlane, names: tuple[str, ...]) -> None:
    plane.kubectl(
        "wait", "--for=condition=Established", f"--timeout={int(ESTABLISH_TIMEOUT)}s",
        *(f"crd/{n}" for n in names),
    )  # fmt: skip


def install(plane: ControlPlane) -> str:
    """Apply deploy/ the documented way: one ``kubectl apply -k``. Returns its output."""
    args = ("apply", "--server-side", "--force-conflicts", "-k", str(DEPLOY_DIR))
    result = plane.kubectl(*args)
    wait_established(plane, PEERING_CRDS)
    return str(result.stdout)


def service_account_token(plane: ControlPlane, seconds: int = 3600) -> str:
    """A bound token for the operator's ServiceAccount through the TokenRequest API."""
    token = plane.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={seconds}s"
    ).stdout.strip()
    assert token.count(".") == 2, "TokenRequest did not return a JWT"
    return token


def token_kubeconfig(plane: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with nothing but ``token``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": plane.server, "certificate-authority": str(plane.ca_file)}}
        ],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def wait_for(what: str, probe: Any, timeout: float = 120.0, interval: float = 0.5) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
