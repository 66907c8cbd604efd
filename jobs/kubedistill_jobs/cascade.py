"""The cascade frontier: thresholds for a tiered cascade (student, mid-size tiers, teacher) evaluated together.

A request climbs the models in order; the first whose confidence is at or above its threshold answers (the
router's rule: `confidence < threshold` goes on), and the teacher, last, answers whatever reaches it. The cost
of a setting is the expected cost of the models a request runs through: the share of requests reaching each
model times that model's unit cost (its measured latency, or its parameter count when latency was not measured;
the caller says which). Thresholds are searched on a grid of each model's own confidence quantiles and never
increase along the cascade (a bigger model is trusted at a lower confidence: the API's rule for router.tiers).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MAX_SETTINGS = 20_000  # threshold combinations tried at most: the grid per model shrinks as tiers are added
MAX_QUANTILES = 21  # a model's grid: its confidence quantiles 0, 0.05, ..., 1 (when the budget allows)
FRONTIER_POINTS = 40  # cheapest settings kept in the report for each accuracy reached


@dataclass(frozen=True)
class CascadePoint:
    thresholds: tuple[float, ...]  # one per model but the last (the teacher answers whatever reaches it)
    reach: tuple[float, ...]  # share of requests each model sees (the first: 1.0)
    answered: tuple[float, ...]  # share each model answers (sums to 1)
    accuracy: float
    cost: float  # sum of reach × unit cost


@dataclass(frozen=True)
class CascadeFrontier:
    names: list[str]  # cascade order, the teacher last
    unit_costs: list[float]
    cost_basis: str
    points: list[CascadePoint]  # the cheapest setting for each accuracy reached (Pareto), by cost
    recommended: CascadePoint | None  # None: no setting reaches target × the teacher's accuracy
    target: float
    teacher_accuracy: float


def threshold_grid(conf: npt.NDArray[np.float64], quantiles: int) -> list[float]:
    """0 (answer everything), the confidences at `quantiles` evenly spaced quantiles (lower interpolation: values
    that occur), and just above the largest (pass everything on; capped at 1, the API's bound)."""
    levels = np.quantile(conf, np.linspace(0.0, 1.0, quantiles), method="lower") if quantiles > 1 else \
        np.quantile(conf, [0.5], method="lower")
    above = min(1.0, float(np.nextafter(conf.max(), np.inf)))
    return sorted({0.0, *(float(v) for v in levels), above})


def cascade_point(confs: list[npt.NDArray[np.float64]], correct: list[npt.NDArray[np.float64]],
                  unit_costs: list[float], thresholds: tuple[float, ...]) -> CascadePoint:
    """The cascade at these thresholds: who each request reaches, who answers it, accuracy and cost."""
    pending = np.ones(len(correct[0]), dtype=bool)
    hits = np.zeros(len(correct[0]))
    reach, answered = [], []
    for j, ok in enumerate(correct):
        reach.append(float(pending.mean()))
        answers = pending & (confs[j] >= thresholds[j]) if j < len(thresholds) else pending
        hits += np.where(answers, ok, 0.0)
        answered.append(float(answers.mean()))
        pending &= ~answers
    cost = float(sum(r * c for r, c in zip(reach, unit_costs, strict=True)))
    return CascadePoint(tuple(thresholds), tuple(reach), tuple(answered), float(hits.mean()), cost)


def cascade_frontier(names: list[str], confs: list[npt.ArrayLike], correct: list[npt.ArrayLike],
                     unit_costs: list[float], *, cost_basis: str, target: float) -> CascadeFrontier:
    """Sweep the thresholds of a cascade of len(names) models (≥ 2, the teacher last).

    confs: one (n,) confidence array per model but the last (the router's signal, e.g. max-probability);
    correct: one (n,) array per model, booleans or scores in [0, 1] (gold correctness, or agreement with the
    teacher without labels); unit_costs: one per model, > 0 (latency in ms, or parameters: `cost_basis`).
    The recommended setting is the cheapest whose accuracy is ≥ target × the teacher's; ties go to the higher
    accuracy, then the lower thresholds. Raises ValueError for inputs that do not line up.
    """
    if len(names) < 2 or len(confs) != len(names) - 1 or len(correct) != len(names) \
            or len(unit_costs) != len(names):
        raise ValueError(f"cascade: {len(names)} models need {len(names) - 1} confidence arrays, {len(names)} "
                         f"correctness arrays and {len(names)} costs; got {len(confs)}, {len(correct)}, "
                         f"{len(unit_costs)}")
    conf_arrays = [np.asarray(c, dtype=np.float64) for c in confs]
    ok_arrays = [np.asarray(c, dtype=np.float64) for c in correct]
    n = len(ok_arrays[0])
    if n == 0 or any(len(a) != n for a in [*conf_arrays, *ok_arrays]):
        raise ValueError(f"cascade: need equally many (> 0) rows per model, got "
                         f"{[len(a) for a in [*conf_arrays, *ok_arrays]]}")
    if any(not c > 0 or math.isinf(c) for c in unit_costs):
        raise ValueError(f"cascade: unit costs must be positive and finite, got {unit_costs}")
    per_model = max(3, int(MAX_SETTINGS ** (1 / len(conf_arrays))))
    grids = [threshold_grid(c, max(1, min(MAX_QUANTILES, per_model - 2))) for c in conf_arrays]
    teacher_accuracy = float(ok_arrays[-1].mean())
    bar = target * teacher_accuracy - 1e-12
    points = []
    for setting in itertools.product(*grids):
        if any(later > earlier for earlier, later in itertools.pairwise(setting)):
            continue  # thresholds must not increase along the cascade
        points.append(cascade_point(conf_arrays, ok_arrays, unit_costs, setting))
    by_preference = sorted(points, key=lambda p: (p.cost, -p.accuracy, p.thresholds))
    recommended = next((p for p in by_preference if p.accuracy >= bar), None)
    pareto, best = [], -1.0
    for p in by_preference:  # each kept point is cheaper than any more accurate one
        if p.accuracy > best + 1e-12:
            pareto.append(p)
            best = p.accuracy
    if len(pareto) > FRONTIER_POINTS:
        keep = np.unique(np.linspace(0, len(pareto) - 1, FRONTIER_POINTS).round().astype(int))
        pareto = [pareto[i] for i in keep]
    if recommended is not None and recommended not in pareto:
        pareto = sorted([*pareto, recommended], key=lambda p: p.cost)
    return CascadeFrontier(list(names), list(unit_costs), cost_basis, pareto, recommended, target, teacher_accuracy)
