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


def test_tokenizer_mismatch_falls_back_to_the_teachers_answers(tmp_path, tiny_models, sentiment_data):
    job = _lm(tmp_path, tiny_models, sentiment_data, student={"uri": str(tiny_models["llama-other"])},
              distillation={"topK": 4})
    assert preflight.check_models(job.spec, OutputLayout(tmp_path))["cross_tokenizer"] == "sequence-kd"


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


def test_max_length_beyond_the_teachers_positions_is_refused(tmp_path, tiny_models, sentiment_data):
    # the tiny BERT has 64 positions: 128 tokens would die inside the teacher's forward pass in Ray Data
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, task={"maxLength": 128})
    with pytest.raises(preflight.PreflightError,
                       match=r"task\.maxLength: 128 tokens is more than the models' positions: the teacher's 64 "
                             r"\(teacher\.uri\), the student derived from the teacher's 64 "
                             r"\(student\.architecture\); set task\.maxLength to at most 64"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, task={"maxLength": 64})
    preflight.check_models(job.spec, OutputLayout(tmp_path))  # exactly the limit is fine


def test_max_length_beyond_a_pretrained_students_positions_is_refused(tmp_path, padded_llamas, sentiment_data):
    job = _lm(tmp_path, {"llama": padded_llamas["15608"]}, sentiment_data, task={"type": "causal-lm",
                                                                               "maxLength": 32},
              student={"uri": str(padded_llamas["16-positions"])}, distillation={"topK": 8})
    with pytest.raises(preflight.PreflightError, match=r"task\.maxLength: 32 .* the student's 16 \(student\.uri\); "
                                                       r"set task\.maxLength to at most 16"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_position_limits_of_config_families():
    from transformers import BertConfig, GPT2Config, RobertaConfig

    assert models.position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert models.position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert models.position_limit(GPT2Config(n_positions=1024)) == 1024


@pytest.mark.parametrize(("teacher", "student"), [("15608", "15616"), ("15616", "15608")])
def test_vocabularies_padded_differently_pass_preflight(tmp_path, padded_llamas, sentiment_data, teacher, student):
    job = _lm(tmp_path, {"llama": padded_llamas[teacher]}, sentiment_data,
              student={"uri": str(padded_llamas[student])}, distillation={"topK": 8, "teacherMode": "online"})
    found = preflight.check_models(job.spec, OutputLayout(tmp_path))
    assert len(found["teacher_tokenizer"]) == 31  # the shared token range the logits are compared over


def test_a_model_with_fewer_embeddings_than_its_tokenizer_is_refused(tmp_path, padded_llamas, sentiment_data):
    job = _lm(tmp_path, {"llama": padded_llamas["15608"]}, sentiment_data,
              student={"uri": str(padded_llamas["short-vocab"])}, distillation={"topK": 8})
    with pytest.raises(preflight.PreflightError, match=r"student\.uri: the student has 12 token embeddings but its "
                                                       r"tokenizer 31 tokens"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"student": {"fromTeacher": {"layers": [0, 9]}}},
     r"student\.fromTeacher\.layers: \[9\] outside the teacher's layers 0\.\.1"),
    ({"compression": {"pruning": {"method": "layers", "keepLayers": [0, 1]}}},
     r"compression\.pruning\.keepLayers: \[0, 1\] must be distinct indices of the student's 1 layers"),
    ({"student": {"fromTeacher": {"layers": [0, 1]}}, "compression": {"pruning": {"method": "heads",
                                                                               "headRatio": 0.3}}},
     r"compression\.pruning\.headRatio: 0\.3 of the student's 2 heads removes 0"),
    ({"teacher": {"adapt": {"method": "none"}}},
     r"teacher\.adapt\.method: none uses the teacher's own classifier, but it has no classification head"),
], ids=["from-teacher-layers", "keep-layers", "head-ratio", "no-head"])
def test_student_and_teacher_shapes_are_checked_before_any_compute(tmp_path, tiny_models, sentiment_data,
                                                                     overrides, message):
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, **overrides)
    with pytest.raises(preflight.PreflightError, match=message):
        preflight.check_models(job.spec, OutputLayout(tmp_path))


def test_online_teacher_needs_the_students_tokens(tmp_path, tiny_models, sentiment_data):
    job = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"uri": str(tiny_models["llama-other"])},
               distillation={"teacherMode": "online"})
    with pytest.raises(preflight.PreflightError, match=r"distillation\.teacherMode: online runs the teacher on the "
                                                       r"student's tokens, and student\.uri tokenizes differently"):
        preflight.check_models(job.spec, OutputLayout(tmp_path))
    cached = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"uri": str(tiny_models["llama-other"])})
    preflight.check_models(cached.spec, OutputLayout(tmp_path))  # the teacher reads texts with its own tokenizer
    shared = _job(tmp_path, tiny_models["bert"], sentiment_data, student={"uri": str(tiny_models["llama"])},
                  distillation={"teacherMode": "online"})
    preflight.check_models(shared.spec, OutputLayout(tmp_path))


def test_a_named_api_key_that_is_not_set_is_refused_before_any_request(tmp_path, monkeypatch):
    """teacher.endpoint.apiKeySecretRef says the endpoint needs a key; locally the key is the user's to export.
    Without it every request would go out unauthenticated: refused, naming the field and the variable."""
    from kubedistill.env import PipelineEnv

    from .test_endpoint_teacher import _endpoint_manifest

    manifest = _endpoint_manifest("http://127.0.0.1:9/v1", tmp_path / "out", tmp_path, tmp_path / "d.txt")
    manifest["spec"]["teacher"]["endpoint"]["apiKeySecretRef"] = {"name": "llm-api", "key": "token"}
    spec = DistillationJob.model_validate(manifest).spec
    variable = PipelineEnv.env_name("teacher_api_key")
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(preflight.PreflightError, match=rf"teacher\.endpoint\.apiKeySecretRef: .*{variable}"):
        preflight.check_spec(spec, workers=1)
    monkeypatch.setenv(variable, "s3cret")
    preflight.check_spec(spec, workers=1)
