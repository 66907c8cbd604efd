"""Reconcile a DistillationJob: its spec ConfigMap, the pipeline's RBAC and this generation's RayJob."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

from kubedistill import chain
from kubedistill.api import DistillationJob
from kubedistill_operator import naming
from kubedistill_operator.builders import build_job_children
from kubedistill_operator.kubeapi import DISTILLATION_JOBS, RAY_JOBS, STUDENT_DEPLOYMENTS
from kubedistill_operator.reconcile.context import ApiStatusWriter, Context
from kubedistill_operator.reconcile.parsing import parse_or_refuse
from kubedistill_operator.reconcile.references import job_references, require_references
from kubedistill_operator.reconcile.teacher import await_teacher, teacher_change_matters
from kubedistill_operator.status import conditions
from kubedistill_operator.status.conditions import StatusUpdate
from kubedistill_operator.status.job import (
    INVALID_INPUT,
    TERMINAL_PHASES,
    job_status,
    new_run_status,
    permanent_failure,
)

log = logging.getLogger(__name__)


def resolve_capture(get: Callable[..., dict[str, Any] | None], namespace: str,
                    job: DistillationJob) -> DistillationJob | str:
    """The job with `dataset.capture.studentDeploymentRef` replaced by that deployment's `router.capture.uri`
    (what the pipeline reads), or why it cannot be yet. `get` is the API's (resource, namespace, name) read."""
    capture = job.spec.dataset.capture
    if capture is None or capture.student_deployment_ref is None:
        return job
    name = capture.student_deployment_ref.name
    field = "spec.dataset.capture.studentDeploymentRef"
    deployment = get(STUDENT_DEPLOYMENTS, namespace, name)
    if deployment is None:
        return f"{field}: StudentDeployment {name} not found in this namespace; create it, or set dataset.capture.uri"
    uri = ((((deployment.get("spec") or {}).get("router")) or {}).get("capture") or {}).get("uri")
    if not uri:
        return (f"{field}: StudentDeployment {name} captures nothing (no spec.router.capture); set its "
                "router.capture.uri, or set dataset.capture.uri")
    resolved = job.model_copy(deep=True)
    resolved.spec.dataset.capture = capture.model_copy(update={"uri": uri, "student_deployment_ref": None})
    return resolved


def reconcile_job(ctx: Context, body: dict[str, Any], creating: bool = False) -> None:
    """Make the children of the job's current generation exist; never a second RayJob for one generation.
    Under the job's lock: a permanent failure being recorded at the same time deletes the run's RayJob,
    and this must then see the job Failed rather than create the RayJob again. `creating`: called for kopf's
    creation of the job, which is done already when the job carries kopf's record of a handled spec."""
    namespace, name = body["metadata"].get("namespace") or "default", body["metadata"]["name"]
    with ctx.lock(DISTILLATION_JOBS.plural, namespace, name):
        _reconcile_job(ctx, namespace, name, creating)


def _reconcile_job(ctx: Context, namespace: str, name: str, creating: bool = False) -> None:
    fresh = ctx.api.get(DISTILLATION_JOBS, namespace, name)  # the status of the handler's body may be old
    if fresh is None:
        return
    if creating and naming.LAST_HANDLED_ANNOTATION in (fresh["metadata"].get("annotations") or {}):
        # kopf took an event from before its own patch for a creation (its consistency window ran out before the
        # patched version came back): the creation was handled; its later changes come as updates.
        log.info("[%s/%s] creation already handled; an older event of the job was taken for it", namespace, name)
        return
    body, meta = fresh, fresh["metadata"]
    writer = ApiStatusWriter(ctx.api, DISTILLATION_JOBS, namespace, name, body)
    status = body.get("status") or {}
    job = parse_or_refuse(ctx, body, writer, DistillationJob, phase="Failed", condition_type="Succeeded")
    generation = meta.get("generation")
    run = naming.ray_job_name(name, generation)
    if status.get("rayJobName") == run and status.get("phase") in TERMINAL_PHASES:
        return  # this generation has run; only a spec change starts another run

    previous = status.get("rayJobName")
    teacher: list[dict[str, Any]] = []  # the WaitingForTeacher condition of a job taught by another's student
    teacher_uri = None
    if job.spec.teacher_job is not None:
        if previous == run and status.get("teacherUri"):
            teacher_uri = status["teacherUri"]  # this run started with it: the referenced job no longer matters
            job = chain.taught_by(job, teacher_uri)
        else:
            taught = await_teacher(ctx, body, writer, namespace, job)
            if taught is None:
                return  # refused; a change of this job or of the referenced one re-reconciles it
            job, condition, teacher_uri = taught
            teacher.append(condition)

    resolved = resolve_capture(ctx.api.get, namespace, job)
    if isinstance(resolved, str):
        writer.write(StatusUpdate(fields={"phase": "Pending", "observedGeneration": generation}, conditions=[
            conditions.condition("ReferencesFound", False, "CaptureNotFound", resolved, generation)]))
        raise kopf.TemporaryError(resolved, delay=ctx.wait_delay)
    job = resolved
    found = require_references(ctx, body, writer, namespace, job_references(job), waiting={"phase": "Pending"})

    if previous != run:
        # Recorded before the RayJob exists: an operator restarted at any point finds this name, never a new one.
        update = new_run_status(run, naming.spec_config_map_name(name), naming.pipeline_account_name(name),
                                generation, teacher_uri)
        update.conditions += [found, *teacher]
        writer.write(update)
        if previous and ctx.api.delete(RAY_JOBS, namespace, previous):
            ctx.event(body, "Normal", "RayJobReplaced",
                      f"the spec changed: RayJob {previous} deleted, {run} replaces it")
    else:
        writer.write(StatusUpdate(conditions=[found, *teacher]))

    *supporting, ray_job = build_job_children(job, ctx.config, run)
    for child in supporting:
        ctx.api.apply(child)
    # A run already recorded (a resume, a retry) usually has its RayJob: look before creating, so that an operator
    # restart reads each job's RayJob once instead of meeting a 409 for every one.
    existing = ctx.api.get(RAY_JOBS, namespace, run) if previous == run else None
    created = ctx.api.create(ray_job) if existing is None else None
    if created is None:
        created = existing or ctx.api.get(RAY_JOBS, namespace, run)
        owners = [o.get("uid") for o in (created or {}).get("metadata", {}).get("ownerReferences") or []]
        if created is None or (meta.get("uid") and meta["uid"] not in owners):
            message = (f"RayJob {run} exists but belongs to an earlier DistillationJob named {name}; "
                       "waiting for it to be garbage-collected")
            raise kopf.TemporaryError(message, delay=ctx.wait_delay)
    else:
        ctx.event(body, "Normal", "RayJobCreated", f"RayJob {run} created (generation {generation})")
    _refresh_job(ctx, namespace, name, created, writer)


def refresh_job(ctx: Context, namespace: str, name: str, ray_job: dict[str, Any] | None = None) -> bool:
    """Copy the run's state into the job's status (level-based), from a fresh read of the job (its results
    may have just arrived). False when the run's RayJob is missing."""
    with ctx.lock(DISTILLATION_JOBS.plural, namespace, name):
        writer = ApiStatusWriter(ctx.api, DISTILLATION_JOBS, namespace, name)
        return _refresh_job(ctx, namespace, name, ray_job, writer)


def _refresh_job(ctx: Context, namespace: str, name: str, ray_job: dict[str, Any] | None,
                 writer: ApiStatusWriter) -> bool:
    """`writer` holds the job as its caller last read or wrote it (under the job's lock), or reads it now."""
    body = writer.body or ctx.api.get(DISTILLATION_JOBS, namespace, name)
    if body is None:
        return True  # the job is gone; its children follow through their ownerReferences
    writer.body = body
    status = body.get("status") or {}
    run = status.get("rayJobName")
    if not run:
        return True  # not started yet: the job's own handler is at it
    if ray_job is None or ray_job.get("metadata", {}).get("name") != run:
        ray_job = ctx.api.get(RAY_JOBS, namespace, run)
    update = job_status(body, ray_job)
    writer.write(update)
    old_phase, new_phase = status.get("phase"), update.fields.get("phase")
    if new_phase and new_phase != old_phase:
        succeeded = next(c for c in update.conditions if c["type"] == "Succeeded")
        if new_phase == "Failed":
            ctx.event(body, "Warning", succeeded["reason"], succeeded["message"])
        elif new_phase in ("Running", "Succeeded"):
            ctx.event(body, "Normal", new_phase, succeeded["message"])
    if permanent_failure(status) is not None:
        if ray_job is not None:
            stop_retries(ctx, body, ray_job)
        return True  # failed for good: never recreated for this generation
    if ray_job is not None or status.get("phase") in TERMINAL_PHASES:
        return True
    if run == naming.ray_job_name(name, body["metadata"].get("generation")):
        # The run's RayJob was deleted before it finished: create it again (same name: the run resumes).
        with contextlib.suppress(kopf.TemporaryError):  # the job's own handler retries it
            reconcile_job(ctx, body)
    return False


def stop_retries(ctx: Context, body: dict[str, Any], ray_job: dict[str, Any]) -> None:
    """Delete the run's RayJob after an input error: its Ray cluster and submitter go with it (ownerReferences;
    KubeRay's finalizer stops the Ray job first), and no backoffLimit retry starts another cluster.

    Deleting, not `spec.suspend`: KubeRay honours suspend only from Initializing or Running (a RayJob between
    retries is Retrying or New), Kueue owns the suspend flag of the RayJobs it queues, and a Suspended RayJob
    never finishes, so its ttlSecondsAfterFinished never removes it. The job's status (phase Failed, written
    before this) is the record; the same generation is never run again (`reconcile_job`, `refresh_job`)."""
    meta = ray_job.get("metadata") or {}
    namespace = meta.get("namespace") or body["metadata"].get("namespace") or "default"
    # An event may carry the RayJob as it was before an earlier delete: look at it as it is now.
    current = ctx.api.get(RAY_JOBS, namespace, meta["name"]) if not meta.get("deletionTimestamp") else None
    if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
        return  # gone, or already on its way out
    if ctx.api.delete(RAY_JOBS, namespace, meta["name"]):
        ctx.event(body, "Normal", "RetriesStopped",
                  f"RayJob {meta['name']} deleted after an input error ({INVALID_INPUT}): a retry would fail the "
                  "same way; change the spec to run again")


def failure_needs_action(body: dict[str, Any]) -> bool:
    """Whether a job's status holds a permanent failure of its current run that the operator has not acted on
    (cheap: read from the event's body, so the job's own status writes never loop back into API calls)."""
    status = body.get("status") or {}
    return permanent_failure(status) is not None and status.get("phase") != "Failed"


def reconcile_dependents(ctx: Context, namespace: str, dependents: list[dict[str, Any]],
                         teacher: dict[str, Any] | None) -> None:
    """After an event of a job (None: deleted): reconcile the jobs it teaches (bodies as last indexed) that have
    not started their run and whose wait the change affects (waiting is not an error here)."""
    for dependent in dependents:
        if teacher_change_matters(dependent, teacher):
            with contextlib.suppress(kopf.TemporaryError):  # still waiting: its own handler retries it
                reconcile_job(ctx, dependent)
