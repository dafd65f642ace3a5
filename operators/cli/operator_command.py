"""``moorage operator``: run the Kubernetes operator (kopf) with the handlers of ``operators.main``.

The Deployment in ``deploy/`` runs ``moorage operator --all-namespaces --peering moorage``; a developer
runs ``moorage operator -n NAMESPACE --standalone`` against any kubeconfig (``$KUBECONFIG``).

Two replicas share one kopf peering object; kopf pauses every operator that sees a peer with a
higher priority, and pauses *all* of them on a tie. So when peering is on and no ``--priority`` is
given, each process draws a random priority: exactly one replica acts, and when it dies the other
resumes once the dead peer's lifetime (60 s) has passed.
"""

from __future__ import annotations

import importlib
import logging
import random
from typing import Annotated

import kopf
import typer

from middleware.errors import MoorageError
from operators import metrics
from operators.kube import api_session

HANDLERS_MODULE = "operators.main"
DEFAULT_METRICS_PORT = 8000
# kopf compares priorities as plain integers; a wide range makes a tie between replicas negligible.
_PRIORITY_RANGE = (1, 1_000_000)

log = logging.getLogger(__name__)


def choose_priority(priority: int | None, peering: str | None) -> int | None:
    """The peering priority to run with: the given one, or a random one when peering is on."""
    if priority is not None or peering is None:
        return priority
    return random.SystemRandom().randint(*_PRIORITY_RANGE)


def check_options(
    namespaces: list[str], all_namespaces: bool, peering: str | None, standalone: bool, metrics_port: int
) -> None:
    """Refuse contradictory or missing choices with the option named, before anything starts."""
    if namespaces and all_namespaces:
        raise MoorageError("--namespace and --all-namespaces exclude each other: give one")
    if not namespaces and not all_namespaces:
        raise MoorageError("give --namespace NAME (repeatable, globs allowed) or --all-namespaces")
    if peering is not None and standalone:
        raise MoorageError("--peering and --standalone exclude each other: give one")
    if peering is None and not standalone:
        raise MoorageError(
            "give --peering NAME (replicas coordinate through that kopf peering object) or --standalone"
        )
    if peering is not None and not peering.strip():
        raise MoorageError("--peering must name a ClusterKopfPeering/KopfPeering object")
    if not 0 <= metrics_port <= 65535:
        raise MoorageError(f"--metrics-port {metrics_port} is not a TCP port (0 disables metrics)")


PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


def ensure_peering(name: str, *, clusterwide: bool, namespaces: list[str]) -> None:
    """Create the peering object when it is missing.

    ``kubectl apply -k deploy/`` cannot create the ClusterKopfPeering in the same run that creates its
    CRD (the kind is unknown until the CRD is Established), and kopf with a mandatory peering waits for
    the object forever; so the operator makes it rather than sitting idle until a second apply.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "metadata": {"name": name}}
    targets: list[str | None] = (
        [None] if clusterwide else [n for n in namespaces if not api_session.is_glob(n)]
    )
    for namespace in targets:
        kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
        try:
            if namespace is None:
                api.create_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", {**body, "kind": kind}
                )
            else:
                api.create_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", {**body, "kind": kind}
                )
            log.info("created %s %s", kind, name)
        except ApiException as error:
            if error.status == 409:
                continue
            if error.status == 404:
                raise MoorageError(
                    f"{kind} {name}: the kopf peering CRDs are not installed (kubectl apply -k deploy/)"
                ) from None
            # Without create rights kopf still works once an admin creates the object: say so, go on.
            log.warning("cannot create %s %s (HTTP %s): kopf waits until it exists", kind, name, error.status)


def load_handlers(module: str = HANDLERS_MODULE) -> None:
    """Import the module whose import registers every kopf handler."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            raise MoorageError(f"the operator handlers module {module} is not installed") from None
        raise


def run(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    peering: str | None,
    standalone: bool,
    priority: int | None,
    liveness: str | None,
    metrics_port: int,
    metrics_address: str,
    verbose: bool,
) -> None:
    check_options(namespaces, all_namespaces, peering, standalone, metrics_port)
    # `moorage` configures a plain root handler for the other commands; kopf adds its own, and both
    # would print every line.
    logging.getLogger().handlers.clear()
    kopf.configure(verbose=verbose)
    load_handlers()
    chosen = choose_priority(priority, peering)
    if peering is not None:
        ensure_peering(peering, clusterwide=all_namespaces, namespaces=namespaces)
    api_session.set_watch_scope(
        api_session.WatchScope(
            clusterwide=all_namespaces, namespaces=tuple(namespaces), peering=peering is not None
        )
    )
    if metrics_port:
        metrics.serve(metrics_port, addr=metrics_address)
    log.info(
        "moorage operator: %s, %s, priority %s, metrics %s",
        "all namespaces" if all_namespaces else f"namespaces {', '.join(namespaces)}",
        f"peering {peering}" if peering else "standalone",
        chosen if chosen is not None else "default",
        f"{metrics_address}:{metrics_port}" if metrics_port else "off",
    )
    kopf.run(
        clusterwide=all_namespaces,
        namespaces=namespaces,
        standalone=standalone or None,
        peering_name=peering,
        priority=chosen,
        liveness_endpoint=liveness,
    )


def operator_command(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace to serve (repeatable; globs like 'team-*')."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace (cluster-wide).")
    ] = False,
    peering: Annotated[
        str | None,
        typer.Option(
            "--peering", "-P", help="kopf peering object shared by the replicas (deploy/ uses 'moorage')."
        ),
    ] = None,
    standalone: Annotated[
        bool, typer.Option("--standalone", help="No peering: this process is the only operator.")
    ] = False,
    priority: Annotated[
        int | None,
        typer.Option("--priority", "-p", help="Peering priority (default: random when peering is on)."),
    ] = None,
    liveness: Annotated[
        str | None,
        typer.Option(
            "--liveness", "-L", help="kopf health endpoint for probes, e.g. http://0.0.0.0:8080/healthz."
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Prometheus /metrics port; 0 disables.")
    ] = DEFAULT_METRICS_PORT,
    metrics_address: Annotated[
        str, typer.Option("--metrics-address", help="Address the metrics server binds.")
    ] = "0.0.0.0",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the Kubernetes operator: reconcile Middlewares and the other Moorage resources."""
    run(
        namespaces=list(namespaces or []),
        all_namespaces=all_namespaces,
        peering=peering,
        standalone=standalone,
        priority=priority,
        liveness=liveness,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        verbose=verbose,
    )


def main() -> None:
    """``python -m operators.cli.operator_command``: the same command without loading the whole
    ``moorage`` CLI."""
    try:
        typer.run(operator_command)
    except MoorageError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
