"""What the training workers receive: tokenised splits, cached teacher outputs and the initial student."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill_jobs import losses, models, soft_targets

# cross-tokenizer `uld`: the teacher's sorted probabilities per answer position, its answers' lengths in its own
# tokens, and where each answer starts in the student's (see kubedistill_jobs.cross_tokenizer)
ULD_KEYS = ("sorted_probs", "answer_tokens", "answer_start")


def classification_arrays(tokenizer: Any, rows: list[dict], max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length,
                        padding="max_length", return_tensors="np")
    labels = np.asarray([r.get("label", losses.IGNORE_INDEX) for r in rows], dtype=np.int64)
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.int8), "labels": labels}


def prompt_arrays(tokenizer: Any, rows: list[dict], max_length: int, max_new_tokens: int) -> dict[str, np.ndarray]:
    """What the student answers in on-policy batches: each row's `prompt` where it has one (rows a teacher
    answered), else its text, cut to leave `max_new_tokens` of `max_length` for the answer (at least one token
    of prompt). `prompt_ids`, `prompt_mask (N, max_length - max_new_tokens)`, right-padded."""
    room = max(1, max_length - max_new_tokens)
    encoded = tokenizer([r.get("prompt") or r["text"] for r in rows], truncation=True, max_length=room,
                        padding="max_length", return_tensors="np")
    return {"prompt_ids": encoded["input_ids"].astype(np.int32),
            "prompt_mask": encoded["attention_mask"].astype(np.int8)}


def train_arrays(spec: DistillationJobSpec, tokenizer: Any, rows: list[dict], cache: Path) -> dict[str, np.ndarray]:
    """Training split as arrays, with the cached teacher outputs aligned row by row (cached mode), and the
    prompts on-policy batches answer (`prompt_arrays`, when distillation.onPolicy > 0)."""
    arrays = _train_arrays(spec, tokenizer, rows, cache)
    if spec.distillation.on_policy > 0:
        arrays.update(prompt_arrays(tokenizer, rows, spec.task.max_length, spec.distillation.sampling.max_new_tokens))
    return arrays


def _train_arrays(spec: DistillationJobSpec, tokenizer: Any, rows: list[dict], cache: Path) -> dict[str, np.ndarray]:
    cached = spec.distillation.teacher_mode == "cached" and soft_targets.exists(cache)
    if spec.task.type == "sequence-classification":
        arrays = classification_arrays(tokenizer, rows, spec.task.max_length)
        if cached:
            stored, meta = soft_targets.read(cache)
            if meta["rows"] != len(rows):
                raise ValueError(f"soft targets cache holds {meta['rows']} rows, the training split {len(rows)}")
            arrays["logits"] = stored["logits"].astype(np.float32)
            if spec.distillation.hidden_states.enabled:
                arrays["features"] = stored["features"].astype(np.float32)
        return arrays
    if cached:
        stored, meta = soft_targets.read(cache)
        if meta.get("cross_tokenizer"):  # the teacher's answers, in the student's own tokens
            arrays = soft_targets.tokenize_lm(tokenizer, [r["text"] for r in rows], spec.task.max_length)
            if meta["rows"] != len(rows):
                raise ValueError(f"soft targets cache holds {meta['rows']} rows, the training split {len(rows)}")
            arrays.update({k: stored[k] for k in ULD_KEYS if k in stored})
            return arrays
        # the exact tokens the teacher saw (and, from a local teacher's answers, where each answer starts)
        keys = ("input_ids", "attention_mask", "topk_values", "topk_indices", "answer_start")
        return {k: stored[k] for k in keys if k in stored}
    return soft_targets.tokenize_lm(tokenizer, [r["text"] for r in rows], spec.task.max_length)


def eval_arrays(spec: DistillationJobSpec, tokenizer: Any, rows: list[dict]) -> dict[str, np.ndarray]:
    if spec.task.type == "sequence-classification":
        return classification_arrays(tokenizer, rows, spec.task.max_length)
    return soft_targets.tokenize_lm(tokenizer, [r["text"] for r in rows], spec.task.max_length)


CALIBRATION_ROWS = 64  # training rows whose activations rank the feed-forward channels of a derived student


def calibration_rows(spec: DistillationJobSpec, train_data: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The first training rows' tokens, when the student keeps only the teacher's most active feed-forward
    channels (student.fromTeacher.intermediateSize); else None."""
    derived = spec.student.from_teacher
    if derived is None or derived.intermediate_size is None:
        return None
    return {k: train_data[k][:CALIBRATION_ROWS] for k in ("input_ids", "attention_mask")}


@dataclass
class TrimmedVocabulary:
    """A student vocabulary trimmed to the training data's tokens (student.fromTeacher.vocabulary corpus)."""

    tokenizer: Any  # the student's own tokenizer
    kept: np.ndarray  # (V',) int64: the teacher id of each student id
    teacher_size: int
    candidates: int  # the teacher's cached top-k candidates at positions with a next token (no filler slots)
    dropped_candidates: int  # of those, tokens the student lacks (their mass is the loss's remaining bucket)
    positions_one_hot: int = 0  # positions none of whose candidates the student has: the next token, one-hot
    dropped_probability: float = 0.0  # the teacher's probability on those tokens, mean per position

    def record(self) -> dict[str, Any]:
        """train_report.json's `vocabulary`."""
        return {"method": "corpus", "teacher": self.teacher_size, "student": len(self.kept),
                "dropped_candidates": self.dropped_candidates,
                "dropped_candidate_share": round(self.dropped_candidates / max(self.candidates, 1), 6),
                "dropped_probability": round(self.dropped_probability, 6),
                "positions_one_hot": self.positions_one_hot}


def trim_vocabulary(teacher_tokenizer: Any, train_data: dict[str, np.ndarray], *, completion_only: bool = False
                    ) -> tuple[dict[str, np.ndarray], TrimmedVocabulary]:
    """The training arrays in the ids of a student vocabulary trimmed to the tokens they use (kubedistill_jobs
    .vocabulary): every token maps (the vocabulary is made from them), the teacher's top-k candidates the
    student lacks go to the loss's remaining-mass bucket. Padding takes the student's pad id.

    The record counts the positions the loss uses: with `completion_only` (and `answer_start (N,)` in the
    arrays) the answers' alone (with `promptTokenShare` below 1, every prompt position, of which each step
    draws a share); and only real candidates, not a one-hot's filler slots nor the one-hot itself (a position
    the teacher gave no distribution for: the next token at probability 1 alone)."""
    from kubedistill_jobs import vocabulary

    mask = train_data["attention_mask"].astype(bool)
    tokenizer, kept = vocabulary.trimmed_tokenizer(teacher_tokenizer, np.unique(train_data["input_ids"][mask]))
    vocab_map = vocabulary.vocabulary_map(tokenizer, teacher_tokenizer)
    assert vocab_map is not None  # trimmed: never the teacher's whole vocabulary with its ids
    ids = vocabulary.to_student_ids(train_data["input_ids"], vocab_map)
    if (ids[mask] < 0).any():  # the vocabulary is built from these very tokens
        raise vocabulary.VocabularyError("a training token is missing from the trimmed vocabulary")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = dict(train_data)
    out["input_ids"] = np.where(mask, ids, pad if pad is not None else 0).astype(train_data["input_ids"].dtype)
    dropped = candidates = uncovered = 0
    dropped_probability = 0.0
    if "topk_indices" in out:
        has_next = np.pad(mask[:, 1:], ((0, 0), (0, 1)))  # (N, L): positions with a next token
        counted = has_next.copy()
        if completion_only and "answer_start" in out:  # the loss leaves the prompt out: so does the record
            counted &= np.arange(mask.shape[1])[None, :] >= out["answer_start"].astype(np.int64)[:, None] - 1
        teacher_values = out["topk_values"].astype(np.float32)
        real = teacher_values > vocabulary.DROPPED_LOGPROB / 2  # not a one-hot's filler
        one_hot = (real.sum(-1) == 1) & (teacher_values.max(-1) == 0)  # the next token at probability 1, alone
        real &= (counted & ~one_hot)[..., None]  # nor the one-hot itself: no candidates to drop
        values, indices, lacking = vocabulary.map_topk(out["topk_values"], out["topk_indices"], vocab_map)
        lost = lacking & real
        dropped, candidates = int(lost.sum()), int(real.sum())
        # log-probabilities (a cache of raw logits, from before they were cached so, would read above 1)
        probability = np.exp(np.minimum(teacher_values, 0.0))
        scored = real.any(-1)  # positions with a teacher distribution
        dropped_probability = float((probability * lost).sum(-1)[scored].mean()) if scored.any() else 0.0
        # A position none of whose candidates the student has: a one-hot on the token that follows instead (it is
        # always kept), as the prompt's positions are, rather than a distribution with nothing in it.
        none_kept = lacking.all(-1) & has_next
        following = np.pad(out["input_ids"][:, 1:], ((0, 0), (0, 1)))
        indices[none_kept] = following[none_kept][:, None]
        values[none_kept] = np.asarray(vocabulary.DROPPED_LOGPROB, dtype=values.dtype)
        values[none_kept, 0] = 0
        out["topk_values"], out["topk_indices"] = values, indices
        uncovered = int(none_kept.sum())
    return out, TrimmedVocabulary(tokenizer=tokenizer, kept=kept, teacher_size=len(teacher_tokenizer),
                                  candidates=candidates, dropped_candidates=dropped, positions_one_hot=uncovered,
                                  dropped_probability=dropped_probability)


def student_init(spec: DistillationJobSpec, teacher: Any, download_dir: Path,
                 calibration: dict[str, np.ndarray] | None = None,
                 kept_tokens: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """The untrained student, and what workers rebuild it from (config + weights + hidden sizes); with
    `kept_tokens` (a trimmed vocabulary's teacher ids), only those embedding rows."""
    student = models.build_student(spec, teacher, download_dir=download_dir, calibration=calibration)
    if kept_tokens is not None:
        from kubedistill_jobs.vocabulary import trim_embeddings

        trim_embeddings(student, kept_tokens)
    return student, {
        "config": student.config,
        "state": {k: v.detach().clone() for k, v in student.state_dict().items()},
        "student_hidden": student.config.hidden_size,
        "teacher_hidden": teacher.config.hidden_size if teacher is not None else student.config.hidden_size,
    }
