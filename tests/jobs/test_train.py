"""Ray Train on tiny models: 2 workers lower the loss, a rerun and a worker failure resume the step count."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from kubedistill_jobs import train
from kubedistill_jobs.recipe import DistillationRecipe, LoopConfig
from safetensors.torch import load_file

from kubedistill.api.distillationjob import DistillationJob

from .conftest import job_manifest

pytestmark = pytest.mark.slow


def _student_init():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    return {"config": config, "state": model.state_dict(), "student_hidden": 16, "teacher_hidden": 16}


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Label = whether token 5 occurs; the teacher's logits agree with the label, with some noise."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 20, size=(n, 8)).astype(np.int32)
    labels = (ids == 5).any(1).astype(np.int64)
    logits = np.stack([-2.0 * labels, 2.0 * labels], 1).astype(np.float32) + rng.normal(0, 0.3, (n, 2))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids, dtype=np.int8), "labels": labels,
            "logits": logits.astype(np.float32)}


def _loop(**overrides) -> LoopConfig:
    """A small job's loop (built from its spec, as the train stage builds it), with the test's values."""
    values = dict(task="sequence-classification", temperature=2.0, alpha=0.7, epochs=None, max_steps=12,
                  batch_size=16, learning_rate=0.01, warmup_ratio=0.0, checkpoint_every=4)
    values.update(overrides)
    spec = DistillationJob.model_validate(job_manifest(Path("/unused"), Path("/teacher"), Path("/data"))).spec
    return dataclasses.replace(LoopConfig.from_spec(spec, teacher_dir=None, vocab_size=None), **values)


def _loss_step(overrides: dict, student, teacher, batch: dict) -> object:
    """One loss step of the recipe with the given models, as a worker runs it after setup."""
    recipe = DistillationRecipe(_loop(**overrides), rank=0, world=1, device="cpu")
    recipe.model, recipe.teacher, recipe.projection = student, teacher, None
    return recipe.loss_step(batch)["loss"]


def test_two_workers_lower_the_loss_and_a_rerun_resumes(ray_local, tmp_path):
    storage = str(tmp_path / "ckpt")
    first = train.fit(_loop(max_steps=None, epochs=3), _arrays(96, 0), _arrays(32, 1), _student_init(),
                      storage=storage, workers=2, model_out=tmp_path / "a")
    losses = [entry["train_loss"] for entry in first.history]
    assert [e["step"] for e in first.history] == [6, 12, 18] and first.resumed_from_step == 0
    assert losses[-1] < 0.9 * losses[0]
    assert {"soft_loss", "hard_loss", "eval_accuracy"} <= set(first.history[-1])
    assert "classifier.weight" in load_file(tmp_path / "a" / "model.safetensors")
    assert train.latest_checkpoint(tmp_path / "ckpt") is not None

    # the same job asked for one more epoch: the step count continues from the last checkpoint
    second = train.fit(_loop(max_steps=None, epochs=4), _arrays(96, 0), _arrays(32, 1), _student_init(),
                       storage=storage, workers=2, model_out=tmp_path / "b")
    assert second.resumed_from_step == 18 and second.resumes == [18]
    assert [e["step"] for e in second.history] == [6, 12, 18, 24]


def test_worker_failure_restarts_from_the_checkpoint(ray_local, tmp_path):
    marker = tmp_path / "crashed"

    def crash_once(step: int, rank: int, world: int) -> None:
        """The last worker exits at step 6, once: the restarted worker group goes on."""
        if step == 6 and rank == world - 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    result = train.fit(_loop(max_steps=8), _arrays(64, 0), _arrays(16, 1), _student_init(),
                       storage=str(tmp_path / "ckpt"), workers=2, model_out=tmp_path / "student",
                       step_hook=crash_once)
    assert marker.exists()  # a worker did die
    assert result.resumes == [4]  # and the new worker group continued from step 4, not 0
    assert result.history[-1]["step"] == 8


def test_a_worker_takes_its_share_of_one_nodes_cpus_or_a_whole_worker_node():
    def node(cpus: float, head: bool = False, alive: bool = True) -> dict:
        resources = {"CPU": cpus, **({"node:__internal_head__": 1.0} if head else {})}
        return {"Alive": alive, "Resources": resources}

    assert train.cpus_per_worker([node(2, head=True)], 1) == 2  # `kubedistill run` on 2 cores, one worker
    assert train.cpus_per_worker([node(2, head=True)], 2) == 1
    assert train.cpus_per_worker([node(16, head=True)], 3) == 5
    assert train.cpus_per_worker([node(2, head=True)], 4) == 1  # never below one
    # a KubeRay cluster: the head's CPUs are not a worker's; the smallest worker pod sets the share
    cluster = [node(4, head=True), node(8), node(6), node(32, alive=False)]
    assert train.cpus_per_worker(cluster, 2) == 6
    assert train.cpus_per_worker([node(4, head=True), node(0), node(0.5)], 1) == 1  # no whole CPU: one


def test_one_local_worker_trains_with_every_cpu(ray_local, tmp_path):
    import ray

    threads = tmp_path / "threads"

    def record_threads(step: int, rank: int, world: int) -> None:
        import torch

        threads.write_text(str(torch.get_num_threads()))

    cpus = train.cpus_per_worker(ray.nodes(), 1)
    assert cpus == 2  # ray_local has 2 CPUs
    train.fit(_loop(max_steps=1), _arrays(16, 0), _arrays(8, 1), _student_init(), storage=str(tmp_path / "ckpt"),
              workers=1, cpus_per_worker=cpus, model_out=tmp_path / "student", step_hook=record_threads)
    assert threads.read_text() == "2"  # Ray gave the worker both CPUs, and torch uses them


def _lm_batch(tokenizer_dir, texts: list[str], max_length: int = 10) -> dict:
    import torch
    from kubedistill_jobs import models, soft_targets

    tokens = soft_targets.tokenize_lm(models.load_tokenizer(str(tokenizer_dir)), texts, max_length)
    return {k: torch.as_tensor(v) for k, v in tokens.items()}


@pytest.mark.parametrize(("teacher_rows", "student_rows"), [("15608", "15616"), ("15616", "15608")])
def test_padded_vocabularies_distil_over_the_shared_token_range(padded_llamas, teacher_rows, student_rows):
    """Online and cached: the loss is the one over the tokenizer's 31 ids, whatever each model's padding."""
    import torch
    from kubedistill_jobs import losses
    from kubedistill_jobs.teacher_outputs import TeacherPredictor, TeacherRun
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(padded_llamas[teacher_rows]).eval()
    student = AutoModelForCausalLM.from_pretrained(padded_llamas[student_rows])
    batch = _lm_batch(padded_llamas[teacher_rows], ["the movie was very good", "a bad day", "warm sad food"])
    vocab = 31
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, losses.IGNORE_INDEX)
    with torch.no_grad():
        s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab]
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab]

    online = dict(task="causal-lm", teacher_mode="online", temperature=2.0, alpha=0.7, vocab_size=vocab,
                  loss="forward-kl", hidden_states=False)
    with torch.no_grad():
        got = _loss_step(online, student, teacher, batch)
    want = losses.distillation_loss(s_logits, t_logits, labels, temperature=2.0, alpha=0.7,
                                    mask=mask[:, 1:].bool()).total
    assert torch.isfinite(got) and torch.allclose(got, want, atol=1e-5)

    # cached: the teacher's top-k never names a padded row, and the student is normalised over the range
    run = TeacherRun(str(padded_llamas[teacher_rows]), "topk", max_length=10, top_k=8, vocab_size=vocab)
    top = TeacherPredictor(run)({"idx": np.arange(3), "input_ids": list(batch["input_ids"].numpy()),
                                 "attention_mask": list(batch["attention_mask"].numpy())})
    assert top["topk_indices"].max() < vocab
    cached = {**online, "teacher_mode": "cached"}
    with_topk = {**batch, "topk_values": torch.as_tensor(top["topk_values"]),
                 "topk_indices": torch.as_tensor(top["topk_indices"])}
    with torch.no_grad():
        got = _loss_step(cached, student, None, with_topk)
    want = losses.distillation_loss(s_logits, with_topk["topk_values"][:, :-1].float(), labels, temperature=2.0,
                                    alpha=0.7, teacher_topk_indices=with_topk["topk_indices"][:, :-1],
                                    mask=mask[:, 1:].bool()).total
    assert torch.isfinite(got) and torch.allclose(got, want, atol=1e-5)


def test_shared_vocab_logits_refuses_logits_narrower_than_the_tokenizer():
    import torch
    from kubedistill_jobs import losses

    assert losses.shared_vocab_logits(torch.zeros(2, 3, 40), 31).shape == (2, 3, 31)
    assert losses.shared_vocab_logits(torch.zeros(2, 5), None).shape == (2, 5)
    with pytest.raises(ValueError, match="width 20 do not cover the tokenizer's 31 tokens"):
        losses.shared_vocab_logits(torch.zeros(2, 3, 20), 31)


def test_plain_text_rows_end_with_the_end_of_sequence_token(tiny_models):
    from kubedistill_jobs import models, soft_targets

    tokenizer = models.load_tokenizer(str(tiny_models["llama"]))
    eos = tokenizer.eos_token_id
    texts = ["good day", "the movie was very good day", "bad day [EOS]", "sad"]
    out = soft_targets.tokenize_lm(tokenizer, texts, 6)
    ids, mask = out["input_ids"], out["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert lengths == [3, 6, 3, 2]
    assert ids[0, 2] == eos and ids[3, 1] == eos  # ended texts learn to stop
    assert eos not in ids[1][mask[1] == 1].tolist()  # cut at 6 tokens: it did not end there
    assert ids[2][mask[2] == 1].tolist().count(eos) == 1  # already ended: no second EOS


def test_a_completion_only_loss_counts_the_answer_tokens_alone(padded_llamas):
    """With completionOnlyLoss and `answer_start` in the batch (sequence-level answers), the loss is the one over
    the positions that predict answer tokens: whatever the prompt's targets, the same loss."""
    import torch
    from kubedistill_jobs import losses
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(padded_llamas["15608"])
    batch = _lm_batch(padded_llamas["15608"], ["the movie was very good", "a bad day was warm"])
    vocab, k = 31, 4
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    rng = torch.Generator().manual_seed(0)
    values = torch.randn(ids.shape[0], ids.shape[1], k, generator=rng)
    indices = torch.randint(0, vocab, (ids.shape[0], ids.shape[1], k), generator=rng)
    starts = torch.tensor([3, 2])  # each row's first answer token
    cached = dict(task="causal-lm", teacher_mode="cached", temperature=1.0, alpha=0.5, vocab_size=vocab,
                  loss="forward-kl", hidden_states=False, completion_only=True)
    answer_only = {**batch, "topk_values": values, "topk_indices": indices, "answer_start": starts}
    with torch.no_grad():
        got = _loss_step(cached, student, None, answer_only)
        s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab]
    positions = torch.arange(ids.shape[1] - 1)[None, :] >= (starts[:, None] - 1)
    labels = ids[:, 1:].masked_fill((mask[:, 1:] == 0) | ~positions, losses.IGNORE_INDEX)
    want = losses.distillation_loss(s_logits, values[:, :-1], labels, temperature=1.0, alpha=0.5,
                                    teacher_topk_indices=indices[:, :-1], mask=mask[:, 1:].bool() & positions).total
    assert torch.allclose(got, want, atol=1e-5)
    prompt_changed = {**answer_only, "topk_values": values.clone(), "input_ids": batch["input_ids"]}
    prompt_changed["topk_values"][0, :2] += 5.0  # the targets of the positions before row 0's answer
    with torch.no_grad():
        assert torch.allclose(_loss_step(cached, student, None, prompt_changed), got, atol=1e-6)
        whole = _loss_step(cached, student, None, {k: v for k, v in answer_only.items() if k != "answer_start"})
        prompt_too = _loss_step({**cached, "completion_only": False}, student, None, answer_only)
    assert not torch.allclose(whole, got)  # without answer_start the prompt counts
    assert torch.allclose(prompt_too, whole, atol=1e-6)  # and so it does with completionOnlyLoss false


def test_logits_of_positions_no_row_counts_are_not_computed_and_nothing_changes(padded_llamas, monkeypatch):
    """A completion-only batch asks the student for the logits from the first counted position on
    (`logits_to_keep`); the loss and every gradient are those of the whole sequence's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(padded_llamas["15608"])
    batch = _lm_batch(padded_llamas["15608"], ["the movie was very good", "a bad day was warm"])
    ids = batch["input_ids"]
    rng = torch.Generator().manual_seed(1)
    batch = {**batch, "topk_values": torch.randn(*ids.shape, 4, generator=rng),
             "topk_indices": torch.randint(0, 31, (*ids.shape, 4), generator=rng), "answer_start": torch.tensor([5, 4])}
    asked: list[int] = []
    forward = type(student).forward

    def recording(self, *args, **kwargs):
        asked.append(kwargs.get("logits_to_keep", 0))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(student), "forward", recording)
    results = []
    for keeps in (True, False):
        recipe = DistillationRecipe(_loop(task="causal-lm", teacher_mode="cached", temperature=2.0, alpha=0.5,
                                          vocab_size=31, loss="forward-kl", hidden_states=False,
                                          completion_only=True),
                                    rank=0, world=1, device="cpu")
        recipe.model, recipe.teacher, recipe.projection, recipe.keeps_logits = student, None, None, keeps
        student.zero_grad()
        loss = recipe.loss_step(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in student.parameters()]))
    assert asked == [ids.shape[1] - 3, 0]  # row 1's answer starts at token 4: position 3 predicts it
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for cut, whole in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(cut, whole, atol=1e-6)


def test_a_prompt_token_share_computes_the_drawn_positions_alone_and_their_loss_is_unchanged(padded_llamas,
                                                                                             monkeypatch):
    """promptTokenShare 0.5: the student's logits are asked for half the positions before the batch's first
    answer token (drawn by seed and step) and every position from there; loss and gradients are those of the
    whole sequence's logits with every other prompt position masked out, each row's own (a row whose answer
    starts later keeps the prompt tokens between out)."""
    import math

    import torch
    from kubedistill_jobs import losses
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(padded_llamas["15608"])
    batch = _lm_batch(padded_llamas["15608"], ["the movie was very good and the day was warm",
                                               "a bad day was warm and the movie was good"], max_length=12)
    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    length = ids.shape[1]
    rng = torch.Generator().manual_seed(2)
    starts = torch.tensor([9, 8])  # row 1's answer starts at token 8: position 7 predicts it
    batch = {**batch, "topk_values": torch.log_softmax(torch.randn(*ids.shape, 4, generator=rng), -1) - 1.0,
             "topk_indices": torch.randint(0, 31, (*ids.shape, 4), generator=rng), "answer_start": starts}
    asked: list = []
    forward = type(student).forward

    def recording(self, *args, **kwargs):
        asked.append(kwargs.get("logits_to_keep", 0))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(student), "forward", recording)

    def step(share: float, at: int, keeps: bool = True):
        recipe = DistillationRecipe(_loop(task="causal-lm", teacher_mode="cached", temperature=1.0, alpha=0.5,
                                          vocab_size=31, loss="forward-kl", hidden_states=False,
                                          prompt_token_share=share, topk_logprobs=True),
                                    rank=0, world=1, device="cpu")
        recipe.model, recipe.teacher, recipe.projection, recipe.keeps_logits = student, None, None, keeps
        recipe.step = at
        student.zero_grad()
        loss = recipe.loss_step(batch)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    drawn_loss, drawn_grads = step(0.5, at=3)
    kept = asked[-1]
    assert isinstance(kept, torch.Tensor)
    prompt = [int(p) for p in kept if p < 7]
    assert len(prompt) == math.ceil(0.5 * 7) and prompt == sorted(set(prompt))
    assert [int(p) for p in kept if p >= 7] == list(range(7, length - 1))  # every answer position
    step(0.5, at=3)
    assert torch.equal(asked[-1], kept)  # the same step draws the same positions (every worker, a resume)
    later = []
    for at in range(4, 8):
        step(0.5, at=at)
        later.append(asked[-1])
    assert any(not torch.equal(drawn, kept) for drawn in later)  # and other steps other ones

    # the same loss from the whole sequence's logits, the positions not drawn masked out
    student.zero_grad()
    with torch.enable_grad():
        logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1, :31]
    drawn = torch.zeros(length - 1, dtype=torch.bool)
    drawn[kept[kept < 7]] = True
    answer = torch.arange(length - 1)[None, :] >= (starts[:, None] - 1)  # row 0's answer starts a token later
    counted = drawn[None, :] | answer  # (2, L-1): row 0's position 7 is its prompt, and counts only if drawn
    labels = ids[:, 1:].masked_fill((mask[:, 1:] == 0) | ~counted, losses.IGNORE_INDEX)
    want = losses.distillation_loss(logits, batch["topk_values"][:, :-1], labels, temperature=1.0, alpha=0.5,
                                    teacher_topk_indices=batch["topk_indices"][:, :-1],
                                    mask=mask[:, 1:].bool() & counted, teacher_topk_logprobs=True).total
    want.backward()
    assert torch.allclose(drawn_loss, want.detach(), atol=1e-6)
    for got, whole in zip(drawn_grads, [p.grad for p in student.parameters()], strict=True):
        assert torch.allclose(got, whole, atol=1e-6)

    # a model without logits_to_keep computes every position and the same draw counts: the same loss
    unkept_loss, unkept_grads = step(0.5, at=3, keeps=False)
    assert asked[-1] == 0
    assert torch.allclose(unkept_loss, drawn_loss, atol=1e-6)
    for got, drawn_grad in zip(unkept_grads, drawn_grads, strict=True):
        assert torch.allclose(got, drawn_grad, atol=1e-6)

    step(1.0, at=3)
    assert asked[-1] == 0  # a share of 1: every position, nothing drawn
