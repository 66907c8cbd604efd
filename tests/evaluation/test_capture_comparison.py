"""dataset.capture in the evaluation: the new quantized student against the serving one (its recorded answers)
on held-out captured rows, by agreement with the teacher's answers, and the gate on the gain."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from kubedistill_jobs import render
from kubedistill_jobs.compress import CompressionResult
from kubedistill_jobs.data import write_jsonl
from kubedistill_jobs.evaluate import evaluate
from kubedistill_jobs.models import load_tokenizer
from kubedistill_jobs.onnx_export import session
from kubedistill_jobs.quality import classify

from kubedistill.api.distillationjob import CaptureDataSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.report import job_results

from .conftest import LABELS

TEXTS = ["market shares bank", "goal team cup", "phone chip data", "profit company economy", "player season match",
         "software internet", "bank economy goal", "chip cup market", "team data profit", "season phone shares"]


def new_student_labels(layout: OutputLayout) -> np.ndarray:
    """What the quantized student answers, run here directly with ONNX Runtime."""
    path = CompressionResult.read(layout).served_path(layout)
    return classify(session(path), load_tokenizer(str(layout.student)), TEXTS, 32).argmax(axis=1)


@pytest.mark.parametrize(("min_gain", "passes"), [(0.0, True), (0.5, False), (None, True)])
def test_the_new_student_is_compared_on_held_out_captured_rows_and_gated_on_the_gain(
        evaluated, fast_latency, tmp_path, min_gain, passes):
    spec, layout, _ = evaluated
    shutil.copytree(layout.root, tmp_path / "job")
    job = OutputLayout(tmp_path / "job")
    new = new_student_labels(job)
    # The teacher agrees with the new student on the first 7 rows and not on the last 3; the serving student
    # agreed with the teacher on the first 4 only.
    teacher = [int(n) if i < 7 else (int(n) + 1) % len(LABELS) for i, n in enumerate(new)]
    served = [t if i < 4 else (t + 1) % len(LABELS) for i, t in enumerate(teacher)]
    write_jsonl([{"text": t, "label": lab, "served_label": s, "served_version": "news-v1-run"}
                 for t, lab, s in zip(TEXTS, teacher, served, strict=True)], job.capture_eval)
    capture = CaptureDataSpec.model_validate({"uri": "file:///captured", "ratio": 0.3, "minGain": min_gain})
    with_capture = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"capture": capture})})
    report = evaluate(with_capture, job, "run-capture", settings=fast_latency)
    c = report.capture
    assert c is not None and c.rows == 10 and c.served_versions == ["news-v1-run"]
    assert c.new_agreement == pytest.approx(0.7) and c.served_agreement == pytest.approx(0.4)
    assert c.gain == pytest.approx(0.3) and c.min_gain == min_gain
    assert report.gate.capture_passed is (None if min_gain is None else passes)
    retention_passed = report.gate.min_retention is None or (report.retention or 0) >= report.gate.min_retention
    assert report.gate.passed is (retention_passed and passes)
    assert job_results(report, "file:///out").capture_gain == pytest.approx(0.3)
    assert "## Captured traffic" in render.markdown(report, {})
    if not passes:
        assert "gains +0.3000, less than dataset.capture.minGain 0.5" in report.gate_failure()
    saved = (job.report_json).read_text()
    assert '"capture_passed"' in saved and '"new_agreement": 0.7' in saved  # the report on disk says the same

