"""The cascade frontier (student → mid tier → teacher) against a hand computation, and the evaluation of
`evaluation.tiers` on tiny models built from configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from kubedistill_jobs.cascade import cascade_frontier, cascade_point, threshold_grid

from kubedistill.artifacts import OutputLayout
from kubedistill.report import Report, job_results

from .conftest import LABELS, make_spec, tiny_bert, tokenizer

# Four requests. The student is right on the first two, the mid tier on the first three, the teacher on all.
STUDENT_CONF = [0.9, 0.6, 0.4, 0.3]
MID_CONF = [0.95, 0.8, 0.7, 0.2]
CORRECT = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
COSTS = [1.0, 4.0, 20.0]  # a request through the mid tier costs 4 students, through the teacher 20


def _frontier(target: float):  # type: ignore[no-untyped-def]
    return cascade_frontier(["student", "mid", "teacher"], [STUDENT_CONF, MID_CONF], CORRECT, COSTS,
                            cost_basis="parameters", target=target)


def test_the_grid_is_each_models_own_confidences_between_answer_all_and_pass_all():
    grid = threshold_grid(np.asarray(STUDENT_CONF), 21)
    assert grid[:-1] == [0.0, 0.3, 0.4, 0.6, 0.9] and 0.9 < grid[-1] < 0.9 + 1e-12


def test_one_setting_by_hand():
    # Student at 0.9 answers request 0; the mid tier at 0.7 answers 1 and 2; request 3 (mid 0.2) reaches the
    # teacher. Reach 1, 3/4, 1/4; cost 1 + 0.75 × 4 + 0.25 × 20 = 9; all four right.
    conf = [np.asarray(STUDENT_CONF), np.asarray(MID_CONF)]
    point = cascade_point(conf, [np.asarray(c, dtype=float) for c in CORRECT], COSTS, (0.9, 0.7))
    assert point.reach == (1.0, 0.75, 0.25) and point.answered == (0.25, 0.5, 0.25)
    assert point.accuracy == 1.0 and point.cost == pytest.approx(9.0)


def test_the_cheapest_setting_that_keeps_the_teachers_accuracy():
    fr = _frontier(1.0)
    rec = fr.recommended
    # Without the cascade-order rule (0.6, 0.7) would cost 8 (1 + 0.5 × 4 + 0.25 × 20), but the mid tier's threshold
    # may not exceed the student's; (0.6, t ≤ 0.6) lets the mid tier answer request 3 wrongly. So (0.9, 0.7): 9.
    assert rec is not None and rec.thresholds == (0.9, 0.7)
    assert rec.cost == pytest.approx(9.0) and rec.accuracy == 1.0 and rec.reach == (1.0, 0.75, 0.25)
    assert fr.teacher_accuracy == 1.0 and fr.cost_basis == "parameters"
    for point in fr.points:  # every setting on the frontier is in cascade order
        assert all(b <= a for a, b in zip(point.thresholds, point.thresholds[1:], strict=False))
    costs = [p.cost for p in fr.points]
    accuracies = [p.accuracy for p in fr.points]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)  # Pareto: more costs buy more accuracy
    assert fr.points[0].cost == 1.0 and fr.points[0].accuracy == 0.5  # the student alone


def test_a_lower_target_costs_less():
    # 3/4 of the teacher: the student answers 0 and 1 (≥ 0.6), the mid tier the rest (threshold 0, the lowest of
    # the settings that tie at cost 1 + 0.5 × 4 = 3); request 3 is then wrong.
    rec = _frontier(0.75).recommended
    assert rec is not None and rec.thresholds == (0.6, 0.0)
    assert rec.cost == pytest.approx(3.0) and rec.accuracy == 0.75 and rec.answered == (0.5, 0.5, 0.0)


def test_the_bar_is_a_share_of_the_teachers_own_accuracy():
    wrong_teacher = [CORRECT[0], CORRECT[1], [1, 1, 1, 0]]
    fr = cascade_frontier(["student", "mid", "teacher"], [STUDENT_CONF, MID_CONF], wrong_teacher, COSTS,
                          cost_basis="parameters", target=1.0)
    assert fr.recommended is not None and fr.recommended.cost < 20  # the mid tier matches the teacher for less
    assert cascade_frontier(["student", "teacher"], [[0.9, 0.1]], [[0, 0], [0, 0]], [1.0, 2.0],
                            cost_basis="parameters", target=1.0).recommended.thresholds == (0.0,)


def test_inputs_that_do_not_line_up_are_refused():
    with pytest.raises(ValueError, match="3 models need 2 confidence arrays"):
        cascade_frontier(["student", "mid", "teacher"], [STUDENT_CONF], CORRECT, COSTS, cost_basis="p", target=1.0)
    with pytest.raises(ValueError, match="equally many"):
        cascade_frontier(["student", "teacher"], [[0.5]], [[1, 0], [1, 1]], [1.0, 2.0], cost_basis="p", target=1.0)
    with pytest.raises(ValueError, match="positive"):
        cascade_frontier(["student", "teacher"], [[0.5]], [[1], [1]], [0.0, 2.0], cost_basis="p", target=1.0)


# --- the evaluation -------------------------------------------------------------------------------------------


def _save_tier(folder, labels, seed, num_labels=3):  # type: ignore[no-untyped-def]
    tok = tokenizer()
    model = tiny_bert(48, 2, 2, tok.vocab_size, num_labels=num_labels, seed=seed)
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {n: i for i, n in enumerate(labels)}
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_the_evaluation_scores_the_tiers_and_recommends_thresholds_per_model(compressed, fast_latency, tmp_path):
    from kubedistill_jobs.evaluate import evaluate
    from kubedistill_jobs.export import export
    from kubedistill_jobs.tiers import check_tiers

    _, shared = compressed
    layout = OutputLayout(tmp_path / "job")  # a copy: the session's evaluated job stays as other tests read it
    shutil.copytree(shared.root, layout.root)
    mid = _save_tier(tmp_path / "mid", LABELS, seed=3)
    tiered = make_spec(evaluation={"metrics": ["accuracy"], "routingTarget": 0.9,
                                   "tiers": [{"name": "mid", "uri": str(mid)}]})
    check_tiers(tiered, layout)  # the tier's config scores task.labels
    report = evaluate(tiered, layout, "run-2", settings=fast_latency)
    cascade = report.cascade
    assert cascade is not None and cascade.cost_basis == "parameters"  # latency not listed
    assert [m.name for m in cascade.models] == ["student", "mid", "teacher"]
    assert cascade.models[1].uri == str(mid) and cascade.models[1].params > 0
    assert [m.unit_cost for m in cascade.models] == [m.params for m in cascade.models]
    assert cascade.models[2].accuracy == pytest.approx(report.teacher.metrics["accuracy"], abs=1e-4)
    assert cascade.models[0].accuracy == pytest.approx(report.student_quantized.metrics["accuracy"], abs=1e-4)
    rec = cascade.recommended
    assert rec is not None and set(rec.thresholds) == {"student", "mid"}
    assert rec.thresholds["mid"] <= rec.thresholds["student"]
    assert rec.accuracy >= 0.9 * cascade.teacher_accuracy - 1e-4
    assert sum(rec.answered.values()) == pytest.approx(1.0, abs=1e-3) and rec.reach["student"] == 1.0
    assert (layout.onnx / "tier-mid.onnx").is_file()
    # report.json, report.md, status.results and serving.json carry them.
    again = Report.model_validate_json(layout.report_json.read_text())
    assert again.cascade == cascade
    assert "## Tiered cascade" in layout.report_md.read_text() and "| mid |" in layout.report_md.read_text()
    results = job_results(report, "file:///out")
    assert results.cascade_thresholds == rec.thresholds
    assert results.to_wire()["cascadeThresholds"] == rec.thresholds
    manifest = export(tiered, layout, report)
    assert manifest.cascade_thresholds == rec.thresholds
    assert json.loads((layout.model_repository / "serving.json").read_text())["cascade_thresholds"] == rec.thresholds


@pytest.mark.parametrize(("labels", "num_labels", "message"), [
    (["sport", "business", "tech"], 3, r"evaluation\.tiers\[0\]\.uri: the model's classes are \['sport'"),
    (None, 2, r"evaluation\.tiers\[0\]\.uri: the model scores 2 classes, task\.labels has 3"),
])
def test_a_tier_over_other_labels_is_refused_before_compute(compressed, tmp_path, labels, num_labels, message):
    from kubedistill_jobs.preflight import check_models
    from kubedistill_jobs.tiers import TierError

    _, layout = compressed
    tier = _save_tier(tmp_path / "other", labels, seed=4, num_labels=num_labels)
    spec = make_spec(evaluation={"tiers": [{"name": "mid", "uri": str(tier)}]})
    with pytest.raises(TierError, match=message):
        check_models(spec, layout)
    missing = make_spec(evaluation={"tiers": [{"name": "mid", "uri": str(tmp_path / "nowhere")}]})
    with pytest.raises(TierError, match=r"evaluation\.tiers\[0\]\.uri: .*no such model folder"):
        check_models(missing, layout)
