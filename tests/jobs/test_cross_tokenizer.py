"""A causal-LM student with another tokenizer than the teacher's: the method chosen up front (or the setting
that cannot work refused, naming the field), the ULD loss against a hand computation, the teacher's answers,
and a pipeline that falls back and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubedistill_jobs import cross_tokenizer, losses, preflight
from kubedistill_jobs.pipeline import Pipeline
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import OutputLayout
from kubedistill.errors import InputError
from kubedistill.report import job_results, load_report

from .conftest import job_manifest


def _lm_manifest(tmp_path, tiny_models, data, **overrides) -> dict:
    base = {"task": {"type": "causal-lm", "maxLength": 12}, "teacher": {"adapt": {"method": "none"}},
            "student": {"uri": str(tiny_models["llama-other"])}, "dataset": {"labelField": None},
            "compression": {"quantization": "none"}}
    base.update(overrides)
    manifest = job_manifest(tmp_path, tiny_models["llama"], data, **base)
    manifest["spec"]["task"].pop("labels", None)
    return manifest


def _spec(tmp_path, tiny_models, sentiment_data, **overrides):
    return DistillationJob.model_validate(_lm_manifest(tmp_path, tiny_models, sentiment_data, **overrides)).spec


def test_uld_loss_by_hand():
    import torch

    student = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))  # sorted: .5, .3, .2
    # k = 2 < V: |.5 − .6| + |.3 − .3| + the student's mass past k (.2), which the teacher's cache has as 0
    assert losses.uld_loss(student, torch.tensor([[0.6, 0.3]])).item() == pytest.approx(0.3, abs=1e-6)
    # k = 4 > V: the student is padded with a zero: |.5 − .7| + |.3 − .2| + |.2 − .1| + |0 − 0|
    assert losses.uld_loss(student, torch.tensor([[0.7, 0.2, 0.1, 0.0]])).item() == pytest.approx(0.4, abs=1e-6)
    # no shared vocabulary needed: any permutation of the same probabilities is at distance 0
    assert losses.uld_loss(student, torch.tensor([[0.5, 0.3, 0.2]])).item() == pytest.approx(0.0, abs=1e-6)
    # the mask leaves positions out of the mean
    two = torch.log(torch.tensor([[[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]]))
    teacher = torch.tensor([[[0.6, 0.3], [0.6, 0.3]]])
    assert losses.uld_loss(two, teacher, mask=torch.tensor([[True, False]])).item() == pytest.approx(0.3, abs=1e-6)


def test_another_tokenizer_falls_back_instead_of_being_refused(tmp_path, tiny_models, sentiment_data):
    layout = OutputLayout(tmp_path)
    found = preflight.check_models(_spec(tmp_path, tiny_models, sentiment_data, distillation={"topK": 4}), layout)
    assert found["cross_tokenizer"] == "sequence-kd"
    uld = _spec(tmp_path, tiny_models, sentiment_data, distillation={"topK": 4, "crossTokenizer": "uld"})
    assert preflight.check_models(uld, layout)["cross_tokenizer"] == "uld"
    shared = _spec(tmp_path, tiny_models, sentiment_data, student={"uri": str(tiny_models["llama"])},
                   distillation={"topK": 4})
    assert preflight.check_models(shared, layout)["cross_tokenizer"] is None


@pytest.mark.parametrize(("distillation", "other", "field"), [
    ({"onPolicy": 0.5, "teacherMode": "online"}, {}, r"distillation\.onPolicy: the teacher scores the student's"),
    ({"teacherMode": "online"}, {}, r"distillation\.teacherMode: online runs the teacher on the student's tokens"),
    ({"hiddenStates": {"enabled": True}}, {}, r"distillation\.hiddenStates\.enabled"),
    ({}, {"compression": {"quantization": "none", "pruning": {"method": "layers", "keepLayers": [0]}}},
     r"compression\.pruning\.method"),
], ids=["on-policy", "online", "hidden-states", "pruning"])
def test_what_needs_the_same_tokens_is_refused_before_any_compute(tmp_path, tiny_models, sentiment_data,
                                                                   distillation, other, field):
    spec = _spec(tmp_path, tiny_models, sentiment_data, distillation={"topK": 4, **distillation}, **other)
    with pytest.raises(InputError, match=field) as refused:
        preflight.check_models(spec, OutputLayout(tmp_path))
    assert "student.uri tokenizes differently" in str(refused.value)


def test_teacher_answers_are_greedy_and_their_sorted_probabilities_line_up(tiny_models):
    import torch
    from kubedistill_jobs import models

    tokenizer = models.load_tokenizer(str(tiny_models["llama"]))
    model = models.load_saved_model(tiny_models["llama"], "causal-lm")
    prompts = ["the movie was", "a bad day"]
    out = cross_tokenizer.teacher_answers(model, tokenizer, prompts, max_length=12, max_new_tokens=4, top_k=3)
    assert [p.split() for p in out["prompt"]] == [p.split() for p in prompts]
    probs, lengths = out["sorted_probs"].astype(np.float32), out["answer_tokens"]
    assert probs.shape[0] == 2 and probs.shape[2] == 3 and 1 <= lengths.max() <= 4
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            first = torch.softmax(model(input_ids=ids).logits[0, -1, :len(tokenizer)], -1)
        # the first answer position: the teacher's three largest probabilities there, in decreasing order
        assert probs[row, 0] == pytest.approx(first.topk(3).values.numpy(), abs=2e-3)
        assert (probs[row, lengths[row]:] == 0).all()  # nothing past the answer's end
        assert (np.diff(probs[row, :lengths[row]], axis=-1) <= 0).all()


@pytest.mark.slow
def test_a_pipeline_with_another_tokenizer_distils_through_the_teachers_answers_and_says_so(
        ray_local, tmp_path, tiny_models):
    from .test_pipeline import Recorder

    words = ["good", "bad", "movie", "day", "was", "very", "the", "a"]
    rng = np.random.default_rng(0)
    (tmp_path / "lm.txt").write_text("".join(" ".join(rng.choice(words, 4)) + "\n" for _ in range(40)))
    manifest = _lm_manifest(tmp_path, tiny_models, tmp_path / "lm.txt",
                            distillation={"topK": 4, "crossTokenizer": "uld", "alpha": 0.5,
                                          "sampling": {"maxNewTokens": 6}},
                            training={"maxSteps": 4, "epochs": None, "batchSize": 8},
                            evaluation={"metrics": ["perplexity"], "gate": {"minRetention": None}})
    job = DistillationJob.model_validate(manifest)
    result = Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=Recorder()).run()
    layout = OutputLayout(tmp_path / "out")
    marker = result.stages["soft-targets"]
    assert marker["cross_tokenizer"] == "uld" and "tokenizers differ" in marker["summary"]
    generated = [json.loads(line) for line in (layout.data / "train_generated.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["text"] for line in (layout.data / "train.jsonl").read_text().splitlines()]
    assert len(generated) == len(prompts) and all(r["text"].startswith(r["prompt"]) for r in generated)
    assert [r["prompt"].split() for r in generated] == [p.split() for p in prompts]
    vocabulary = set(json.loads((tiny_models["llama"] / "tokenizer.json").read_text())["model"]["vocab"])
    assert all(set(r["text"].split()) <= vocabulary for r in generated)  # the teacher's words, none glued
    assert any(len(r["text"]) > len(r["prompt"]) for r in generated)  # the teacher did answer
    history = result.stages["train"]["history"]
    assert np.isfinite(history[-1]["train_loss"]) and history[-1]["soft_loss"] > 0  # the ULD term trained
    train_report = json.loads(layout.train_report.read_text())
    assert train_report["cross_tokenizer"] == "uld"
    # the evaluation's report.json and report.md say so, and from there status.results
    report = load_report(layout.report_json.read_text())
    assert report.cross_tokenizer is not None and report.cross_tokenizer.method == "uld"
    assert "logit KD needs a shared vocabulary" in report.cross_tokenizer.note
    assert report.cross_tokenizer.student_vocabulary != report.cross_tokenizer.teacher_vocabulary
    assert "Cross-tokenizer (uld)" in layout.report_md.read_text()
    assert job_results(report, "file:///tmp/out").cross_tokenizer == "uld"
