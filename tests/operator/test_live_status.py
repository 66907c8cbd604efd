"""A StudentDeployment's live status: the router's own metrics (kubedistill_router.metrics) read back into
status.live, and the conditions EscalationAboveExpected and AgreementBelowExpected driven by traffic that drifts
from the job's evaluation, with the real operator against the emulated API server."""

from __future__ import annotations

import threading
from typing import Any

import kubedistill_harness as harness
import pytest
from kubedistill_harness import JOB, NS, SD, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator import naming
from kubedistill_operator.kubeapi import DEPLOYMENTS, DISTILLATION_JOBS, PODS, RAY_JOBS, STUDENT_DEPLOYMENTS
from kubedistill_operator.status.live import (
    Expectation,
    PodSample,
    figures,
    live_conditions,
    parse_metrics,
    quantile,
    window,
)
from kubedistill_router.metrics import RouterMetrics
from prometheus_client import generate_latest, start_http_server

from kubedistill.api.studentdeployment import LiveStatusSpec


def _text(metrics: RouterMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_the_routers_own_metrics_parse_into_a_window():
    metrics = RouterMetrics()
    first = parse_metrics(_text(metrics), at=10.0)
    assert first == PodSample(at=10.0, latency_buckets=first.latency_buckets)
    for _ in range(40):
        metrics.count_request(200, "student")
        metrics.request_seconds.observe(0.004)
    metrics.count_request(503, "none")
    metrics.record_routing(100, 30)
    metrics.record_shadow(20, 15)
    metrics.teacher_errors.labels("timeout").inc(2)
    metrics.teacher_errors.labels("error").inc(3)
    second = parse_metrics(_text(metrics), at=20.0)
    assert (second.requests, second.routed, second.escalations) == (41, 100, 30)
    assert (second.compared, second.agreed, second.teacher_errors) == (20, 15, 5)
    w = window({"pod-a": first}, {"pod-a": second, "pod-b": second})  # pod-b: read for the first time
    assert w.pods == 2 and w.seconds_by_pod == [10.0]
    assert w.requests_per_second == pytest.approx(4.1) and w.teacher_errors_per_second == pytest.approx(0.5)
    live = figures(w, 0.1, 0.9, [])
    assert (live.escalation_share, live.shadow_agreement) == (0.3, 0.75)
    assert 2.5 <= live.p95_latency_ms <= 5.0  # in the (2.5 ms, 5 ms] bucket
    # A restart (counters back to 0) is a new baseline, not a negative rate.
    assert not window({"pod-a": second}, {"pod-a": first.__class__(at=30.0)}).has_span


def test_live_status_counts_instances_by_the_tier_that_answered():
    metrics = RouterMetrics()
    metrics.count_instances("student", False, 5)
    first = parse_metrics(_text(metrics), at=0.0)
    metrics.count_instances("student", False, 60)
    metrics.count_instances("mid", False, 25)
    metrics.count_instances("mid", True, 5)  # the teacher failed: the mid tier's answer stood, degraded
    metrics.count_instances("teacher", False, 10)
    second = parse_metrics(_text(metrics), at=10.0)
    assert dict(second.served_by) == {"student": 65, "mid": 30, "teacher": 10} and second.instances == 105
    w = window({"pod-a": first}, {"pod-a": second})
    shown = figures(w, None, None, [], ["student", "mid", "big", "teacher"]).to_wire()["servedBy"]
    assert shown == [{"servedBy": "student", "share": 0.6, "instancesPerSecond": 6.0},
                     {"servedBy": "mid", "share": 0.3, "instancesPerSecond": 3.0},
                     {"servedBy": "big", "share": 0.0, "instancesPerSecond": 0.0},  # declared, answered nothing
                     {"servedBy": "teacher", "share": 0.1, "instancesPerSecond": 1.0}]
    # Two pods add up; a name outside the cascade (an older router's tier) is listed after it.
    metrics_b = RouterMetrics()
    before_b = parse_metrics(_text(metrics_b), at=0.0)
    metrics_b.count_instances("old-tier", False, 20)
    both = window({"a": first, "b": before_b}, {"a": second, "b": parse_metrics(_text(metrics_b), at=5.0)})
    shares = {s.served_by: (s.share, s.instances_per_second) for s in figures(both, None, None, [],
                                                                               ["student", "teacher"]).served_by}
    assert shares == {"student": (0.5, 6.0), "mid": (0.25, 3.0), "teacher": (0.0833, 1.0), "old-tier": (0.1667, 4.0)}
    # A restarted pod (its per-tier counter went back) is a baseline, not negative instances.
    metrics_c = RouterMetrics()
    metrics_c.count_instances("student", False, 100)
    restarted = parse_metrics(_text(metrics_c), at=20.0)
    assert not window({"pod-a": second}, {"pod-a": restarted}).has_span
    assert figures(window({}, {"pod-a": second}), None, None, [], ["student"]).served_by is None  # first read


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile():
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.15)
    assert quantile(buckets, 0.95) == pytest.approx(0.35)
    assert quantile({0.1: 0.0, float("inf"): 4.0}, 0.95) == 0.1  # past the last finite bound
    assert quantile({float("inf"): 0.0}, 0.95) is None


def _window(routed: float, escalations: float, compared: float = 0.0, agreed: float = 0.0) -> Any:
    before = PodSample(at=0.0)
    after = PodSample(at=30.0, routed=routed, escalations=escalations, compared=compared, agreed=agreed)
    return window({"p": before}, {"p": after})


def test_conditions_turn_past_the_margins_and_wait_for_enough_instances():
    spec = LiveStatusSpec(escalation_margin=0.05, agreement_margin=0.05, min_instances=50)
    expected = (Expectation(0.1), Expectation(0.9))
    by_type = {c["type"]: c for c in live_conditions(_window(100, 14, 100, 86), spec, *expected, 3)}
    assert by_type["EscalationAboveExpected"]["status"] == "False"  # 0.14 is within 0.1 + 0.05
    assert by_type["EscalationAboveExpected"]["reason"] == "EscalationAsExpected"
    assert by_type["AgreementBelowExpected"]["status"] == "False"  # 0.86 is within 0.9 - 0.05
    drifted = {c["type"]: c for c in live_conditions(_window(100, 16, 100, 84), spec, *expected, 3)}
    assert drifted["EscalationAboveExpected"]["status"] == "True"
    assert drifted["EscalationAboveExpected"]["reason"] == "EscalationAboveExpected"
    assert "0.1600" in drifted["EscalationAboveExpected"]["message"]
    assert "spec.liveStatus.escalationMargin (0.05)" in drifted["EscalationAboveExpected"]["message"]
    assert drifted["AgreementBelowExpected"]["status"] == "True"
    assert drifted["AgreementBelowExpected"]["observedGeneration"] == 3
    assert live_conditions(_window(49, 40, 10, 0), spec, *expected, 3) == []  # too few: left as they were
    unknown = live_conditions(_window(100, 90), spec, Expectation(None, "no job"), Expectation(None, "no job"), 3)
    assert [(c["status"], c["reason"]) for c in unknown] == [("Unknown", "NoExpectation")] * 2


class Traffic:
    """A router's metrics, served over HTTP by prometheus_client as the router serves them, with traffic whose
    share escalated and shadow agreement the test sets."""

    def __init__(self, host: str, port: int) -> None:
        self.metrics = RouterMetrics()
        self.escalated, self.agreeing, self.running = 0.1, 0.95, True
        self._stop = threading.Event()
        self._server, self._thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        while not self._stop.wait(0.05):
            if not self.running:
                continue
            for _ in range(20):
                self.metrics.count_request(200, "student")
                self.metrics.request_seconds.observe(0.004)
            self.metrics.record_routing(20, round(20 * self.escalated))
            escalated = round(20 * self.escalated)
            self.metrics.count_instances("student", False, 20 - escalated)
            self.metrics.count_instances("mid", False, escalated // 2)
            self.metrics.count_instances("teacher", False, escalated - escalated // 2)
            self.metrics.record_shadow(20, round(20 * self.agreeing))

    def close(self) -> None:
        self._stop.set()
        self._sender.join(5)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _deployed(cluster: harness.OperatorHarness, port: int, pod: bool = True) -> None:
    """The quickstart's job succeeded (escalation 0.1, agreement 0.95) and its deployment is up with one ready
    router pod at 127.0.0.1 (the Deployment controller's and kubelet's part played here; `pod`: False, none)."""
    cluster.create(volume_claim("models"))
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"results": {
        "gatePassed": True, "retention": 0.97, "agreement": 0.95, "recommendedThreshold": 0.8,
        "escalationRate": 0.1, "artifactUri": f"pvc://models/{JOB}/run-1/model_repository", "modelVersion": "run-1"}})
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    sd = example("quickstart/studentdeployment.yaml")
    sd["spec"]["replicas"] = 1
    sd["spec"]["service"]["port"] = port
    sd["spec"]["router"]["tiers"] = [{"name": "mid", "model": "mid", "threshold": 0.5}]
    cluster.create(sd)
    deployment = cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, NS, SD), TIMEOUT, "the Deployment")
    cluster.patch_status(DEPLOYMENTS, NS, SD, {
        "observedGeneration": deployment["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1})
    if not pod:
        return
    cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{SD}-abc12", "labels": naming.labels(SD, naming.ROUTER)}, "spec": {"containers": []}})
    cluster.patch_status(PODS, NS, f"{SD}-abc12", {
        "podIP": "127.0.0.1", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})


def _events(cluster: harness.OperatorHarness, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(NS, SD) if e["reason"] == reason]


def test_live_status_follows_a_router_whose_traffic_drifts(tmp_path):
    port = harness.free_port()
    traffic = Traffic("127.0.0.1", port)
    try:
        with harness.OperatorHarness(tmp_path, live_status_seconds=0.5) as cluster:
            cluster.start_operator()
            _deployed(cluster, port)

            def live(key: str, value: Any = None) -> Any:
                figures = status(cluster, STUDENT_DEPLOYMENTS, SD).get("live") or {}
                return figures if (figures.get(key) == value if value is not None else figures.get(key)) else None

            def turned(type_: str, state: str) -> dict[str, Any] | None:
                found = condition(cluster, STUDENT_DEPLOYMENTS, SD, type_)
                return found if found.get("status") == state else None

            seen = cluster.wait_for(lambda: live("escalationShare", 0.1), TIMEOUT, "the live escalation share")
            assert seen["pods"] == 1 and seen["expectedEscalationShare"] == 0.1 and seen["expectedAgreement"] == 0.95
            assert seen["requestsPerSecond"] > 0 and 2.5 <= seen["p95LatencyMs"] <= 5.0
            assert seen["teacherErrorsPerSecond"] == 0
            # 2 of every 20 instances climb: one answered by the mid tier, one by the teacher.
            shares = {s["servedBy"]: s["share"] for s in seen["servedBy"]}
            assert shares == {"student": 0.9, "mid": 0.05, "teacher": 0.05}
            assert [s["servedBy"] for s in seen["servedBy"]] == ["student", "mid", "teacher"]
            assert all(s["instancesPerSecond"] > 0 for s in seen["servedBy"])
            assert cluster.wait_for(lambda: turned("EscalationAboveExpected", "False"), TIMEOUT, "as expected")[
                "reason"] == "EscalationAsExpected"
            assert turned("AgreementBelowExpected", "False")

            traffic.escalated = 0.4  # the live traffic is harder than the eval split
            above = cluster.wait_for(lambda: turned("EscalationAboveExpected", "True"), TIMEOUT, "escalation above")
            assert "exceeds the job's 0.1000" in above["message"]
            assert cluster.wait_for(lambda: _events(cluster, "EscalationAboveExpected"), TIMEOUT, "its Event")[0][
                "type"] == "Warning"

            traffic.agreeing = 0.7  # the student drifts from the teacher
            below = cluster.wait_for(lambda: turned("AgreementBelowExpected", "True"), TIMEOUT, "agreement below")
            assert "is below the job's 0.9500" in below["message"]
            cluster.wait_for(lambda: _events(cluster, "AgreementBelowExpected"), TIMEOUT, "its Event")

            traffic.escalated = 0.1  # back to what the job measured
            cluster.wait_for(lambda: turned("EscalationAboveExpected", "False"), TIMEOUT, "escalation back")
            cluster.wait_for(lambda: _events(cluster, "EscalationAsExpected"), TIMEOUT, "the Normal Event")
            assert len(_events(cluster, "EscalationAboveExpected")) == 1  # one Event per turn, not per window

            # No traffic: the figures settle, and the operator stops patching the status while it keeps reading.
            traffic.running = False
            cluster.wait_for(lambda: live("requestsPerSecond", 0.0), TIMEOUT, "the request rate at 0")

            def status_patches() -> int:
                return sum(1 for c in cluster.operator_calls if c.resource == "studentdeployments"
                           and c.subresource == "status" and c.verb == "patch")

            def reads() -> int:
                return sum(1 for c in cluster.operator_calls if c.resource == "pods" and c.verb == "list")

            patches, start = status_patches(), reads()
            cluster.wait_for(lambda: reads() >= start + 4, TIMEOUT, "four more reads of the routers")
            assert status_patches() == patches
            assert cluster.rbac_rules()[("", "pods")] == {"list"}
    finally:
        traffic.close()


def test_without_router_pods_the_timer_only_lists_them(tmp_path):
    with harness.OperatorHarness(tmp_path, live_status_seconds=0.3) as cluster:
        cluster.start_operator()
        _deployed(cluster, harness.free_port(), pod=False)

        def lists() -> int:
            return sum(1 for c in cluster.operator_calls if c.resource == "pods" and c.verb == "list")

        cluster.wait_for(lambda: lists() >= 2, TIMEOUT, "the timer's first reads")
        start, before = lists(), len(cluster.operator_calls)
        cluster.wait_for(lambda: lists() >= start + 4, TIMEOUT, "four more reads of the routers")
        others = [c for c in cluster.operator_calls[before:]
                  if c.verb != "watch" and c.resource not in ("pods", "events")]
        assert others == []  # no read of the deployment or its job, no status patch
        assert "live" not in status(cluster, STUDENT_DEPLOYMENTS, SD)


def test_what_the_job_expects_and_when_it_expects_nothing():
    from kubedistill_operator.reconcile.live import expectations

    from kubedistill.api import StudentDeployment

    sd = StudentDeployment.model_validate(example("quickstart/studentdeployment.yaml"))
    job = {"spec": {"task": {"type": "sequence-classification"}}, "status": {"results": {
        "agreement": 0.95, "recommendedThreshold": 0.8, "escalationRate": 0.1}}}
    escalation, agreement = expectations(sd, {"threshold": 0.8}, job)
    assert (escalation.value, agreement.value) == (0.1, 0.95)
    # Another threshold than the recommended one: the job reports no share escalated for it.
    assert expectations(sd, {"threshold": 0.6}, job)[0].value is None
    pinned = sd.model_copy(deep=True)
    pinned.spec.router.threshold = 0.8
    assert "not the job's recommended one" in expectations(pinned, {"threshold": 0.8}, job)[0].why
    # A causal LM's agreement is per token; the router's shadow compares whole answers.
    causal = {**job, "spec": {"task": {"type": "causal-lm"}}}
    assert expectations(sd, {"threshold": 0.8}, causal)[1].value is None
    doc = example("quickstart/studentdeployment.yaml")
    doc["spec"]["source"] = {"modelRepositoryUri": "s3://models/m"}
    served = StudentDeployment.model_validate(doc)
    assert all(e.value is None and "modelRepositoryUri" in e.why for e in expectations(served, {}, None))
