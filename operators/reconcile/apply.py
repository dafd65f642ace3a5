"""Create, update and resume of a ``Middleware``: one idempotent pass that never waits.

decode and validate → storage expansion if volumeClaimTemplates grew → credentials (once) → a shape
change against the last applied spec goes through ``scale.drive`` (data moved before members leave)
→ render and server-side apply with owner references → prune what is no longer rendered →
``middleware.provisioning.provision_step`` over the pods, the step ``moorage up`` runs locally
(members Ready? else retry later → engine bootstrap through per-pod DNS → observe → live parameter
changes) → role labels, conditions, Events → status, and the applied spec is recorded. Each step
that cannot finish yet raises ``kopf.TemporaryError`` with a delay; kopf calls the handler again and
it picks up where the cluster is, since every step is idempotent.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, MutableMapping
from typing import Any, NoReturn

import kopf

from middleware import provisioning, scaling
from middleware.engines import metrics as exporters
from middleware.engines.base import Connection, Engine
from middleware.errors import NotReady, SpecError
from middleware.kube.builders import credentials_secret_name
from middleware.models.common import now_precise
from middleware.models.middleware import MiddlewareStatus, Phase
from middleware.operations import restore_hold
from middleware.runtime.kubernetes import KubernetesApiError, KubernetesRuntime, member_up, pod_ready
from middleware.scaling import Wait
from middleware.spec import ResolvedSpec, check_change
from operators.kube import context
from operators.reconcile import (
    applied,
    archiving,
    events,
    observe,
    operation,
    prune,
    reconfigure,
    scale,
    storage,
)
from operators.reconcile import status as st
from operators.settings import OperatorConfig

PASSWORD_KEY = "password"

log = logging.getLogger(__name__)
# The roles a ``-master``/``-rw`` Service selects.
WRITABLE_ROLES = frozenset({"master", "primary"})


def reconcile(
    body: kopf.Body,
    patch: MutableMapping[str, Any],
    outcome: dict[str, str],
    config: OperatorConfig,
) -> None:
    rt = context.runtime()
    status = st.load(body)
    previous_generation = status.observed_generation
    generation = body["metadata"].get("generation")
    status.observed_generation = generation

    def retry(message: str, delay: float) -> NoReturn:
        st.write(patch, status)
        outcome["result"] = "retry"
        raise kopf.TemporaryError(message, delay=delay)

    def invalid(exc: SpecError) -> NoReturn:
        st.invalid_spec(status, exc)
        st.write(patch, status)
        events.warning(body, reason="InvalidSpec", message=str(exc))
        outcome["result"] = "invalid"
        raise kopf.PermanentError(f"invalid spec: {exc}") from None

    def repository_unavailable(exc: archiving.RepositoryUnavailable) -> NoReturn:
        st.api_refused(status, exc.reason, str(exc))
        events.warning(body, reason=exc.reason, message=str(exc))
        retry(str(exc), config.api_error_retry)

    held_by = restore_hold(body["metadata"])
    if held_by is not None:
        # Applying now would scale the StatefulSet back up onto volumes the restore is working on.
        st.held_by_restore(status, held_by)
        retry(f"restore {held_by} holds {body['metadata']['name']}", config.restore_hold_retry)

    try:
        decoded = context.decode(body, rt)
        previous = applied.load(body, rt)
        if previous is not None:
            check_change(previous.spec, decoded.spec, decoded.engine)
        else:
            if decoded.spec.wal_archiving:
                archiving.check_new_archive(rt, decoded.spec)
            if decoded.spec.recovery is not None and status.recovery_base_backup is None:
                status.recovery_base_backup = archiving.choose_recovery(rt, decoded.spec)
    except archiving.RepositoryUnavailable as exc:
        repository_unavailable(exc)
    except SpecError as exc:
        invalid(exc)
    spec, engine = decoded.spec, decoded.engine
    status.version = spec.version
    status.credentials_secret = credentials_secret_name(spec)
    try:
        manifests = archiving.render(rt, spec, engine, config.cluster_domain, status.recovery_base_backup)
    except archiving.RepositoryUnavailable as exc:
        repository_unavailable(exc)
    if rt.serves(*prune.POD_MONITOR):
        manifests += exporters.pod_monitors(spec, engine)

    # A retry of a generation this pass already reconciled (members still starting) with the render
    # this process applied moments ago: the objects are as that pass planned, applied and pruned them.
    uid = str(body["metadata"].get("uid") or "")
    digest = applied.render_digest(manifests)
    unchanged = (
        bool(uid)
        and previous_generation == generation
        and applied.applied_recently(uid, digest, config.reapply_interval)
    )
    if not unchanged:
        _expand_storage(rt, body, status, manifests, config, retry, outcome, patch)
    # Read (or created) once per pass, and in a retry of an unchanged render only when a member is
    # up to talk to: the Secret was ensured by the pass that applied the render.
    password = Password(lambda: _credentials(rt, body, spec, engine, first=previous_generation is None))
    if not unchanged:
        try:
            password.get()
        except archiving.RepositoryUnavailable as exc:
            repository_unavailable(exc)
    if previous is not None and spec.wal_archiving and not previous.spec.wal_archiving:
        try:
            live = context.pods_by_name(rt, spec)
            conn = observe.connection(
                rt, spec, engine, manifests, live, password.get(), config.cluster_domain
            )
            archiving.check_turned_on(rt, spec, conn)
        except SpecError as exc:
            invalid(exc)
        except NotReady as exc:
            retry(str(exc), config.bootstrap_retry)
    if previous is not None and scaling.shape(previous.spec) != scaling.shape(spec):
        previous = scale.drive(rt, body, patch, status, previous, spec, engine, password.get(), config, retry)
        unchanged = False  # the drive applied its own (widest) shape: the render goes on top again

    pruned: list[str] = []
    if not unchanged:
        try:
            for manifest in manifests:
                rt.apply(manifest, owner=body)
            # Only against a known applied shape: without one, a StatefulSet not rendered might still
            # hold data (slots) that no scale has moved off yet.
            pruned = prune.prune(rt, body, spec, manifests) if previous is not None else []
        except KubernetesApiError as exc:
            st.api_refused(status, "ApplyFailed", str(exc))
            events.warning(body, reason="ApplyFailed", message=str(exc) + password.created_note())
            retry(str(exc), config.api_error_retry)
        if uid:
            applied.remember_applied(uid, digest, config.reapply_interval)
    if pruned:
        events.normal(body, reason="Pruned", message=f"deleted {', '.join(pruned)} (PVCs are kept)")
    applied_now = previous_generation != generation
    if applied_now:
        kinds = sorted({m["kind"] for m in manifests})
        events.normal(
            body,
            reason="Applied",
            message=f"applied {len(manifests)} objects ({', '.join(kinds)}) for generation {generation}"
            + password.created_note(),
        )

    # Members up -> bootstrap -> observe -> changed parameters live: the step `moorage up` runs too.
    port = PodMembers(rt, manifests, password, config.cluster_domain)
    observed_at = now_precise()  # the step observes last: this bounds when from below
    try:
        step = provisioning.provision_step(
            port, spec, engine, previous.spec.parameters if previous is not None else None
        )
    except provisioning.StepFailed as failed:  # every stage is idempotent: retried the same way
        _step_failed(body, status, failed)
        retry(str(failed), config.bootstrap_retry)
    pods = port.pods
    if isinstance(step, Wait):
        planned = engine.members(spec)
        waiting = [m.name for m in planned if m.name not in pods or not member_up(engine, pods[m.name])]
        _label_ready_members(rt, body, spec, engine, manifests, pods, password, config)
        problems = {name: observe.pod_problem(pods[name]) for name in waiting if name in pods}
        failing = {name: problem for name, problem in problems.items() if problem}
        changed = st.waiting_for_members(status, len(planned) - len(waiting), len(planned), waiting, failing)
        # Right after an apply, members not up yet is what the Applied Event implies (the status
        # says how many): an Event each would double what a creation posts, for nothing new.
        if changed and (failing or not applied_now):
            post = events.warning if failing else events.normal
            post(body, reason=status.phase_reason or "WaitingForMembers", message=_message(status, st.READY))
        retry(f"{len(waiting)} of {len(planned)} members not Ready", config.member_retry)

    if step.bootstrap.changed:
        events.normal(body, reason="Bootstrapped", message="; ".join(step.bootstrap.actions))
    observation = step.observation
    relabelled = observe.record(rt, spec, observation, pods)
    if relabelled:
        events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))
    was_failing = archiving.failing(status)
    if st.observed(
        status, observation, observed_at, exporters.pod_addresses(spec, engine, observation.members)
    ):
        post = events.normal if observation.ready else events.warning
        post(body, reason=observation.reason, message=observation.message or f"phase {status.phase}")
    archiving.report_transition(rt, body, spec, was_failing, status)
    reconfigure.report(body, status, step)
    st.restarted_since_pending(status, observe.creation_times(pods))
    operation.request_rollout(body, patch, status)
    st.settled(status)
    applied.record(patch, dict(body.get("spec") or {}))
    st.write(patch, status)


class Password:
    """The deployment's password, fetched on first use and kept for the rest of the pass; and the
    credentials Secrets the fetch created, for the pass's Event (``Applied`` names them, so a
    creation posts one Event, not one per step)."""

    def __init__(self, fetch: Callable[[], tuple[str, list[str]]]) -> None:
        self._fetch = fetch
        self._value: str | None = None
        self.created: list[str] = []

    def get(self) -> str:
        if self._value is None:
            self._value, self.created = self._fetch()
        return self._value

    def created_note(self) -> str:
        return f"; created Secret {', '.join(self.created)}" if self.created else ""


@dataclasses.dataclass
class PodMembers:
    """``middleware.provisioning.ProvisionPort`` over pods: the StatefulSets were applied earlier in
    the pass and the platform starts their pods, so bringing members up is reporting the ones not up
    (``member_up``); the connection dials the pods' DNS names. Parameters need nothing persisted:
    the re-rendered ConfigMap holds them for the next start."""

    rt: KubernetesRuntime
    manifests: list[dict[str, Any]]
    password: Password
    cluster_domain: str
    pods: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def bring_up(self, spec: ResolvedSpec, engine: Engine) -> list[str]:
        self.pods = observe.pods_by_name(self.rt, spec)
        return [
            m.name
            for m in engine.members(spec)
            if m.name not in self.pods or not member_up(engine, self.pods[m.name])
        ]

    def connection(self, spec: ResolvedSpec, engine: Engine) -> Connection:
        return observe.connection(
            self.rt, spec, engine, self.manifests, self.pods, self.password.get(), self.cluster_domain
        )

    def persist_parameters(self, spec: ResolvedSpec, engine: Engine, changed: dict[str, str]) -> None:
        return None

    def restart_member(self, spec: ResolvedSpec, engine: Engine, name: str) -> str | None:
        return observe.restart_to_rejoin(self.rt, spec, self.pods, name)


def _step_failed(body: kopf.Body, status: MiddlewareStatus, failed: provisioning.StepFailed) -> None:
    message = str(failed)
    if failed.stage is provisioning.Stage.BOOTSTRAP:
        message = f"{message} (through the members' pod DNS names)"
        if st.bootstrap_failed(status, message):
            events.warning(body, reason="BootstrapFailed", message=message)
    elif failed.stage is provisioning.Stage.OBSERVE:
        st.bootstrap_failed(status, message)  # the next attempt or the timer observes again
    elif st.reconfigure_failed(status, message):
        events.warning(body, reason="ReconfigureFailed", message=message)


def _label_ready_members(
    rt: KubernetesRuntime,
    body: kopf.Body,
    spec: ResolvedSpec,
    engine: Engine,
    manifests: list[dict[str, Any]],
    pods: dict[str, dict[str, Any]],
    password: Password,
    config: OperatorConfig,
) -> None:
    """Role labels for the members that are Ready while others are not yet: a PostgreSQL replica's
    first start clones from whatever the ``-rw`` Service selects, so the primary must carry its
    label before every member is Ready, or creation waits on itself. Best effort: the full
    observation after bootstrap labels everything anyway.

    Only while exactly one member is writable: before its bootstrap, every Redis member of a
    sentinel deployment answers as a master, and labelling them all would send writes through
    ``-master`` to members about to become replicas (their writes then lost)."""
    if not any(pod_ready(pod) for pod in pods.values()):
        return
    conn = observe.connection(rt, spec, engine, manifests, pods, password.get(), config.cluster_domain)
    try:
        observation = engine.observe(spec, conn)
    except Exception as exc:
        log.debug("partial observation of %s/%s failed: %s", spec.namespace, spec.name, exc)
        return
    writable = [m for m in observation.members if m.healthy and m.role in WRITABLE_ROLES]
    if len(writable) != 1:
        return
    relabelled = observe.label_roles(rt, spec, observation, pods)
    if relabelled:
        events.normal(body, reason="RolesLabelled", message="; ".join(relabelled))


def _expand_storage(
    rt: KubernetesRuntime,
    body: kopf.Body,
    status: MiddlewareStatus,
    manifests: list[dict[str, Any]],
    config: OperatorConfig,
    retry: Callable[[str, float], NoReturn],
    outcome: dict[str, str],
    patch: MutableMapping[str, Any],
) -> None:
    namespace = body["metadata"]["namespace"]
    try:
        growth = storage.plan(rt, manifests)
    except SpecError as exc:
        st.storage_refused(status, exc)
        st.write(patch, status)
        events.warning(body, reason="StorageShrinkRefused", message=str(exc))
        outcome["result"] = "invalid"
        raise kopf.PermanentError(str(exc)) from None
    except storage.StorageBusy as exc:
        st.applying(status, Phase.UPDATING, "ExpandingStorage", str(exc))
        retry(str(exc), config.storage_retry)
    if not growth:
        return
    try:
        actions = storage.grow(rt, namespace, growth)
    except KubernetesApiError as exc:
        st.api_refused(status, "StorageExpansionFailed", str(exc))
        events.warning(body, reason="StorageExpansionFailed", message=str(exc))
        retry(str(exc), config.api_error_retry)
    sizes = ", ".join(sorted({f"{g.template} {g.old} -> {g.new}" for g in growth}))
    events.normal(body, reason="ExpandingStorage", message=f"{sizes}: " + "; ".join(actions))
    st.applying(status, Phase.UPDATING, "ExpandingStorage", f"recreating StatefulSets for {sizes}")
    retry("StatefulSets are being recreated with the larger volumeClaimTemplates", config.storage_retry)


def _credentials(
    rt: KubernetesRuntime,
    body: kopf.Body,
    spec: ResolvedSpec,
    engine: Engine,
    *,
    first: bool,
) -> tuple[str, list[str]]:
    """The deployment's password: read from its Secret, or generated once and stored there first.
    ``first`` (no status written yet): most likely no Secret exists, so create before reading. With
    it, the Secrets created, for this pass's ``Applied`` Event to name; a later pass that creates
    one (deleted by hand) posts ``CredentialsCreated`` itself and returns none."""
    name = credentials_secret_name(spec)
    if not first:
        password = rt.secret_value(spec.namespace, name, PASSWORD_KEY)
        if password is not None:
            return password, []
    # Recovered from another Middleware's archive too: the init container gives the recovered
    # superuser this password (the source's credentials are not needed, the source may be gone).
    generated = secrets.token_urlsafe(24)
    created = rt.create_secrets(engine.render_secrets(spec, generated))
    if created and not first:
        events.normal(body, reason="CredentialsCreated", message=f"created Secret {', '.join(created)}")
    told_by_applied = created if first else []
    if name in created:
        return generated, told_by_applied
    # It existed (kept by deletionPolicy Retain) or another writer won the create race: its
    # password is the one members use.
    password = rt.secret_value(spec.namespace, name, PASSWORD_KEY)
    if password is None:
        raise kopf.TemporaryError(f"Secret {name} has no {PASSWORD_KEY!r} key yet", delay=5)
    return password, told_by_applied


def _message(status: MiddlewareStatus, condition: str) -> str:
    found = status.condition(condition)
    return found.message if found is not None else ""
