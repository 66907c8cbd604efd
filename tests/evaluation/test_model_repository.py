"""The Triton model repository: every config.pbtxt parses with Triton's ModelConfig and matches its graph."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from kubedistill_jobs.export import export, render_config, write_model_repository
from kubedistill_jobs.onnx_export import session
from tritonclient.grpc import model_config_pb2

from kubedistill.artifacts import ServingManifest

_TYPES = {"tensor(int64)": model_config_pb2.TYPE_INT64, "tensor(float)": model_config_pb2.TYPE_FP32}


def parse_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def assert_matches_graph(config: model_config_pb2.ModelConfig, onnx_path) -> None:
    """Names, types and dims (the graph's, minus the batch axis) agree with what ONNX Runtime loads."""
    sess = session(onnx_path)
    for declared, actual in ((config.input, sess.get_inputs()), (config.output, sess.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for t, a in zip(declared, actual, strict=True):
            assert t.data_type == _TYPES[a.type]
            assert list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape[1:]]


def test_export_writes_a_triton_repository(evaluated):
    spec, layout, report = evaluated
    manifest = export(spec, layout, report)
    repo = layout.model_repository
    assert ServingManifest.read(repo) == manifest
    assert manifest.recommended_threshold == report.routing.recommended_threshold
    assert manifest.labels == spec.task.labels and manifest.tokenizer == "student"
    assert manifest.teacher is not None and manifest.teacher_tokenizer is None  # shared vocabulary
    for name in ("student", "teacher"):
        config = parse_config(repo / name / "config.pbtxt")
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
        assert_matches_graph(config, repo / name / "1" / "model.onnx")
        assert (repo / name / "labels.txt").read_text().split() == spec.task.labels
    # The served student is the quantized graph; the teacher the fp32 one.
    assert (repo / "student" / "1" / "model.onnx").read_bytes() == (layout.onnx / "student.int8.onnx").read_bytes()
    assert (repo / "student" / "tokenizer.json").is_file()


def test_repository_without_teacher_and_custom_batching(compressed, tmp_path):
    spec, layout = compressed
    (tmp_path / "repo" / "teacher").mkdir(parents=True)  # a stale teacher from an earlier export
    manifest = write_model_repository(
        tmp_path / "repo", task="sequence-classification", labels=spec.task.labels, max_length=32,
        student_onnx=layout.onnx / "student.onnx", tokenizer_dir=layout.student, max_batch_size=8,
        dynamic_batching=False, recommended_threshold=0.7, model_version="v9",
    )
    assert manifest.teacher is None and not (tmp_path / "repo" / "teacher").exists()
    config = parse_config(tmp_path / "repo" / "student" / "config.pbtxt")
    assert config.max_batch_size == 8 and not config.HasField("dynamic_batching")
    assert_matches_graph(config, tmp_path / "repo" / "student" / "1" / "model.onnx")
    assert ServingManifest.read(tmp_path / "repo").recommended_threshold == 0.7


def test_a_graph_with_other_names_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="expected"):
        render_config("student", tmp_path / "m.onnx")


def test_tokenizer_json_is_required(compressed, tmp_path):
    _, layout = compressed
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        write_model_repository(tmp_path / "repo", task="sequence-classification", labels=["a", "b"], max_length=8,
                               student_onnx=layout.onnx / "student.onnx", tokenizer_dir=tmp_path, model_version="v")


@pytest.mark.parametrize(("prompt", "expected"), [(None, ""), ({"user": "Title: {text}"}, ""),
                                                  ({"system": "Be brief.", "user": "{text}"}, "Be brief.")])
def test_a_causal_lm_export_serves_the_system_turn_the_student_was_trained_with(evaluated, monkeypatch, prompt,
                                                                                 expected):
    """task.prompt's system turn reaches serving.json's system_prompt, which the router puts first in a chat
    request without one; empty without one, as the data stage renders prompts and conversations."""
    from kubedistill_jobs import export as export_module

    from kubedistill.api.distillationjob import TaskPrompt

    spec, layout, report = evaluated
    task = spec.task.model_copy(update={"type": "causal-lm", "labels": None,
                                        "prompt": TaskPrompt.model_validate(prompt) if prompt else None})
    asked: dict = {}
    monkeypatch.setattr(export_module, "write_generation_repository", lambda repo, **kwargs: asked.update(kwargs))
    export(spec.model_copy(update={"task": task}), layout, report)
    assert asked["system_prompt"] == expected
