"""The local tritonserver (nvidia-pytriton's binary, python backend) serves the exported ONNX models."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_router.local.repository import build_local_repository, read_config

from .conftest import TEXTS

pytestmark = pytest.mark.slow


def test_local_repository_wraps_onnx_in_the_python_backend(model_repository, tmp_path):
    local = build_local_repository(model_repository, tmp_path / "local")
    for name in ("student", "teacher"):
        config = read_config(local / name / "config.pbtxt")
        original = read_config(model_repository / name / "config.pbtxt")
        assert config.backend == "python" and not config.platform
        assert [i.name for i in config.input] == [i.name for i in original.input]
        assert [o.name for o in config.output] == [o.name for o in original.output]
        assert config.max_batch_size == original.max_batch_size
        assert (local / name / "1" / "model.py").exists() and (local / name / "1" / "model.onnx").exists()
    assert read_config(model_repository / "student" / "config.pbtxt").platform == "onnxruntime_onnx"
    assert (local / "serving.json").read_text() == (model_repository / "serving.json").read_text()


def test_triton_answers_like_onnxruntime(triton, reference):
    import tritonclient.grpc as grpcclient

    encodings = reference.tokenizer.encode_batch(TEXTS)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inputs = [grpcclient.InferInput("input_ids", ids.shape, "INT64"),
              grpcclient.InferInput("attention_mask", mask.shape, "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    logits = client.infer("student", inputs).as_numpy("logits")
    expected = reference.sessions["student"].run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    client.close()
