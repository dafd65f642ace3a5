"""The kopf operator: importing this module registers every handler (``kopf run -m operators.main``).

Handlers are thin: they time and count the attempt, then delegate to ``operators.reconcile``, which
decodes, validates, acts through ``KubernetesRuntime`` and writes the status.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from middleware.operations import OPERATION_ANNOTATION
from operators import backup_handlers, metrics, sync_handlers
from operators.kube import api_session, context
from operators.reconcile import apply, catalog, delete, events, observe_loop, operation
from operators.settings import GROUP, VERSION, configure, operator_config

# Importing these registers their handlers: MiddlewareBackup / MiddlewareRestore with the backup
# schedule, and RedisSync with its supervision timer.
REGISTERED_ELSEWHERE = (backup_handlers, sync_handlers)

MIDDLEWARES = (GROUP, VERSION, "middlewares")
CATALOGS = (GROUP, VERSION, "middlewarecatalogs")
OPERATION_FIELD = ("metadata", "annotations", OPERATION_ANNOTATION)
# Every resource kind with a handler: kopf keeps one watch stream per kind and namespace.
WATCHED_KINDS = frozenset(
    {MIDDLEWARES, CATALOGS, backup_handlers.BACKUPS, backup_handlers.RESTORES, sync_handlers.SYNCS}
)


# Observation and deletion of every Middleware: one loop, not a kopf timer per object.
OBSERVER = observe_loop.ObserveLoop()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    configure(settings)
    # kopf passes every index to every handler, this one included (empty yet), fills it from its
    # MiddlewareCatalog watch before any resource handler runs, and keeps it current: decodes read
    # catalogs from memory instead of listing them each time.
    context.use_catalog_index(kwargs["catalog_index"])
    OBSERVER.start(kwargs["middleware_index"], settings.execution.executor, operator_config())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    OBSERVER.stop()


@kopf.index(*CATALOGS)
def catalog_index(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {body["metadata"]["name"]: copy.deepcopy(dict(body))}


@kopf.index(*MIDDLEWARES)
async def middleware_index(body: kopf.Body, **_: Any) -> dict[observe_loop.Key, dict[str, Any]]:
    # async: called on kopf's event loop for every watch event, no thread hop.
    OBSERVER.notice(body)
    return {observe_loop.key_of(body): observe_loop.indexed(body)}


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | kopf.AiohttpSession | None:
    # kopf's default login goes through the kubernetes client, which fixes the kubeconfig path when it
    # is imported; reading $KUBECONFIG at login time is what an operator started by a CLI expects.
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        return None
    limit = api_session.connection_limit(
        api_session.watched_scope(), len(WATCHED_KINDS), operator_config().api_connections
    )
    if not limit:
        return info
    kwargs["logger"].info("API server connections: at most %d (watch streams included)", limit)
    return api_session.limited_session(info, limit)


@kopf.on.resume(*MIDDLEWARES)
@kopf.on.create(*MIDDLEWARES)
@kopf.on.update(*MIDDLEWARES, field="spec")
def reconcile_middleware(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
    delete.protect(body, patch)  # deletionPolicy is honoured by our finalizer, from the first pass
    with metrics.reconcile_timer("Middleware", str(reason)) as outcome:
        apply.reconcile(body, patch, outcome, operator_config())


# A day-2 operation (switchover, failover) asked through the annotation; its outcome goes to
# status.lastOperation. Resumed after a restart: a request already finished is recognised by its id.
@kopf.on.resume(*MIDDLEWARES, field=OPERATION_FIELD, value=kopf.PRESENT)
@kopf.on.create(*MIDDLEWARES, field=OPERATION_FIELD, value=kopf.PRESENT)
@kopf.on.update(*MIDDLEWARES, field=OPERATION_FIELD, value=kopf.PRESENT)
def run_operation(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with metrics.reconcile_timer("Middleware", "operation"):
        operation.run(body, patch, operator_config())


# A MiddlewareCatalog says itself whether it merges (status.phase Accepted / Invalid with the
# reason). Middlewares pick catalogs up at their next decode: nothing else to do here.
@kopf.on.resume(*CATALOGS)
@kopf.on.create(*CATALOGS)
@kopf.on.update(*CATALOGS, field="spec")
def review_catalog(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
    with metrics.reconcile_timer("MiddlewareCatalog", str(reason)):
        status = catalog.review(body)
        if status.phase == catalog.INVALID:
            message = status.condition("Accepted")
            events.warning(body, reason="InvalidCatalog", message=message.message if message else "")
        catalog.write(patch, status)
