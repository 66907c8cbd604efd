"""Structured pruning leaves a dense model that still runs, exports and learns from the teacher."""

from __future__ import annotations

import pytest
import torch
from kubedistill_jobs.compress import load_tokenizer, recovery_batches
from kubedistill_jobs.onnx_export import export_onnx, max_abs_diff, probe_inputs
from kubedistill_jobs.prune import prune, recover

from kubedistill.report import Pruning

from .conftest import make_spec, tiny_bert, tokenizer


def _forward(model, tok):
    batch = tok(["a bank", "the match was long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_layer_pruning_keeps_the_chosen_layers(tmp_path):
    tok = tokenizer()
    model = tiny_bert(32, 4, 2, tok.vocab_size)
    spec = make_spec(compression={"pruning": {"method": "layers", "keepLayers": [0, 3]}})
    info = prune(model, spec)
    assert model.config.num_hidden_layers == 2 and info["params_after"] < info["params_before"]
    assert _forward(model, tok).shape == (2, 3)
    model.save_pretrained(tmp_path / "m")  # still an ordinary, reloadable model
    assert type(model).from_pretrained(tmp_path / "m").config.num_hidden_layers == 2


def test_layer_indices_are_checked():
    tok = tokenizer()
    spec = make_spec(compression={"pruning": {"method": "layers", "keepLayers": [0, 7]}})
    with pytest.raises(ValueError, match=r"keepLayers"):
        prune(tiny_bert(32, 2, 2, tok.vocab_size), spec)


def test_head_pruning_exports_and_recovers(compressed, tmp_path):
    _, layout = compressed
    tok = tokenizer()
    model = tiny_bert(64, 2, 4, tok.vocab_size)
    spec = make_spec(compression={"pruning": {"method": "heads", "headRatio": 0.5, "recoverySteps": 3}})
    info = prune(model, spec)
    assert info["heads_kept_per_layer"] == 2 and info["params_after"] < info["params_before"]
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 32
    export_onnx(model, tok, tmp_path / "p.onnx", task="sequence-classification", max_length=32)
    assert max_abs_diff(model, tmp_path / "p.onnx", probe_inputs(tok, 32, ("one", "two words")),
                        "sequence-classification") < 1e-4
    teacher = tiny_bert(64, 2, 4, tok.vocab_size, seed=1)
    batches = recovery_batches(spec, layout, load_tokenizer(layout.student), load_tokenizer(layout.teacher))
    losses = recover(model, teacher, batches, spec, device=torch.device("cpu"))
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, not NaN


def test_compress_prunes_recovers_and_exports(tmp_path):
    from kubedistill_jobs.compress import CompressionResult, compress

    from .conftest import build_job

    layout = build_job(tmp_path)
    spec = make_spec(compression={"pruning": {"method": "layers", "keepLayers": [1], "recoverySteps": 2}})
    seen = []
    compress(spec, layout, progress=lambda done, total: seen.append((done, total)))
    result = CompressionResult.read(layout)
    assert result.pruning["layers_kept"] == [1] and result.student_params == result.pruning["params_after"]
    assert result.pruning["params_after"] < result.pruning["params_before"]
    assert Pruning.model_validate(result.pruning).layers_kept == [1]  # what report.json carries
    assert len(result.recovery_losses) == 2 and result.max_abs_diff["student"] < 1e-4
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
