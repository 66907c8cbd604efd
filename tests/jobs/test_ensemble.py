"""Several teachers (`teachers`): the combination against a hand computation, and end to end on tiny real
models (a classifier and a language model labelling through a prompt): soft targets, the teacher_outputs/
record of the combination, and a report with each teacher's quality and the ensemble's."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_jobs import ensemble, teacher_record
from kubedistill_jobs.data import read_jsonl as read_rows
from kubedistill_jobs.pipeline import Pipeline
from kubedistill_jobs.prompt_teacher import gold_accuracy
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import OutputLayout
from kubedistill.report import load_report

from .conftest import job_manifest
from .test_pipeline import Recorder
from .test_prompt_teacher import PROMPT

# Two teachers, three classes, two rows; weights 3 and 1 (normalised: 0.75 and 0.25).
A = np.log([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
B = np.log([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])


def test_weighted_mean_of_probabilities_by_hand():
    # row 0: 0.75·0.7 + 0.25·0.1 = 0.55, 0.75·0.2 + 0.25·0.6 = 0.30, 0.75·0.1 + 0.25·0.3 = 0.15
    # row 1: 0.75·0.25 + 0.25·0.5 = 0.3125, 0.25, 0.75·0.5 + 0.25·0.25 = 0.4375
    combined = ensemble.combine([A, B], [3, 1], "mean")
    np.testing.assert_allclose(np.exp(combined), [[0.55, 0.30, 0.15], [0.3125, 0.25, 0.4375]], atol=1e-12)


def test_product_of_experts_by_hand():
    # row 0: 0.7^.75·0.1^.25 = 0.43035, 0.2^.75·0.6^.25 = 0.26323, 0.1^.75·0.3^.25 = 0.13162; / 0.82520
    # row 1: 0.25^.75·0.5^.25 = 0.29730, 0.25, 0.5^.75·0.25^.25 = 0.42045; / 0.96775
    combined = ensemble.combine([A, B], [3, 1], "product")
    np.testing.assert_allclose(np.exp(combined), [[0.52153, 0.31898, 0.15949], [0.30721, 0.25833, 0.43446]],
                               atol=1e-5)


def test_a_zero_weight_leaves_a_teacher_out_and_no_weight_is_refused():
    ruled_out = np.array([[np.log(0.5), np.log(0.5), -np.inf], [np.log(1 / 3)] * 3])  # -inf: 0·-inf would be nan
    for combination in ("mean", "product"):
        np.testing.assert_allclose(ensemble.combine([A, ruled_out], [1, 0], combination), A, atol=1e-12)
    with pytest.raises(ValueError, match=r"^teachers: the weights \[0, 0\] must be non-negative and sum to a positive"):
        ensemble.combine([A, B], [0, 0], "mean")
    with pytest.raises(ValueError, match=r"^teachers: expected distributions of one shape"):
        ensemble.combine([A, B[:1]], [1, 1], "mean")


def _manifest(tmp_path, tiny_models, data, combination="mean"):
    manifest = job_manifest(
        tmp_path, tiny_models["bert"], data,
        student={"uri": str(tiny_models["bert"])},
        training={"epochs": 1, "batchSize": 16, "learningRate": 0.01, "checkpointEverySteps": 4},
        distillation={"ensemble": combination},
        dataset={"maxSamples": 64},
        evaluation={"gate": {"minRetention": None}, "metrics": ["accuracy", "agreement"]},  # no latency: seconds
        ray={"workers": {"replicas": 1}},
    )
    spec = manifest["spec"]
    spec["teachers"] = [{**spec.pop("teacher"), "weight": 2},
                        {"uri": str(tiny_models["llama"]), "prompt": PROMPT, "weight": 1}]
    return manifest


@pytest.mark.slow
def test_two_teachers_teach_and_are_reported(ray_local, tmp_path, tiny_models, sentiment_data):
    job = DistillationJob.model_validate(_manifest(tmp_path, tiny_models, sentiment_data))
    output = resolve_output(job.spec.output.uri, job.metadata.name)
    display = Recorder()
    Pipeline(job, output, display=display).run(stop_after="evaluate")
    layout = OutputLayout(output.local)
    assert [s for s, _ in display.finished][:3] == ["data", "teacher", "soft-targets"]

    # The soft targets are the weighted mean of what each teacher said, as recorded in teachers/<i>/.
    n_train = len(read_rows(layout.data / "train.jsonl"))
    held = read_rows(layout.data / "eval.jsonl")
    members = [np.load(layout.teacher_member(i).root / ensemble.LOGPROBS).astype(np.float64) for i in (0, 1)]
    expected = np.log(2 / 3 * np.exp(members[0]) + 1 / 3 * np.exp(members[1]))
    np.testing.assert_allclose(np.load(layout.soft_targets / "logits.npy"), expected[:n_train], atol=1e-5)
    assert (layout.teacher_member(0).teacher / "config.json").is_file()  # the adapted classifier
    assert (layout.teacher_member(1).teacher_outputs / "meta.json").is_file()  # the prompt's own record

    # The record of the combination says how it was made, and with each teacher's quality.
    meta, by_hash = teacher_record.read(layout.teacher_outputs)
    assert len(by_hash) == n_train + len(held) and meta["sampling"]["method"] == "ensemble"
    recorded = meta["ensemble"]
    assert recorded["combination"] == "mean"
    assert [m["weight"] for m in recorded["members"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert [m["method"] for m in recorded["members"]] == ["head", "prompt"]
    for member, logprobs in zip(recorded["members"], members, strict=True):
        assert member["metrics"]["accuracy"] == pytest.approx(gold_accuracy(logprobs[n_train:], held), abs=1e-4)
    assert recorded["metrics"]["accuracy"] == pytest.approx(gold_accuracy(expected[n_train:], held), abs=1e-4)

    # The report: the teacher is the combination; each member is listed with its quality.
    report = load_report(layout.report_json.read_text())
    assert report.ensemble is not None and len(report.ensemble.members) == 2
    assert report.teacher.metrics["accuracy"] == pytest.approx(recorded["metrics"]["accuracy"], abs=1e-4)
    assert report.teacher.model == "2 teachers (weighted mean)" and report.speedup is None
    text = layout.report_md.read_text()
    assert "| combination (mean) |" in text and str(tiny_models["llama"]) in text
