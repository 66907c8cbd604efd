"""The routing frontier of generation: on held-out prompts, the student's and the teacher's answers, the
student's confidence in its own answer, and the cascade's quality against the share escalated.

Each held-out text is split: its first half (in tokens, at most `max_length`) is the prompt, the rest the
reference continuation. Both models answer greedily with ONNX Runtime GenAI (the builds the router serves),
so the confidence here is exactly the router's (kubedistill.confidence.answer_confidence on the same
log-probabilities). Quality of an answer: token-level F1 against the reference continuation (bag of
token ids, as SQuAD's F1), or, without references, F1 against the teacher's answer (agreement).

Generation metrics (`evaluation.metrics` rouge_l, chrf, exact_match), means over the prompts of per-answer
scores in [0, 1]: ROUGE-L F-measure (`rouge-score`, its default tokenizer: lowercased alphanumeric words, no
stemming), chrF (`sacrebleu`'s sentence chrF, character 6-grams, β = 2, divided by 100) and exact match (after
lowercasing, dropping punctuation and collapsing whitespace). With `task.prompt` the prompts are the held-out
rows' prompts and the references their dataset.referenceField; otherwise the prompts are the texts' first
halves and the references the rest.
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.confidence import GENERATION_SIGNALS, answer_confidence
from kubedistill.report import FrontierPoint, Routing, SignalSweep
from kubedistill_jobs.routing import Frontier, frontier_from_confidence

ANSWER_TOKENS = 16  # tokens each model answers with


@dataclass
class Answer:
    ids: list[int]
    logprobs: list[float]  # natural log, float32 precision like the Triton model's


def token_f1(answer: Sequence[int], reference: Sequence[int]) -> float:
    """F1 of the bags of token ids (1 when both are empty, 0 when one is)."""
    if not answer or not reference:
        return float(not answer and not reference)
    common = sum((Counter(answer) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer), common / len(reference)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure of one answer against one reference (longest common subsequence of words)."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)


def chrf(answer: str, reference: str) -> float:
    """sacrebleu's sentence chrF of one answer against one reference, in [0, 1]."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(answer, [reference]).score) / 100


def normalise(text: str) -> str:
    """Lowercased, punctuation dropped, whitespace collapsed: what exact match compares."""
    return re.sub(r"\s+", " ", text.lower().translate(str.maketrans("", "", string.punctuation))).strip()


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


SCORERS = {"rouge_l": rouge_l, "chrf": chrf, "exact_match": exact_match}


def answer_scores(answers: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean rouge_l, chrf and exact_match of `answers` against `references` (one each, same order)."""
    if len(answers) != len(references) or not answers:
        raise ValueError(f"generation metrics: need as many (> 0) answers as references, got {len(answers)} and "
                         f"{len(references)}")
    return {name: float(np.mean([score(a, r) for a, r in zip(answers, references, strict=True)]))
            for name, score in SCORERS.items()}


def split_prompts(token_ids: list[list[int]], max_length: int,
                  decode: Callable[[list[int]], str] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt, reference) per text: the first half of its first `max_length` tokens and the rest; texts
    under 4 tokens are skipped. With `decode` (the tokenizer's), a cut inside a character (a byte-level token
    holding part of it) moves to the token before: a prompt is handed as text to a model of another tokenizer,
    and half a character would reach it as U+FFFD."""
    out = []
    for ids in token_ids:
        ids = ids[:max_length]
        if len(ids) >= 4:
            half = len(ids) // 2
            while decode is not None and half > 1 and decode(ids[:half]).endswith("\ufffd"):
                half -= 1
            out.append((ids[:half], ids[half:]))
    return out


def generate(folder: Path, prompts: list[list[int]], max_tokens: int = ANSWER_TOKENS) -> list[Answer]:
    """Greedy answers of the ONNX Runtime GenAI model in `folder`, with each token's log-probability."""
    import onnxruntime_genai as og

    return generate_with(og.Model(str(folder)), prompts, max_tokens)


def generate_with(model: Any, prompts: list[list[int]], max_tokens: int = ANSWER_TOKENS) -> list[Answer]:
    """Greedy answers of a loaded `onnxruntime_genai.Model`, with each token's log-probability."""
    import onnxruntime_genai as og

    answers = []
    for prompt in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + max_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        answer = Answer([], [])
        while not generator.is_done() and len(answer.ids) < max_tokens:
            logits = generator.get_logits().reshape(-1).astype(np.float64)
            z = logits - logits.max()
            logprobs = z - np.log(np.exp(z).sum())
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            answer.ids.append(token)
            answer.logprobs.append(float(np.float32(logprobs[token])))
        answers.append(answer)
    return answers


def timed_generate(folder: Path, prompts: list[list[int]], max_tokens: int) -> tuple[list[Answer], float]:
    """generate(), and its tokens per second (answer tokens over the wall time, the model's load excluded)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    generate_with(model, prompts[:1], 2)  # untimed: the first run pays for the graph's optimisation
    started = time.perf_counter()
    answers = generate_with(model, prompts, max_tokens)
    seconds = time.perf_counter() - started
    return answers, sum(len(a.ids) for a in answers) / max(seconds, 1e-9)


def answer_quality(student: Sequence[str], teacher: Sequence[str], references: Sequence[str] | None,
                   metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-answer `metric` (a SCORERS name) of the student's and the teacher's answers `(N,)` each: against
    `references`, else the student's against the teacher's (the teacher's own is then 1)."""
    score = SCORERS[metric]
    if references is None:
        return np.array([score(s, t) for s, t in zip(student, teacher, strict=True)]), np.ones(len(teacher))
    return (np.array([score(s, r) for s, r in zip(student, references, strict=True)]),
            np.array([score(t, r) for t, r in zip(teacher, references, strict=True)]))


def generation_routing(student: list[Answer], teacher: list[Answer], references: list[list[int]] | None,
                       target: float, signal: str = "token-quantile",
                       quality: tuple[np.ndarray, np.ndarray, str] | None = None,
                       ) -> tuple[Routing, dict[str, Frontier]]:
    """The frontier for every generation signal; the report's main one is `signal`. Quality: `quality`'s
    per-answer scores of student and teacher and what they are measured against (the job's primary metric,
    `answer_quality`), else token F1 against `references`, else against the teacher's answers (the teacher's
    own quality is then 1)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"generation frontier: need as many (> 0) student as teacher answers, got {len(student)} "
                         f"and {len(teacher)}")
    if quality is not None:
        s_quality, t_quality, reference = quality
        if len(s_quality) != len(student) or len(t_quality) != len(teacher):
            raise ValueError(f"generation frontier: {len(s_quality)} and {len(t_quality)} scores for "
                             f"{len(student)} answers")
    elif references is not None:
        s_quality = np.array([token_f1(s.ids, r) for s, r in zip(student, references, strict=True)])
        t_quality = np.array([token_f1(t.ids, r) for t, r in zip(teacher, references, strict=True)])
        reference = "held-out continuations (token F1)"
    else:
        s_quality = np.array([token_f1(s.ids, t.ids) for s, t in zip(student, teacher, strict=True)])
        t_quality = np.ones(len(teacher))
        reference = "the teacher's answers"
    frontiers = {}
    for name in GENERATION_SIGNALS:
        conf = np.array([answer_confidence(a.logprobs, name) for a in student])
        frontiers[name] = frontier_from_confidence(conf, s_quality, t_quality, signal=name, target=target)
    main = frontiers[signal]
    routing = Routing(
        signal=signal,
        frontier=[FrontierPoint(**vars(p)) for p in main.points],
        recommended_threshold=None if main.recommended is None else main.recommended.threshold,
        target=target,
        recommended=None if main.recommended is None else FrontierPoint(**vars(main.recommended)),
        teacher_accuracy=main.teacher_accuracy,
        student_accuracy=main.student_accuracy,
        reference=reference,
        signals={name: SignalSweep(
            recommended_threshold=None if f.recommended is None else f.recommended.threshold,
            escalation_rate=None if f.recommended is None else f.recommended.escalation_rate,
            accuracy=None if f.recommended is None else f.recommended.accuracy,
            frontier=[FrontierPoint(**vars(p)) for p in f.points]) for name, f in frontiers.items()},
    )
    return routing, frontiers
