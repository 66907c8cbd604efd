"""training.mixedPrecision on a CPU: bf16 autocast where the CPU has bf16 instructions and the spec asks for it,
fp32 otherwise; the local teacher's answers follow the same setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kubedistill_jobs import precision
from kubedistill_jobs.local_answers import AnswerPredictor, AnswerSettings

needs_bf16 = pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no bf16 instructions")


def _product_dtype(mode: str) -> torch.dtype:
    context, needs_scaler = precision.autocast(torch.device("cpu"), mode)
    assert needs_scaler is False  # a GradScaler is for fp16 on a GPU only
    with context:
        return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype


@needs_bf16
def test_bf16_runs_matrix_products_in_bf16_on_a_cpu_that_has_it():
    assert _product_dtype("bf16") == torch.bfloat16


@pytest.mark.parametrize("mode", ["auto", "no", "fp16"])
def test_other_settings_stay_fp32_on_a_cpu(mode):
    assert _product_dtype(mode) == torch.float32


def test_bf16_stays_fp32_on_a_cpu_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # where oneDNN would only emulate bf16
    assert _product_dtype("bf16") == torch.float32


@needs_bf16
def test_the_teachers_bf16_answers_are_its_greedy_choices_with_their_log_probabilities(tiny_models, monkeypatch):
    from kubedistill_jobs.models import load_tokenizer

    asked = []

    def recording_autocast(device, mode):
        context = real_autocast(device, mode)
        asked.append((device.type, mode, context[0]))
        return context

    real_autocast = precision.autocast
    monkeypatch.setattr(precision, "autocast", recording_autocast)
    source = str(tiny_models["llama"])
    settings = AnswerSettings(source=source, max_length=24, top_k=4, vocab_size=len(load_tokenizer(source)),
                              max_new_tokens=5, mixed_precision="bf16")
    prompts = ["good great the", "bad awful", "the the the fine"]
    out = AnswerPredictor(settings)({"idx": np.arange(3), "text": np.asarray(prompts, dtype=object)})
    assert [(device, mode) for device, mode, _ in asked] == [("cpu", "bf16")]  # the answers followed the setting
    assert isinstance(asked[0][2], torch.autocast) and asked[0][2].fast_dtype == torch.bfloat16
    assert out["generated"].tolist() == [5, 5, 5]
    for row in range(3):
        start = int(out["prompt_tokens"][row])
        for t in range(start - 1, start - 1 + 5):  # position t predicts the answer's token t + 1
            values, indices = out["topk_values"][row, t].astype(np.float32), out["topk_indices"][row, t]
            assert indices[0] == out["input_ids"][row, t + 1]  # greedy: the answer token is the teacher's best
            assert np.all(values <= 0) and np.all(np.diff(values) <= 0)  # log-probabilities, best first
            assert np.exp(values).sum() <= 1 + 1e-3
