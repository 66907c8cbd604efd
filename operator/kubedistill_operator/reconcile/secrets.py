"""Secrets a spec names must exist, with the keys it reads, before anything that mounts them is started: a
missing key would leave the pod in CreateContainerConfigError (or without credentials) and the resource
waiting without a word."""

from __future__ import annotations

from typing import Any

from kubedistill.api import DistillationJob, StudentDeployment
from kubedistill.uris import parse_uri
from kubedistill_operator.kubeapi import SECRETS, KubeApi

# The keys an S3 credentials Secret must hold (its entries become the pods' environment).
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Secret name → the field that names it, or (that field, the keys read from it).
SecretUses = dict[str, str | tuple[str, tuple[str, ...]]]


def job_secrets(job: DistillationJob) -> SecretUses:
    """Secret name → the field that names it and the keys the pipeline reads."""
    found: SecretUses = {}
    endpoint = job.spec.teacher.endpoint
    if endpoint and endpoint.api_key_secret_ref:
        found[endpoint.api_key_secret_ref.name] = ("spec.teacher.endpoint.apiKeySecretRef",
                                                   (endpoint.api_key_secret_ref.key,))
    output = job.spec.output
    if output.s3_credentials_secret and parse_uri(output.uri).scheme == "s3":
        found[output.s3_credentials_secret] = ("spec.output.s3CredentialsSecret", S3_KEYS)
    return found


def student_secrets(sd: StudentDeployment, s3_secret: str | None) -> SecretUses:
    found: SecretUses = {}
    teacher = sd.spec.router.teacher
    if teacher and teacher.api_key_secret_ref:
        found[teacher.api_key_secret_ref.name] = ("spec.router.teacher.apiKeySecretRef",
                                                  (teacher.api_key_secret_ref.key,))
    if s3_secret:
        found[s3_secret] = ("spec.source.s3CredentialsSecret (or the job's spec.output.s3CredentialsSecret)", S3_KEYS)
    return found


def _keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def missing_secrets(api: KubeApi, namespace: str, secrets: SecretUses) -> str | None:
    """A message naming every missing Secret or key and the field that refers to it; None when all exist."""
    missing = []
    for name, use in sorted(secrets.items()):
        field, keys = (use, ()) if isinstance(use, str) else use
        secret = api.get(SECRETS, namespace, name)
        if secret is None:
            missing.append(f"Secret {name!r} ({field})")
        elif absent := [key for key in keys if key not in _keys(secret)]:
            missing.append(f"key {', '.join(map(repr, absent))} of Secret {name!r} ({field}; it has: "
                           f"{', '.join(sorted(_keys(secret))) or 'no keys'})")
    if not missing:
        return None
    return f"{', '.join(missing)} not found in namespace {namespace}; create it or fix the reference"
