"""A language model labels texts for a classification task (`teacher.prompt`).

Each text is put into the prompt (system and user templates, few-shot turns), rendered with the model's
chat template, and every label's answer is scored in full: log P(answer tokens + end of turn | prompt),
the sum over the answer's tokens, so labels of several tokens, or sharing a first token, are scored
right. The prompt runs once per text; its KV cache is repeated over the labels' answers, which run as one
batch. Scores are normalised over the labels (log-probabilities, usable as logits).

Contextual calibration (Zhao et al., 2021, "Calibrate Before Use"): the mean label distribution on
content-free inputs is the model's prior whatever the text; dividing it out (subtracting its log) and
renormalising removes the bias small LLMs have towards some answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec, TeacherPrompt
from kubedistill.errors import InputError

CONTENT_FREE = ("N/A", "", "[MASK]")  # the inputs Zhao et al. use
Progress = Callable[[int, int], None]


class PromptError(InputError):
    """A prompt or verbalizer the teacher cannot score; the message names the field."""


@dataclass(frozen=True)
class LabelPrompt:
    """The prompt and the answer of each label, in task.labels order."""

    labels: tuple[str, ...]
    answers: tuple[str, ...]
    user: str
    system: str | None = None
    few_shot: tuple[tuple[str, str], ...] = ()  # (text, label)

    @classmethod
    def from_spec(cls, spec: DistillationJobSpec) -> LabelPrompt:
        prompt: TeacherPrompt | None = spec.teacher.prompt
        assert prompt is not None
        labels = tuple(spec.task.labels or [])
        verbalizer = prompt.verbalizer or {}
        return cls(labels=labels, answers=tuple(verbalizer.get(label, label) for label in labels),
                   user=prompt.user, system=prompt.system,
                   few_shot=tuple((e.text, e.label) for e in prompt.few_shot or []))

    def _fill(self, template: str, text: str) -> str:
        # str.replace, not str.format: texts and templates may hold other braces
        return template.replace("{labels}", ", ".join(self.answers)).replace("{text}", text)

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat for one text: system, few-shot turns (user, assistant), the user turn to answer."""
        chat = [{"role": "system", "content": self._fill(self.system, text)}] if self.system else []
        for shot, label in self.few_shot:
            chat += [{"role": "user", "content": self._fill(self.user, shot)},
                     {"role": "assistant", "content": self.answers[self.labels.index(label)]}]
        return [*chat, {"role": "user", "content": self._fill(self.user, text)}]

    @property
    def template_hash(self) -> str:
        """sha256 of everything that decides the teacher's input besides the text."""
        blob = json.dumps([self.system, self.user, self.few_shot, self.labels, self.answers])
        return hashlib.sha256(blob.encode()).hexdigest()


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text the model continues: its chat template with the assistant turn opened, or, for a
    model without one, the turns one per paragraph."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def answer_ids(tokenizer: Any, answers: Sequence[str], field: str = "teacher.prompt.verbalizer") -> list[list[int]]:
    """Each answer's tokens followed by the end-of-turn token (the tokenizer's eos), so that an answer that
    is a prefix of another ("sport" and "sports") is not scored as the longer one. Raises PromptError when
    two answers tokenise the same."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [list(tokenizer.encode(a, add_special_tokens=False)) + end for a in answers]
    seen: dict[tuple[int, ...], str] = {}
    for answer, tokens in zip(answers, ids, strict=True):
        if len(tokens) == len(end):
            raise PromptError(f"{field}: the answer {answer!r} has no tokens for the teacher")
        if tuple(tokens) in seen:
            raise PromptError(f"{field}: the answers {seen[tuple(tokens)]!r} and {answer!r} are the same tokens "
                              "for the teacher; give labels distinct answers")
        seen[tuple(tokens)] = answer
    return ids


def first_tokens_distinct(tokenizer: Any, answers: Sequence[str]) -> bool:
    """Whether the answers' first tokens differ (then a first-token distribution tells them apart)."""
    firsts = [tuple(tokenizer.encode(a, add_special_tokens=False)[:1]) for a in answers]
    return len(set(firsts)) == len(firsts)


class FullAnswerScorer:
    """log P(answer | prompt) of every answer, summed over its tokens, for one prompt at a time."""

    def __init__(self, model: Any, answers: list[list[int]], pad_id: int = 0) -> None:
        import torch

        self.model = model
        self.device = next(model.parameters()).device
        width = max(len(a) for a in answers)
        self.ids = torch.full((len(answers), width), pad_id, dtype=torch.long, device=self.device)
        self.mask = torch.zeros((len(answers), width), dtype=torch.long, device=self.device)
        for i, tokens in enumerate(answers):
            self.ids[i, :len(tokens)] = torch.as_tensor(tokens)
            self.mask[i, :len(tokens)] = 1

    def score(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """`(C,)` float64: the log-probability of each answer after `prompt_ids`."""
        import torch

        n = self.ids.shape[0]
        with torch.inference_mode():
            prompt = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
            out = self.model(input_ids=prompt, use_cache=True)
            first = torch.log_softmax(out.logits[0, -1].double(), -1)[self.ids[:, 0]]  # (C,)
            if self.ids.shape[1] == 1:
                return first.cpu().numpy()
            cache = out.cache
            cache.batch_repeat_interleave(n)  # the prompt's keys and values, once per answer
            attention = torch.cat([torch.ones((n, prompt.shape[1]), dtype=torch.long, device=self.device),
                                   self.mask[:, :-1]], 1)
            logits = self.model(input_ids=self.ids[:, :-1], attention_mask=attention, cache=cache).logits
            rest = torch.log_softmax(logits.double(), -1).gather(-1, self.ids[:, 1:, None])[..., 0]  # (C, L-1)
            return (first + (rest * self.mask[:, 1:]).sum(1)).cpu().numpy()


@dataclass
class Labelled:
    """What the teacher said about the texts: `raw` and `calibrated` `(N, C)` log-probabilities normalised
    over the labels, the content-free `prior` `(C,)` (None without calibration), prompt tokens per text."""

    raw: np.ndarray
    calibrated: np.ndarray | None
    prior: np.ndarray | None
    prompt_tokens: np.ndarray

    @property
    def logprobs(self) -> np.ndarray:
        return self.calibrated if self.calibrated is not None else self.raw


def normalise(scores: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis."""
    shifted = scores - scores.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def calibrate(logprobs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Divide the label prior out of each row's distribution and renormalise (in log space)."""
    return normalise(logprobs - np.log(np.clip(prior, 1e-12, None)))


def truncate(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The text cut to its first `max_tokens` tokens, so the template around it always survives."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def label_texts(model: Any, tokenizer: Any, prompt: LabelPrompt, texts: Sequence[str], *, max_tokens: int,
                calibrated: bool = True, progress: Progress | None = None) -> Labelled:
    """Score every label's answer for every text (see the module's docstring)."""
    scorer = FullAnswerScorer(model, answer_ids(tokenizer, prompt.answers), pad_id=tokenizer.pad_token_id or 0)

    def ids(text: str) -> list[int]:
        rendered = render(tokenizer, prompt.messages(truncate(tokenizer, text, max_tokens)))
        return list(tokenizer.encode(rendered, add_special_tokens=False))

    prior = None
    if calibrated:
        prior = np.exp(normalise(np.stack([scorer.score(ids(t)) for t in CONTENT_FREE]))).mean(0)
    raw, lengths = [], []
    for i, text in enumerate(texts):
        prompt_ids = ids(text)
        raw.append(scorer.score(prompt_ids))
        lengths.append(len(prompt_ids))
        if progress:
            progress(i + 1, len(texts))
    scores = normalise(np.stack(raw)) if raw else np.zeros((0, len(prompt.labels)))
    return Labelled(raw=scores, calibrated=calibrate(scores, prior) if prior is not None else None, prior=prior,
                    prompt_tokens=np.asarray(lengths, dtype=np.int64))
