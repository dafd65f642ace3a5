"""redis-shake processes launched and supervised by Moorage itself, on 127.0.0.1 (no cluster).

The local counterpart of the operator's Deployments: one redis-shake v4 process per planned workload
(``sync.manual``: plan from two URLs, ``<workload>/shake.toml`` mode 0600, status port ``base + i``),
detached in its own session so it outlives the CLI, under ``<state>/syncs/<name>/``:

- ``state.json``: what was started, without secrets (URLs redacted; passwords live only in the 0600
  configs, which is also where ``status`` reads them back from);
- ``<workload>/shake.toml``, ``<workload>/redis-shake.out`` (its stdout and stderr), ``<workload>/work``.

A recorded PID counts as ours only while ``/proc/<pid>/cmdline`` names its config and its start time
is the recorded one, so a recycled PID is never signalled. Supervision is the operator's pass,
``sync.supervising.supervise_step``, over this module's ``_LocalWorkloads`` port: a restart kills and
respawns the process (a full resync, as rolling a pod), a re-plan rewrites the configs of the
workloads whose shard moved, a process that exited is started again (with a back-off after quick
failures, as kubelet's).

Every process started is a full sync, which redis-shake v4 only gets right into an empty share of the
target (``sync.share``): the workload's share is deleted on the target right before it starts.

The binary: ``$MOORAGE_REDIS_SHAKE``, else the one ``hack/build-redis-shake.sh`` (``make
redis-shake``) caches, else ``redis-shake`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from middleware.endpoints import Endpoint
from middleware.errors import MoorageError, NotReady
from middleware.models.sync import RedisEndpointKind, SyncDirection
from middleware.runtime.local import default_state_dir
from middleware.runtime.processes import LOOPBACK, port_free, process_start_time, reap
from sync import heartbeat, manual, supervising
from sync.observe import (
    fetch_status,
    master_offset,
    observe_topology,
    replication_view,
    saving,
    shake_consumer,
    shard_now,
)
from sync.plan import RedisTopology, ShakeWorkload, WriterTarget
from sync.share import clear_share
from sync.supervisor import BEFORE_RDB_PHASES, Action, Decision, Policy, Sample, State
from sync.verify import RedisURL

BINARY_ENV = "MOORAGE_REDIS_SHAKE"
BINARY_NAME = "redis-shake"
# Where hack/build-redis-shake.sh caches the binary: $MOORAGE_REDIS_SHAKE_CACHE/<version>/redis-shake.
CACHE_ENV = "MOORAGE_REDIS_SHAKE_CACHE"
SHAKE_VERSION = "v4.2.0"
BUILD_HINT = "`make redis-shake` (hack/build-redis-shake.sh) builds it"
STOP_GRACE_SECONDS = 10.0
# A restart replaces a process that is stalled or pointed at the wrong node: no reason to wait long.
RESTART_GRACE_SECONDS = 3.0
# The reason recorded for a workload whose process ended by itself.
EXITED = "the process exited"
# A process that ran this long before failing was not failing at start: its back-off starts over.
STEADY_RUN_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0


def backoff_seconds(quick_exits: int) -> float:
    """How long after its last start a failed workload waits before the next: 0 after a process that
    ran steadily, then 2, 4, 8, 16 and at most 30 s (kubelet's crash back-off, shorter)."""
    return 0.0 if quick_exits <= 0 else min(MAX_BACKOFF_SECONDS, 2.0**quick_exits)


# redis-shake's graceful stop (first SIGINT) gets this long before the second SIGINT ends it.
INTERRUPT_SECONDS = 1.0
PORT_WAIT_SECONDS = 3.0
STATUS_TIMEOUT = 2.0
CONFIG = "shake.toml"
OUTPUT = "redis-shake.out"
STATE = "state.json"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


class LocalSyncError(MoorageError):
    """A local sync cannot be started, found or stopped; the message names it and says why."""


def cached_binary() -> Path:
    """Where ``hack/build-redis-shake.sh`` puts redis-shake (whether it is there or not)."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "moorage" / "redis-shake")
    return Path(root) / SHAKE_VERSION / BINARY_NAME


def find_binary() -> str:
    """redis-shake from ``$MOORAGE_REDIS_SHAKE``, else the build cache, else ``PATH``."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise LocalSyncError(f"${BINARY_ENV}={configured} is not an executable file")
        return configured
    cached = cached_binary()
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(BINARY_NAME)
    if found is None:
        raise LocalSyncError(
            f"redis-shake not found: not in ${BINARY_ENV}, not at {cached}, not on PATH; "
            f"{BUILD_HINT} into {cached.parent}/. "
            "To run it yourself, `moorage sync plan --out DIR` writes its configs"
        )
    return found


def _ours(pid: int | None, config: Path, start_time: str | None) -> bool:
    """``pid`` is still the process we started for ``config`` (not exited, not a recycled PID)."""
    if not pid:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if str(config).encode() not in argv:
        return False
    return start_time is None or process_start_time(pid) == start_time


# -- workloads to and from state.json (no secrets) ------------------------------------------------


def _workload_record(item: manual.ManualWorkload) -> dict[str, Any]:
    w = item.workload
    return {
        "name": w.name,
        "shard": w.shard,
        "reader": w.reader.address,
        "readsReplica": w.reads_replica,
        "sourceMaster": w.source_master.address,
        "sourceSlots": [list(r) for r in w.source_slots],
        "writer": {
            "kind": str(w.writer.kind),
            "addresses": [a.address for a in w.writer.addresses],
            "masterName": w.writer.master_name,
            "sentinels": [s.address for s in w.writer.sentinels],
        },
        "statusPort": item.status_port,
    }


def _workload_of(sync_name: str, record: dict[str, Any]) -> ShakeWorkload:
    writer = record["writer"]
    return ShakeWorkload(
        name=record["name"],
        sync=sync_name,
        direction=SyncDirection.FORWARD,
        shard=record["shard"],
        reader=Endpoint.parse(record["reader"]),
        reads_replica=bool(record["readsReplica"]),
        source_master=Endpoint.parse(record["sourceMaster"]),
        source_slots=tuple((int(lo), int(hi)) for lo, hi in record["sourceSlots"]),
        writer=WriterTarget(
            RedisEndpointKind(writer["kind"]),
            tuple(Endpoint.parse(a) for a in writer["addresses"]),
            writer.get("masterName"),
            tuple(Endpoint.parse(s) for s in writer.get("sentinels") or ()),
        ),
    )


def _same_plan(record: dict[str, Any], item: manual.ManualWorkload) -> bool:
    fresh = _workload_record(item)
    return all(record.get(k) == fresh[k] for k in fresh)


# -- what status returns --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    pid: int | None
    alive: bool
    status_port: int
    reader: str
    source_master: str
    phase: str | None  # redis-shake's own reader status; None: its status port did not answer
    source_offset: int | None
    acked_offset: int | None  # what its replication connection last ACKed to the node it reads
    decision: Decision
    restarts: int
    last_restart_reason: str | None
    log: str
    # From the heartbeat key (sync.heartbeat); None: none written yet, or it could not be read.
    heartbeat_lag_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        seconds, origin = self.decision.lag_seconds, "rate" if self.decision.lag_seconds is not None else None
        if self.heartbeat_lag_seconds is not None:
            seconds, origin = round(self.heartbeat_lag_seconds, 3), "heartbeat"

        return {
            "name": self.name,
            "pid": self.pid,
            "alive": self.alive,
            "statusPort": self.status_port,
            "reader": self.reader,
            "sourceMaster": self.source_master,
            "phase": self.phase,
            "sourceOffset": self.source_offset,
            "ackedOffset": self.acked_offset,
            "state": str(self.decision.state),
            "action": str(self.decision.action),
            "reason": self.decision.reason,
            "lagBytes": self.decision.lag_bytes,
            "lagSeconds": seconds,
            "lagSecondsFrom": origin,
            "writeLagBytes": self.decision.write_lag_bytes,
            "restarts": self.restarts,
            "lastRestartReason": self.last_restart_reason,
            "log": self.log,
        }


@dataclass(frozen=True)
class SyncStatus:
    name: str
    source: str  # redacted
    target: str  # redacted
    stopped: bool
    directory: str
    workloads: list[WorkloadStatus] = field(default_factory=list)
    acted: list[str] = field(default_factory=list)  # what supervise_once did, one line each

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "target": self.target,
            "stopped": self.stopped,
            "directory": self.directory,
            "workloads": [w.as_dict() for w in self.workloads],
            "acted": self.acted,
        }


# -- the runner -----------------------------------------------------------------------------------


class LocalSyncs:
    """Local syncs under ``<state_dir>/syncs/``. Sample history is kept per instance, in memory: a
    long-lived caller (a loop, a test) accumulates the windows ``decide`` needs; a one-shot CLI call
    decides on one sample."""

    def __init__(self, state_dir: Path | str | None = None, *, policy: Policy | None = None) -> None:
        self.root = (Path(state_dir) if state_dir else default_state_dir()) / "syncs"
        self.policy = policy or Policy()
        self._history: dict[tuple[str, str], list[Sample]] = {}

    # state on disk

    def directory(self, name: str) -> Path:
        if not _NAME.match(name):
            raise LocalSyncError(f"sync name {name!r} must be a DNS label of at most 42 characters")
        return self.root / name

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.directory(name) / STATE
        try:
            document: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalSyncError(f"local sync {name!r}: cannot read {path}: {exc}") from None
        return document

    def _write(self, name: str, state: dict[str, Any]) -> None:
        path = self.directory(name) / STATE
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(state, indent=2) + "\n")
        scratch.replace(path)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        directory = self.directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _known(self, name: str) -> dict[str, Any]:
        state = self._read(name)
        if state is None:
            raise LocalSyncError(f"no local sync named {name!r} under {self.root}")
        return state

    def exists(self, name: str) -> bool:
        return self._read(name) is not None

    def running(self, name: str) -> bool:
        """Recorded, not stopped, and at least one of its processes alive."""
        state = self._read(name)
        if state is None or state.get("stopped"):
            return False
        return any(self._alive(name, w) for w in state["workloads"])

    def status_port_base(self, name: str) -> int | None:
        state = self._read(name)
        return int(state["statusPortBase"]) if state else None

    def _config(self, name: str, workload: str) -> Path:
        return (self.directory(name) / workload / CONFIG).resolve()

    def _alive(self, name: str, record: dict[str, Any]) -> bool:
        return _ours(record.get("pid"), self._config(name, record["name"]), record.get("startTime"))

    # processes

    def _spawn(self, name: str, record: dict[str, Any], binary: str, target: RedisURL) -> None:
        """Empty the workload's share of the target, then start its redis-shake (a full sync)."""
        config = self._config(name, record["name"])
        port = int(record["statusPort"])
        until = time.monotonic() + PORT_WAIT_SECONDS  # a process just stopped may still be closing it
        while not port_free(port) and time.monotonic() < until:
            time.sleep(0.1)
        if not port_free(port):
            raise LocalSyncError(
                f"workload {record['name']}: status port {port} on {LOOPBACK} is in use; "
                "choose another --status-port-base"
            )
        try:
            record["clearedKeys"] = clear_share(_workload_of(name, record), target)
        except MoorageError as exc:
            raise LocalSyncError(
                f"workload {record['name']}: not started: cannot empty its share of the target "
                f"{target.redacted} before the full sync: {exc}"
            ) from None
        with open(config.parent / OUTPUT, "ab") as output:
            process = subprocess.Popen(
                [binary, str(config)],
                cwd=config.parent,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI; a terminal's Ctrl-C does not reach it
            )
        record["pid"] = process.pid
        record["startTime"] = process_start_time(process.pid)
        record["startedAt"] = time.time()
        record["binary"] = binary

    def _kill(self, name: str, record: dict[str, Any], grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGINT, a second SIGINT after ``INTERRUPT_SECONDS``, SIGKILL after ``grace``; only while the
        recorded PID is still ours.

        SIGINT, not SIGTERM: redis-shake v4.2.0 only logs SIGTERM and keeps running (upstream #1001,
        fixed after v4.2.0). Its first SIGINT starts a graceful stop that only completes when the next
        bytes arrive from the source (up to the source's repl-ping-replica-period, 10 s); its second
        exits at once. SIGCONT follows each, so a stopped process (a stall) wakes up to handle it."""
        pid = record.get("pid")
        if not pid or not self._alive(name, record):
            return
        deadline = time.monotonic() + grace
        for sig, until in (
            (signal.SIGINT, min(deadline, time.monotonic() + INTERRUPT_SECONDS)),
            (signal.SIGINT, deadline),
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                os.kill(pid, signal.SIGCONT)
            while self._alive(name, record) and time.monotonic() < until:
                reap(pid)
                time.sleep(0.05)
        if self._alive(name, record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self._alive(name, record):
                reap(pid)
                time.sleep(0.05)
        # An exiting process loses its cmdline before it closes its files (its status port): wait
        # until it is gone or a zombie, whose files are closed.
        started = record.get("startTime")
        until = time.monotonic() + 5.0
        while started and process_start_time(pid) == started and time.monotonic() < until:
            reap(pid)
            time.sleep(0.02)
        reap(pid)

    # commands

    def start(
        self,
        name: str,
        source: RedisURL,
        target: RedisURL,
        *,
        status_port_base: int = manual.DEFAULT_STATUS_PORT_BASE,
        binary: str | None = None,
        target_sentinels: Sequence[Endpoint] = (),
        target_master_name: str | None = None,
    ) -> SyncStatus:
        """Plan, write the configs and start one redis-shake per workload. A recorded sync whose
        processes all run is refused; one with dead workloads gets those restarted (same configs).

        ``target_sentinels`` and ``target_master_name``: the target is that sentinel group (``target``
        is one of its data nodes, and gives the password). The writer is planned at the master the
        sentinels name now and re-planned when they fail over."""
        if bool(target_sentinels) != bool(target_master_name):
            raise LocalSyncError("a sentinel target needs both its sentinels and its master name")
        binary = binary or find_binary()
        directory = self.directory(name)
        with self._locked(name):
            state = self._read(name)
            if state is not None and not state.get("stopped"):
                if (state["source"], state["target"]) != (source.redacted, target.redacted):
                    raise LocalSyncError(
                        f"local sync {name!r} already syncs {state['source']} -> {state['target']}; "
                        f"stop it first (moorage sync stop {name} --local)"
                    )
                dead = [w for w in state["workloads"] if not self._alive(name, w)]
                if not dead:
                    raise LocalSyncError(
                        f"local sync {name!r} is already running ({len(state['workloads'])} workloads)"
                    )
                if state.get("targetSentinels"):
                    target = self._target_url(name, state)
                try:
                    for record in dead:
                        self._spawn(name, record, binary, target)
                finally:
                    self._write(name, state)
            else:
                target_topology = None
                requested = target
                if target_sentinels:
                    assert target_master_name is not None
                    try:
                        target_topology = observe_topology(
                            RedisEndpointKind.SENTINEL,
                            data_nodes=[target.endpoint],
                            sentinels=list(target_sentinels),
                            master_name=target_master_name,
                            password=target.password,
                        )
                    except NotReady as exc:
                        raise LocalSyncError(f"sentinel target {target_master_name!r}: {exc}") from None
                    # Writes and the share clearing go to the master the sentinels name, not to the
                    # node the URL gave.
                    target = replace(target, endpoint=target_topology.shards[0].master)
                planned = manual.plan_urls(
                    name,
                    source,
                    target,
                    status_port_base=status_port_base,
                    target_topology=target_topology,
                )
                busy = [m.status_port for m in planned if not port_free(m.status_port)]
                if busy:
                    raise LocalSyncError(
                        f"status ports {busy} on {LOOPBACK} are in use; choose another --status-port-base"
                    )
                manual.write_configs(planned, directory, source, target)
                state = {
                    "name": name,
                    "source": source.redacted,
                    "sourceEndpoint": source.endpoint.address,
                    "target": requested.redacted,
                    "targetEndpoint": requested.endpoint.address,
                    "statusPortBase": status_port_base,
                    "targetSentinels": [e.address for e in target_sentinels],
                    "targetMasterName": target_master_name,
                    "stopped": False,
                    "workloads": [
                        _workload_record(m) | {"restarts": 0, "lastRestartReason": None} for m in planned
                    ],
                }
                try:
                    for record in state["workloads"]:
                        self._spawn(name, record, binary, target)
                finally:
                    self._write(name, state)  # what did start is recorded, to be stopped by PID
        return self.status(name, sample=False)

    def stop(self, name: str) -> bool:
        """Stop every workload (configs kept). False when it was already stopped."""
        with self._locked(name):
            state = self._known(name)
            was_running = not state.get("stopped")
            for record in state["workloads"]:
                self._kill(name, record)
                record["pid"] = None
            state["stopped"] = True
            self._write(name, state)
        for record in state["workloads"]:
            self._history.pop((name, record["name"]), None)
        return was_running

    def status(self, name: str, *, sample: bool = True) -> SyncStatus:
        """Every workload's process, redis-shake's status document, offsets and the supervisor's
        decision (one more sample in this instance's history)."""
        state = self._known(name)
        if not sample or state.get("stopped"):
            return self._status(name, state)
        return self._status(name, state, self._pass(name, state, act=False, beat=False).verdicts)

    def _passwords(self, name: str, state: dict[str, Any]) -> tuple[str | None, str | None]:
        """The source's username and password, from a workload's 0600 config (never in state.json)."""
        for record in state["workloads"]:
            try:
                config = tomllib.loads(self._config(name, record["name"]).read_text())
            except (OSError, ValueError):
                continue
            reader = config.get("sync_reader") or {}
            return reader.get("username") or None, reader.get("password") or None
        return None, None

    def _source(self, name: str, state: dict[str, Any]) -> tuple[RedisURL, RedisTopology | None]:
        """The source, observed through the node its URL gave, else through any node a workload
        was planned on (the URL's node may be the one that died)."""
        username, password = self._passwords(name, state)
        url = RedisURL(Endpoint.parse(state["sourceEndpoint"]), username, password, 0)
        seeds = [url.endpoint]
        for record in state["workloads"]:
            for address in (record["sourceMaster"], record["reader"]):
                endpoint = Endpoint.parse(address)
                if endpoint not in seeds:
                    seeds.append(endpoint)
        for seed in seeds:
            try:
                return url, manual.observe_url(replace(url, endpoint=seed))
            except NotReady:
                continue
        return url, None  # the samples say "could not observe"; decide() does not re-plan on that

    def _target_topology(self, name: str, state: dict[str, Any]) -> RedisTopology | None:
        """A sentinel target as its sentinels report it now; None for another target, or when the
        sentinels name no usable master (down, failing over)."""
        sentinels = [Endpoint.parse(a) for a in state.get("targetSentinels") or ()]
        if not sentinels:
            return None
        _, password = self._target_credentials(name, state)
        try:
            return observe_topology(
                RedisEndpointKind.SENTINEL,
                data_nodes=[Endpoint.parse(state["targetEndpoint"])],
                sentinels=sentinels,
                master_name=state["targetMasterName"],
                password=password,
            )
        except NotReady:
            return None

    def _sample(
        self, name: str, record: dict[str, Any], workload: ShakeWorkload, password: str | None,
        source: RedisTopology | None, alive: bool, target_master: Endpoint | None = None,
    ) -> Sample:  # fmt: skip
        port = int(record["statusPort"])
        status = fetch_status(LOOPBACK, port, STATUS_TIMEOUT) if alive else None
        view = replication_view(workload.reader, password)
        consumer = shake_consumer(view[1], port, LOOPBACK) if view and alive else None
        reader_saving = None
        if status is not None and status.phase in BEFORE_RDB_PHASES:
            reader_saving = saving(workload.reader, password)
        shard = (
            shard_now(source, workload.source_master, workload.reader, workload.source_slots)
            if source
            else None
        )
        master = shard.master if shard else workload.source_master
        healthy = (shard.master, *(r.endpoint for r in shard.replicas if r.healthy)) if shard else ()
        return Sample(
            at=time.monotonic(),
            status=status,
            restarts=int(record.get("restarts", 0)),
            source_master=shard.master if shard else None,
            source_offset=master_offset(master, password),
            source_slots=shard.slots if shard else (),
            acked_offset=consumer.offset if consumer is not None else None,
            reader_saving=reader_saving,
            target_master=target_master,
            reader_answers=view is not None,
            shard_nodes=healthy,
        )

    def _heartbeat(
        self, workload: ShakeWorkload, master: Endpoint, source: RedisURL, target: RedisURL, beat: bool
    ) -> float | None:
        """Lag in seconds from the workload's heartbeat key; with ``beat`` (a supervising pass), a
        new heartbeat is written on ``master`` once the target holds the last one."""
        name = heartbeat.key(workload)
        if name is None:
            return None
        db = heartbeat.database(workload)
        on_source = heartbeat.read_source(master, name, db, source.username, source.password)
        on_target = heartbeat.read_target(target, name, db)
        now = time.time()
        if beat and heartbeat.due(on_source, on_target):
            heartbeat.write_source(master, name, db, source.username, source.password, now)
        return heartbeat.lag_seconds(on_source, on_target, now)

    def _pass(
        self, name: str, state: dict[str, Any], *, act: bool, beat: bool, binary: str | None = None
    ) -> supervising.Pass:
        """One pass of ``sync.supervising``, the operator's too, over this sync's processes."""
        port = _LocalWorkloads(self, name, state, beat=beat, binary=binary)
        workloads = [_workload_of(name, record) for record in state["workloads"]]
        return supervising.supervise_step(port, workloads, self.policy, act=act)

    def _status(
        self,
        name: str,
        state: dict[str, Any],
        verdicts: Sequence[supervising.Verdict] = (),
        decided_pids: dict[str, int | None] | None = None,
        acted: Sequence[str] = (),
    ) -> SyncStatus:
        """Rows from the recorded processes; a workload with a verdict of this pass (still the
        process it was judged on) shows that decision and its last sample."""
        stopped = bool(state.get("stopped"))
        judged = {v.workload.name: v for v in verdicts}
        rows = []
        for record in state["workloads"]:
            alive = self._alive(name, record)
            verdict = judged.get(record["name"])
            if (
                verdict is not None
                and decided_pids is not None
                and decided_pids.get(record["name"]) != record.get("pid")
            ):
                verdict = None  # acted on: it shows its new process
            history = self._history.get((name, record["name"])) or []
            last = history[-1] if verdict is not None and history else None
            if stopped:
                decision = Decision(State.UNKNOWN, Action.NONE, "stopped")
            elif verdict is not None:
                decision = verdict.decision
            else:
                decision = Decision(State.UNKNOWN, Action.NONE, "started" if alive else "not running")
            rows.append(
                WorkloadStatus(
                    name=record["name"],
                    pid=record.get("pid"),
                    alive=alive,
                    status_port=int(record["statusPort"]),
                    reader=record["reader"],
                    source_master=record["sourceMaster"],
                    phase=last.status.phase if last and last.status else None,
                    source_offset=last.source_offset if last else None,
                    acked_offset=last.acked_offset if last else None,
                    decision=decision,
                    restarts=int(record.get("restarts", 0)),
                    last_restart_reason=record.get("lastRestartReason"),
                    log=str(self.directory(name) / record["name"] / OUTPUT),
                    heartbeat_lag_seconds=verdict.heartbeat_lag if verdict is not None else None,
                )
            )
        return SyncStatus(
            name=name,
            source=state["source"],
            target=state["target"],
            stopped=stopped,
            directory=str(self.directory(name)),
            workloads=rows,
            acted=list(acted),
        )

    def supervise_once(self, name: str, *, binary: str | None = None) -> SyncStatus:
        """One supervision pass (``sync.supervising``): sample, decide, act. A restart (or a process
        that exited, unless it is crash-looping) kills and respawns that workload; a re-plan re-plans
        and restarts the workloads whose shard changed, with new configs."""
        with self._locked(name):
            state = self._known(name)
            if state.get("stopped"):
                return self._status(name, state)
            pids = {record["name"]: record.get("pid") for record in state["workloads"]}
            passed = self._pass(name, state, act=True, beat=True, binary=binary)
            if passed.restarted or passed.replanned:
                self._write(name, state)
            elif any(": not restarted: " in line for line in passed.acted):
                self._write(name, state)  # its quick-failure count and reason
        return self._status(name, state, passed.verdicts, pids, passed.acted)

    def _backoff_left(self, record: dict[str, Any]) -> float:
        """Seconds until a failed workload may start again (a side that is unreachable makes every new
        process fail at once: restarting it every pass would only churn full resyncs); what kubelet
        does for a crashing container."""
        started = float(record.get("startedAt") or 0)
        return started + backoff_seconds(int(record.get("quickExits") or 0)) - time.time()

    @staticmethod
    def _recorded_binary(state: dict[str, Any]) -> str | None:
        """The binary the workloads were started with: a restart runs the same redis-shake."""
        for record in state["workloads"]:
            binary = record.get("binary")
            if binary and os.path.isfile(binary) and os.access(binary, os.X_OK):
                return str(binary)
        return None

    def _restart(self, name: str, record: dict[str, Any], binary: str, reason: str, target: RedisURL) -> None:
        # A process that failed soon after its start (exited, or went silent) counts towards the
        # back-off, whatever the symptom: a side it cannot reach shows as either.
        lived = time.time() - float(record.get("startedAt") or 0)
        record["quickExits"] = int(record.get("quickExits") or 0) + 1 if lived < STEADY_RUN_SECONDS else 0
        self._kill(name, record, RESTART_GRACE_SECONDS)
        record["pid"] = None
        record["restarts"] = int(record.get("restarts", 0)) + 1
        record["lastRestartReason"] = reason
        # A new generation: the old samples' progress says nothing about the new process.
        self._history.pop((name, record["name"]), None)
        self._spawn(name, record, binary, target)

    def _target_url(self, name: str, state: dict[str, Any]) -> RedisURL:
        """Where the target is written (and its shares cleared): a sentinel target's master as its
        sentinels name it now (the recorded node while they cannot say), else the target's node."""
        username, password = self._target_credentials(name, state)
        endpoint = Endpoint.parse(state["targetEndpoint"])
        topology = self._target_topology(name, state)
        if topology is not None:
            endpoint = topology.shards[0].master
        return RedisURL(endpoint, username, password, 0)

    def _replan(self, name: str, state: dict[str, Any], binary: str, reason: str) -> list[str]:
        url, source = self._source(name, state)
        target_topology = self._target_topology(name, state)
        if state.get("targetSentinels") and target_topology is None:
            return [f"not re-planned: the target's sentinels name no usable master ({reason})"]
        target = self._target_url(name, state)
        if target_topology is not None:
            target = replace(target, endpoint=target_topology.shards[0].master)
        try:
            planned = manual.plan_urls(
                name,
                url,
                target,
                status_port_base=int(state["statusPortBase"]),
                source_topology=source,
                target_topology=target_topology,
            )
        except NotReady as exc:
            return [f"not re-planned: {exc} ({reason})"]
        old = {r["name"]: r for r in state["workloads"]}
        acted, records = [], []
        for item in planned:
            record = old.pop(item.workload.name, None)
            if record is not None and _same_plan(record, item) and self._alive(name, record):
                records.append(record)
                continue
            if record is not None:
                self._kill(name, record, RESTART_GRACE_SECONDS)
            manual.write_configs([item], self.directory(name), url, target)
            fresh = _workload_record(item) | {
                "restarts": int(record.get("restarts", 0)) + 1 if record else 0,
                "lastRestartReason": f"re-planned: {reason}",
                "pid": None,
            }
            self._history.pop((name, item.workload.name), None)
            records.append(fresh)
            try:
                self._spawn(name, fresh, binary, target)
            except LocalSyncError as exc:  # recorded without a process: the next pass starts it
                acted.append(f"{item.workload.name}: re-planned, not started: {exc}")
                continue
            acted.append(f"{item.workload.name}: re-planned, reads {item.workload.reader}")
        for record in old.values():  # shards that are gone
            self._kill(name, record, RESTART_GRACE_SECONDS)
            acted.append(f"{record['name']}: stopped, its shard is gone")
        state["workloads"] = records
        return acted

    def _target_credentials(self, name: str, state: dict[str, Any]) -> tuple[str | None, str | None]:
        for record in state["workloads"]:
            try:
                config = tomllib.loads(self._config(name, record["name"]).read_text())
            except (OSError, ValueError):
                continue
            writer = config.get("redis_writer") or {}
            return writer.get("username") or None, writer.get("password") or None
        return None, None


@dataclass
class _LocalWorkloads:
    """``sync.supervising.WorkloadsPort`` over local processes: a restart kills and respawns the
    process (after emptying its share), a re-plan rewrites the configs of the workloads whose shard
    moved; a process that exited is started again by this supervisor alone."""

    runner: LocalSyncs
    name: str
    state: dict[str, Any]
    beat: bool
    binary: str | None = None
    source_url: RedisURL | None = None
    target_url: RedisURL | None = None

    def _record(self, workload: ShakeWorkload) -> dict[str, Any]:
        return next(r for r in self.state["workloads"] if r["name"] == workload.name)

    def _shake(self) -> str:
        if self.binary is None:
            self.binary = LocalSyncs._recorded_binary(self.state) or find_binary()
        return self.binary

    def sides(self) -> tuple[RedisTopology | None, RedisTopology | None]:
        self.source_url, source = self.runner._source(self.name, self.state)
        target = self.runner._target_topology(self.name, self.state)
        self.target_url = self.runner._target_url(self.name, self.state)
        return source, target

    def seen(self, workload: ShakeWorkload) -> supervising.Seen:
        if self.runner._alive(self.name, self._record(workload)):
            return supervising.Seen(supervising.Liveness.RUNNING)
        log = self.runner.directory(self.name) / workload.name / OUTPUT
        return supervising.Seen(supervising.Liveness.EXITED, f"{EXITED} (see {log})")

    def history(self, workload: ShakeWorkload) -> list[Sample]:
        return self.runner._history.setdefault((self.name, workload.name), [])

    def sample(
        self,
        workload: ShakeWorkload,
        seen: supervising.Seen,
        source: RedisTopology | None,
        target: RedisTopology | None,
    ) -> Sample:
        password = self.source_url.password if self.source_url else None
        return self.runner._sample(
            self.name,
            self._record(workload),
            workload,
            password,
            source,
            seen.liveness is supervising.Liveness.RUNNING,
            target.shards[0].master if target else None,
        )

    def heartbeat(self, workload: ShakeWorkload, source_master: Endpoint) -> float | None:
        if self.source_url is None or self.target_url is None:
            return None
        return self.runner._heartbeat(workload, source_master, self.source_url, self.target_url, self.beat)

    def restarts_held(self) -> str | None:
        if self.state.get("targetSentinels") and self.runner._target_topology(self.name, self.state) is None:
            # Its sentinels name no usable master (failing over): a restart now would write to the
            # old master again. The next pass re-plans onto the new one.
            return (
                f"target: sentinels of {self.state['targetMasterName']!r} name no usable master "
                "(failing over?); restarts wait for them"
            )
        return None

    def backing_off(self, workload: ShakeWorkload, reason: str) -> str | None:
        record = self._record(workload)
        left = self.runner._backoff_left(record)
        if left <= 0:
            return None
        return (
            f"{workload.name}: {reason}; restart in {left:.0f}s "
            f"(back-off after {record.get('quickExits')} quick failures)"
        )

    def restart(self, workload: ShakeWorkload, reason: str) -> None:
        try:
            target = self.runner._target_url(self.name, self.state)
            self.runner._restart(self.name, self._record(workload), self._shake(), reason, target)
        except LocalSyncError as exc:  # the next pass tries again
            raise supervising.NotRestarted(str(exc)) from None

    def replan(self, replans: Sequence[tuple[ShakeWorkload, Decision]]) -> list[str]:
        reasons = "; ".join(f"{workload.name}: {decision.reason}" for workload, decision in replans)
        return self.runner._replan(self.name, self.state, self._shake(), reasons)
