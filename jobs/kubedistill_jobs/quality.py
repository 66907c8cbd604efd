"""The quality half of the gap evaluation: each model's metrics on the held-out split, and what they give
(retention, agreement, the routing frontiers).

Classification: accuracy and macro-F1 against gold labels where present, agreement with the teacher's argmax,
mean KL(teacher ‖ student). Causal LM: perplexity and next-token accuracy, token by token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kubedistill.confidence import SIGNALS, confidence, softmax
from kubedistill_jobs.routing import Frontier, frontier, frontier_from_confidence

EVAL_BATCH = 32
MODELS = ("teacher", "student", "student_quantized")


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def mean_kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Mean over rows of KL(teacher ‖ student) at temperature 1."""
    p = softmax(teacher_logits)
    log_p = np.log(np.clip(p, 1e-30, None))
    log_q = np.log(np.clip(softmax(student_logits), 1e-30, None))
    return float((p * (log_p - log_q)).sum(axis=-1).mean())


def classification_metrics(logits: np.ndarray, gold: np.ndarray | None, num_classes: int,
                           teacher_logits: np.ndarray | None) -> dict[str, float]:
    pred = logits.argmax(-1)
    out: dict[str, float] = {}
    if gold is not None:
        out["accuracy"] = float((pred == gold).mean())
        out["macro_f1"] = macro_f1(pred, gold, num_classes)
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(-1)).mean())
        out["kl"] = mean_kl(teacher_logits, logits)
    return out


def batches(tokenizer: Any, texts: list[str], max_length: int, size: int) -> Iterator[dict[str, np.ndarray]]:
    """`texts` tokenised `size` at a time, padded to the longest in each batch: the graphs' int64 inputs."""
    from kubedistill_jobs.onnx_export import probe_inputs

    for start in range(0, len(texts), size):
        yield probe_inputs(tokenizer, max_length, tuple(texts[start:start + size]))


def classify(sess: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    from kubedistill_jobs.onnx_export import onnx_logits

    return np.concatenate([onnx_logits(sess, b) for b in batches(tokenizer, texts, max_length, EVAL_BATCH)])


@dataclass
class TokenStats:
    """Per-token statistics of a causal LM on held-out text (next-token prediction)."""

    nll_sum: float = 0.0
    tokens: int = 0
    correct: list[np.ndarray] = field(default_factory=list)
    conf: dict[str, list[np.ndarray]] = field(default_factory=lambda: {s: [] for s in SIGNALS})
    argmax: list[np.ndarray] = field(default_factory=list)
    scope: Literal["answers", "texts"] = "texts"  # Report.perplexity_scope

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / max(self.tokens, 1)))

    def metrics(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "next_token_accuracy": float(np.concatenate(self.correct).mean())}


def answers_fit(tokenizers: list[Any], prompts: list[str], answers: list[str], max_length: int) -> list[bool]:
    """Per row: whether its whole answer fits after its prompt in `max_length` tokens for every tokenizer, so that
    the models are scored on the same span (a model reading the prompt in more tokens would see less of it)."""
    def fits(tokenizer: Any, prompt: str, answer: str) -> bool:
        return len(tokenizer(prompt)["input_ids"]) + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) \
            <= max_length

    return [all(fits(t, p, a) for t in tokenizers) for p, a in zip(prompts, answers, strict=True)]


def answer_batches(tokenizer: Any, prompts: list[str], answers: list[str], max_length: int,
                   size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each prompt's tokens then its answer's (the prompt as `tokenizer` reads it, the answer without special
    tokens, at most `max_length` in all), `size` rows at a time, right-padded; with `(B, L-1)` bool: the
    positions that predict an answer token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(prompts), size):
        rows = []
        for prompt, answer in zip(prompts[start:start + size], answers[start:start + size], strict=True):
            prompt_ids = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
            ids = (prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"])[:max_length]
            rows.append((ids, len(prompt_ids)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        predicts = np.zeros((len(rows), max(width - 1, 0)), dtype=bool)
        for r, (ids, answer_start) in enumerate(rows):
            input_ids[r, :len(ids)], mask[r, :len(ids)] = ids, 1
            predicts[r, max(answer_start - 1, 0):len(ids) - 1] = True  # position t predicts token t + 1
        yield {"input_ids": input_ids, "attention_mask": mask}, predicts


def causal_stats(sess: Any, tokenizer: Any, texts: list[str], max_length: int,
                 answers: list[str] | None = None) -> TokenStats:
    """Next-token statistics over `texts`, every token after the first; with `answers` (each text's reference
    continuation: the text is then a prompt), over the answers' tokens alone, each given its prompt (none where
    the prompt fills `max_length`)."""
    from kubedistill_jobs.onnx_export import onnx_logits

    stats = TokenStats(scope="texts" if answers is None else "answers")
    if answers is None:  # (batch, seq, vocab) logits are large: 4 rows at a time
        scored = ((b, b["attention_mask"][:, 1:].astype(bool) & b["attention_mask"][:, :-1].astype(bool))
                  for b in batches(tokenizer, texts, max_length, 4))
    else:
        scored = answer_batches(tokenizer, texts, answers, max_length, 4)
    for b, mask in scored:
        logits = onnx_logits(sess, b)[:, :-1, :len(tokenizer)]  # a padded embedding's extra rows are no tokens
        target = b["input_ids"][:, 1:]
        logits = logits[mask]  # (tokens, vocab)
        target = target[mask]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        stats.nll_sum += float(-log_probs[np.arange(len(target)), target].sum())
        stats.tokens += len(target)
        stats.argmax.append(logits.argmax(-1))
        stats.correct.append(logits.argmax(-1) == target)
        probs = np.exp(log_probs)
        for s in SIGNALS:
            stats.conf[s].append(confidence(probs, s))
    return stats


@dataclass
class Quality:
    """What the quality half of the evaluation found, for either task."""

    metrics: dict[str, dict[str, float]]
    retention: float
    agreement: float | None
    frontiers: dict[str, Frontier]
    reference: str  # what quality is measured against (Report.quality_reference)
    labelled: bool | None = None
    quantization_accuracy_drop: float | None = None
    routing_note: str | None = None


def classification_quality(logits: dict[str, np.ndarray], gold: np.ndarray | None, num_labels: int,
                           target: float) -> Quality:
    """Metrics per model, retention of the quantized student and the frontier on its confidence.

    Without gold labels the teacher is the reference: quality is agreement with it (the teacher's own is 1).
    """
    teacher = logits["teacher"]
    metrics = {n: classification_metrics(logits[n], gold, num_labels, None if n == "teacher" else teacher)
               for n in MODELS}
    reference = gold if gold is not None else teacher.argmax(-1)
    student_ok = logits["student_quantized"].argmax(-1) == reference
    teacher_ok = teacher.argmax(-1) == reference
    probs = softmax(logits["student_quantized"])
    frontiers = {s: frontier(probs, student_ok, teacher_ok, signal=s, target=target) for s in SIGNALS}
    primary = "accuracy" if gold is not None else "agreement"
    if gold is None:
        metrics["teacher"]["agreement"] = 1.0
    retention = metrics["student_quantized"][primary] / max(metrics["teacher"][primary], 1e-12)
    return Quality(metrics, retention, metrics["student_quantized"]["agreement"], frontiers,
                   reference="gold labels" if gold is not None else "teacher", labelled=gold is not None,
                   quantization_accuracy_drop=metrics["student"][primary] - metrics["student_quantized"][primary])


def causal_quality(stats: dict[str, TokenStats], same_tokens: bool, target: float) -> Quality:
    """Perplexities, next-token accuracy and (with one tokenization) a token-level frontier."""
    metrics = {n: s.metrics() for n, s in stats.items()}
    agreement = None
    frontiers: dict[str, Frontier] = {}
    if same_tokens:  # token-by-token comparison needs one tokenization
        t_argmax = np.concatenate(stats["teacher"].argmax)
        for n in ("student", "student_quantized"):
            metrics[n]["agreement"] = float((np.concatenate(stats[n].argmax) == t_argmax).mean())
        agreement = metrics["student_quantized"]["agreement"]
        q, t = stats["student_quantized"], stats["teacher"]
        frontiers = {s: frontier_from_confidence(np.concatenate(q.conf[s]), np.concatenate(q.correct),
                                                 np.concatenate(t.correct), signal=s, target=target)
                     for s in SIGNALS}
    retention = metrics["teacher"]["perplexity"] / metrics["student_quantized"]["perplexity"]
    note = ("token-level: the cascade's next-token accuracy when tokens whose student confidence is below "
            "the threshold are predicted by the teacher") if same_tokens else (
            "no token-level frontier: teacher and student tokenize differently (the generation frontier, "
            "generation_routing, compares their answers instead where built)")
    reference = "reference answers given the held-out prompts" if stats["teacher"].scope == "answers" else \
        "held-out text"
    return Quality(metrics, retention, agreement, frontiers, reference=reference, routing_note=note)
