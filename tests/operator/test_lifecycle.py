"""The real kopf operator against kmock's API emulator: both resources through their whole lives.

The tests play KubeRay's part (RayJob status), the pipeline's (status.results through the status
subresource) and the Deployment controller's (Deployment status), and wait on conditions with deadlines.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubedistill_harness import JOB, NS, ROOT, SD, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator.kubeapi import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    DISTILLATION_JOBS,
    HPAS,
    RAY_JOBS,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SERVICE_ACCOUNTS,
    SERVICES,
    STUDENT_DEPLOYMENTS,
)
from kubedistill_validation import validate_object

pytestmark = pytest.mark.slow  # each runs the real operator for seconds



def wait_phase(cluster: Any, resource: Any, name: str, phase: str) -> dict[str, Any]:
    return cluster.wait_for(lambda: (s := status(cluster, resource, name)).get("phase") == phase and s,
                            TIMEOUT, f"{name} phase {phase}")


def creates(cluster: Any, resource: str) -> list[Any]:
    return [c for c in cluster.operator_calls if c.verb == "create" and c.resource == resource]


def conflicts_met(cluster: Any) -> int:
    """Creates the operator made of objects that already existed (answered 409)."""
    return sum(n for (_, _, code), n in cluster.server.errors.items() if code == 409)


def run_job_to(cluster: Any, run: str, deployment: str, job: str, results: dict[str, Any] | None = None) -> None:
    """KubeRay's part, and the pipeline's results before its RayJob completes."""
    if results is not None:
        cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"results": results})
    cluster.patch_status(RAY_JOBS, NS, run, {"jobDeploymentStatus": deployment, "jobStatus": job,
                                             "startTime": "2026-11-23T10:00:00Z"})


def results(version: str, passed: bool = True, retention: float = 0.97) -> dict[str, Any]:
    return {"gatePassed": passed, "retention": retention, "agreement": 0.95, "speedup": 4.2,
            "recommendedThreshold": 0.8, "artifactUri": f"pvc://models/{JOB}/{version}/model_repository",
            "modelVersion": version}


def test_distillation_job_life(cluster):
    cluster.create(example("quickstart/distillationjob.yaml"))
    job = cluster.wait_for(lambda: cluster.get(DISTILLATION_JOBS, NS, JOB), what="the job")
    uid = job["metadata"]["uid"]

    # Created: children owned by the job, the run's name recorded in status.
    ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    current = cluster.wait_for(lambda: (s := status(cluster, DISTILLATION_JOBS, JOB)).get("phase") and s, TIMEOUT,
                               "a phase")
    assert current["rayJobName"] == f"{JOB}-g1" and current["phase"] == "Pending"
    assert current["configMapName"] == f"{JOB}-spec" and current["serviceAccountName"] == f"{JOB}-pipeline"
    children = [cluster.get(r, NS, n) for r, n in ((CONFIG_MAPS, f"{JOB}-spec"), (SERVICE_ACCOUNTS, f"{JOB}-pipeline"),
                                                     (ROLES, f"{JOB}-pipeline"), (ROLE_BINDINGS, f"{JOB}-pipeline"))]
    for child in [*children, ray_job]:
        assert child is not None
        assert [o["uid"] for o in child["metadata"]["ownerReferences"]] == [uid]
        validate_object({k: v for k, v in child.items() if k != "status"} | {"metadata": {
            k: v for k, v in child["metadata"].items() if k not in ("resourceVersion", "generation")}})
    status_writes = [c for c in cluster.operator_calls if c.rbac_resource == "distillationjobs/status"]
    first_create = next(i for i, c in enumerate(cluster.operator_calls) if c.verb == "create"
                        and c.resource == "rayjobs")
    assert cluster.operator_calls.index(status_writes[0]) < first_create, "the run name is recorded first"

    # KubeRay starts the cluster and the pipeline.
    run_job_to(cluster, f"{JOB}-g1", "Running", "RUNNING")
    running = wait_phase(cluster, DISTILLATION_JOBS, JOB, "Running")
    assert running["startTime"] == "2026-11-23T10:00:00Z" and running["attempt"] == 1
    assert condition(cluster, DISTILLATION_JOBS, JOB, "Running")["status"] == "True"

    # The pipeline reports progress and results; the RayJob completes.
    # Its last progress patch (throttled) never came: the step and ETA of mid-training are what it left.
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"progress": {"stage": "train", "percent": 50.0, "step": 40,
                                                                   "totalSteps": 80, "estimatedRemainingSeconds": 60},
                                                      "metrics": {"loss": 0.4}})
    run_job_to(cluster, f"{JOB}-g1", "Complete", "SUCCEEDED", results("run-1"))
    done = wait_phase(cluster, DISTILLATION_JOBS, JOB, "Succeeded")
    assert done["results"]["retention"] == 0.97 and done["results"]["artifactUri"].endswith("run-1/model_repository")
    assert done["progress"] == {"stage": "train", "percent": 100.0} and done["completionTime"]
    assert condition(cluster, DISTILLATION_JOBS, JOB, "GatePassed")["status"] == "True"
    assert condition(cluster, DISTILLATION_JOBS, JOB, "Running")["status"] == "False"
    cluster.wait_for(lambda: {"RayJobCreated", "Running", "Succeeded"}
                     <= {e["reason"] for e in cluster.events(NS, JOB)}, TIMEOUT, "the job's events")

    # A spec change: a new run replaces the old one; the old results are cleared.
    cluster.patch(DISTILLATION_JOBS, NS, JOB, {"spec": {"training": {"epochs": 8}}})
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g2"), TIMEOUT, "the second RayJob")
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None, TIMEOUT, "the first RayJob deleted")
    second = cluster.wait_for(lambda: (s := status(cluster, DISTILLATION_JOBS, JOB)).get("rayJobName")
                              == f"{JOB}-g2" and s, TIMEOUT, "the second run recorded")
    assert "results" not in second and second["observedGeneration"] == 2
    spec_map = yaml.safe_load(cluster.get(CONFIG_MAPS, NS, f"{JOB}-spec")["data"]["distillationjob.yaml"])
    assert spec_map["spec"]["training"]["epochs"] == 8

    # KubeRay reports the contradiction of kuberay #2314, then gives up: never Running, then Failed.
    run_job_to(cluster, f"{JOB}-g2", "Running", "FAILED")
    failed = wait_phase(cluster, DISTILLATION_JOBS, JOB, "Failed")
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g2", {"jobDeploymentStatus": "Failed", "reason": "AppFailed",
                                                     "message": "the entrypoint exited with 1", "failed": 3})
    cluster.wait_for(lambda: condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded").get("reason") == "AppFailed",
                     TIMEOUT, "reason AppFailed")
    assert failed["completionTime"]
    assert "the entrypoint exited with 1" in condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")["message"]

    # A restart at this point creates nothing new, and tries to: the resumed handler finds the run's RayJob.
    before = len(creates(cluster, "rayjobs"))
    conflicts = conflicts_met(cluster)
    cluster.restart_operator()
    cluster.wait_for(lambda: [c for c in cluster.operator_calls[-50:] if c.verb == "watch"], TIMEOUT, "the watches")
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g2", {"message": "seen after the restart"})
    cluster.wait_for(lambda: "seen after the restart" in condition(cluster, DISTILLATION_JOBS, JOB,
                                                                   "Succeeded").get("message", ""),
                     TIMEOUT, "the restarted operator following the RayJob")
    assert len(creates(cluster, "rayjobs")) == before and conflicts_met(cluster) == conflicts
    assert [r["metadata"]["name"] for r in cluster.list(RAY_JOBS, NS)] == [f"{JOB}-g2"]

    # Deletion: nothing holds the job (no finalizer); its children go with it through ownerReferences.
    cluster.delete(DISTILLATION_JOBS, NS, JOB)
    cluster.wait_for(lambda: cluster.get(DISTILLATION_JOBS, NS, JOB) is None, TIMEOUT, "the job deleted")
    assert cluster.operator_running


def test_restart_in_the_middle_never_duplicates(cluster):
    cluster.create(example("quickstart/distillationjob.yaml"))
    first = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    for _ in range(2):
        cluster.restart_operator()
    run_job_to(cluster, f"{JOB}-g1", "Running", "RUNNING")
    wait_phase(cluster, DISTILLATION_JOBS, JOB, "Running")
    # A restart can land before kopf recorded the handler as done: the handler then runs again, finds the run's
    # RayJob (or, from a handler of the stopped operator still finishing, meets a 409 and adopts it). Never a
    # second RayJob, never a replaced one.
    assert len(cluster.list(RAY_JOBS, NS)) == 1
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1")["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(creates(cluster, "rayjobs")) <= 3


def test_missing_secret_waits_with_a_condition_and_an_event(cluster):
    job = example("quickstart/distillationjob.yaml")
    job["spec"]["output"] = {"uri": "s3://models/bbc", "s3CredentialsSecret": "s3-credentials"}
    cluster.create(job)
    cluster.wait_for(lambda: condition(cluster, DISTILLATION_JOBS, JOB, "ReferencesFound").get("reason")
                     == "SecretNotFound", TIMEOUT, "SecretNotFound")
    message = condition(cluster, DISTILLATION_JOBS, JOB, "ReferencesFound")["message"]
    assert "'s3-credentials'" in message and "spec.output.s3CredentialsSecret" in message
    cluster.wait_for(lambda: "SecretNotFound" in {e["reason"] for e in cluster.events(NS, JOB)}, TIMEOUT, "event")
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                    "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}})
    ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob after the Secret")
    head = ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert condition(cluster, DISTILLATION_JOBS, JOB, "ReferencesFound")["status"] == "True"


def test_a_spec_the_models_refuse_fails_once_without_looping(cluster):
    job = example("quickstart/distillationjob.yaml")
    job["spec"]["distillation"]["loss"] = "mse"  # the CRD schema refuses it; the emulator validates nothing
    cluster.create(job)
    cluster.wait_for(lambda: condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded").get("reason") == "InvalidSpec",
                     TIMEOUT, "InvalidSpec")
    assert "distillation.loss" in condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")["message"]
    assert status(cluster, DISTILLATION_JOBS, JOB)["phase"] == "Failed"
    writes = len(cluster.operator_calls)
    cluster.wait_for(lambda: "InvalidSpec" in {e["reason"] for e in cluster.events(NS, JOB)}, TIMEOUT, "event")
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}})  # a wake-up
    cluster.wait_for(lambda: cluster.get(CONFIG_MAPS, NS, "unrelated"), TIMEOUT, "another object")
    assert len([c for c in cluster.operator_calls[writes:] if c.verb in ("create", "patch")
                and c.resource != "events"]) == 0, "a permanent error is not retried"
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None


def ready(cluster: Any, name: str = SD) -> None:
    """The Deployment controller's part: every replica of the current template is up."""
    deployment = cluster.get(DEPLOYMENTS, NS, name)
    replicas = int(deployment["spec"].get("replicas", 1))
    cluster.patch_status(DEPLOYMENTS, NS, name, {
        "observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
        "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})


def test_student_deployment_life(cluster):
    cluster.create(volume_claim("models"))  # where the job's artifacts are (`results`)
    # Before its job exists: waiting, nothing deployed.
    cluster.create(example("quickstart/studentdeployment.yaml"))
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason") == "JobNotFound",
                     TIMEOUT, "JobNotFound")
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"

    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason") == "JobNotSucceeded",
                     TIMEOUT, "JobNotSucceeded")
    assert cluster.get(DEPLOYMENTS, NS, SD) is None

    # The job succeeds: the deployment follows at once (the job's status change re-reconciles it).
    run_job_to(cluster, f"{JOB}-g1", "Complete", "SUCCEEDED", results("run-1"))
    deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment")
    progressing = wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Progressing")
    assert progressing["endpoint"] == f"http://{SD}.{NS}.svc.cluster.local:8080"
    assert progressing["threshold"] == 0.8 and progressing["modelVersion"] == "run-1"
    assert progressing["modelRepositoryUri"] == f"pvc://models/{JOB}/run-1/model_repository"
    assert progressing["ready"] == "0/2"
    router = yaml.safe_load(cluster.get(CONFIG_MAPS, NS, f"{SD}-router")["data"]["router.yaml"])
    assert router["threshold"] == 0.8 and router["port"] == 8080
    service = cluster.get(SERVICES, NS, SD)
    for obj in (deployment, service, cluster.get(CONFIG_MAPS, NS, f"{SD}-router")):
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "StudentDeployment"
        validate_object({k: v for k, v in obj.items() if k != "status"} | {"metadata": {
            k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "generation")}})

    ready(cluster)
    done = wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Ready")
    assert done["ready"] == "2/2" and done["readyReplicas"] == 2
    assert condition(cluster, STUDENT_DEPLOYMENTS, SD, "ModelAvailable")["status"] == "True"

    # A new run of the job: the old model keeps serving meanwhile, the new one rolls the pods.
    cluster.patch(DISTILLATION_JOBS, NS, JOB, {"spec": {"training": {"epochs": 9}}})
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "ModelAvailable").get("status") == "False",
                     TIMEOUT, "the model marked unavailable during the new run")
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Ready"
    template = cluster.get(DEPLOYMENTS, NS, SD)["spec"]["template"]
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g2"), TIMEOUT, "the new RayJob")
    run_job_to(cluster, f"{JOB}-g2", "Complete", "SUCCEEDED", results("run-2"))
    cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD)["spec"]["template"]["metadata"]["annotations"]
                     ["kubedistill.io/model-version"] == "run-2", TIMEOUT, "the pods rolled to run-2")
    assert cluster.get(DEPLOYMENTS, NS, SD)["spec"]["template"] != template
    ready(cluster)
    cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("modelVersion") == "run-2"
                     and status(cluster, STUDENT_DEPLOYMENTS, SD).get("phase") == "Ready", TIMEOUT, "run-2 ready")

    # Never autoscaled so far, reconciled many times: no HPA to delete, and none asked for.
    assert not [c for c in cluster.operator_calls if c.resource == "horizontalpodautoscalers"]

    # A spec change: scaled and autoscaled, then the HPA removed again (once: the operator deletes what it created).
    cluster.patch(STUDENT_DEPLOYMENTS, NS, SD, {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}})
    hpa = cluster.wait_for(lambda: cluster.get(HPAS, NS, SD), TIMEOUT, "the HPA")
    validate_object({k: v for k, v in hpa.items() if k != "status"} | {"metadata": {"name": SD}})
    cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("autoscalerName") == SD, TIMEOUT,
                     "the HPA recorded in status")
    cluster.patch(STUDENT_DEPLOYMENTS, NS, SD, {"spec": {"autoscaling": None, "replicas": 3}})
    cluster.wait_for(lambda: cluster.get(HPAS, NS, SD) is None, TIMEOUT, "the HPA removed")
    cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD)["spec"]["replicas"] == 3, TIMEOUT, "3 replicas")
    cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("ready") == "2/3", TIMEOUT, "2/3 ready")
    assert "autoscalerName" not in status(cluster, STUDENT_DEPLOYMENTS, SD)

    # A lost replica after the rollout: Degraded; back again: Ready.
    ready(cluster)
    wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Ready")
    cluster.patch_status(DEPLOYMENTS, NS, SD, {"readyReplicas": 1, "availableReplicas": 1})
    wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Degraded")
    ready(cluster)
    wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Ready")
    hpa_deletes = [c for c in cluster.operator_calls if c.verb == "delete" and c.resource == "horizontalpodautoscalers"]
    assert len(hpa_deletes) == 1

    # A restart creates nothing; a deleted Deployment is recreated.
    deployments_created = len(creates(cluster, "deployments"))
    cluster.restart_operator()
    cluster.patch_status(DEPLOYMENTS, NS, SD, {"readyReplicas": 2})
    cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("ready") == "2/3", TIMEOUT,
                     "the restarted operator following the Deployment")
    assert len(creates(cluster, "deployments")) == deployments_created
    cluster.delete(DEPLOYMENTS, NS, SD)
    cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment recreated")

    # The job deleted: the deployment keeps serving its last model and says why it will not update.
    cluster.delete(DISTILLATION_JOBS, NS, JOB)
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "ModelAvailable").get("reason")
                     == "JobNotFound", TIMEOUT, "JobNotFound after the job's deletion")
    assert cluster.get(DEPLOYMENTS, NS, SD) is not None
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["modelVersion"] == "run-2"

    cluster.delete(STUDENT_DEPLOYMENTS, NS, SD)
    cluster.wait_for(lambda: cluster.get(STUDENT_DEPLOYMENTS, NS, SD) is None, TIMEOUT, "deleted")


def test_student_waits_on_a_gate_not_met(cluster):
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.create(example("quickstart/studentdeployment.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    run_job_to(cluster, f"{JOB}-g1", "Complete", "SUCCEEDED", results("run-1", passed=False, retention=0.9))
    failed = wait_phase(cluster, DISTILLATION_JOBS, JOB, "Failed")
    gate = condition(cluster, DISTILLATION_JOBS, JOB, "Succeeded")
    assert gate["reason"] == "GateNotMet" and "0.0500 below evaluation.gate.minRetention 0.95" in gate["message"]
    assert failed["results"]["gatePassed"] is False
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason") == "GateNotMet",
                     TIMEOUT, "the StudentDeployment waiting on the gate")
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"
    assert cluster.get(DEPLOYMENTS, NS, SD) is None


def test_a_waiting_student_is_woken_by_its_job_and_never_retried(cluster):
    cluster.create(volume_claim("models"))
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.create(example("quickstart/studentdeployment.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready").get("reason") == "JobNotSucceeded",
                     TIMEOUT, "JobNotSucceeded")

    def reads() -> int:
        return sum(1 for c in cluster.operator_calls if c.resource == "studentdeployments" and c.name == SD
                   and c.verb == "get")

    before = reads()
    run_job_to(cluster, f"{JOB}-g1", "Running", "RUNNING")  # the job moves on; the deployment still waits
    wait_phase(cluster, DISTILLATION_JOBS, JOB, "Running")
    # Absence of retries takes time to see: three of the operator's retry delays, each of which would have
    # re-run a handler that ended in kopf.TemporaryError.
    time.sleep(3 * cluster.wait_delay)
    assert reads() == before
    assert condition(cluster, STUDENT_DEPLOYMENTS, SD, "Ready")["reason"] == "JobNotSucceeded"

    run_job_to(cluster, f"{JOB}-g1", "Complete", "SUCCEEDED", results("run-1"))
    cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment, woken by the job's events")


def test_liveness_and_recorded_calls(cluster):
    assert cluster.liveness() == 200
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    rules = cluster.rbac_rules()
    assert {"create"} <= rules[("ray.io", "rayjobs")] and "watch" in rules[("ray.io", "rayjobs")]
    assert "patch" in rules[("kubedistill.io", "distillationjobs/status")]
    assert all(c.method in ("GET", "POST", "PATCH", "DELETE") for c in cluster.operator_calls)


@pytest.mark.parametrize("path", ["quickstart/distillationjob.yaml"])
def test_manifests_command_prints_what_the_operator_creates(cluster, path, capsys):
    from kubedistill.cli import main

    assert main(["manifests", str(ROOT / "examples" / path)]) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    cluster.create(example(path))
    created = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    (ray_job,) = [d for d in printed if d["kind"] == "RayJob"]
    assert ray_job["spec"] == created["spec"]


def test_student_of_a_model_repository_uri_checks_its_secret(cluster):
    sd = example("quickstart/studentdeployment.yaml")
    sd["spec"]["source"] = {"modelRepositoryUri": "s3://models/bbc/model_repository", "s3CredentialsSecret": "s3"}
    cluster.create(sd)
    cluster.wait_for(lambda: condition(cluster, STUDENT_DEPLOYMENTS, SD, "ReferencesFound").get("reason")
                     == "SecretNotFound", TIMEOUT, "SecretNotFound")
    found = condition(cluster, STUDENT_DEPLOYMENTS, SD, "ReferencesFound")
    assert "spec.source.s3CredentialsSecret" in found["message"]
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"
    assert cluster.get(DEPLOYMENTS, NS, SD) is None
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"K": "v"}})
    # a Secret without the keys the fetch reads would leave it without credentials: still waiting, keys named
    cluster.wait_for(lambda: "key 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY' of Secret 's3'" in condition(
        cluster, STUDENT_DEPLOYMENTS, SD, "ReferencesFound").get("message", ""), TIMEOUT, "the missing keys")
    assert cluster.get(DEPLOYMENTS, NS, SD) is None
    cluster.patch(SECRETS, NS, "s3", {"stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}})
    deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment")
    fetch = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3"}}]
    current = wait_phase(cluster, STUDENT_DEPLOYMENTS, SD, "Progressing")
    assert current["modelRepositoryUri"] == "s3://models/bbc/model_repository" and len(current["modelVersion"]) == 12
    assert "threshold" not in current  # none set, and no job to recommend one: serving.json's applies


def test_peering_replicas_announce_themselves(tmp_path):
    from kubedistill_harness import OperatorHarness
    from kubedistill_operator.kubeapi import Resource

    peerings = Resource("kopf.dev", "v1", "clusterkopfpeerings")
    with OperatorHarness(tmp_path) as cluster:
        cluster.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                        "metadata": {"name": "kubedistill"}}, namespace=None)
        cluster.start_operator(peering="kubedistill")
        cluster.wait_for(lambda: (cluster.get(peerings, None, "kubedistill") or {}).get("status"), TIMEOUT,
                         "the replica's keep-alive in the peering object")
        cluster.create(example("quickstart/distillationjob.yaml"))
        cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob under peering")
        assert {"patch"} <= cluster.rbac_rules()[("kopf.dev", "clusterkopfpeerings")]
