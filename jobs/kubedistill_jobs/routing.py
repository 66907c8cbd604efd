"""The routing frontier: what a confidence threshold costs (escalations) and buys (cascade accuracy).

The cascade answers with the student when its confidence is at or above the threshold and with the
teacher below it — exactly kubedistill.confidence.escalate, which the router runs, so the
recommended threshold means the same thing in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kubedistill.confidence import Signal, confidence
from kubedistill.report import FrontierPoint, Routing, SignalSweep

GRID = np.round(np.linspace(0.0, 1.0, 101), 4)


@dataclass(frozen=True)
class Point:
    threshold: float
    escalation_rate: float
    accuracy: float


@dataclass(frozen=True)
class Frontier:
    signal: str
    points: list[Point]  # the report's grid, plus the recommended point
    recommended: Point | None
    target: float
    teacher_accuracy: float
    student_accuracy: float


def _point(conf: npt.NDArray[np.float64], student_ok: npt.NDArray[np.float64], teacher_ok: npt.NDArray[np.float64],
           threshold: float) -> Point:
    escalated = conf < threshold
    correct = np.where(escalated, teacher_ok, student_ok)
    return Point(float(threshold), float(escalated.mean()), float(correct.mean()))


def frontier(
    student_probs: npt.ArrayLike,
    student_correct: npt.ArrayLike,
    teacher_correct: npt.ArrayLike,
    *,
    signal: Signal = "max-probability",
    target: float = 0.99,
) -> Frontier:
    """Sweep the threshold on the student's confidence.

    student_probs (n, classes); student_correct / teacher_correct (n,) booleans (gold-label correctness,
    or agreement with the teacher when there are no labels). The recommended threshold is the one with
    the lowest escalation rate whose cascade accuracy is ≥ target × the teacher's accuracy, searched over
    every distinct confidence value (exact), not only the grid; ties go to the lower threshold.
    """
    return frontier_from_confidence(confidence(student_probs, signal), student_correct, teacher_correct,
                                    signal=signal, target=target)


def frontier_from_confidence(
    conf: npt.ArrayLike, student_correct: npt.ArrayLike, teacher_correct: npt.ArrayLike, *, signal: str, target: float
) -> Frontier:
    """`frontier` on confidences already computed (per token for a causal LM, where probabilities are large).

    Correctness may be booleans or quality scores in [0, 1] (a generated answer's F1): accuracy is their mean.
    """
    conf = np.asarray(conf, dtype=np.float64)
    s_ok = np.asarray(student_correct, dtype=np.float64)
    t_ok = np.asarray(teacher_correct, dtype=np.float64)
    if not (len(conf) == len(s_ok) == len(t_ok)) or len(conf) == 0:
        raise ValueError(f"frontier: need equally many (> 0) rows, got {len(conf)}, {len(s_ok)}, {len(t_ok)}")
    teacher_accuracy = float(t_ok.mean())
    bar = target * teacher_accuracy
    # Escalation is `conf < threshold`, so the candidates that change the outcome are the distinct
    # confidences themselves, 0 (escalate nothing) and anything above the maximum (escalate all).
    candidates = np.unique(np.concatenate([[0.0], conf, [np.nextafter(conf.max(), np.inf)]]))
    recommended = None
    for threshold in candidates:  # ascending threshold ⇒ non-decreasing escalation rate
        point = _point(conf, s_ok, t_ok, float(threshold))
        if point.accuracy >= bar - 1e-12:
            recommended = point
            break
    grid = [_point(conf, s_ok, t_ok, float(t)) for t in GRID]
    points = sorted({p.threshold: p for p in [*grid, *([recommended] if recommended else [])]}.values(),
                    key=lambda p: p.threshold)
    return Frontier(signal, points, recommended, target, teacher_accuracy, float(s_ok.mean()))


def _report_point(point: Point | None) -> FrontierPoint | None:
    return None if point is None else FrontierPoint(**vars(point))


def routing_report(fr: dict[str, Frontier], target: float, reference: str) -> Routing:
    main = fr["max-probability"]
    return Routing(
        signal=main.signal,
        frontier=[FrontierPoint(**vars(p)) for p in main.points],
        recommended_threshold=None if main.recommended is None else main.recommended.threshold,
        target=target,
        recommended=_report_point(main.recommended),
        teacher_accuracy=main.teacher_accuracy,
        student_accuracy=main.student_accuracy,
        reference=reference,
        signals={
            name: SignalSweep(recommended_threshold=None if f.recommended is None else f.recommended.threshold,
                              escalation_rate=None if f.recommended is None else f.recommended.escalation_rate,
                              accuracy=None if f.recommended is None else f.recommended.accuracy,
                              frontier=[FrontierPoint(**vars(p)) for p in f.points])
            for name, f in fr.items()
        },
    )
