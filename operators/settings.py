"""Operator settings: kopf's (finalizer of the kinds with timers, progress storage, peering,
posting, timeouts) and ours.

``configure`` is called from the one ``@kopf.on.startup`` handler in ``operators.main``. Our own
knobs are one dataclass, ``OperatorConfig``, read from the environment in one place
(``from_environment``) so the Deployment (and tests) can tune them without code; every handler
module takes its intervals and Job settings from it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cache

import kopf

from backups.jobs import JobSettings

GROUP = "moorage.io"
VERSION = "v1alpha1"
FINALIZER = "moorage.io/finalizer"
ANNOTATION_PREFIX = "moorage.io"
PEERING_NAME = "moorage"
FIELD_MANAGER = "moorage"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r} must be at least 1")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class OperatorConfig:
    cluster_domain: str = "cluster.local"
    # Threads running the (blocking) handlers, and as many API connections kept open. A reconcile
    # mostly waits on the API server and on members: with 8, 500 Middlewares created at once saw
    # their first status after 6.2 s (median) on 2 cores, with 16 after 4.0 s (bench/operator_bench.py).
    handler_threads: int = 16
    # API connections kopf may hold besides its watch streams (operators/kube/api_session.py):
    # kopf alone opened one per concurrent request, 900+ (114 MiB of TLS buffers) for 500 Middlewares.
    api_connections: int = 32
    # How soon to look again while pods are not Ready yet: pod startup is seconds to minutes.
    member_retry: float = 5.0
    # Bootstrap failures are usually the network or a member still loading data; no need to hammer.
    bootstrap_retry: float = 20.0
    # A StatefulSet orphan-delete finishes within a GC cycle.
    storage_retry: float = 2.0
    # An API refusal (quota, a StorageClass without expansion) needs a human: retry slowly.
    api_error_retry: float = 60.0
    # Every Middleware is observed this often (one operator-wide loop, operators/reconcile/observe_loop.py),
    # first this long after it is seen, by at most this many handler threads at a time.
    observe_interval: float = 30.0
    observe_initial_delay: float = 5.0
    observe_concurrency: int = 8
    # A pass that retries (members starting) skips applying a render identical to the one this
    # process applied less than this long ago; drift made by hand is repaired at most this late.
    reapply_interval: float = 60.0
    # A Middleware held by a point-in-time restore in place (minutes): looked at again this often.
    restore_hold_retry: float = 15.0
    # A switchover waiting for a replica to catch up (NotReady) is tried again this often...
    operation_retry: float = 10.0
    # ...and reported Failed once it has waited this long: a request must not stay Running forever.
    operation_timeout: float = 600.0
    # RedisSync supervision: redis-shake's status port and the sides are sampled this often.
    sync_supervise_interval: float = 10.0
    # A running backup or restore Job is followed this often; schedules are checked this often.
    backup_follow_interval: float = 10.0
    backup_schedule_interval: float = 60.0
    # Backup, restore and share-clearing Jobs: the image (the operator's own) and its resources.
    job: JobSettings = field(default_factory=JobSettings)

    @classmethod
    def from_environment(cls) -> OperatorConfig:
        job = JobSettings()
        return cls(
            cluster_domain=os.environ.get("MOORAGE_CLUSTER_DOMAIN", "cluster.local"),
            handler_threads=_int("MOORAGE_HANDLER_THREADS", 16),
            api_connections=_int("MOORAGE_API_CONNECTIONS", 32),
            member_retry=_float("MOORAGE_MEMBER_RETRY_SECONDS", 5.0),
            bootstrap_retry=_float("MOORAGE_BOOTSTRAP_RETRY_SECONDS", 20.0),
            storage_retry=_float("MOORAGE_STORAGE_RETRY_SECONDS", 2.0),
            api_error_retry=_float("MOORAGE_API_ERROR_RETRY_SECONDS", 60.0),
            observe_interval=_float("MOORAGE_OBSERVE_INTERVAL_SECONDS", 30.0),
            observe_initial_delay=_float("MOORAGE_OBSERVE_INITIAL_DELAY_SECONDS", 5.0),
            observe_concurrency=_int("MOORAGE_OBSERVE_CONCURRENCY", 8),
            reapply_interval=_float("MOORAGE_REAPPLY_SECONDS", 60.0),
            restore_hold_retry=_float("MOORAGE_RESTORE_HOLD_RETRY_SECONDS", 15.0),
            operation_retry=_float("MOORAGE_OPERATION_RETRY_SECONDS", 10.0),
            operation_timeout=_float("MOORAGE_OPERATION_TIMEOUT_SECONDS", 600.0),
            sync_supervise_interval=_float("MOORAGE_SYNC_SUPERVISE_SECONDS", 10.0),
            backup_follow_interval=_float("MOORAGE_BACKUP_FOLLOW_SECONDS", 10.0),
            backup_schedule_interval=_float("MOORAGE_BACKUP_SCHEDULE_SECONDS", 60.0),
            job=JobSettings(
                image=os.environ.get("MOORAGE_JOB_IMAGE", job.image),
                cpu=os.environ.get("MOORAGE_JOB_CPU", job.cpu),
                memory=os.environ.get("MOORAGE_JOB_MEMORY", job.memory),
                scratch=os.environ.get("MOORAGE_JOB_SCRATCH", job.scratch),
            ),
        )


@cache
def operator_config() -> OperatorConfig:
    return OperatorConfig.from_environment()


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.peering.name = PEERING_NAME
    # Handlers post the important steps as Events themselves; log lines become Events only from
    # WARNING up, so a busy reconcile does not flood the namespace's event stream.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "moorage-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # Sync handlers run in this pool; engine calls block on the network, so allow some parallelism.
    settings.execution.max_workers = operator_config().handler_threads
    settings.execution.default_backoff = 10
    # An object being deleted keeps kopf's finalizer until its timers (backups, restores, syncs) have
    # stopped; one caught in a call (a repository that does not answer) is looked at again after
    # this, not kopf's 60 s, so a deletion is not held a minute longer than the call that was running.
    settings.background.cancellation_polling = 5
