"""The pipeline end to end on tiny models (through training), its hand-off contract, resume, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from kubedistill_jobs import soft_targets
from kubedistill_jobs.pipeline import Pipeline, SpecChangedError
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import STAGES, OutputLayout

from .conftest import job_manifest


class Recorder:
    """A Display that remembers what it was told."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, bool]] = []
        self.failed: list[str] = []
        self.epochs: list[dict] = []
        self.messages: list[str] = []

    def stage_started(self, stage):
        return lambda done, total: None

    def stage_finished(self, stage, summary, skipped):
        self.finished.append((stage, skipped))

    def stage_failed(self, stage, error):
        self.failed.append(stage)

    def epoch(self, entry):
        self.epochs.append(entry)

    def message(self, text):
        self.messages.append(text)


def _pipeline(manifest: dict, display: Recorder) -> Pipeline:
    job = DistillationJob.model_validate(manifest)
    return Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=display)


@pytest.mark.slow
def test_classification_through_training_then_resume(ray_local, tmp_path, tiny_models, sentiment_data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # with feature distillation: the cached teacher [CLS] states and a learned projection
    manifest = job_manifest(tmp_path, tiny_models["bert"], sentiment_data,
                            distillation={"hiddenStates": {"enabled": True, "weight": 0.5}})
    display = Recorder()
    result = _pipeline(manifest, display).run(stop_after="train")
    layout = OutputLayout(tmp_path / "out")
    assert [s for s, _ in display.finished] == ["data", "teacher", "soft-targets", "train"]
    rows = [json.loads(line) for line in (layout.data / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and set(rows[0]) == {"text", "label"} and rows[0]["label"] in (0, 1)
    teacher = AutoModelForSequenceClassification.from_pretrained(layout.teacher)
    assert teacher.config.id2label == {0: "neg", 1: "pos"}
    assert result.stages["teacher"]["accuracy"] > 0.6  # a head fitted on a random tiny encoder beats chance
    student = AutoModelForSequenceClassification.from_pretrained(layout.student)
    AutoTokenizer.from_pretrained(layout.student)
    assert student.config.num_hidden_layers == 1
    report = json.loads(layout.train_report.read_text())
    assert report["student"]["params"] == sum(p.numel() for p in student.parameters())
    assert report["teacher"]["accuracy"] == result.stages["teacher"]["accuracy"]
    assert {"epoch", "step", "train_loss", "soft_loss", "hard_loss", "hidden_loss", "eval_accuracy"} <= set(
        report["history"][-1])
    assert len(display.epochs) == 2

    again = Recorder()
    _pipeline(manifest, again).run(stop_after="train")
    assert again.finished == [("data", True), ("teacher", True), ("soft-targets", True), ("train", True)]

    changed = job_manifest(tmp_path, tiny_models["bert"], sentiment_data, training={"learningRate": 0.5},
                           distillation={"hiddenStates": {"enabled": True, "weight": 0.5}})
    with pytest.raises(SpecChangedError, match=r"output\.uri"):
        _pipeline(changed, Recorder()).run()


@pytest.mark.slow
def test_causal_lm_with_cached_top_k(ray_local, tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM

    words = ["good", "bad", "movie", "day", "was", "very", "the", "a"]
    rng = np.random.default_rng(0)
    (tmp_path / "lm.txt").write_text("".join(" ".join(rng.choice(words, 8)) + "\n" for _ in range(80)))
    manifest = job_manifest(
        tmp_path, tiny_models["llama"], tmp_path / "lm.txt",
        task={"type": "causal-lm", "maxLength": 12, "labels": None},
        teacher={"adapt": {"method": "none"}},
        dataset={"labelField": None},
        distillation={"topK": 8, "temperature": 1.0},
        training={"epochs": 1},
        compression={"quantization": "none"},
    )
    del manifest["spec"]["task"]["labels"]
    result = _pipeline(manifest, Recorder()).run(stop_after="train")
    layout = OutputLayout(tmp_path / "out")
    assert result.stages["soft-targets"]["k"] == 8
    values = np.load(layout.soft_targets / "topk_values.npy")
    assert values.shape == (60, 12, 8)
    # full-vocabulary log-probabilities: the mass outside the 8 is known
    assert soft_targets.holds_logprobs(layout.soft_targets)
    seen = np.load(layout.soft_targets / "attention_mask.npy").astype(bool)
    assert (np.exp(values.astype(np.float32)).sum(-1)[seen] <= 1.01).all()
    model = AutoModelForCausalLM.from_pretrained(layout.student)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(layout.teacher).config.vocab_size
    assert "eval_perplexity" in result.stages["train"]["history"][-1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["online", "cached"])
def test_causal_lm_students_padded_beyond_the_teachers_vocabulary_train(ray_local, tmp_path, padded_llamas, mode):
    # teacher 15,608 rows, student 15,616, one tokenizer of 31 tokens: both modes train over those 31
    words = ["good", "bad", "movie", "day", "was", "very", "the", "a"]
    rng = np.random.default_rng(0)
    (tmp_path / "lm.txt").write_text("".join(" ".join(rng.choice(words, 6)) + "\n" for _ in range(40)))
    manifest = job_manifest(
        tmp_path, padded_llamas["15608"], tmp_path / "lm.txt",
        task={"type": "causal-lm", "maxLength": 12},
        teacher={"adapt": {"method": "none"}},
        student={"uri": str(padded_llamas["15616"])},
        dataset={"labelField": None},
        distillation={"topK": 8, "teacherMode": mode},
        training={"maxSteps": 4, "epochs": None, "batchSize": 8},
        compression={"quantization": "none"},
    )
    del manifest["spec"]["task"]["labels"]
    result = _pipeline(manifest, Recorder()).run(stop_after="train")
    history = result.stages["train"]["history"]
    assert result.stages["train"]["steps"] == 4
    assert np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["eval_perplexity"])
    assert history[-1]["eval_perplexity"] < 100  # over the tokenizer's 31 ids (over all 15,616 rows: ~15,000)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubedistill.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_refuses_a_bad_manifest_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kubedistill.io/v1alpha1\nkind: DistillationJob\nmetadata: {name: x}\nspec: {}\n")
    done = _cli(str(bad), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "spec.task" in lines[0]


def test_cli_refuses_bad_data_before_starting_ray(tmp_path, tiny_models):
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": "maybe"}\n' * 20)
    manifest = job_manifest(tmp_path, tiny_models["bert"], tmp_path / "d.jsonl")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    done = _cli(str(tmp_path / "job.yaml"), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: dataset.labelField: labels in the data")


def test_the_modules_log_lines_reach_pipeline_log(tmp_path, capsys):
    """What a module logs by its own name (`data: rows dropped: ...`, a resumed journal) is in the run's log; its
    warnings also reach the terminal."""
    import logging

    from kubedistill_jobs import runner

    loggers = [logging.getLogger(name) for name in runner.LOGGERS]
    before = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    try:
        job = DistillationJob.model_validate(job_manifest(tmp_path, tmp_path / "teacher", tmp_path / "data.jsonl"))
        output = runner.prepare_output(job)
        logging.getLogger("kubedistill_jobs.stages.s10_data").info("data: rows dropped: 3 without a label")
        logging.getLogger("kubedistill_jobs.chat_teacher").warning("2 of 9 answers matched no label")
        logging.getLogger("kubedistill.pipeline").info("stage started")
        for handler in logging.getLogger("kubedistill_jobs").handlers:
            handler.flush()
        log = OutputLayout(output.local).log.read_text()
    finally:
        for logger, (handlers, propagate, level) in zip(loggers, before, strict=True):
            for handler in logger.handlers[:]:
                logger.removeHandler(handler)
                if handler not in handlers:
                    handler.close()
            logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level
    assert "kubedistill_jobs.stages.s10_data: data: rows dropped: 3 without a label" in log
    assert "kubedistill.pipeline: stage started" in log
    assert "2 of 9 answers matched no label" in log and "2 of 9 answers matched no label" in capsys.readouterr().err


def test_a_spec_written_before_a_field_was_added_still_resumes(tmp_path):
    """A run recorded by an earlier version lacks fields added since (their defaults); it still resumes, and a
    real change is still refused."""
    manifest = job_manifest(tmp_path, tmp_path / "teacher", tmp_path / "data.jsonl")
    pipeline = _pipeline(manifest, Recorder())
    older = pipeline.context.job.to_wire()
    del older["spec"]["distillation"]["ensemble"]  # a field with a default, added after that run
    pipeline.layout.resolved_spec.parent.mkdir(parents=True, exist_ok=True)
    pipeline.layout.resolved_spec.write_text(yaml.safe_dump(older))
    pipeline._check_resolved_spec()
    older["spec"]["training"]["learningRate"] = 0.5
    pipeline.layout.resolved_spec.write_text(yaml.safe_dump(older))
    pipeline.layout.stage_marker("data").parent.mkdir(parents=True, exist_ok=True)
    pipeline.layout.stage_marker("data").write_text("{}")  # that run made something
    with pytest.raises(SpecChangedError, match=r"differs in spec\.training\.learningRate|learningRate"):
        pipeline._check_resolved_spec()


def test_a_moved_folder_resumes_and_an_evaluation_change_reruns_only_evaluate_and_export(tmp_path):
    """output.uri names where the run lives, not what it made; evaluation is read by the evaluation alone, so a
    change there drops the evaluate and export markers and keeps the others. Anything else is still refused."""
    manifest = job_manifest(tmp_path, tmp_path / "teacher", tmp_path / "data.jsonl")
    recorder = Recorder()
    pipeline = _pipeline(manifest, recorder)
    layout = pipeline.layout
    older = pipeline.context.job.to_wire()
    older["spec"]["output"]["uri"] = "file:///elsewhere/run"
    layout.resolved_spec.parent.mkdir(parents=True, exist_ok=True)
    older["spec"]["training"]["seed"] = 7
    layout.resolved_spec.write_text(yaml.safe_dump(older))
    pipeline._check_resolved_spec()  # no stage finished: a run refused before its first stage is not in the way
    older["spec"]["training"]["seed"] = pipeline.context.job.spec.training.seed
    layout.resolved_spec.write_text(yaml.safe_dump(older))
    for stage in STAGES:
        layout.stage_marker(stage).parent.mkdir(parents=True, exist_ok=True)
        layout.stage_marker(stage).write_text("{}")
    pipeline._check_resolved_spec()  # moved: nothing to redo
    assert all(layout.stage_marker(s).is_file() for s in STAGES)

    older["spec"]["evaluation"]["routingTarget"] = 0.5
    layout.resolved_spec.write_text(yaml.safe_dump(older))
    pipeline._check_resolved_spec()
    kept = STAGES[:STAGES.index("evaluate")]
    assert [s for s in STAGES if layout.stage_marker(s).is_file()] == list(kept)
    assert any("spec.evaluation.routingTarget" in m for m in recorder.messages)
    assert yaml.safe_load(layout.resolved_spec.read_text())["spec"] == pipeline.context.job.to_wire()["spec"]

    older["spec"]["training"]["seed"] = 7
    layout.resolved_spec.write_text(yaml.safe_dump(older))
    with pytest.raises(SpecChangedError, match=r"spec\.training\.seed") as refused:
        pipeline._check_resolved_spec()
    assert "routingTarget" not in str(refused.value)
