"""Bad inputs are refused before any compute, each with an error naming the field; the examples parse."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubedistill_jobs import models, preflight

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.api.load import load_manifest
from kubedistill.artifacts import OutputLayout

from .conftest import job_manifest

REPO = Path(__file__).resolve().parents[2]


def _job(tmp_path, teacher_uri, data_uri, **overrides) -> DistillationJob:
    return DistillationJob.model_validate(job_manifest(tmp_path, teacher_uri, data_uri, **overrides))


def _lm(tmp_path, tiny_models, data, **overrides) -> DistillationJob:
    base = {
        "task": {"type": "causal-lm", "maxLength": 16},
        "compression": {"quantization": "none"},
    }
    base.update(overrides)
    return _job(tmp_path, tiny_models["llama"], data, **base)


@pytest.mark.parametrize("example", ["quickstart", "causal-lm"])
def test_example_specs_parse(example):
    job = load_manifest(REPO / "examples" / example / "distillationjob.yaml", DistillationJob)
    assert job.spec.output.uri


def test_quickstart_student_is_small(tiny_models):
    job = load_manifest(REPO / "examples" / "quickstart" / "distillationjob.yaml", DistillationJob)
    assert job.spec.task.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert job.spec.student.architecture.num_layers == 2


def test_unknown_teacher_path(tmp_path, sentiment_data):
    job = _job(tmp_path, tmp_path / "nowhere", sentiment_data)
    with pytest.raises(models.ModelError, match=r"teacher\.uri: .*no such model folder"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_folder_without_a_model(tmp_path, sentiment_data):
    (tmp_path / "empty").mkdir()
    job = _job(tmp_path, tmp_path / "empty", sentiment_data)
    with pytest.raises(models.ModelError, match=r"teacher\.uri: .*no config\.json"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_unknown_student_path(tmp_path, tiny_models, sentiment_data):
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"uri": str(tmp_path / "nope")})
    with pytest.raises(models.ModelError, match=r"student\.uri"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_tokenizer_mismatch_is_refused(tmp_path, tiny_models, sentiment_data):
    job = _lm(tmp_path, tiny_models, sentiment_data, student={"uri": str(tiny_models["llama-other"])})
    with pytest.raises(models.ModelError, match=r"student\.uri: the student's tokenizer differs"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_shared_tokenizer_passes(tmp_path, tiny_models, sentiment_data):
    job = _lm(tmp_path, tiny_models, sentiment_data, student={"uri": str(tiny_models["llama"])},
              distillation={"topK": 8})
    found = preflight.check_models(job.spec, OutputLayout(tmp_path))
    assert found["teacher_tokenizer"].get_vocab() == found["student_tokenizer"].get_vocab()


def test_top_k_larger_than_vocabulary(tmp_path, tiny_models, sentiment_data):
    job = _lm(tmp_path, tiny_models, sentiment_data, distillation={"topK": 5000})
    with pytest.raises(preflight.PreflightError, match=r"distillation\.topK: 5000 is larger than"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_more_workers_than_batch(tmp_path, tiny_models, sentiment_data):
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, training={"batchSize": 2})
    with pytest.raises(preflight.PreflightError, match=r"training\.batchSize"):
        preflight.check_spec(job.spec, workers=4)


def test_from_teacher_layers_outside_the_teacher(tmp_path, tiny_models, sentiment_data):
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"fromTeacher": {"layers": [0, 9]}})
    teacher, _ = models.load_classification_teacher(str(tiny_models["bert"]), ["neg", "pos"])
    with pytest.raises(models.ModelError, match=r"student\.fromTeacher\.layers: \[9\]"):
        models.build_student(job.spec, teacher)


def test_students_from_teacher_and_architecture(tmp_path, tiny_models, sentiment_data):
    teacher, _ = models.load_classification_teacher(str(tiny_models["bert"]), ["neg", "pos"])
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"fromTeacher": {"layers": [1]}})
    student = models.build_student(job.spec, teacher)
    assert student.config.num_hidden_layers == 1
    layer = "bert.encoder.layer.{}.attention.self.query.weight"
    assert (student.state_dict()[layer.format(0)] == teacher.state_dict()[layer.format(1)]).all()
    job = _job(tmp_path, tiny_models["bert"], sentiment_data)
    student = models.build_student(job.spec, teacher)
    assert student.config.hidden_size == 16 and student.config.num_labels == 2
    assert models.count_parameters(student) < models.count_parameters(teacher)
