"""On-policy distillation on tiny Llamas: the student's samples laid out as a batch, the loss on them against a
hand computation, training steps that bring the student toward the teacher on its own samples, and a Ray Train
run that mixes on- and off-policy batches."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from kubedistill_jobs import losses, sampling
from kubedistill_jobs.recipe import DistillationRecipe, LoopConfig

from kubedistill.api.distillationjob import DistillationJob

from .conftest import job_manifest

VOCAB, EOS, PAD = 24, 2, 0


def _llama(seed: int, vocab: int = VOCAB):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64, pad_token_id=PAD,
                         eos_token_id=EOS, bos_token_id=1)
    return LlamaForCausalLM(config)


def _prompts():
    import torch

    ids = torch.tensor([[1, 5, 6, 0, 0, 0], [1, 7, 8, 9, 10, 11], [1, 12, 0, 0, 0, 0], [1, 13, 14, 15, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[3], [6], [2], [4]])).long()
    return ids, mask


def _loop(**overrides) -> LoopConfig:
    spec = DistillationJob.model_validate(job_manifest(Path("/unused"), Path("/teacher"), Path("/data"))).spec
    values = dict(task="causal-lm", teacher_mode="online", loss="reverse-kl", temperature=1.0, alpha=0.5,
                  vocab_size=VOCAB, hidden_states=False, on_policy=1.0, max_new_tokens=6, sample_temperature=1.0,
                  eos_token_id=EOS, pad_token_id=PAD, learning_rate=0.02, max_steps=10, warmup_ratio=0.0)
    values.update(overrides)
    return dataclasses.replace(LoopConfig.from_spec(spec, teacher_dir=None, vocab_size=None), **values)


def _recipe(cfg: LoopConfig, student, teacher) -> DistillationRecipe:
    import torch

    recipe = DistillationRecipe(cfg, rank=0, world=1, device=torch.device("cpu"))
    recipe.model = recipe.core = student
    recipe.teacher, recipe.projection = teacher.eval(), None
    return recipe


def test_samples_are_laid_out_after_their_prompts_and_only_they_count():
    import torch

    model = _llama(0)
    ids, mask = _prompts()
    torch.manual_seed(3)
    out = sampling.sample_answers(model, ids, mask, max_new_tokens=5, temperature=0.0, eos_token_id=EOS,
                                  pad_token_id=PAD, vocab_size=VOCAB)
    left, left_mask = sampling.left_pad(ids, mask, PAD)
    config = sampling.generation_config(5, 0.0, EOS, PAD)
    with torch.no_grad():
        reference = model.generate(input_ids=left, attention_mask=left_mask, generation_config=config)
    generated = reference[:, left.shape[1]:]
    for row in range(ids.shape[0]):
        p = int(mask[row].sum())
        answer = generated[row].tolist()
        answer = answer[:answer.index(EOS) + 1] if EOS in answer else answer
        n = p + len(answer)
        assert out["input_ids"][row, :n].tolist() == ids[row, :p].tolist() + answer
        assert out["attention_mask"][row].sum() == n
        # position t predicts token t + 1: exactly the answer's tokens are predicted under the loss mask
        assert out["loss_mask"][row].nonzero().flatten().tolist() == list(range(p - 1, n - 1))


def test_answer_lengths_stop_after_the_first_end_of_sequence_token():
    import torch

    generated = torch.tensor([[4, EOS, PAD, PAD], [4, 5, 6, 7], [EOS, EOS, PAD, PAD]])
    assert sampling.answer_lengths(generated, EOS).tolist() == [2, 4, 1]
    assert sampling.answer_lengths(generated, None).tolist() == [4, 4, 4]


def test_padded_embedding_rows_are_never_sampled():
    import torch

    model = _llama(1, vocab=VOCAB + 40)  # 40 rows past the tokenizer's 24 tokens
    with torch.no_grad():
        model.lm_head.weight[VOCAB:] += 50.0 * model.lm_head.weight[VOCAB:].sign()  # they would win every draw
    ids, mask = _prompts()
    out = sampling.sample_answers(model, ids, mask, max_new_tokens=6, temperature=1.0, eos_token_id=EOS,
                                  pad_token_id=PAD, vocab_size=VOCAB)
    assert int(out["input_ids"].max()) < VOCAB


def test_on_policy_loss_is_the_reverse_kl_on_sampled_tokens_by_hand():
    """Two positions over three tokens; only the second is a sampled token. Reverse KL by hand:
    Σ_v q(v) · (log q(v) − log p(v)) at the masked position, no hard term, whatever alpha."""
    import torch

    student = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]])

    def softmax(row: list[float]) -> list[float]:
        total = sum(math.exp(x) for x in row)
        return [math.exp(x) / total for x in row]

    q, p = softmax([0.5, 1.5, 0.0]), softmax([1.0, -1.0, 0.0])
    by_hand = sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p, strict=True))
    mask = torch.tensor([[False, True]])
    parts = losses.distillation_loss(student, teacher, None, loss="reverse-kl", temperature=1.0, alpha=1.0,
                                     mask=mask)
    assert parts.total.item() == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx(0.8990, abs=1e-3)  # q = (.231, .629, .140), p = (.665, .090, .245)

    # the recipe on a sampled batch: the same divergence over the sampled tokens, alpha left out
    model, teacher_model = _llama(0), _llama(7)
    ids, mask = _prompts()
    recipe = _recipe(_loop(alpha=0.3), model, teacher_model)
    batch = recipe.sample_batch({"prompt_ids": ids, "prompt_mask": mask})
    with torch.no_grad():
        got = recipe.loss_step(batch)
        s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    q_log, p_log = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    per_position = (q_log.exp() * (q_log - p_log)).sum(-1)
    want = per_position[batch["loss_mask"]].mean()
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert got["hard_loss"].item() == 0.0 and got["on_policy"] == 1.0
    assert got["sampled_tokens"] == float(batch["loss_mask"].sum())


def test_on_policy_steps_bring_the_student_toward_the_teacher_on_its_own_samples():
    import torch

    student, teacher = _llama(0), _llama(7)
    ids, mask = _prompts()
    recipe = _recipe(_loop(), student, teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.02)

    def divergence_on_own_samples(seed: int) -> float:
        torch.manual_seed(seed)
        batch = recipe.sample_batch({"prompt_ids": ids, "prompt_mask": mask})
        with torch.no_grad():
            return float(recipe.loss_step(batch)["loss"])

    before = np.mean([divergence_on_own_samples(s) for s in range(5)])
    for step in range(15):
        assert recipe.cfg.on_policy_step(step)  # onPolicy 1.0: every batch is the student's own
        torch.manual_seed(100 + step)
        parts = recipe.loss_step(recipe.sample_batch({"prompt_ids": ids, "prompt_mask": mask}))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    after = np.mean([divergence_on_own_samples(s) for s in range(5)])
    assert after < 0.5 * before, (before, after)


def test_the_share_of_on_policy_steps_is_seeded_and_near_lambda():
    half = _loop(on_policy=0.5)
    draws = [half.on_policy_step(step) for step in range(400)]
    assert draws == [half.on_policy_step(step) for step in range(400)]  # every worker, every rerun agrees
    assert 0.4 < np.mean(draws) < 0.6
    assert not any(_loop(on_policy=0.0).on_policy_step(step) for step in range(50))


@pytest.mark.slow
def test_ray_train_mixes_on_and_off_policy_batches(ray_local, tmp_path):
    """Two workers (DDP over gloo), a real online teacher loaded from disk, half the batches on-policy."""
    import torch
    from kubedistill_jobs import train

    teacher_dir = tmp_path / "teacher"
    _llama(7).save_pretrained(teacher_dir)
    student = _llama(0)
    rng = np.random.default_rng(0)
    n, length = 32, 12
    ids = rng.integers(3, VOCAB, size=(n, length)).astype(np.int32)
    ids[:, 0] = 1
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids, dtype=np.int8),
            "prompt_ids": ids[:, :6].copy(), "prompt_mask": np.ones((n, 6), dtype=np.int8)}
    eval_data = {"input_ids": ids[:8], "attention_mask": np.ones((8, length), dtype=np.int8)}
    init = {"config": student.config, "state": {k: v.clone() for k, v in student.state_dict().items()},
            "student_hidden": 16, "teacher_hidden": 16}
    cfg = _loop(on_policy=0.5, max_steps=8, batch_size=8, teacher_dir=str(teacher_dir), checkpoint_every=4,
                loss="jsd", beta=0.5)
    result = train.fit(cfg, data, eval_data, init, storage=str(tmp_path / "ckpt"), workers=2,
                       model_out=tmp_path / "student")
    draws = [cfg.on_policy_step(step) for step in range(8)]
    assert 0 < np.mean(draws) < 1  # this seed mixes both kinds
    assert [e["step"] for e in result.history] == [4, 8]  # an epoch is 4 steps
    for entry, steps in zip(result.history, (draws[:4], draws[4:]), strict=True):
        assert entry["on_policy"] == pytest.approx(np.mean(steps))
        assert (entry["sampled_tokens"] > 0) == any(steps)
        assert math.isfinite(entry["train_loss"])
    assert torch.isfinite(torch.tensor(result.history[-1]["eval_perplexity"]))
