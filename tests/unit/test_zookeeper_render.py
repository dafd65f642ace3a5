"""ZooKeeper: manifests (golden file, strict Kubernetes schemas, the rules every manifest keeps), the
init container's script run for real, parameter checking, and the local launcher's decisions.

Regenerate the golden file after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_zookeeper_render.py`` and review the diff.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import socketserver
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from middleware.engines.base import PLACEHOLDERS, MemberAddress
from middleware.engines.registry import get_engine
from middleware.engines.zookeeper import config, launch
from middleware.engines.zookeeper.render import heap_mib, render, render_credentials
from middleware.errors import SpecError
from middleware.kube import builders as kube
from middleware.runtime.local import fill_placeholders
from middleware.spec import ResolvedSpec
from tests.unit.manifests import (
    K8S_VERSIONS,
    REGENERATE,
    all_containers,
    assert_golden,
    assert_guaranteed_qos,
    assert_strict_valid,
    dump,
    middleware_spec,
    named,
    of_kind,
    pod_of,
)

GOLDEN = Path(__file__).parent / "golden" / "zookeeper-ensemble.yaml"
NAMESPACE = "shop"
NAME = "coord"
# What a shell could trip over: quotes, backslash, $, %, spaces, backtick.
PASSWORD = "s3cr3t pa$$ \"quoted\" back\\slash 100% `tick` 'single'"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
ENGINE = get_engine("zookeeper")


def make_spec(**overrides: Any) -> ResolvedSpec:
    return middleware_spec(NAME, NAMESPACE, {"engine": "zookeeper", "topology": "ensemble", **overrides})


# --- golden and schema --------------------------------------------------------------------------


def test_golden() -> None:
    assert_golden(
        render(make_spec()),
        GOLDEN,
        __file__,
        mismatch=REGENERATE.replace("{name}", "the golden file"),
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_every_manifest_passes_strict_schema(replicas: int, version: str) -> None:
    spec = make_spec(replicas=replicas, storage={"size": "5Gi", "storageClassName": "local-nvme"})
    assert_strict_valid([*render(spec), render_credentials(spec, PASSWORD)], versions=(version,))


# --- objects ------------------------------------------------------------------------------------


def test_objects_services_and_pdb() -> None:
    manifests = render(make_spec())
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "coord-config"),
        ("Service", "coord-headless"),
        ("Service", "coord"),
        ("StatefulSet", "coord"),
        ("PodDisruptionBudget", "coord"),
        ("Service", "coord-metrics"),
    ]
    headless = named(manifests, "Service", "coord-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"]) for p in headless["ports"]] == [("server", 2888), ("election", 3888)]
    client = named(manifests, "Service", "coord")["spec"]
    assert client["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in client["ports"]] == [("client", 2181)]
    pdb = named(manifests, "PodDisruptionBudget", "coord")["spec"]
    assert pdb["maxUnavailable"] == 1
    sts = named(manifests, "StatefulSet", "coord")
    assert pdb["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    for service in (headless, client):
        assert service["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["serviceName"] == "coord-headless"
    assert sts["spec"]["replicas"] == 3
    # Members serve only as a quorum: OrderedReady would wait forever for pod 0 to be Ready alone.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (main,) = pod_of(manifests)["containers"]
    assert {p["containerPort"] for p in main["ports"]} == {2181, 2888, 3888, 7000}  # 7000: metrics
    assert main["command"] == ["zkServer.sh", "start-foreground", "/data/zoo.cfg"]
    assert {"name": "data", "mountPath": "/data"} in main["volumeMounts"]


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_initial_dynamic_config_lists_every_member_by_dns_name(replicas: int) -> None:
    manifests = render(make_spec(replicas=replicas))
    data = named(manifests, "ConfigMap", "coord-config")["data"]
    servers = launch.parse_servers(data["zoo.cfg.dynamic"])
    assert sorted(servers) == list(range(1, replicas + 1))
    for server_id, server in servers.items():
        assert server.host == f"coord-{server_id - 1}.coord-headless.shop.svc.cluster.local"
        assert (server.peer_port, server.election_port, server.role) == (2888, 3888, "participant")
        assert (server.client_host, server.client_port) == ("0.0.0.0", 2181)
    assert named(manifests, "StatefulSet", "coord")["spec"]["replicas"] == replicas
    assert "server." not in data["zoo.cfg"], "membership is only in the dynamic file"


def test_every_container_is_guaranteed_qos_and_restricted() -> None:
    spec = make_spec(resources={"cpu": "1500m", "memory": "3Gi"})
    pod = pod_of(render(spec))
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000 and ctx["fsGroup"] == 1000
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in all_containers(pod):
        assert_guaranteed_qos(c)
        assert c["resources"]["limits"] == {"cpu": "1500m", "memory": "3Gi"}
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The heap leaves room for metaspace and buffers below the memory limit.
    (main,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["ZK_SERVER_HEAP"] == str(int(3 * 1024 * 0.6))
    assert f"-Xmx{env['ZK_SERVER_HEAP']}m" in env["SERVER_JVMFLAGS"]


def test_password_never_leaves_the_secret() -> None:
    spec = make_spec()
    secret = render_credentials(spec, PASSWORD)
    assert secret["metadata"]["name"] == kube.credentials_secret_name(spec)
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
    manifests = render(spec)
    assert not of_kind(manifests, "Secret")
    text = dump(manifests)
    for form in (PASSWORD, secret["data"]["password"], config.super_digest(PASSWORD).split(":", 1)[1]):
        assert form not in text
    for c in all_containers(pod_of(manifests)):
        for env in c.get("env", []):
            if "value" in env:
                assert "password" not in env["name"].lower()
            else:
                ref = env["valueFrom"].get("secretKeyRef")
                if ref:
                    assert ref == {"name": secret["metadata"]["name"], "key": "password"}


def test_probes_and_commands_survive_kubelet_expansion() -> None:
    pod = pod_of(render(make_spec()))
    (main,) = pod["containers"]
    for probe in PROBES:
        command = main[probe]["exec"]["command"]
        assert command[:2] == ["bash", "-c"] and "/dev/tcp/127.0.0.1/2181" in command[2]
    assert "srvr" in main["readinessProbe"]["exec"]["command"][2]
    assert "ruok" in main["livenessProbe"]["exec"]["command"][2]
    for c in all_containers(pod):
        probes = [c[p]["exec"]["command"] for p in PROBES if p in c]
        for word in [*c["command"], *(w for probe in probes for w in probe)]:
            assert "$(" not in word and "$$" not in word


def test_an_upgrade_changes_no_immutable_field() -> None:
    old = named(render(make_spec()), "StatefulSet", "coord")
    new = named(render(make_spec(version="3.9")), "StatefulSet", "coord")
    for field in ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"):
        assert old["spec"][field] == new["spec"][field], field
    assert old["spec"]["template"] != new["spec"]["template"]
    for claim in old["spec"]["volumeClaimTemplates"]:
        assert kube.VERSION_LABEL not in claim["metadata"]["labels"]


def test_render_rejects_a_domain_that_is_not_a_dns_name() -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        render(make_spec(), cluster_domain="cluster.local|x")
    custom = named(render(make_spec(), cluster_domain="corp.example"), "ConfigMap", "coord-config")
    assert "coord-0.coord-headless.shop.svc.corp.example:2888" in custom["data"]["zoo.cfg.dynamic"]


# --- parameters and config ------------------------------------------------------------------------


def test_parameters_are_checked_and_defaults_written() -> None:
    cfg = config.zoo_cfg(make_spec(parameters={"tickTime": 500, "maxClientCnxns": "0"}))
    lines = cfg.splitlines()
    assert "tickTime=500" in lines and "maxClientCnxns=0" in lines
    assert "initLimit=10" in lines and "syncLimit=5" in lines
    assert {"reconfigEnabled=true", "standaloneEnabled=false", "admin.enableServer=false"} <= set(lines)
    assert "4lw.commands.whitelist=conf,isro,mntr,ruok,srvr" in lines
    with pytest.raises(
        SpecError, match=r"spec\.parameters\.tickTime: 50 is not allowed: must be an integer >= 100"
    ):
        make_spec(parameters={"tickTime": 50})
    with pytest.raises(SpecError, match=r"spec\.parameters\.dataDir: unknown parameter for zookeeper"):
        make_spec(parameters={"dataDir": "/tmp"})
    with pytest.raises(SpecError, match=r"spec\.replicas: Input should be greater than or equal to 1"):
        make_spec(replicas=0)


def test_template_uses_only_placeholders_the_runtimes_know() -> None:
    templates = ENGINE.config_templates(make_spec())
    assert set(templates) == {"zoo.cfg"}
    used = set(re.findall(r"\$\{([A-Z_]+)\}", templates["zoo.cfg"]))
    # the runtimes' placeholders, and the metrics port both fill (local: allocated; pods: 7000)
    known = {*PLACEHOLDERS, "METRICS_PORT"}
    assert used and used <= known and "METRICS_PORT" in used
    filled = fill_placeholders(templates["zoo.cfg"], {name: f"/x/{name}" for name in known})
    assert "dataDir=/x/DATA_DIR" in filled and "moorage.secretsFile=/x/SECRETS_FILE" in filled


def test_member_files_myid_and_every_member_from_the_addressing() -> None:
    spec = make_spec(replicas=3)
    members = ENGINE.members(spec)
    assert [(m.name, m.ordinal, m.ports) for m in members] == [
        (f"coord-{i}", i, ("PORT", "PEER_PORT", "ELECTION_PORT")) for i in range(3)
    ]
    addressing = {
        m.name: MemberAddress(
            "127.0.0.1", {"PORT": 7000 + i, "PEER_PORT": 8000 + i, "ELECTION_PORT": 9000 + i}
        )
        for i, m in enumerate(members)
    }
    files = ENGINE.member_files(spec, members[1], addressing)
    assert files["myid"] == "2\n"
    assert files["zoo.cfg.dynamic"] == "".join(
        f"server.{i + 1}=127.0.0.1:{8000 + i}:{9000 + i}:participant;127.0.0.1:{7000 + i}\n" for i in range(3)
    )
    assert all("pass" not in body for body in files.values())


def test_command_runs_the_launcher_then_the_server() -> None:
    spec = make_spec()
    member = ENGINE.members(spec)[0]
    command = ENGINE.command(spec, member, "/d/data/zoo.cfg")
    assert Path(command[1]) == Path(launch.__file__) and Path(command[1]).is_file()
    assert command[2:5] == ["/d/data/zoo.cfg", "--", "java"]
    assert command[-2:] == ["org.apache.zookeeper.server.quorum.QuorumPeerMain", "/d/data/zoo.cfg"]
    # The heap as in a pod: 60% of the spec's memory limit.
    assert [flag for flag in command if flag.startswith("-Xmx")] == [f"-Xmx{heap_mib(spec)}m"]
    # The launcher is run by path: it must not need Moorage importable.
    source = Path(launch.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+middleware\b", source, re.M)


def test_secrets_file_is_a_jvm_argument_file_with_the_digest() -> None:
    expected = base64.b64encode(hashlib.sha1(f"super:{PASSWORD}".encode()).digest()).decode()
    body = ENGINE.secrets_file(ENGINE.members(make_spec())[0], PASSWORD)
    assert body == f"-Dzookeeper.DigestAuthenticationProvider.superDigest=super:{expected}\n"
    assert PASSWORD not in body


def test_reconfigure_reports_every_parameter_as_needing_a_restart() -> None:
    from middleware.engines.base import Connection

    report = ENGINE.reconfigure(make_spec(), Connection([], None), {"tickTime": "3000"})
    assert report.applied_live == {} and report.needs_restart == {"tickTime": "3000"}


# --- the four-letter-word protocol and the launcher ---------------------------------------------


class FakeServer:
    """Answers every connection with one canned reply, like a ZooKeeper four-letter word."""

    def __init__(self, reply: str) -> None:
        self.reply = reply.encode()
        self.words: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.words.append(self.request.recv(4).decode())
                self.request.sendall(outer.reply)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def conf_reply(lines: list[str], version: str = "100000003") -> str:
    header = "clientPort=2181\nserverId=1\nelectionPort=3888\nquorumPort=2888\npeerType=0\n"
    return header + "membership: \n" + "".join(line + "\n" for line in lines) + f"version={version}\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_lines_and_conf_replies_parse() -> None:
    line = "server.4=zk-3.zk-headless.ns.svc.cluster.local:2888:3888:participant;0.0.0.0:2181"
    spec = launch.ServerSpec.parse(line)
    assert spec.line == line and spec.server_id == 4
    assert spec.client_address() == ("zk-3.zk-headless.ns.svc.cluster.local", 2181)
    assert launch.ServerSpec.parse("server.2=127.0.0.1:1:2;3").client_address() == ("127.0.0.1", 3)
    with pytest.raises(ValueError):
        launch.ServerSpec.parse("server.x=nope")
    membership = launch.parse_conf(conf_reply([line, "server.5=h:1:2:observer;0.0.0.0:2181"], "1a"))
    assert membership is not None and membership.version == 0x1A
    assert membership.voters == {4} and membership.quorum == 1
    assert launch.parse_conf("This ZooKeeper instance is not currently serving requests\n") is None


def _member_dir(tmp_path: Path, myid: int, dynamic: str, *, pointer: str | None = None) -> Path:
    data = tmp_path / f"m{myid}"
    data.mkdir()
    (data / "myid").write_text(f"{myid}\n")
    (data / "zoo.cfg.dynamic").write_text(dynamic)
    (data / "secrets.args").write_text("-Dx=y\n")
    (data / "zoo.cfg").write_text(
        f"dataDir={data}\ndynamicConfigFile={pointer or data / 'zoo.cfg.dynamic'}\n"
        f"moorage.secretsFile={data / 'secrets.args'}\n"
    )
    return data / "zoo.cfg"


def _line(server_id: int, client_port: int) -> str:
    peer, election = 10000 + server_id, 11000 + server_id
    return f"server.{server_id}=127.0.0.1:{peer}:{election}:participant;127.0.0.1:{client_port}"


def test_launcher_starts_a_joiner_from_the_committed_config_plus_itself(tmp_path: Path) -> None:
    with FakeServer(conf_reply([_line(1, 0), _line(2, 0), _line(3, 0)])) as live:
        spec_lines = [_line(1, live.port), _line(2, closed_port()), _line(3, closed_port())]
        mine = _line(4, closed_port())
        cfg = _member_dir(tmp_path, 4, "\n".join([*spec_lines, mine, _line(5, closed_port())]) + "\n")
        assert launch.prepare(cfg).startswith("joining")
        assert "conf" in live.words
    dynamic = cfg.parent / "zoo.cfg.dynamic"
    assert dynamic.read_text() == "".join(
        f"{line}\n" for line in [_line(1, 0), _line(2, 0), _line(3, 0), mine]
    )
    assert launch.read_properties(cfg)["dynamicConfigFile"] == str(dynamic)


def test_launcher_brings_back_a_member_voted_out_earlier(tmp_path: Path) -> None:
    with FakeServer(conf_reply([_line(1, 0), _line(2, 0), _line(3, 0)])) as live:
        committed = cfg_dir = tmp_path / "committed"
        cfg_dir.mkdir()
        committed = cfg_dir / "zoo.cfg.dynamic.100000009"
        committed.write_text(f"{_line(1, live.port)}\n{_line(2, 1)}\n{_line(3, 1)}\n")
        mine = _line(4, closed_port())
        cfg = _member_dir(tmp_path, 4, f"{_line(1, live.port)}\n{mine}\n", pointer=str(committed))
        assert launch.prepare(cfg).startswith("joining")
    assert mine in (cfg.parent / "zoo.cfg.dynamic").read_text().splitlines()
    assert launch.read_properties(cfg)["dynamicConfigFile"] == str(cfg.parent / "zoo.cfg.dynamic")


def test_launcher_leaves_a_member_alone_and_refuses_an_orphan(tmp_path: Path) -> None:
    with FakeServer(conf_reply([_line(1, 0), _line(2, 0)])) as live:
        cfg = _member_dir(tmp_path, 2, f"{_line(1, live.port)}\n{_line(2, closed_port())}\n")
        before = cfg.read_text(), (cfg.parent / "zoo.cfg.dynamic").read_text()
        assert launch.prepare(cfg).startswith("member of the ensemble")
        assert (cfg.read_text(), (cfg.parent / "zoo.cfg.dynamic").read_text()) == before
    # Nobody answers: a new ensemble starts from its file as it is ...
    fresh = _member_dir(tmp_path, 3, f"{_line(1, closed_port())}\n{_line(3, closed_port())}\n")
    assert launch.prepare(fresh).startswith("no ensemble member answers")
    # ... but a member outside its own config has nobody to ask who the ensemble is now.
    committed = tmp_path / "zoo.cfg.dynamic.1"
    committed.write_text(f"{_line(1, closed_port())}\n")
    orphan = _member_dir(tmp_path, 4, f"{_line(4, closed_port())}\n", pointer=str(committed))
    with pytest.raises(launch.LaunchError, match="not in its own configuration"):
        launch.prepare(orphan)


def test_launcher_adds_the_jvm_argument_file_and_checks_the_install(tmp_path: Path) -> None:
    cfg = _member_dir(tmp_path, 1, f"{_line(1, 1)}\n")
    command = launch.server_command(cfg, ["sh", "-cp", "/bin", "Main", str(cfg)])
    assert command[:2] == ["sh", f"@{cfg.parent / 'secrets.args'}"]
    with pytest.raises(launch.LaunchError, match="apt-get install zookeeper"):
        launch.server_command(cfg, ["sh", "-cp", "/nonexistent/zookeeper.jar", "Main"])
    with pytest.raises(launch.LaunchError, match="not installed"):
        launch.server_command(cfg, ["no-such-java-binary", "Main"])


def test_launcher_refuses_a_provider_its_classpath_does_not_hold(tmp_path: Path) -> None:
    """A config asking for the Prometheus provider starts only with its jar in a classpath
    directory; without it the member's log says how to get it, or how to turn it off."""
    cfg = _member_dir(tmp_path, 1, f"{_line(1, 1)}\n")
    with cfg.open("a") as handle:
        handle.write(f"{launch.METRICS_PROVIDER_PROPERTY}={launch.METRICS_PROVIDER_CLASS}\n")
    jars = tmp_path / "jars"
    jars.mkdir()
    with pytest.raises(
        launch.LaunchError, match=r"provider is not installed .*spec\.monitoring\.enabled: false"
    ):
        launch.server_command(cfg, ["sh", "-cp", f"/bin:{jars}/*", "Main"])
    (jars / "zookeeper-prometheus-metrics-3.8.0.jar").write_bytes(b"")
    assert launch.server_command(cfg, ["sh", "-cp", f"/bin:{jars}/*", "Main"])[-1] == "Main"


# --- the init container's script, run for real --------------------------------------------------

_PATH_RE = re.compile(r"(?<![\w.])(/etc/zookeeper-templates|/etc/zookeeper-secrets|/data|/tmp)\b")


def init_script(manifests: list[dict[str, Any]]) -> str:
    (init,) = pod_of(manifests)["initContainers"]
    assert init["command"][:2] == ["bash", "-c"]
    return str(init["command"][2])


@pytest.fixture
def pod_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "pod"
    for path in ("etc/zookeeper-templates", "etc/zookeeper-secrets", "data", "tmp"):
        (root / path).mkdir(parents=True)
    yield root


def run_init(
    manifests: list[dict[str, Any]], root: Path, *, pod: str, client_port: int, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash, "bash runs the init script"
    for key, body in named(manifests, "ConfigMap", "coord-config")["data"].items():
        (root / "etc/zookeeper-templates" / key).write_text(body)
    script = _PATH_RE.sub(lambda m: f"{root}{m.group(1)}", init_script(manifests))
    script = script.replace("client_port=2181", f"client_port={client_port}")
    env = {
        "PATH": os.environ["PATH"],
        "POD_NAME": pod,
        "ZK_PASSWORD": password,
        "ZK_CLIENT_HOST": "127.0.0.1",
    }
    return subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_init_script_creates_the_ensemble_then_keeps_zookeepers_pointer(pod_root: Path) -> None:
    spec = make_spec(parameters={"tickTime": 1000})
    manifests = render(spec)
    result = run_init(manifests, pod_root, pod="coord-2", client_port=closed_port())
    assert result.returncode == 0, result.stderr
    assert "creating the ensemble" in result.stdout
    data = pod_root / "data"
    assert (data / "myid").read_text() == "3\n"
    initial = named(manifests, "ConfigMap", "coord-config")["data"]["zoo.cfg.dynamic"]
    assert (data / "zoo.cfg.dynamic").read_text() == initial
    cfg = (data / "zoo.cfg").read_text()
    assert "${" not in cfg and "tickTime=1000" in cfg.splitlines()
    assert f"dataDir={data}" in cfg.splitlines() and "quorumListenOnAllIPs=true" in cfg.splitlines()
    assert launch.read_properties(data / "zoo.cfg")["dynamicConfigFile"] == f"{data}/zoo.cfg.dynamic"
    secrets = pod_root / "etc/zookeeper-secrets/jvm.args"
    assert secrets.read_text() == config.secrets_file(PASSWORD)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert not list(pod_root.rglob("*.tmp"))

    # ZooKeeper moved on to a committed config; a restart with new parameters keeps that pointer.
    committed = data / "zoo.cfg.dynamic.100000004"
    committed.write_text(initial)
    (data / "zoo.cfg").write_text(cfg.replace(f"{data}/zoo.cfg.dynamic", str(committed)))
    result = run_init(
        render(make_spec(parameters={"tickTime": 3000})), pod_root, pod="coord-2", client_port=1
    )
    assert result.returncode == 0, result.stderr
    assert "member of the ensemble" in result.stdout
    props = launch.read_properties(data / "zoo.cfg")
    assert props["dynamicConfigFile"] == str(committed) and props["tickTime"] == "3000"
    assert (data / "myid").read_text() == "3\n"


def test_init_script_starts_a_joiner_from_the_live_ensemble(pod_root: Path) -> None:
    manifests = render(make_spec(replicas=5))
    current = launch.parse_servers(named(manifests, "ConfigMap", "coord-config")["data"]["zoo.cfg.dynamic"])
    committed = [current[i].line for i in (1, 2, 3)]
    with FakeServer(conf_reply(committed)) as live:
        result = run_init(manifests, pod_root, pod="coord-3", client_port=live.port)
    assert result.returncode == 0, result.stderr
    assert "joining the ensemble" in result.stdout
    dynamic = (pod_root / "data/zoo.cfg.dynamic").read_text().splitlines()
    assert dynamic == [*committed, current[4].line]


def test_init_script_refuses_an_orphan_and_an_empty_password(pod_root: Path) -> None:
    manifests = render(make_spec())
    data = pod_root / "data"
    committed = data / "zoo.cfg.dynamic.100000009"
    committed.write_text("server.1=a:2888:3888:participant;0.0.0.0:2181\n")
    (data / "zoo.cfg").write_text(f"dynamicConfigFile={committed}\n")
    result = run_init(manifests, pod_root, pod="coord-2", client_port=closed_port())
    assert result.returncode != 0
    assert "not in its configuration" in result.stderr
    result = run_init(manifests, pod_root, pod="coord-2", client_port=closed_port(), password="")
    assert result.returncode != 0 and "ZK_PASSWORD is empty" in result.stderr
