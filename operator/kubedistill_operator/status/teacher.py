"""Whether a job's `teacher.jobRef` can teach yet: the referenced DistillationJob must have succeeded and passed
its gate (as a StudentDeployment waits for its job). Condition `WaitingForTeacher`: True while it runs, False
with the reason once it is ready (TeacherReady) or can never teach as it stands (a refusal: the job fails)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubedistill import chain
from kubedistill.api.distillationjob import DistillationJobSpec, JobResults
from kubedistill.artifacts import student_uri
from kubedistill_operator.status.conditions import StatusUpdate, condition
from kubedistill_operator.status.job import gate_message

CONDITION = "WaitingForTeacher"
WAITING, READY = "TeacherNotSucceeded", "TeacherReady"


@dataclass(frozen=True)
class TeacherOutcome:
    """Where the referenced job stands: `reason` READY (with `teacher_uri`), WAITING, or a refusal
    (TeacherJobNotFound, TeacherJobFailed, TeacherGateNotMet, TeacherMismatch, TeacherCycle)."""

    reason: str
    message: str
    teacher_uri: str | None = None

    @property
    def ready(self) -> bool:
        return self.reason == READY

    @property
    def waiting(self) -> bool:
        return self.reason == WAITING


def cycle_outcome(cycle: list[str]) -> TeacherOutcome:
    if len(cycle) > chain.MAX_CHAIN:
        return TeacherOutcome("TeacherCycle", f"{chain.FIELD}: the chain of teacher.jobRef from this job is longer "
                              f"than {chain.MAX_CHAIN} jobs ({' → '.join(cycle[:4])} → ...); shorten it")
    return TeacherOutcome("TeacherCycle", f"{chain.FIELD}: the teacher.jobRef references form a cycle "
                          f"({' → '.join(cycle)}): no job in it can ever start; break the cycle")


def teacher_outcome(spec: DistillationJobSpec, teacher: dict[str, Any] | None) -> TeacherOutcome:
    """What the job `spec` (with a teacher.jobRef) may do, given the referenced job's body (None: absent)."""
    assert spec.teacher_job is not None
    name = spec.teacher_job.name
    if teacher is None:
        return TeacherOutcome("TeacherJobNotFound", f"{chain.FIELD}: DistillationJob {name} not found in this "
                              "namespace; create it (this job starts once it has succeeded) or fix the name")
    try:
        teacher_spec = DistillationJobSpec.model_validate(teacher.get("spec") or {})
    except ValidationError:
        return TeacherOutcome("TeacherJobFailed", f"{chain.FIELD}: DistillationJob {name} has an invalid spec "
                              "(see its status); fix it and this job runs after it")
    problem = chain.mismatch(spec, name, teacher_spec)
    if problem is not None:
        return TeacherOutcome("TeacherMismatch", problem)
    status = teacher.get("status") or {}
    results = JobResults.from_status(status)
    phase = status.get("phase") or "Pending"
    observed, generation = status.get("observedGeneration"), teacher["metadata"].get("generation")
    changed = observed is not None and generation is not None and observed != generation
    if results is not None and results.gate_passed is False and not changed:
        return TeacherOutcome("TeacherGateNotMet", f"{chain.FIELD}: DistillationJob {name} did not pass its gate "
                              f"({gate_message(teacher.get('spec') or {}, results)}); its student teaches nothing")
    if phase == "Failed" and not changed:
        why = next((f" ({c.get('reason')}: {c.get('message')})" for c in status.get("conditions") or []
                    if c.get("type") == "Succeeded" and c.get("reason")), "")
        return TeacherOutcome("TeacherJobFailed", f"{chain.FIELD}: DistillationJob {name} failed{why}; fix it "
                              "and this job runs after it")
    if phase != "Succeeded" or changed:
        state = "changed and has not run again yet" if changed else f"is {phase}"
        return TeacherOutcome(WAITING, f"DistillationJob {name} {state}; waiting for it to succeed and pass its "
                              "gate")
    uri = student_uri(teacher_spec.output.uri)
    return TeacherOutcome(READY, f"taught by the fp32 student of DistillationJob {name} ({uri})", uri)


def teacher_condition(job: dict[str, Any], outcome: TeacherOutcome) -> dict[str, Any]:
    return condition(CONDITION, outcome.waiting, outcome.reason, outcome.message, job["metadata"].get("generation"))


def not_ready_status(job: dict[str, Any], outcome: TeacherOutcome) -> StatusUpdate:
    """The status of a job whose teacher cannot teach yet: Pending while it runs, Failed when it cannot."""
    generation = job["metadata"].get("generation")
    waiting = teacher_condition(job, outcome)
    fields: dict[str, Any] = {"phase": "Pending" if outcome.waiting else "Failed", "observedGeneration": generation}
    succeeded = None if outcome.waiting else False
    return StatusUpdate(fields=fields, conditions=[
        waiting,
        condition("Running", False, outcome.reason, outcome.message, generation),
        condition("Succeeded", succeeded, outcome.reason, outcome.message, generation),
    ])


def current_reason(job: dict[str, Any]) -> str | None:
    """The reason of the job's WaitingForTeacher condition, if it has one."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION:
            return str(c.get("reason"))
    return None
