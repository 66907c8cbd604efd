"""A causal-LM teacher and student that do not share a tokenizer: which method still works, decided before any
compute, and the teacher's answers it trains on.

Logit KD compares distributions over one vocabulary, so it cannot work across tokenizers. What can:
- `sequence-kd` (Kim & Rush, 2016): the teacher answers the training prompts greedily; its answers, as text,
  are the student's training texts, learnt with hard tokens in the student's own tokenizer.
- `uld` (Universal Logit Distillation, Boizard et al., 2024): the same answers, plus, at each answer position,
  the L1 distance between the teacher's and the student's token distributions sorted by probability (which
  needs no shared vocabulary), aligned by position in the answer (`losses.uld_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.errors import InputError

PROBE = "Knowledge distillation, 42 times: the student's tokens."
Progress = Callable[[int, int], None]


def tokenizes_alike(student: Any, teacher: Any) -> bool:
    """Same vocabulary (token → id) and the same ids for a probe text."""
    return bool(student.get_vocab() == teacher.get_vocab() and student(PROBE)["input_ids"] == teacher(PROBE)
                ["input_ids"])


def choose_method(spec: DistillationJobSpec, found: dict[str, Any]) -> str | None:
    """None when logit KD works (a shared tokenizer, or no causal-lm student with a tokenizer of its own);
    else `distillation.crossTokenizer`, once the spec is checked to allow it. Raises InputError naming the field
    of a setting that needs the teacher to read the student's tokens."""
    if spec.task.type != "causal-lm" or "student_tokenizer" not in found or "teacher_tokenizer" not in found:
        return None
    if tokenizes_alike(found["student_tokenizer"], found["teacher_tokenizer"]):
        return None
    d = spec.distillation
    why = ("student.uri tokenizes differently from the teacher, so the job distils through the teacher's answers "
           f"(distillation.crossTokenizer {d.cross_tokenizer})")
    if d.on_policy > 0:
        raise InputError(f"distillation.onPolicy: the teacher scores the student's own samples token by token, "
                         f"which needs a shared tokenizer; {why}: set onPolicy 0, or a student of the teacher's "
                         "family")
    if d.teacher_mode != "cached":
        raise InputError(f"distillation.teacherMode: online runs the teacher on the student's tokens; {why}, which "
                         "the teacher produces once: use teacherMode cached")
    if d.hidden_states.enabled:
        raise InputError(f"distillation.hiddenStates.enabled: token-level hidden states need the same tokens on "
                         f"both sides; {why}: disable hiddenStates")
    if spec.compression.pruning.method != "none":
        raise InputError(f"compression.pruning.method: pruning's recovery distillation compares the teacher's "
                         f"logits with the student's; {why}: use method none")
    return d.cross_tokenizer


def describe(method: str, teacher_vocab: int, student_vocab: int) -> str:
    """One sentence for the log, the stage summary and the report."""
    how = ("the student learns the teacher's greedy answers as text (sequence-level KD, hard tokens)"
           if method == "sequence-kd" else
           "the student learns the teacher's greedy answers as text and the teacher's sorted token distributions "
           "at each answer position (Universal Logit Distillation)")
    return (f"teacher and student tokenizers differ ({teacher_vocab} vs {student_vocab} tokens): logit KD needs a "
            f"shared vocabulary, so {how}")


def teacher_answers(model: Any, tokenizer: Any, prompts: list[str], *, max_length: int, max_new_tokens: int,
                    top_k: int | None = None, temperature: float = 1.0, batch_size: int = 8,
                    progress: Progress | None = None) -> dict[str, Any]:
    """The teacher's greedy answers to `prompts`, each prompt cut to leave room for the answer in `max_length`
    teacher tokens (at most `max_new_tokens` of them).

    Returns `prompt` (the prompt text as the teacher read it) and `answer` (its answer's text), one per prompt;
    with `top_k`, also `sorted_probs (N, A, top_k)` float16 (the teacher's `top_k` largest token probabilities
    at `temperature` at each of its answer positions, in decreasing order, zero past an answer's end) and
    `answer_tokens (N,)` int32 (the answer's length in teacher tokens, its end-of-sequence token included)."""
    import torch

    from kubedistill_jobs import sampling

    device = next(model.parameters()).device
    room = max(1, max_length - max_new_tokens)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: dict[str, Any] = {"prompt": [], "answer": []}
    probs_rows: list[np.ndarray] = []
    lengths: list[int] = []
    config = sampling.generation_config(max_new_tokens, 0.0, eos, pad)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        encoded = tokenizer(chunk, truncation=True, max_length=room, padding="max_length", return_tensors="pt")
        ids, mask = sampling.left_pad(encoded["input_ids"], encoded["attention_mask"],
                                      pad if pad is not None else 0)
        with torch.inference_mode():
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config, output_scores=top_k is not None,
                                       return_dict_in_generate=True)
        answers = generated.sequences[:, ids.shape[1]:].cpu()
        kept = sampling.answer_lengths(answers, eos)
        for row in range(len(chunk)):
            n = int(mask[row].sum())
            prompt_ids = ids[row, ids.shape[1] - n:].tolist()
            prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
            # decoded together: a tokenizer that joins words with spaces (or marks them, as SentencePiece
            # does) writes the space between prompt and answer only when it sees both
            answer = answers[row, :int(kept[row])].tolist()
            whole = tokenizer.decode(prompt_ids + answer, skip_special_tokens=True)
            out["prompt"].append(prompt)
            out["answer"].append(whole[len(prompt):] if whole.startswith(prompt) else
                                 tokenizer.decode(answer, skip_special_tokens=True))
        if top_k is not None:  # generated.scores: G tensors (B, V), the logits each answer token was chosen from
            logits = torch.stack(generated.scores, 1).float().cpu()[..., :len(tokenizer)]  # (B, G, V)
            probs = torch.softmax(logits / temperature, -1).topk(min(top_k, logits.shape[-1]), -1).values
            steps = torch.arange(probs.shape[1])
            probs = probs * (steps[None, :] < kept[:, None]).unsqueeze(-1)  # nothing past the answer's end
            probs_rows.extend(probs.half().numpy())
            lengths.extend(int(k) for k in kept)
        if progress:
            progress(min(len(prompts), start + batch_size), len(prompts))
    if top_k is not None:
        width = max((p.shape[0] for p in probs_rows), default=1)
        k = max((p.shape[1] for p in probs_rows), default=top_k)
        stacked = np.zeros((len(probs_rows), width, k), dtype=np.float16)
        for i, p in enumerate(probs_rows):
            stacked[i, :p.shape[0], :p.shape[1]] = p
        out["sorted_probs"], out["answer_tokens"] = stacked, np.asarray(lengths, dtype=np.int32)
    return out


def answer_starts(tokenizer: Any, prompts: list[str], max_length: int) -> np.ndarray:
    """Where each answer starts in the student's tokens of prompt + answer: the length of the prompt's own
    tokens (special tokens included, as `soft_targets.tokenize_lm` adds them), at most `max_length`. `(N,)`"""
    encoded = tokenizer(prompts, truncation=True, max_length=max_length)
    return np.asarray([len(ids) for ids in encoded["input_ids"]], dtype=np.int32)
