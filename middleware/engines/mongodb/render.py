"""Kubernetes manifests for a MongoDB replica set. Pure: spec in, plain dicts out.

Objects: ConfigMap ``NAME-config`` (the mongod.conf template), headless Service ``NAME-headless``
(per-pod DNS names, the hosts of the replica set config), client Service ``NAME``, StatefulSet
``NAME``, PDB ``NAME``; and, created once by whoever creates the deployment, the credentials Secret
(admin user and password) and the keyFile Secret ``NAME-keyfile`` (``render_keyfile``).

The pod runs mongod directly (not the image's entrypoint, whose MONGO_INITDB_* user creation would
need the admin password inside the pod). An init container renders mongod.conf from the template and
copies the keyFile out of its Secret volume with mode 0400: mongod refuses a keyFile readable by
group or others, and a Secret volume with fsGroup is group-readable. The copy is owned by the pod's
user, 999, the ``mongodb`` user of the official image.
"""

from __future__ import annotations

import base64
from typing import Any

from middleware.engines.base import PLACEHOLDERS
from middleware.engines.mongodb.config import ADMIN_USER, CONFIG_FILE, PORT, check_keyfile_key, mongod_conf
from middleware.engines.mongodb.topology import (
    DATA_COMPONENT,
    client_service,
    headless_service,
    replica_set_name,
    workload,
)
from middleware.kube import builders as kube
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

TEMPLATES_DIR = "/etc/mongodb-templates"
CONFIG_DIR = "/etc/mongodb"
KEYFILE_SOURCE_DIR = "/etc/mongodb-keyfile"
SECRETS_DIR = "/etc/mongodb-secrets"
KEYFILE_KEY = "keyfile"
KEYFILE_PATH = f"{SECRETS_DIR}/{KEYFILE_KEY}"
DATA_DIR = "/data/db"
TMP_DIR = "/tmp"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
USERNAME_KEY = "username"
PASSWORD_KEY = "password"
POD_NAME_ENV = "POD_NAME"
# The `mongodb` user and group of the official image (it owns /data/db there).
MONGODB_UID = 999
# A primary's clean shutdown steps down first and waits up to 10 s for a secondary to catch up,
# then checkpoints WiredTiger: more than the 30 s Kubernetes default on a busy member.
GRACE_SECONDS = 60

_CONFIG_VOLUME = "config"
_KEYFILE_SOURCE_VOLUME = "keyfile"
_SECRETS_VOLUME = "secrets"
_TMP_VOLUME = "tmp"


def keyfile_secret_name(spec: ResolvedSpec) -> str:
    return f"{spec.name}-keyfile"


def pod_host(spec: ResolvedSpec, pod: str, cluster_domain: str = "cluster.local") -> str:
    """A member's stable host name: what the replica set config lists, never a pod IP."""
    return f"{pod}.{headless_service(spec.name)}.{spec.namespace}.svc.{cluster_domain}"


def render(spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[Manifest]:
    """Every manifest except the two generated Secrets (``render_credentials``, ``render_keyfile``)."""
    if spec.engine != "mongodb":
        raise ValueError(f"the mongodb renderer got a {spec.engine!r} spec")
    if spec.topology != "replicaset":
        raise ValueError(f"mongodb cannot render topology {spec.topology!r}")
    kube.check_cluster_domain(cluster_domain)
    name = workload(spec.name)
    headless = headless_service(spec.name)
    return [
        kube.config_map(
            spec,
            name=kube.config_map_name(spec),
            data={CONFIG_FILE: mongod_conf(spec, replica_set_name(spec.name))},
        ),
        # Not-ready pods are published (the builder's default): members must resolve each other
        # before any of them is in a replica set state, i.e. before any of them is Ready.
        kube.headless_service(spec, name=headless, component=DATA_COMPONENT, ports=[("mongodb", PORT)]),
        # Ready pods are PRIMARY or SECONDARY: a seed for drivers, which then discover the members
        # from `hello` and route writes to the primary themselves.
        kube.client_service(
            spec, name=client_service(spec.name), component=DATA_COMPONENT, ports=[("mongodb", PORT)]
        ),
        _statefulset(spec, name=name, headless=headless, cluster_domain=cluster_domain),
        # One voluntary eviction at a time: with 3 voters, losing one keeps a majority to elect.
        kube.pod_disruption_budget(spec, name=name, component=DATA_COMPONENT),
    ]


def render_credentials(spec: ResolvedSpec, password: str) -> Manifest:
    """The admin user's credentials (``username``, ``password``), created once by the runtime."""
    secret = kube.credentials_secret(spec, password, key=PASSWORD_KEY)
    secret["data"] = {
        USERNAME_KEY: base64.b64encode(ADMIN_USER.encode()).decode("ascii"),
        PASSWORD_KEY: secret["data"][PASSWORD_KEY],
    }
    return secret


def render_keyfile(spec: ResolvedSpec, key: str) -> Manifest:
    """The replica set's shared keyFile (members authenticate each other with it). Generate it once
    (``config.generate_keyfile_key``) and never overwrite it: members with different keys cannot
    talk to each other."""
    body = check_keyfile_key(key) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": kube.metadata(
            spec,
            keyfile_secret_name(spec),
            "credentials",
            annotations={kube.GENERATED_ANNOTATION: "true"},
        ),
        "type": "Opaque",
        "data": {KEYFILE_KEY: base64.b64encode(body.encode("ascii")).decode("ascii")},
    }


def placeholder_values(*, headless: str, spec: ResolvedSpec, cluster_domain: str) -> dict[str, str]:
    """Every placeholder's value as a shell word inside double quotes."""
    return {
        # All of the pod's interfaces: probes come over 127.0.0.1, peers and clients over the pod IP.
        "BIND": "0.0.0.0",
        "PORT": str(PORT),
        "BUS_PORT": "0",
        "DATA_DIR": DATA_DIR,
        "ANNOUNCE_HOST": f"${{{POD_NAME_ENV}}}.{headless}.{spec.namespace}.svc.{cluster_domain}",
        "SECRETS_FILE": KEYFILE_PATH,
    }


def init_script(values: dict[str, str]) -> str:
    """bash (the image's), run before every start. Kubelet rewrites ``$(NAME)`` and ``$$`` in
    commands, so the script uses neither."""
    missing = [name for name in PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"no value for placeholders {missing}")
    sed = " ".join(f'-e "s|[$]{{{name}}}|{values[name]}|g"' for name in PLACEHOLDERS)
    lines = [
        "set -eu",
        "umask 077",
        f"if [ ! -s {KEYFILE_SOURCE_DIR}/{KEYFILE_KEY} ]; then",
        '  echo "the keyFile Secret is empty: refusing to start a member without it" >&2',
        "  exit 1",
        "fi",
        # Rendered on every start, so parameter changes apply on the next restart.
        f"sed {sed} {TEMPLATES_DIR}/{CONFIG_FILE} > {CONFIG_PATH}.tmp",
        f"mv {CONFIG_PATH}.tmp {CONFIG_PATH}",
        # 0400 and owned by this container's user (999, as mongod runs): mongod checks both.
        f"rm -f {KEYFILE_PATH}",
        f"install -m 0400 {KEYFILE_SOURCE_DIR}/{KEYFILE_KEY} {KEYFILE_PATH}",
    ]
    return "\n".join(lines) + "\n"


def _mongosh(script: str) -> list[str]:
    # mongosh ships in the official 7.0 and 8.0 images. ping and hello need no authentication.
    return ["mongosh", "--quiet", "--norc", "--port", str(PORT), "--eval", script]


def _probes() -> kube.Probes:
    """Ready only as PRIMARY or SECONDARY (what clients may use); alive whenever mongod answers
    ``ping``: a member in STARTUP2 or RECOVERING is catching up, and a restart would start it over.
    mongosh is a Node.js program that takes a second or two to start, hence the long timeouts."""
    alive = _mongosh("db.adminCommand({ping: 1}).ok || quit(1)")
    member = _mongosh(
        "const h = db.adminCommand({hello: 1}); (h.isWritablePrimary || h.secondary) || quit(1)"
    )
    return {
        # Startup covers replaying the journal after a crash, which can take minutes on a large set.
        "startup": kube.exec_probe(alive, period=10, timeout=10, failure_threshold=60),
        "readiness": kube.exec_probe(member, period=10, timeout=10, failure_threshold=3),
        "liveness": kube.exec_probe(alive, period=10, timeout=10, failure_threshold=6),
    }


def _statefulset(spec: ResolvedSpec, *, name: str, headless: str, cluster_domain: str) -> Manifest:
    values = placeholder_values(headless=headless, spec=spec, cluster_domain=cluster_domain)
    return kube.member_statefulset(
        spec,
        kube.MemberWorkload(
            name=name,
            component=DATA_COMPONENT,
            service_name=headless,
            # Parallel. Readiness means PRIMARY or SECONDARY, which no member reaches before
            # Moorage's replSetInitiate, and that needs every member up: OrderedReady would wait
            # forever on pod 0. Parallel is safe here, unlike Redis (#12271): an uninitialized mongod
            # holds no replica set config and never elects itself or syncs anyone; membership
            # changes only through Moorage's replSetInitiate/replSetReconfig, and an election needs
            # a majority whose oplog it matches.
            pod_management_policy=kube.PARALLEL,
            run_as=MONGODB_UID,
            grace_seconds=GRACE_SECONDS,
            templates_dir=TEMPLATES_DIR,
            init_shell="bash",
            init_script=init_script(values),
            init_env=[kube.env_from_field(POD_NAME_ENV, "metadata.name")],
            init_mounts=[
                kube.volume_mount(_KEYFILE_SOURCE_VOLUME, KEYFILE_SOURCE_DIR, read_only=True),
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR),
            ],
            container_name="mongod",
            command=["mongod", "--config", CONFIG_PATH],
            # mongosh (probes) keeps its history and logs under $HOME; the root filesystem is
            # read-only.
            env=[{"name": "HOME", "value": TMP_DIR}],
            ports=[("mongodb", PORT)],
            mounts=[
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR, read_only=True),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR, read_only=True),
                # mongod's unix socket and mongosh's scratch files.
                kube.volume_mount(_TMP_VOLUME, TMP_DIR),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            probes=_probes(),
            volumes=[
                {
                    "name": _KEYFILE_SOURCE_VOLUME,
                    "secret": {"secretName": keyfile_secret_name(spec), "defaultMode": 0o400},
                },
                kube.empty_dir_volume(_CONFIG_VOLUME, size_limit="1Mi"),
                # Memory-backed: the keyFile copy never reaches the node's disk.
                kube.empty_dir_volume(_SECRETS_VOLUME, size_limit="1Mi", memory=True),
                kube.empty_dir_volume(_TMP_VOLUME, size_limit="256Mi"),
            ],
        ),
    )
