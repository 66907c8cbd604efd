"""Pure builders: a resource in, the Kubernetes objects the operator creates for it out. No API calls."""

from kubedistill_operator.builders.job import build_job_children
from kubedistill_operator.builders.student import ModelSourceInfo, build_student_children

__all__ = ["ModelSourceInfo", "build_job_children", "build_student_children"]
