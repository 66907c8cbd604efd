"""A language model labels texts for a classification task (`teacher.prompt`).

Each text is put into the prompt (system and user templates, few-shot turns), rendered with the model's
chat template, and every label's answer is scored in full: log P(answer tokens + end of turn | prompt),
the sum over the answer's tokens, so labels of several tokens, or sharing a first token, are scored
right. The tokens all prompts share run once; texts run in batches on that cache, and each prompt's KV cache
is repeated over the labels' answers, which run as one batch. Scores are normalised over the labels
(log-probabilities, usable as logits).

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
    """log P(answer | prompt) of every answer, summed over its tokens, for a batch of prompts at a time.

    The tokens every prompt begins with (`prefix`: the chat template's system turn, few-shot turns, the
    user template before `{text}`) run once; their keys and values are expanded over each batch. A batch's
    prompts are right-padded after the prefix, with the padding masked and positions given explicitly, so
    every prompt is scored as if it ran alone; the answers then run as one batch on the prompts' cache.
    """

    def __init__(self, model: Any, answers: list[list[int]], pad_id: int = 0, prefix: Sequence[int] = ()) -> None:
        import torch

        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        width = max(len(a) for a in answers)
        self.ids = torch.full((len(answers), width), pad_id, dtype=torch.long, device=self.device)
        self.mask = torch.zeros((len(answers), width), dtype=torch.long, device=self.device)
        for i, tokens in enumerate(answers):
            self.ids[i, :len(tokens)] = torch.as_tensor(tokens)
            self.mask[i, :len(tokens)] = 1
        self.prefix = list(prefix)
        self.prefix_kv: list[tuple[Any, Any]] = []
        if self.prefix:
            with torch.inference_mode():
                out = self.model(input_ids=torch.as_tensor([self.prefix], device=self.device), use_cache=True)
            self.prefix_kv = [(layer.keys, layer.values) for layer in out.cache.layers]

    def score(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """`(C,)` float64: the log-probability of each answer after `prompt_ids`."""
        return self.score_batch([prompt_ids])[0]

    def _cache(self, batch: int) -> Any:
        """A cache holding the prefix's keys and values once per prompt of the batch."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(self.prefix_kv):
            cache.update(keys.expand(batch, -1, -1, -1).contiguous(), values.expand(batch, -1, -1, -1).contiguous(),
                         layer)
        return cache

    def score_batch(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """`(B, C)` float64: each answer's log-probability after each prompt (prompts need not share `prefix`:
        those that do not run in full)."""
        import torch

        p = len(self.prefix)
        if p and not all(len(x) > p and list(x[:p]) == self.prefix for x in prompts):
            p = 0
        n_batch, n_answers = len(prompts), self.ids.shape[0]
        lengths = torch.as_tensor([len(x) - p for x in prompts], device=self.device)
        width = int(lengths.max())
        ids = torch.full((n_batch, width), self.pad_id, dtype=torch.long, device=self.device)
        for row, x in enumerate(prompts):
            ids[row, :len(x) - p] = torch.as_tensor(list(x[p:]))
        steps = torch.arange(width, device=self.device)
        attention = torch.cat([torch.ones((n_batch, p), dtype=torch.long, device=self.device),
                               (steps[None] < lengths[:, None]).long()], 1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=(p + steps).expand(n_batch, -1),
                             cache=self._cache(n_batch) if p else None, use_cache=True)
            last = out.logits[torch.arange(n_batch, device=self.device), lengths - 1]  # (B, V)
            first = torch.log_softmax(last.double(), -1)[:, self.ids[:, 0]]  # (B, C)
            if self.ids.shape[1] == 1:
                return first.cpu().numpy()
            cache = out.cache
            cache.batch_repeat_interleave(n_answers)  # each prompt's keys and values, once per answer
            answers, mask = self.ids.repeat(n_batch, 1), self.mask.repeat(n_batch, 1)  # (B * C, A)
            start = (p + lengths).repeat_interleave(n_answers)[:, None]
            positions = start + torch.arange(answers.shape[1] - 1, device=self.device)[None]
            logits = self.model(input_ids=answers[:, :-1], position_ids=positions, cache=cache,
                                attention_mask=torch.cat([attention.repeat_interleave(n_answers, 0), mask[:, :-1]],
                                                         1)).logits
            rest = torch.log_softmax(logits.double(), -1).gather(-1, answers[:, 1:, None])[..., 0]  # (B * C, A - 1)
            total = first + (rest * mask[:, 1:]).sum(1).view(n_batch, n_answers)
            return total.cpu().numpy()


def common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The tokens every sequence begins with, leaving each at least one token of its own."""
    if not sequences:
        return []
    n = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for s in sequences[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return list(first[:max(0, n)])


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
                calibrated: bool = True, progress: Progress | None = None, batch_size: int = 8) -> Labelled:
    """Score every label's answer for every text (see the module's docstring), `batch_size` texts at a time,
    the prompt's shared prefix computed once."""

    def ids(text: str) -> list[int]:
        rendered = render(tokenizer, prompt.messages(truncate(tokenizer, text, max_tokens)))
        return list(tokenizer.encode(rendered, add_special_tokens=False))

    free = [ids(t) for t in CONTENT_FREE] if calibrated else []
    prompts = [ids(t) for t in texts]
    scorer = FullAnswerScorer(model, answer_ids(tokenizer, prompt.answers), pad_id=tokenizer.pad_token_id or 0,
                              prefix=common_prefix(free + prompts))
    prior = np.exp(normalise(scorer.score_batch(free))).mean(0) if free else None
    raw = np.zeros((len(texts), len(prompt.labels)))
    order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        raw[chunk] = scorer.score_batch([prompts[i] for i in chunk])
        if progress:
            progress(min(start + batch_size, len(texts)), len(texts))
    scores = normalise(raw) if len(texts) else raw
    return Labelled(raw=scores, calibrated=calibrate(scores, prior) if prior is not None else None, prior=prior,
                    prompt_tokens=np.asarray([len(x) for x in prompts], dtype=np.int64))
