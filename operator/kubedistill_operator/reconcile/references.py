"""Objects a spec names must exist before anything that uses them is started: Secrets (with the keys the pods
read), PersistentVolumeClaims of `pvc://` URIs and a user-named ServiceAccount. A missing one would leave the
pods Pending or in CreateContainerConfigError (or without credentials), and the resource waiting without a word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from kubedistill.api import DistillationJob, StudentDeployment
from kubedistill.uris import parse_uri, pvc_claim
from kubedistill_operator.builders import ModelSourceInfo
from kubedistill_operator.builders.job import claim_fields
from kubedistill_operator.kubeapi import PERSISTENT_VOLUME_CLAIMS, SECRETS, SERVICE_ACCOUNTS, KubeApi, Resource
from kubedistill_operator.reconcile.context import Context, StatusWriter
from kubedistill_operator.status.conditions import StatusUpdate, condition

# The keys an S3 credentials Secret must hold (its entries become the pods' environment).
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SECRET, CLAIM, ACCOUNT = "Secret", "PersistentVolumeClaim", "ServiceAccount"
_RESOURCES: dict[str, Resource] = {SECRET: SECRETS, CLAIM: PERSISTENT_VOLUME_CLAIMS, ACCOUNT: SERVICE_ACCOUNTS}

CONDITION = "ReferencesFound"
FOUND_MESSAGE = "every referenced Secret, PersistentVolumeClaim and ServiceAccount exists"


@dataclass(frozen=True)
class Reference:
    """An object of `kind` named `name` by the spec's `field`; for a Secret, the keys the pods read from it."""

    kind: str
    name: str
    field: str
    keys: tuple[str, ...] = ()


def job_references(job: DistillationJob) -> list[Reference]:
    """What a job's RayJob pods need: the teacher endpoint's key, S3 credentials, claims, a named account."""
    spec = job.spec
    found: list[Reference] = []
    for field, teacher in spec.all_teachers():
        endpoint = teacher.endpoint
        if endpoint and endpoint.api_key_secret_ref:
            ref = endpoint.api_key_secret_ref
            found.append(Reference(SECRET, ref.name, f"spec.{field}.endpoint.apiKeySecretRef", (ref.key,)))
    if spec.output.s3_credentials_secret and parse_uri(spec.output.uri).scheme == "s3":
        found.append(Reference(SECRET, spec.output.s3_credentials_secret, "spec.output.s3CredentialsSecret", S3_KEYS))
    found += [Reference(CLAIM, claim, field) for field, claim in claim_fields(job)]
    # Without one, the operator creates (and owns) the pipeline's account itself.
    if spec.ray.service_account_name:
        found.append(Reference(ACCOUNT, spec.ray.service_account_name, "spec.ray.serviceAccountName"))
    return found


def student_references(sd: StudentDeployment, source: ModelSourceInfo) -> list[Reference]:
    """What a StudentDeployment's pods need for `source` (the model being deployed): keys and the claim."""
    found: list[Reference] = []
    teacher = sd.spec.router.teacher
    if teacher and teacher.api_key_secret_ref:
        ref = teacher.api_key_secret_ref
        found.append(Reference(SECRET, ref.name, "spec.router.teacher.apiKeySecretRef", (ref.key,)))
    if sd.spec.router.auth is not None:
        ref = sd.spec.router.auth.api_key_secret_ref
        found.append(Reference(SECRET, ref.name, "spec.router.auth.apiKeySecretRef", (ref.key,)))
    job_ref = sd.spec.source.job_ref
    if source.s3_credentials_secret and parse_uri(source.model_repository_uri).scheme == "s3":
        field = "spec.source.s3CredentialsSecret" + (" (or the job's spec.output.s3CredentialsSecret)" if job_ref
                                                     else "")
        found.append(Reference(SECRET, source.s3_credentials_secret, field, S3_KEYS))
    if claim := pvc_claim(source.model_repository_uri):
        field = (f"spec.source.jobRef: the artifact of job {job_ref.name!r}, under its spec.output.uri" if job_ref
                 else "spec.source.modelRepositoryUri")
        found.append(Reference(CLAIM, claim, field))
    return found


def _keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def _grouped(references: Iterable[Reference]) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    """(kind, name) → (the fields that name it, the keys read from it), each once, in order."""
    grouped: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for ref in references:
        fields, keys = grouped.setdefault((ref.kind, ref.name), ([], []))
        fields.extend(f for f in (ref.field,) if f not in fields)
        keys.extend(k for k in ref.keys if k not in keys)
    return grouped


@dataclass(frozen=True)
class Missing:
    """What is missing: the condition's reason (`<Kind>NotFound`, or `ReferencesNotFound` for several kinds)
    and a message naming each object or key, the field that names it and the fix."""

    reason: str
    message: str


def missing_references(api: KubeApi, namespace: str, references: Iterable[Reference]) -> Missing | None:
    """Read each named object once (a GET each); None when all exist with the keys read from them."""
    missing: list[str] = []
    kinds: set[str] = set()
    for (kind, name), (fields, keys) in sorted(_grouped(references).items()):
        obj = api.get(_RESOURCES[kind], namespace, name)
        field = "; ".join(fields)
        if obj is None:
            missing.append(f"{kind} {name!r} ({field})")
        elif kind == SECRET and (absent := [key for key in keys if key not in _keys(obj)]):
            missing.append(f"key {', '.join(map(repr, absent))} of Secret {name!r} ({field}; it has: "
                           f"{', '.join(sorted(_keys(obj))) or 'no keys'})")
        else:
            continue
        kinds.add(kind)
    if not missing:
        return None
    reason = f"{kinds.pop()}NotFound" if len(kinds) == 1 else "ReferencesNotFound"
    return Missing(reason, f"{', '.join(missing)} not found in namespace {namespace}; create it or fix the "
                           "reference")


def require_references(ctx: Context, body: dict[str, Any], writer: StatusWriter, namespace: str,
                       references: Iterable[Reference], waiting: dict[str, Any]) -> dict[str, Any]:
    """The `ReferencesFound` condition (True) when everything named exists. Otherwise records the wait (the
    condition False, the `waiting` status fields, an Event when what is missing changed) and raises
    `kopf.TemporaryError`: kopf retries after `ctx.wait_delay`, so creating the object is enough to proceed."""
    generation = body["metadata"].get("generation")
    missing = missing_references(ctx.api, namespace, references)
    if missing is None:
        return condition(CONDITION, True, CONDITION, FOUND_MESSAGE, generation)
    conditions = (body.get("status") or {}).get("conditions") or []
    was: dict[str, Any] = next((c for c in conditions if c.get("type") == CONDITION), {})
    writer.write(StatusUpdate(fields=waiting,
                              conditions=[condition(CONDITION, False, missing.reason, missing.message, generation)]))
    if (was.get("status"), was.get("message")) != ("False", missing.message):
        ctx.event(body, "Warning", missing.reason, missing.message)
    raise kopf.TemporaryError(missing.message, delay=ctx.wait_delay)
