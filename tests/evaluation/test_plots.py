"""The plots show differences: the routing frontier zooms to where the curves differ, and the quality panel's
axis to the models' values (not 0-1)."""

from __future__ import annotations

import pytest
from kubedistill_jobs import render


def test_frontier_window_ends_a_little_past_where_the_last_curve_settles():
    curves = {
        "max-probability": [(0.0, 0.91), (0.1, 0.93), (0.4, 0.96), (0.46, 0.972), (0.73, 0.9694), (1.0, 0.9694)],
        "entropy": [(0.0, 0.91), (0.3, 0.94), (0.6, 0.965), (0.74, 0.9694), (1.0, 0.9694)],
    }
    (x_lo, x_hi), (y_lo, y_hi) = render.frontier_window(curves, marks=[(0.0, 0.9694), (0.0, 0.9597), (0.41, 0.96)])
    assert 0.74 < x_hi < 0.82  # entropy settles at 0.74; nothing right of that differs
    assert x_lo <= 0
    assert y_lo < 0.91 and 0.972 < y_hi < 0.98  # every curve and mark shows, and nothing far beyond


def test_frontier_window_keeps_points_and_marks_of_a_curve_that_settles_only_at_the_end():
    curves = {"margin": [(0.0, 0.9718), (0.5, 0.9725), (0.99, 0.97), (1.0, 0.9694)]}
    (_, x_hi), (y_lo, y_hi) = render.frontier_window(curves, marks=[(0.0, 0.9694), (0.0, 0.9597)])
    assert x_hi == 1.0
    assert y_lo < 0.9597 and y_hi > 0.9725 and y_hi - y_lo < 0.03


@pytest.mark.parametrize(("values", "lines"), [([0.9694, 0.9718, 0.9718], [0.9209]), ([0.97, 0.97, 0.97], []),
                                                 ([39.1, 38.7, 44.0], [15.7, 16.6])])
def test_quality_limits_show_the_differences_not_a_range_from_zero(values, lines):
    lo, hi = render.quality_limits(values, lines)
    shown = values + lines
    assert lo < min(shown) and hi > max(shown)
    spread = max(shown) - min(shown)
    assert hi - lo <= max(2 * spread, 0.02 * max(shown))  # zoomed: 0.92-0.97 is not drawn on a 0-1 axis
    assert lo > 0

