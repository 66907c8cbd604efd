"""Refresh a StudentDeployment's `status.live` from its routers, and turn its live conditions.

The operator reads each ready router pod's /metrics through the pod's IP (the port the router listens on, the
Service's), rather than the routers reporting into status: the routers stay stateless and need no API
credentials or RBAC of their own, the API server gets one status patch per deployment and window instead of one
per pod, and the figures of all replicas are summed in one place. It needs `list` on pods and a network path from
the operator to the router pods (a NetworkPolicy that admits Prometheus must admit the operator too).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from typing import Any

from pydantic import ValidationError

from kubedistill.api import StudentDeployment
from kubedistill.api.distillationjob import JobResults
from kubedistill_operator import naming
from kubedistill_operator.kubeapi import DISTILLATION_JOBS, PODS, STUDENT_DEPLOYMENTS
from kubedistill_operator.reconcile.context import ApiStatusWriter, Context
from kubedistill_operator.status.conditions import StatusUpdate
from kubedistill_operator.status.live import (
    AGREEMENT,
    ESCALATION,
    Expectation,
    PodSample,
    figures,
    live_conditions,
    parse_metrics,
    window,
)

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT = 2.0  # seconds per pod: a router that answers slower is reported unreachable this window
AS_EXPECTED = {ESCALATION: "EscalationAsExpected", AGREEMENT: "AgreementAsExpected"}


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and bool(status.get("podIP")) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def _scrape(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=SCRAPE_TIMEOUT) as response:
        return str(response.read().decode())


def expectations(sd: StudentDeployment, status: dict[str, Any],
                 job: dict[str, Any] | None) -> tuple[Expectation, Expectation]:
    """The job's expected escalation share and agreement, or why there is none to compare with."""
    source = sd.spec.source
    if source.job_ref is None:
        why = "spec.source.modelRepositoryUri: no job evaluation to compare the live figures with"
        return Expectation(None, why), Expectation(None, why)
    results = JobResults.from_status((job or {}).get("status") or {})
    if results is None:
        why = f"DistillationJob {source.job_ref.name} has no status.results to compare with"
        return Expectation(None, why), Expectation(None, why)
    router = sd.spec.router
    if router.mode != "route":
        escalation = Expectation(None, f"spec.router.mode is {router.mode}: only route escalates on the threshold")
    elif results.escalation_rate is None or results.recommended_threshold is None:
        escalation = Expectation(None, f"DistillationJob {source.job_ref.name} has no routing frontier")
    elif router.threshold is not None or status.get("threshold") != results.recommended_threshold:
        escalation = Expectation(None, "the threshold in use is not the job's recommended one, whose share escalated "
                                       "is the only one the job reports (status.results.escalationRate)")
    else:
        escalation = Expectation(results.escalation_rate)
    task = (((job or {}).get("spec") or {}).get("task") or {}).get("type")
    if task == "causal-lm":  # the job's agreement is per token, the router's shadow compares whole answers
        agreement = Expectation(None, f"DistillationJob {source.job_ref.name} is causal-lm: its agreement is per "
                                      "token, the router's shadow agreement is of whole answers")
    elif results.agreement is None:
        agreement = Expectation(None, f"DistillationJob {source.job_ref.name} measured no agreement")
    else:
        agreement = Expectation(results.agreement)
    return escalation, agreement


def cascade(sd: StudentDeployment) -> list[str]:
    """The names that may answer, in the order requests climb them (the router's `served_by` labels)."""
    router = sd.spec.router
    if router.mode in ("student-only", "shadow"):  # the shadow teacher's answers are compared, never served
        return ["student"]
    if router.mode == "teacher-only":
        return ["teacher", "student"]  # the student answers, degraded, when the teacher cannot
    return ["student", *(t.name for t in router.tiers or [] if router.mode == "route"), "teacher"]


def refresh_live(ctx: Context, namespace: str, name: str, previous: dict[str, PodSample],
                 clock: Any = time.monotonic, seen: dict[str, Any] | None = None) -> None:
    """Read the routers, write status.live and the live conditions when they changed, post an Event when a
    condition turns. `previous` (the last read of each pod, by uid) is updated in place. `seen` is the status as
    the operator last saw it (kopf's body): when it shows no router pod and none is ready, the pods' list is the
    only call (no read of the deployment or its job, no patch). None: unknown, always read."""
    with ctx.lock(STUDENT_DEPLOYMENTS.plural, namespace, name):
        _refresh_live(ctx, namespace, name, previous, clock, seen)


def _shows_pods(seen: dict[str, Any] | None) -> bool:
    return seen is None or bool((seen.get("live") or {}).get("pods"))


def _refresh_live(ctx: Context, namespace: str, name: str, previous: dict[str, PodSample], clock: Any,
                  seen: dict[str, Any] | None) -> None:
    selector = naming.selector(name, naming.ROUTER)
    pods = [p for p in ctx.api.list(PODS, namespace, selector)
            if selector.items() <= ((p.get("metadata") or {}).get("labels") or {}).items() and _ready(p)]
    if not pods and not previous and not _shows_pods(seen):
        # Nothing to read and nothing shown to clear (a deployment whose routers are not up yet, or idle since
        # they went): no figures can change, so the deployment and its job are not read.
        return
    body = ctx.api.get(STUDENT_DEPLOYMENTS, namespace, name)
    if body is None:
        return
    try:
        sd = StudentDeployment.model_validate(body)
    except ValidationError:
        return  # the spec handler reports an invalid spec
    status = body.get("status") or {}
    if not sd.spec.live_status.enabled or not status.get("deploymentName"):
        return
    current: dict[str, PodSample] = {}
    unreachable = []
    for pod in pods:
        meta, ip = pod["metadata"], pod["status"]["podIP"]
        try:
            current[meta.get("uid") or meta["name"]] = parse_metrics(_scrape(ip, sd.spec.service.port), clock())
        except (OSError, urllib.error.URLError, ValueError) as error:
            unreachable.append(f"{meta['name']}: {error}"[:200])
    w = window(previous, current)
    previous.clear()
    previous.update(current)

    job = ctx.api.get(DISTILLATION_JOBS, namespace, sd.spec.source.job_ref.name) if sd.spec.source.job_ref else None
    escalation, agreement = expectations(sd, status, job)
    live = figures(w, escalation.value, agreement.value, unreachable, cascade(sd))
    generation = body["metadata"].get("generation")
    conditions = live_conditions(w, sd.spec.live_status, escalation, agreement, generation)
    shown = live.to_wire()
    update = StatusUpdate(fields={"live": shown}, conditions=conditions)
    if update.is_noop(status):
        return  # nothing changed: no patch
    # Merge-patch: a figure that became null must be sent as null to be removed.
    update.fields["live"] = {**{k: None for k in status.get("live") or {}}, **shown}
    ApiStatusWriter(ctx.api, STUDENT_DEPLOYMENTS, namespace, name).write(update)
    was = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    for c in conditions:
        if c["status"] == "True" and was.get(c["type"]) != "True":
            ctx.event(body, "Warning", c["reason"], c["message"])
        elif c["status"] == "False" and was.get(c["type"]) == "True":
            ctx.event(body, "Normal", AS_EXPECTED[c["type"]], c["message"])
