"""The local cluster for end-to-end tests: real kubelet, containerd, pod network, DNS, kube-proxy.

Tests here act only through the Kubernetes API, as a user would: they apply custom resources,
read objects and status, run clients in pods (``kubectl exec`` or pods of their own) and delete
pods to make faults. They never start an engine process, never mark a pod Ready and never patch a
status. The operator runs in the cluster from its image (``hack/cluster/deploy``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "hack" / "cluster" / "cluster.py"
GROUP, VERSION = "moorage.io", "v1alpha1"
# Engines on one 2-core node: a small request each, so a 6-member cluster and a writer fit at once.
SMALL = {"cpu": "100m", "memory": "192Mi"}


class LocalCluster:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        from kubernetes import client, config

        self.api = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # ---------------------------------------------------------------- kubectl

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def exec(
        self,
        namespace: str,
        pod: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        timeout: float = 120,
        check: bool = True,
    ) -> str:
        args = ["-n", namespace, "exec", pod]
        if container:
            args += ["-c", container]
        return self.kubectl(*args, "--", *command, timeout=timeout, check=check)

    def apply(self, doc: Mapping[str, Any], namespace: str | None = None) -> None:
        args = ["apply", "--server-side", "--field-manager=e2e", "-f", "-"]
        if namespace:
            args = ["-n", namespace, *args]
        self.kubectl(*args, stdin=yaml.safe_dump(dict(doc)))

    # ---------------------------------------------------------------- namespaces

    def new_namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def delete_namespace(self, name: str, timeout: float = 180) -> None:
        """Middlewares first while the operator runs (its finalizer), then the namespace."""
        for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, name, "middlewares")["items"]:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, name, "middlewares", item["metadata"]["name"]
            )
        wait_for(
            f"middlewares in {name} deleted",
            lambda: (
                not self.custom.list_namespaced_custom_object(GROUP, VERSION, name, "middlewares")["items"]
            ),
            timeout,
        )
        self.core.delete_namespace(name)

    # ---------------------------------------------------------------- Middleware

    def middleware(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares", name)

    def create_middleware(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        self.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Middleware",
                "metadata": {"name": name, "namespace": namespace},
                "spec": dict(spec),
            },
            namespace,
        )

    def patch_middleware(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "middlewares", name, {"spec": dict(spec)}
        )

    def wait_ready(
        self, namespace: str, name: str, timeout: float = 300, *, generation_at_least: int | None = None
    ) -> dict[str, Any]:
        """Until status says Ready for the current generation; on timeout, what the cluster shows."""

        def ready() -> dict[str, Any] | None:
            mw = self.middleware(namespace, name)
            status = mw.get("status") or {}
            generation = mw["metadata"].get("generation")
            if generation_at_least is not None and (generation or 0) < generation_at_least:
                return None
            if status.get("observedGeneration") != generation or status.get("phase") != "Ready":
                return None
            return mw

        try:
            return wait_for(f"Middleware {namespace}/{name} Ready", ready, timeout, interval=1.0)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.describe(namespace)}") from None

    def describe(self, namespace: str) -> str:
        """What a user would look at when something hangs: status, pods, events, operator log."""
        parts = [self.kubectl("-n", namespace, "get", "mw,pods,pvc", "-o", "wide", check=False)]
        for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "middlewares")[
            "items"
        ]:
            parts.append(json.dumps(item.get("status"), indent=1)[:3000])
        parts.append(
            self.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)[-4000:]
        )
        parts.append(self.operator_log(tail=60))
        parts.extend(self._unready_container_logs(namespace))  # last: a cut output keeps its end
        return "\n".join(parts)

    def _unready_container_logs(self, namespace: str, tail: int = 30) -> list[str]:
        """The last lines of every container, init ones included, that is not running ready or
        has restarted: a crash-looping init container says why only in its own log."""
        parts = []
        for pod in self.core.list_namespaced_pod(namespace).items:
            statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
            for status in statuses:
                terminated_ok = status.state.terminated is not None and status.state.terminated.exit_code == 0
                if (status.ready or terminated_ok) and not status.restart_count:
                    continue
                for previous in (False, True) if status.restart_count else (False,):
                    args = ["-n", namespace, "logs", pod.metadata.name, "-c", status.name, f"--tail={tail}"]
                    log = self.kubectl(*args, *(["--previous"] if previous else []), check=False)
                    which = "previous" if previous else "current"
                    parts.append(f"--- {pod.metadata.name}/{status.name} ({which}) ---\n{log}")
        return parts

    def operator_log(self, tail: int = 100) -> str:
        return self.kubectl(
            "-n", "moorage-system", "logs", "deploy/moorage-operator", f"--tail={tail}", check=False
        )

    # ---------------------------------------------------------------- pods

    def pods(self, namespace: str, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def password(self, namespace: str, name: str) -> str:
        import base64

        secret = self.core.read_namespaced_secret(f"{name}-credentials", namespace)
        return base64.b64decode(secret.data["password"]).decode()

    def delete_pods(self, namespace: str, names: Sequence[str], *, graceful: bool = False) -> dict[str, str]:
        """Delete pods: at once by default (grace 0: a crash, no preStop), or as `kubectl delete pod`
        does (preStop hooks and the grace period). Returns their old UIDs."""
        uids = {}
        for name in names:
            pod = self.core.read_namespaced_pod(name, namespace)
            uids[name] = pod.metadata.uid
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=None if graceful else 0)
        return uids

    def wait_replaced(self, namespace: str, uids: Mapping[str, str], timeout: float = 180) -> None:
        def replaced() -> bool:
            for name, uid in uids.items():
                try:
                    pod = self.core.read_namespaced_pod(name, namespace)
                except Exception:
                    return False
                if pod.metadata.uid == uid or not _pod_ready(pod):
                    return False
            return True

        wait_for(f"pods {sorted(uids)} replaced and Ready", replaced, timeout, interval=1.0)

    def run_pod(
        self,
        namespace: str,
        name: str,
        image: str,
        script: str,
        *,
        env: Mapping[str, str] | None = None,
        restart: str = "Never",
        service_account: str | None = None,
        user: int = 999,
        env_from_secret: str | None = None,
    ) -> None:
        """A client pod running ``sh -c script`` (the engine images carry their clients).
        ``service_account``: the pod talks to the API as it (its token mounted);
        ``env_from_secret``: every key of that Secret as an environment variable."""
        self.core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": {"e2e-client": name}},
                "spec": {
                    "restartPolicy": restart,
                    "terminationGracePeriodSeconds": 1,
                    **(
                        {"serviceAccountName": service_account, "automountServiceAccountToken": True}
                        if service_account
                        else {}
                    ),
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "client",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                            **(
                                {"envFrom": [{"secretRef": {"name": env_from_secret}}]}
                                if env_from_secret
                                else {}
                            ),
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": user,
                                "allowPrivilegeEscalation": False,
                            },
                        }
                    ],
                },
            },
        )

    def moorage(
        self, *args: str, timeout: float = 900, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The ``moorage`` CLI as a DBA runs it against this cluster (``--runtime kubernetes``)."""
        return subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "moorage"), *args],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "MOORAGE_RUNTIME": "kubernetes"},
            input=stdin,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        if container is None:
            return str(self.core.read_namespaced_pod_log(name, namespace))
        return str(self.core.read_namespaced_pod_log(name, namespace, container=container))

    def wait_pod_phase(self, namespace: str, name: str, phases: Sequence[str], timeout: float = 120) -> str:
        def phase() -> str | None:
            current = self.core.read_namespaced_pod(name, namespace).status.phase
            return current if current in phases else None

        return wait_for(f"pod {name} in {phases}", phase, timeout, interval=1.0)


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Until ``probe()`` is truthy; an exception counts as "not yet" (a pod restarting, a refused
    connection) and the last one is in the timeout's message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def cluster_command(command: str, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(REPO_ROOT / ".venv" / "bin" / "python"), str(CLUSTER_SCRIPT), command]
    if state_dir is not None:
        args += ["--state-dir", str(state_dir)]
    return subprocess.run(args, text=True, capture_output=True, timeout=900, env={**os.environ})


def shell(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)
