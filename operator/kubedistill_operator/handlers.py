"""kopf registration, and nothing else: each handler calls a plain reconcile function with explicit arguments.

Handlers return nothing: a returned value would land in `status.<handler>`, which the structural schema prunes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

from kubedistill.api import GROUP, VERSION
from kubedistill_operator import naming
from kubedistill_operator.kubeapi import KubeApi
from kubedistill_operator.metrics import JOB_KIND, STUDENT_KIND, counted, reconciliation
from kubedistill_operator.reconcile.job import (
    failure_needs_action,
    reconcile_dependents,
    reconcile_job,
    refresh_job,
)
from kubedistill_operator.reconcile.live import refresh_live
from kubedistill_operator.reconcile.student import (
    job_change_matters,
    reconcile_student,
    reconcile_students_of_job,
    refresh_student,
)

JOBS = (GROUP, VERSION, "distillationjobs")
STUDENTS = (GROUP, VERSION, "studentdeployments")
OURS = {naming.MANAGED_BY_LABEL: naming.MANAGER}
Handler = TypeVar("Handler", bound=Callable[..., Any])


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    # kopf.event reads any mapping with metadata; its hint names only kopf's own Body.
    kopf.event(obj, type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]


def _status(body: Any) -> dict[str, Any]:
    return dict(body.get("status") or {})


def on_spec(resource: tuple[str, str, str], prefix: str,
            registry: kopf.OperatorRegistry) -> Callable[[Handler], Handler]:
    """One handler for an object's whole spec: on the operator's start (resume), on create and on every
    change of `spec` (kopf ids `<prefix>-resume`, `-create`, `-update`)."""

    def register(handler: Handler) -> Handler:
        kopf.on.update(*resource, id=f"{prefix}-update", field="spec", registry=registry)(handler)
        kopf.on.create(*resource, id=f"{prefix}-create", registry=registry)(handler)
        kopf.on.resume(*resource, id=f"{prefix}-resume", registry=registry)(handler)
        return handler

    return register


def _fail_job(memo: Any, namespace: str, name: str) -> None:
    with counted(memo, JOB_KIND):
        refresh_job(memo.ctx, namespace, name)


def _namespaced(namespace: str | None) -> str:
    """Both resources and every child the operator watches are namespaced: kopf always gives a namespace."""
    if namespace is None:
        raise kopf.PermanentError("a namespaced resource arrived without a namespace")
    return namespace


def _live_wanted(spec: Any, status: Any, **_: Any) -> bool:
    """A deployed StudentDeployment whose spec.liveStatus is enabled (the default)."""
    return (spec.get("liveStatus") or {}).get("enabled", True) is not False and bool(status.get("deploymentName"))


def build_registry(api: KubeApi, live_seconds: float = 30.0) -> kopf.OperatorRegistry:
    """Every handler of the operator, in a registry of its own (so tests can run several operators).

    The level-based safety net is the event handlers on the children: every event of a RayJob or a
    Deployment (including the ADDED events of each periodic re-list) copies its whole state into the
    parent's status, and a child deleted under a running parent is recreated. Only one timer: the live status
    of a deployed StudentDeployment (`live_seconds` apart). kopf puts its finalizer on the resources it runs
    for, so that it stops the timer before they go; `spec.liveStatus.enabled: false` does without both (a
    stopped operator would otherwise hold their deletion until it runs again)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return api.connection_info()

    # DistillationJob → spec ConfigMap, pipeline RBAC, RayJob.
    @on_spec(JOBS, "job", registry)
    @reconciliation(JOB_KIND)
    def job_changed(body: Any, reason: Any, memo: Any, **_: Any) -> None:
        reconcile_job(memo.ctx, dict(body), creating=reason == kopf.Reason.CREATE)

    # The pipeline reported an input error into status.failure: fail the job and stop the run's retries.
    # Every event of every job comes here and nearly none needs anything: async, so that the check runs on the
    # loop at once. A sync handler waits for a free worker thread on every event; behind busy reconciles that
    # wait outlasts kopf's consistency window (settings.persistence.consistency_timeout), after which kopf takes
    # an event older than its own annotations patch (the job's status write during the create handler) for a
    # new creation and runs the create handler again. Only those that act are counted as reconciliations.
    @kopf.on.event(*JOBS, id="job-failure", registry=registry)
    async def job_failure(event: Any, body: Any, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        if event.get("type") != "DELETED" and failure_needs_action(dict(body)):
            await memo.ctx.in_thread(_fail_job, memo, _namespaced(namespace), name)

    # Teacher assistant chains: the jobs each job teaches (their spec.teacher.jobRef names it).
    @kopf.index(*JOBS, id="jobs_by_teacher", registry=registry)
    def jobs_by_teacher(namespace: str | None, body: Any, spec: Any, **_: Any) -> dict[tuple[str, str], Any]:
        teacher = ((spec.get("teacher") or {}).get("jobRef") or {}).get("name")
        if not teacher:
            return {}
        job = {"metadata": dict(body["metadata"]), "spec": dict(spec), "status": _status(body)}
        return {(_namespaced(namespace), teacher): job}

    # Async for the same reasons as job_event below: the index is copied on the event loop, and the reconciling
    # goes on in a thread without holding up this job's next events.
    @kopf.on.event(*JOBS, id="job-to-dependents", registry=registry)
    async def teacher_event(event: Any, body: Any, namespace: str | None, name: str, memo: Any,
                            **kwargs: Any) -> None:
        index: kopf.Index[tuple[str, str], Any] = kwargs["jobs_by_teacher"]
        dependents = copy.deepcopy(list(index.get((_namespaced(namespace), name), [])))
        if dependents:
            teacher = None if event.get("type") == "DELETED" else copy.deepcopy(dict(body))
            memo.ctx.in_background(reconcile_dependents, memo.ctx, _namespaced(namespace), dependents, teacher)

    @kopf.on.event("ray.io", "v1", "rayjobs", id="rayjob-status", labels=OURS, registry=registry)
    @reconciliation(JOB_KIND)
    def ray_job_event(event: Any, body: Any, namespace: str | None, labels: Any, memo: Any, **_: Any) -> None:
        job = labels.get(naming.INSTANCE_LABEL)
        if job:
            gone = event.get("type") == "DELETED"
            refresh_job(memo.ctx, _namespaced(namespace), job, ray_job=None if gone else dict(body))

    # StudentDeployment → router ConfigMap, Deployment, Service, HPA.
    @kopf.index(*STUDENTS, id="students_by_job", registry=registry)
    def students_by_job(namespace: str | None, body: Any, spec: Any, **_: Any) -> dict[tuple[str, str], Any]:
        job = ((spec.get("source") or {}).get("jobRef") or {}).get("name")
        if not job:
            return {}
        student = {"metadata": dict(body["metadata"]), "spec": dict(spec), "status": _status(body)}
        return {(_namespaced(namespace), job): student}

    @on_spec(STUDENTS, "student", registry)
    @reconciliation(STUDENT_KIND)
    def student_changed(body: Any, memo: Any, **_: Any) -> None:
        reconcile_student(memo.ctx, dict(body))

    # The routers' metrics into status.live. kopf's timer runs it in its thread pool, never twice at once for one
    # object, and pauses it on an operator that is not the peering's active one; `memo` is this object's own.
    @kopf.timer(*STUDENTS, id="live-status", interval=live_seconds, initial_delay=live_seconds, when=_live_wanted,
                registry=registry)
    def live_status(namespace: str | None, name: str, status: Any, memo: Any, **_: Any) -> None:
        refresh_live(memo.ctx, _namespaced(namespace), name, memo.setdefault("live_samples", {}),
                     seen=copy.deepcopy(dict(status)))

    @kopf.on.event("apps", "v1", "deployments", id="deployment-status",
                   labels={**OURS, naming.COMPONENT_LABEL: naming.ROUTER}, registry=registry)
    @reconciliation(STUDENT_KIND)
    def deployment_event(event: Any, body: Any, namespace: str | None, labels: Any, memo: Any, **_: Any) -> None:
        owner = labels.get(naming.INSTANCE_LABEL)
        if owner:
            gone = event.get("type") == "DELETED"
            refresh_student(memo.ctx, _namespaced(namespace), owner, None if gone else dict(body))

    # Async, so that the index is read on the event loop, which edits it as StudentDeployments come and go (a
    # bulk delete). Which students a change concerns is decided here (cheap); their reconciling runs in a thread,
    # on copies, without holding up the job's next events: awaiting a busy thread pool here kept a job's events
    # waiting past kopf's consistency window, and kopf then ran the job's create handler a second time.
    @kopf.on.event(*JOBS, id="job-to-students", registry=registry)
    async def job_event(event: Any, body: Any, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
        students_by_job: kopf.Index[tuple[str, str], Any] = kwargs["students_by_job"]  # the index above
        # Copied here, on the event loop: the loop edits the index while a worker thread would iterate it.
        students = copy.deepcopy(list(students_by_job.get((_namespaced(namespace), name), [])))
        job = None if event.get("type") == "DELETED" else copy.deepcopy(dict(body))
        affected = [student for student in students if job_change_matters(student, job)]
        if affected:
            memo.ctx.in_background(reconcile_students_of_job, memo.ctx, _namespaced(namespace), affected, job)

    return registry
