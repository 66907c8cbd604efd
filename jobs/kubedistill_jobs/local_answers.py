"""Sequence-level KD from a local teacher (`distillation.sequenceLevel`): the teacher (its fp32 copy in
`teacher/`) answers every training prompt once, greedily or sampled, `n` answers per prompt, through Ray Data.

Each answer becomes one training row of the cache the endpoint teachers write (endpoint_teacher.place_row):
the prompt's tokens, then the answer's, each position with the teacher's top-k log-probabilities for the next
token (log-softmax over its whole vocabulary at temperature 1). The answer's come from the same forward pass
that chose each token; the prompt's from the prefill that generation runs anyway (word-level KD on the prompt
text, Kim & Rush 2016), so they cost no extra pass: with completionOnlyLoss false they teach more than the
one-hot targets an endpoint teacher's prompts get. An answer ends with the end-of-sequence token when the
teacher stopped, so the student learns to stop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill_jobs.endpoint_teacher import place_row

Progress = Callable[[int, int], None]
# The most memory the prefill's logits (prompts × tokens × vocabulary, as float32) may take at once: a batch of
# long prompts over a large vocabulary is answered in parts (SmolLM2's 32 × 96 × 49,152 fit in one).
PREFILL_LOGITS_BYTES = 1 << 30


@dataclass(frozen=True)
class AnswerSettings:
    """What the actors need: the teacher's folder, the cache's shape and the sampling settings."""

    source: str
    max_length: int
    top_k: int
    vocab_size: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    mixed_precision: str = "auto"  # training.mixedPrecision, which the teacher's answers follow too

    @classmethod
    def from_spec(cls, spec: DistillationJobSpec, source: str, vocab_size: int) -> AnswerSettings:
        sampling = spec.distillation.sequence_level
        assert sampling is not None
        return cls(source=source, max_length=spec.task.max_length, top_k=spec.distillation.top_k,
                   vocab_size=vocab_size, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                   max_new_tokens=sampling.max_new_tokens, seed=spec.training.seed,
                   mixed_precision=spec.training.mixed_precision)

    def sampling(self) -> dict[str, Any]:
        """The settings as recorded in teacher_outputs/meta.json."""
        return {"method": "sampled" if self.temperature > 0 else "greedy", "n": self.n,
                "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


class AnswerPredictor:
    """A Ray Data callable class: loads the teacher once per actor, answers a batch of prompts."""

    def __init__(self, settings: AnswerSettings) -> None:
        from pathlib import Path

        import torch

        from kubedistill_jobs import models

        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the actor's GPU, if given one
        self.model = models.load_saved_model(Path(settings.source), "causal-lm").to(self.device).eval()
        self.tokenizer = models.load_tokenizer(settings.source)
        self.tokenizer.padding_side = "left"  # generation continues every prompt from its last token
        self.takes_positions = models.takes_argument(self.model, "position_ids")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        cfg, tokenizer = self.settings, self.tokenizer
        prompts = [str(t) for t in batch["text"]]
        prompt_ids = [tokenizer(p, truncation=True, max_length=cfg.max_length - 1)["input_ids"] for p in prompts]
        torch.manual_seed(cfg.seed + int(batch["idx"][0]))  # sampled answers are the same on a rerun
        rows: list[dict[str, Any]] = []
        # The prefill's logits are (rows, prompt tokens, vocabulary): as many rows at once as fit the budget.
        per_row = max(len(ids) for ids in prompt_ids) * cfg.vocab_size * 4
        size = max(1, PREFILL_LOGITS_BYTES // per_row)
        for start in range(0, len(prompts), size):
            rows += self.answer(prompts[start:start + size], prompt_ids[start:start + size])
        return {"idx": np.repeat(batch["idx"], cfg.n),
                **{key: np.stack([row[key] for row in rows]) for key in rows[0] if key not in ("text", "answer")},
                "text": np.asarray([row["text"] for row in rows], dtype=object),
                "answer": np.asarray([row["answer"] for row in rows], dtype=object)}

    def answer(self, prompts: list[str], prompt_ids: list[list[int]]) -> list[dict[str, Any]]:
        """One cache row per answer, `n` per prompt in order, the prompts left-padded into one batch."""
        import torch

        from kubedistill_jobs.precision import autocast

        cfg, tokenizer = self.settings, self.tokenizer
        width = max(len(ids) for ids in prompt_ids)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.device)
        room = min(cfg.max_new_tokens, cfg.max_length - width)
        sampled = cfg.temperature > 0
        with torch.inference_mode(), autocast(self.device, cfg.mixed_precision)[0]:
            prompt_top, cache = self.prefill(ids, mask)
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=room, do_sample=sampled,
                temperature=cfg.temperature if sampled else None, top_p=cfg.top_p if sampled else None, top_k=None,
                num_return_sequences=cfg.n, output_logits=True, return_dict_in_generate=True,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, past_key_values=cache,
            )
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float()[..., :cfg.vocab_size], dim=-1)
        values, indices = (part.cpu() for part in logprobs.topk(cfg.top_k, dim=-1))  # (B·n, T, k)
        sequences = out.sequences.cpu()
        rows: list[dict[str, Any]] = []
        for r in range(len(prompts) * cfg.n):
            prompt = prompt_ids[r // cfg.n]
            answer = [int(t) for t in sequences[r, width:]]
            if tokenizer.eos_token_id in answer:  # keep the end-of-sequence token, drop the padding after it
                answer = answer[:answer.index(tokenizer.eos_token_id) + 1]
            answer = answer[:cfg.max_length - len(prompt)]
            dists = [list(zip(indices[r, t].tolist(), values[r, t].tolist(), strict=True)) for t in range(len(answer))]
            input_ids, attention, topk_values, topk_indices = place_row(
                prompt, answer, dists, pad, cfg.max_length, cfg.top_k,
                prompt_dists=prompt_top[r // cfg.n] if prompt_top is not None else None)
            rows.append({"input_ids": input_ids, "attention_mask": attention, "topk_values": topk_values,
                         "topk_indices": topk_indices, "generated": len(answer), "prompt_tokens": len(prompt),
                         "text": prompts[r // cfg.n] + tokenizer.decode(answer),
                         "answer": tokenizer.decode(answer, skip_special_tokens=True).strip()})
        return rows

    def prefill(self, ids: Any, mask: Any) -> tuple[list[list[list[tuple[int, float]]]] | None, Any]:
        """The teacher's top-k next-token log-probabilities at each prompt's positions (per prompt, position t
        predicting prompt token t + 1, best first) and the key-value cache of every prompt token but the last,
        which `generate` continues from: one pass gives both. Left-padded `ids`, `mask (B, W)`; (None, None) for
        one-token prompts. Positions are numbered as generate numbers them (from each row's first real token,
        for a model that takes position ids). The cache is None, and generate runs its own prefill, where
        reusing it is not safe: a cache other than transformers' DynamicCache (legacy tuples), recurrent layers
        (generate would feed the prompt again), or a generation config that asks for its own cache."""
        import torch
        from transformers import DynamicCache

        cfg = self.settings
        width = ids.shape[1]
        if width < 2:
            return None, None
        numbered = {}
        if self.takes_positions:
            numbered["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, :-1]
        out = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **numbered)
        lengths = mask.sum(-1).tolist()
        prompt_top = []
        for row, length in enumerate(lengths):  # the float32 log-softmax a row at a time
            first = width - int(length)
            logprobs = torch.log_softmax(out.logits[row, first:].float()[..., :cfg.vocab_size], dim=-1)
            values, indices = (part.cpu() for part in logprobs.topk(cfg.top_k, dim=-1))
            prompt_top.append([list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(indices, values,
                                                                                              strict=True)])
        cache = out.past_key_values
        del out
        if (not isinstance(cache, DynamicCache) or any(getattr(cache, "is_linear", None) or ())
                or getattr(self.model.generation_config, "cache_implementation", None)):
            return prompt_top, None
        if cfg.n > 1:  # generate asks for n answers per prompt: each prompt's cache n times, in row order
            cache.batch_repeat_interleave(cfg.n)
        return prompt_top, cache


def run_answers(settings: AnswerSettings, prompts: list[str], *, progress: Progress | None = None,
                batch_size: int = 32, journal: Path | None = None) -> dict[str, np.ndarray]:
    """The cache arrays for every answer (`n` per prompt, prompt by prompt, in the prompts' order), with the
    rows' `text` (prompt + answer), `answer`, `generated` and `prompt_tokens`. Batches of 32 prompts: on a CPU
    each decoding step costs little more for 32 rows than for 8 (86 against 51 tokens/s for SmolLM2-135M).
    `journal`: a folder that keeps the answered batches, so that a rerun answers only the prompts left."""
    from kubedistill_jobs.batch_journal import BatchJournal, fingerprint
    from kubedistill_jobs.teacher_outputs import actor_resources, map_rows

    actors, resources = actor_resources()
    per_prompt = (lambda done, total: progress(done // settings.n, total // settings.n)) if progress else None
    rows = {"text": prompts}
    # not the teacher's folder: an output folder moved elsewhere resumes (its spec fixes the teacher)
    key = fingerprint(repr(dataclasses.replace(settings, source="")), rows)
    return map_rows(AnswerPredictor, {"settings": settings}, rows, batch_size=batch_size, actors=actors,
                    resources=resources, progress=per_prompt, journal=None if journal is None else
                    BatchJournal(journal, key), per_row=settings.n)
