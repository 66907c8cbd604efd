"""Teacher assistant chains: a job whose `teacher.jobRef` names another DistillationJob is taught by that job's
trained fp32 student (`student/` under its `output.uri`). One definition of when the referenced job may teach
and of the spec the pipeline then runs, used by the operator (from the referenced job's status) and by
`kubedistill run --teacher-job` (from its output folder).
"""

from __future__ import annotations

from collections.abc import Callable

from kubedistill.api.distillationjob import DistillationJob, DistillationJobSpec

# Longest chain of references followed when looking for a cycle; a longer one is refused as well.
MAX_CHAIN = 16
FIELD = "spec.teacher.jobRef.name"


def mismatch(job: DistillationJobSpec, teacher_name: str, teacher: DistillationJobSpec) -> str | None:
    """Why the student of `teacher` (the job named `teacher_name`) cannot teach `job`; None when it can.
    Its outputs must be distributions over the same classes (or vocabulary: the student shares the tokenizer)."""
    if teacher.task.type != job.task.type:
        return (f"{FIELD}: DistillationJob {teacher_name} is a {teacher.task.type} job and this one is "
                f"{job.task.type}: a teacher must do the same task; name a {job.task.type} job")
    if (teacher.task.labels or []) != (job.task.labels or []):
        return (f"{FIELD}: DistillationJob {teacher_name} has task.labels {teacher.task.labels}, this job "
                f"{job.task.labels}: its student scores other classes; use the same labels in the same order")
    return None


def taught_by(job: DistillationJob, teacher_uri: str) -> DistillationJob:
    """The job as the pipeline runs it: `teacher.jobRef` replaced by `teacher.uri`, the referenced job's fp32
    student (`artifacts.student_uri` of its output; adaptation settings kept: `auto` finds its head)."""
    wire = job.to_wire()
    teacher = wire["spec"]["teacher"]
    teacher.pop("jobRef", None)
    teacher["uri"] = teacher_uri
    return DistillationJob.model_validate(wire)


def find_cycle(name: str, teacher_of: Callable[[str], str | None]) -> list[str] | None:
    """Follow `teacher.jobRef` from the job `name` (`teacher_of(n)`: the job n's reference, None for none or a
    missing job). The names along a cycle, the repeated one last (`[a, b, a]`), or None when the chain ends.
    A chain longer than MAX_CHAIN is returned as if it were a cycle: it is refused too."""
    chain = [name]
    while len(chain) <= MAX_CHAIN:
        following = teacher_of(chain[-1])
        if following is None:
            return None
        chain.append(following)
        if following in chain[:-1]:
            return chain[chain.index(following):]
    return chain
