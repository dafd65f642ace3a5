"""Kubernetes manifests for PostgreSQL (standalone, replication). Pure: spec in, plain dicts out.

The templates of ``config.py`` ship unrendered in a ConfigMap; an init container fills the
placeholders per pod, writes the pgpass file into a memory-backed emptyDir from the Secret, and
prepares an empty volume: ordinal 0 with no primary behind ``NAME-rw`` runs initdb, every other pod
clones the primary with pg_basebackup; a pod whose data survived rewinds against the current primary
before it starts (pg_rewind is a no-op when nothing diverged). The main container starts through the
same fenced start script as local members: never writable unless promoted.
"""

from __future__ import annotations

from typing import Any

from middleware.engines import metrics
from middleware.engines.base import PLACEHOLDERS
from middleware.engines.postgresql.config import (
    ADOPT_MARKER,
    ARCHIVE_SCRIPT,
    FIRST_START_MARKER,
    POSTGRES_PORT,
    RECOVERY_SCRIPT,
    REPLICATION_USER,
    RESTORE_SCRIPT,
    RESTORE_SPOOL,
    SOURCE_RESTORE_SCRIPT,
    START_SCRIPT,
    SUPERUSER,
    app_password,
    exporter,
    pg_hba_conf,
    postgresql_conf,
    replication_password,
)
from middleware.engines.postgresql.topology import (
    DATA_COMPONENT,
    headless_service,
    ro_service,
    rw_service,
    workload,
)
from middleware.kube import builders as kube
from middleware.models.middleware import Topology
from middleware.spec import ResolvedSpec

Manifest = dict[str, Any]

POSTGRESQL_CONF = "postgresql.conf"
PG_HBA_CONF = "pg_hba.conf"
TEMPLATES_DIR = "/etc/postgresql-templates"
CONFIG_DIR = "/etc/postgresql"
SECRETS_DIR = "/etc/postgresql-secrets"
SECRETS_FILE = f"{SECRETS_DIR}/pgpass"
DATA_DIR = "/data"
PGDATA = f"{DATA_DIR}/pgdata"
PASSWORD_KEY = "password"
REPLICATION_PASSWORD_KEY = "replication-password"
APP_PASSWORD_KEY = "app-password"
PASSWORD_ENV = "POSTGRES_PASSWORD"
REPLICATION_PASSWORD_ENV = "REPLICATION_PASSWORD"
POD_NAME_ENV = "POD_NAME"
# The `postgres` user and group of the official (and pgvector) images.
POSTGRES_UID = 999
# A fast shutdown (preStop) sends the remaining WAL to the standbys and checkpoints; give it time.
GRACE_SECONDS = 60
# How long a new replica's init container waits for a primary behind NAME-rw.
PRIMARY_WAIT_SECONDS = 600
PRIMARY_ROLE = "primary"
REPLICA_ROLE = "replica"

_CONFIG_VOLUME = "config"
_SECRETS_VOLUME = "secrets"
_TMP_VOLUME = "tmp"


def render(spec: ResolvedSpec, *, cluster_domain: str = "cluster.local") -> list[Manifest]:
    """Every manifest of the deployment except the credentials Secret (see ``render_credentials``)."""
    if spec.engine != "postgresql":
        raise ValueError(f"the postgresql renderer got a {spec.engine!r} spec")
    kube.check_cluster_domain(cluster_domain)
    if spec.topology not in (Topology.STANDALONE, Topology.REPLICATION):
        raise ValueError(f"postgresql cannot render topology {spec.topology!r}")
    name = workload(spec.name)
    headless = headless_service(spec.name)
    port = [("postgresql", POSTGRES_PORT)]
    manifests = [
        kube.config_map(
            spec,
            name=kube.config_map_name(spec),
            data={POSTGRESQL_CONF: postgresql_conf(spec), PG_HBA_CONF: pg_hba_conf(spec)},
        ),
        kube.headless_service(spec, name=headless, component=DATA_COMPONENT, ports=port),
        # The operator labels the pod the engine reports as primary `moorage.io/role=primary` (the
        # others `replica`) on every observation, so these Services follow switchovers and failovers
        # without re-rendering. Until then they have no endpoints, which is right.
        kube.client_service(
            spec,
            name=rw_service(spec.name),
            component=DATA_COMPONENT,
            ports=port,
            extra_selector={kube.ROLE_LABEL: PRIMARY_ROLE},
        ),
    ]
    if spec.topology == Topology.REPLICATION:
        manifests.append(
            kube.client_service(
                spec,
                name=ro_service(spec.name),
                component=DATA_COMPONENT,
                ports=port,
                extra_selector={kube.ROLE_LABEL: REPLICA_ROLE},
            )
        )
    manifests.append(_statefulset(spec, name=name, headless=headless, cluster_domain=cluster_domain))
    if spec.topology == Topology.REPLICATION:
        # No PDB for one pod: minAvailable 1 would block node drains forever (as for Redis).
        manifests.append(kube.pod_disruption_budget(spec, name=name, component=DATA_COMPONENT))
    return [*manifests, *metrics.services(spec, exporter(spec))]


def render_credentials(spec: ResolvedSpec, password: str) -> Manifest:
    """The credentials Secret: the superuser password (generated once, never overwritten) and the
    replication and application passwords derived from it."""
    secret = kube.credentials_secret(spec, password, key=PASSWORD_KEY)
    derived = kube.credentials_secret(spec, replication_password(password), key=REPLICATION_PASSWORD_KEY)
    app = kube.credentials_secret(spec, app_password(password), key=APP_PASSWORD_KEY)
    secret["data"] = {**secret["data"], **derived["data"], **app["data"]}
    return secret


def _statefulset(spec: ResolvedSpec, *, name: str, headless: str, cluster_domain: str) -> Manifest:
    secret = kube.credentials_secret_name(spec)
    ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT)]
    return kube.member_statefulset(
        spec,
        kube.MemberWorkload(
            name=name,
            component=DATA_COMPONENT,
            service_name=headless,
            # OrderedReady: ordinal 0 initialises the cluster before anyone tries to clone it.
            pod_management_policy=kube.ORDERED_READY,
            run_as=POSTGRES_UID,
            grace_seconds=GRACE_SECONDS,
            templates_dir=TEMPLATES_DIR,
            init_name="init",
            init_script=init_script(spec, headless=headless, cluster_domain=cluster_domain),
            init_env=[
                kube.env_from_field(POD_NAME_ENV, "metadata.name"),
                kube.env_from_secret(PASSWORD_ENV, secret, PASSWORD_KEY),
                kube.env_from_secret(REPLICATION_PASSWORD_ENV, secret, REPLICATION_PASSWORD_KEY),
            ],
            init_mounts=[
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
                kube.volume_mount(_TMP_VOLUME, "/tmp"),
            ],
            container_name="postgresql",
            command=["sh", "-c", START_SCRIPT, "start", "", f"{CONFIG_DIR}/{POSTGRESQL_CONF}", PGDATA],
            ports=[("postgresql", POSTGRES_PORT)],
            mounts=[
                kube.volume_mount(_CONFIG_VOLUME, CONFIG_DIR, read_only=True),
                kube.volume_mount(_SECRETS_VOLUME, SECRETS_DIR, read_only=True),
                kube.volume_mount(kube.DATA_VOLUME, DATA_DIR),
                kube.volume_mount(_TMP_VOLUME, "/tmp"),
            ],
            probes={
                # Crash recovery of a large database can take minutes: the startup probe allows 10.
                "startup": kube.exec_probe(ready, period=5, timeout=3, failure_threshold=120),
                "readiness": kube.exec_probe(ready, period=5, timeout=3, failure_threshold=3),
                "liveness": kube.exec_probe(ready, period=10, timeout=5, failure_threshold=6),
            },
            # SIGTERM is a *smart* shutdown, which waits for every client; a fast one disconnects
            # them and still hands the last WAL to the standbys.
            pre_stop=["pg_ctl", "stop", "-D", PGDATA, "-m", "fast", "-w", "-t", "50"],
            volumes=[
                kube.empty_dir_volume(_CONFIG_VOLUME),
                # Memory-backed: the pgpass file never reaches the node's disk.
                kube.empty_dir_volume(_SECRETS_VOLUME, size_limit="1Mi", memory=True),
                kube.empty_dir_volume(_TMP_VOLUME, size_limit="256Mi"),
            ],
            sidecars=metrics.sidecars(
                spec, exporter(spec), target_port=POSTGRES_PORT, password_key=PASSWORD_KEY
            ),
        ),
    )


def placeholder_values() -> dict[str, str]:
    """Shell expressions per placeholder; ``$host`` is the pod's stable DNS name (set by the script)."""
    return {
        "BIND": "*",
        "PORT": str(POSTGRES_PORT),
        "BUS_PORT": "0",
        "DATA_DIR": CONFIG_DIR,
        "ANNOUNCE_HOST": "$host",
        "SECRETS_FILE": SECRETS_FILE,
    }


def _installed_scripts(spec: ResolvedSpec) -> list[str]:
    """Scripts PostgreSQL runs that name a repository, which this pure renderer does not know: the
    operator adds them to the ConfigMap, executable copies go next to the config. With
    spec.backup.walArchiving: ``${DATA_DIR}/wal-archive`` (archive_command) and the restore one;
    with spec.recovery: the restore script of the source's archive."""
    names = [ARCHIVE_SCRIPT, RESTORE_SCRIPT] if spec.wal_archiving else []
    if spec.recovery is not None:
        names.append(SOURCE_RESTORE_SCRIPT)
    if not names:
        return []
    return [
        f"for f in {' '.join(names)}; do",
        f'  [ -s "{TEMPLATES_DIR}/$f" ] || fail "no $f in the ConfigMap (spec.backup.walArchiving, '
        'spec.recovery: the operator adds it from the BackupRepository)"',
        f'  cp "{TEMPLATES_DIR}/$f" "{CONFIG_DIR}/$f.tmp" && chmod 0700 "{CONFIG_DIR}/$f.tmp"',
        f'  mv "{CONFIG_DIR}/$f.tmp" "{CONFIG_DIR}/$f"',
        "done",
    ]


def _initdb() -> list[str]:
    return [
        f"    printf '%s\\n' \"${PASSWORD_ENV}\" > {SECRETS_DIR}/pwfile",
        f'    initdb -D "$pgdata" -U {SUPERUSER} --pwfile={SECRETS_DIR}/pwfile --auth=scram-sha-256 '
        "--data-checksums --no-locale --encoding=UTF8",
        f"    rm -f {SECRETS_DIR}/pwfile",
        # The replication role before the first start: the next members clone through it before
        # every member is Ready, and so before the operator's bootstrap (which keeps it up to
        # date) can run. Single-user mode: nothing listens yet, and the statement is not logged.
        f"    rp_sql=`printf '%s' \"${REPLICATION_PASSWORD_ENV}\" | sed \"s/'/''/g\"`",
        f'    printf "CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD \'%s\';\\n" "$rp_sql" '
        '| postgres --single -D "$pgdata" postgres >/dev/null',
        f'    : > "$pgdata/{FIRST_START_MARKER}"',
    ]


def _recover_from_archive() -> list[str]:
    """spec.recovery: the first member's data is another Middleware's base backup plus its WAL up to
    the target, not initdb. The operator adds the script (it names the archive and the base backup);
    it restores, writes the recovery settings and recovery.signal, and the start recovers. It
    restores next to the data directory and is moved into place once whole: a restore cut short
    (the pod deleted, S3 unreachable) must not leave a PG_VERSION that the next start takes for data."""
    script = f"{TEMPLATES_DIR}/{RECOVERY_SCRIPT}"
    return [
        f'    [ -s "{script}" ] || fail "no {RECOVERY_SCRIPT} in the ConfigMap (spec.recovery: '
        "the operator adds it from the source's archive)\"",
        '    rm -rf "$pgdata.restoring"',
        f'    sh "{script}" "$pgdata.restoring"',
        '    mv "$pgdata.restoring" "$pgdata"',
    ]


def _forget_recovery(spec: ResolvedSpec) -> list[str]:
    """Once promoted (recovery.signal gone) the recovery settings go: a copy cloned from this data,
    or this member restarted as a standby after a failover, must never chase the old target nor
    fetch WAL from the source's archive."""
    if spec.recovery is None:
        return []
    return [
        'if [ ! -e "$pgdata/recovery.signal" ] && [ -f "$pgdata/postgresql.auto.conf" ]; then',
        "  sed -i -e '/^restore_command[ =]/d' -e '/^recovery_target/d' \"$pgdata/postgresql.auto.conf\"",
        f'  rm -rf "{DATA_DIR}/{RESTORE_SPOOL}"',
        "fi",
    ]


def _finish_recovery(spec: ResolvedSpec) -> list[str]:
    """spec.recovery: the restored data replays the archive up to the target and promotes here, in
    the init container, where no probe limits how long that may take; then its superuser takes this
    Middleware's passwords, its own and the replication role's (the source's credentials may be gone
    with the source; the next members clone through the replication role before the operator's
    bootstrap re-sets the roles, which needs every member). The server only listens on a socket in
    this pod's /tmp, trusting the superuser there, and is stopped again before the PostgreSQL
    container starts it for good. Hot standby is off: the replay then never pauses for lower
    settings than the source's (``max_connections`` and the like), which a standby must match but a
    promoted server need not. Run again after an interrupted init (the marker stays until the
    passwords are set)."""
    if spec.recovery is None:
        return []
    hba, log = "/tmp/moorage-recovery-hba.conf", "/tmp/moorage-recovery.log"
    options = (
        f"-c config_file={CONFIG_DIR}/{POSTGRESQL_CONF} -c hba_file={hba} "
        "-c listen_addresses='' -c unix_socket_directories=/tmp -c hot_standby=off"
    )
    psql = f"psql -h /tmp -p {POSTGRES_PORT} -U {SUPERUSER} -d postgres -Xq"
    return [
        f'if [ -e "$pgdata/{ADOPT_MARKER}" ]; then',
        f"  printf 'local all {SUPERUSER} trust\\n' > {hba}",
        # A child of this shell, not `pg_ctl start`: `kill -0` on its PID tells "still replaying"
        # from "stopped" at once, where `pg_ctl status` reads a lock file the server may not have
        # written yet on a busy node (a replay taken for failed, and an init container crash loop).
        f'  postgres -D "$pgdata" {options} > {log} 2>&1 &',
        "  server=$!",
        f"  until {psql} -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null | grep -qx f; do",
        f'    kill -0 "$server" 2>/dev/null || {{ tail -n 20 {log} >&2; '
        'fail "the recovery stopped before it promoted"; }',
        "    sleep 2",
        "  done",
        f"  sp_sql=`printf '%s' \"${PASSWORD_ENV}\" | sed \"s/'/''/g\"`",
        f"  rp_sql=`printf '%s' \"${REPLICATION_PASSWORD_ENV}\" | sed \"s/'/''/g\"`",
        # Not logged, and the commits wait for no synchronous standby (there is none yet).
        "  printf \"SET log_statement = 'none';\\nSET synchronous_commit = local;\\n"
        f"ALTER ROLE {SUPERUSER} PASSWORD '%s';\\nALTER ROLE {REPLICATION_USER} PASSWORD '%s';\\n\" "
        f'"$sp_sql" "$rp_sql" | {psql} -v ON_ERROR_STOP=1',
        '  pg_ctl -D "$pgdata" -m fast -w -t 300 stop',
        '  wait "$server"',
        f'  rm -f "$pgdata/{ADOPT_MARKER}" {hba}',
        "fi",
    ]


def init_script(spec: ResolvedSpec, *, headless: str, cluster_domain: str) -> str:
    values = placeholder_values()
    assert set(values) == set(PLACEHOLDERS)
    # `|` delimits sed expressions; none of the values can contain it (paths and DNS names only).
    sed = " ".join(f'-e "s|\\${{{key}}}|{values[key]}|g"' for key in PLACEHOLDERS)
    primary = f"{rw_service(spec.name)}.{spec.namespace}.svc.{cluster_domain}"
    conninfo = (
        f"host={primary} port={POSTGRES_PORT} user={REPLICATION_USER} "
        f"passfile={SECRETS_FILE} application_name=$POD_NAME"
    )
    rewind_source = f"host={primary} port={POSTGRES_PORT} user={SUPERUSER} passfile={SECRETS_FILE}"
    fail = 'echo "$1" >&2; exit 1'
    lines = [
        "set -eu",
        "umask 077",
        f"fail() {{ {fail}; }}",
        f'[ -n "${{{PASSWORD_ENV}:-}}" ] || fail "{PASSWORD_ENV} is empty: refusing to start"',
        f'[ -n "${{{REPLICATION_PASSWORD_ENV}:-}}" ] || fail "{REPLICATION_PASSWORD_ENV} is empty"',
        f'host="$POD_NAME.{headless}.{spec.namespace}.svc.{cluster_domain}"',
        f"for f in {POSTGRESQL_CONF} {PG_HBA_CONF}; do",
        f'  sed {sed} "{TEMPLATES_DIR}/$f" > "{CONFIG_DIR}/$f.tmp"',
        f'  mv "{CONFIG_DIR}/$f.tmp" "{CONFIG_DIR}/$f"',
        "done",
        *_installed_scripts(spec),
        # pgpass escaping: backslash and colon. Backticks, not $(...), which kubelet would expand.
        "esc() { printf '%s' \"$1\" | sed -e 's/\\\\/\\\\\\\\/g' -e 's/:/\\\\:/g'; }",
        f'rp=`esc "${REPLICATION_PASSWORD_ENV}"`',
        f'sp=`esc "${PASSWORD_ENV}"`',
        f'printf \'*:*:*:{REPLICATION_USER}:%s\\n*:*:*:{SUPERUSER}:%s\\n\' "$rp" "$sp" > {SECRETS_FILE}',
        f"pgdata={PGDATA}",
        f"primary_service={rw_service(spec.name)}",
        f"primary_up() {{ pg_isready -q -t 2 -h {primary} -p {POSTGRES_PORT}; }}",
        f'conninfo="{conninfo}"',
        'if [ ! -s "$pgdata/PG_VERSION" ]; then',
        '  rm -rf "$pgdata"',
        '  if [ "${POD_NAME##*-}" = 0 ] && ! primary_up; then',
        *(_recover_from_archive() if spec.recovery is not None else _initdb()),
        "  else",
        "    tries=0",
        "    until primary_up; do",
        f'      [ "$tries" -lt {PRIMARY_WAIT_SECONDS // 2} ] || fail "no primary behind $primary_service"',
        "      tries=`expr $tries + 1`",
        "      sleep 2",
        "    done",
        '    pg_basebackup -D "$pgdata" -d "$conninfo" -X stream -c fast',
        "  fi",
        "elif primary_up; then",
        # Data survived (a restart, an old primary after a failover): rewind onto the current primary.
        # Where that cannot be done (WAL it needs is gone), clone afresh as the local runtime does,
        # keeping the old data once; an unreachable primary is tried again by the next start instead.
        f'  if ! pg_rewind -D "$pgdata" --source-server="{rewind_source}" 2> /tmp/pg_rewind.err; then',
        "    cat /tmp/pg_rewind.err >&2",
        '    if grep -q "could not connect\\|connection to server" /tmp/pg_rewind.err; then',
        '      fail "pg_rewind could not reach the primary: trying again at the next start"',
        "    fi",
        '    echo "pg_rewind failed: cloning afresh; the old data is kept in $pgdata.rewind-failed" >&2',
        '    rm -rf "$pgdata.rewind-failed"',
        '    mv "$pgdata" "$pgdata.rewind-failed"',
        '    pg_basebackup -D "$pgdata" -d "$conninfo" -X stream -c fast',
        "  fi",
        "fi",
        *_finish_recovery(spec),
        *_forget_recovery(spec),
        f'if [ ! -e "$pgdata/{FIRST_START_MARKER}" ] && primary_up; then',
        "  line=\"primary_conninfo = '$conninfo'\"",
        '  printf \'%s\\n\' "$line" >> "$pgdata/postgresql.auto.conf"',
        "fi",
    ]
    return "\n".join(lines) + "\n"
