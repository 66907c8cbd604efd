"""A DistillationJob's phase and conditions, derived from its RayJob and the results the pipeline reported.

KubeRay's RayJob has no `conditions` (kuberay #5152) and its two status fields can contradict each other
(#2314: `jobDeploymentStatus: Running` next to `jobStatus: FAILED`), so the phase is derived from
`jobDeploymentStatus`, `jobStatus` and `reason` together, and a failed RayJob never shows as Running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubedistill.api.distillationjob import JobResults
from kubedistill_operator.status.conditions import StatusUpdate, condition, now_iso

TERMINAL_PHASES = ("Succeeded", "Failed")
# The reason of a job whose pipeline reported a permanent (input) failure.
INVALID_INPUT = "InvalidInput"
# jobDeploymentStatus values during which a stale jobStatus (from a previous attempt) means nothing yet.
_STARTING = ("", "New", "Initializing", "Waiting", "Scheduling", "Scheduled", "Validated", "Retrying")


@dataclass(frozen=True)
class RunState:
    phase: str  # Pending, Running, Succeeded, Failed
    reason: str
    message: str


def ray_job_state(ray_job: dict[str, Any]) -> RunState:
    """The run's state as one phase, whatever combination of RayJob fields KubeRay reports."""
    name = ray_job.get("metadata", {}).get("name", "")
    status = ray_job.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    reason = status.get("reason") or ""
    detail = status.get("message") or ""
    where = f"RayJob {name}: jobDeploymentStatus={deployment or 'none'}, jobStatus={job_status or 'none'}"
    if reason:
        where += f", reason={reason}"
    if detail:
        where += f": {detail}"

    if deployment == "Failed":
        return RunState("Failed", reason or "RayJobFailed", where)
    if deployment == "Complete":
        if job_status == "SUCCEEDED":
            return RunState("Succeeded", "PipelineSucceeded", where)
        return RunState("Failed", reason or "PipelineFailed", where)
    if job_status in ("FAILED", "STOPPED") and deployment not in _STARTING:
        return RunState("Failed", reason or "PipelineFailed", where)
    if deployment == "Retrying":
        return RunState("Pending", "Retrying", where)
    if deployment in ("Suspending", "Suspended"):
        return RunState("Pending", "Suspended", where)
    if deployment == "Running" and job_status == "RUNNING":
        return RunState("Running", "PipelineRunning", where)
    if deployment == "Running":
        return RunState("Pending", "Submitting", where)
    return RunState("Pending", "ClusterStarting", where)


def gate_message(spec: dict[str, Any], results: JobResults | None) -> str:
    """Why the gate failed, with how far retention fell short."""
    minimum = (((spec.get("evaluation") or {}).get("gate")) or {}).get("minRetention")
    retention = results.retention if results else None
    where = f"; artifacts are kept at {results.artifact_uri}" if results and results.artifact_uri else ""
    if isinstance(minimum, int | float) and retention is not None:
        return (f"retention {retention:.4f} is {minimum - retention:.4f} below evaluation.gate.minRetention "
                f"{minimum:g}{where}")
    return f"the evaluation gate did not pass{where}"


def run_failure(status: dict[str, Any]) -> dict[str, Any] | None:
    """The failure the pipeline reported for the current run (status.rayJobName); None for none, or one of an
    earlier run."""
    failure = status.get("failure")
    if not isinstance(failure, Mapping) or not failure.get("message"):
        return None
    run = status.get("rayJobName")
    if not run or failure.get("rayJobName") != run:
        return None
    return dict(failure)


def permanent_failure(status: dict[str, Any]) -> dict[str, Any] | None:
    """The current run's failure when it is an input error that no retry can fix."""
    failure = run_failure(status)
    return failure if failure is not None and failure.get("permanent") is True else None


def failure_message(failure: dict[str, Any]) -> str:
    where = f" in stage {failure['stage']}" if failure.get("stage") else ""
    return f"the pipeline failed{where}: {failure['message']}"


def invalid_input_status(job: dict[str, Any], failure: dict[str, Any], ray_job: dict[str, Any] | None,
                         now: str) -> StatusUpdate:
    """Failed for good: the pipeline found the input unworkable. Only a spec change (a new generation) runs
    the job again; the run's RayJob is deleted, so no retry starts another Ray cluster."""
    status = job.get("status") or {}
    generation = job.get("metadata", {}).get("generation")
    message = (f"{failure_message(failure)}; retries are stopped (the same input fails the same way): fix the "
               "spec and apply it to run again")
    ray_status = (ray_job or {}).get("status") or {}
    fields: dict[str, Any] = {
        "phase": "Failed",
        "observedGeneration": generation,
        "startTime": status.get("startTime") or ray_status.get("startTime") or failure.get("time") or now,
        "completionTime": status.get("completionTime") or failure.get("time") or now,
    }
    progress = final_progress(status.get("progress"), "Failed")
    if progress is not None:
        fields["progress"] = progress
    return StatusUpdate(fields=fields, conditions=[
        condition("Running", False, INVALID_INPUT, message, generation),
        condition("Succeeded", False, INVALID_INPUT, message, generation),
    ])


def final_progress(progress: Any, phase: str) -> dict[str, Any] | None:
    """The merge-patch that makes a finished job's `status.progress` true (None: it already is).

    The pipeline's last progress update may have been throttled away, or never sent (a killed pod): a job
    that ended has no time remaining, and a Succeeded one is complete (100 %, its training step no longer
    current). A Failed one keeps where it stopped."""
    if not isinstance(progress, dict) or not progress:
        return None
    wanted: dict[str, Any] = {"estimatedRemainingSeconds": None}
    if phase == "Succeeded":
        wanted |= {"percent": 100.0, "step": None, "totalSteps": None}
    patch = {key: value for key, value in wanted.items() if progress.get(key) != value}
    return patch or None


def job_status(job: dict[str, Any], ray_job: dict[str, Any] | None, now: str | None = None) -> StatusUpdate:
    """The status a job should show now. `ray_job` is the run named in status.rayJobName (None: absent).

    A permanent failure the pipeline reported for this run wins over whatever the RayJob shows (between two
    retries KubeRay reports Retrying, not Failed); a transient one is added to the message once KubeRay gives
    up on the run."""
    now = now or now_iso()
    status = job.get("status") or {}
    generation = job.get("metadata", {}).get("generation")
    permanent = permanent_failure(status)
    if permanent is not None:
        return invalid_input_status(job, permanent, ray_job, now)
    if ray_job is None:
        if status.get("phase") in TERMINAL_PHASES:  # a finished run keeps its status after KubeRay's TTL
            progress = final_progress(status.get("progress"), status["phase"])
            return StatusUpdate(fields={"progress": progress} if progress is not None else {})
        return StatusUpdate(
            fields={"phase": "Pending"},
            conditions=[condition("Running", False, "RayJobPending", "the RayJob is being created", generation),
                        condition("Succeeded", None, "RayJobPending", "the RayJob is being created", generation)],
        )

    state = ray_job_state(ray_job)
    results = JobResults.from_status(status)
    phase, reason, message = state.phase, state.reason, state.message
    if phase == "Succeeded":
        if results is None:
            phase, reason = "Failed", "ResultsMissing"
            message = ("the pipeline finished but reported no results to status.results; see pipeline.log in "
                       f"the output folder ({state.message})")
        elif results.gate_passed is False:
            phase, reason, message = "Failed", "GateNotMet", gate_message(job.get("spec") or {}, results)
        else:
            reason = "Succeeded"
            parts = [f"retention {results.retention:.4f}" if results.retention is not None else None,
                     f"cost ratio {results.cost_ratio:g}x" if results.cost_ratio is not None else None,
                     f"payback {results.payback_days:g} days" if results.payback_days is not None else None,
                     f"artifact {results.artifact_uri}" if results.artifact_uri else None]
            message = ", ".join(p for p in parts if p) or "the pipeline succeeded"
    elif phase == "Failed":
        failure = run_failure(status)
        if failure is not None:
            message = f"{message}; {failure_message(failure)}"

    ray_status = ray_job.get("status") or {}
    fields: dict[str, Any] = {"phase": phase, "observedGeneration": generation}
    start = ray_status.get("startTime") or status.get("startTime")
    if start is None and phase != "Pending":
        start = now
    fields["startTime"] = start
    if phase in TERMINAL_PHASES:
        fields["completionTime"] = ray_status.get("endTime") or status.get("completionTime") or now
        progress = final_progress(status.get("progress"), phase)
        if progress is not None:
            fields["progress"] = progress
    failed = int(ray_status.get("failed") or 0)
    fields["attempt"] = max(1, failed + (0 if phase in TERMINAL_PHASES else 1))

    if phase == "Succeeded":
        succeeded = condition("Succeeded", True, reason, message, generation)
    elif phase == "Failed":
        succeeded = condition("Succeeded", False, reason, message, generation)
    else:
        succeeded = condition("Succeeded", None, reason, message, generation)
    conditions = [
        condition("Running", phase == "Running", reason if phase != "Running" else "PipelineRunning",
                  message, generation),
        succeeded,
    ]
    if results is not None and results.gate_passed is not None:
        passed = results.gate_passed
        conditions.append(condition(
            "GatePassed", passed, "GatePassed" if passed else "GateNotMet",
            "the evaluation gate passed" if passed else gate_message(job.get("spec") or {}, results), generation,
        ))
    return StatusUpdate(fields=fields, conditions=conditions)


def new_run_status(ray_job_name: str, config_map: str, account: str, generation: int | None,
                   teacher_uri: str | None = None) -> StatusUpdate:
    """The status recorded before a run's RayJob is created: its name first, so a restart finds it, and the
    teacher resolved from teacher.jobRef (None: the spec names its teacher itself).

    A new run clears the previous run's progress, metrics, results and times."""
    message = f"RayJob {ray_job_name} is being created"
    return StatusUpdate(
        fields={
            "phase": "Pending",
            "rayJobName": ray_job_name,
            "configMapName": config_map,
            "serviceAccountName": account,
            "observedGeneration": generation,
            "startTime": None,
            "completionTime": None,
            "attempt": None,
            "progress": None,
            "metrics": None,
            "results": None,
            "failure": None,
            "teacherUri": teacher_uri,
        },
        conditions=[condition("Running", False, "RayJobCreating", message, generation),
                    condition("Succeeded", None, "RayJobCreating", message, generation)],
    )
