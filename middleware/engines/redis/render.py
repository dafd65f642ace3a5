"""Kubernetes manifests for Redis (standalone, sentinel, cluster). Pure: spec in, plain dicts out.

The config templates of ``config.py`` ship unrendered in a ConfigMap; an init container fills the
placeholders per pod (its own DNS name) with sed, so Kubernetes pods and local processes start from
the very same files. The password only travels Secret → env → a memory-backed emptyDir file that the
config includes: never the ConfigMap, container args or annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from middleware.engines import metrics
from middleware.engines.base import PLACEHOLDERS
from middleware.engines.redis.config import (
    BUS_PORT,
    REDIS_PORT,
    SENTINEL_PORT,
    exporter,
    redis_conf,
    secrets_conf,
    sentinel_conf,
)
from middleware.engines.redis.topology import (
    DATA_COMPONENT,
    SENTINEL_COMPONENT,
    data_workload,
    headless_service,
    sentinel_master_name,
    sentinel_workload,
    shard_workload,
)
from middleware.kube import builders as kube
from middleware.models.common import Resources
from middleware.models.middleware import Topology
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

REDIS_CONF = "redis.conf"
SENTINEL_CONF = "sentinel.conf"
TEMPLATES_DIR = "/etc/redis-templates"
CONFIG_DIR = "/etc/redis"
SECRETS_DIR = "/etc/redis-secrets"
SECRETS_FILE = f"{SECRETS_DIR}/secrets.conf"
DATA_DIR = "/data"
BIND_ALL = "0.0.0.0"
PASSWORD_KEY = "password"
PASSWORD_ENV = "REDIS_PASSWORD"
# redis-cli reads this instead of -a, so probes neither put the password in argv nor print a warning.
CLI_AUTH_ENV = "REDISCLI_AUTH"
POD_NAME_ENV = "POD_NAME"
# The `redis` user and group of the official image, which owns its data directory.
REDIS_UID = 999

# Sentinels hold a few KB of state; they need not cost what a data member costs, but their requests
# still equal their limits so sentinel pods keep Guaranteed QoS too.
SENTINEL_RESOURCES = Resources(cpu="100m", memory="64Mi")
# Sentinel rewrites its own config (known masters, replicas, epochs); it must survive restarts, or a
# restarted sentinel would forget a failover and could vote for the old master again.
SENTINEL_STORAGE = "64Mi"
# On SIGTERM Redis waits for replicas to catch up (shutdown-timeout, 10s) and may save an RDB; give it
# time before the SIGKILL, which would lose writes since the last fsync.
DATA_GRACE_SECONDS = 60
# preStop of a master: hand over to a replica before stopping, so a drain, a rolling restart or a
# `kubectl delete pod` promotes a replica at once and loses nothing, instead of the data being
# unwritable until the pod is back or a failure detector fires. A killed pod (no preStop) is the
# failure detectors' job (cluster-node-timeout, sentinel's down-after). `handover` runs only on a
# master: in a cluster, the first online replica runs CLUSTER FAILOVER (it waits until it has every
# write); with sentinel, the sentinels are asked for a failover. Then wait (bounded) until this
# member is no longer master.
_MASTER_HANDOVER = """\
cli() { redis-cli -p %(port)d "$@" 2>/dev/null; }
[ "`cli ROLE | head -n 1`" = master ] || exit 0
%(handover)s
i=0
while [ "`cli ROLE | head -n 1`" = master ] && [ $i -lt 40 ]; do sleep 0.5; i=`expr $i + 1`; done
"""
_CLUSTER_HANDOVER = """\
replica=`cli INFO replication \\
  | sed -n 's/^slave[0-9]*:ip=\\([^,]*\\),port=\\([0-9]*\\),state=online.*/\\1 \\2/p' | head -n 1`
[ -n "$replica" ] || exit 0
set -- $replica
redis-cli -h "$1" -p "$2" CLUSTER FAILOVER >/dev/null 2>&1 || exit 0"""
# SENTINEL FAILOVER alone promotes a replica while this master still takes writes that the
# promoted replica never sees (kube-proxy keeps routing to a terminating pod that still serves):
# writes are paused first, every replica is let catch up to the last offset, and only then are the
# sentinels asked. Paused writers get READONLY once this member follows the new master: refused,
# never acknowledged and lost. The pause is renewed while the sentinels promote (Redis keeps the later
# deadline): one that ran out before the promotion would let this member acknowledge writes the new
# master never gets. It ends by itself at the latest 5 s after the script stops renewing it.
_SENTINEL_HANDOVER = """\
cli CLIENT PAUSE 15000 WRITE >/dev/null
offset=`cli INFO replication | sed -n 's/^master_repl_offset:\\([0-9]*\\).*/\\1/p'`
i=0
# Every online replica, not just one: the sentinels choose which one to promote.
behind() { cli INFO replication | grep "^slave[0-9]*:.*state=online" | grep -vc "offset=$offset,"; }
while [ "`behind`" != 0 ] && [ $i -lt 40 ]; do
  sleep 0.25; i=`expr $i + 1`
done
sentinel() { redis-cli -h %(sentinels)s -p %(sentinel_port)d "$@" 2>/dev/null; }
sentinel SENTINEL FAILOVER %(master)s >/dev/null || exit 0
# Follow the new master as soon as a sentinel names it, then lift the pause: the held writes fail
# with READONLY at once.
me=`cli CONFIG GET replica-announce-ip | tail -n 1`
i=0
while [ $i -lt 80 ]; do
  cli CLIENT PAUSE 5000 WRITE >/dev/null
  set -- `sentinel SENTINEL GET-MASTER-ADDR-BY-NAME %(master)s`
  if [ -n "${1:-}" ] && [ "$1" != "$me" ]; then
    cli REPLICAOF "$1" "$2" >/dev/null && cli CLIENT UNPAUSE >/dev/null
    break
  fi
  sleep 0.25; i=`expr $i + 1`
done"""


def _pre_stop(spec: ResolvedSpec) -> list[str] | None:
    script = master_handover_script(spec)
    return ["sh", "-c", script] if script else None


def master_handover_script(spec: ResolvedSpec) -> str | None:
    """The preStop script of a data member (None for standalone: there is no one to hand over to)."""
    if spec.topology == Topology.CLUSTER:
        handover = _CLUSTER_HANDOVER
    elif spec.topology == Topology.SENTINEL:
        handover = _SENTINEL_HANDOVER % {
            # The client Service of the sentinels is named like their StatefulSet.
            "sentinels": sentinel_workload(spec.name),
            "sentinel_port": SENTINEL_PORT,
            "master": sentinel_master_name(spec),
        }
    else:
        return None
    return _MASTER_HANDOVER % {"port": REDIS_PORT, "handover": handover}


SENTINEL_GRACE_SECONDS = 30


_CONFIG_VOLUME = "config"
_SECRETS_VOLUME = "secrets"


def render(spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[Manifest]:
    """Every manifest of the deployment except the credentials Secret (see ``render_credentials``)."""
    if spec.engine != "redis":
        raise ValueError(f"the redis renderer got a {spec.engine!r} spec")
    kube.check_cluster_domain(cluster_domain)
    renderer = _RENDERERS.get(Topology(spec.topology))
    if renderer is None:
        raise ValueError(f"redis cannot render topology {spec.topology!r}")
    return [*renderer(spec, cluster_domain), *metrics.services(spec, exporter(spec))]


def render_credentials(spec: ResolvedSpec, password: str) -> Manifest:
    """The credentials Secret. Separate from ``render`` because the runtime creates it once with a
    generated password and never overwrites it: re-applying it would lock every client out."""
    return kube.credentials_secret(spec, password, key=PASSWORD_KEY)


# ---------------------------------------------------------------------------------------------------
# Topologies


def _standalone(spec: ResolvedSpec, cluster_domain: str) -> list[Manifest]:
    name = data_workload(spec.name)
    headless = headless_service(spec.name)
    # No PodDisruptionBudget: with one pod, maxUnavailable 1 protects nothing, and minAvailable 1
    # would block every node drain forever. A single member is downtime on any eviction by design;
    # the object set then also stays the same whatever happens (no PDB to prune).
    return [
        _config_map(spec),
        kube.headless_service(spec, name=headless, component=DATA_COMPONENT, ports=[("redis", REDIS_PORT)]),
        kube.client_service(spec, name=spec.name, component=DATA_COMPONENT, ports=[("redis", REDIS_PORT)]),
        _data_statefulset(spec, name=name, headless=headless, cluster_domain=cluster_domain),
    ]


def _sentinel(spec: ResolvedSpec, cluster_domain: str) -> list[Manifest]:
    data = data_workload(spec.name)
    sentinels = sentinel_workload(spec.name)
    headless = headless_service(spec.name)
    sentinel_headless = headless_service(spec.name, SENTINEL_COMPONENT)
    redis_port = [("redis", REDIS_PORT)]
    sentinel_port = [("sentinel", SENTINEL_PORT)]
    return [
        _config_map(spec),
        kube.headless_service(spec, name=headless, component=DATA_COMPONENT, ports=redis_port),
        kube.headless_service(
            spec, name=sentinel_headless, component=SENTINEL_COMPONENT, ports=sentinel_port
        ),
        # The operator labels the pod sentinels report as master `moorage.io/role=master` (the others
        # `replica`) on every observation, so these Services follow failovers. Until the first
        # observation they have no endpoints, which is right: no master is known yet. Sentinel-aware
        # clients use the `-sentinel` Service instead.
        kube.client_service(
            spec,
            name=f"{spec.name}-master",
            component=DATA_COMPONENT,
            ports=redis_port,
            extra_selector={kube.ROLE_LABEL: "master"},
        ),
        kube.client_service(
            spec,
            name=f"{spec.name}-replicas",
            component=DATA_COMPONENT,
            ports=redis_port,
            extra_selector={kube.ROLE_LABEL: "replica"},
        ),
        kube.client_service(spec, name=sentinels, component=SENTINEL_COMPONENT, ports=sentinel_port),
        _data_statefulset(spec, name=data, headless=headless, cluster_domain=cluster_domain),
        _sentinel_statefulset(
            spec, name=sentinels, headless=sentinel_headless, cluster_domain=cluster_domain
        ),
        kube.pod_disruption_budget(spec, name=data, component=DATA_COMPONENT),
        kube.pod_disruption_budget(spec, name=sentinels, component=SENTINEL_COMPONENT),
    ]


def _cluster(spec: ResolvedSpec, cluster_domain: str) -> list[Manifest]:
    headless = headless_service(spec.name)
    shards = [(shard_workload(spec.name, i), {kube.SHARD_LABEL: str(i)}) for i in spec.shard_indexes()]
    return [
        _config_map(spec),
        # One headless Service for every shard: nodes announce `<pod>.<name>-headless...`, and the
        # bus port must be reachable between any two nodes, whatever their shard.
        kube.headless_service(
            spec, name=headless, component=DATA_COMPONENT, ports=[("redis", REDIS_PORT), ("bus", BUS_PORT)]
        ),
        kube.client_service(spec, name=spec.name, component=DATA_COMPONENT, ports=[("redis", REDIS_PORT)]),
        *(
            _data_statefulset(
                spec, name=name, headless=headless, cluster_domain=cluster_domain, shard_labels=labels
            )
            for name, labels in shards
        ),
        # Per shard: an eviction may take one member of each shard at once, never a shard's master and
        # its only replica together.
        *(
            kube.pod_disruption_budget(spec, name=name, component=DATA_COMPONENT, extra_selector=labels)
            for name, labels in shards
        ),
    ]


_RENDERERS: dict[Topology, Callable[[ResolvedSpec, str], list[Manifest]]] = {
    Topology.STANDALONE: _standalone,
    Topology.SENTINEL: _sentinel,
    Topology.CLUSTER: _cluster,
}


# ---------------------------------------------------------------------------------------------------
# Workloads


def _config_map(spec: ResolvedSpec) -> Manifest:
    data = {REDIS_CONF: redis_conf(spec)}
    if spec.topology == Topology.SENTINEL:
        data[SENTINEL_CONF] = sentinel_conf(spec)
    return kube.config_map(spec, name=kube.config_map_name(spec), data=data)


def _data_statefulset(
    spec: ResolvedSpec,
    *,
    name: str,
    headless: str,
    cluster_domain: str,
    shard_labels: Mapping[str, str] | None = None,
) -> Manifest:
    ports = [("redis", REDIS_PORT)]
    if spec.topology == Topology.CLUSTER:
        ports.append(("bus", BUS_PORT))
    config_file = f"{CONFIG_DIR}/{REDIS_CONF}"
    values = placeholder_values(port=REDIS_PORT, headless=headless, spec=spec, cluster_domain=cluster_domain)
    script = init_script(
        template=f"{TEMPLATES_DIR}/{REDIS_CONF}",
        target=config_file,
        values=values,
        sentinel=False,
        keep_existing=False,
        then=(
            follow_sentinels_script(spec, target=config_file, announce=values["ANNOUNCE_HOST"])
            if spec.topology == Topology.SENTINEL
            else ""
        ),
    )
    return kube.member_statefulset(
        spec,
        kube.MemberWorkload(
            name=name,
            component=DATA_COMPONENT,
            service_name=headless,
            # OrderedReady, never Parallel: with sentinel, a data pod racing ahead of ordinal 0 at
            # first start can be elected or left as a second master (redis #12271). Ready only means
            # "answers PING", so ordered start costs seconds.
            pod_management_policy=kube.ORDERED_READY,
            run_as=REDIS_UID,
            grace_seconds=DATA_GRACE_SECONDS,
            templates_dir=TEMPLATES_DIR,
            init_script=script,
            init_env=_init_env(spec),
            init_mounts=[
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR),
            ],
            container_name="redis",
            command=["redis-server", config_file],
            env=[_cli_auth_env(spec)],
            ports=ports,
            pre_stop=_pre_stop(spec),
            mounts=[
                # Writable: CONFIG REWRITE (persisting live parameter changes) rewrites this file.
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR, read_only=True),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            probes=_probes(REDIS_PORT),
            volumes=[kube.empty_dir_volume(_CONFIG_VOLUME), _secrets_volume()],
            group_labels=shard_labels,
            sidecars=metrics.sidecars(
                spec, exporter(spec), target_port=REDIS_PORT, password_key=PASSWORD_KEY
            ),
        ),
    )


def _sentinel_statefulset(spec: ResolvedSpec, *, name: str, headless: str, cluster_domain: str) -> Manifest:
    config_file = f"{DATA_DIR}/{SENTINEL_CONF}"
    script = init_script(
        template=f"{TEMPLATES_DIR}/{SENTINEL_CONF}",
        target=config_file,
        values=placeholder_values(
            port=SENTINEL_PORT, headless=headless, spec=spec, cluster_domain=cluster_domain
        ),
        sentinel=True,
        keep_existing=True,
    )
    return kube.member_statefulset(
        spec,
        kube.MemberWorkload(
            name=name,
            component=SENTINEL_COMPONENT,
            service_name=headless,
            replicas=spec.sentinels,
            pod_management_policy=kube.ORDERED_READY,
            run_as=REDIS_UID,
            grace_seconds=SENTINEL_GRACE_SECONDS,
            templates_dir=TEMPLATES_DIR,
            init_script=script,
            init_env=_init_env(spec),
            init_mounts=[
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            container_name="sentinel",
            command=["redis-server", config_file, "--sentinel"],
            env=[_cli_auth_env(spec)],
            ports=[("sentinel", SENTINEL_PORT)],
            mounts=[
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR, read_only=True),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            probes=_probes(SENTINEL_PORT, sentinel=True),
            volumes=[_secrets_volume()],
            resources=SENTINEL_RESOURCES,
            storage_size=SENTINEL_STORAGE,
            sidecars=metrics.sidecars(
                spec, exporter(spec), target_port=SENTINEL_PORT, password_key=PASSWORD_KEY
            ),
        ),
    )


# ---------------------------------------------------------------------------------------------------
# Pod pieces


def _secrets_volume() -> dict[str, Any]:
    # Memory-backed: the rendered secrets file never reaches the node's disk.
    return kube.empty_dir_volume(_SECRETS_VOLUME, size_limit="1Mi", memory=True)


def _init_env(spec: ResolvedSpec) -> list[dict[str, Any]]:
    return [
        kube.env_from_field(POD_NAME_ENV, "metadata.name"),
        kube.env_from_secret(PASSWORD_ENV, kube.credentials_secret_name(spec), PASSWORD_KEY),
    ]


def _cli_auth_env(spec: ResolvedSpec) -> dict[str, Any]:
    return kube.env_from_secret(CLI_AUTH_ENV, kube.credentials_secret_name(spec), PASSWORD_KEY)


def _ping(port: int, accept: str) -> list[str]:
    # redis-cli exits 0 even on an error reply, so the reply itself decides; without a tty it prints
    # bare replies ("PONG", "LOADING ...") on stdout.
    return ["sh", "-c", f"redis-cli -h 127.0.0.1 -p {port} ping 2>&1 | grep -qE '{accept}'"]


def _probes(port: int, *, sentinel: bool = False) -> kube.Probes:
    """Ready only on PONG (clients may use it). Alive also while LOADING a large dataset or while a
    replica has lost its master (MASTERDOWN): restarting then would only make things worse. The
    startup probe gives a slow first start (volume attach, big AOF) time before liveness kills it."""
    alive = "^PONG$" if sentinel else "^(PONG|LOADING|MASTERDOWN)"
    return {
        "startup": kube.exec_probe(_ping(port, alive), period=5, timeout=3, failure_threshold=60),
        "readiness": kube.exec_probe(_ping(port, "^PONG$"), period=5, timeout=3, failure_threshold=3),
        "liveness": kube.exec_probe(_ping(port, alive), period=10, timeout=5, failure_threshold=6),
    }


# ---------------------------------------------------------------------------------------------------
# The init container's script


def placeholder_values(
    *, port: int, headless: str, spec: ResolvedSpec, cluster_domain: str
) -> dict[str, str]:
    """The value of every placeholder, as shell words to put inside double quotes. ANNOUNCE_HOST
    is the pod's stable DNS name, expanded by the shell from the downward-API POD_NAME."""
    return {
        "BIND": BIND_ALL,
        "PORT": str(port),
        "BUS_PORT": str(BUS_PORT),
        "DATA_DIR": DATA_DIR,
        "ANNOUNCE_HOST": f"${{{POD_NAME_ENV}}}.{headless}.{spec.namespace}.svc.{cluster_domain}",
        "SECRETS_FILE": SECRETS_FILE,
    }


# A data member of a sentinel deployment that restarts after a failover must come back as a replica
# of the master the sentinels name, not as a second master: until the sentinels reconfigure it
# (seconds), the operator would see two masters and clients connected to it would write into data
# about to be thrown away. Nothing named (first start, sentinels unreachable) or itself named: start
# as the config says; the operator's bootstrap and the sentinels then set it right.
_FOLLOW_SENTINELS = """\
set -- `REDISCLI_AUTH="$%(password_env)s" timeout 5 redis-cli -h %(sentinels)s -p %(sentinel_port)d \\
  SENTINEL GET-MASTER-ADDR-BY-NAME %(master)s 2>/dev/null || true`
if [ $# -eq 2 ] && [ "$1" != "%(announce)s" ]; then
  case "$2" in
    *[!0-9]*) ;;
    *) printf 'replicaof %%s %%s\\n' "$1" "$2" >> %(target)s ;;
  esac
fi"""


def follow_sentinels_script(spec: ResolvedSpec, *, target: str, announce: str) -> str:
    """The init script's last step for a sentinel deployment's data member (see _FOLLOW_SENTINELS)."""
    return _FOLLOW_SENTINELS % {
        "password_env": PASSWORD_ENV,
        # The client Service of the sentinels is named like their StatefulSet.
        "sentinels": sentinel_workload(spec.name),
        "sentinel_port": SENTINEL_PORT,
        "master": sentinel_master_name(spec),
        "announce": announce,
        "target": target,
    }


def init_script(
    *,
    template: str,
    target: str,
    values: Mapping[str, str],
    sentinel: bool,
    keep_existing: bool,
    then: str = "",
) -> str:
    """POSIX sh (dash, busybox) rendering ``template`` into ``target`` and writing the secrets file.

    Kubelet rewrites ``$(NAME)`` and ``$$`` in command and args, so the script uses neither (no
    command substitution). Placeholders are matched as ``[$]{NAME}``: a literal ``$`` in both the
    shell and sed, whatever their dialect. ``keep_existing`` leaves a config the server rewrites
    itself (sentinel.conf on its PVC) untouched after the first start.
    """
    missing = [name for name in PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"no value for placeholders {missing}")
    render = [
        "sed \\",
        *(f'  -e "s|[$]{{{name}}}|{values[name]}|g" \\' for name in PLACEHOLDERS),
        f"  {template} > {target}.tmp",
        # Rename, so a crash half-way never leaves a truncated config that keep_existing would keep.
        f"mv {target}.tmp {target}",
    ]
    if keep_existing:
        # -s, not -f: an empty file holds nothing worth keeping.
        render = [f"if [ ! -s {target} ]; then", *(f"  {line}" for line in render), "fi"]
    # The secrets file comes from config.secrets_conf itself, with the password as printf's %s, so
    # both runtimes write byte-identical files. sed escapes \ and " the way secrets_conf does.
    template_secrets = secrets_conf("%s", sentinel=sentinel)
    printf_format = template_secrets.replace("\n", "\\n")
    if "'" in printf_format:
        raise ValueError("the secrets file template cannot be quoted for sh")
    passwords = " ".join('"$password"' for _ in range(template_secrets.count("%s")))
    lines = [
        "set -eu",
        "umask 077",
        f'if [ -z "${{{PASSWORD_ENV}:-}}" ]; then',
        f'  echo "{PASSWORD_ENV} is empty: refusing to start Redis without authentication" >&2',
        "  exit 1",
        "fi",
        *render,
        f"printf '%s\\n' \"${PASSWORD_ENV}\" | sed -e 's/\\\\/\\\\\\\\/g' -e 's/\"/\\\\\"/g' | {{",
        "  IFS= read -r password",
        f"  printf '{printf_format}' {passwords} > {SECRETS_FILE}",
        "}",
    ]
    if then:
        lines.append(then)
    return "\n".join(lines) + "\n"
