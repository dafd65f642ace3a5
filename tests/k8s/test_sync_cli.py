"""``moorage sync status|start|stop|reverse|cutover`` on a real kube-apiserver with the operator running.

The RedisSync's sides are real redis-server processes given by ``addresses``. There is no kubelet,
so the test does the kubelet's part for the one workload: it runs the real redis-shake
(``hack/build-redis-shake.sh``) on the ``shake.toml`` the operator rendered into the workload's
config Secret (only ``advanced.dir``, the pod's scratch volume, points at a temporary directory), and
stops it once the operator deleted the Deployment. The data reaches the target through redis-shake;
the cutover finds its connection on the source, drains, verifies and stops the sync.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.harness import RedisNodes, RedisProcess, require_binary
from tests.integration.shake_harness import ShakeProcess, shake_binary
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kopf_support import GROUP, VERSION, core_api, custom_api, wait_for
from tests.k8s.test_sync_operator import _deployments, _name, _status, operator

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "cli s3cret"
STATUS_PORT = 8080  # sync/shake_config.STATUS_PORT: what redis-shake announces as its listening port


def _cli(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "operators.cli", "sync", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
        check=False,
    )


def _run_workload(api_client: Any, namespace: str, workload: str, binary: str, scratch: Path) -> ShakeProcess:
    """The kubelet's part: redis-shake on the config the operator rendered into ``<workload>-config``,
    with the pod's scratch volume (``advanced.dir``) in ``scratch``."""
    import base64
    import tomllib

    from sync.shake_config import CONFIG_FILE

    secret = core_api(api_client).read_namespaced_secret(f"{workload}-config", namespace)
    text = base64.b64decode(secret.data[CONFIG_FILE]).decode()
    rendered_dir = tomllib.loads(text)["advanced"]["dir"]
    assert tomllib.loads(text)["advanced"]["status_port"] == STATUS_PORT
    scratch.mkdir(parents=True)
    config = scratch / CONFIG_FILE
    config.write_text(text.replace(json.dumps(rendered_dir), json.dumps(str(scratch / "shake")), 1))
    config.chmod(0o600)
    assert tomllib.loads(config.read_text())["advanced"]["dir"] == str(scratch / "shake")
    return ShakeProcess(binary, config).start()


def _paused(process: RedisProcess) -> bool:
    client = process.client(socket_timeout=0.5)
    try:
        client.delete("cli:probe")  # a write that leaves no key behind
        return False
    except redis.TimeoutError:
        return True
    finally:
        client.close()


def test_status_direction_changes_and_cutover_from_the_cli(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    require_binary("redis-server", "redis-server")
    binary = shake_binary()
    nodes = RedisNodes(tmp_path / "redis", password=PASSWORD)
    sync = _name("rs")
    shake: ShakeProcess | None = None
    try:
        source = nodes.add("source", cluster=False)
        target = nodes.add("target", cluster=False)
        with source.client() as client:
            for i in range(300):
                client.set(f"order:{i}", f"v{i}")
        core_api(api_client).create_namespaced_secret(
            namespace,
            {"metadata": {"name": "redis-pass"}, "stringData": {"password": PASSWORD}},
        )
        password = {"name": "redis-pass", "key": "password"}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RedisSync",
            "metadata": {"name": sync},
            "spec": {
                "source": {
                    "addresses": [source.endpoint.address],
                    "kind": "standalone",
                    "password": password,
                },
                "target": {
                    "addresses": [target.endpoint.address],
                    "kind": "standalone",
                    "password": password,
                },
            },
        }
        with operator(control_plane, api_client, namespace):
            custom_api(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "redissyncs", body
            )
            wait_for(
                "the forward workload", lambda: sync in _deployments(api_client, namespace, sync), timeout=120
            )
            wait_for(
                "status written",
                lambda: _status(api_client, namespace, "redissyncs", sync).get("workloads"),
                timeout=60,
            )

            shown = _cli(control_plane, "status", sync, "-n", namespace, "-o", "json")
            assert shown.returncode == 0, shown.stderr
            doc = json.loads(shown.stdout)
            assert doc["direction"] == "Forward" and doc["deployments"] == {sync: "forward"}
            assert [w["name"] for w in doc["workloads"]] == [sync]
            assert doc["workloads"][0]["source"] == source.endpoint.address
            assert PASSWORD not in shown.stdout and PASSWORD not in shown.stderr
            table = _cli(control_plane, "status", sync, "-n", namespace)
            assert table.returncode == 0 and sync in table.stdout and "Forward" in table.stdout

            # No redis-shake connected to the source: refused before anything is touched.
            refused = _cli(control_plane, "cutover", sync, "-n", namespace, "--yes", "--pause", "20",
                           "--drain-timeout", "5", "-o", "json")  # fmt: skip
            assert refused.returncode == 1, refused.stderr
            report = json.loads(refused.stdout)
            assert report["step"] == "preflight" and "redis-shake is not connected" in report["reason"]
            assert report["paused"] == [] and not _paused(source)
            assert _read_direction(api_client, namespace, sync) == "Forward"

            # Without --yes and without a terminal it does not pause anything.
            unconfirmed = _cli(control_plane, "cutover", sync, "-n", namespace)
            assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr

            # The workload's pod "runs": redis-shake on the operator's config moves the data.
            shake = _run_workload(api_client, namespace, sync, binary, tmp_path / "pod")
            shake.wait_streaming()
            with source.client() as client:
                for i in range(300, 400):  # written while it streams
                    client.set(f"order:{i}", f"v{i}")
            wait_for("redis-shake online on the source", lambda: _consumer_online(source), timeout=30)
            done = _cli(control_plane, "cutover", sync, "-n", namespace, "--yes", "--pause", "40",
                        "--drain-timeout", "20", "--unpause", "-o", "json")  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            report = json.loads(done.stdout)
            assert report["ok"] and report["step"] == "done" and report["lagBytes"] == {sync: 0}
            assert report["verify"]["equal"] and report["verify"]["checked"] == 400
            assert report["paused"] == [source.endpoint.address] and report["unpaused"]
            shake.stop()  # the Deployment is gone: the kubelet would stop the container now
            assert _read_direction(api_client, namespace, sync) == "Stopped"
            assert not _deployments(api_client, namespace, sync)  # cutover waited for them to go
            assert not _paused(source)

            # DCE recovery: reverse, then stop, then forward again, each waiting for the operator.
            reversed_ = _cli(
                control_plane, "reverse", sync, "-n", namespace, "--timeout", "120", "-o", "json"
            )
            assert reversed_.returncode == 0, reversed_.stderr
            assert set(_deployments(api_client, namespace, sync)) == {f"{sync}-reverse"}
            settled = json.loads(reversed_.stdout)
            assert settled["direction"] == "Reverse" and settled["deployments"] == {
                f"{sync}-reverse": "reverse"
            }
            assert settled["observedGeneration"] == settled["generation"]
            doc = json.loads(_cli(control_plane, "status", sync, "-n", namespace, "-o", "json").stdout)
            assert doc["workloads"][0]["source"] == target.endpoint.address

            stopped = _cli(control_plane, "stop", sync, "-n", namespace, "--timeout", "120")
            assert stopped.returncode == 0, stopped.stderr
            assert not _deployments(api_client, namespace, sync)
            started = _cli(control_plane, "start", sync, "-n", namespace, "--timeout", "120")
            assert started.returncode == 0, started.stderr
            assert set(_deployments(api_client, namespace, sync)) == {sync}

            # A cutover of a sync that is not Forward is refused naming the field.
            _cli(control_plane, "stop", sync, "-n", namespace, "--timeout", "120")
            wrong = _cli(control_plane, "cutover", sync, "-n", namespace, "--yes")
            assert wrong.returncode == 2 and "spec.direction" in wrong.stderr

        missing = _cli(control_plane, "status", "no-such-sync", "-n", namespace)
        assert missing.returncode == 2 and f"RedisSync {namespace}/no-such-sync not found" in missing.stderr
    finally:
        if shake is not None:
            shake.stop()
        nodes.stop_all()


def _read_direction(api_client: Any, namespace: str, name: str) -> str:
    found = custom_api(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", name)
    return str(found["spec"].get("direction") or "Forward")


def _consumer_online(source: RedisProcess) -> bool:
    with source.client() as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict) and v.get("port") == STATUS_PORT and v.get("state") == "online"
        for k, v in info.items()
        if k.startswith("slave")
    )


def test_a_v3_sync_has_no_status_port_and_refuses_filters(
    control_plane: ControlPlane, api_client: Any, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    """redis-shake v3 (shakeVersion: v3): v3's config format, no status port and so no probes; its
    filters would be Lua scripts, so a filter is refused at admission."""
    import base64
    import tomllib

    from kubernetes.client.exceptions import ApiException

    from sync.shake_config import CONFIG_FILE, SHARE_FILE
    from tests.k8s.kopf_support import apps_api

    require_binary("redis-server", "redis-server")
    nodes = RedisNodes(tmp_path / "redis", password=None)
    sync = _name("rs3")
    try:
        source, target = nodes.add("source", cluster=False), nodes.add("target", cluster=False)
        spec: dict[str, Any] = {
            "source": {"addresses": [source.endpoint.address], "kind": "standalone"},
            "target": {"addresses": [target.endpoint.address], "kind": "standalone"},
            "shakeVersion": "v3",
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RedisSync",
            "metadata": {"name": sync},
            "spec": spec,
        }
        custom = custom_api(api_client)
        with pytest.raises(ApiException) as refused:
            filtered = {**body, "spec": {**spec, "filter": {"allowKeyPrefixes": ["a:"]}}}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", filtered)
        assert refused.value.status == 422
        assert "spec.filter" in str(refused.value.body) and "v3 takes filters as Lua" in str(
            refused.value.body
        )

        # Read while the operator runs: leaving the block deletes the RedisSync and its workloads.
        with operator(control_plane, api_client, namespace):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "redissyncs", body)
            wait_for(
                "the v3 workload", lambda: sync in _deployments(api_client, namespace, sync), timeout=120
            )
            deployment = apps_api(api_client).read_namespaced_deployment(sync, namespace)
            container = deployment.spec.template.spec.containers[0]
            assert (
                not container.ports and container.readiness_probe is None and container.startup_probe is None
            )
            secret = core_api(api_client).read_namespaced_secret(f"{sync}-config", namespace)
            # The config, and the share document the pod's clear-share init container reads.
            assert set(secret.data) == {CONFIG_FILE, SHARE_FILE}, sorted(secret.data)
            share = json.loads(base64.b64decode(secret.data[SHARE_FILE]).decode())
            assert share["target"]["address"] == target.endpoint.address
            config = tomllib.loads(base64.b64decode(secret.data[CONFIG_FILE]).decode())
            assert config["type"] == "sync" and config["source"]["address"] == source.endpoint.address
            assert (
                config["target"]["address"] == target.endpoint.address
                and "status_port" not in config["advanced"]
            )
    finally:
        nodes.stop_all()
