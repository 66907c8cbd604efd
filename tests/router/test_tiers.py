"""A tiered cascade (router.tiers) on a real tritonserver: student, a mid-size model in the same Triton, then the
teacher; each request goes to the tier its confidences select, and metrics count instances by that tier."""

from __future__ import annotations

import numpy as np
import pytest
from aiohttp import ClientSession

from kubedistill.api.studentdeployment import RouterTier

from .conftest import TEXTS, router_config, running_router
from .test_router import expected, predict, scrape

pytestmark = pytest.mark.slow


def mid_threshold(reference, student_threshold: float) -> float:
    """A threshold between the mid model's confidences on the items the student escalates."""
    _, student_conf = expected(reference, "student", TEXTS)
    _, mid_conf = expected(reference, "mid", TEXTS)
    conf = np.sort(mid_conf[student_conf < student_threshold])
    middle = len(conf) // 2
    return float((conf[middle - 1] + conf[middle]) / 2)


async def test_three_tiers_route_each_item_to_the_tier_its_confidences_select(triton, model_repository, reference,
                                                                              threshold):
    tier = mid_threshold(reference, threshold)
    assert tier <= threshold  # the cascade's order: a bigger model is trusted at a lower confidence
    config = router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold,
                           tiers=[RouterTier(name="mid", model="mid", threshold=tier)])
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
        metrics = await scrape(session, base)

    (student_labels, student_conf), (mid_labels, mid_conf), (teacher_labels, teacher_conf) = (
        expected(reference, model, TEXTS) for model in ("student", "mid", "teacher"))
    chosen = np.where(student_conf >= threshold, "student", np.where(mid_conf >= tier, "mid", "teacher"))
    assert set(chosen) == {"student", "mid", "teacher"}  # every tier answers some of these texts
    answers = {"student": (student_labels, student_conf), "mid": (mid_labels, mid_conf),
               "teacher": (teacher_labels, teacher_conf)}
    for i, p in enumerate(predictions):
        labels, conf = answers[str(chosen[i])]
        assert (p["served_by"], p["label"]) == (chosen[i], labels[i]), TEXTS[i]
        assert p["confidence"] == pytest.approx(conf[i], abs=1e-5)
        assert "degraded" not in p
    for served_by in ("student", "mid", "teacher"):
        count = metrics[("kubedistill_router_instances_total", (("degraded", "false"), ("served_by", served_by)))]
        assert count == (chosen == served_by).sum()
    assert metrics[("kubedistill_router_escalations_total", ())] == (student_conf < threshold).sum()
    assert metrics[("kubedistill_router_tier_seconds_count", (("tier", "mid"),))] == 1


async def test_a_failing_tier_passes_its_items_on_and_bad_tiers_are_refused(triton, model_repository, reference,
                                                                            threshold):
    # A remote tier that refuses connections: the teacher answers everything the student escalated.
    down = RouterTier(name="remote", endpoint={"url": "http://127.0.0.1:9", "timeoutSeconds": 1}, threshold=0.0)
    config = router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold, tiers=[down])
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
        metrics = await scrape(session, base)
    _, student_conf = expected(reference, "student", TEXTS)
    assert [p["served_by"] for p in predictions] == ["student" if c >= threshold else "teacher" for c in student_conf]
    assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "remote:error"),))] == 1

    from kubedistill_router.app import build_app

    above = RouterTier(name="mid", model="mid", threshold=min(1.0, threshold + 0.01))
    with pytest.raises(ValueError, match=r"router\.tiers\[0\]\.threshold: .* is above .*router\.threshold"):
        build_app(router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold, tiers=[above]))
    missing = RouterTier(name="mid", model="nowhere", threshold=0.1)
    with pytest.raises(ValueError, match=r"router\.tiers\[0\]\.model: the model repository .* has no model 'nowhere'"):
        build_app(router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold,
                                tiers=[missing]))
