"""The operator's Prometheus metrics, in a registry of its own (one per running operator), and their endpoint.

Importing this module registers and starts nothing: `run_operator` makes an `OperatorMetrics` when a metrics
port is set, hands it to the handlers through kopf's memo (`memo.metrics`), and serves it while kopf runs.

- `kubedistill_operator_reconciliations_total{kind, outcome}`: handler calls that reconcile a resource, by the
  resource's kind and how they ended: `success`, `temporary_error` (kopf retries it: `kopf.TemporaryError` or
  any other exception) or `permanent_error` (`kopf.PermanentError`: the spec can never work).
- `kubedistill_operator_reconcile_duration_seconds{kind}`: how long those calls took.
- `kubedistill_operator_objects{kind, phase}`: the resources the operator sees, by `status.phase` as last
  observed (`Unknown` before the first status); every phase of the API is reported, 0 when none is in it.
- `kubedistill_operator_rayjobs_created_total`: RayJobs the operator created (one per run of a job).
- `kubedistill_operator_build_info{version, kopf_version, python_version}`: always 1.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, get_args

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubedistill import __version__
from kubedistill.api.distillationjob import JobPhase
from kubedistill.api.studentdeployment import DeploymentPhase

JOB_KIND = "DistillationJob"
STUDENT_KIND = "StudentDeployment"
PHASES: dict[str, tuple[str, ...]] = {JOB_KIND: get_args(JobPhase), STUDENT_KIND: get_args(DeploymentPhase)}
UNKNOWN_PHASE = "Unknown"
OUTCOMES = ("success", "temporary_error", "permanent_error")
# The reason of the Event the job's reconciler posts once per RayJob it creates.
RAY_JOB_CREATED = "RayJobCreated"
# Seconds: a few API calls (milliseconds) up to a slow API server.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

F = TypeVar("F", bound=Callable[..., Any])
EventFn = Callable[[dict[str, Any], str, str, str], None]


class _Phases(Collector):
    """The `objects` gauge, computed at scrape time from the last phase seen of each object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> phase

    def observe(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._seen.pop((kind, namespace, name), None)
            else:
                self._seen[(kind, namespace, name)] = phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("kubedistill_operator_objects", "Resources the operator sees, by kind and by "
                                  f"status.phase as last observed ({UNKNOWN_PHASE}: no phase yet).",
                                  labels=["kind", "phase"])
        with self._lock:
            counts = {(kind, phase): 0 for kind, phases in PHASES.items() for phase in (*phases, UNKNOWN_PHASE)}
            for (kind, _, _), phase in self._seen.items():
                counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            gauge.add_metric([kind, phase], count)
        yield gauge


class OperatorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.reconciliations = Counter("kubedistill_operator_reconciliations", "Handler calls that reconcile a "
                                       "resource, by its kind and outcome (success, temporary_error: retried, "
                                       "permanent_error: not retried).", ["kind", "outcome"], registry=r)
        self.reconcile_seconds = Histogram("kubedistill_operator_reconcile_duration_seconds", "Duration of the "
                                           "handler calls that reconcile a resource, by its kind.", ["kind"],
                                           buckets=BUCKETS, registry=r)
        self.rayjobs_created = Counter("kubedistill_operator_rayjobs_created", "RayJobs the operator created "
                                       "(one per run of a DistillationJob).", registry=r)
        self.build = Info("kubedistill_operator_build", "The operator's version and those of kopf and Python.",
                          registry=r)
        self.build.info({"version": __version__, "kopf_version": _version_of("kopf"),
                         "python_version": platform.python_version()})
        for kind in PHASES:  # every series from the start: rates and alerts need no first event
            for outcome in OUTCOMES:
                self.reconciliations.labels(kind, outcome)
            self.reconcile_seconds.labels(kind)
        self.phases = _Phases()
        r.register(self.phases)

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count and time one reconciliation of `kind`; its exception, if any, goes on to kopf."""
        outcome = "temporary_error"
        started = time.perf_counter()
        try:
            yield
            outcome = "success"
        except kopf.PermanentError:
            outcome = "permanent_error"
            raise
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)
            self.reconciliations.labels(kind, outcome).inc()

    def observe(self, kind: str, event: Any, body: Any) -> None:
        """Record an object's phase from a watch event (DELETED forgets it)."""
        meta = body.get("metadata") or {}
        gone = (event or {}).get("type") == "DELETED"
        phase = None if gone else ((body.get("status") or {}).get("phase") or UNKNOWN_PHASE)
        self.phases.observe(kind, meta.get("namespace") or "", meta.get("name") or "", phase)

    def counting_events(self, post: EventFn) -> EventFn:
        """`post` (the reconcilers' Event function), also counting the RayJobs the Events announce."""
        def event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
            if reason == RAY_JOB_CREATED:
                self.rayjobs_created.inc()
            post(obj, type_, reason, message)
        return event

    def register_observers(self, registry: kopf.OperatorRegistry, resources: dict[str, tuple[str, str, str]]) -> None:
        """Event handlers that follow the phase of every resource of each kind ({kind: (group, version, plural)})."""
        for kind, resource in resources.items():
            kopf.on.event(*resource, id=f"metrics-{resource[2]}", registry=registry)(self._observer(kind))

    def _observer(self, kind: str) -> Callable[..., Any]:
        async def observe(event: Any, body: Any, **_: Any) -> None:  # async: no executor thread for a dict update
            self.observe(kind, event, body)
        return observe

    @contextlib.contextmanager
    def serving(self, host: str, port: int) -> Iterator[int]:
        """Serve `/metrics` on host:port (0: a free port) in a thread; yields the port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        try:
            yield int(server.server_port)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def reconciliation(kind: str) -> Callable[[F], F]:
    """Decorate a (sync) kopf handler that reconciles a resource of `kind`: counted and timed through
    `memo.metrics` when the operator has metrics; called as it is otherwise."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            with counted(kwargs.get("memo"), kind):
                return fn(*args, **kwargs)
        return handler  # type: ignore[return-value]
    return decorate


@contextlib.contextmanager
def counted(memo: Any, kind: str) -> Iterator[None]:
    """Count and time the block as one reconciliation of `kind` when the operator has metrics (`memo.metrics`):
    the whole of a decorated handler, or the part of one that acts when it often has nothing to do."""
    metrics = _metrics_of(memo)
    if metrics is None:
        yield
        return
    with metrics.reconciling(kind):
        yield


def _metrics_of(memo: Any) -> OperatorMetrics | None:
    metrics = memo.get("metrics") if isinstance(memo, dict) else None
    return metrics if isinstance(metrics, OperatorMetrics) else None


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
