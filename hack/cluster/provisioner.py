#!/usr/bin/env python3
"""Dynamic host-path volumes for the local cluster (StorageClass ``moorage-local``, the default).

A StatefulSet's volumeClaimTemplates need a provisioner, and a single-node cluster on one machine
has no storage system: each claim gets a directory under ``--root`` and a ``hostPath``
PersistentVolume bound to it (pinned to the node). The directory is world-writable, as
rancher's local-path-provisioner makes them, because the kubelet applies no ``fsGroup`` to host
paths and engines run as their own non-root users. A volume whose claim is deleted is removed with
its directory when its reclaim policy is ``Delete`` (the class default); ``Retain`` keeps both.
A claim grown on a bound volume is grown on the volume (a host path has no size to change), so
the operator's storage expansion works here too.

Polls once a second: simple, restart-safe (state is in the API only), and enough for one node.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

PROVISIONER = "moorage.io/local-path"
PATH_ANNOTATION = "moorage.io/local-path"

log = logging.getLogger("provisioner")


def ensure_storage_class(storage: client.StorageV1Api, name: str) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }
    try:
        storage.create_storage_class(body)
        log.info("created StorageClass %s (default)", name)
    except ApiException as error:
        if error.status != 409:
            raise


def claim_class(
    core: client.CoreV1Api,
    storage: client.StorageV1Api,
    pvc: client.V1PersistentVolumeClaim,
    default_class: str,
) -> str | None:
    name = pvc.spec.storage_class_name
    return default_class if name is None else name


def provision(
    core: client.CoreV1Api, pvc: client.V1PersistentVolumeClaim, root: Path, node: str, reclaim: str
) -> None:
    meta = pvc.metadata
    directory = root / f"{meta.namespace}-{meta.name}-{meta.uid}"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o777)
    size = pvc.spec.resources.requests["storage"]
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta.uid}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER, PATH_ANNOTATION: str(directory)},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": pvc.spec.access_modes,
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": pvc.spec.storage_class_name,
            "volumeMode": pvc.spec.volume_mode or "Filesystem",
            "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta.namespace,
                "name": meta.name,
                "uid": meta.uid,
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            },
        },
    }
    try:
        core.create_persistent_volume(volume)
        log.info("provisioned %s/%s (%s) at %s", meta.namespace, meta.name, size, directory)
    except ApiException as error:
        if error.status != 409:
            raise


def reclaim(core: client.CoreV1Api, pv: client.V1PersistentVolume, root: Path) -> None:
    path = (pv.metadata.annotations or {}).get(PATH_ANNOTATION, "")
    # Only ever delete a directory this provisioner made under its own root.
    if path and Path(path).resolve().parent == root.resolve():
        shutil.rmtree(path, ignore_errors=True)
    try:
        core.delete_persistent_volume(pv.metadata.name)
        log.info("deleted released volume %s and %s", pv.metadata.name, path)
    except ApiException as error:
        if error.status != 404:
            raise


def expand(
    core: client.CoreV1Api, pvc: client.V1PersistentVolumeClaim, pv: client.V1PersistentVolume
) -> None:
    wanted = pvc.spec.resources.requests["storage"]
    core.patch_persistent_volume(pv.metadata.name, {"spec": {"capacity": {"storage": wanted}}})
    core.patch_namespaced_persistent_volume_claim_status(
        pvc.metadata.name, pvc.metadata.namespace, {"status": {"capacity": {"storage": wanted}}}
    )
    log.info("expanded %s/%s to %s", pvc.metadata.namespace, pvc.metadata.name, wanted)


def _quantity(value: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(value))


def loop_once(
    core: client.CoreV1Api, storage: client.StorageV1Api, root: Path, node: str, default_class: str
) -> None:
    classes = {
        sc.metadata.name: sc for sc in storage.list_storage_class().items if sc.provisioner == PROVISIONER
    }
    volumes = {pv.metadata.name: pv for pv in core.list_persistent_volume().items}
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        if pvc.metadata.deletion_timestamp:
            continue
        class_name = claim_class(core, storage, pvc, default_class)
        if class_name not in classes:
            continue
        if pvc.status.phase == "Pending" and not pvc.spec.volume_name:
            provision(core, pvc, root, node, classes[class_name].reclaim_policy or "Delete")
        elif pvc.spec.volume_name in volumes:
            pv = volumes[pvc.spec.volume_name]
            if _quantity(pvc.spec.resources.requests["storage"]) > _quantity(pv.spec.capacity["storage"]):
                expand(core, pvc, pv)
    for pv in volumes.values():
        annotations = pv.metadata.annotations or {}
        if (
            annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
            and pv.status.phase == "Released"
            and pv.spec.persistent_volume_reclaim_policy == "Delete"
        ):
            reclaim(core, pv, root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--storage-class", default="moorage-local")
    parser.add_argument("--node", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config.load_kube_config(args.kubeconfig)
    core, storage = client.CoreV1Api(), client.StorageV1Api()
    args.root.mkdir(parents=True, exist_ok=True)
    ensure_storage_class(storage, args.storage_class)
    while True:
        try:
            loop_once(core, storage, args.root, args.node, args.storage_class)
        except Exception:
            log.exception("provisioning pass failed; retrying")
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
