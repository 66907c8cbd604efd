"""The routing frontier on hand-made probabilities with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_jobs.routing import frontier

from kubedistill.confidence import escalate

# Six requests. Student confidences (max probability) 0.95, 0.9, 0.8, 0.6, 0.55, 0.5; the student is
# right on the three most confident and wrong on the rest; the teacher is right on all but the first.
PROBS = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.5, 0.5]])
STUDENT_OK = np.array([True, True, True, False, False, False])
TEACHER_OK = np.array([False, True, True, True, True, True])  # teacher accuracy 5/6


def test_known_recommended_threshold():
    fr = frontier(PROBS, STUDENT_OK, TEACHER_OK, target=1.0)
    # Cascade accuracy ≥ 5/6 (the teacher's): escalating only row 5 gives 4/6, rows 4 and 5 give 5/6.
    # Escalation is `conf < threshold`, so the lowest such threshold is the next confidence up, 0.6.
    assert fr.recommended is not None
    assert fr.recommended.threshold == pytest.approx(0.6)
    assert fr.recommended.escalation_rate == pytest.approx(2 / 6)
    assert fr.recommended.accuracy == pytest.approx(5 / 6)
    assert fr.teacher_accuracy == pytest.approx(5 / 6) and fr.student_accuracy == pytest.approx(3 / 6)
    # It is the same decision the router makes.
    assert escalate(PROBS, "max-probability", fr.recommended.threshold).tolist() == [False] * 4 + [True] * 2


def test_lower_target_escalates_less():
    # 0.6 × 5/6 = 1/2: the student alone (3/6) already meets it → threshold 0, nothing escalated.
    fr = frontier(PROBS, STUDENT_OK, TEACHER_OK, target=0.6)
    assert fr.recommended.threshold == 0.0 and fr.recommended.escalation_rate == 0.0
    # 0.8 × 5/6 = 2/3: escalating row 5 alone (4/6) is enough → threshold 0.55.
    fr = frontier(PROBS, STUDENT_OK, TEACHER_OK, target=0.8)
    assert fr.recommended.threshold == pytest.approx(0.55)
    assert fr.recommended.escalation_rate == pytest.approx(1 / 6)
    assert fr.recommended.accuracy == pytest.approx(4 / 6)


def test_grid_points_are_exact_and_monotone():
    fr = frontier(PROBS, STUDENT_OK, TEACHER_OK, target=1.0)
    by_threshold = {p.threshold: p for p in fr.points}
    assert by_threshold[0.0].escalation_rate == 0.0 and by_threshold[0.0].accuracy == pytest.approx(3 / 6)
    assert by_threshold[1.0].escalation_rate == 1.0 and by_threshold[1.0].accuracy == pytest.approx(5 / 6)
    assert by_threshold[0.85].escalation_rate == pytest.approx(4 / 6)  # 0.8, 0.6, 0.55, 0.5 < 0.85
    rates = [p.escalation_rate for p in fr.points]
    assert rates == sorted(rates)


@pytest.mark.parametrize("signal", ["margin", "entropy"])
def test_other_signals_rank_the_same_here(signal):
    """For two classes margin and entropy order rows like max-probability: same escalation set."""
    fr = frontier(PROBS, STUDENT_OK, TEACHER_OK, signal=signal, target=1.0)
    assert fr.recommended.escalation_rate == pytest.approx(2 / 6) and fr.recommended.accuracy == pytest.approx(5 / 6)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="equally many"):
        frontier(PROBS, STUDENT_OK[:3], TEACHER_OK)
