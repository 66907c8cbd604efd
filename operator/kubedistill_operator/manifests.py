"""`kubedistill manifests`: the objects the operator would create, from the same builders, for review and diffs.

A StudentDeployment of a job shows its objects as they will be once the job has succeeded: the model
repository is the job's artifact folder and the threshold the one set in the spec (or the job's
recommendation, known only after the run).
"""

from __future__ import annotations

from typing import Any

import yaml

from kubedistill import chain
from kubedistill.api import DistillationJob, StudentDeployment
from kubedistill.api.load import ManifestError
from kubedistill.artifacts import model_repository_uri, student_uri
from kubedistill.uris import join_uri
from kubedistill_operator import naming
from kubedistill_operator.builders import ModelSourceInfo, build_job_children, build_student_children
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.status.student import unsupported_task

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
# Stands for the output of a job that is not among the files rendered.
UNKNOWN_REPOSITORY = "file:///unknown-job-output"


def missing_jobs(resources: list[Any]) -> list[str]:
    """A note for each StudentDeployment, or job taught by another job's student, whose DistillationJob is not
    among `resources`."""
    jobs = {r.metadata.name for r in resources if isinstance(r, DistillationJob)}
    notes = [f"StudentDeployment {r.metadata.name}: DistillationJob {r.spec.source.job_ref.name} is not among the "
             f"files, so its model repository shows as {UNKNOWN_REPOSITORY}/...; give its manifest too"
             for r in resources if isinstance(r, StudentDeployment) and r.spec.source.job_ref is not None
             and r.spec.source.job_ref.name not in jobs]
    notes += [f"DistillationJob {r.metadata.name}: DistillationJob {r.spec.teacher_job.name} (teacher.jobRef) is "
              f"not among the files, so its teacher shows as {UNKNOWN_REPOSITORY}/...; give its manifest too"
              for r in resources if isinstance(r, DistillationJob) and r.spec.teacher_job is not None
              and r.spec.teacher_job.name not in jobs]
    return notes


def _with_defaults(resource: Any) -> Any:
    meta = resource.metadata
    updates: dict[str, Any] = {}
    if not meta.namespace:
        updates["namespace"] = "default"
    if not meta.uid:
        updates["uid"] = PLACEHOLDER_UID
    if updates:
        resource = resource.model_copy(update={"metadata": meta.model_copy(update=updates)})
    return resource


def render(resources: list[Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """The operator's objects for each resource, in creation order."""
    jobs = {r.metadata.name: r for r in resources if isinstance(r, DistillationJob)}
    objects: list[dict[str, Any]] = []
    for resource in resources:
        resource = _with_defaults(resource)
        if isinstance(resource, DistillationJob):
            objects.extend(build_job_children(_taught(resource, jobs), config))
        elif isinstance(resource, StudentDeployment):
            objects.extend(build_student_children(resource, _source(resource, jobs), config))
    return objects


def _taught(job: DistillationJob, jobs: dict[str, DistillationJob]) -> DistillationJob:
    """A job taught by another job's student, as the operator runs it once that job has succeeded."""
    ref = job.spec.teacher_job
    if ref is None:
        return job
    teacher = jobs.get(ref.name)

    def teacher_of(name: str) -> str | None:
        other = jobs.get(name)
        reference = other.spec.teacher_job if other is not None else None
        return reference.name if reference is not None else None

    cycle = chain.find_cycle(job.metadata.name, teacher_of)
    if cycle is not None:  # the operator would refuse it (TeacherCycle); every job of it is here to see
        raise ManifestError(f"{job.metadata.name}: {chain.FIELD}: the jobs teach each other in a cycle "
                            f"({' -> '.join(cycle)}); a chain must end at a teacher model")
    if teacher is not None and (problem := chain.mismatch(job.spec, ref.name, teacher.spec)) is not None:
        raise ManifestError(f"{job.metadata.name}: {problem}")
    output = teacher.spec.output.uri if teacher is not None else join_uri(UNKNOWN_REPOSITORY, ref.name)
    return chain.taught_by(job, student_uri(output))


def _source(sd: StudentDeployment, jobs: dict[str, DistillationJob]) -> ModelSourceInfo:
    ref = sd.spec.source.job_ref
    if ref is None:
        return ModelSourceInfo.from_uri(sd)
    job = jobs.get(ref.name)
    if job is None:
        uri = model_repository_uri(join_uri(UNKNOWN_REPOSITORY, ref.name))
        s3 = sd.spec.source.s3_credentials_secret
    else:  # what the operator would refuse to serve (vLLM for a classification job, a task with no handler)
        refused = unsupported_task(job.model_dump(by_alias=True, mode="json"), sd.spec.triton.backend)
        if refused is not None:
            raise ManifestError(f"StudentDeployment {sd.metadata.name}: {refused.message}")
        uri = model_repository_uri(job.spec.output.uri)
        s3 = sd.spec.source.s3_credentials_secret or job.spec.output.s3_credentials_secret
    return ModelSourceInfo(model_repository_uri=uri, model_version=naming.ray_job_name(ref.name, None),
                           threshold=sd.spec.router.threshold, s3_credentials_secret=s3)


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (a ConfigMap's resolved spec, the router's config) as literal blocks, readable in a
    diff, instead of one quoted line of `\\n` escapes."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _string)


def dump_objects(objects: list[dict[str, Any]]) -> str:
    """`objects` as one YAML stream, keys in the builders' order; the same data `yaml.safe_load_all` reads back."""
    return yaml.dump_all(objects, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True)
