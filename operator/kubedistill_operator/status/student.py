"""A StudentDeployment's status: whether its model is available (the job's state) and how its pods are doing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kubedistill.api.distillationjob import JobResults
from kubedistill.api.studentdeployment import RouterTier, fill_tier_thresholds, tier_order_problem
from kubedistill_operator import naming
from kubedistill_operator.builders.student import ModelSourceInfo
from kubedistill_operator.status.conditions import StatusUpdate, condition
from kubedistill_operator.status.job import gate_message

DEFAULT_SIGNAL = "max-probability"  # the signal a job's status.results.recommendedThreshold is for
# Waiting reasons that only a change of the StudentDeployment or of its job can clear: no timed retry.
REFUSALS = ("UnsupportedTask", "UnsupportedBackend", "ThresholdRequired", "TiersOutOfOrder", "TierThresholdRequired")


@dataclass(frozen=True)
class Waiting:
    """Why there is no model to serve yet."""

    reason: str  # JobNotFound, JobNotSucceeded, GateNotMet, or a refusal (REFUSALS)
    message: str

    @property
    def refused(self) -> bool:
        return self.reason in REFUSALS


SERVED_TASKS = ("sequence-classification", "causal-lm")  # the router's handlers (KServe v1, OpenAI-compatible)


def unsupported_task(job: dict[str, Any], backend: str = "auto") -> Waiting | None:
    """A job whose task the router has no handler for (its router would exit at start), or that the Triton
    backend cannot serve (vLLM serves causal-lm students only)."""
    task = (((job.get("spec") or {}).get("task")) or {}).get("type")
    name = job["metadata"]["name"]
    if backend == "vllm" and task is not None and task != "causal-lm":
        return Waiting("UnsupportedBackend", f"spec.triton.backend: vllm serves causal-lm students, and "
                       f"DistillationJob {name} is a {task} job; use triton.backend auto")
    if task is None or task in SERVED_TASKS:
        return None
    return Waiting("UnsupportedTask", f"spec.source.jobRef: DistillationJob {name} is a {task} job, and the router "
                   f"serves {' and '.join(SERVED_TASKS)} jobs only; point spec.source.jobRef at one of those")


def job_threshold(job: dict[str, Any], results: JobResults, threshold: float | None, signal: str,
                  mode: str) -> float | Waiting | None:
    """The routing threshold: the spec's own, else the job's recommendation for the router's signal.

    `recommendedThreshold` is computed for max-probability; another signal takes its own from
    `recommendedThresholds`, and without one a routing router is refused (as `kubedistill serve` does)."""
    if threshold is not None:
        return threshold
    per_signal = results.recommended_thresholds or {}
    if signal in per_signal:
        return per_signal[signal]
    if signal == DEFAULT_SIGNAL:
        return results.recommended_threshold
    if mode != "route":
        return None  # only `route` escalates on the threshold
    recommended = results.recommended_threshold
    recommends = f"recommends {recommended} for" if recommended is not None else "recommends a threshold for"
    return Waiting("ThresholdRequired", f"spec.router.threshold: unset, and DistillationJob "
                   f"{job['metadata']['name']} {recommends} the {DEFAULT_SIGNAL} signal, not {signal}; set "
                   f"spec.router.threshold or use confidenceSignal {DEFAULT_SIGNAL}")


def resolve_job_source(sd_name: str, job: dict[str, Any] | None, threshold: float | None,
                       s3_secret: str | None, signal: str = DEFAULT_SIGNAL,
                       mode: str = "route", backend: str = "auto") -> ModelSourceInfo | Waiting:
    """What a deployment with `source.jobRef` serves: the job's artifact once it succeeded and passed its gate,
    with the threshold for the router's confidence signal. A job the router cannot serve is refused up front."""
    if job is None:
        return Waiting("JobNotFound", f"DistillationJob not found in this namespace (StudentDeployment {sd_name} "
                       "refers to it in spec.source.jobRef.name); create it or fix the name")
    unsupported = unsupported_task(job, backend)
    if unsupported is not None:
        return unsupported
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    results = JobResults.from_status(status)
    phase = status.get("phase") or "Pending"
    if results is not None and results.gate_passed is False:
        return Waiting("GateNotMet", f"DistillationJob {name} did not pass its gate: "
                       f"{gate_message(job.get('spec') or {}, results)}")
    if phase != "Succeeded":
        detail = ""
        for c in status.get("conditions") or []:
            if c.get("type") == "Succeeded" and c.get("reason"):
                detail = f" ({c['reason']})"
        return Waiting("JobNotSucceeded", f"DistillationJob {name} is {phase}{detail}; waiting for it to succeed")
    generation = job["metadata"].get("generation")
    if status.get("observedGeneration") is not None and generation is not None \
            and status["observedGeneration"] != generation:
        return Waiting("JobNotSucceeded", f"DistillationJob {name} changed; waiting for its new run")
    if results is None or not results.artifact_uri:
        return Waiting("JobNotSucceeded", f"DistillationJob {name} succeeded without status.results.artifactUri")
    uri = results.artifact_uri
    version = results.model_version or status.get("rayJobName") or "unversioned"
    resolved = job_threshold(job, results, threshold, signal, mode)
    if isinstance(resolved, Waiting):
        return resolved
    return ModelSourceInfo(
        model_repository_uri=uri,
        model_version=str(version),
        threshold=resolved,
        s3_credentials_secret=s3_secret,
    )


def with_tiers(outcome: ModelSourceInfo, job: dict[str, Any], tiers: list[RouterTier], threshold: float | None,
               signal: str) -> ModelSourceInfo | Waiting:
    """router.tiers with each unset threshold taken from the job's cascade (status.results.cascadeThresholds, by
    tier name), checked in order. When the job's cascade fills a tier and the spec leaves router.threshold unset,
    the student's threshold is the cascade's too: the thresholds were recommended together."""
    name = job["metadata"]["name"]
    results = JobResults.from_status(job.get("status") or {})
    recommended = results.cascade_thresholds if results is not None else None
    filled = fill_tier_thresholds(tiers, recommended, signal, f"DistillationJob {name}")
    if isinstance(filled, str):
        return Waiting("TierThresholdRequired", f"spec.{filled}")
    student = outcome.threshold
    if threshold is None and recommended and "student" in recommended and any(t.threshold is None for t in tiers):
        student = recommended["student"]
    problem = tier_order_problem(filled, student)
    if problem is not None:
        return Waiting("TiersOutOfOrder", f"{problem} (the job recommends {student} for the student): lower the "
                       "tiers' thresholds or set spec.router.threshold")
    return replace(outcome, threshold=student, tiers=tuple(filled))


def waiting_status(sd: dict[str, Any], waiting: Waiting, deployed: bool) -> StatusUpdate:
    """No (new) model to serve. A deployment already serving keeps its phase: the old model stays up."""
    generation = sd.get("metadata", {}).get("generation")
    conditions = [condition("ModelAvailable", False, waiting.reason, waiting.message, generation)]
    fields: dict[str, Any] = {"observedGeneration": generation}
    if not deployed:
        fields["phase"] = "Waiting"
        conditions.append(condition("Ready", False, waiting.reason, waiting.message, generation))
    return StatusUpdate(fields=fields, conditions=conditions)


def source_status(sd: dict[str, Any], source: ModelSourceInfo, port: int) -> StatusUpdate:
    """What is being served and where, once the children are applied."""
    meta = sd["metadata"]
    name = meta["name"]
    generation = meta.get("generation")
    return StatusUpdate(
        fields={
            "observedGeneration": generation,
            "endpoint": naming.endpoint(name, meta.get("namespace") or "default", port),
            "modelRepositoryUri": source.model_repository_uri,
            "threshold": source.threshold,
            "tierThresholds": {t.name: t.threshold for t in source.tiers} if source.tiers else None,
            "deploymentName": naming.deployment_name(name),
            "serviceName": naming.service_name(name),
        },
        conditions=[condition("ModelAvailable", True, "ModelAvailable",
                              f"serving {source.model_repository_uri} (version {source.model_version})",
                              generation)],
    )


def deployment_phase(deployment: dict[str, Any], previous_phase: str | None) -> tuple[str, str, str]:
    """Progressing, Ready or Degraded, with a reason and message, from a Deployment's status."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    failure = conditions.get("ReplicaFailure") or {}
    counts = f"{ready}/{desired} replicas ready"
    if progressing.get("status") == "False":
        return "Degraded", progressing.get("reason") or "ProgressDeadlineExceeded", \
            f"{counts}: {progressing.get('message') or 'the rollout stalled'}"
    if failure.get("status") == "True":
        return "Degraded", failure.get("reason") or "ReplicaFailure", \
            f"{counts}: {failure.get('message') or 'pods cannot be created'}"
    generation = deployment.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    rolled_out = (generation is None or observed is None or observed >= generation) and updated >= desired
    if rolled_out and ready >= desired and available >= desired:
        return "Ready", "Ready", counts
    if rolled_out and previous_phase in ("Ready", "Degraded"):
        return "Degraded", "ReplicasUnavailable", counts
    return "Progressing", "RollingOut", counts


def serving_status(sd: dict[str, Any], deployment: dict[str, Any]) -> StatusUpdate:
    """Phase, replica counts and the served model version, from the Deployment."""
    generation = sd.get("metadata", {}).get("generation")
    previous = (sd.get("status") or {}).get("phase")
    phase, reason, message = deployment_phase(deployment, previous)
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    annotations = ((((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {})
                   .get("annotations") or {})
    fields: dict[str, Any] = {
        "phase": phase,
        "replicas": desired,
        "readyReplicas": ready,
        "ready": f"{ready}/{desired}",
    }
    version = annotations.get(naming.MODEL_VERSION_ANNOTATION)
    if version:
        fields["modelVersion"] = version
    return StatusUpdate(fields=fields, conditions=[condition("Ready", phase == "Ready", reason, message,
                                                             generation)])
