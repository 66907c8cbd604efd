"""Teacher assistant chains: a job whose teacher.jobRef names another job waits for it, then runs with its
student as teacher; a missing, failed or gated teacher and a cycle of references are refused with the field.

The pure decisions are checked directly; the chain itself through the real kopf operator on kmock's emulator
(the tests play KubeRay's and the pipeline's part, as in test_lifecycle.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubedistill_harness import NS, TIMEOUT, condition, example, status
from kubedistill_operator.kubeapi import CONFIG_MAPS, DISTILLATION_JOBS, RAY_JOBS
from kubedistill_operator.status.teacher import teacher_outcome

from kubedistill import chain
from kubedistill.api import DistillationJob

ASSISTANT, TINY = "bbc-news-assistant", "bbc-news-tiny"
STUDENT_URI = "file:///tmp/kubedistill/bbc-news-assistant/student"


def manifest(path: str, name: str | None = None, teacher: str | None = None) -> dict[str, Any]:
    doc = example(f"teacher-assistant/{path}")
    if name is not None:
        doc["metadata"]["name"] = name
    if teacher is not None:
        doc["spec"]["teacher"] = {"jobRef": {"name": teacher}}
    return doc


def body(doc: dict[str, Any], phase: str | None = None, gate: bool | None = None,
         generation: int = 1, observed: int = 1) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["metadata"]["generation"] = generation
    if phase is not None:
        out["status"] = {"phase": phase, "observedGeneration": observed}
        if gate is not None:
            out["status"]["results"] = {"gatePassed": gate, "retention": 0.97 if gate else 0.9}
    return out


def tiny_spec() -> Any:
    return DistillationJob.model_validate(manifest("tiny.yaml")).spec


def test_find_cycle():
    refs = {"a": "b", "b": "c", "c": "a", "d": "b", "e": None}
    assert chain.find_cycle("a", refs.get) == ["a", "b", "c", "a"]
    assert chain.find_cycle("d", refs.get) == ["b", "c", "a", "b"]  # d is not in it, but waits on it forever
    assert chain.find_cycle("e", refs.get) is None
    assert chain.find_cycle("x", {"x": "missing"}.get) is None
    long = {f"j{i}": f"j{i + 1}" for i in range(40)}
    assert len(chain.find_cycle("j0", long.get) or []) == chain.MAX_CHAIN + 1


@pytest.mark.parametrize(("teacher", "reason", "says"), [
    (None, "TeacherJobNotFound", "spec.teacher.jobRef.name: DistillationJob bbc-news-assistant not found"),
    (body(manifest("assistant.yaml")), "TeacherNotSucceeded", "is Pending; waiting for it to succeed"),
    (body(manifest("assistant.yaml"), "Running"), "TeacherNotSucceeded", "is Running"),
    (body(manifest("assistant.yaml"), "Failed"), "TeacherJobFailed", "DistillationJob bbc-news-assistant failed"),
    (body(manifest("assistant.yaml"), "Failed", gate=False), "TeacherGateNotMet", "did not pass its gate"),
    (body(manifest("assistant.yaml"), "Succeeded", gate=True, generation=2), "TeacherNotSucceeded",
     "changed and has not run again yet"),
    (body(manifest("assistant.yaml"), "Succeeded", gate=True), "TeacherReady", STUDENT_URI),
])
def test_teacher_outcome(teacher, reason, says):
    outcome = teacher_outcome(tiny_spec(), teacher)
    assert outcome.reason == reason and says in outcome.message
    assert (outcome.teacher_uri == STUDENT_URI) is outcome.ready


def test_a_teacher_of_another_task_is_refused():
    other = manifest("assistant.yaml")
    other["spec"]["task"]["labels"] = ["business", "sports", "politics", "entertainment", "tech"]
    outcome = teacher_outcome(tiny_spec(), body(other, "Succeeded", gate=True))
    assert outcome.reason == "TeacherMismatch" and outcome.message.startswith("spec.teacher.jobRef.name:")
    assert "same labels in the same order" in outcome.message


def test_taught_by_replaces_the_reference_with_the_student():
    job = DistillationJob.model_validate(manifest("tiny.yaml"))
    taught = chain.taught_by(job, STUDENT_URI)
    assert taught.spec.teacher.uri == STUDENT_URI and taught.spec.teacher.job_ref is None
    assert taught.spec.student == job.spec.student and taught.spec.teacher.adapt == job.spec.teacher.adapt


def wait_reason(cluster: Any, name: str, reason: str) -> dict[str, Any]:
    return cluster.wait_for(lambda: (c := condition(cluster, DISTILLATION_JOBS, name, "WaitingForTeacher"))
                            .get("reason") == reason and c, TIMEOUT, f"{name}: WaitingForTeacher {reason}")


def finish(cluster: Any, name: str, gate: bool = True) -> None:
    """The pipeline's results, then KubeRay's completion."""
    run = f"{name}-g1"
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, run), TIMEOUT, f"RayJob {run}")
    cluster.patch_status(DISTILLATION_JOBS, NS, name, {"results": {
        "gatePassed": gate, "retention": 0.97 if gate else 0.9,
        "artifactUri": f"file:///tmp/kubedistill/{name}/model_repository", "modelVersion": run}})
    cluster.patch_status(RAY_JOBS, NS, run, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})


@pytest.mark.slow
def test_a_chain_of_two_jobs_waits_then_runs(cluster):
    # The student's job first: its teacher does not exist yet, so it is refused (and nothing is started).
    cluster.create(manifest("tiny.yaml"))
    missing = wait_reason(cluster, TINY, "TeacherJobNotFound")
    assert "spec.teacher.jobRef.name" in missing["message"] and missing["status"] == "False"
    assert status(cluster, DISTILLATION_JOBS, TINY)["phase"] == "Failed"

    # The assistant's job appears: the student's now waits on it.
    cluster.create(manifest("assistant.yaml"))
    waiting = wait_reason(cluster, TINY, "TeacherNotSucceeded")
    assert waiting["status"] == "True" and f"DistillationJob {ASSISTANT} is" in waiting["message"]
    assert status(cluster, DISTILLATION_JOBS, TINY)["phase"] == "Pending"
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{ASSISTANT}-g1"), TIMEOUT, "the assistant's RayJob")
    cluster.patch_status(RAY_JOBS, NS, f"{ASSISTANT}-g1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    cluster.wait_for(lambda: status(cluster, DISTILLATION_JOBS, ASSISTANT).get("phase") == "Running", TIMEOUT,
                     "the assistant running")
    wait_reason(cluster, TINY, "TeacherNotSucceeded")
    assert cluster.get(RAY_JOBS, NS, f"{TINY}-g1") is None

    # The assistant succeeds and passes its gate: the student's job runs, taught by the assistant's student.
    finish(cluster, ASSISTANT)
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{TINY}-g1"), TIMEOUT, "the student's RayJob")
    ready = wait_reason(cluster, TINY, "TeacherReady")
    assert ready["status"] == "False" and STUDENT_URI in ready["message"]
    assert status(cluster, DISTILLATION_JOBS, TINY)["teacherUri"] == STUDENT_URI
    spec = yaml.safe_load(cluster.get(CONFIG_MAPS, NS, f"{TINY}-spec")["data"]["distillationjob.yaml"])["spec"]
    assert spec["teacher"]["uri"] == STUDENT_URI and "jobRef" not in spec["teacher"]
    assert {"TeacherJobNotFound", "TeacherNotSucceeded", "TeacherReady", "RayJobCreated"} <= {
        e["reason"] for e in cluster.events(NS, TINY)}

    # Once started, the run keeps its teacher: deleting the assistant's job no longer matters.
    cluster.delete(DISTILLATION_JOBS, NS, ASSISTANT)
    cluster.patch_status(RAY_JOBS, NS, f"{TINY}-g1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    cluster.wait_for(lambda: status(cluster, DISTILLATION_JOBS, TINY).get("phase") == "Running", TIMEOUT,
                     "the student's job running")
    assert condition(cluster, DISTILLATION_JOBS, TINY, "WaitingForTeacher")["reason"] == "TeacherReady"


@pytest.mark.slow
def test_failed_deleted_and_cyclic_teachers_fail_the_job(cluster):
    cluster.create(manifest("assistant.yaml"))
    cluster.create(manifest("tiny.yaml"))
    wait_reason(cluster, TINY, "TeacherNotSucceeded")

    # The assistant fails its gate: the student's job fails, saying why.
    finish(cluster, ASSISTANT, gate=False)
    gated = wait_reason(cluster, TINY, "TeacherGateNotMet")
    assert "0.0500 below evaluation.gate.minRetention 0.95" in gated["message"]
    assert status(cluster, DISTILLATION_JOBS, TINY)["phase"] == "Failed"
    assert condition(cluster, DISTILLATION_JOBS, TINY, "Succeeded")["reason"] == "TeacherGateNotMet"

    # Deleted: refused as missing.
    cluster.delete(DISTILLATION_JOBS, NS, ASSISTANT)
    wait_reason(cluster, TINY, "TeacherJobNotFound")
    assert cluster.get(RAY_JOBS, NS, f"{TINY}-g1") is None

    # Two jobs that teach each other: neither can start.
    cluster.create(manifest("tiny.yaml", name="ping", teacher="pong"))
    cluster.create(manifest("tiny.yaml", name="pong", teacher="ping"))
    for name in ("ping", "pong"):
        cycle = wait_reason(cluster, name, "TeacherCycle")
        assert cycle["message"].startswith("spec.teacher.jobRef.name: the teacher.jobRef references form a cycle")
        assert status(cluster, DISTILLATION_JOBS, name)["phase"] == "Failed"
    assert "ping → pong → ping" in condition(cluster, DISTILLATION_JOBS, "ping", "WaitingForTeacher")["message"]
    assert [r for r in cluster.list(RAY_JOBS, NS) if r["metadata"]["name"].startswith(("ping", "pong", TINY))] == []
