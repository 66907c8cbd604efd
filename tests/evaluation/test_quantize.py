"""Quantization: smaller graphs whose outputs stay close; a quantization the task cannot use is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubedistill_jobs.compress import COMPRESSION_JSON, compress
from kubedistill_jobs.onnx_export import export_onnx, onnx_logits, probe_inputs, session
from kubedistill_jobs.quantize import check_supported, quantize

from kubedistill.confidence import softmax

from .conftest import make_spec, tiny_llama, tokenizer

TEXTS = ("shares fell as the market opened", "the team scored a late goal", "a new phone chip", "data")


def test_int8_is_smaller_and_close(compressed):
    _, layout = compressed
    fp32, int8 = layout.onnx / "student.onnx", layout.onnx / "student.int8.onnx"
    # The embedding table dominates this student: only quantizing Gather too gets near 4×.
    assert int8.stat().st_size < fp32.stat().st_size / 3
    batch = probe_inputs(tokenizer(), 32, TEXTS)
    p32 = softmax(onnx_logits(session(fp32), batch))
    p8 = softmax(onnx_logits(session(int8), batch))
    assert np.abs(p32 - p8).max() < 0.02
    record = json.loads((layout.onnx / COMPRESSION_JSON).read_text())
    assert record["quantized_onnx"] == "student.int8.onnx"
    assert record["max_abs_diff"]["student"] < 1e-4 and record["max_abs_diff"]["teacher"] < 1e-4


def test_int4_weight_only_for_causal_lm(tmp_path):
    tok = tokenizer()
    model = tiny_llama(tok.vocab_size)
    export_onnx(model, tok, tmp_path / "lm.onnx", task="causal-lm", max_length=32)
    out = quantize(tmp_path / "lm.onnx", tmp_path / "lm.int4.onnx", "int4", "causal-lm")
    import onnx

    graph = onnx.load(str(out)).graph
    bits = {n.output[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type == "MatMulNBits"}
    # The vocabulary projection (the MatMul that writes the logits) at 8 bits, every other MatMul at 4.
    assert bits.pop("logits") == 8
    assert bits and set(bits.values()) == {4}
    weights = {i.name for i in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and weights.intersection(n.input)]
    assert out.stat().st_size < (tmp_path / "lm.onnx").stat().st_size
    batch = probe_inputs(tok, 32, TEXTS)
    mask = batch["attention_mask"].astype(bool)
    p32 = softmax(onnx_logits(session(tmp_path / "lm.onnx"), batch))[mask]
    p4 = softmax(onnx_logits(session(out), batch))[mask]
    assert np.abs(p32 - p4).sum(-1).max() < 0.1  # total variation per token


def test_none_keeps_fp32(tmp_path):
    assert quantize(tmp_path / "x.onnx", tmp_path / "y.onnx", "none", "sequence-classification") == tmp_path / "x.onnx"


def test_int4_refused_for_classification():
    with pytest.raises(ValueError, match=r"compression\.quantization.*int4.*sequence-classification"):
        check_supported("int4", "sequence-classification")
    # The spec refuses it when parsed ...
    with pytest.raises(ValueError, match=r"compression\.quantization"):
        make_spec(compression={"quantization": "int4"})


def test_compress_refuses_before_loading_anything(tmp_path):
    """... and compress refuses a spec that bypassed validation before it loads a model (none exist here)."""
    from kubedistill.artifacts import OutputLayout

    spec = make_spec()
    spec = spec.model_copy(update={"compression": spec.compression.model_copy(update={"quantization": "int4"})})
    with pytest.raises(ValueError, match=r"compression\.quantization"):
        compress(spec, OutputLayout(tmp_path))
