#!/usr/bin/env python3
"""Make an OCI image layout, as one tar archive, from root filesystem tars and/or single files.

The archive is what `ctr -n k8s.io images import FILE` (containerd 1.6+) accepts: `oci-layout`,
`index.json` naming the image (annotation `io.containerd.image.name`), and `blobs/sha256/` holding
the gzip'd layers, the image config and the manifest. No Docker, no registry; Python stdlib only.

    mkoci.py --layer redis-rootfs.tar --name localhost/moorage/redis:7.0 \
             --cmd '["redis-server"]' --user 999:999 --workdir /data --expose 6379/tcp -o redis.tar

    mkoci.py --file /pause=build/pause:0755 --name localhost/moorage/pause:3.10 \
             --entrypoint '["/pause"]' -o pause.tar

Layers, in order: every `--layer TAR` (an uncompressed tar of a root filesystem, e.g.
`mmdebstrap --format=tar`, used byte for byte), then one layer made of the `--dir`, `--file` and
`--symlink` entries when there are any.

Deterministic: the same inputs give the same digests. Generated tars are sorted by name, owned by
0:0 (unless given), with every mtime at SOURCE_DATE_EPOCH (default 0); gzip headers carry no
name or time; JSON is written with sorted keys; the config's `created` is SOURCE_DATE_EPOCH too.
A `--layer` tar is taken as given: make it reproducible where it is made (mmdebstrap does, with
SOURCE_DATE_EPOCH set: `--sort=name --clamp-mtime --numeric-owner`).

Prints one JSON line: name, manifest/config digests, layer digests and sizes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    return int(uid), int(gid or uid)


def _tarinfo(name: str, kind: bytes, mode: int, owner: tuple[int, int], mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name.strip("/"))
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = owner
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    return ti


def build_file_layer(path: str, dirs: list[str], files: list[str], links: list[str], mtime: int) -> None:
    """A tar of the given entries, sorted by name, parents created (0755 root) where not given.

    --dir PATH[:MODE[:UID:GID]]      --file PATH=HOSTFILE[:MODE[:UID:GID]]      --symlink PATH=TARGET
    """
    entries: dict[str, tuple[tarfile.TarInfo, str | None]] = {}

    def split_opts(spec: str) -> tuple[str, int | None, tuple[int, int]]:
        parts = spec.split(":")
        mode = int(parts[1], 8) if len(parts) > 1 and parts[1] else None
        owner = (int(parts[2]), int(parts[3])) if len(parts) > 3 else (0, 0)
        return parts[0], mode, owner

    for spec in dirs:
        name, mode, owner = split_opts(spec)
        entries[name.strip("/")] = (
            _tarinfo(name, tarfile.DIRTYPE, 0o755 if mode is None else mode, owner, mtime),
            None,
        )
    for spec in files:
        name, _, rest = spec.partition("=")
        host, mode, owner = split_opts(rest)
        st = os.stat(host)
        ti = _tarinfo(name, tarfile.REGTYPE, (st.st_mode & 0o7777) if mode is None else mode, owner, mtime)
        ti.size = st.st_size
        entries[name.strip("/")] = (ti, host)
    for spec in links:
        name, _, target = spec.partition("=")
        ti = _tarinfo(name, tarfile.SYMTYPE, 0o777, (0, 0), mtime)
        ti.linkname = target
        entries[name.strip("/")] = (ti, None)
    for name in list(entries):
        parent = os.path.dirname(name)
        while parent and parent not in entries:
            entries[parent] = (_tarinfo(parent, tarfile.DIRTYPE, 0o755, (0, 0), mtime), None)
            parent = os.path.dirname(parent)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            ti, host = entries[name]
            if host is None:
                tar.addfile(ti)
            else:
                with open(host, "rb") as f:
                    tar.addfile(ti, f)


def compress(layer_tar: str, out: str, level: int) -> None:
    # filename="" and mtime=0: the gzip header holds nothing that changes between runs.
    with (
        open(layer_tar, "rb") as fi,
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=level, mtime=0) as fo,
    ):
        shutil.copyfileobj(fi, fo, CHUNK)


def add_deterministic(
    tar: tarfile.TarFile, arcname: str, path: str | None = None, data: bytes | None = None
) -> None:
    ti = tarfile.TarInfo(arcname)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    if path is None and data is None:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
        tar.addfile(ti)
        return
    ti.mode = 0o644
    if data is not None:
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    else:
        ti.size = os.path.getsize(path)
        with open(path, "rb") as f:
            tar.addfile(ti, f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--layer", action="append", default=[], help="uncompressed rootfs tar (repeatable, in order)"
    )
    ap.add_argument("--dir", action="append", default=[], help="PATH[:MODE[:UID:GID]] in the file layer")
    ap.add_argument(
        "--file", action="append", default=[], help="PATH=HOSTFILE[:MODE[:UID:GID]] in the file layer"
    )
    ap.add_argument("--symlink", action="append", default=[], help="PATH=TARGET in the file layer")
    ap.add_argument("--name", required=True, help="full reference, e.g. localhost/moorage/redis:7.0")
    ap.add_argument("--entrypoint", help="JSON list")
    ap.add_argument("--cmd", help="JSON list")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE; PATH replaces the default PATH")
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--expose", action="append", default=[], help="PORT/PROTO, e.g. 6379/tcp")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE image config label")
    ap.add_argument("--stop-signal", default="")
    ap.add_argument("--gzip-level", type=int, default=6, help="0 = uncompressed layers")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    if not (a.layer or a.file or a.dir or a.symlink):
        ap.error("nothing to put in the image: give --layer and/or --file/--dir/--symlink")
    mtime = source_date_epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))

    out_dir = os.path.dirname(os.path.abspath(a.output))
    work = tempfile.mkdtemp(prefix=".mkoci.", dir=out_dir)
    blobs = os.path.join(work, "blobs")
    os.makedirs(blobs)
    try:
        layer_tars = list(a.layer)
        if a.file or a.dir or a.symlink:
            files_tar = os.path.join(work, "files.tar")
            build_file_layer(files_tar, a.dir, a.file, a.symlink, mtime)
            layer_tars.append(files_tar)

        layers, diff_ids = [], []
        for i, layer_tar in enumerate(layer_tars):
            diff_ids.append("sha256:" + sha256_file(layer_tar))
            blob = os.path.join(work, f"layer{i}.blob")
            if a.gzip_level > 0:
                compress(layer_tar, blob, a.gzip_level)
                media = LAYER_GZIP
            else:
                shutil.copyfile(layer_tar, blob)
                media = LAYER_TAR
            digest = sha256_file(blob)
            size = os.path.getsize(blob)
            os.replace(blob, os.path.join(blobs, digest))
            layers.append({"mediaType": media, "digest": "sha256:" + digest, "size": size})

        def put_json(obj: dict) -> tuple[str, int]:
            data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
            digest = hashlib.sha256(data).hexdigest()
            with open(os.path.join(blobs, digest), "wb") as f:
                f.write(data)
            return "sha256:" + digest, len(data)

        env = [e for e in a.env]
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, DEFAULT_PATH)
        cfg: dict = {"Env": env}
        if a.entrypoint:
            cfg["Entrypoint"] = json.loads(a.entrypoint)
        if a.cmd:
            cfg["Cmd"] = json.loads(a.cmd)
        if a.user:
            cfg["User"] = a.user
        if a.workdir:
            cfg["WorkingDir"] = a.workdir
        if a.expose:
            cfg["ExposedPorts"] = {p if "/" in p else p + "/tcp": {} for p in a.expose}
        if a.label:
            cfg["Labels"] = dict(label.split("=", 1) for label in a.label)
        if a.stop_signal:
            cfg["StopSignal"] = a.stop_signal
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": "hack/mkoci.py"} for _ in layers],
        }
        cfg_digest, cfg_size = put_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": layers,
        }
        man_digest, man_size = put_json(manifest)
        last = a.name.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": man_digest,
                    "size": man_size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": a.name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
        tmp_out = os.path.join(work, "image.tar")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            add_deterministic(tar, "oci-layout", data=json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            add_deterministic(
                tar, "index.json", data=json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
            )
            add_deterministic(tar, "blobs")
            add_deterministic(tar, "blobs/sha256")
            for digest in sorted(os.listdir(blobs)):
                add_deterministic(tar, f"blobs/sha256/{digest}", path=os.path.join(blobs, digest))
        os.replace(tmp_out, a.output)
        print(
            json.dumps(
                {
                    "name": a.name,
                    "manifest": man_digest,
                    "config": cfg_digest,
                    "layers": [{"digest": layer["digest"], "size": layer["size"]} for layer in layers],
                    "diff_ids": diff_ids,
                    "size": os.path.getsize(a.output),
                },
                sort_keys=True,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
