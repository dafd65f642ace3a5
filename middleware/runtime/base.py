"""The Runtime protocol, implemented by the local runtime here and the Kubernetes runtime later."""

from __future__ import annotations

from typing import Any, Protocol

from middleware.endpoints import ClientTls
from middleware.engines.base import Connection, Engine, Member, MemberPlan
from middleware.spec import ResolvedSpec


class Runtime(Protocol):
    def apply(
        self,
        spec: ResolvedSpec,
        engine: Engine,
        members: list[MemberPlan] | None = None,
        conn: Connection | None = None,
    ) -> list[MemberPlan]:
        """Make ``members`` (default: all planned) exist and run; returns the members it had to start.
        ``conn`` holds the members already up, for engines that prepare a member from a peer."""
        ...

    def record_manifest(self, spec: ResolvedSpec, manifest: dict[str, Any]) -> None:
        """Remember the manifest as applied, once the change it asked for is done."""
        ...

    def member_exited(self, spec: ResolvedSpec, member: MemberPlan) -> bool:
        """True when the member was started and its process has ended (crashed or killed)."""
        ...

    def member_log_tail(self, spec: ResolvedSpec, member: MemberPlan, lines: int = 5) -> str: ...

    def members(self, spec: ResolvedSpec, engine: Engine) -> list[Member]:
        """The planned members with their endpoints and whether they are up right now."""
        ...

    def password(self, spec: ResolvedSpec) -> str:
        """The deployment's password: generated once on first use, never regenerated."""
        ...

    def client_tls(self, spec: ResolvedSpec) -> ClientTls | None:
        """How a client on this machine reaches the members of a deployment with spec.tls."""
        ...

    def retire(self, spec: ResolvedSpec, engine: Engine, members: list[MemberPlan]) -> None:
        """Stop members the spec no longer has; their data is kept (like PVCs on scale-in)."""
        ...

    def start_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> None:
        """Start one stopped member again with its existing data (what a pod restart does)."""
        ...

    def update_config(self, spec: ResolvedSpec, engine: Engine, directives: dict[str, str]) -> None:
        """Persist changed parameters in every member's config, so a restart keeps them."""
        ...

    def delete(self, namespace: str, name: str, *, purge: bool) -> None:
        """Stop every member; with ``purge`` also delete data and credentials."""
        ...

    def applied_manifest(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Middleware manifest last applied, or None if it does not exist."""
        ...

    def has_data(self, namespace: str, name: str) -> bool:
        """True when a deployment was stopped but its data and credentials were kept."""
        ...

    def metrics_addresses(self, spec: ResolvedSpec, engine: Engine) -> dict[str, str]:
        """host:port of each member's running Prometheus exporter, by member name."""
        ...

    def save_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def load_status(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self) -> list[tuple[str, str]]:
        """(namespace, name) of every deployment this runtime knows."""
        ...
