"""``moorage``: the CLI for platform engineers, SREs and DBAs. Thin: parse, delegate, print.

Errors are one line on stderr and a non-zero exit (2 for an invalid spec, 1 otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from middleware.catalog import Catalog, load_default_catalog
from middleware.endpoints import Endpoint
from middleware.engines.base import ClientCommand
from middleware.engines.base import Progress as ProgressFn
from middleware.engines.registry import get_engine
from middleware.errors import MoorageError, SpecError
from middleware.kube.builders import credentials_secret_name
from middleware.lifecycle import Lifecycle
from middleware.models.common import API_VERSION
from middleware.models.middleware import MiddlewareStatus
from middleware.operations import Action, OperationRequest
from middleware.runtime.kubernetes import KubernetesRuntime
from middleware.runtime.local import STATE_DIR_ENV, LocalRuntime
from middleware.spec import ResolvedSpec, check_change, load_middleware, manifest_of, resolve
from operators.cli.backup_commands import backup_app, restore_app
from operators.cli.local import archiving_failing, audit_archiving, last_verified_point, local_runtime
from operators.cli.operations import apply_middleware, change_spec, delete_middleware, request_operation
from operators.cli.operator_command import operator_command
from operators.cli.port_forward import port_forward
from operators.cli.sync_commands import sync_app
from operators.kube import context

app = typer.Typer(
    help="Moorage: stateful middleware lifecycle manager (local runtime when no cluster is used).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(
    help="Engines, versions, plans and parameters Moorage offers.", no_args_is_help=True
)
app.add_typer(catalog_app, name="catalog")
app.add_typer(sync_app, name="sync")
app.command("operator")(operator_command)
app.add_typer(backup_app, name="backup")
app.add_typer(restore_app, name="restore")

out = Console()
err = Console(stderr=True)


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV, help="Local runtime state (default ./.moorage)."),
]
Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the Middleware.")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json.")]


CLI_FIELD_MANAGER = "moorage-cli"


class RuntimeKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


RuntimeOpt = Annotated[
    RuntimeKind,
    typer.Option(
        "--runtime",
        envvar="MOORAGE_RUNTIME",
        help="local: processes on this machine; kubernetes: the Middleware in the cluster of $KUBECONFIG "
        "(the operator does the work).",
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Kubernetes: seconds to wait for the outcome and for Ready.")
]


def _lifecycle(state_dir: Path | None) -> Lifecycle:
    return Lifecycle(local_runtime(state_dir))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _read_documents(files: list[Path]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for file in files:
        try:
            text = file.read_text()
        except OSError as error:
            raise MoorageError(f"cannot read {file}: {error.strerror}") from None
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as error:
            raise MoorageError(f"{file} is not valid YAML: {error}") from None
        for doc in loaded:
            if not isinstance(doc, dict):
                raise MoorageError(f"{file}: every document must be a mapping")
            documents.append(doc)
    if not documents:
        raise MoorageError("no documents found in " + ", ".join(map(str, files)))
    return documents


@contextmanager
def _progress(enabled: bool = True) -> Iterator[ProgressFn]:
    if not enabled:
        yield lambda _s, _d, _t: None
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def report(step: str, done: float, total: float) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)

    with bars:
        yield report


def _status_document(name: str, namespace: str, engine: str, topology: str, status: MiddlewareStatus) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "engine": engine,
        "topology": topology,
        "phase": status.phase,
        "phaseReason": status.phase_reason,
        "members": [
            {"name": m.name, "address": m.address, "role": m.role, "healthy": m.healthy}
            | ({"shard": m.shard} if m.shard is not None else {})
            | ({"metrics": m.metrics} if m.metrics else {})
            for m in status.members
        ],
        "endpoints": status.endpoints,
        "conditions": [c.to_wire() for c in status.conditions],
    } | ({"lastVerifiedRecoveryPoint": point} if (point := status.last_verified_recovery_point) else {})


def _show(doc: dict[str, Any], output: Output) -> None:
    _print_json(doc) if output == Output.JSON else _print_status(doc)


def _print_status(doc: dict[str, Any]) -> None:
    out.print(
        f"[bold]{doc['namespace']}/{doc['name']}[/] {doc['engine']} {doc['topology']}: "
        f"[bold]{doc['phase']}[/] ({doc['phaseReason']})"
    )
    table = Table(show_header=True, header_style="bold")
    columns = ["member", "address", "role", "healthy", "shard"]
    with_metrics = any("metrics" in m for m in doc["members"])
    for column in [*columns, *(["metrics"] if with_metrics else [])]:
        table.add_column(column)
    for member in doc["members"]:
        table.add_row(
            member["name"],
            member["address"],
            member["role"],
            "yes" if member["healthy"] else "[red]no[/]",
            str(member.get("shard", "")),
            *([member.get("metrics", "")] if with_metrics else []),
        )
    out.print(table)
    for key, value in doc["endpoints"].items():
        out.print(f"  {key}: {value}")
    if doc.get("lastVerifiedRecoveryPoint"):
        out.print(f"  last verified recoverable point: {doc['lastVerifiedRecoveryPoint']}")


@app.command()
def up(
    file: Annotated[list[Path], typer.Option("--file", "-f", help="Middleware manifest(s), YAML.")],
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 1200.0,
) -> None:
    """Create or update Middleware from manifests and wait until Ready."""
    documents = _read_documents(file)
    if runtime == RuntimeKind.KUBERNETES:
        _up_on_kubernetes(documents, output, timeout)
        return
    lifecycle = _lifecycle(state_dir)
    # Validate every document before starting anything: one bad spec starts nothing.
    deployments = [lifecycle.prepare(doc) for doc in documents]
    for deployment in deployments:
        recovery, name = deployment.spec.recovery, deployment.spec.name
        if recovery is not None:
            raise SpecError(
                "spec.recovery",
                "recovers pods on Kubernetes; on this runtime create the deployment without it, then "
                f"`moorage restore apply --to {name} --from {recovery.source} --to-time T` (docs/backups.md)",
            )
    results = []
    for doc, deployment in zip(documents, deployments, strict=True):
        spec = deployment.spec
        err.print(f"[bold]{spec.namespace}/{spec.name}[/]: {spec.engine} {spec.topology} ...")
        with _progress(output == Output.TABLE) as progress:
            status = lifecycle.up(doc, progress)
        results.append(_status_document(spec.name, spec.namespace, spec.engine, spec.topology, status))
    if output == Output.JSON:
        _print_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            _print_status(result)


def _up_on_kubernetes(documents: list[dict[str, Any]], output: Output, timeout: float) -> None:
    """Every document checked as the operator will (a bad one writes nothing), then applied and
    followed until the operator has carried it out and it is Ready."""
    rt = _kubernetes_runtime()
    try:
        catalog = context.catalog(rt)
        for doc in documents:
            doc.setdefault("metadata", {}).setdefault("namespace", "default")
            _checked_against_cluster(rt, catalog, doc)
        results = []
        for doc in documents:
            meta = doc["metadata"]
            with err.status(f"{meta['namespace']}/{meta['name']}: applying") as spinner:
                body = apply_middleware(rt, doc, timeout=timeout, progress=lambda m: spinner.update(m))
            results.append(_middleware_document(body))
    finally:
        rt.close()
    if output == Output.JSON:
        _print_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            _print_status(result)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Middleware name; all when omitted.")] = None,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    reveal_secrets: Annotated[bool, typer.Option(help="Include the password in the output.")] = False,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
) -> None:
    """Observe members live: roles, health and endpoints (Kubernetes: the operator's status)."""
    if runtime == RuntimeKind.KUBERNETES:
        _status_on_kubernetes(name, namespace, output, reveal_secrets)
        return
    lifecycle = _lifecycle(state_dir)
    targets = [(namespace, name)] if name else lifecycle.runtime.list()
    documents = []
    for ns, each in targets:
        deployment = lifecycle.existing(ns, each)
        was_failing = archiving_failing(lifecycle.runtime.load_status(ns, each))
        observed = lifecycle.status(ns, each)
        audit_archiving(ns, each, was_failing, observed)
        if deployment.spec.wal_archiving:
            observed.last_verified_recovery_point = last_verified_point(ns, each)
        doc = _status_document(each, ns, deployment.spec.engine, deployment.spec.topology, observed)
        if reveal_secrets:
            doc["password"] = lifecycle.runtime.password(deployment.spec)
        documents.append(doc)
    _print_statuses(
        documents, name is not None, output, "no Middleware yet: create one with `moorage up -f FILE`"
    )


def _print_statuses(documents: list[dict[str, Any]], single: bool, output: Output, empty: str) -> None:
    if output == Output.JSON:
        _print_json(documents[0] if single else documents)
        return
    if not documents:
        out.print(empty)
    for doc in documents:
        _print_status(doc)
        if "password" in doc:
            out.print(f"  password: {doc['password']}")


def _status_on_kubernetes(name: str | None, namespace: str, output: Output, reveal_secrets: bool) -> None:
    rt = _kubernetes_runtime()
    try:
        if name:
            found = rt.get(API_VERSION, "Middleware", namespace, name)
            if found is None:
                raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
            bodies = [found]
        else:
            bodies = rt.list_objects(API_VERSION, "Middleware", namespace, {})
        documents = []
        for body in bodies:
            doc = _middleware_document(body)
            if reveal_secrets:
                doc["password"] = _credentials(rt, body)[1]
            documents.append(doc)
    finally:
        rt.close()
    _print_statuses(documents, name is not None, output, f"no Middleware in namespace {namespace}")


@app.command()
def down(
    name: str,
    namespace: Namespace = "default",
    purge: Annotated[bool, typer.Option(help="Also delete data and credentials.")] = False,
    state_dir: StateDir = None,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Stop a Middleware. Data and credentials are kept unless --purge is given (Kubernetes: the
    Middleware is deleted with deletionPolicy Retain, or Delete with --purge)."""
    if runtime == RuntimeKind.KUBERNETES:
        rt = _kubernetes_runtime()
        try:
            with err.status(f"deleting {namespace}/{name}") as spinner:
                delete_middleware(
                    rt, namespace, name, purge=purge, timeout=timeout, progress=lambda m: spinner.update(m)
                )
        finally:
            rt.close()
    else:
        _lifecycle(state_dir).down(namespace, name, purge=purge)
    kept = "data deleted" if purge else "data kept (use --purge to delete it)"
    err.print(f"{namespace}/{name} stopped; {kept}")


@app.command()
def scale(
    name: str,
    shards: Annotated[int | None, typer.Option(help="Redis cluster: number of shards.")] = None,
    replicas: Annotated[
        int | None, typer.Option(help="Data members per shard, the primary included.")
    ] = None,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 1200.0,
) -> None:
    """Scale shards or replicas, moving data safely."""
    if (shards is None) == (replicas is None):
        raise SpecError("scale", "give exactly one of --shards or --replicas")
    change = {"shards": shards} if shards is not None else {"replicas": replicas}
    if runtime == RuntimeKind.KUBERNETES:
        body, _spec = _change_on_kubernetes(name, namespace, change, timeout)
        _show_middleware(name, namespace, body, output)
        return
    lifecycle = _lifecycle(state_dir)
    deployment = lifecycle.existing(namespace, name)
    with _progress(output == Output.TABLE) as progress:
        observed = lifecycle.scale(namespace, name, shards=shards, replicas=replicas, progress=progress)
    spec = deployment.spec
    _show(_status_document(name, namespace, spec.engine, spec.topology, observed), output)


@app.command()
def switchover(
    name: str,
    to: Annotated[str | None, typer.Option("--to", help="Member to promote (default: the best).")] = None,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Planned change of primary: no committed write is lost; the old primary rejoins as a replica."""
    if runtime == RuntimeKind.KUBERNETES:
        _operation_on_kubernetes(
            name, namespace, OperationRequest.new(Action.SWITCHOVER, to), output, timeout
        )
        return
    lifecycle = _lifecycle(state_dir)
    spec = lifecycle.existing(namespace, name).spec
    observed = lifecycle.switchover(namespace, name, to)
    _show(_status_document(name, namespace, spec.engine, spec.topology, observed), output)


@app.command()
def failover(
    name: str,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Promote the most advanced replica when the primary is gone (refused while a primary answers)."""
    if runtime == RuntimeKind.KUBERNETES:
        _operation_on_kubernetes(name, namespace, OperationRequest.new(Action.FAILOVER), output, timeout)
        return
    lifecycle = _lifecycle(state_dir)
    spec = lifecycle.existing(namespace, name).spec
    observed = lifecycle.failover(namespace, name)
    _show(_status_document(name, namespace, spec.engine, spec.topology, observed), output)


@app.command()
def restart(
    name: str,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Rolling restart: one member at a time, each healthy before the next, the primary last after a
    switchover (applies parameters that need a restart; clears PendingRestart)."""
    if runtime == RuntimeKind.KUBERNETES:
        _operation_on_kubernetes(name, namespace, OperationRequest.new(Action.RESTART), output, timeout)
        return
    lifecycle = _lifecycle(state_dir)
    spec = lifecycle.existing(namespace, name).spec
    with _progress(output == Output.TABLE) as progress:
        observed = lifecycle.restart(namespace, name, progress, timeout=timeout)
    _show(_status_document(name, namespace, spec.engine, spec.topology, observed), output)


def _operation_on_kubernetes(
    name: str, namespace: str, request: OperationRequest, output: Output, timeout: float
) -> None:
    """The operator does the work (see operators/cli/operations.py); the same output as locally."""
    rt = _kubernetes_runtime()
    try:
        with err.status(f"{request.action.value} of {namespace}/{name}") as spinner:
            outcome = request_operation(
                rt, namespace, name, request, timeout=timeout, progress=lambda m: spinner.update(m)
            )
    finally:
        rt.close()
    err.print(f"{request.action.value} {request.id}: {outcome.message}", highlight=False)
    _show_middleware(name, namespace, outcome.middleware, output)


@app.command()
def connect(
    name: str,
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    reveal_secrets: Annotated[bool, typer.Option(help="Put the passwords into the URIs.")] = False,
    exec_client: Annotated[
        bool,
        typer.Option(
            "--exec",
            help="Open the engine's own client (psql as app, redis-cli, ZooKeeper's shell) on the primary; "
            "on Kubernetes through `kubectl port-forward` to its Service.",
        ),
    ] = False,
) -> None:
    """Connection URIs per user (PostgreSQL's `app` user first). On Kubernetes they name the Services,
    which follow failovers, for clients in the cluster; passwords masked unless --reveal-secrets."""
    if runtime == RuntimeKind.KUBERNETES:
        spec, endpoints, password = _kubernetes_access(name, namespace)
    else:
        lifecycle = _lifecycle(state_dir)
        spec = lifecycle.existing(namespace, name).spec
        endpoints = dict(lifecycle.status(namespace, name).endpoints)
        password = lifecycle.runtime.password(spec)
    engine = get_engine(spec.engine)
    if exec_client:
        address = engine.client_address(spec, endpoints)
        if runtime == RuntimeKind.KUBERNETES:
            # NAME-rw.NS.svc:5432: the Service is the first label.
            target = Endpoint.parse(address)
            with port_forward(namespace, target.host.split(".")[0], target.port) as local:
                code = _run_client(engine.client_command(spec, local.address, password))
        else:
            tls = lifecycle.runtime.client_tls(spec)
            code = _run_client(engine.client_command(spec, address, password, tls))
        raise typer.Exit(code)
    rows = []
    for access in engine.client_access(spec, endpoints, password):
        uri = access.uri
        if access.password and not reveal_secrets:
            uri = uri.replace(quote(access.password, safe=""), "****")
        row = {"user": access.user, "purpose": access.purpose, "uri": uri}
        if reveal_secrets and access.password:
            row["password"] = access.password
        rows.append(row)
    if output == Output.JSON:
        _print_json(rows)
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("user", "for", "uri"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["user"], row["purpose"], row["uri"])
    out.print(table)
    if not reveal_secrets:
        out.print("passwords masked: --reveal-secrets puts them in")


def _run_client(command: ClientCommand) -> int:
    """The client in the foreground with this terminal (or these pipes); its exit code is ours."""
    try:
        return subprocess.run(command.argv, env={**os.environ, **command.env}, check=False).returncode
    except FileNotFoundError:
        raise MoorageError(f"{command.argv[0]} not found: install the engine's client for --exec") from None


def _kubernetes_access(name: str, namespace: str) -> tuple[ResolvedSpec, dict[str, str], str]:
    rt = _kubernetes_runtime()
    try:
        body = rt.get(API_VERSION, "Middleware", namespace, name)
        if body is None:
            raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
        spec, password = _credentials(rt, body)
        if password is None:
            raise MoorageError(f"Secret {credentials_secret_name(spec)} has no password yet")
        observed = (body.get("status") or {}).get("endpoints") or {}
        return spec, get_engine(spec.engine).service_endpoints(spec, observed), password
    finally:
        rt.close()


def _kubernetes_runtime() -> KubernetesRuntime:
    try:
        # Its own field manager: the Middleware's spec is the user's, the objects it makes the operator's.
        return KubernetesRuntime.from_environment(field_manager=CLI_FIELD_MANAGER)
    except Exception as exc:  # no kubeconfig, an unreadable one: the kubernetes client's own words
        raise MoorageError(f"cannot reach the cluster ($KUBECONFIG): {exc}") from None


@app.command("set")
def set_parameters(
    name: str,
    assignments: Annotated[list[str], typer.Argument(help="key=value parameters.")],
    namespace: Namespace = "default",
    state_dir: StateDir = None,
    output: OutputOpt = Output.TABLE,
    runtime: RuntimeOpt = RuntimeKind.LOCAL,
    timeout: TimeoutOpt = 1200.0,
) -> None:
    """Change parameters: dynamic ones are applied live; the others are written to the config and
    rolled out by a rolling restart (replicas first, the primary last after a switchover)."""
    parameters: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("set", f"{item!r} is not key=value")
        parameters[key] = value
    if runtime == RuntimeKind.KUBERNETES:
        _body, spec = _change_on_kubernetes(name, namespace, {"parameters": parameters}, timeout)
        # Which of them needed a restart, as the catalog defines them (the operator applied them so).
        report_live = {k: v for k, v in parameters.items() if k in spec.dynamic_parameters}
        report_restart = {k: v for k, v in parameters.items() if k not in report_live}
    else:
        with _progress(output == Output.TABLE) as progress:
            report = _lifecycle(state_dir).set_parameters(namespace, name, parameters, progress)
        report_live, report_restart = report.applied_live, report.needs_restart
    doc = {"appliedLive": report_live, "needsRestart": report_restart}
    if output == Output.JSON:
        _print_json(doc)
        return
    for key, value in report_live.items():
        out.print(f"applied live: {key} = {value}")
    for key, value in report_restart.items():
        out.print(f"needs a restart: {key} = {value} (rolled out: every member restarted, primary last)")
    if not report_live and not report_restart:
        out.print("nothing changed")


def _change_on_kubernetes(
    name: str, namespace: str, change: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], ResolvedSpec]:
    """Check the change as the operator will (so a refusal touches nothing), write it into the spec,
    and follow the operator until it is carried out (operators/cli/operations.py)."""
    rt = _kubernetes_runtime()
    try:
        current = rt.get(API_VERSION, "Middleware", namespace, name)
        if current is None:
            raise MoorageError(f"no Middleware {namespace}/{name} in the cluster")
        manifest = manifest_of(current)
        spec = dict(manifest.get("spec") or {})
        for key, value in change.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
        new = _checked_against_cluster(rt, context.catalog(rt), {**manifest, "spec": spec})
        with err.status(f"changing {namespace}/{name}") as spinner:
            body = change_spec(
                rt, namespace, name, change, timeout=timeout, progress=lambda m: spinner.update(m)
            )
        return body, new
    finally:
        rt.close()


def _checked_against_cluster(rt: KubernetesRuntime, catalog: Catalog, doc: dict[str, Any]) -> ResolvedSpec:
    """``doc`` resolved with the cluster's catalogs and checked against the Middleware as it is now,
    if there is one, as the operator will check it: a refusal writes nothing."""
    new = resolve(load_middleware(doc), catalog)
    current = rt.get(API_VERSION, "Middleware", new.namespace, new.name)
    if current is not None:
        check_change(context.decode(current, rt, catalog).spec, new, get_engine(new.engine))
    return new


def _credentials(rt: KubernetesRuntime, body: dict[str, Any]) -> tuple[ResolvedSpec, str | None]:
    """The Middleware's resolved spec and its password, from its credentials Secret (None before
    the operator created it)."""
    spec = context.decode(body, rt).spec
    return spec, rt.secret_value(spec.namespace, credentials_secret_name(spec), "password")


def _show_middleware(name: str, namespace: str, body: dict[str, Any], output: Output) -> None:
    _show(_middleware_document(body), output)


def _middleware_document(body: dict[str, Any]) -> dict[str, Any]:
    """The same document as locally, from a Middleware as the operator's status has it."""
    meta, spec_doc = body.get("metadata") or {}, body.get("spec") or {}
    observed = MiddlewareStatus.model_validate(body.get("status") or {})
    return _status_document(
        meta.get("name", ""),
        meta.get("namespace", ""),
        spec_doc.get("engine", ""),
        spec_doc.get("topology", ""),
        observed,
    )


@app.command()
def render(
    file: Annotated[list[Path], typer.Option("--file", "-f", help="Middleware manifest(s), YAML.")],
    cluster_domain: Annotated[str, typer.Option(help="Kubernetes cluster domain.")] = "cluster.local",
    with_secret: Annotated[
        bool, typer.Option(help="Also print the credentials Secret, with a newly generated password.")
    ] = False,
) -> None:
    """Print the Kubernetes manifests for Middleware specs, as multi-document YAML (no cluster needed).

    The credentials Secret is left out by default: applying a fresh password over an existing one
    would lock the members out. Create it once (--with-secret, or kubectl create secret).
    """
    lifecycle = Lifecycle(LocalRuntime(Path("/nonexistent")))
    manifests: list[dict[str, Any]] = []
    for doc in _read_documents(file):
        deployment = lifecycle.prepare(doc)
        spec = deployment.spec
        manifests += get_engine(spec.engine).render(spec, cluster_domain=cluster_domain)
        if with_secret:
            manifests += get_engine(spec.engine).render_secrets(spec, secrets.token_urlsafe(24))
        else:
            err.print(
                f"note: Secret {credentials_secret_name(spec)} (key 'password') is not printed; "
                "create it once, e.g. with --with-secret",
                highlight=False,
            )
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))


@catalog_app.command("list")
def catalog_list(output: OutputOpt = Output.TABLE) -> None:
    """Engines with their versions, topologies and plans."""
    catalog = load_default_catalog()
    rows: list[dict[str, Any]] = [
        {
            "engine": str(e.name),
            "versions": [v.version for v in e.versions],
            "default": next(v.version for v in e.versions if v.default),
            "topologies": [str(t.name) for t in e.topologies],
            "plans": [p.name for p in e.plans],
        }
        for e in catalog.engines
    ]
    if output == Output.JSON:
        _print_json(rows)
        return
    table = Table("engine", "versions", "topologies", "plans", header_style="bold")
    for row in rows:
        versions = ", ".join(v + (" (default)" if v == row["default"] else "") for v in row["versions"])
        table.add_row(row["engine"], versions, ", ".join(row["topologies"]), ", ".join(row["plans"]))
    out.print(table)


@catalog_app.command("show")
def catalog_show(engine: str, output: OutputOpt = Output.TABLE) -> None:
    """One engine's versions, images, plans and typed parameters."""
    entry = load_default_catalog().engine(engine)
    if output == Output.JSON:
        _print_json(entry.to_wire())
        return
    out.print(f"[bold]{entry.name}[/]: {entry.description}")
    versions = Table("version", "image", "default", header_style="bold")
    for v in entry.versions:
        versions.add_row(v.version, v.image, "yes" if v.default else "")
    out.print(versions)
    plans = Table("plan", "cpu", "memory", "storage", header_style="bold")
    for p in entry.plans:
        plans.add_row(
            p.name + (" (default)" if p.name == entry.default_plan else ""), p.cpu, p.memory, p.storage
        )
    out.print(plans)
    parameters = Table("parameter", "type", "allowed", "default", "applied", header_style="bold")
    for d in entry.parameters:
        if d.values:
            allowed = ", ".join(d.values)
        elif d.minimum is not None or d.maximum is not None:
            allowed = f"{_n(d.minimum)}..{_n(d.maximum)}"
        else:
            allowed = d.pattern or ""
        parameters.add_row(
            d.name, str(d.type), str(allowed), d.default or "", "live" if d.dynamic else "restart"
        )
    out.print(parameters)


def _n(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except SpecError as error:
        # Plain write, not rich: an error must stay one line whatever the terminal width.
        sys.stderr.write(f"error: invalid spec: {error}\n")
        raise SystemExit(2) from None
    except MoorageError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
