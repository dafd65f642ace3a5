"""PostgreSQL manifests and configs: golden files, strict Kubernetes schemas, the rules every manifest
keeps, parameter validation, and the shell pieces (init script, fenced start, pgpass) run for real.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_postgresql_render.py`` and review the diff.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from middleware.engines.base import PLACEHOLDERS
from middleware.engines.postgresql import config
from middleware.engines.postgresql.engine import ENGINE
from middleware.engines.postgresql.render import render, render_credentials
from middleware.engines.registry import get_engine
from middleware.errors import SpecError
from middleware.kube import builders as kube
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

GOLDEN_DIR = Path(__file__).parent / "golden"
NAMESPACE = "ai"
PASSWORD = "s3cr3t pa$$ \"quoted\" back\\slash 100% `tick` 'single' :colon:"
EXAMPLES: dict[str, dict[str, Any]] = {
    "standalone": {"name": "notes", "spec": {"engine": "postgresql", "topology": "standalone"}},
    "replication": {
        "name": "vectors",
        "spec": {
            "engine": "postgresql",
            "topology": "replication",
            "replicas": 3,
            "extensions": ["vector"],
            "parameters": {"work_mem": "16MB", "max_connections": 300},
        },
    },
}
TOPOLOGIES = tuple(EXAMPLES)


def make_spec(topology: str, **overrides: Any) -> ResolvedSpec:
    example = EXAMPLES[topology]
    return middleware_spec(example["name"], NAMESPACE, {**example["spec"], **overrides})


# --- golden and schema ----------------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_golden(topology: str) -> None:
    assert_golden(
        render(make_spec(topology)),
        GOLDEN_DIR / f"postgresql-{topology}.yaml",
        __file__,
        mismatch="render() no longer matches {name}; if intended, UPDATE_GOLDEN=1.\n",
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_manifest_passes_strict_schema(topology: str, version: str) -> None:
    spec = make_spec(topology)
    assert_strict_valid([*render(spec), render_credentials(spec, PASSWORD)], versions=(version,))


def test_registry_serves_the_engine() -> None:
    assert get_engine("postgresql") is ENGINE


# --- objects --------------------------------------------------------------------------------------


def test_standalone_objects() -> None:
    manifests = render(make_spec("standalone"))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "notes-config"),
        ("Service", "notes-headless"),
        ("Service", "notes-rw"),
        ("StatefulSet", "notes"),
        ("Service", "notes-metrics"),
    ]


def test_replication_objects_and_role_services() -> None:
    manifests = render(make_spec("replication"))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "vectors-config"),
        ("Service", "vectors-headless"),
        ("Service", "vectors-rw"),
        ("Service", "vectors-ro"),
        ("StatefulSet", "vectors"),
        ("PodDisruptionBudget", "vectors"),
        ("Service", "vectors-metrics"),
    ]
    rw = named(manifests, "Service", "vectors-rw")["spec"]
    ro = named(manifests, "Service", "vectors-ro")["spec"]
    assert rw["selector"][kube.ROLE_LABEL] == "primary" and ro["selector"][kube.ROLE_LABEL] == "replica"
    assert rw["ports"] == [
        {"name": "postgresql", "port": 5432, "targetPort": "postgresql", "protocol": "TCP"}
    ]
    headless = named(manifests, "Service", "vectors-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    (sts,) = of_kind(manifests, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "vectors-headless"
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert kube.ROLE_LABEL not in sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pdb = named(manifests, "PodDisruptionBudget", "vectors")["spec"]
    assert (
        pdb["maxUnavailable"] == 1
        and pdb["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    )
    terms = pod_of(manifests)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert kube.VERSION_LABEL not in terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_qos_security_and_probes(topology: str) -> None:
    pod = pod_of(render(make_spec(topology)))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 999
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert_guaranteed_qos(c, c["name"])
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    main, metrics = pod["containers"]
    assert metrics["name"] == "metrics" and "startupProbe" not in metrics
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["exec"]["command"][0] == "pg_isready"
    assert main["lifecycle"]["preStop"]["exec"]["command"][:2] == ["pg_ctl", "stop"]
    assert {"name": "data", "mountPath": "/data"} in main["volumeMounts"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_passwords_never_leave_the_secret(topology: str) -> None:
    spec = make_spec(topology)
    secret = render_credentials(spec, PASSWORD)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "password": PASSWORD,
        "replication-password": config.replication_password(PASSWORD),
        "app-password": config.app_password(PASSWORD),
    }
    assert len(set(data.values())) == 3, "derived passwords differ from the superuser's"
    text = dump(render(spec))
    for value in (*data.values(), *secret["data"].values()):
        assert value not in text
    for c in [*pod_of(render(spec))["initContainers"], *pod_of(render(spec))["containers"]]:
        for env in c.get("env", []):
            if "PASS" in env["name"]:
                assert "secretKeyRef" in env["valueFrom"], f"{c['name']}: {env['name']} is set literally"
            else:
                assert not any(value in env.get("value", "") for value in data.values())
        for word in [*c.get("command", []), *c.get("args", [])]:
            # Kubelet expands $(NAME) and collapses $$ in commands.
            assert "$(" not in word and "$$" not in word


# --- config ---------------------------------------------------------------------------------------


def test_postgresql_conf_owns_replication_and_takes_parameters() -> None:
    conf = config.postgresql_conf(make_spec("replication"))
    for line in (
        "listen_addresses = '${BIND}'",
        "port = ${PORT}",
        "hba_file = '${DATA_DIR}/pg_hba.conf'",
        "wal_level = replica",
        "wal_log_hints = on",
        "hot_standby = on",
        "synchronous_standby_names = 'ANY 1 (*)'",
        "work_mem = '16MB'",
        "max_connections = '300'",
        "shared_buffers = '128MB'",  # 25% of the small plan's 512Mi
        "moorage.passfile = '${SECRETS_FILE}'",
    ):
        assert line in conf.splitlines(), line
    assert config.FENCE_OFF_LINE not in conf
    standalone = config.postgresql_conf(make_spec("standalone"))
    assert "synchronous_standby_names" not in standalone
    assert config.FENCE_OFF_LINE in standalone.splitlines()
    used = set(re.findall(r"\$\{(\w+)\}", conf + config.pg_hba_conf(make_spec("replication"))))
    assert used <= set(PLACEHOLDERS)


def test_pg_hba_is_scram_only() -> None:
    hba = [
        ln
        for ln in config.pg_hba_conf(make_spec("replication")).splitlines()
        if ln and not ln.startswith("#")
    ]
    assert hba and all(ln.split()[-1] == "scram-sha-256" for ln in hba)
    assert not any(ln.startswith("local") for ln in hba)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"work_mem": "16 MB"}, "spec.parameters.work_mem"),
        ({"max_connections": 5}, "spec.parameters.max_connections"),
        ({"synchronous_commit": "sometimes"}, "spec.parameters.synchronous_commit"),
        ({"random_page_cost": "fast"}, "spec.parameters.random_page_cost"),
        ({"fsync": "off"}, "spec.parameters.fsync"),
    ],
)
def test_invalid_parameters_are_rejected(parameters: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        make_spec("replication", parameters=parameters)
    assert field in str(error.value)


def test_parameter_kinds_follow_the_catalog() -> None:
    spec = make_spec("replication", parameters={"work_mem": "8MB", "max_connections": 100})
    assert "work_mem" in spec.dynamic_parameters and "max_connections" not in spec.dynamic_parameters
    assert spec.parameters["synchronous_commit"] == "on"


# --- shell pieces, run for real ---------------------------------------------------------------------


def test_pgpass_and_initdb_pwfile_round_trip(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.conf"
    secrets.write_text(config.pgpass(PASSWORD))
    subprocess.run(["sh", "-c", config.PWFILE_SCRIPT, "x", str(secrets), str(tmp_path / "pw")], check=True)
    assert (tmp_path / "pw").read_text() == PASSWORD + "\n"
    assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o600
    lines = secrets.read_text().splitlines()
    assert lines[0].startswith("*:*:*:replicator:") and lines[1].startswith("*:*:*:postgres:")
    assert "\\:colon\\:" in lines[1] and "back\\\\slash" in lines[1]


def test_conninfo_quoting() -> None:
    assert config.conninfo(host="h", port=1, passfile="/a b/it's") == "host=h port=1 passfile='/a b/it\\'s'"


def _fake_bin(tmp_path: Path, names: list[str], log: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        script = bin_dir / name
        # Records its arguments and, like the real tools, creates the -D directory.
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
            'while [ $# -gt 0 ]; do if [ "$1" = -D ]; then mkdir -p "$2"; fi; shift; done\n'
        )
        script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("marker", "fence_off", "standby"), [(True, False, False), (False, False, True), (False, True, False)]
)
def test_start_script_fences_every_start_but_a_fresh_primary(
    tmp_path: Path, marker: bool, fence_off: bool, standby: bool
) -> None:
    log = tmp_path / "log"
    bin_dir = _fake_bin(tmp_path, ["postgres"], log)
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    conf = tmp_path / "postgresql.conf"
    conf.write_text("port = 1\n" + (config.FENCE_OFF_LINE + "\n" if fence_off else ""))
    if marker:
        (pgdata / config.FIRST_START_MARKER).touch()
        (pgdata / "standby.signal").touch()
    args = ["sh", "-c", config.START_SCRIPT, "start", str(bin_dir), str(conf), str(pgdata)]
    subprocess.run(args, check=True)
    assert (pgdata / "standby.signal").exists() == standby
    assert not (pgdata / config.FIRST_START_MARKER).exists()
    assert log.read_text() == f"postgres -D {pgdata} -c config_file={conf}\n"


def _run_init(
    tmp_path: Path,
    spec: ResolvedSpec,
    pod: str,
    *,
    primary_up: bool,
    has_data: bool,
    rewind_error: str | None = None,
    expect_failure: bool = False,
) -> str:
    manifests = render(spec)
    pod_spec = pod_of(manifests)
    script: str = pod_spec["initContainers"][0]["command"][2]
    root = tmp_path / "root"
    for directory in ("etc/postgresql-templates", "etc/postgresql", "etc/postgresql-secrets", "data"):
        (root / directory).mkdir(parents=True)
    for key, body in of_kind(manifests, "ConfigMap")[0]["data"].items():
        (root / "etc/postgresql-templates" / key).write_text(body)
    if has_data:
        (root / "data/pgdata").mkdir()
        (root / "data/pgdata/PG_VERSION").write_text("18\n")
    script = re.sub(r"(?<![\w.])(/etc/postgresql[-\w]*|/data)\b", lambda m: f"{root}{m.group(1)}", script)
    log = tmp_path / "calls"
    bin_dir = _fake_bin(tmp_path, ["initdb", "pg_basebackup", "pg_rewind", "postgres"], log)
    (bin_dir / "pg_isready").write_text(f"#!/bin/sh\nexit {0 if primary_up else 1}\n")
    (bin_dir / "pg_isready").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(0o755)
    if rewind_error is not None:
        (bin_dir / "pg_rewind").write_text(
            f'#!/bin/sh\necho "pg_rewind $*" >> "{log}"\necho "{rewind_error}" >&2\nexit 1\n'
        )
    script = script.replace("/tmp/pg_rewind.err", f"{tmp_path}/pg_rewind.err")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "POD_NAME": pod,
        "POSTGRES_PASSWORD": PASSWORD,
        "REPLICATION_PASSWORD": config.replication_password(PASSWORD),
    }
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    if expect_failure:
        assert result.returncode != 0
        return result.stderr
    assert result.returncode == 0, result.stderr
    rendered = (root / "etc/postgresql/postgresql.conf").read_text()
    assert "${" not in rendered and f"hba_file = '{root}/etc/postgresql/pg_hba.conf'" in rendered
    pgpass = root / "etc/postgresql-secrets/pgpass"
    assert pgpass.read_text() == config.pgpass(PASSWORD)
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    assert not (root / "etc/postgresql-secrets/pwfile").exists()
    return log.read_text() if log.exists() else ""


def test_init_script_initialises_ordinal_zero_and_clones_the_others(tmp_path: Path) -> None:
    spec = make_spec("replication")
    calls = _run_init(tmp_path / "a", spec, "vectors-0", primary_up=False, has_data=False)
    assert calls.startswith("initdb -D ") and "--data-checksums" in calls
    # The replication role exists before the first start, so the next members can clone.
    assert "\npostgres --single -D " in calls
    calls = _run_init(tmp_path / "b", spec, "vectors-2", primary_up=True, has_data=False)
    assert calls.startswith("pg_basebackup ") and "application_name=vectors-2" in calls
    calls = _run_init(tmp_path / "c", spec, "vectors-0", primary_up=True, has_data=True)
    assert calls.startswith("pg_rewind ") and "host=vectors-rw.ai.svc.cluster.local" in calls
    assert _run_init(tmp_path / "d", spec, "vectors-0", primary_up=False, has_data=True) == ""


def test_init_script_clones_afresh_when_the_rewind_cannot_be_done_keeping_the_old_data(
    tmp_path: Path,
) -> None:
    spec = make_spec("replication")
    calls = _run_init(
        tmp_path,
        spec,
        "vectors-0",
        primary_up=True,
        has_data=True,
        rewind_error="pg_rewind: error: could not find previous WAL record at 0/3000028",
    )
    assert calls.splitlines()[0].startswith("pg_rewind ")
    assert calls.splitlines()[1].startswith("pg_basebackup ") and "application_name=vectors-0" in calls
    assert (tmp_path / "root/data/pgdata.rewind-failed/PG_VERSION").exists()


def test_init_script_does_not_clone_when_the_primary_did_not_answer_the_rewind(tmp_path: Path) -> None:
    spec = make_spec("replication")
    stderr = _run_init(
        tmp_path,
        spec,
        "vectors-0",
        primary_up=True,
        has_data=True,
        rewind_error='pg_rewind: error: connection to server at "vectors-rw" failed: Connection refused',
        expect_failure=True,
    )
    assert "trying again at the next start" in stderr
    assert not (tmp_path / "root/data/pgdata.rewind-failed").exists()
    assert (tmp_path / "root/data/pgdata/PG_VERSION").exists()
