"""Sequence-level KD from a local teacher (distillation.sequenceLevel): the teacher answers the training
prompts, its answers and token-level top-k log-probabilities are cached and recorded, the student trains on
them. Tiny Llamas from configs, through the pipeline's data, teacher, soft-targets and train stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubedistill_jobs.pipeline import Pipeline
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import OutputLayout

from .conftest import FILLER, NEGATIVE, POSITIVE, job_manifest, write_jsonl
from .test_pipeline import Recorder


@pytest.mark.slow
def test_the_student_learns_the_local_teachers_sampled_answers(ray_local, tmp_path, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = np.random.default_rng(0)
    words = POSITIVE + NEGATIVE + FILLER
    rows = [{"title": " ".join(rng.choice(words, 2)), "body": " ".join(rng.choice(words, 6))} for _ in range(40)]
    data = write_jsonl(rows, tmp_path / "articles.jsonl")
    manifest = job_manifest(
        tmp_path, tiny_models["llama"], data,
        task={"type": "causal-lm", "maxLength": 24, "prompt": {"user": "{text} the"}},
        teacher={"adapt": {"method": "none"}},
        dataset={"labelField": None, "textField": "body", "referenceField": "title"},
        distillation={"topK": 4, "temperature": 1.0, "sequenceLevel": {"n": 2, "temperature": 1.0,
                                                                       "maxNewTokens": 5}},
        training={"maxSteps": 3, "epochs": None, "batchSize": 8},
        compression={"quantization": "none"},
        evaluation={"metrics": ["rouge_l", "perplexity"], "gate": {"minRetention": None}},
    )
    del manifest["spec"]["task"]["labels"]
    job = DistillationJob.model_validate(manifest)
    result = Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=Recorder()).run(
        stop_after="train")
    layout = OutputLayout(tmp_path / "out")

    prompts = [json.loads(line) for line in (layout.data / "train.jsonl").read_text().splitlines()]
    assert all(p["text"].endswith("\nAssistant:") and "reference" in p for p in prompts)
    marker = result.stages["soft-targets"]
    assert marker["prompts"] == len(prompts) == 30 and marker["rows"] == 60 and marker["k"] == 4
    generated = [json.loads(line) for line in (layout.data / "train_generated.jsonl").read_text().splitlines()]
    assert [g["prompt"] for g in generated] == [p["text"] for p in prompts for _ in range(2)]
    assert all(g["text"].startswith(g["prompt"]) and len(g["text"]) > len(g["prompt"]) for g in generated)
    meta = json.loads((layout.teacher_outputs / "meta.json").read_text())
    assert meta["kind"] == "answers" and meta["rows"] == 60
    assert not layout.answers_journal.exists()  # cached and recorded: the journal of answers is gone
    assert meta["sampling"] == {"method": "sampled", "n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 5}

    # the cache holds the teacher's own top-k log-probabilities on each answer token, and on each prompt token
    # (from the prefill generation continued from, the prompts left-padded in their batch)
    ids, mask, values, indices = (np.load(layout.soft_targets / f"{name}.npy") for name in
                                  ("input_ids", "attention_mask", "topk_values", "topk_indices"))
    answer_start = np.load(layout.soft_targets / "answer_start.npy")
    assert answer_start.shape == (60,)
    teacher = AutoModelForCausalLM.from_pretrained(layout.teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(layout.teacher)
    for row in (0, 1, 17):
        n, p = int(mask[row].sum()), len(tokenizer(generated[row]["prompt"])["input_ids"])
        assert n > p and ids[row, :p].tolist() == tokenizer(generated[row]["prompt"])["input_ids"]
        with torch.no_grad():
            logits = teacher(torch.as_tensor(ids[row:row + 1, :n], dtype=torch.long)).logits[0, :, :len(tokenizer)]
        logprobs = torch.log_softmax(logits, dim=-1)
        for t in range(n - 1):  # position t's target is token t + 1, of the prompt or the answer
            top = logprobs[t].topk(4)
            assert indices[row, t].tolist() == top.indices.tolist(), (row, t)
            assert np.allclose(values[row, t].astype(np.float32), top.values.numpy(), atol=2e-2)
        assert answer_start[row] == p  # completion-only loss (the default): the loss starts at the answer
    assert (ids[0] != ids[1]).any() or (ids[2] != ids[3]).any()  # two sampled answers per prompt differ somewhere
    assert result.stages["train"]["steps"] == 3



@pytest.mark.slow
@pytest.mark.parametrize(("rows", "batch_size"), [(990, 32), (3000, 32), (70, 16), (5, 32)])
def test_the_teachers_batches_are_whole_not_a_row_left_over_per_block(ray_local, rows, batch_size):
    """A generating teacher pays a whole batch's decoding steps for a batch of one row: every batch holds at
    most batch_size rows and the batches differ by a row at most, so none is a sliver."""
    from kubedistill_jobs.teacher_outputs import map_rows

    class BatchSizes:  # defined here so that Ray ships it by value to its actor
        """Answers each row with the size of the batch it came in."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"idx": batch["idx"], "row": batch["idx"], "size": np.full(len(batch["idx"]), len(batch["idx"]))}

    out = map_rows(BatchSizes, {}, {"text": [str(i) for i in range(rows)]}, batch_size=batch_size, actors=1,
                   resources={"num_cpus": 1})
    assert out["row"].tolist() == list(range(rows))  # every row, in order
    sizes = out["size"]
    assert sizes.max() <= batch_size and sizes.max() - sizes.min() <= 1  # 990 rows: 31 or 32 a batch, never 1


def test_with_gpus_ray_is_given_a_batch_size_no_larger_than_asked():
    """Ray refuses map_batches without a batch size when GPUs are requested: the largest block's."""
    from kubedistill_jobs.teacher_outputs import block_plan

    assert block_plan(990, 32, gpus=False) == (31, None)
    assert block_plan(990, 32, gpus=True) == (31, 32)
    assert block_plan(70, 16, gpus=True) == (5, 14)
    assert block_plan(5, 32, gpus=True) == (1, 5)


@pytest.mark.parametrize(("family", "n"), [("llama", 1), ("llama", 2), ("gpt2", 1)])
def test_answers_and_prompt_targets_in_a_padded_batch_are_those_of_each_prompt_alone(tiny_models, tmp_path, family,
                                                                                      n, monkeypatch):
    """Prompts of different lengths, left-padded into one batch: the prefill that gives the prompts' soft targets
    and the generation that continues from its cache give each prompt the answer and the top-k it gets alone
    (positions counted from each row's first real token, which GPT-2's learned positions show; n answers per
    prompt from one cache per prompt)."""
    import torch
    from kubedistill_jobs import local_answers
    from kubedistill_jobs.local_answers import AnswerPredictor, AnswerSettings
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    if family == "gpt2":
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                           bos_token_id=tokenizer.cls_token_id))
        with torch.no_grad():
            model.transformer.wpe.weight.mul_(40.0)
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with torch.no_grad():  # peaked distributions, so that the top-k order is not decided by float noise
        model.get_input_embeddings().weight.mul_(40.0)
    model.eval().save_pretrained(tmp_path / "teacher")  # eval: GPT-2's dropout off for the comparison below
    tokenizer.save_pretrained(tmp_path / "teacher")
    settings = AnswerSettings(source=str(tmp_path / "teacher"), max_length=20, top_k=3, vocab_size=len(tokenizer),
                              n=n, temperature=1.0 if n > 1 else 0.0, max_new_tokens=4)
    predictor = AnswerPredictor(settings)
    prompts = ["the movie was", "a very warm day is quite lovely and the food", "bad"]
    together = predictor({"text": np.array(prompts, dtype=object), "idx": np.arange(3)})
    assert len(together["input_ids"]) == 3 * n
    for i, prompt in enumerate(prompts):
        alone = predictor({"text": np.array([prompt], dtype=object), "idx": np.array([0])})
        p = int(together["prompt_tokens"][i * n])
        for copy in range(n):
            row = i * n + copy
            assert together["prompt_tokens"][row] == alone["prompt_tokens"][copy] == p
            # the prompt's positions (all of them) always; the answer's when greedy (sampling draws differ)
            upto = p - 1 if n > 1 else int(together["attention_mask"][row].sum()) - 1
            if n == 1:
                assert together["input_ids"][row].tolist() == alone["input_ids"][copy].tolist(), prompt
            assert together["topk_indices"][row, :upto].tolist() == alone["topk_indices"][copy, :upto].tolist()
            assert np.allclose(together["topk_values"][row, :upto].astype(np.float32),
                               alone["topk_values"][copy, :upto].astype(np.float32), atol=2e-2)
        assert (together["topk_values"][i * n, :p - 1, 1:] > -1000).all()  # soft targets, not one-hot
    # and each row's top-k at every position is the model's own over the row's tokens, in one plain forward pass
    for row in range(3 * n):
        length = int(together["attention_mask"][row].sum())
        with torch.no_grad():
            logits = model(torch.as_tensor(together["input_ids"][row:row + 1, :length], dtype=torch.long)).logits[0]
        top = torch.log_softmax(logits[:length - 1, :len(tokenizer)], dim=-1).topk(3)
        # the best candidate, and the values in order (near-ties below the first may swap their ids)
        assert together["topk_indices"][row, :length - 1, 0].tolist() == top.indices[:, 0].tolist(), row
        assert np.allclose(together["topk_values"][row, :length - 1].astype(np.float32), top.values.numpy(),
                           atol=2e-2)
    # prompts answered in parts (a prefill's logits over the memory budget) are answered the same
    monkeypatch.setattr(local_answers, "PREFILL_LOGITS_BYTES", 1)
    parts = predictor({"text": np.array(prompts, dtype=object), "idx": np.arange(3)})
    assert parts["prompt_tokens"].tolist() == together["prompt_tokens"].tolist()
    if n == 1:
        assert parts["input_ids"].tolist() == together["input_ids"].tolist()
        assert parts["topk_indices"].tolist() == together["topk_indices"].tolist()
