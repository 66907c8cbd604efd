"""What a StudentDeployment's routers see, from their Prometheus metrics: pure functions from the text each router
pod serves at /metrics to `status.live` and the conditions EscalationAboveExpected and AgreementBelowExpected.

Figures are over a window: the counters' growth between two reads of the same pod (a pod read for the first time,
or whose counters went back because it restarted, gives its baseline only). Metric names:
router/kubedistill_router/metrics.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubedistill.api.studentdeployment import LiveFigures, LiveStatusSpec, ServedShare
from kubedistill_operator.status.conditions import condition

PREFIX = "kubedistill_router_"
# sample name (counters carry `_total`) → PodSample field; labelled counters are summed over their labels
COUNTERS = {
    f"{PREFIX}requests_total": "requests",
    f"{PREFIX}routed_instances_total": "routed",
    f"{PREFIX}escalations_total": "escalations",
    f"{PREFIX}shadow_compared_total": "compared",
    f"{PREFIX}shadow_agreed_total": "agreed",
    f"{PREFIX}teacher_errors_total": "teacher_errors",
    f"{PREFIX}instances_total": "instances",
}
SERVED_BY = f"{PREFIX}instances_total"  # also kept per `served_by` label: who answered (student, a tier, teacher)
LATENCY = f"{PREFIX}request_seconds"
ESCALATION, AGREEMENT = "EscalationAboveExpected", "AgreementBelowExpected"


@dataclass(frozen=True)
class PodSample:
    """One read of one router pod's /metrics; `at` in seconds of a monotonic clock."""

    at: float
    requests: float = 0.0
    routed: float = 0.0
    escalations: float = 0.0
    compared: float = 0.0
    agreed: float = 0.0
    teacher_errors: float = 0.0
    instances: float = 0.0
    served_by: tuple[tuple[str, float], ...] = ()  # (served_by label, instances), summed over `degraded`
    latency_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound in s, cumulative count), +Inf last


def parse_metrics(text: str, at: float) -> PodSample:
    """The router's counters and request-latency histogram from its Prometheus text exposition.

    Raises ValueError for text that is not the Prometheus format."""
    values = dict.fromkeys(COUNTERS.values(), 0.0)
    buckets: dict[float, float] = {}
    served: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTERS:
                values[COUNTERS[sample.name]] += sample.value
            if sample.name == SERVED_BY:
                who = sample.labels.get("served_by", "")
                served[who] = served.get(who, 0.0) + sample.value
            elif sample.name == f"{LATENCY}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return PodSample(at=at, latency_buckets=tuple(sorted(buckets.items())), served_by=tuple(sorted(served.items())),
                     **values)


@dataclass
class Window:
    """The growth of the counters over a window, summed over the pods that had a previous read."""

    pods: int = 0  # pods read now
    seconds_by_pod: list[float] = field(default_factory=list)
    requests_per_second: float = 0.0
    teacher_errors_per_second: float = 0.0
    routed: float = 0.0
    escalations: float = 0.0
    compared: float = 0.0
    agreed: float = 0.0
    served_by: dict[str, float] = field(default_factory=dict)  # instances answered, by who answered
    served_by_per_second: dict[str, float] = field(default_factory=dict)
    latency_buckets: dict[float, float] = field(default_factory=dict)

    @property
    def has_span(self) -> bool:
        return bool(self.seconds_by_pod)


def _grew(previous: PodSample, current: PodSample) -> bool:
    """False when a counter went back: the pod restarted and its counters began again."""
    served = dict(current.served_by)
    return all(getattr(current, name) >= getattr(previous, name) for name in COUNTERS.values()) \
        and all(served.get(who, 0.0) >= count for who, count in previous.served_by) and current.at > previous.at


def window(previous: dict[str, PodSample], current: dict[str, PodSample]) -> Window:
    """The window from the previous reads to these (both keyed by pod uid)."""
    out = Window(pods=len(current))
    for pod, now in current.items():
        before = previous.get(pod)
        if before is None or not _grew(before, now):
            continue  # a baseline: counted from the next read on
        seconds = now.at - before.at
        out.seconds_by_pod.append(seconds)
        out.requests_per_second += (now.requests - before.requests) / seconds
        out.teacher_errors_per_second += (now.teacher_errors - before.teacher_errors) / seconds
        out.routed += now.routed - before.routed
        out.escalations += now.escalations - before.escalations
        out.compared += now.compared - before.compared
        out.agreed += now.agreed - before.agreed
        earlier_served = dict(before.served_by)
        for who, count in now.served_by:
            grown = count - earlier_served.get(who, 0.0)
            out.served_by[who] = out.served_by.get(who, 0.0) + grown
            out.served_by_per_second[who] = out.served_by_per_second.get(who, 0.0) + grown / seconds
        earlier = dict(before.latency_buckets)
        for bound, count in now.latency_buckets:
            out.latency_buckets[bound] = out.latency_buckets.get(bound, 0.0) + count - earlier.get(bound, 0.0)
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound → count), interpolated linearly inside its bucket as
    Prometheus' histogram_quantile does; the highest finite bound when it falls in +Inf; None with no count."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _significant(value: float | None, digits: int = 3) -> float | None:
    """Rounded to `digits` significant digits, so that noise below them does not rewrite the status."""
    if value is None or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def served_shares(w: Window, cascade: list[str]) -> list[ServedShare] | None:
    """Who answered the window's instances: each name of `cascade` (the student, the tiers in order, the teacher)
    even at 0, then any other name the routers reported; None before a pod has been read twice."""
    if not w.has_span:
        return None
    total = sum(w.served_by.values())
    names = [*cascade, *sorted(set(w.served_by) - set(cascade))]
    return [ServedShare(served_by=name,
                        share=round(w.served_by.get(name, 0.0) / total, 4) if total > 0 else None,
                        instances_per_second=_significant(w.served_by_per_second.get(name, 0.0)))
            for name in names]


def figures(w: Window, expected_escalation: float | None, expected_agreement: float | None,
            unreachable: list[str], cascade: list[str] | None = None) -> LiveFigures:
    """status.live for a window (rates null until a pod has been read twice); `cascade`: the names that answer,
    in order (the student, router.tiers, the teacher), listed in `servedBy` even when they answered nothing."""
    p95 = quantile(w.latency_buckets, 0.95) if w.has_span else None
    return LiveFigures(
        served_by=served_shares(w, cascade or []),
        pods=w.pods,
        requests_per_second=_significant(w.requests_per_second) if w.has_span else None,
        escalation_share=round(w.escalations / w.routed, 4) if w.routed > 0 else None,
        shadow_agreement=round(w.agreed / w.compared, 4) if w.compared > 0 else None,
        p95_latency_ms=_significant(p95 * 1000) if p95 is not None else None,
        teacher_errors_per_second=_significant(w.teacher_errors_per_second) if w.has_span else None,
        expected_escalation_share=expected_escalation,
        expected_agreement=expected_agreement,
        unreachable=unreachable[:16] or None,
    )


@dataclass(frozen=True)
class Expectation:
    """What the job's evaluation expects, or why nothing is expected (`why`)."""

    value: float | None
    why: str = ""


def live_conditions(w: Window, spec: LiveStatusSpec, escalation: Expectation, agreement: Expectation,
                    generation: int | None) -> list[dict[str, Any]]:
    """EscalationAboveExpected and AgreementBelowExpected for this window. A condition whose window has fewer than
    spec.minInstances instances is left out (it keeps its last state); one with nothing to compare with is
    Unknown."""
    out = []
    checks = ((ESCALATION, escalation, w.routed, w.escalations, "escalation share", "escalationMargin",
               spec.escalation_margin, "routed", 1.0),
              (AGREEMENT, agreement, w.compared, w.agreed, "shadow agreement", "agreementMargin",
               spec.agreement_margin, "shadow-compared", -1.0))
    for kind, expected, count, hits, what, margin_field, margin, counted, sign in checks:
        if expected.value is None:
            out.append(condition(kind, None, "NoExpectation", expected.why, generation))
            continue
        if count < spec.min_instances:
            continue
        live = hits / count
        departed = sign * (live - expected.value) > margin
        seen = f"live {what} {live:.4f} ({int(count)} {counted} instances in the last window)"
        if departed:
            direction = "exceeds" if sign > 0 else "is below"
            out.append(condition(kind, True, kind, f"{seen} {direction} the job's {expected.value:.4f} by more than "
                                 f"spec.liveStatus.{margin_field} ({margin:g})", generation))
        else:
            reason = "EscalationAsExpected" if sign > 0 else "AgreementAsExpected"
            out.append(condition(kind, False, reason, f"{seen} is within spec.liveStatus.{margin_field} ({margin:g}) "
                                 f"of the job's {expected.value:.4f}", generation))
    return out
