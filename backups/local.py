"""Runbook targets on the local runtime: deployments started by ``moorage up``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backups.runbook import Target
from middleware.lifecycle import Lifecycle

SCRATCH_NAMESPACE = "moorage-scratch"


class LocalTargets:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def get(self, namespace: str, name: str) -> Target:
        deployment = self.lifecycle.existing(namespace, name)
        manifest = self.lifecycle.runtime.applied_manifest(namespace, name) or {}
        return Target(
            namespace=namespace,
            name=name,
            spec=deployment.spec,
            engine=deployment.engine,
            conn=self.lifecycle.connection(deployment),
            manifest=manifest,
        )

    @contextmanager
    def scratch(self, manifest: dict[str, Any]) -> Iterator[Target]:
        # Apart from the user's deployments, so `moorage status` lists never show it.
        namespace = SCRATCH_NAMESPACE
        name = manifest["metadata"]["name"]
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        try:
            self.lifecycle.up(manifest)
            yield self.get(namespace, name)
        finally:
            # A scratch deployment is ours alone: its data goes with it.
            self.lifecycle.down(namespace, name, purge=True)

    def deployments(self) -> list[tuple[str, str]]:
        return self.lifecycle.runtime.list()
