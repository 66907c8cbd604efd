"""Related objects created and deleted together, as `kubectl apply -k` and a GitOps prune do, with the real
kopf operator against kmock's emulator: every handler runs clean (no error logged) and the steady state is
right. kopf runs the handlers of different objects at once, in threads, while its event loop keeps editing
its indexes: a handler that read an index from a thread failed with "dictionary changed size during
iteration" and dropped the event."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kubedistill_harness import NS, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator.kubeapi import DEPLOYMENTS, DISTILLATION_JOBS, RAY_JOBS, STUDENT_DEPLOYMENTS

pytestmark = pytest.mark.slow  # each runs the real operator for seconds

JOBS = 2
STUDENTS_PER_JOB = 5
WAIT = 4 * TIMEOUT  # the machine's cores are shared: a deadline for a burst, not a latency target


class ErrorLog(logging.Handler):
    """Every record that carries an exception, from any logger: kopf logs a handler's unexpected exception
    with its traceback on `kopf.objects` (an event handler's is then dropped); the expected waits
    (`kopf.TemporaryError`) are logged as errors too, but without one."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} {self.format(r) if r.exc_info else ''}" for r in self.records]


@pytest.fixture
def errors():
    handler = ErrorLog()
    handler.setFormatter(logging.Formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def job(name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(example("quickstart/distillationjob.yaml"))
    manifest["metadata"]["name"] = name
    manifest["spec"]["output"]["uri"] = f"/tmp/kubedistill/{name}"
    return manifest


def student(name: str, job_name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(example("quickstart/studentdeployment.yaml"))
    manifest["metadata"]["name"] = name
    manifest["spec"]["source"]["jobRef"]["name"] = job_name
    return manifest


def names() -> list[tuple[str, list[str]]]:
    return [(f"job-{j}", [f"job-{j}-sd-{s}" for s in range(STUDENTS_PER_JOB)]) for j in range(JOBS)]


def succeed(cluster: Any, job_name: str) -> None:
    """The pipeline's results, then KubeRay's completion."""
    cluster.patch_status(DISTILLATION_JOBS, NS, job_name, {"results": {
        "gatePassed": True, "retention": 0.97, "recommendedThreshold": 0.8, "modelVersion": "run-1",
        "artifactUri": f"pvc://models/{job_name}/model_repository"}})
    cluster.patch_status(RAY_JOBS, NS, f"{job_name}-g1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})


def reason(cluster: Any, name: str) -> str | None:
    return condition(cluster, STUDENT_DEPLOYMENTS, name, "ModelAvailable").get("reason")


def test_bulk_create_of_related_objects_in_any_order(cluster, errors):
    cluster.create(volume_claim("models"))  # the artifacts' claim (`succeed`)
    # Students first, their jobs after, all at once: each student waits, then follows its job.
    for job_name, students in names():
        for name in students:
            cluster.create(student(name, job_name))
    for job_name, _ in names():
        cluster.create(job(job_name))
    every_student = [name for _, students in names() for name in students]
    for job_name, _ in names():
        cluster.wait_for(lambda j=job_name: cluster.get(RAY_JOBS, NS, f"{j}-g1"), WAIT, f"{job_name}'s RayJob")
    cluster.wait_for(lambda: all(reason(cluster, n) == "JobNotSucceeded" for n in every_student), WAIT,
                     "every student waiting on its running job")
    for job_name, _ in names():
        succeed(cluster, job_name)
    cluster.wait_for(lambda: all(status(cluster, STUDENT_DEPLOYMENTS, n).get("modelVersion") == "run-1"
                                 for n in every_student), WAIT, "every student serving its job's model")
    for job_name, students in names():
        for name in students:
            deployment = cluster.get(DEPLOYMENTS, NS, name)
            uri = status(cluster, STUDENT_DEPLOYMENTS, name)["modelRepositoryUri"]
            assert uri == f"pvc://models/{job_name}/model_repository" and deployment is not None
    assert len(cluster.list(RAY_JOBS, NS)) == JOBS
    assert len(cluster.list(DEPLOYMENTS, NS)) == JOBS * STUDENTS_PER_JOB
    assert errors.lines() == []
    # Each run created once: the job's own status writes during its create handler never pass for a new creation.
    assert len([c for c in cluster.operator_calls if c.verb == "create" and c.resource == "rayjobs"]) == JOBS
    assert not [key for key in cluster.server.errors if key[2] == 409]
    # No HPA asked for: none of them autoscales.
    assert not [c for c in cluster.operator_calls if c.resource == "horizontalpodautoscalers"]


def test_bulk_delete_of_jobs_with_their_students(cluster, errors):
    for job_name, students in names():
        cluster.create(job(job_name))
        for name in students:
            cluster.create(student(name, job_name))
    every_student = [name for _, students in names() for name in students]
    cluster.wait_for(lambda: all(reason(cluster, n) == "JobNotSucceeded" for n in every_student), WAIT,
                     "every student waiting on its job")
    # A prune: each job, then its students, as fast as the API takes them.
    for job_name, students in names():
        cluster.delete(DISTILLATION_JOBS, NS, job_name)
        for name in students:
            cluster.delete(STUDENT_DEPLOYMENTS, NS, name)
    cluster.wait_for(lambda: not cluster.list(DISTILLATION_JOBS, NS) and not cluster.list(STUDENT_DEPLOYMENTS, NS),
                     WAIT, "everything deleted")
    # The operator goes on: a new job and its student are reconciled as usual.
    cluster.create(job("after"))
    cluster.create(student("after-sd", "after"))
    cluster.wait_for(lambda: reason(cluster, "after-sd") == "JobNotSucceeded", WAIT, "the next student waiting")
    assert errors.lines() == []


def test_a_job_deleted_under_its_students_tells_each_why(cluster, errors):
    (job_name, students), *_ = names()
    cluster.create(job(job_name))
    for name in students:
        cluster.create(student(name, job_name))
    cluster.wait_for(lambda: all(reason(cluster, n) == "JobNotSucceeded" for n in students), WAIT, "waiting")
    cluster.delete(DISTILLATION_JOBS, NS, job_name)
    cluster.wait_for(lambda: all(reason(cluster, n) == "JobNotFound" for n in students), WAIT,
                     "every student told its job is gone")
    assert errors.lines() == []
