"""Reconcile a StudentDeployment: wait for its job's model, then the router config, Deployment, Service, HPA."""

from __future__ import annotations

import contextlib
from typing import Any

import kopf
from pydantic import ValidationError

from kubedistill.api import StudentDeployment
from kubedistill.api.studentdeployment import RouterTier
from kubedistill_operator import naming
from kubedistill_operator.builders import ModelSourceInfo, build_student_children
from kubedistill_operator.kubeapi import DEPLOYMENTS, DISTILLATION_JOBS, HPAS, STUDENT_DEPLOYMENTS
from kubedistill_operator.reconcile.context import ApiStatusWriter, Context
from kubedistill_operator.reconcile.parsing import parse_or_refuse
from kubedistill_operator.reconcile.references import require_references, student_references
from kubedistill_operator.status.conditions import StatusUpdate
from kubedistill_operator.status.student import (
    DEFAULT_SIGNAL,
    Waiting,
    resolve_job_source,
    serving_status,
    source_status,
    waiting_status,
    with_tiers,
)


def resolve_source(ctx: Context, sd: StudentDeployment, job: dict[str, Any] | None) -> ModelSourceInfo | Waiting:
    """What to serve now: the job's artifact (once it succeeded and passed its gate) or the spec's URI."""
    source = sd.spec.source
    if source.job_ref is None:
        return ModelSourceInfo.from_uri(sd)
    s3_secret = source.s3_credentials_secret
    if s3_secret is None and job is not None:
        output = (job.get("spec") or {}).get("output") or {}
        if str(output.get("uri", "")).startswith("s3://"):
            s3_secret = output.get("s3CredentialsSecret")
    router = sd.spec.router
    outcome = resolve_job_source(sd.metadata.name, job, router.threshold, s3_secret, router.confidence_signal,
                                 router.mode, sd.spec.triton.backend)
    if isinstance(outcome, ModelSourceInfo) and router.tiers and job is not None:
        # The spec's own order is checked by the API; the job's recommended thresholds only now.
        return with_tiers(outcome, job, router.tiers, router.threshold, router.confidence_signal)
    return outcome


def _served(sd: StudentDeployment, status: dict[str, Any]) -> ModelSourceInfo | None:
    """The model already being served (from status), kept while a newer one is not ready."""
    uri, version = status.get("modelRepositoryUri"), status.get("modelVersion")
    if not uri or not version:
        return None
    threshold = sd.spec.router.threshold if sd.spec.router.threshold is not None else status.get("threshold")
    return ModelSourceInfo(uri, version, threshold, sd.spec.source.s3_credentials_secret)


def reconcile_student(ctx: Context, body: dict[str, Any]) -> None:
    namespace, name = body["metadata"].get("namespace") or "default", body["metadata"]["name"]
    with ctx.lock(STUDENT_DEPLOYMENTS.plural, namespace, name):  # its own handler and its job's events
        _reconcile_student(ctx, namespace, name)


def _reconcile_student(ctx: Context, namespace: str, name: str) -> None:
    fresh = ctx.api.get(STUDENT_DEPLOYMENTS, namespace, name)  # the status of the handler's body may be old
    if fresh is None:
        return
    body = fresh
    writer = ApiStatusWriter(ctx.api, STUDENT_DEPLOYMENTS, namespace, name, body)
    status = body.get("status") or {}
    sd = parse_or_refuse(ctx, body, writer, StudentDeployment, phase="Degraded", condition_type="Ready")
    job = None
    if sd.spec.source.job_ref is not None:
        job = ctx.api.get(DISTILLATION_JOBS, namespace, sd.spec.source.job_ref.name)
    outcome = resolve_source(ctx, sd, job)

    if isinstance(outcome, Waiting):
        served = _served(sd, status)
        was: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "ModelAvailable"), {})
        writer.write(waiting_status(body, outcome, deployed=served is not None))
        if was.get("reason") != outcome.reason:
            ctx.event(body, "Normal" if outcome.reason == "JobNotSucceeded" else "Warning", outcome.reason,
                      outcome.message)
        if outcome.refused:
            # Only a change of this spec or of the job clears it; both re-reconcile (the update handler, the
            # job's events). What is deployed, if anything, is left exactly as it is.
            return
        if served is None:
            # Every reason to wait comes from the job (or this spec): the job's events reconcile this deployment
            # when it changes in a way that matters (reconcile_students_of_job), so nothing is retried on a timer
            # and a waiting deployment costs no call while its job runs.
            return
        source = served  # keep serving the previous model; spec changes still apply to it
    else:
        source = outcome

    found = require_references(ctx, body, writer, namespace, student_references(sd, source),
                               waiting={} if status.get("modelRepositoryUri") else {"phase": "Waiting"})

    deployment = None
    for child in build_student_children(sd, source, ctx.config):
        if child["kind"] == "Deployment" and sd.spec.autoscaling is not None:
            child["spec"].pop("replicas", None)  # the HPA owns the replica count
        applied = ctx.api.apply(child)
        if child["kind"] == "Deployment":
            deployment = applied
    # Only an HPA the operator created (recorded in status) is deleted when autoscaling is turned off: a delete
    # on every reconcile would cost a call (a 404) per deployment that never had one.
    autoscaler = naming.hpa_name(name) if sd.spec.autoscaling is not None else None
    if autoscaler is None and status.get("autoscalerName"):
        ctx.api.delete(HPAS, namespace, status["autoscalerName"])
    assert deployment is not None

    if status.get("modelVersion") != source.model_version:
        ctx.event(body, "Normal", "ModelDeployed",
                  f"serving {source.model_repository_uri} (version {source.model_version})")
    updates = [
        StatusUpdate(conditions=[found]),
        source_status(body, source, sd.spec.service.port) if not isinstance(outcome, Waiting) else StatusUpdate(),
        serving_status(body, deployment),
    ]
    merged = StatusUpdate()
    for update in updates:
        merged.fields.update(update.fields)
        merged.conditions.extend(update.conditions)
    if not isinstance(outcome, Waiting):
        merged.fields["modelVersion"] = source.model_version
    merged.fields["autoscalerName"] = autoscaler
    writer.write(merged)


def refresh_student(ctx: Context, namespace: str, name: str, deployment: dict[str, Any] | None = None) -> None:
    """Copy the Deployment's state into the status (level-based); recreate the Deployment when it is gone."""
    with ctx.lock(STUDENT_DEPLOYMENTS.plural, namespace, name):
        _refresh_student(ctx, namespace, name, deployment)


def _refresh_student(ctx: Context, namespace: str, name: str, deployment: dict[str, Any] | None) -> None:
    body = ctx.api.get(STUDENT_DEPLOYMENTS, namespace, name)
    if body is None:
        return
    status = body.get("status") or {}
    if not status.get("deploymentName"):
        return  # nothing deployed yet
    if deployment is None:
        deployment = ctx.api.get(DEPLOYMENTS, namespace, status["deploymentName"])
    if deployment is None:
        with contextlib.suppress(kopf.TemporaryError):  # the deployment's own handler retries it
            reconcile_student(ctx, body)
        return
    update = serving_status(body, deployment)
    ApiStatusWriter(ctx.api, STUDENT_DEPLOYMENTS, namespace, name, body).write(update)
    old, new = status.get("phase"), update.fields["phase"]
    if new != old:
        ready = update.conditions[0]
        ctx.event(body, "Warning" if new == "Degraded" else "Normal", ready["reason"] if new != "Ready" else "Ready",
                  ready["message"])


def job_change_matters(sd_body: dict[str, Any], job_body: dict[str, Any] | None) -> bool:
    """Whether a change of the job changes what the deployment should serve (or why it waits)."""
    status = sd_body.get("status") or {}
    spec = sd_body.get("spec") or {}
    router = spec.get("router") or {}
    signal = router.get("confidenceSignal") or DEFAULT_SIGNAL
    outcome = resolve_job_source(sd_body["metadata"]["name"], job_body, router.get("threshold"), None,
                                 signal, router.get("mode") or "route",
                                 (spec.get("triton") or {}).get("backend") or "auto")
    if not isinstance(outcome, Waiting) and router.get("tiers") and job_body is not None:
        with contextlib.suppress(ValidationError):  # an invalid spec is the deployment's own handler's to report
            tiers = [RouterTier.model_validate(t) for t in router["tiers"]]
            outcome = with_tiers(outcome, job_body, tiers, router.get("threshold"), signal)
    if isinstance(outcome, Waiting):
        current: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "ModelAvailable"), {})
        return not (current.get("status") == "False" and current.get("reason") == outcome.reason)
    return (status.get("modelRepositoryUri"), status.get("modelVersion"), status.get("threshold")) != \
        (outcome.model_repository_uri, outcome.model_version, outcome.threshold)


def reconcile_student_by_name(ctx: Context, namespace: str, name: str) -> None:
    """From a change of the job: reconcile the deployment (it reads itself; waiting is not an error here)."""
    # Missing references (kopf.TemporaryError) are left to the deployment's own handler, which retries them.
    with contextlib.suppress(kopf.TemporaryError), ctx.lock(STUDENT_DEPLOYMENTS.plural, namespace, name):
        _reconcile_student(ctx, namespace, name)


def reconcile_students_of_job(ctx: Context, namespace: str, students: list[dict[str, Any]],
                              job: dict[str, Any] | None) -> None:
    """After an event of a job (None: deleted): reconcile those of its StudentDeployments (bodies as last
    indexed) whose model or waiting reason the change affects."""
    for student in students:
        if job_change_matters(student, job):
            reconcile_student_by_name(ctx, namespace, student["metadata"]["name"])
