"""Secrets a spec names must exist before anything that mounts them is started."""

from __future__ import annotations

from kubedistill.api import DistillationJob, StudentDeployment
from kubedistill.uris import parse_uri
from kubedistill_operator.kubeapi import SECRETS, KubeApi


def job_secrets(job: DistillationJob) -> dict[str, str]:
    """Secret name → the field that names it."""
    found: dict[str, str] = {}
    endpoint = job.spec.teacher.endpoint
    if endpoint and endpoint.api_key_secret_ref:
        found[endpoint.api_key_secret_ref.name] = "spec.teacher.endpoint.apiKeySecretRef.name"
    output = job.spec.output
    if output.s3_credentials_secret and parse_uri(output.uri).scheme == "s3":
        found[output.s3_credentials_secret] = "spec.output.s3CredentialsSecret"
    return found


def student_secrets(sd: StudentDeployment, s3_secret: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    teacher = sd.spec.router.teacher
    if teacher and teacher.api_key_secret_ref:
        found[teacher.api_key_secret_ref.name] = "spec.router.teacher.apiKeySecretRef.name"
    if sd.spec.router.auth is not None:
        found[sd.spec.router.auth.api_key_secret_ref.name] = "spec.router.auth.apiKeySecretRef.name"
    if s3_secret:
        found[s3_secret] = "spec.source.s3CredentialsSecret (or the job's spec.output.s3CredentialsSecret)"
    return found


def missing_secrets(api: KubeApi, namespace: str, secrets: dict[str, str]) -> str | None:
    """A message naming every missing Secret and the field that refers to it; None when all exist."""
    missing = [f"Secret {name!r} ({field})" for name, field in sorted(secrets.items())
               if api.get(SECRETS, namespace, name) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not found in namespace {namespace}; create it or fix the reference"
