"""Objects a spec names (Secrets, PersistentVolumeClaims of `pvc://` URIs, a ServiceAccount) exist before the
operator starts anything that uses them: with the real operator against kmock's emulator, a resource whose
reference is missing waits with the `ReferencesFound` condition naming the field and an Event, and proceeds once
the object is created; plus the references each spec yields, as pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubedistill_harness import JOB, NS, SD, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator.builders import ModelSourceInfo
from kubedistill_operator.kubeapi import DEPLOYMENTS, DISTILLATION_JOBS, RAY_JOBS, STUDENT_DEPLOYMENTS
from kubedistill_operator.reconcile.references import Reference, job_references, student_references

from kubedistill.api import DistillationJob, StudentDeployment, parse_resource


def _parse(path: str, spec: dict[str, Any]) -> Any:
    doc = copy.deepcopy(example(path))
    doc["spec"].update(spec)
    return parse_resource(doc)


def reasons(cluster: Any, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(NS, name)]


def pod_spec(ray_job: dict[str, Any]) -> dict[str, Any]:
    return ray_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def test_job_references_name_every_mounted_claim_and_the_named_account():
    base = example("quickstart/distillationjob.yaml")["spec"]
    job = _parse("quickstart/distillationjob.yaml", {
        "dataset": {**base["dataset"], "uri": "pvc://datasets/bbc"},
        "output": {"uri": "pvc://models/bbc"},
        "student": {"uri": "pvc://models/small"},
        "ray": {**base.get("ray", {}), "serviceAccountName": "trainer"},
    })
    assert isinstance(job, DistillationJob)
    assert job_references(job) == [
        Reference("PersistentVolumeClaim", "models", "spec.student.uri"),
        Reference("PersistentVolumeClaim", "datasets", "spec.dataset.uri"),
        Reference("PersistentVolumeClaim", "models", "spec.output.uri"),
        Reference("ServiceAccount", "trainer", "spec.ray.serviceAccountName"),
    ]
    # The quickstart reads packages and writes a local folder; its pods run as the operator's own account.
    quickstart = _parse("quickstart/distillationjob.yaml", {})
    assert job_references(quickstart) == []


def test_student_references_follow_the_model_being_served():
    sd = _parse("quickstart/studentdeployment.yaml", {})
    assert isinstance(sd, StudentDeployment)
    (claim,) = student_references(sd, ModelSourceInfo("pvc://models/bbc/run-1/model_repository", "run-1"))
    assert claim.kind == "PersistentVolumeClaim" and claim.name == "models"
    assert f"job '{JOB}'" in claim.field and "spec.source.jobRef" in claim.field
    assert student_references(sd, ModelSourceInfo("file:///models/bbc", "run-1")) == []
    direct = _parse("quickstart/studentdeployment.yaml", {"source": {"modelRepositoryUri": "pvc://repos/bbc"}})
    assert student_references(direct, ModelSourceInfo.from_uri(direct)) == [
        Reference("PersistentVolumeClaim", "repos", "spec.source.modelRepositoryUri")]


@pytest.mark.slow
def test_job_waits_for_its_claims_and_service_account(cluster):
    job = example("quickstart/distillationjob.yaml")
    job["spec"]["dataset"]["uri"] = "pvc://datasets/bbc"
    job["spec"]["output"] = {"uri": "pvc://models/bbc"}
    job["spec"].setdefault("ray", {})["serviceAccountName"] = "trainer"
    cluster.create(job)

    def found() -> dict[str, Any]:
        return condition(cluster, DISTILLATION_JOBS, JOB, "ReferencesFound")

    cluster.wait_for(lambda: found().get("reason") == "ReferencesNotFound", TIMEOUT, "ReferencesNotFound")
    message = found()["message"]
    for named in ("PersistentVolumeClaim 'datasets' (spec.dataset.uri)", "PersistentVolumeClaim 'models' "
                  "(spec.output.uri)", "ServiceAccount 'trainer' (spec.ray.serviceAccountName)"):
        assert named in message
    assert "create it or fix the reference" in message and found()["status"] == "False"
    assert status(cluster, DISTILLATION_JOBS, JOB)["phase"] == "Pending"
    cluster.wait_for(lambda: "ReferencesNotFound" in reasons(cluster, JOB), TIMEOUT, "the event")

    for claim in ("datasets", "models"):
        cluster.create(volume_claim(claim))
    cluster.wait_for(lambda: found().get("reason") == "ServiceAccountNotFound", TIMEOUT, "only the account missing")
    assert "PersistentVolumeClaim" not in found()["message"] and "'trainer'" in found()["message"]
    # Retried with a delay; the Event is posted when what is missing changes, not on every retry.
    account_reads = lambda: [c for c in cluster.operator_calls if c.resource == "serviceaccounts" and c.verb == "get"]  # noqa: E731
    seen = len(account_reads())
    cluster.wait_for(lambda: len(account_reads()) >= seen + 2, TIMEOUT, "two more retries")
    assert reasons(cluster, JOB).count("ServiceAccountNotFound") == 1
    assert cluster.get(RAY_JOBS, NS, f"{JOB}-g1") is None

    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer"}})
    ray_job = cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    pod = pod_spec(ray_job)
    assert pod["serviceAccountName"] == "trainer"
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == \
        {"datasets", "models"}
    cluster.wait_for(lambda: found().get("status") == "True", TIMEOUT, "ReferencesFound True")


@pytest.mark.slow
def test_student_of_a_pvc_model_repository_waits_for_the_claim(cluster):
    sd = example("quickstart/studentdeployment.yaml")
    sd["spec"]["source"] = {"modelRepositoryUri": "pvc://repos/bbc/model_repository"}
    cluster.create(sd)

    def found() -> dict[str, Any]:
        return condition(cluster, STUDENT_DEPLOYMENTS, SD, "ReferencesFound")

    cluster.wait_for(lambda: found().get("reason") == "PersistentVolumeClaimNotFound", TIMEOUT,
                     "PersistentVolumeClaimNotFound")
    assert "PersistentVolumeClaim 'repos' (spec.source.modelRepositoryUri)" in found()["message"]
    assert status(cluster, STUDENT_DEPLOYMENTS, SD)["phase"] == "Waiting"
    cluster.wait_for(lambda: "PersistentVolumeClaimNotFound" in reasons(cluster, SD), TIMEOUT, "the event")
    assert cluster.get(DEPLOYMENTS, NS, SD) is None

    cluster.create(volume_claim("repos"))
    deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "repos", "readOnly": True}} in volumes
    cluster.wait_for(lambda: found().get("status") == "True", TIMEOUT, "ReferencesFound True")


class Objects:
    """The objects of one namespace, read as `KubeApi.get` reads them; every read recorded."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.reads: list[tuple[str, str]] = []

    def get(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        kind = {"secrets": "Secret", "persistentvolumeclaims": "PersistentVolumeClaim",
                "serviceaccounts": "ServiceAccount"}[resource.plural]
        self.reads.append((kind, name))
        return self.objects.get((kind, name))


def test_one_secret_named_twice_is_read_once_with_the_keys_of_both_fields():
    from kubedistill_operator.reconcile.references import missing_references

    shared = [Reference("Secret", "keys", "spec.router.teacher.apiKeySecretRef", ("teacher",)),
              Reference("Secret", "keys", "spec.router.auth.apiKeySecretRef", ("token",)),
              Reference("PersistentVolumeClaim", "models", "spec.source.modelRepositoryUri")]
    api = Objects({"kind": "Secret", "metadata": {"name": "keys"}, "data": {"teacher": "eA=="}},
                  volume_claim("models"))
    missing = missing_references(api, NS, shared)  # type: ignore[arg-type]
    assert missing is not None and missing.reason == "SecretNotFound"
    assert missing.message == ("key 'token' of Secret 'keys' (spec.router.teacher.apiKeySecretRef; "
                               "spec.router.auth.apiKeySecretRef; it has: teacher) not found in namespace default; "
                               "create it or fix the reference")
    assert sorted(api.reads) == [("PersistentVolumeClaim", "models"), ("Secret", "keys")]
    api.objects[("Secret", "keys")]["data"]["token"] = "eQ=="
    assert missing_references(api, NS, shared) is None  # type: ignore[arg-type]
    assert missing_references(Objects(), NS, shared).reason == "ReferencesNotFound"  # type: ignore[arg-type, union-attr]
