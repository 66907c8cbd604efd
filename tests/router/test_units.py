"""Pure pieces of the router: the circuit breaker, teacher answer shapes, threshold resolution."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_router.breaker import CircuitBreaker
from kubedistill_router.classification import resolve_threshold
from kubedistill_router.errors import UpstreamError
from kubedistill_router.teachers import Answer, KServeV1Teacher, as_probabilities

from kubedistill.artifacts import ServedModel, ServingManifest
from kubedistill.routerconfig import RouterConfig, TeacherEndpointRef


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.is_open and not breaker.allow()
    clock.now = 10.5
    assert breaker.allow()  # one trial
    assert not breaker.allow()  # and only one
    breaker.record_failure()  # the trial failed: open again
    assert breaker.is_open and not breaker.allow()
    clock.now = 21
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open and breaker.allow() and breaker.allow()


def test_teacher_answers_in_every_shape_classifiers_use():
    teacher = KServeV1Teacher(TeacherEndpointRef(url="http://t"), ["a", "b", "c"], "max-probability", None)
    assert teacher.answer("b") == Answer("b", None)
    assert teacher.answer(2) == Answer("c", None)
    assert teacher.answer({"label": "a", "confidence": 0.9}) == Answer("a", 0.9)
    assert teacher.answer({"label": 1}) == Answer("b", None)
    answer = teacher.answer([0.1, 0.7, 0.2])
    assert answer.label == "b" and answer.confidence == pytest.approx(0.7)
    assert teacher.answer({"probabilities": [0.6, 0.3, 0.1]}).label == "a"
    for bad in ("z", 7, None, {"label": "z"}, True):
        with pytest.raises(UpstreamError, match="not one of the labels"):
            teacher.answer(bad)


def test_a_remote_teachers_numeric_labels_are_matched_by_name_first():
    stars = KServeV1Teacher(TeacherEndpointRef(url="http://t"), ["1", "2", "3", "4", "5"], "max-probability", None)
    assert [stars.answer(v).label for v in (5, 1, "3", {"label": 4})] == ["5", "1", "3", "4"]
    with pytest.raises(UpstreamError, match="not one of the labels"):
        stars.answer(6)


def test_scores_become_probabilities_only_when_they_are_not_already():
    probs = np.array([[0.2, 0.8]])
    assert as_probabilities(probs) is not None and np.allclose(as_probabilities(probs), probs)
    logits = np.array([[2.0, -1.0]])
    assert np.allclose(as_probabilities(logits).sum(axis=1), 1.0)


def manifest(threshold: float | None, signal: str = "max-probability") -> ServingManifest:
    model = ServedModel(name="student", inputs=["input_ids"], output="logits", max_batch_size=8)
    return ServingManifest(task="sequence-classification", labels=["a", "b"], max_length=8, tokenizer="student",
                           student=model, recommended_threshold=threshold, confidence_signal=signal,
                           model_version="v")


def test_threshold_comes_from_the_config_else_from_the_export():
    assert resolve_threshold(RouterConfig(model_name="m", threshold=0.4), manifest(0.8)) == 0.4
    assert resolve_threshold(RouterConfig(model_name="m"), manifest(0.8)) == 0.8
    with pytest.raises(ValueError, match="no recommended_threshold"):
        resolve_threshold(RouterConfig(model_name="m"), manifest(None))
    with pytest.raises(ValueError, match="for the margin signal"):
        resolve_threshold(RouterConfig(model_name="m"), manifest(0.3, "margin"))
    assert resolve_threshold(RouterConfig(model_name="m", mode="student-only"), manifest(None)) is None


def test_call_limits_come_from_the_config_triton_loads(tmp_path):
    from google.protobuf import text_format
    from kubedistill_router.triton_settings import TritonSettings, read_config, serving_limits
    from tritonclient.grpc import model_config_pb2

    model = manifest(None).student
    assert serving_limits(tmp_path, model) == (8, 1)  # no config.pbtxt: serving.json's batch size
    (tmp_path / "student").mkdir()
    path = tmp_path / "student" / "config.pbtxt"
    path.write_text(text_format.MessageToString(model_config_pb2.ModelConfig(name="student", max_batch_size=8)))
    assert serving_limits(tmp_path, model) == (8, 1)
    # As a StudentDeployment's fetch container leaves it: its spec.triton written in.
    path.write_text(text_format.MessageToString(TritonSettings(max_batch_size=64, instance_count=3)
                                                .apply(read_config(path))))
    assert serving_limits(tmp_path, model) == (64, 3)


def test_missing_tritonserver_says_what_to_install(monkeypatch):
    import kubedistill_router.local.triton as local_triton

    from kubedistill.uris import UriError

    def no_package(name: str):
        raise UriError(name)

    monkeypatch.setattr(local_triton, "package_root", no_package)
    with pytest.raises(local_triton.TritonNotFound, match=r"pip install --no-deps nvidia-pytriton"):
        local_triton.TritonDistribution.find()
