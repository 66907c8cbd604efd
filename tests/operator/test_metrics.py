"""The operator's Prometheus endpoint: what it counts, read back through prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import platform
import urllib.request
from typing import Any

import kopf
import pytest
from kubedistill_harness import JOB, NS, TIMEOUT, OperatorHarness, example, free_port
from kubedistill_operator.cli import ENV_METRICS_PORT, options_from_args
from kubedistill_operator.kubeapi import DISTILLATION_JOBS, RAY_JOBS
from kubedistill_operator.main import OperatorOptions
from kubedistill_operator.metrics import OperatorMetrics, counted, reconciliation
from prometheus_client.parser import text_string_to_metric_families

from kubedistill import __version__
from kubedistill.cli import build_parser

JOB_PHASES = {"Pending", "Running", "Succeeded", "Failed", "Unknown"}


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scraped_when(port: int, check: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    samples = scrape(port)
    return samples if check(samples) else None


@contextlib.contextmanager
def served(metrics: OperatorMetrics):  # type: ignore[no-untyped-def]
    with metrics.serving("127.0.0.1", 0) as port:
        yield port


# The flag, its environment variable and its default.
def test_metrics_port_flag_env_and_default(monkeypatch):
    monkeypatch.delenv(ENV_METRICS_PORT, raising=False)
    parse = build_parser().parse_args
    assert options_from_args(parse(["operator"])).metrics_port == 8081
    assert options_from_args(parse(["operator", "--metrics-port", "9400"])).metrics_port == 9400
    assert options_from_args(parse(["operator", "--metrics-port", "0"])).metrics_port is None
    monkeypatch.setenv(ENV_METRICS_PORT, "9500")
    assert options_from_args(parse(["operator"])).metrics_port == 9500
    assert options_from_args(parse(["operator", "--metrics-port", "9400"])).metrics_port == 9400
    monkeypatch.setenv(ENV_METRICS_PORT, "metrics")
    with pytest.raises(SystemExit, match=ENV_METRICS_PORT):
        options_from_args(parse(["operator"]))
    # Run as a library (and by the test harness), the operator serves no metrics unless asked.
    assert OperatorOptions().metrics_port is None


def test_importing_registers_nothing_globally():
    from prometheus_client import REGISTRY

    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("kubedistill_operator")]


# The handler wrapper and the phase gauge, on fake bodies.
def test_wrapped_handlers_count_each_outcome_and_time_it():
    metrics = OperatorMetrics()
    calls: list[str] = []

    @reconciliation("DistillationJob")
    def handler(body: Any, memo: Any, **_: Any) -> None:
        calls.append(body["metadata"]["name"])
        error = body.get("raise")
        if error is not None:
            raise error

    memo = kopf.Memo(metrics=metrics)
    handler(body={"metadata": {"name": "ok"}}, memo=memo, logger=None)
    handler(body={"metadata": {"name": "ok-again"}}, memo=memo)
    for error in (kopf.TemporaryError("secret missing", delay=1), ValueError("a bug"),
                  kopf.PermanentError("bad spec")):
        with pytest.raises(type(error)):  # the wrapper hands every error on to kopf unchanged
            handler(body={"metadata": {"name": "bad"}, "raise": error}, memo=memo)
    handler(body={"metadata": {"name": "no-metrics"}}, memo=kopf.Memo())  # an operator without metrics
    assert calls == ["ok", "ok-again", "bad", "bad", "bad", "no-metrics"]
    assert handler.__name__ == "handler"

    with served(metrics) as port:
        samples = scrape(port)
    total = "kubedistill_operator_reconciliations_total"
    assert value(samples, total, kind="DistillationJob", outcome="success") == 2
    assert value(samples, total, kind="DistillationJob", outcome="temporary_error") == 2
    assert value(samples, total, kind="DistillationJob", outcome="permanent_error") == 1
    assert value(samples, total, kind="StudentDeployment", outcome="success") == 0  # present before any call
    duration = "kubedistill_operator_reconcile_duration_seconds"
    assert value(samples, duration + "_count", kind="DistillationJob") == 5
    assert value(samples, duration + "_count", kind="StudentDeployment") == 0
    assert value(samples, duration + "_bucket", kind="DistillationJob", le="+Inf") == 5
    build = value(samples, "kubedistill_operator_build_info", version=__version__,
                  kopf_version=importlib.metadata.version("kopf"), python_version=platform.python_version())
    assert build == 1


def test_counted_blocks_count_what_runs_inside_them_only():
    metrics = OperatorMetrics()
    memo = kopf.Memo(metrics=metrics)
    for needs_action in (True, False, False):  # an event handler that mostly has nothing to do
        if needs_action:
            with counted(memo, "DistillationJob"):
                pass
    with pytest.raises(kopf.PermanentError), counted(memo, "DistillationJob"):
        raise kopf.PermanentError("bad spec")
    with counted(kopf.Memo(), "DistillationJob"):  # an operator without metrics
        pass
    with served(metrics) as port:
        samples = scrape(port)
    total = "kubedistill_operator_reconciliations_total"
    assert value(samples, total, kind="DistillationJob", outcome="success") == 1
    assert value(samples, total, kind="DistillationJob", outcome="permanent_error") == 1
    assert value(samples, "kubedistill_operator_reconcile_duration_seconds_count", kind="DistillationJob") == 2


def _body(kind: str, name: str, phase: str | None, namespace: str = NS) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def test_objects_gauge_follows_the_observed_phase():
    metrics = OperatorMetrics()
    job, student = "DistillationJob", "StudentDeployment"
    metrics.observe(job, {"type": "ADDED"}, _body(job, "a", None))
    metrics.observe(job, {"type": "ADDED"}, _body(job, "b", "Running"))
    metrics.observe(job, {"type": "ADDED"}, _body(job, "c", "Running", namespace="other"))
    metrics.observe(student, {"type": "ADDED"}, _body(student, "a", "Ready"))
    with served(metrics) as port:
        samples = scrape(port)
        objects = "kubedistill_operator_objects"
        assert value(samples, objects, kind=job, phase="Unknown") == 1
        assert value(samples, objects, kind=job, phase="Running") == 2
        assert value(samples, objects, kind=job, phase="Succeeded") == 0  # every phase, zero when empty
        assert value(samples, objects, kind=student, phase="Ready") == 1
        assert value(samples, objects, kind=student, phase="Degraded") == 0

        metrics.observe(job, {"type": "MODIFIED"}, _body(job, "a", "Pending"))
        metrics.observe(job, {"type": "MODIFIED"}, _body(job, "b", "Succeeded"))
        metrics.observe(job, {"type": "DELETED"}, _body(job, "c", "Running", namespace="other"))
        metrics.observe(student, {"type": "DELETED"}, _body(student, "a", "Ready"))
        samples = scrape(port)
    assert {phase: value(samples, objects, kind=job, phase=phase) for phase in JOB_PHASES} == {
        "Pending": 1, "Running": 0, "Succeeded": 1, "Failed": 0, "Unknown": 0}
    assert sum(v for (name, labels), v in samples.items() if name == objects and ("kind", student) in labels) == 0


def test_ray_jobs_created_are_counted_from_the_reconcilers_events():
    metrics = OperatorMetrics()
    posted: list[str] = []
    event = metrics.counting_events(lambda obj, type_, reason, message: posted.append(reason))
    body = _body("DistillationJob", JOB, "Pending")
    event(body, "Normal", "RayJobCreated", "RayJob bbc-news-topics-g1 created (generation 1)")
    event(body, "Warning", "SecretNotFound", "missing")
    event(body, "Normal", "RayJobCreated", "RayJob bbc-news-topics-g2 created (generation 2)")
    assert posted == ["RayJobCreated", "SecretNotFound", "RayJobCreated"]  # every event still posted
    with served(metrics) as port:
        assert value(scrape(port), "kubedistill_operator_rayjobs_created_total") == 2


def test_the_endpoint_stops_with_its_context():
    metrics = OperatorMetrics()
    with served(metrics) as port:
        scrape(port)
    with pytest.raises(OSError):
        scrape(port)


# The real operator against the API emulator, with its metrics endpoint on.
def _job(name: str = JOB) -> dict[str, Any]:
    job = example("quickstart/distillationjob.yaml")
    job["metadata"]["name"] = name
    return job


@pytest.mark.slow  # runs the real operator for seconds
def test_operator_serves_its_reconciliations_rayjobs_and_objects(tmp_path, monkeypatch):
    import kubedistill_harness

    port = free_port()
    monkeypatch.setattr(kubedistill_harness, "OperatorOptions",
                        functools.partial(OperatorOptions, metrics_host="127.0.0.1", metrics_port=port))
    with OperatorHarness(tmp_path) as cluster:
        cluster.start_operator()
        total = "kubedistill_operator_reconciliations_total"
        objects = "kubedistill_operator_objects"

        cluster.create(_job())
        cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
        phase = cluster.wait_for(lambda: ((cluster.get(DISTILLATION_JOBS, NS, JOB) or {}).get("status") or {})
                                 .get("phase"), TIMEOUT, "the job's phase")
        samples = cluster.wait_for(
            lambda: scraped_when(port, lambda s: value(s, objects, kind="DistillationJob", phase=phase) == 1),
            TIMEOUT, f"the job counted in phase {phase}")
        assert value(samples, "kubedistill_operator_rayjobs_created_total") == 1
        assert value(samples, total, kind="DistillationJob", outcome="success") >= 1
        assert value(samples, "kubedistill_operator_reconcile_duration_seconds_count", kind="DistillationJob") >= 1
        assert value(samples, total, kind="DistillationJob", outcome="permanent_error") == 0

        # A spec the API refuses: a permanent error, no RayJob.
        bad = copy.deepcopy(_job("bad-loss"))
        bad["spec"]["distillation"]["loss"] = "mse"
        cluster.create(bad)
        samples = cluster.wait_for(
            lambda: scraped_when(port, lambda s: value(s, total, kind="DistillationJob", outcome="permanent_error")),
            TIMEOUT, "a permanent error")
        assert value(samples, total, kind="DistillationJob", outcome="permanent_error") == 1
        assert value(samples, "kubedistill_operator_rayjobs_created_total") == 1

        # Deleted objects leave the gauge.
        cluster.delete(DISTILLATION_JOBS, NS, JOB)
        cluster.delete(DISTILLATION_JOBS, NS, "bad-loss")
        cluster.wait_for(lambda: not sum(v for (name, labels), v in scrape(port).items()
                                         if name == objects and ("kind", "DistillationJob") in labels),
                         TIMEOUT, "no DistillationJob left in the gauge")
        cluster.stop_operator()
    with pytest.raises(OSError):  # the endpoint goes with the operator
        scrape(port)
