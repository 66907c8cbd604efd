"""The real kopf operator against kmock's API emulator: runs that cannot work, and deployments it refuses.

The tests play the pipeline's part (status.failure through the status subresource, as the RayJob's entrypoint
reports it) and KubeRay's (RayJob status), and wait on conditions with deadlines. "No hot loop" is checked by
waking the operator up with an unrelated object once everything settled, and counting its writes after that.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubedistill_harness import JOB, NS, SD, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator.kubeapi import CONFIG_MAPS, DEPLOYMENTS, DISTILLATION_JOBS, RAY_JOBS, STUDENT_DEPLOYMENTS
from kubedistill_validation import validate_object

pytestmark = pytest.mark.slow  # each runs the real operator for seconds


INPUT_ERROR = {"stage": "prepare", "error": "PreflightError", "permanent": True,
               "message": "training.batchSize: 1 is smaller than the 2 training workers; each worker needs at "
                          "least one example per step", "time": "2026-11-23T10:05:00Z"}


def reasons(cluster: Any, name: str) -> set[str]:
    return {e["reason"] for e in cluster.events(NS, name)}


def writes(calls: list[Any], *resources: str) -> list[Any]:
    """The operator's create/patch/delete calls on `resources` (subresources included)."""
    return [c for c in calls if c.verb in ("create", "patch", "delete") and c.resource in resources]


KOPF_MARKS = {"kubedistill.io/last-handled-configuration", "kubedistill.io/kopf-managed"}


def handled(cluster: Any, resource: Any, name: str) -> None:
    """kopf has finished the object's handlers (its own annotations written) for the current spec."""
    def done() -> bool:
        annotations = (cluster.get(resource, NS, name) or {}).get("metadata", {}).get("annotations") or {}
        progress = {k for k in annotations if k.startswith("kubedistill.io/")} - KOPF_MARKS
        return "kubedistill.io/last-handled-configuration" in annotations and not progress

    cluster.wait_for(done, TIMEOUT, f"kopf done with {name}")


def settled(cluster: Any, wake_up: str) -> list[Any]:
    """The operator's calls from now until it has seen (and could react to) an unrelated new object."""
    start = len(cluster.operator_calls)
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": wake_up}})
    cluster.wait_for(lambda: cluster.get(CONFIG_MAPS, NS, wake_up), TIMEOUT, "the wake-up object")
    # Another watch event of the objects under test, seen after the wake-up: everything queued was handled.
    cluster.patch(CONFIG_MAPS, NS, wake_up, {"data": {"k": "v"}})
    cluster.wait_for(lambda: (cluster.get(CONFIG_MAPS, NS, wake_up) or {}).get("data"), TIMEOUT, "the patch")
    return cluster.operator_calls[start:]


def validate_child(obj: dict[str, Any]) -> None:
    validate_object({k: v for k, v in obj.items() if k != "status"} | {"metadata": {
        k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "generation")}})


def test_an_input_error_fails_the_job_and_stops_the_retries(cluster):
    cluster.create(example("quickstart/distillationjob.yaml"))
    ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    validate_child(ray_job)
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                                                     "startTime": "2026-11-23T10:00:00Z"})
    cluster.wait_for(lambda: status(cluster, DISTILLATION_JOBS, JOB).get("phase") == "Running", TIMEOUT, "Running")

    # The entrypoint's preflight refuses the input and reports it; KubeRay starts a retry meanwhile.
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"failure": {**INPUT_ERROR, "rayJobName": f"{JOB}-g1"}})
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED",
                                                     "failed": 1})
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None, TIMEOUT, "the RayJob deleted")
    failed = status(cluster, DISTILLATION_JOBS, JOB)
    assert failed["phase"] == "Failed" and failed["completionTime"]
    succeeded = condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")
    assert succeeded["status"] == "False" and succeeded["reason"] == "InvalidInput"
    assert "in stage prepare: training.batchSize: 1 is smaller than the 2 training workers" in succeeded["message"]
    assert condition(cluster, DISTILLATION_JOBS, JOB, "Running")["status"] == "False"
    cluster.wait_for(lambda: {"InvalidInput", "RetriesStopped"} <= reasons(cluster, JOB), TIMEOUT, "the events")

    # Settled: nothing recreated, nothing written again, not even after a restart.
    calls = settled(cluster, "wake-up-1")
    assert writes(calls, "rayjobs", "distillationjobs") == []
    cluster.restart_operator()
    calls = settled(cluster, "wake-up-2")
    assert writes(calls, "rayjobs", "distillationjobs", "configmaps") == []
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None
    assert len([c for c in cluster.operator_calls if c.verb == "create" and c.resource == "rayjobs"]) == 1
    # The job's event and the RayJob's may both act at once: a second DELETE at most, answered 404.
    assert 1 <= len([c for c in cluster.operator_calls if c.verb == "delete" and c.resource == "rayjobs"]) <= 2
    assert [e["reason"] for e in cluster.events(NS, JOB)].count("InvalidInput") == 1
    assert status(cluster, DISTILLATION_JOBS, JOB)["phase"] == "Failed"

    # A spec change is a new generation: it runs afresh, the old failure cleared.
    cluster.patch(DISTILLATION_JOBS, NS, JOB, {"spec": {"training": {"batchSize": 16}}})
    ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g2"), TIMEOUT, "the second RayJob")
    validate_child(ray_job)
    fresh = cluster.wait_for(lambda: (s := status(cluster, DISTILLATION_JOBS, JOB)).get("rayJobName") == f"{JOB}-g2"
                             and s, TIMEOUT, "the second run recorded")
    assert "failure" not in fresh and fresh["phase"] == "Pending" and fresh["observedGeneration"] == 2
    assert condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")["reason"] != "InvalidInput"
    # A late report of the first run's failure is not this run's.
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"failure": {**INPUT_ERROR, "rayJobName": f"{JOB}-g1"}})
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g2", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    cluster.wait_for(lambda: status(cluster, DISTILLATION_JOBS, JOB).get("phase") == "Running", TIMEOUT,
                     "the second run running")
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g2") is not None
    assert cluster.operator_running


def test_a_transient_failure_is_left_to_kuberays_retries(cluster):
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    transient = {**INPUT_ERROR, "permanent": False, "error": "OSError", "stage": "train",
                 "message": "connection reset by peer", "rayJobName": f"{JOB}-g1"}
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"failure": transient})
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED",
                                                     "failed": 1})
    cluster.wait_for(lambda: condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded").get("reason") == "Retrying",
                     TIMEOUT, "the retry shown")
    assert status(cluster, DISTILLATION_JOBS, JOB)["phase"] == "Pending"
    calls = settled(cluster, "wake-up")
    assert writes(calls, "rayjobs") == [] and cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is not None

    # KubeRay gives up after backoffLimit: the pipeline's last error is in the message.
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                                                     "reason": "AppFailed", "failed": 3})
    cluster.wait_for(lambda: condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded").get("reason") == "AppFailed",
                     TIMEOUT, "AppFailed")
    message = condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")["message"]
    assert "reason=AppFailed" in message and "the pipeline failed in stage train: connection reset by peer" in message
    assert status(cluster, DISTILLATION_JOBS, JOB)["phase"] == "Failed"
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is not None  # KubeRay's TTL removes it, not the operator
    assert not [c for c in cluster.operator_calls if c.verb == "delete" and c.resource == "rayjobs"]


def test_a_student_of_a_causal_lm_job_waits_for_the_job(cluster):
    job = example("causal-lm/distillationjob.yaml")
    name = job["metadata"]["name"]
    sd = example("quickstart/studentdeployment.yaml")
    sd["spec"]["source"]["jobRef"]["name"] = name
    cluster.create(job)
    cluster.create(sd)
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason") == "JobNotSucceeded",
                     TIMEOUT, "JobNotSucceeded")
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"
    assert "UnsupportedTask" not in reasons(cluster, SD)
    assert cluster.get(DEPLOYMENTS, NS, SD) is None


def test_another_signal_needs_its_own_threshold(cluster):
    sd = example("quickstart/studentdeployment.yaml")
    sd["spec"]["router"]["confidenceSignal"] = "margin"
    cluster.create(volume_claim("models"))  # the artifact's claim
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.create(sd)
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    results = {"gatePassed": True, "retention": 0.97, "recommendedThreshold": 0.8, "modelVersion": "run-1",
               "artifactUri": f"pvc://models/{JOB}/run-1/model_repository"}
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"results": results})  # a job of before per-signal thresholds
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason")
                     == "ThresholdRequired", TIMEOUT, "ThresholdRequired")
    message = condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready")["message"]
    assert message == (f"spec.router.threshold: unset, and DistillationJob {JOB} recommends 0.8 for the "
                       "max-probability signal, not margin; set spec.router.threshold or use confidenceSignal "
                       "max-probability")
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"
    cluster.wait_for(lambda: "ThresholdRequired" in reasons(cluster, SD), TIMEOUT, "the event")
    handled(cluster, STUDENT_DEPLOYMENTS, SD)
    calls = settled(cluster, "wake-up")
    assert writes(calls, "studentdeployments", "deployments") == [] and cluster.get(DEPLOYMENTS, NS, SD) is None

    # The job's status carries the margin's own threshold: that one is served.
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"results": {"recommendedThresholds": {
        "max-probability": 0.8, "margin": 0.35}}})
    deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment")
    router = yaml.safe_load(cluster.get(CONFIG_MAPS, NS, f"{SD}-router")["data"]["router.yaml"])
    assert router["threshold"] == 0.35 and router["confidence_signal"] == "margin"
    cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("threshold") == 0.35, TIMEOUT,
                     "threshold 0.35 in status")
    for obj in (deployment, cluster.get(CONFIG_MAPS, NS, f"{SD}-router")):
        validate_child(obj)

    # A threshold in the spec wins over any recommendation.
    cluster.patch(STUDENT_DEPLOYMENTS, NS, SD, {"spec": {"router": {"threshold": 0.4}}})
    cluster.wait_for(lambda: yaml.safe_load(cluster.get(CONFIG_MAPS, NS, f"{SD}-router")["data"]["router.yaml"])
                     ["threshold"] == 0.4, TIMEOUT, "the spec's threshold")
