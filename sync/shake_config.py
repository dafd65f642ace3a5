"""redis-shake configs and the Kubernetes objects that run one workload.

redis-shake reads its password from the config file only (no env or file indirection that both v3
and v4 document), so the renderers take the passwords as arguments and the rendered config is only
ever stored in a **Secret** mounted as a file, never in a ConfigMap, a log line or an annotation.

The key names rendered here are all in ``SHAKE_KEYS`` below; nothing else in this module spells a
redis-shake key, so checking them against redis-shake's docs is one table's work.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from middleware.errors import SpecError
from middleware.kube import builders as kube
from middleware.models.common import Resources
from sync.plan import ShakeWorkload

# redis-shake config keys. Checked against redis-shake's own sample configs (tair-opensource/RedisShake:
# v4 ``shake.toml`` with sections sync_reader / redis_writer / filter / advanced; v3 ``sync.toml`` with
# top-level ``type`` and sections source / target / advanced). The v4 keys are also checked against
# the ``mapstructure`` tags of the v4.2.0 source (tests/unit/test_redis_shake_v4_2_0.py): v4.2.0 ignores
# a key it does not know instead of refusing it. Logical name -> (section, key); section "" is the
# top level.
SHAKE_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "v4": {
        "reader.cluster": ("sync_reader", "cluster"),
        "reader.address": ("sync_reader", "address"),
        "reader.username": ("sync_reader", "username"),
        "reader.password": ("sync_reader", "password"),
        "reader.tls": ("sync_reader", "tls"),
        "reader.sync_rdb": ("sync_reader", "sync_rdb"),
        "reader.sync_aof": ("sync_reader", "sync_aof"),
        "writer.cluster": ("redis_writer", "cluster"),
        "writer.address": ("redis_writer", "address"),
        "writer.username": ("redis_writer", "username"),
        "writer.password": ("redis_writer", "password"),
        "writer.tls": ("redis_writer", "tls"),
        "filter.allow_key_prefix": ("filter", "allow_key_prefix"),
        "filter.block_key_prefix": ("filter", "block_key_prefix"),
        "filter.allow_db": ("filter", "allow_db"),
        "advanced.dir": ("advanced", "dir"),
        "advanced.status_port": ("advanced", "status_port"),
        "advanced.log_file": ("advanced", "log_file"),
        "advanced.log_level": ("advanced", "log_level"),
        "advanced.log_interval": ("advanced", "log_interval"),
        "advanced.pipeline_count_limit": ("advanced", "pipeline_count_limit"),
        # panic | rewrite | skip on a BUSYKEY reply to a RESTORE. sync_reader never sends RESTORE (it
        # loads the RDB as SET/RPUSH/HSET/... commands, upstream #921): see sync.share for how a full
        # sync over existing keys is made correct.
        "advanced.rdb_restore_command_behavior": ("advanced", "rdb_restore_command_behavior"),
    },
    # v3 keys as its sample sync.toml documents them: no version keys and no status/metrics port
    # (v3 workloads are supervised from the source's replica list and the pod's restarts only).
    "v3": {
        "type": ("", "type"),
        "reader.address": ("source", "address"),
        "reader.username": ("source", "username"),
        "reader.password": ("source", "password"),
        "reader.tls": ("source", "tls"),
        "writer.type": ("target", "type"),  # "standalone" or "cluster"
        "writer.address": ("target", "address"),
        "writer.username": ("target", "username"),
        "writer.password": ("target", "password"),
        "writer.tls": ("target", "tls"),
        "advanced.dir": ("advanced", "dir"),
        "advanced.log_file": ("advanced", "log_file"),
        "advanced.log_level": ("advanced", "log_level"),
        "advanced.log_interval": ("advanced", "log_interval"),
        "advanced.pipeline_count_limit": ("advanced", "pipeline_count_limit"),
        "advanced.rdb_restore_command_behavior": ("advanced", "rdb_restore_command_behavior"),
    },
}

STATUS_PORT = 8080
WORK_DIR = "/data"
# The replication listening-port redis-shake announces to the node it reads, which is how the source
# lists its connection: v4 announces its status port; v3 a fixed number (its psync reader's "magic
# number", internal/reader/psync.go).
V3_LISTENING_PORT = 10007


def listening_port(version: str) -> int:
    return V3_LISTENING_PORT if version == "v3" else STATUS_PORT


CONFIG_DIR = "/etc/redis-shake"
CONFIG_FILE = "shake.toml"
# The share document of the clear-share init container (sync.share.clear_from_document).
SHARE_FILE = "share.json"
# The image is the user's choice (spec.image); this default names the upstream v4 image.
DEFAULT_IMAGE = "ghcr.io/tair-opensource/redisshake:v4"
# Where the binary is in the image: upstream's v4 Dockerfile copies it to /app (its WORKDIR, not on
# PATH), and so does hack/build-images.sh. v3 images put it on PATH.
BINARY = {"v4": "/app/redis-shake", "v3": "redis-shake"}
DEFAULT_RESOURCES = Resources(cpu="1", memory="2Gi")
# sync_reader stores the source's RDB in ``dir`` before loading it: size this like the dataset.
DEFAULT_SCRATCH = "20Gi"
# redis-shake is a static Go binary with no user of its own in the image; any non-root uid works.
RUN_AS = 65532
COMPONENT = "redis-shake"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        # JSON string escaping is valid TOML basic-string escaping for everything JSON emits.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _render(version: str, values: Mapping[str, Any]) -> str:
    keys = SHAKE_KEYS[version]
    sections: dict[str, list[str]] = {}
    for logical, value in values.items():
        section, key = keys[logical]
        rendered = _toml_value(value)
        if version == "v4":
            # v4 runs its config file through envsubst (a8m/envsubst) before parsing: a `$` in a
            # password would be taken for a variable; `$$` is envsubst's literal dollar.
            rendered = rendered.replace("$", "$$")
        sections.setdefault(section, []).append(f"{key} = {rendered}")
    lines = list(sections.pop("", []))
    for section, entries in sections.items():
        lines += ["", f"[{section}]", *entries]
    return "\n".join(lines).lstrip("\n") + "\n"


def render_v4(
    workload: ShakeWorkload,
    *,
    source_password: str | None,
    target_password: str | None,
    source_username: str | None = None,
    target_username: str | None = None,
    tls: bool = False,
    status_port: int = STATUS_PORT,
    work_dir: str = f"{WORK_DIR}/shake",
) -> str:
    """``shake.toml`` for redis-shake v4 (sync_reader -> redis_writer). Contains passwords: Secret only
    (or a 0600 file when rendered for a redis-shake run by hand)."""
    values: dict[str, Any] = {
        # One shard per workload: the reader talks to that node only, never the whole source cluster.
        "reader.cluster": False,
        "reader.address": workload.reader.address,
        "reader.username": source_username or "",
        "reader.password": source_password or "",
        "reader.tls": tls,
        "reader.sync_rdb": True,
        "reader.sync_aof": True,
        "writer.cluster": workload.writer.cluster,
        "writer.address": workload.writer.address.address,
        "writer.username": target_username or "",
        "writer.password": target_password or "",
        "writer.tls": tls,
    }
    flt = workload.filter
    if flt.allow_key_prefixes:
        values["filter.allow_key_prefix"] = list(flt.allow_key_prefixes)
    if flt.block_key_prefixes:
        values["filter.block_key_prefix"] = list(flt.block_key_prefixes)
    if flt.allow_dbs:
        values["filter.allow_db"] = list(flt.allow_dbs)
    values |= {
        "advanced.dir": work_dir,
        "advanced.status_port": status_port,
        "advanced.log_file": "shake.log",
        "advanced.log_level": "info",
        "advanced.log_interval": 5,
        "advanced.pipeline_count_limit": 1024,
        # Never abort on a key that exists: a RESTORE in the source's command stream is replayed as
        # is. (A restart's full resync over the previous run's keys is handled by emptying the
        # workload's share first, sync.share: this setting does not reach sync_reader's RDB load.)
        "advanced.rdb_restore_command_behavior": "rewrite",
    }
    return _render("v4", values)


def render_v3(
    workload: ShakeWorkload,
    *,
    source_password: str | None,
    target_password: str | None,
    tls: bool = False,
) -> str:
    """``redis-shake.toml`` for redis-shake v3 (type = "sync"). Contains passwords: Secret only.

    v3 filters are Lua scripts given on the command line, not config keys: a workload with a filter
    is refused here rather than silently syncing everything.
    """
    flt = workload.filter
    if flt.allow_key_prefixes or flt.block_key_prefixes or flt.allow_dbs:
        raise SpecError(
            "spec.filter", "redis-shake v3 takes filters as Lua scripts; use v4 for key/db filters"
        )
    values: dict[str, Any] = {
        "type": "sync",
        "reader.address": workload.reader.address,
        "reader.username": "",
        "reader.password": source_password or "",
        "reader.tls": tls,
        "writer.type": "cluster" if workload.writer.cluster else "standalone",
        "writer.address": workload.writer.address.address,
        "writer.username": "",
        "writer.password": target_password or "",
        "writer.tls": tls,
        "advanced.dir": f"{WORK_DIR}/shake",
        "advanced.log_file": "redis-shake.log",
        "advanced.log_level": "info",
        "advanced.log_interval": 5,
        "advanced.pipeline_count_limit": 1024,
        "advanced.rdb_restore_command_behavior": "rewrite",
    }
    return _render("v3", values)


# --- Kubernetes objects ----------------------------------------------------------------------------


DIRECTION_LABEL = "moorage.io/sync-direction"


def labels(workload: ShakeWorkload) -> dict[str, str]:
    result = {
        kube.NAME_LABEL: COMPONENT,
        kube.INSTANCE_LABEL: workload.sync,
        kube.COMPONENT_LABEL: workload.name,
        kube.MANAGED_BY_LABEL: kube.MANAGED_BY,
        DIRECTION_LABEL: workload.direction.value.lower(),
    }
    if workload.shard is not None:
        result[kube.SHARD_LABEL] = str(workload.shard)
    return result


def config_secret_name(workload: ShakeWorkload) -> str:
    return f"{workload.name}-config"


def share_document(workload: ShakeWorkload, config_text: str, version: str) -> str:
    """What the pod's ``clear-share`` init container needs to empty this workload's share of the
    target before redis-shake's full sync (``sync.share``): its slots and filter, and the writer's
    address and credentials exactly as the rendered config has them."""
    parsed = tomllib.loads(config_text)

    def writer(name: str) -> Any:
        section, key = SHAKE_KEYS[version][f"writer.{name}"]
        return (parsed.get(section) or {}).get(key) if section else parsed.get(key)

    return json.dumps(
        {
            "workload": workload.name,
            "slots": [list(r) for r in workload.source_slots],
            "filter": workload.filter.to_wire(),
            "target": {
                "address": writer("address"),
                "username": writer("username") or None,
                "password": writer("password") or None,
            },
        },
        sort_keys=True,
    )


def config_secret(
    workload: ShakeWorkload, namespace: str, config_text: str, share_text: str | None = None
) -> dict[str, Any]:
    """The Secret holding the rendered config and the share document (both hold the target's
    password, the config the source's too)."""
    data = {CONFIG_FILE: base64.b64encode(config_text.encode("utf-8")).decode("ascii")}
    if share_text is not None:
        data[SHARE_FILE] = base64.b64encode(share_text.encode("utf-8")).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": config_secret_name(workload),
            "namespace": namespace,
            "labels": labels(workload),
        },
        "type": "Opaque",
        "data": data,
    }


def deployment(
    workload: ShakeWorkload,
    namespace: str,
    *,
    image: str = DEFAULT_IMAGE,
    resources: Resources = DEFAULT_RESOURCES,
    scratch: str = DEFAULT_SCRATCH,
    status_port: int | None = STATUS_PORT,
    config_checksum: str | None = None,
    binary: str = BINARY["v4"],
    share_image: str | None = None,
) -> dict[str, Any]:
    """One redis-shake pod. ``Recreate`` and one replica: two instances of one workload would write
    the same keys twice and race each other's full syncs. ``config_checksum`` (of the config text)
    goes on the pod template so a re-plan rolls the pod (a
    password rotation needs a rollout of its own).

    ``share_image`` (Moorage's own image): an init container empties the workload's share of the
    target (``moorage sync clear-share``) before redis-shake starts, since every start of redis-shake
    is a full sync, correct only into an empty share (``sync.share``). It fails, and the pod waits,
    while the target cannot be reached: redis-shake never starts over the previous run's keys. Init
    containers run once per pod, so the operator rolls a pod whose redis-shake restarted in place."""
    selector = {key: value for key, value in labels(workload).items() if key != "moorage.io/sync-direction"}
    probe = {
        "httpGet": {"path": "/", "port": "status"},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    # v3 has no status port (``status_port=None``): no probes then, the process itself is the signal.
    with_status = status_port is not None
    container = kube.container(
        "redis-shake",
        image,
        resources=resources,
        command=[binary, f"{CONFIG_DIR}/{CONFIG_FILE}"],
        ports=[("status", status_port)] if status_port is not None else [],
        volume_mounts=[
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": WORK_DIR},
        ],
        readiness=probe if with_status else None,
        # A generous startup window: the status port opens early, but the first full sync can take long.
        startup={**probe, "failureThreshold": 30} if with_status else None,
    )
    init_containers = []
    if share_image:
        init_containers.append(
            kube.container(
                "clear-share",
                share_image,
                resources=resources,
                command=["moorage", "sync", "clear-share", f"{CONFIG_DIR}/{SHARE_FILE}"],
                volume_mounts=[{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
            )
        )
    annotations = {"moorage.io/config-checksum": config_checksum} if config_checksum else {}
    template_meta: dict[str, Any] = {"labels": labels(workload)}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": workload.name, "namespace": namespace, "labels": labels(workload)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": template_meta,
                "spec": kube.pod_spec(
                    containers=[container],
                    init_containers=init_containers,
                    volumes=[
                        {
                            "name": "config",
                            "secret": {"secretName": config_secret_name(workload), "defaultMode": 0o400},
                        },
                        {"name": "scratch", "emptyDir": {"sizeLimit": scratch}},
                    ],
                    security_context=kube.pod_security_context(user=RUN_AS, group=RUN_AS),
                ),
            },
        },
    }


def manifests(
    workloads: Sequence[ShakeWorkload],
    namespace: str,
    configs: Mapping[str, str],
    *,
    image: str = DEFAULT_IMAGE,
    resources: Resources = DEFAULT_RESOURCES,
    shake_version: str = "v4",
    share_image: str | None = None,
) -> list[dict[str, Any]]:
    """Secret + Deployment per workload; ``configs`` maps workload name -> rendered config text
    (rendered for ``shake_version``: v3 workloads get no status port). With ``share_image``, each pod
    empties its share of the target first (see ``deployment``)."""
    objects: list[dict[str, Any]] = []
    for workload in workloads:
        text = configs[workload.name]
        # A checksum of the plan, not of the config text: a hash of text holding the passwords on a
        # readable annotation would let anyone test password guesses offline.
        checksum = hashlib.sha256(repr(workload).encode("utf-8")).hexdigest()[:16]
        share = share_document(workload, text, shake_version) if share_image else None
        objects.append(config_secret(workload, namespace, text, share))
        objects.append(
            deployment(
                workload,
                namespace,
                image=image,
                resources=resources,
                status_port=STATUS_PORT if shake_version == "v4" else None,
                binary=BINARY[shake_version],
                config_checksum=checksum,
                share_image=share_image,
            )
        )
    return objects
