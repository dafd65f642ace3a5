"""Pydantic models of every Moorage custom resource (the source of truth for ``crds/``)."""

from middleware.models.backup import BackupRepository, MiddlewareBackup, MiddlewareRestore
from middleware.models.catalog import MiddlewareCatalog
from middleware.models.common import API_VERSION, GROUP, VERSION, CustomResource
from middleware.models.middleware import Middleware
from middleware.models.sync import RedisSync

# Every resource the CRD generator renders, in a stable order.
ALL_RESOURCES: tuple[type[CustomResource], ...] = (
    Middleware,
    MiddlewareCatalog,
    BackupRepository,
    MiddlewareBackup,
    MiddlewareRestore,
    RedisSync,
)

__all__ = [
    "ALL_RESOURCES",
    "API_VERSION",
    "GROUP",
    "VERSION",
    "BackupRepository",
    "CustomResource",
    "Middleware",
    "MiddlewareBackup",
    "MiddlewareCatalog",
    "MiddlewareRestore",
    "RedisSync",
]
