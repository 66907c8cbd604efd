"""Status logic as pure functions: RayJob and Deployment states in, phases and conditions out."""

from __future__ import annotations

from typing import Any

import pytest
from kubedistill_operator.builders import ModelSourceInfo
from kubedistill_operator.status.conditions import StatusUpdate, condition, merge_conditions
from kubedistill_operator.status.job import job_status, ray_job_state
from kubedistill_operator.status.student import (
    Waiting,
    deployment_phase,
    resolve_job_source,
    serving_status,
    source_status,
    waiting_status,
)
from kubedistill_patches import merge_patch

NOW = "2026-11-23T12:00:00Z"


def ray_job(deployment: str | None, job: str | None = None, reason: str | None = None,
            **extra: Any) -> dict[str, Any]:
    status = {k: v for k, v in {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason}.items() if v}
    return {"metadata": {"name": "bbc-g1"}, "status": {**status, **extra}}


def dj(status: dict[str, Any] | None = None, min_retention: float = 0.95) -> dict[str, Any]:
    return {"metadata": {"name": "bbc", "namespace": "ml", "generation": 1},
            "spec": {"evaluation": {"gate": {"minRetention": min_retention}}},
            "status": {"rayJobName": "bbc-g1", **(status or {})}}


@pytest.mark.parametrize(("deployment", "job", "reason", "phase"), [
    (None, None, None, "Pending"),
    ("Initializing", None, None, "Pending"),
    ("Running", "PENDING", None, "Pending"),
    ("Running", "RUNNING", None, "Running"),
    ("Complete", "SUCCEEDED", None, "Succeeded"),
    ("Complete", "FAILED", None, "Failed"),
    ("Failed", "FAILED", "AppFailed", "Failed"),
    ("Failed", None, "SubmissionFailed", "Failed"),
    ("Failed", "RUNNING", "DeadlineExceeded", "Failed"),  # the deadline hit while the job still ran
    ("Running", "FAILED", None, "Failed"),  # kuberay #2314: the two fields contradict each other
    ("Running", "STOPPED", None, "Failed"),
    ("Retrying", "FAILED", None, "Pending"),  # a retry resumes: the old attempt's FAILED is stale
    ("Initializing", "FAILED", None, "Pending"),
    ("Suspended", None, None, "Pending"),
])
def test_ray_job_state_never_shows_a_failed_run_as_running(deployment, job, reason, phase):
    state = ray_job_state(ray_job(deployment, job, reason))
    assert state.phase == phase
    if reason and phase == "Failed":
        assert state.reason == reason
    assert "bbc-g1" in state.message


def test_running_job_status_and_conditions():
    update = job_status(dj(), ray_job("Running", "RUNNING", startTime="2026-11-23T11:00:00Z"), NOW)
    assert update.fields["phase"] == "Running"
    assert update.fields["startTime"] == "2026-11-23T11:00:00Z"
    assert update.fields["observedGeneration"] == 1 and update.fields["attempt"] == 1
    assert "completionTime" not in update.fields
    conditions = {c["type"]: c for c in update.conditions}
    assert conditions["Running"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "Unknown"


def test_success_with_results_and_gate_passed():
    results = {"gatePassed": True, "retention": 0.971, "artifactUri": "pvc://m/j/model_repository"}
    update = job_status(dj({"results": results}),
                        ray_job("Complete", "SUCCEEDED", endTime="2026-11-23T11:30:00Z"), NOW)
    assert update.fields["phase"] == "Succeeded"
    assert update.fields["completionTime"] == "2026-11-23T11:30:00Z"
    conditions = {c["type"]: c for c in update.conditions}
    assert conditions["Succeeded"]["status"] == "True" and "0.9710" in conditions["Succeeded"]["message"]
    assert conditions["GatePassed"]["status"] == "True"
    assert conditions["Running"]["status"] == "False"
    assert "cost ratio" not in conditions["Succeeded"]["message"]  # no evaluation.economics


def test_success_message_carries_the_economics_headline():
    results = {"gatePassed": True, "retention": 0.971, "artifactUri": "pvc://m/j/model_repository",
               "costRatio": 11.62, "paybackDays": 0.35}
    update = job_status(dj({"results": results}), ray_job("Complete", "SUCCEEDED"), NOW)
    message = {c["type"]: c for c in update.conditions}["Succeeded"]["message"]
    assert "cost ratio 11.62x" in message and "payback 0.35 days" in message


def test_gate_not_met_fails_the_job_and_says_by_how_much():
    results = {"gatePassed": False, "retention": 0.912, "artifactUri": "s3://b/j/model_repository"}
    update = job_status(dj({"results": results}), ray_job("Complete", "SUCCEEDED"), NOW)
    assert update.fields["phase"] == "Failed"
    conditions = {c["type"]: c for c in update.conditions}
    assert conditions["Succeeded"]["reason"] == "GateNotMet"
    assert "0.0380 below evaluation.gate.minRetention 0.95" in conditions["Succeeded"]["message"]
    assert "s3://b/j/model_repository" in conditions["Succeeded"]["message"]
    assert conditions["GatePassed"]["status"] == "False"
    assert update.fields["completionTime"] == NOW


def test_success_without_results_is_a_failure_with_a_reason():
    update = job_status(dj(), ray_job("Complete", "SUCCEEDED"), NOW)
    assert update.fields["phase"] == "Failed"
    assert update.conditions[1]["reason"] == "ResultsMissing"


def test_failed_run_carries_kuberays_reason_and_attempts():
    update = job_status(dj(), ray_job("Failed", "FAILED", "AppFailed", failed=3, message="exit 1"), NOW)
    assert update.fields["phase"] == "Failed" and update.fields["attempt"] == 3
    succeeded = update.conditions[1]
    assert succeeded["reason"] == "AppFailed" and "exit 1" in succeeded["message"]


def test_finished_job_keeps_its_status_when_the_ray_job_is_gone():
    assert job_status(dj({"phase": "Succeeded"}), None, NOW) == StatusUpdate()
    pending = job_status(dj({"phase": "Running"}), None, NOW)
    assert pending.fields["phase"] == "Pending"


# The pipeline's last progress patch before its end was throttled away: training step, ETA, 95 %.
STALE = {"stage": "export", "percent": 95.0, "step": 300, "totalSteps": 300, "estimatedRemainingSeconds": 40}
STOPPED = {k: v for k, v in STALE.items() if k != "estimatedRemainingSeconds"}  # where a failed run stopped
SUCCESS = {"gatePassed": True, "retention": 0.97, "artifactUri": "pvc://m/j/model_repository"}


@pytest.mark.parametrize(("status", "ray", "progress"), [
    ({"results": SUCCESS}, ray_job("Complete", "SUCCEEDED"), {"stage": "export", "percent": 100.0}),
    ({}, ray_job("Failed", "FAILED", "AppFailed"), STOPPED),
    ({"failure": {"stage": "train", "permanent": True, "rayJobName": "bbc-g1", "message": "bad"}},
     ray_job("Running", "RUNNING"), STOPPED),
    ({"phase": "Succeeded"}, None, {"stage": "export", "percent": 100.0}),  # the RayJob already gone
])
def test_a_finished_job_shows_true_progress_whatever_was_throttled(status, ray, progress):
    current = {"rayJobName": "bbc-g1", "progress": STALE, **status}
    update = job_status(dj(current), ray, NOW)
    after = merge_patch(current, update.fields)
    assert after["progress"] == progress
    # Once true, it stays: the next event writes no progress again (no write loop).
    assert "progress" not in job_status(dj(after), ray, NOW).fields


def test_a_running_job_keeps_the_pipelines_progress():
    update = job_status(dj({"progress": STALE}), ray_job("Running", "RUNNING"), NOW)
    assert "progress" not in update.fields


INPUT_ERROR = {"stage": "prepare", "error": "PreflightError", "permanent": True, "rayJobName": "bbc-g1",
               "message": "training.batchSize: 1 is smaller than the 2 training workers",
               "time": "2026-11-23T11:30:00Z"}


@pytest.mark.parametrize("ray", [ray_job("Retrying", "FAILED", failed=1), ray_job("Running", "RUNNING"), None])
def test_a_permanent_failure_of_this_run_fails_the_job_whatever_kuberay_shows(ray):
    update = job_status(dj({"failure": INPUT_ERROR, "phase": "Running"}), ray, NOW)
    assert update.fields["phase"] == "Failed" and update.fields["completionTime"] == "2026-11-23T11:30:00Z"
    succeeded = {c["type"]: c for c in update.conditions}["Succeeded"]
    assert succeeded["status"] == "False" and succeeded["reason"] == "InvalidInput"
    assert "in stage prepare: training.batchSize: 1 is smaller" in succeeded["message"]
    again = job_status(dj({"failure": INPUT_ERROR, "phase": "Failed", "completionTime": "2026-11-23T11:31:00Z"}),
                       None, "2026-11-23T13:00:00Z")
    assert again.fields["completionTime"] == "2026-11-23T11:31:00Z"  # stable: a re-read writes nothing new


def test_a_failure_of_an_earlier_run_or_a_transient_one_leaves_the_run_to_kuberay():
    earlier = job_status(dj({"failure": {**INPUT_ERROR, "rayJobName": "bbc-g0"}}), ray_job("Running", "RUNNING"), NOW)
    assert earlier.fields["phase"] == "Running"
    transient = {**INPUT_ERROR, "permanent": False, "error": "OSError", "stage": "train",
                 "message": "connection reset by peer"}
    retrying = job_status(dj({"failure": transient}), ray_job("Retrying", "FAILED", failed=1), NOW)
    assert retrying.fields["phase"] == "Pending"
    failed = job_status(dj({"failure": transient}), ray_job("Failed", "FAILED", "AppFailed", failed=3), NOW)
    succeeded = {c["type"]: c for c in failed.conditions}["Succeeded"]
    assert succeeded["reason"] == "AppFailed"
    assert "the pipeline failed in stage train: connection reset by peer" in succeeded["message"]


def test_conditions_merge_by_type_and_keep_transition_times():
    first = merge_conditions(None, [condition("Ready", False, "Waiting")], now="t1")
    same = merge_conditions(first, [condition("Ready", False, "StillWaiting", "more")], now="t2")
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "StillWaiting"
    flipped = merge_conditions(same, [condition("Ready", True, "Ready"), condition("Other", None, "X")], now="t3")
    assert [c["type"] for c in flipped] == ["Ready", "Other"]
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[1]["status"] == "Unknown"
    update = StatusUpdate(fields={"phase": "Ready"}, conditions=[condition("Ready", True, "Ready")])
    assert update.is_noop({"phase": "Ready", "conditions": flipped})
    assert not update.is_noop({"phase": "Waiting", "conditions": flipped})


# StudentDeployment.
def job_body(phase: str, results: dict[str, Any] | None = None, generation: int = 1,
             observed: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "bbc", "generation": generation},
            "spec": {"evaluation": {"gate": {"minRetention": 0.95}}},
            "status": {"phase": phase, "results": results, "observedGeneration": observed, "rayJobName": "bbc-g1",
                       "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "PipelineRunning"}]}}


GOOD = {"gatePassed": True, "retention": 0.97, "artifactUri": "pvc://m/bbc/model_repository",
        "modelVersion": "run-7", "recommendedThreshold": 0.8}


def test_waiting_reasons():
    assert resolve_job_source("sd", None, None, None).reason == "JobNotFound"
    running = resolve_job_source("sd", job_body("Running"), None, None)
    assert running.reason == "JobNotSucceeded" and "Running (PipelineRunning)" in running.message
    gate = resolve_job_source("sd", job_body("Failed", {**GOOD, "gatePassed": False, "retention": 0.9}), None, None)
    assert gate.reason == "GateNotMet" and "0.0500 below" in gate.message
    stale = resolve_job_source("sd", job_body("Succeeded", GOOD, generation=2, observed=1), None, None)
    assert stale.reason == "JobNotSucceeded"


def test_source_and_threshold_from_the_job():
    source = resolve_job_source("sd", job_body("Succeeded", GOOD), None, "s3")
    assert source == ModelSourceInfo("pvc://m/bbc/model_repository", "run-7", 0.8, "s3")
    assert resolve_job_source("sd", job_body("Succeeded", GOOD), 0.6, None).threshold == 0.6  # the spec wins


def test_a_causal_lm_job_is_served_and_another_task_refused_up_front():
    job = job_body("Pending")
    job["spec"]["task"] = {"type": "causal-lm"}
    assert resolve_job_source("sd", job, 0.5, None).reason == "JobNotSucceeded"  # served once it succeeds
    job["spec"]["task"] = {"type": "token-classification"}
    refused = resolve_job_source("sd", job, 0.5, None)
    assert refused.reason == "UnsupportedTask" and refused.refused
    assert "spec.source.jobRef" in refused.message and "token-classification" in refused.message


def test_threshold_of_another_signal():
    per_signal = {**GOOD, "recommendedThresholds": {"max-probability": 0.8, "margin": 0.35}}
    margin = resolve_job_source("sd", job_body("Succeeded", per_signal), None, None, "margin")
    assert isinstance(margin, ModelSourceInfo) and margin.threshold == 0.35
    refused = resolve_job_source("sd", job_body("Succeeded", per_signal), None, None, "entropy")
    assert refused.reason == "ThresholdRequired" and refused.refused
    assert refused.message == ("spec.router.threshold: unset, and DistillationJob bbc recommends 0.8 for the "
                               "max-probability signal, not entropy; set spec.router.threshold or use "
                               "confidenceSignal max-probability")
    assert resolve_job_source("sd", job_body("Succeeded", GOOD), None, None, "margin").reason == "ThresholdRequired"
    assert resolve_job_source("sd", job_body("Succeeded", GOOD), 0.3, None, "margin").threshold == 0.3
    shadow = resolve_job_source("sd", job_body("Succeeded", GOOD), None, None, "margin", "shadow")
    assert isinstance(shadow, ModelSourceInfo) and shadow.threshold is None  # only `route` escalates


def test_waiting_status_keeps_a_serving_deployment_up():
    sd = {"metadata": {"name": "sd", "namespace": "ml", "generation": 2}}
    waiting = Waiting("JobNotSucceeded", "new run")
    fresh = waiting_status(sd, waiting, deployed=False)
    assert fresh.fields["phase"] == "Waiting"
    assert {c["type"]: c["reason"] for c in fresh.conditions} == {"ModelAvailable": "JobNotSucceeded",
                                                                  "Ready": "JobNotSucceeded"}
    serving = waiting_status(sd, waiting, deployed=True)
    assert "phase" not in serving.fields and [c["type"] for c in serving.conditions] == ["ModelAvailable"]


def test_source_status_endpoint_and_threshold():
    sd = {"metadata": {"name": "sd", "namespace": "ml", "generation": 2}}
    update = source_status(sd, ModelSourceInfo("pvc://m/x", "v1", 0.7), 8080)
    assert update.fields["endpoint"] == "http://sd.ml.svc.cluster.local:8080"
    assert update.fields["threshold"] == 0.7 and update.fields["observedGeneration"] == 2


def deployment(ready: int, desired: int = 2, updated: int | None = None, conditions: list[Any] | None = None,
               generation: int = 1, observed: int = 1) -> dict[str, Any]:
    updated = desired if updated is None else updated
    return {"metadata": {"generation": generation},
            "spec": {"replicas": desired, "template": {"metadata": {"annotations": {
                "kubedistill.io/model-version": "run-7"}}}},
            "status": {"readyReplicas": ready, "updatedReplicas": updated, "availableReplicas": ready,
                       "observedGeneration": observed, "conditions": conditions or []}}


@pytest.mark.parametrize(("dep", "previous", "phase"), [
    (deployment(0), None, "Progressing"),
    (deployment(1), "Waiting", "Progressing"),
    (deployment(2), "Progressing", "Ready"),
    (deployment(2, generation=2, observed=1), "Ready", "Progressing"),  # a rollout has not been seen yet
    (deployment(2, updated=1), "Ready", "Progressing"),
    (deployment(1), "Ready", "Degraded"),
    (deployment(0, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
     None, "Degraded"),
    (deployment(1, conditions=[{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]),
     None, "Degraded"),
    (deployment(0, desired=0), None, "Ready"),
])
def test_deployment_phase(dep, previous, phase):
    assert deployment_phase(dep, previous)[0] == phase


def test_serving_status_reports_ready_counts_and_model_version():
    sd = {"metadata": {"name": "sd", "generation": 1}, "status": {"phase": "Progressing"}}
    update = serving_status(sd, deployment(1, desired=3))
    assert update.fields == {"phase": "Progressing", "replicas": 3, "readyReplicas": 1, "ready": "1/3",
                             "modelVersion": "run-7"}
    assert update.conditions[0]["type"] == "Ready" and update.conditions[0]["status"] == "False"


def test_tiers_above_the_jobs_recommended_threshold_are_refused():
    from kubedistill_operator.reconcile.student import resolve_source

    from kubedistill.api import StudentDeployment

    sd = StudentDeployment.model_validate({"metadata": {"name": "sd"}, "spec": {
        "source": {"jobRef": {"name": "bbc"}},
        "router": {"tiers": [{"name": "mid", "model": "mid", "threshold": 0.85}]}}})
    refused = resolve_source(None, sd, job_body("Succeeded", GOOD))  # no API call: ctx unused
    assert refused.reason == "TiersOutOfOrder" and refused.refused
    assert refused.message.startswith("router.tiers[0].threshold: 0.85 is above 0.8")
    sd.spec.router.tiers[0].threshold = 0.7
    assert resolve_source(None, sd, job_body("Succeeded", GOOD)).threshold == 0.8
