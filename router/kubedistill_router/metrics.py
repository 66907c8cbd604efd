"""The router's Prometheus metrics, in a registry of its own (one per app).

Per-request updates stay cheap: labelled children are looked up once and kept, and the gauges derived
from counts (in flight, escalation ratio, shadow agreement) are computed when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

# Seconds: sub-millisecond routing up to slow teachers.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Instances per Triton call: 1 when requests come one at a time, up to max_batch_size under load.
CALL_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Ratio:
    """A gauge of part / whole with no sample while whole is 0: nothing measured yet is not a ratio of 0.0
    (which would read as, say, total disagreement), so a dashboard or alert sees no data instead."""

    def __init__(self, name: str, documentation: str, read: Callable[[], tuple[float, float]],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.read = name, documentation, read
        registry.register(self)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation)
        part, whole = self.read()
        if whole:
            family.add_metric([], part / whole)
        return [family]


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kubedistill_router_requests", "Predict requests by HTTP code and by who served "
                                "them (student, teacher, mixed; none for errors).", ["code", "served_by"], registry=r)
        self.instances = Counter("kubedistill_router_instances", "Instances answered, by who served them (student, "
                                 "a tier of router.tiers, teacher); degraded: the student (or a tier) answered "
                                 "because the teacher could not.", ["served_by", "degraded"], registry=r)
        self.escalations = Counter("kubedistill_router_escalations", "Instances below the confidence threshold, "
                                   "sent to the teacher.", registry=r)
        self.routed = Counter("kubedistill_router_routed_instances", "Instances the route mode decided on.",
                              registry=r)
        self.escalation_ratio = Gauge("kubedistill_router_escalation_ratio", "Share of routed instances escalated "
                                      "since start.", registry=r)
        self.request_seconds = Histogram("kubedistill_router_request_seconds", "Predict latency through the router.",
                                         buckets=BUCKETS, registry=r)
        self.student_seconds = Histogram("kubedistill_router_student_seconds", "Student latency per request "
                                         "(Triton, and any wait for a shared call).",
                                         buckets=BUCKETS, registry=r)
        self.teacher_seconds = Histogram("kubedistill_router_teacher_seconds", "Teacher call latency.",
                                         buckets=BUCKETS, registry=r)
        self.teacher_errors = Counter("kubedistill_router_teacher_errors", "Teacher calls that failed, by reason "
                                      "(timeout, error, circuit-open; `<tier>:<reason>` for a tier of "
                                      "router.tiers).", ["reason"], registry=r)
        self.tier_seconds = Histogram("kubedistill_router_tier_seconds", "Call latency of each tier between the "
                                      "student and the teacher (router.tiers).", ["tier"], buckets=BUCKETS,
                                      registry=r)
        self.circuit_open = Gauge("kubedistill_router_teacher_circuit_open", "1 while the teacher's circuit "
                                  "breaker is open.", registry=r)
        self.call_instances = Histogram("kubedistill_router_triton_call_instances", "Instances per Triton call, "
                                        "by model (student, teacher): concurrent requests share calls.", ["model"],
                                        buckets=CALL_SIZE_BUCKETS, registry=r)
        self.rejected = Counter("kubedistill_router_rejected", "Requests refused with 429 (concurrency limit).",
                                registry=r)
        self.in_flight = Gauge("kubedistill_router_in_flight", "Predict requests in flight.", registry=r)
        self.shadow_compared = Counter("kubedistill_router_shadow_compared", "Shadow instances the teacher also "
                                       "answered.", registry=r)
        self.shadow_agreed = Counter("kubedistill_router_shadow_agreed", "Shadow instances where student and "
                                     "teacher agreed.", registry=r)
        self.shadow_agreement = Ratio("kubedistill_router_shadow_agreement", "Live student-teacher agreement "
                                      "on shadow traffic since start (absent until the first comparison).",
                                      lambda: (self._agreed, self._compared), registry=r)
        self.shadow_dropped = Counter("kubedistill_router_shadow_dropped", "Sampled shadow batches dropped (too "
                                      "many in flight, or the teacher failed).", registry=r)
        self.in_flight_now = 0  # kept by the app's concurrency limit, read at scrape time
        self.in_flight.set_function(lambda: self.in_flight_now)
        self._routed = 0
        self._escalated = 0
        self._compared = 0
        self._agreed = 0
        self.escalation_ratio.set_function(lambda: self._escalated / self._routed if self._routed else 0.0)
        self._children: dict[tuple[Any, ...], Any] = {}

    def count_request(self, code: int, served_by: str) -> None:
        key = ("requests", code, served_by)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(str(code), served_by)
        child.inc()

    def count_instances(self, served_by: str, degraded: bool, count: int = 1) -> None:
        key = ("instances", served_by, degraded)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.instances.labels(served_by, str(degraded).lower())
        child.inc(count)

    def call_sizes(self, model: str) -> Callable[[int], None]:
        """What to call with the size of each Triton call to `model`."""
        return self.call_instances.labels(model).observe

    def record_routing(self, routed: int, escalated: int) -> None:
        self._routed += routed
        self._escalated += escalated
        self.routed.inc(routed)
        if escalated:
            self.escalations.inc(escalated)

    def record_shadow(self, compared: int, agreed: int) -> None:
        self._compared += compared
        self._agreed += agreed
        self.shadow_compared.inc(compared)
        self.shadow_agreed.inc(agreed)
