"""MongoDB: manifests (golden file, strict Kubernetes schemas, the rules every manifest keeps), the
init container's script run for real, mongod.conf from the parameters, parameter checking, the
keyFile, the pure reconfig planners, and the local runtime's refusal.

Regenerate the golden file after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_mongodb_render.py`` and review the diff.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from middleware.engines.base import PLACEHOLDERS
from middleware.engines.mongodb import config, replicaset
from middleware.engines.mongodb.render import init_script, render, render_credentials, render_keyfile
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, OperationError, SpecError
from middleware.kube import builders as kube
from middleware.runtime.local import fill_placeholders
from middleware.spec import ResolvedSpec
from tests.unit.manifests import (
    K8S_VERSIONS,
    assert_golden,
    assert_guaranteed_qos,
    assert_strict_valid,
    dump,
    middleware_spec,
    named,
    of_kind,
    pod_of,
)

GOLDEN = Path(__file__).parent / "golden" / "mongodb-replicaset.yaml"
NAMESPACE = "shop"
NAME = "orders"
PASSWORD = "s3cr3t pa$$ \"quoted\" back\\slash 100% `tick` 'single'"
KEY = base64.b64encode(bytes(range(256)) * 3).decode()
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
ENGINE = get_engine("mongodb")


def make_spec(**overrides: Any) -> ResolvedSpec:
    return middleware_spec(NAME, NAMESPACE, {"engine": "mongodb", "topology": "replicaset", **overrides})


def test_golden() -> None:
    assert_golden(
        render(make_spec()),
        GOLDEN,
        __file__,
        mismatch="render() no longer matches the golden file (UPDATE_GOLDEN=1 to accept):\n",
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("replicas", [1, 3, 8])
def test_every_manifest_passes_strict_schema(replicas: int, version: str) -> None:
    spec = make_spec(replicas=replicas, storage={"size": "20Gi", "storageClassName": "local-nvme"})
    manifests = [*render(spec), render_credentials(spec, PASSWORD), render_keyfile(spec, KEY)]
    assert_strict_valid(manifests, versions=(version,))


def test_objects_services_pdb_and_parallel_start() -> None:
    manifests = render(make_spec())
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "orders-config"),
        ("Service", "orders-headless"),
        ("Service", "orders"),
        ("StatefulSet", "orders"),
        ("PodDisruptionBudget", "orders"),
    ]
    headless = named(manifests, "Service", "orders-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"]) for p in headless["ports"]] == [("mongodb", 27017)]
    sts = named(manifests, "StatefulSet", "orders")
    assert sts["spec"]["serviceName"] == "orders-headless" and sts["spec"]["replicas"] == 3
    # No member is Ready before replSetInitiate, which needs every member: OrderedReady would hang.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert named(manifests, "PodDisruptionBudget", "orders")["spec"]["maxUnavailable"] == 1
    (main,) = pod_of(manifests)["containers"]
    assert main["command"] == ["mongod", "--config", "/etc/mongodb/mongod.conf"]
    assert {"name": "data", "mountPath": "/data/db"} in main["volumeMounts"]


def test_guaranteed_qos_restricted_and_user_999() -> None:
    pod = pod_of(render(make_spec(resources={"cpu": "1500m", "memory": "3Gi"})))
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 999 and ctx["fsGroup"] == 999
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert_guaranteed_qos(c)
        assert c["resources"]["limits"] == {"cpu": "1500m", "memory": "3Gi"}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_probes_use_mongosh_and_survive_kubelet_expansion() -> None:
    pod = pod_of(render(make_spec()))
    (main,) = pod["containers"]
    for probe in PROBES:
        command = main[probe]["exec"]["command"]
        assert command[:3] == ["mongosh", "--quiet", "--norc"]
    assert "ping" in main["livenessProbe"]["exec"]["command"][-1]
    assert "hello" in main["readinessProbe"]["exec"]["command"][-1]
    for c in [*pod["initContainers"], *pod["containers"]]:
        words = [*c["command"], *(w for p in PROBES if p in c for w in c[p]["exec"]["command"])]
        assert all("$(" not in w and "$$" not in w for w in words)


def test_secrets_never_leave_their_secrets() -> None:
    spec = make_spec()
    credentials = render_credentials(spec, PASSWORD)
    assert credentials["metadata"]["name"] == kube.credentials_secret_name(spec)
    assert {k: base64.b64decode(v).decode() for k, v in credentials["data"].items()} == {
        "username": "admin",
        "password": PASSWORD,
    }
    keyfile = render_keyfile(spec, KEY)
    assert keyfile["metadata"]["name"] == "orders-keyfile"
    assert base64.b64decode(keyfile["data"]["keyfile"]).decode() == KEY + "\n"
    text = dump(render(spec))
    assert PASSWORD not in text and KEY[:40] not in text
    assert not of_kind(render(spec), "Secret")
    pod = pod_of(render(spec))
    assert {"name": "keyfile", "secret": {"secretName": "orders-keyfile", "defaultMode": 0o400}} in pod[
        "volumes"
    ]
    with pytest.raises(ValueError, match="base64 characters") as caught:
        render_keyfile(spec, "not base64 -_!")
    assert "-_!" not in str(caught.value)


def test_generated_keyfile_keys_are_valid_and_distinct() -> None:
    first, second = config.generate_keyfile_key(), config.generate_keyfile_key()
    assert first != second and config.check_keyfile_key(first) == first and len(first) == 1008
    local = config.keyfile_from_password(PASSWORD)
    assert config.check_keyfile_key(local) and local == config.keyfile_from_password(PASSWORD)
    assert ENGINE.secrets_file(ENGINE.members(make_spec())[0], PASSWORD) == local


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_init_script_renders_the_config_and_copies_the_keyfile_0400(tmp_path: Path) -> None:
    spec = make_spec()
    script = named(render(spec), "StatefulSet", "orders")["spec"]["template"]["spec"]["initContainers"][0][
        "command"
    ][2]
    assert script == init_script(
        {
            "BIND": "0.0.0.0",
            "PORT": "27017",
            "BUS_PORT": "0",
            "DATA_DIR": "/data/db",
            "ANNOUNCE_HOST": "${POD_NAME}.orders-headless.shop.svc.cluster.local",
            "SECRETS_FILE": "/etc/mongodb-secrets/keyfile",
        }
    )
    dirs = {
        d: tmp_path / d.strip("/").replace("/", "_")
        for d in ("/etc/mongodb-templates", "/etc/mongodb", "/etc/mongodb-keyfile", "/etc/mongodb-secrets")
    }
    for path in dirs.values():
        path.mkdir()
    (dirs["/etc/mongodb-templates"] / "mongod.conf").write_text(ENGINE.config_templates(spec)["mongod.conf"])
    (dirs["/etc/mongodb-keyfile"] / "keyfile").write_text(KEY + "\n")
    local = script
    for original, replacement in dirs.items():
        local = local.replace(original + "/", f"{replacement}/").replace(original + " ", f"{replacement} ")
    subprocess.run(
        ["bash", "-c", local], check=True, env={"PATH": os.environ["PATH"], "POD_NAME": "orders-1"}
    )
    rendered = yaml.safe_load((dirs["/etc/mongodb"] / "mongod.conf").read_text())
    assert rendered["net"] == {"bindIp": "0.0.0.0", "port": 27017, "maxIncomingConnections": 65536}
    assert rendered["storage"]["dbPath"] == "/data/db"
    copied = dirs["/etc/mongodb-secrets"] / "keyfile"
    # The script's paths were moved under tmp_path, the keyFile path in mongod.conf with them.
    assert rendered["security"] == {"keyFile": str(copied), "authorization": "enabled"}
    assert copied.read_text() == KEY + "\n"
    assert copied.stat().st_mode & 0o777 == 0o400 and copied.stat().st_uid == os.getuid()
    # Runs again on every restart: the 0400 copy from last time must not stop it.
    subprocess.run(
        ["bash", "-c", local], check=True, env={"PATH": os.environ["PATH"], "POD_NAME": "orders-1"}
    )


# --- mongod.conf and parameters ------------------------------------------------------------------


def test_mongod_conf_from_parameters_and_defaults() -> None:
    spec = make_spec(
        parameters={"wiredTigerCacheSizeGB": "1.5", "oplogSizeMB": 2048, "profilingMode": "slowOp"},
    )
    template = ENGINE.config_templates(spec)["mongod.conf"]
    used = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    assert used == {"BIND", "PORT", "DATA_DIR", "SECRETS_FILE"} and used <= set(PLACEHOLDERS)
    filled = yaml.safe_load(
        fill_placeholders(template, {n: f"/x/{n}" for n in PLACEHOLDERS} | {"PORT": "1234"})
    )
    assert filled == {
        "net": {"bindIp": "/x/BIND", "port": 1234, "maxIncomingConnections": 65536},
        "storage": {"dbPath": "/x/DATA_DIR", "wiredTiger": {"engineConfig": {"cacheSizeGB": 1.5}}},
        "replication": {"replSetName": "orders", "oplogSizeMB": 2048},
        "security": {"keyFile": "/x/SECRETS_FILE", "authorization": "enabled"},
        "operationProfiling": {"mode": "slowOp", "slowOpThresholdMs": 100},
    }


def test_profiling_mode_off_stays_a_string_and_cache_defaults_from_the_limit() -> None:
    conf = yaml.safe_load(config.mongod_conf(make_spec(resources={"cpu": "1", "memory": "4Gi"}), "orders"))
    assert conf["operationProfiling"]["mode"] == "off", "a bare `off` would read as a boolean"
    assert conf["storage"]["wiredTiger"]["engineConfig"]["cacheSizeGB"] == 1.5  # (4 - 1) / 2
    small = yaml.safe_load(config.mongod_conf(make_spec(resources={"cpu": "1", "memory": "1Gi"}), "orders"))
    assert small["storage"]["wiredTiger"]["engineConfig"]["cacheSizeGB"] == 0.25


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"wiredTigerCacheSizeGB": "0.1"},
            r"spec\.parameters\.wiredTigerCacheSizeGB: '0\.1' is not allowed: must be a number >= 0\.25",
        ),
        ({"oplogSizeMB": 100}, r"spec\.parameters\.oplogSizeMB: 100 is not allowed"),
        (
            {"profilingMode": "sometimes"},
            r"spec\.parameters\.profilingMode: 'sometimes' is not allowed|sometimes",
        ),
        ({"maxIncomingConnections": 5}, r"spec\.parameters\.maxIncomingConnections"),
        ({"dbPath": "/tmp"}, r"spec\.parameters\.dbPath: unknown parameter for mongodb"),
    ],
)
def test_parameter_validation(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make_spec(parameters=parameters)


def test_replicas_and_topology_are_checked() -> None:
    with pytest.raises(SpecError, match=r"spec\.replicas"):
        make_spec(replicas=0)
    with pytest.raises(SpecError):
        make_spec(topology="cluster")


# --- pure reconfig planning ----------------------------------------------------------------------


def _config(count: int, version: int = 1) -> dict[str, Any]:
    return replicaset.initial_config("rs", [f"h{i}:27017" for i in range(count)]) | {"version": version}


def test_plan_add_and_remove_change_exactly_one_member() -> None:
    base = _config(3, version=5) | {"term": 2}
    added = replicaset.plan_add(base, "h9:27017")
    assert added["version"] == 6 and "term" not in added
    assert added["members"] == [*base["members"], {"_id": 3, "host": "h9:27017"}]
    removed = replicaset.plan_remove(added, "h1:27017")
    assert removed["version"] == 7 and [m["_id"] for m in removed["members"]] == [0, 2, 3]
    # An _id is never reused while an old config may still name it.
    assert replicaset.plan_add(removed, "h1:27017")["members"][-1]["_id"] == 4
    with pytest.raises(OperationError, match="last member"):
        replicaset.plan_remove(_config(1), "h0:27017")


def test_never_more_than_seven_voters() -> None:
    config7 = _config(7)
    eighth = replicaset.plan_add(config7, "h7:27017")
    assert eighth["members"][-1] == {"_id": 7, "host": "h7:27017", "votes": 0, "priority": 0}
    assert replicaset.voters(eighth) == 7
    assert replicaset.plan_promote(eighth) is None
    promoted = replicaset.plan_promote(replicaset.plan_remove(eighth, "h0:27017"))
    assert promoted is not None and replicaset.voters(promoted) == 7
    assert replicaset.voters(_config(50)) == 7
    with pytest.raises(OperationError, match="at most 50"):
        replicaset.initial_config("rs", [f"h{i}:1" for i in range(51)])


# --- the local runtime ---------------------------------------------------------------------------


def test_local_runtime_refuses_clearly_when_there_is_no_mongod(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec()
    member = ENGINE.members(spec)[0]
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(
        MoorageError, match=r"cannot run on the local runtime .* no mongod binary.*moorage render"
    ):
        ENGINE.command(spec, member, "/d/mongod.conf")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert ENGINE.command(spec, member, "/d/mongod.conf") == ["mongod", "--config", "/d/mongod.conf"]
