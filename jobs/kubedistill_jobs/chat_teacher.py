"""A classification teacher behind an OpenAI-compatible API (`teacher.endpoint` with `teacher.prompt`),
called as a careful client through the `openai` SDK.

Per text: `POST {url}/chat/completions` (or `/completions` with the prompt rendered as plain turns),
`temperature: 0`, `logprobs` with `top_logprobs: 20`. The soft target is the distribution over the labels'
first tokens, renormalised: a candidate token counts for the label whose answer it begins (the answers
must differ in their first character, so that no token can begin two). An endpoint that returns no
logprobs still teaches: its answer, matched to a label's answer, becomes a hard label (refused with
`distillation.requireSoftTargets`); an answer that matches no label is counted, logged and given a
uniform target, never mapped to a class.

The client: at most `maxConcurrency` requests in flight; client-side `requestsPerMinute` and
`tokensPerMinute` (a sliding one-minute window, a request counted until a minute after its answer);
retries with backoff on 429/5xx and lost connections, waiting `Retry-After` when the server gives it; a
401/403 is permanent and names `teacher.endpoint.apiKeySecretRef`. Every answered row is appended to a
journal before the next is counted done, so a restarted run sends no answered row again.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.env import PipelineEnv
from kubedistill.errors import InputError
from kubedistill_jobs.endpoint_teacher import EndpointError, EndpointRefused
from kubedistill_jobs.llm_teacher import LabelPrompt, PromptError

log = logging.getLogger(__name__)
TOP_LOGPROBS = 20
VERY_NEGATIVE = -1.0e4
Progress = Callable[[int, int], None]


class SoftTargetsRequired(InputError):
    """The endpoint returned no logprobs and the spec refuses hard labels."""


class NoAnswerMatched(InputError):
    """Not one of the teacher's answers named a label: every target would be uniform, nothing to learn."""


@dataclass(frozen=True)
class ChatConfig:
    url: str
    model: str
    api: str = "chat"
    max_tokens: int = 16
    timeout_seconds: float = 60.0
    max_concurrency: int = 4
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    input_price: float | None = None  # per 1M tokens
    output_price: float | None = None
    require_soft_targets: bool = False
    api_key: str | None = field(default=None, repr=False)
    retries: int = 5
    backoff_seconds: float = 0.5
    rate_window_seconds: float = 60.0  # the window the per-minute limits count over

    @classmethod
    def from_spec(cls, spec: DistillationJobSpec) -> ChatConfig:
        endpoint = spec.teacher.endpoint
        assert endpoint is not None
        pricing = endpoint.pricing
        return cls(url=endpoint.url.rstrip("/"), model=endpoint.model, api=endpoint.api or "chat",
                   max_tokens=min(endpoint.max_new_tokens, 16), timeout_seconds=endpoint.timeout_seconds,
                   max_concurrency=endpoint.max_concurrency, requests_per_minute=endpoint.requests_per_minute,
                   tokens_per_minute=endpoint.tokens_per_minute,
                   input_price=pricing.input_per_million if pricing else None,
                   output_price=pricing.output_per_million if pricing else None,
                   require_soft_targets=spec.distillation.require_soft_targets,
                   api_key=PipelineEnv.from_env().teacher_api_key)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.input_price is None or self.output_price is None:
            return None
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6


def check_first_characters(answers: Sequence[str]) -> None:
    """Refuse answers a first-token distribution cannot tell apart: the endpoint's tokenizer is unknown here,
    so answers must differ in their first character (case-insensitive), which no token can span."""
    firsts: dict[str, str] = {}
    for answer in answers:
        first = answer.strip()[:1].lower()
        if first in firsts:
            raise PromptError(
                f"teacher.prompt.verbalizer: the answers {firsts[first]!r} and {answer!r} begin alike, so the "
                "endpoint's first-token logprobs cannot tell them apart; give labels answers that differ in "
                "their first character (e.g. verbalizer {sport: 'Sport', science: 'Research'})")
        firsts[first] = answer


def estimate_tokens(messages: Sequence[dict[str, str]], max_tokens: int) -> int:
    """What a request counts against tokensPerMinute before it is sent: its prompt at ~4 characters per token,
    plus the most it may generate."""
    return sum(len(m["content"]) for m in messages) // 4 + max_tokens


class RateLimiter:
    """Requests and tokens per minute, over a sliding window (client side): a request waits until the
    requests and estimated tokens counted in the last `window` seconds leave room for it (a lone request is
    always let through, however many tokens it counts).

    A request counts from when it is let through until `window` seconds after its answer came back (`release`):
    the server received it somewhere in between, so however late it arrived, no window of the server's clock
    sees more than the limits."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic, window: float = 60.0) -> None:
        self.rpm, self.tpm, self.clock, self.window = requests_per_minute, tokens_per_minute, clock, window
        self.sent: list[list[float]] = []  # [answered at (inf while in flight), tokens]
        self.changed = threading.Condition()

    def acquire(self, tokens: int) -> list[float]:
        """Wait for room, count the request in flight; give what it returns to `release` once answered."""
        with self.changed:
            while True:
                now = self.clock()
                self.sent = [entry for entry in self.sent if now - entry[0] < self.window]
                used = sum(n for _, n in self.sent)
                fits = ((self.rpm is None or len(self.sent) < self.rpm)
                        and (self.tpm is None or not self.sent or used + tokens <= self.tpm))
                if fits:
                    entry = [math.inf, float(tokens)]
                    self.sent.append(entry)
                    return entry
                answered = [at for at, _ in self.sent if at != math.inf]
                # room comes when the oldest answered request leaves the window, or when one in flight returns
                self.changed.wait(self.window - (now - min(answered)) if answered else None)

    def release(self, entry: list[float]) -> None:
        """The request `entry` stands for was answered (or failed): it counts for one more window from now."""
        with self.changed:
            entry[0] = self.clock()
            self.changed.notify_all()


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after")))
    except (TypeError, ValueError, AttributeError):
        return None


class ChatTeacher:
    """One endpoint, one prompt: answers texts, with the journal that makes a run resumable."""

    def __init__(self, config: ChatConfig, prompt: LabelPrompt) -> None:
        from openai import OpenAI

        self.config, self.prompt = config, prompt
        # retries are ours (Retry-After honoured, counted, the error worded for the spec's fields)
        self.client = OpenAI(base_url=config.url, api_key=config.api_key or "none", max_retries=0,
                             timeout=config.timeout_seconds)
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute,
                                   window=config.rate_window_seconds)
        self.retried = 0

    def _call(self, text: str) -> Any:
        import openai

        cfg = self.config
        messages = self.prompt.messages(text)
        estimate = estimate_tokens(messages, cfg.max_tokens)
        for attempt in range(cfg.retries + 1):
            slot = self.limiter.acquire(estimate)
            try:
                if cfg.api == "chat":
                    return self.client.chat.completions.create(
                        model=cfg.model, messages=messages, max_tokens=cfg.max_tokens, temperature=0,
                        logprobs=True, top_logprobs=TOP_LOGPROBS)
                plain = "\n\n".join(m["content"] for m in messages) + "\n\n"
                return self.client.completions.create(model=cfg.model, prompt=plain, max_tokens=cfg.max_tokens,
                                                      temperature=0, logprobs=TOP_LOGPROBS)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise EndpointRefused(
                    f"teacher.endpoint.apiKeySecretRef: {cfg.url} refused the API key (HTTP {error.status_code}); "
                    "check the Secret and key it names") from None
            except openai.APIStatusError as error:
                if error.status_code != 429 and error.status_code < 500:
                    raise EndpointRefused(f"teacher.endpoint.url: {cfg.url} answered HTTP {error.status_code}: "
                                          f"{str(error)[:300]}") from None
                if attempt == cfg.retries:
                    raise EndpointError(f"teacher.endpoint.url: {cfg.url} answered HTTP {error.status_code} "
                                        f"{cfg.retries + 1} times") from None
                delay = _retry_after(error.response.headers)
            except openai.APIConnectionError:
                if attempt == cfg.retries:
                    raise EndpointError(f"teacher.endpoint.url: {cfg.url} cannot be reached") from None
                delay = None
            finally:
                self.limiter.release(slot)
            self.retried += 1
            time.sleep(delay if delay is not None else cfg.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    def answer(self, text: str) -> dict[str, Any]:
        """One text's row of the journal: the answer, the label distribution (or hard label), token counts."""
        response = self._call(text)
        choice = response.choices[0]
        content = (choice.message.content if self.config.api == "chat" else choice.text) or ""
        first = _first_candidates(choice, self.config.api)
        usage = response.usage
        return {"answer": content, "candidates": first,
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0}


def _first_candidates(choice: Any, api: str) -> dict[str, float] | None:
    """The first generated token's top candidates {token text: logprob}, or None without logprobs."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return None
    if api == "chat":
        content = getattr(logprobs, "content", None)
        if not content:
            return None
        first = content[0]
        found = {c.token: c.logprob for c in (first.top_logprobs or [])}
        found.setdefault(first.token, first.logprob)
        return found
    top = getattr(logprobs, "top_logprobs", None)
    return dict(top[0]) if top else None


def match_answer(answer: str, answers: Sequence[str]) -> int | None:
    """The label whose answer the text is (case-insensitive, surrounding spaces and final punctuation
    ignored, or the text beginning with it), or None."""
    said = answer.strip().strip(".!\"'").strip().lower()
    exact = [i for i, a in enumerate(answers) if said == a.lower()]
    if exact:
        return exact[0]
    starts = [i for i, a in enumerate(answers) if said.startswith(a.lower())]
    return starts[0] if len(starts) == 1 else None


def label_distribution(row: dict[str, Any], answers: Sequence[str]) -> tuple[np.ndarray, str]:
    """`(C,)` log-probabilities over the labels from one journal row, and how: `soft` (first-token
    candidates renormalised), `hard` (the matched answer, no logprobs), `unmatched` (uniform)."""
    n = len(answers)
    candidates = row.get("candidates")
    if candidates:
        mass = np.zeros(n)
        for token, logprob in candidates.items():
            piece = token.strip().lower()
            if not piece:
                continue
            owners = [i for i, a in enumerate(answers) if a.lower().startswith(piece)]
            if len(owners) == 1:
                mass[owners[0]] += math.exp(logprob)
        if mass.sum() > 0:
            return np.log(np.clip(mass / mass.sum(), 1e-12, None)), "soft"
    matched = match_answer(row.get("answer", ""), answers)
    if matched is None:
        return np.full(n, -math.log(n)), "unmatched"
    hard = np.full(n, VERY_NEGATIVE)
    hard[matched] = 0.0
    return hard, "hard"


@dataclass
class Answered:
    logprobs: np.ndarray  # (N, C)
    kinds: list[str]
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    sent: int  # requests this call sent (not counting retries)
    retried: int


def label_texts(teacher: ChatTeacher, texts: Sequence[str], journal: Path, *,
                progress: Progress | None = None, on_usage: Callable[[int, int], None] | None = None) -> Answered:
    """Answer every text not yet in `journal` (one JSON line per answered text, by index), then build the
    distributions from the whole journal."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict[str, Any]] = {}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a crash: that row is asked again
                continue
            done[row["index"]] = row
    todo = [i for i in range(len(texts)) if i not in done]
    lock = threading.Lock()
    totals = [sum(r["prompt_tokens"] for r in done.values()), sum(r["completion_tokens"] for r in done.values())]

    def one(i: int) -> None:
        row = {"index": i, **teacher.answer(texts[i])}
        with lock:
            with journal.open("a") as out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            done[i] = row
            totals[0] += row["prompt_tokens"]
            totals[1] += row["completion_tokens"]
            if progress:
                progress(len(done), len(texts))
            if on_usage:
                on_usage(totals[0], totals[1])

    if progress:
        progress(len(done), len(texts))
    with ThreadPoolExecutor(max_workers=teacher.config.max_concurrency) as pool:
        for future in [pool.submit(one, i) for i in todo]:
            future.result()
    answers = teacher.prompt.answers
    built = [label_distribution(done[i], answers) for i in range(len(texts))]
    kinds = [k for _, k in built]
    if teacher.config.require_soft_targets and any(not done[i].get("candidates") for i in range(len(texts))):
        raise SoftTargetsRequired(
            "distillation.requireSoftTargets: the endpoint answered without logprobs (hard labels only); use an "
            "endpoint that returns logprobs, or set requireSoftTargets false for hard-label distillation")
    unmatched = [i for i, k in enumerate(kinds) if k == "unmatched"]
    if unmatched and len(unmatched) == len(texts):
        examples = "; ".join(repr(done[i]["answer"][:60]) for i in unmatched[:3])
        raise NoAnswerMatched(
            f"teacher.prompt: none of the teacher's {len(texts)} answers named one of the labels "
            f"({', '.join(answers)}), e.g. {examples}; every soft target would be uniform. Make the prompt ask for "
            f"exactly one of the labels (teacher.prompt.user, .system, or .verbalizer to word them as the model "
            f"answers) and run into a new output; the answers are kept in {journal}")
    if unmatched:
        examples = "; ".join(repr(done[i]["answer"][:60]) for i in unmatched[:3])
        log.warning("%d of %d answers matched no label (uniform targets), e.g. %s", len(unmatched), len(texts),
                    examples)
    return Answered(
        logprobs=np.stack([lp for lp, _ in built]) if built else np.zeros((0, len(answers))), kinds=kinds,
        prompt_tokens=np.asarray([done[i]["prompt_tokens"] for i in range(len(texts))], dtype=np.int64),
        completion_tokens=np.asarray([done[i]["completion_tokens"] for i in range(len(texts))], dtype=np.int64),
        sent=len(todo), retried=teacher.retried)
