"""A job taught by another job's student (`teacher.jobRef`): wait for that job, refuse a cycle, and hand the
pipeline a spec whose teacher is the referenced student's URI."""

from __future__ import annotations

from typing import Any

import kopf

from kubedistill import chain
from kubedistill.api import DistillationJob
from kubedistill_operator import naming
from kubedistill_operator.kubeapi import DISTILLATION_JOBS
from kubedistill_operator.reconcile.context import Context, StatusWriter
from kubedistill_operator.status.teacher import (
    READY,
    TeacherOutcome,
    current_reason,
    cycle_outcome,
    not_ready_status,
    teacher_condition,
    teacher_outcome,
)


def _reference(body: dict[str, Any] | None) -> str | None:
    ref = (((body or {}).get("spec") or {}).get("teacher") or {}).get("jobRef") or {}
    name = ref.get("name")
    return str(name) if name else None


def resolve_teacher(ctx: Context, body: dict[str, Any], namespace: str, job: DistillationJob) -> TeacherOutcome:
    """Where the referenced job stands, a cycle of references included (one GET per job along the chain)."""
    assert job.spec.teacher_job is not None
    bodies: dict[str, dict[str, Any] | None] = {job.metadata.name: body}

    def read(name: str) -> dict[str, Any] | None:
        if name not in bodies:
            bodies[name] = ctx.api.get(DISTILLATION_JOBS, namespace, name)
        return bodies[name]

    cycle = chain.find_cycle(job.metadata.name, lambda name: _reference(read(name)))
    if cycle is not None:
        return cycle_outcome(cycle)
    return teacher_outcome(job.spec, read(job.spec.teacher_job.name))


def await_teacher(ctx: Context, body: dict[str, Any], writer: StatusWriter, namespace: str,
                  job: DistillationJob) -> tuple[DistillationJob, dict[str, Any], str] | None:
    """The job as its pipeline runs it (taught by the referenced student), the WaitingForTeacher condition and
    the teacher's URI, once the referenced job has succeeded and passed its gate.

    Otherwise records why in the status (an Event when the reason changes): while the referenced job runs, the
    job is Pending and `kopf.TemporaryError` retries it (its events re-reconcile this one sooner); when it can
    never teach as it stands (missing, failed, gate not met, another task, a cycle) the job is Failed and None is
    returned: a change of either job re-reconciles it."""
    outcome = resolve_teacher(ctx, body, namespace, job)
    was = current_reason(body)
    if outcome.ready:
        if was != READY:
            ctx.event(body, "Normal", READY, outcome.message)
        assert outcome.teacher_uri is not None
        return chain.taught_by(job, outcome.teacher_uri), teacher_condition(body, outcome), outcome.teacher_uri
    writer.write(not_ready_status(body, outcome))
    if was != outcome.reason:
        ctx.event(body, "Normal" if outcome.waiting else "Warning", outcome.reason, outcome.message)
    if outcome.waiting:
        raise kopf.TemporaryError(outcome.message, delay=ctx.wait_delay)
    return None


def teacher_change_matters(dependent: dict[str, Any], teacher: dict[str, Any] | None) -> bool:
    """Whether an event of the referenced job can change what `dependent` (a body as indexed) does: only before
    the dependent's current generation has started its run, and only when the outcome's reason differs from
    the one it shows (progress updates of a running teacher change nothing)."""
    meta = dependent["metadata"]
    if (dependent.get("status") or {}).get("rayJobName") == naming.ray_job_name(meta["name"], meta.get("generation")):
        return False  # this generation's run has its teacher already
    try:
        spec = DistillationJob.model_validate({"metadata": dependent["metadata"], "spec": dependent["spec"]}).spec
    except ValueError:
        return False  # refused on its own; a change of its spec re-reconciles it
    return teacher_outcome(spec, teacher).reason != current_reason(dependent)
