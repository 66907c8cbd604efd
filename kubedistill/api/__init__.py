"""kubedistill's API (group `kubedistill.io`, version `v1alpha1`): the one definition of both resources.

Light on purpose: pydantic and PyYAML only, so the operator, the router and the pipeline all import it.
"""

from kubedistill.api.base import API_VERSION, GROUP, VERSION, Condition
from kubedistill.api.distillationjob import DistillationJob, DistillationJobSpec, DistillationJobStatus, JobResults
from kubedistill.api.load import ManifestError, load_manifest, load_manifests, parse_resource
from kubedistill.api.meta import MAX_NAME_LENGTH, ObjectMeta
from kubedistill.api.studentdeployment import StudentDeployment, StudentDeploymentSpec, StudentDeploymentStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "MAX_NAME_LENGTH",
    "VERSION",
    "Condition",
    "DistillationJob",
    "DistillationJobSpec",
    "DistillationJobStatus",
    "JobResults",
    "ManifestError",
    "ObjectMeta",
    "StudentDeployment",
    "StudentDeploymentSpec",
    "StudentDeploymentStatus",
    "load_manifest",
    "load_manifests",
    "parse_resource",
]
