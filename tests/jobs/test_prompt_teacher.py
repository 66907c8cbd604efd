"""A causal LM labels a classification task through `teacher.prompt`: refused before compute when it cannot,
and end to end on tiny real models: soft targets, the teacher_outputs/ record, its reuse by another job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubedistill_jobs import preflight, teacher_record
from kubedistill_jobs.llm_teacher import PromptError
from kubedistill_jobs.pipeline import Pipeline
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import OutputLayout
from kubedistill.errors import InputError

from .conftest import job_manifest, sentiment_rows, write_jsonl
from .test_pipeline import Recorder

PROMPT = {"system": "Answer {labels}.", "user": "the {text} was", "verbalizer": {"neg": "very bad", "pos": "very good"}}


def _manifest(tmp_path, tiny_models, data, **overrides):
    base = {"teacher": {"uri": str(tiny_models["llama"]), "prompt": PROMPT},
            "student": {"uri": str(tiny_models["bert"])},
            "training": {"epochs": 1, "batchSize": 16, "learningRate": 0.01, "checkpointEverySteps": 4},
            "ray": {"workers": {"replicas": 1}}}
    return job_manifest(tmp_path, tiny_models["llama"], data, **{**base, **overrides})


def _preflight(manifest, tmp_path):
    job = DistillationJob.model_validate(manifest)
    return preflight.check_models(job.spec, OutputLayout(tmp_path / "out"))


def test_a_teacher_that_is_not_a_causal_lm_is_refused_before_compute(tmp_path, tiny_models, sentiment_data):
    manifest = _manifest(tmp_path, tiny_models, sentiment_data)
    manifest["spec"]["teacher"]["uri"] = str(tiny_models["bert"])
    with pytest.raises(preflight.PreflightError, match=r"teacher\.prompt: needs a causal language model"):
        _preflight(manifest, tmp_path)


def test_answers_the_teacher_cannot_tell_apart_are_refused(tmp_path, tiny_models, sentiment_data):
    manifest = _manifest(tmp_path, tiny_models, sentiment_data)
    manifest["spec"]["teacher"]["prompt"] = {**PROMPT, "verbalizer": {"neg": "bad", "pos": "bad "}}
    with pytest.raises(PromptError, match=r"teacher\.prompt\.verbalizer"):
        _preflight(manifest, tmp_path)
    assert issubclass(PromptError, InputError)


def test_a_causal_lm_teacher_passes(tmp_path, tiny_models, sentiment_data):
    found = _preflight(_manifest(tmp_path, tiny_models, sentiment_data), tmp_path)
    assert {"teacher_tokenizer", "student_tokenizer"} <= set(found)


def _run(manifest, stop_after="train"):
    job = DistillationJob.model_validate(manifest)
    display = Recorder()
    Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=display).run(stop_after=stop_after)
    return OutputLayout(resolve_output(job.spec.output.uri, job.metadata.name).local), display


@pytest.mark.slow
def test_labels_train_a_student_and_the_record_is_reused(ray_local, tmp_path, tiny_models, sentiment_data):
    first, display = _run(_manifest(tmp_path / "a", tiny_models, sentiment_data))
    assert [s for s, _ in display.finished] == ["data", "teacher", "soft-targets", "train"]
    marker = json.loads(first.stage_marker("teacher").read_text())
    assert marker["method"] == "prompt" and marker["calibrated"] and len(marker["prior"]) == 2
    assert marker["rows"] == 160 and marker["accuracy"] is not None
    train, held = ([json.loads(line)["label"] for line in (first.data / f).read_text().splitlines()]
                   for f in ("train.jsonl", "eval.jsonl"))
    majority = np.bincount(train).argmax()
    assert marker["majority_baseline"] == pytest.approx(np.mean(np.asarray(held) == majority))
    logits = np.load(first.soft_targets / "logits.npy")
    assert logits.shape == (120, 2)
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, rtol=1e-5)
    meta, by_hash = teacher_record.read(first.teacher_outputs)
    assert meta["answers"] == ["very bad", "very good"] and meta["template_hash"] == marker["template_hash"]
    assert meta["sampling"]["method"] == "full-answer scoring" and meta["model"] == str(tiny_models["llama"])
    assert len(by_hash) == 160 and meta["prompt_tokens"] > 0

    # another job, on the same texts without their labels, reuses the record: the teacher is not loaded
    unlabelled = write_jsonl([{"text": r["text"]} for r in sentiment_rows(160)], tmp_path / "unlabelled.jsonl")
    manifest = _manifest(tmp_path / "b", tiny_models, unlabelled,
                         distillation={"teacherOutputsUri": str(first.teacher_outputs)})
    manifest["spec"]["dataset"]["labelField"] = None
    second, _ = _run(manifest)
    reused = json.loads(second.stage_marker("teacher").read_text())
    assert reused["reused"] == str(first.teacher_outputs) and reused["accuracy"] is None
    assert not (second.teacher / "config.json").exists()
    np.testing.assert_allclose(np.load(second.soft_targets / "logits.npy"), logits, rtol=1e-6)

    # a changed prompt does not reuse a record made with another
    manifest = _manifest(tmp_path / "c", tiny_models, unlabelled,
                         distillation={"teacherOutputsUri": str(first.teacher_outputs)})
    manifest["spec"]["teacher"]["prompt"] = {**PROMPT, "user": "{text}"}
    manifest["spec"]["dataset"]["labelField"] = None
    with pytest.raises(Exception, match=r"distillation\.teacherOutputsUri: recorded with another prompt"):
        _run(manifest)
