"""Redis manifests: golden files, strict Kubernetes schemas, and the rules every manifest must keep.

Golden files live in tests/unit/golden/; after an intended change regenerate them with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_redis_render.py`` and review the diff.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from middleware.engines.base import PLACEHOLDERS
from middleware.engines.redis import config
from middleware.engines.redis.render import render, render_credentials
from middleware.kube import builders as kube
from middleware.spec import ResolvedSpec
from tests.unit.manifests import (
    K8S_VERSIONS,
    all_containers,
    assert_golden,
    assert_guaranteed_qos,
    assert_strict_valid,
    dump,
    engine_containers,
    middleware_spec,
    named,
    of_kind,
    server_container,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
NAMESPACE = "shop"
# Everything a shell or a Redis config file could trip over: quotes, backslash, $, %, spaces, backtick.
PASSWORD = "s3cr3t pa$$ \"quoted\" back\\slash 100% `tick` 'single'"
STANDARD_LABELS = (
    kube.NAME_LABEL,
    kube.INSTANCE_LABEL,
    kube.COMPONENT_LABEL,
    kube.MANAGED_BY_LABEL,
    kube.VERSION_LABEL,
)

EXAMPLES: dict[str, dict[str, Any]] = {
    "standalone": {"name": "cache", "spec": {"engine": "redis", "topology": "standalone"}},
    "sentinel": {
        "name": "sessions",
        "spec": {
            "engine": "redis",
            "topology": "sentinel",
            "parameters": {"maxmemory-policy": "allkeys-lru", "save": "3600 1 300 100"},
        },
    },
    "cluster": {
        "name": "orders",
        "spec": {
            "engine": "redis",
            "topology": "cluster",
            "plan": "medium",
            "shards": 3,
            "replicas": 2,
            "storage": {"size": "20Gi", "storageClassName": "fast-ssd"},
        },
    },
}
TOPOLOGIES = tuple(EXAMPLES)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def make_spec(topology: str, **overrides: Any) -> ResolvedSpec:
    example = EXAMPLES[topology]
    return middleware_spec(example["name"], NAMESPACE, {**example["spec"], **overrides})


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for sts in of_kind(manifests, "StatefulSet"):
        yield sts, sts["spec"]["template"]["spec"]


def init_script_of(manifests: list[dict[str, Any]], workload: str) -> str:
    (init,) = named(manifests, "StatefulSet", workload)["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["sh", "-c"]
    return str(init["command"][2])


# --- golden -------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_golden(topology: str) -> None:
    assert_golden(render(make_spec(topology)), GOLDEN_DIR / f"redis-{topology}.yaml", __file__)


# --- schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_manifest_passes_strict_schema(topology: str, version: str) -> None:
    spec = make_spec(topology)
    assert_strict_valid([*render(spec), render_credentials(spec, PASSWORD)], versions=(version,))


# --- QoS, security, secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_container_is_guaranteed_qos(topology: str) -> None:
    for sts, pod in pod_specs(render(make_spec(topology))):
        for c in all_containers(pod):
            resources = c["resources"]
            where = f"{sts['metadata']['name']}/{c['name']}"
            assert set(resources["requests"]) == {"cpu", "memory"}, where
            assert_guaranteed_qos(c, where)


def test_resources_follow_the_spec() -> None:
    spec = make_spec("cluster", resources={"cpu": "1500m", "memory": "3Gi"})
    for _, pod in pod_specs(render(spec)):
        for c in engine_containers(pod):
            assert c["resources"]["limits"] == {"cpu": "1500m", "memory": "3Gi"}


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_security_context_is_restricted(topology: str) -> None:
    for _, pod in pod_specs(render(make_spec(topology))):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == 999 and ctx["fsGroup"] == 999
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] > 0
        for c in all_containers(pod):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_password_never_leaves_the_secret(topology: str) -> None:
    spec = make_spec(topology)
    secret = render_credentials(spec, PASSWORD)
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == kube.credentials_secret_name(spec)
    assert secret["metadata"]["annotations"] == {kube.GENERATED_ANNOTATION: "true"}
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD

    manifests = render(spec)
    assert not of_kind(manifests, "Secret"), "credentials are rendered separately, once"
    text = dump(manifests)
    for form in (PASSWORD, secret["data"]["password"], "pa$$"):
        assert form not in text
    for configmap in of_kind(manifests, "ConfigMap"):
        assert not any("requirepass" in body for body in configmap["data"].values())
    # Every way into a container goes through the Secret by reference.
    for _, pod in pod_specs(manifests):
        for c in all_containers(pod):
            for env in c.get("env", []):
                assert "value" not in env, f"{c['name']}: {env['name']} is set literally"
                ref = env["valueFrom"].get("secretKeyRef")
                if ref:
                    assert ref == {"name": secret["metadata"]["name"], "key": "password"}


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_probes_authenticate_from_env(topology: str) -> None:
    for _, pod in pod_specs(render(make_spec(topology))):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c["env"]}
            if c["name"] == "metrics":  # no probes; its password comes from the Secret as well
                assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
                continue
            assert "secretKeyRef" in env["REDISCLI_AUTH"]["valueFrom"]
            for probe in PROBES:
                command = " ".join(c[probe]["exec"]["command"])
                assert "redis-cli" in command and " ping" in command
                assert " -a " not in command


# --- labels and selectors -----------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_labels_on_every_object_and_pod_template(topology: str) -> None:
    spec = make_spec(topology)
    manifests = [*render(spec), render_credentials(spec, PASSWORD)]
    label_sets = [(m["metadata"]["name"], m["metadata"]["labels"]) for m in manifests]
    label_sets += [
        (f"{sts['metadata']['name']} pods", sts["spec"]["template"]["metadata"]["labels"])
        for sts in of_kind(manifests, "StatefulSet")
    ]
    for name, labels in label_sets:
        for key in STANDARD_LABELS:
            assert key in labels, f"{name} lacks {key}"
        assert labels[kube.NAME_LABEL] == "redis"
        assert labels[kube.INSTANCE_LABEL] == spec.name
        assert labels[kube.MANAGED_BY_LABEL] == "moorage"
        assert labels[kube.VERSION_LABEL] == spec.version
    for m in manifests:
        assert m["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_selectors_never_contain_the_version(topology: str) -> None:
    manifests = render(make_spec(topology))
    selectors: list[dict[str, str]] = []
    for m in manifests:
        if m["kind"] == "Service":
            selectors.append(m["spec"]["selector"])
        elif m["kind"] in ("StatefulSet", "PodDisruptionBudget"):
            selectors.append(m["spec"]["selector"]["matchLabels"])
    for sts, pod in pod_specs(manifests):
        # An immutable selector must match its own pods, and immutable claim templates must not
        # carry a label that changes on upgrade.
        assert (
            sts["spec"]["selector"]["matchLabels"].items()
            <= sts["spec"]["template"]["metadata"]["labels"].items()
        )
        for claim in sts["spec"]["volumeClaimTemplates"]:
            assert kube.VERSION_LABEL not in claim["metadata"]["labels"]
        for term in pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]:
            assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
            selectors.append(term["podAffinityTerm"]["labelSelector"]["matchLabels"])
    assert selectors
    for selector in selectors:
        assert kube.VERSION_LABEL not in selector
        assert selector[kube.INSTANCE_LABEL]
    # Every selector names its component but the metrics Service's, which spans them all.
    metrics = named(
        manifests, "Service", f"{manifests[0]['metadata']['labels'][kube.INSTANCE_LABEL]}-metrics"
    )
    for selector in selectors:
        assert selector.get(kube.COMPONENT_LABEL) or selector == metrics["spec"]["selector"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_an_upgrade_changes_no_immutable_field(topology: str) -> None:
    old = render(make_spec(topology))
    new = render(make_spec(topology, version="7.2"))
    for before, after in zip(of_kind(old, "StatefulSet"), of_kind(new, "StatefulSet"), strict=True):
        for field in ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"):
            assert before["spec"][field] == after["spec"][field], field
        assert before["spec"]["template"] != after["spec"]["template"]


# --- services, statefulsets, PDBs ----------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_statefulsets_are_served_by_headless_services(topology: str) -> None:
    manifests = render(make_spec(topology))
    headless = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service") if s["spec"].get("clusterIP")}
    assert headless
    for service in headless.values():
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
    for sts in of_kind(manifests, "StatefulSet"):
        service = headless[sts["spec"]["serviceName"]]
        assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
        assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
        assert sts["spec"]["podManagementPolicy"] == "OrderedReady"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_pvcs_are_always_retained(topology: str) -> None:
    spec = make_spec(topology)
    for sts in of_kind(render(spec), "StatefulSet"):
        policy = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
        assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    delete = make_spec(topology, deletionPolicy="Delete")
    for sts in of_kind(render(delete), "StatefulSet"):
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_data_volume_follows_the_spec() -> None:
    manifests = render(make_spec("cluster"))
    for sts, pod in pod_specs(manifests):
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
        assert claim["spec"]["storageClassName"] == "fast-ssd"
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/data"] == claim["metadata"]["name"]


def test_standalone() -> None:
    manifests = render(make_spec("standalone"))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "cache-config"),
        ("Service", "cache-headless"),
        ("Service", "cache"),
        ("StatefulSet", "cache"),
        ("Service", "cache-metrics"),
    ]
    assert named(manifests, "StatefulSet", "cache")["spec"]["replicas"] == 1
    assert named(manifests, "Service", "cache")["spec"]["ports"][0]["port"] == 6379
    assert not of_kind(manifests, "PodDisruptionBudget")


def test_sentinel() -> None:
    spec = make_spec("sentinel")
    manifests = render(spec)
    data = named(manifests, "StatefulSet", "sessions")
    sentinels = named(manifests, "StatefulSet", "sessions-sentinel")
    assert data["spec"]["replicas"] == spec.replicas == 3
    assert sentinels["spec"]["replicas"] == spec.sentinels == 3
    assert sentinels["spec"]["serviceName"] == "sessions-sentinel-headless"

    master = named(manifests, "Service", "sessions-master")["spec"]["selector"]
    replicas = named(manifests, "Service", "sessions-replicas")["spec"]["selector"]
    assert master[kube.ROLE_LABEL] == "master" and master[kube.COMPONENT_LABEL] == "data"
    assert replicas[kube.ROLE_LABEL] == "replica" and replicas[kube.COMPONENT_LABEL] == "data"
    sentinel_service = named(manifests, "Service", "sessions-sentinel")
    assert sentinel_service["spec"]["selector"][kube.COMPONENT_LABEL] == "sentinel"
    assert sentinel_service["spec"]["ports"][0]["port"] == 26379
    # The role label is the operator's to set on live pods, never the template's.
    for sts in (data, sentinels):
        assert kube.ROLE_LABEL not in sts["spec"]["template"]["metadata"]["labels"]

    pdbs = {p["metadata"]["name"]: p for p in of_kind(manifests, "PodDisruptionBudget")}
    assert set(pdbs) == {"sessions", "sessions-sentinel"}
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs.values())

    # Sentinel's config lives on its PVC, so its own rewrites (known master, epochs) survive restarts.
    pod = sentinels["spec"]["template"]["spec"]
    main = server_container(pod)
    assert main["command"] == ["redis-server", "/data/sentinel.conf", "--sentinel"]
    assert {"name": "data", "mountPath": "/data"} in main["volumeMounts"]
    assert [c["metadata"]["name"] for c in sentinels["spec"]["volumeClaimTemplates"]] == ["data"]
    configmap = named(manifests, "ConfigMap", "sessions-config")
    assert set(configmap["data"]) == {"redis.conf", "sentinel.conf"}


@pytest.mark.parametrize("shards", [3, 5])
def test_cluster_has_a_statefulset_and_a_pdb_per_shard(shards: int) -> None:
    manifests = render(make_spec("cluster", shards=shards))
    statefulsets = of_kind(manifests, "StatefulSet")
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    assert [s["metadata"]["name"] for s in statefulsets] == [f"orders-shard-{i}" for i in range(shards)]
    assert [p["metadata"]["name"] for p in pdbs] == [f"orders-shard-{i}" for i in range(shards)]
    for i, (sts, pdb) in enumerate(zip(statefulsets, pdbs, strict=True)):
        assert sts["spec"]["replicas"] == 2
        assert sts["spec"]["serviceName"] == "orders-headless"
        assert sts["spec"]["template"]["metadata"]["labels"][kube.SHARD_LABEL] == str(i)
        assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1
        terms = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        strongest = max(terms, key=lambda t: t["weight"])
        assert strongest["podAffinityTerm"]["labelSelector"]["matchLabels"][kube.SHARD_LABEL] == str(i)
    headless = named(manifests, "Service", "orders-headless")
    assert kube.SHARD_LABEL not in headless["spec"]["selector"]
    assert {p["port"] for p in headless["spec"]["ports"]} == {6379, 16379}
    assert named(manifests, "Service", "orders")["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]
    configmap = named(manifests, "ConfigMap", "orders-config")["data"]["redis.conf"]
    assert "cluster-enabled yes" in configmap
    assert "cluster-announce-hostname ${ANNOUNCE_HOST}" in configmap


# --- the init container's script, run for real --------------------------------------------------

_PATH_RE = re.compile(r"(?<![\w.])(/etc/redis-templates|/etc/redis-secrets|/etc/redis|/data)\b")


def _redirect(script: str, root: Path) -> str:
    """The script with every absolute path it touches moved under ``root``."""
    return _PATH_RE.sub(lambda m: f"{root}{m.group(1)}", script)


def _mount_for(container: dict[str, Any], path: str) -> str:
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{container['name']} mounts nothing at {path}"
    return max(mounts, key=lambda m: len(m["mountPath"]))["name"]


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    sh = shutil.which("sh")
    assert sh, "POSIX sh is needed to run the init script"
    return subprocess.run([sh, "-c", script], env=env, capture_output=True, text=True, timeout=30)


def _scenarios() -> Iterator[tuple[str, str]]:
    yield "standalone", "cache"
    yield "sentinel", "sessions"
    yield "sentinel", "sessions-sentinel"
    yield "cluster", "orders-shard-1"


@pytest.mark.parametrize(("topology", "workload"), list(_scenarios()))
def test_init_script_renders_every_placeholder(topology: str, workload: str, tmp_path: Path) -> None:
    spec = make_spec(topology)
    manifests = render(spec)
    sts = named(manifests, "StatefulSet", workload)
    pod = sts["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    main = server_container(pod)
    sentinel = workload.endswith("-sentinel")
    config_name = "sentinel.conf" if sentinel else "redis.conf"
    config_path = main["command"][1]
    assert config_path.endswith("/" + config_name)

    # The init container and the server share the volumes that matter, and the templates come from
    # this deployment's ConfigMap.
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert _mount_for(init, config_path) == _mount_for(main, config_path)
    assert _mount_for(init, "/etc/redis-secrets/secrets.conf") == _mount_for(main, "/etc/redis-secrets/x")
    templates_volume = _mount_for(init, f"/etc/redis-templates/{config_name}")
    configmap = named(manifests, "ConfigMap", volumes[templates_volume]["configMap"]["name"])
    assert _mount_for(init, config_path) in volumes.keys() | claims
    template = configmap["data"][config_name]
    used = {p for p in PLACEHOLDERS if "${" + p + "}" in template}
    assert used >= {"PORT", "ANNOUNCE_HOST", "SECRETS_FILE"}

    for path in ("etc/redis-templates", "etc/redis", "etc/redis-secrets", "data"):
        (tmp_path / path).mkdir(parents=True)
    for key, body in configmap["data"].items():
        (tmp_path / "etc/redis-templates" / key).write_text(body)
    script = _redirect(init_script_of(manifests, workload), tmp_path)
    pod_name = f"{workload}-2"
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod_name, "REDIS_PASSWORD": PASSWORD}
    result = _run(script, env)
    assert result.returncode == 0, result.stderr

    headless = sts["spec"]["serviceName"]
    expected = {
        "BIND": "0.0.0.0",
        "PORT": "26379" if sentinel else "6379",
        "BUS_PORT": "16379",
        "DATA_DIR": f"{tmp_path}/data",
        "ANNOUNCE_HOST": f"{pod_name}.{headless}.{NAMESPACE}.svc.cluster.local",
        "SECRETS_FILE": f"{tmp_path}/etc/redis-secrets/secrets.conf",
    }
    wanted = template
    for placeholder, value in expected.items():
        wanted = wanted.replace("${" + placeholder + "}", value)
    rendered = Path(f"{tmp_path}{config_path}").read_text()
    assert "${" not in rendered
    assert rendered == wanted

    secrets = tmp_path / "etc/redis-secrets/secrets.conf"
    assert secrets.read_text() == config.secrets_conf(PASSWORD, sentinel=sentinel)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert not list(tmp_path.rglob("*.tmp"))

    if topology == "cluster":
        assert f"cluster-announce-hostname {pod_name}.orders-headless.shop.svc.cluster.local" in rendered
    # A restart: the server's own rewrites of sentinel.conf survive, while redis.conf is re-rendered
    # from the (possibly updated) ConfigMap.
    Path(f"{tmp_path}{config_path}").write_text(rendered + "sentinel myid 0123\n")
    assert _run(script, env).returncode == 0
    after = Path(f"{tmp_path}{config_path}").read_text()
    assert after == (rendered + "sentinel myid 0123\n" if sentinel else rendered)


def test_init_script_refuses_an_empty_password(tmp_path: Path) -> None:
    script = _redirect(init_script_of(render(make_spec("standalone")), "cache"), tmp_path)
    result = _run(script, {"PATH": os.environ["PATH"], "POD_NAME": "cache-0", "REDIS_PASSWORD": ""})
    assert result.returncode != 0
    assert "REDIS_PASSWORD is empty" in result.stderr


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_commands_survive_kubelet_expansion(topology: str) -> None:
    # Kubelet expands $(NAME) and collapses $$ in command/args; the scripts must mean what they say.
    for _, pod in pod_specs(render(make_spec(topology))):
        for c in all_containers(pod):
            probes = [c[p]["exec"]["command"] for p in PROBES if p in c]
            for word in [*c.get("command", []), *c.get("args", []), *(w for probe in probes for w in probe)]:
                assert "$(" not in word and "$$" not in word


def test_render_rejects_a_domain_that_is_not_a_dns_name() -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        render(make_spec("standalone"), cluster_domain="cluster.local|x")
    custom = render(make_spec("standalone"), cluster_domain="corp.example")
    assert "${POD_NAME}.cache-headless.shop.svc.corp.example" in init_script_of(custom, "cache")


def test_builders_do_no_io() -> None:
    source = Path(kube.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(kubernetes|os|subprocess|socket|requests)\b", source, re.M)
