"""ONNX export: the graph computes what PyTorch computes, with the names and dynamic axes Triton is told."""

from __future__ import annotations

import numpy as np
import pytest
from kubedistill_jobs.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    export_onnx,
    graph_signature,
    max_abs_diff,
    onnx_logits,
    probe_inputs,
    session,
)

from .conftest import tiny_bert, tiny_llama, tokenizer

TEXTS = ("the bank reported a profit", "a much longer sentence about a football match that went to extra time", "hi")


def test_classification_export_matches_pytorch(tmp_path):
    tok = tokenizer()
    model = tiny_bert(32, 2, 2, tok.vocab_size)
    names = export_onnx(model, tok, tmp_path / "m.onnx", task="sequence-classification", max_length=32)
    assert names["inputs"] == list(INPUT_NAMES) and names["outputs"] == [OUTPUT_NAME]
    # Inputs other than the probe the graph was traced with: other batch size, other lengths, padding.
    assert max_abs_diff(model, tmp_path / "m.onnx", probe_inputs(tok, 32, TEXTS), "sequence-classification") < 1e-4
    inputs, outputs = graph_signature(tmp_path / "m.onnx")
    assert [(i.name, i.dtype, i.dims) for i in inputs] == [(n, "INT64", (-1, -1)) for n in INPUT_NAMES]
    assert [(o.name, o.dtype, o.dims) for o in outputs] == [(OUTPUT_NAME, "FLOAT", (-1, 3))]


def test_batch_one_and_batch_many_agree(tmp_path):
    """Padding in a batch must not change a row's logits (the attention mask is honoured)."""
    tok = tokenizer()
    model = tiny_bert(32, 2, 2, tok.vocab_size)
    export_onnx(model, tok, tmp_path / "m.onnx", task="sequence-classification", max_length=32)
    sess = session(tmp_path / "m.onnx", threads=1)
    batch = onnx_logits(sess, probe_inputs(tok, 32, TEXTS))
    single = np.concatenate([onnx_logits(sess, probe_inputs(tok, 32, (t,))) for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-4)


def test_causal_lm_export_matches_pytorch(tmp_path):
    tok = tokenizer()
    model = tiny_llama(tok.vocab_size)
    export_onnx(model, tok, tmp_path / "lm.onnx", task="causal-lm", max_length=32)
    assert max_abs_diff(model, tmp_path / "lm.onnx", probe_inputs(tok, 32, TEXTS), "causal-lm") < 1e-4
    _, outputs = graph_signature(tmp_path / "lm.onnx")
    assert outputs[0].dims == (-1, -1, tok.vocab_size)


def test_unknown_task_is_refused(tmp_path):
    tok = tokenizer()
    with pytest.raises(ValueError, match=r"task\.type"):
        export_onnx(tiny_bert(32, 1, 2, tok.vocab_size), tok, tmp_path / "m.onnx", task="translation", max_length=8)
