"""Kubernetes manifests for a ZooKeeper ensemble. Pure: spec in, plain dicts out.

What the DTStack example did (StatefulSet, headless Service for 2888/3888, client Service for 2181,
``myid`` from the pod ordinal) plus what it lacked: membership in a *dynamic* config file on the
member's volume, which ZooKeeper rewrites on ``reconfig``, so the ensemble grows and shrinks
without a reinstall.

The init container (bash, the image's own tools only) does on every start what the local launcher
does (``launch.py``): render ``zoo.cfg`` from the ConfigMap template (keeping ZooKeeper's pointer to
its current dynamic file), write ``myid`` from the ordinal, and, when the member is not in its own
view of the ensemble (first start of a joiner, or a member voted out earlier), start it from the
live ensemble's committed config plus itself, which is ZooKeeper's documented way to add a server.
The superuser password only travels Secret → env → a digest in a memory-backed JVM argument file.
"""

from __future__ import annotations

from typing import Any

from middleware.engines import metrics
from middleware.engines.base import PLACEHOLDERS
from middleware.engines.zookeeper.config import (
    CLIENT_PORT,
    CONFIG_FILE,
    DYNAMIC_FILE,
    ELECTION_PORT,
    METRICS_PORT,
    MYID,
    PEER_PORT,
    SUPER_DIGEST_PROPERTY,
    SUPER_USER,
    dynamic_config,
    exporter,
    server_spec,
    zoo_cfg,
)
from middleware.engines.zookeeper.topology import (
    DATA_COMPONENT,
    client_service,
    headless_service,
    member_name,
    workload,
)
from middleware.kube import builders as kube
from middleware.models.common import quantity_to_number
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

TEMPLATES_DIR = "/etc/zookeeper-templates"
SECRETS_DIR = "/etc/zookeeper-secrets"
SECRETS_FILE = f"{SECRETS_DIR}/jvm.args"
DATA_DIR = "/data"
TMP_DIR = "/tmp"
CONFIG_PATH = f"{DATA_DIR}/{CONFIG_FILE}"
PASSWORD_KEY = "password"
PASSWORD_ENV = "ZK_PASSWORD"
POD_NAME_ENV = "POD_NAME"
CLIENT_HOST_ENV = "ZK_CLIENT_HOST"
# The `zookeeper` user and group of the official image, which owns its directories.
ZOOKEEPER_UID = 1000
# Heap share of the memory limit: the rest is metaspace, thread stacks and direct buffers.
HEAP_SHARE_OF_LIMIT = 0.6
MIN_HEAP_MIB = 64
# A clean shutdown is quick (no flush beyond the transaction log, which is synced per commit).
GRACE_SECONDS = 30

_SECRETS_VOLUME = "secrets"
_TMP_VOLUME = "tmp"
_PORTS = [("client", CLIENT_PORT), ("server", PEER_PORT), ("election", ELECTION_PORT)]


def pod_host(spec: ResolvedSpec, pod: str, cluster_domain: str) -> str:
    return f"{pod}.{headless_service(spec.name)}.{spec.namespace}.svc.{cluster_domain}"


# ZooKeeper's config also names its metrics port (its Prometheus provider runs in the server).
ZK_PLACEHOLDERS = (*PLACEHOLDERS, "METRICS_PORT")


def render(spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[Manifest]:
    """Every manifest of the ensemble except the credentials Secret (see ``render_credentials``)."""
    if spec.engine != "zookeeper":
        raise ValueError(f"the zookeeper renderer got a {spec.engine!r} spec")
    if spec.topology != "ensemble":
        raise ValueError(f"zookeeper cannot render topology {spec.topology!r}")
    kube.check_cluster_domain(cluster_domain)
    name = workload(spec.name)
    headless = headless_service(spec.name)
    return [
        _config_map(spec, cluster_domain),
        # Peers reach each other by pod name; not-ready pods are published (the builder's default),
        # because members must find each other before any of them can serve.
        kube.headless_service(
            spec,
            name=headless,
            component=DATA_COMPONENT,
            ports=[("server", PEER_PORT), ("election", ELECTION_PORT)],
        ),
        kube.client_service(
            spec, name=client_service(spec.name), component=DATA_COMPONENT, ports=[("client", CLIENT_PORT)]
        ),
        _statefulset(spec, name=name, headless=headless, cluster_domain=cluster_domain),
        # One voluntary eviction at a time: with 3 voters, losing one keeps the quorum. With one
        # member it protects nothing, but it never blocks a drain and keeps the object set stable.
        kube.pod_disruption_budget(spec, name=name, component=DATA_COMPONENT),
        *metrics.services(spec, exporter(spec)),
    ]


def render_credentials(spec: ResolvedSpec, password: str) -> Manifest:
    """The credentials Secret (the ZooKeeper superuser's password), created once by the runtime."""
    return kube.credentials_secret(spec, password, key=PASSWORD_KEY)


def initial_dynamic_config(spec: ResolvedSpec, cluster_domain: str) -> str:
    """Every member of the spec as a participant, by pod DNS name: how a new ensemble starts."""
    return dynamic_config(
        server_spec(
            ordinal + 1,
            pod_host(spec, member_name(spec.name, ordinal), cluster_domain),
            peer=PEER_PORT,
            election=ELECTION_PORT,
            client=CLIENT_PORT,
        )
        for ordinal in range(spec.replicas)
    )


def _config_map(spec: ResolvedSpec, cluster_domain: str) -> Manifest:
    data = {CONFIG_FILE: zoo_cfg(spec), DYNAMIC_FILE: initial_dynamic_config(spec, cluster_domain)}
    return kube.config_map(spec, name=kube.config_map_name(spec), data=data)


def heap_mib(spec: ResolvedSpec) -> int:
    limit = quantity_to_number(spec.resources.memory_limit or spec.resources.memory)
    return max(MIN_HEAP_MIB, int(limit * HEAP_SHARE_OF_LIMIT / (1024 * 1024)))


def _statefulset(spec: ResolvedSpec, *, name: str, headless: str, cluster_domain: str) -> Manifest:
    script = init_script(
        values=placeholder_values(headless=headless, spec=spec, cluster_domain=cluster_domain),
        client_port=CLIENT_PORT,
    )
    heap = heap_mib(spec)
    return kube.member_statefulset(
        spec,
        kube.MemberWorkload(
            name=name,
            component=DATA_COMPONENT,
            service_name=headless,
            # Parallel: a member serves only once a quorum runs, so OrderedReady would wait forever
            # for pod 0 to become Ready alone. Starting together is safe for ZooKeeper: leader
            # election picks the member with the newest data, never an empty one racing ahead.
            pod_management_policy=kube.PARALLEL,
            run_as=ZOOKEEPER_UID,
            grace_seconds=GRACE_SECONDS,
            templates_dir=TEMPLATES_DIR,
            init_shell="bash",
            init_script=script,
            init_env=[
                kube.env_from_field(POD_NAME_ENV, "metadata.name"),
                kube.env_from_secret(PASSWORD_ENV, kube.credentials_secret_name(spec), PASSWORD_KEY),
                # The client Service reaches serving members only: who answers there is the ensemble.
                {
                    "name": CLIENT_HOST_ENV,
                    "value": f"{client_service(spec.name)}.{spec.namespace}.svc.{cluster_domain}",
                },
            ],
            init_mounts=[
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR),
                kube.volume_mount(_TMP_VOLUME, TMP_DIR),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            container_name="zookeeper",
            # zkServer.sh (on the image's PATH whatever its version directory) builds the classpath
            # and logging flags; a config path outside its conf dir is used as given.
            command=["zkServer.sh", "start-foreground", CONFIG_PATH],
            env=[
                # The last -Xmx wins, whatever heap default the image's zkEnv.sh puts first. The
                # argument file carries the superuser digest without putting it in the process list.
                {
                    "name": "SERVER_JVMFLAGS",
                    "value": f"-Xmx{heap}m -XX:+ExitOnOutOfMemoryError @{SECRETS_FILE}",
                },
                {"name": "ZK_SERVER_HEAP", "value": str(heap)},
                # The root filesystem is read-only: logs go to stdout, scratch files to the tmp volume.
                {"name": "ZOO_LOG_DIR", "value": TMP_DIR},
                {"name": "JMXDISABLE", "value": "true"},
            ],
            ports=[*_PORTS, *metrics.own_ports(exporter(spec))],
            mounts=[
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR, read_only=True),
                kube.volume_mount(_TMP_VOLUME, TMP_DIR),
                # zoo.cfg and the dynamic files live next to the data: ZooKeeper rewrites them on
                # every reconfig, and a restarted pod must come back with the membership it last
                # committed.
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
            ],
            probes=_probes(),
            volumes=[
                # Memory-backed: the digest file never reaches the node's disk.
                kube.empty_dir_volume(_SECRETS_VOLUME, size_limit="1Mi", memory=True),
                kube.empty_dir_volume(_TMP_VOLUME, size_limit="256Mi"),
            ],
        ),
    )


def _four_letter_word(word: str, expect: str) -> list[str]:
    # bash's /dev/tcp: no nc needed in the image. The server closes the connection after replying.
    return [
        "bash",
        "-c",
        f"exec 3<>/dev/tcp/127.0.0.1/{CLIENT_PORT} && printf {word} >&3 && grep -q '{expect}' <&3",
    ]


def _probes() -> kube.Probes:
    """Ready only while serving (part of a quorum: `srvr` reports a mode). Alive whenever the
    process answers `ruok`: a member without a quorum is waiting for its peers, and restarting it
    would not bring them back."""
    alive = _four_letter_word("ruok", "imok")
    return {
        "startup": kube.exec_probe(alive, period=5, timeout=3, failure_threshold=60),
        "readiness": kube.exec_probe(
            _four_letter_word("srvr", "^Mode: "), period=5, timeout=3, failure_threshold=3
        ),
        "liveness": kube.exec_probe(alive, period=10, timeout=5, failure_threshold=6),
    }


def placeholder_values(*, headless: str, spec: ResolvedSpec, cluster_domain: str) -> dict[str, str]:
    """Every placeholder's value as a shell word inside double quotes."""
    return {
        "BIND": "0.0.0.0",
        "PORT": str(CLIENT_PORT),
        "BUS_PORT": str(PEER_PORT),
        "DATA_DIR": DATA_DIR,
        "ANNOUNCE_HOST": f"${{{POD_NAME_ENV}}}.{headless}.{spec.namespace}.svc.{cluster_domain}",
        "SECRETS_FILE": SECRETS_FILE,
        "METRICS_PORT": str(METRICS_PORT),
    }


def init_script(*, values: dict[str, str], client_port: int) -> str:
    """bash (the image's), run before every start of the server. Kubelet rewrites ``$(NAME)`` and
    ``$$`` in commands, so the script uses neither (backticks for command substitution)."""
    missing = [name for name in ZK_PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"no value for placeholders {missing}")
    template = f"{TEMPLATES_DIR}/{CONFIG_FILE}"
    initial = f"{TEMPLATES_DIR}/{DYNAMIC_FILE}"
    dynamic = f"{DATA_DIR}/{DYNAMIC_FILE}"
    sed = " ".join(f'-e "s|[$]{{{name}}}|{values[name]}|g"' for name in ZK_PLACEHOLDERS)
    lines = [
        "set -eu",
        "umask 077",
        f"client_port={client_port}",
        f'if [ -z "${{{PASSWORD_ENV}:-}}" ]; then',
        f'  echo "{PASSWORD_ENV} is empty: refusing to start ZooKeeper without a superuser" >&2',
        "  exit 1",
        "fi",
        f'ordinal="${{{POD_NAME_ENV}##*-}}"',
        'case "$ordinal" in',
        f'  ""|*[!0-9]*) echo "cannot tell the ordinal from {POD_NAME_ENV}=${POD_NAME_ENV}" >&2; exit 1 ;;',
        "esac",
        'myid=`expr "$ordinal" + 1`',
        # The superuser digest, base64(sha1("super:" + password)), as a JVM argument file.
        f"hex=`printf '%s' \"{SUPER_USER}:${PASSWORD_ENV}\" | sha1sum | cut -c1-40`",
        'escaped=""',
        "i=0",
        'while [ "$i" -lt 40 ]; do escaped="$escaped\\\\x${hex:$i:2}"; i=`expr "$i" + 2`; done',
        "digest=`printf '%b' \"$escaped\" | base64`",
        f'printf -- "-D{SUPER_DIGEST_PROPERTY}={SUPER_USER}:%s\\n" "$digest" > {SECRETS_FILE}',
        # zoo.cfg from the template on every start, so parameter changes apply on restart; but the
        # pointer to the current dynamic file is ZooKeeper's and is kept.
        f"current=`sed -n 's/^dynamicConfigFile=//p' {CONFIG_PATH} 2>/dev/null | tail -n 1`",
        f"sed {sed} {template} > {CONFIG_PATH}.tmp",
        'if [ -n "$current" ]; then',
        f"  sed -i '/^dynamicConfigFile=/d' {CONFIG_PATH}.tmp",
        f'  echo "dynamicConfigFile=$current" >> {CONFIG_PATH}.tmp',
        "fi",
        # Pod IPs change and a pod's own name resolves only once it is published: listen on all of
        # the pod's addresses for peers rather than on whatever its name resolved to at start.
        f"echo quorumListenOnAllIPs=true >> {CONFIG_PATH}.tmp",
        f"mv {CONFIG_PATH}.tmp {CONFIG_PATH}",
        f'[ -s {DATA_DIR}/{MYID} ] || echo "$myid" > {DATA_DIR}/{MYID}',
        f"current=`sed -n 's/^dynamicConfigFile=//p' {CONFIG_PATH} | tail -n 1`",
        'if [ -s "$current" ] && grep -q "^server\\.$myid=" "$current"; then',
        '  echo "server $myid: member of the ensemble in $current"',
        "else",
        # Not in its own view: ask the live ensemble for its committed config.
        f"  live={TMP_DIR}/live-config",
        '  rm -f "$live"',
        f"  timeout 10 bash -c 'exec 3<>\"/dev/tcp/$0/$1\" && printf conf >&3 && cat <&3' "
        f'"${CLIENT_HOST_ENV}" "$client_port" > "$live" 2>/dev/null || true',
        "  if grep -q '^server\\.' \"$live\"; then",
        f"    grep '^server\\.' \"$live\" > {dynamic}.tmp",
        '    if grep -q "^server\\.$myid=" "$live"; then',
        '      echo "server $myid: rejoining the ensemble from its committed config"',
        "    else",
        # The committed config + this server as the only joiner: it can follow the leader, never
        # form a quorum with other joiners, and is voted in by the operator's reconfig.
        f'      grep "^server\\.$myid=" {initial} >> {dynamic}.tmp',
        '      echo "server $myid: joining the ensemble"',
        "    fi",
        '  elif [ -s "$current" ]; then',
        f'    echo "server $myid is not in its configuration ($current) and nobody answers at '
        f'${CLIENT_HOST_ENV}:$client_port: start the ensemble first" >&2',
        "    exit 1",
        "  else",
        '    echo "server $myid: creating the ensemble"',
        f"    cp {initial} {dynamic}.tmp",
        "  fi",
        f"  mv {dynamic}.tmp {dynamic}",
        f"  sed -i '/^dynamicConfigFile=/d' {CONFIG_PATH}",
        f"  echo dynamicConfigFile={dynamic} >> {CONFIG_PATH}",
        "fi",
    ]
    return "\n".join(lines) + "\n"
