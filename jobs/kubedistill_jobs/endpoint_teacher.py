"""A remote teacher behind an OpenAI-compatible endpoint (`spec.teacher.endpoint`).

Sequence-level distillation from the teacher's greedy generations, plus the top-k soft targets the
endpoint exposes. Per training row:
- a text, over `completions`: `POST {url}/completions` continues it, with `max_tokens`, `temperature: 0`,
  `logprobs: k` and `return_tokens_as_token_ids: true` (vLLM then names tokens `token_id:N`; other servers
  name them by their text);
- a conversation (a row with messages, or any text with `api: chat`, taken as one user turn): the teacher
  answers it up to its last user turn (chats.prompt_messages), afresh: `POST {url}/chat/completions` with
  the messages, `logprobs: true`, `top_logprobs: min(k, 20)`; or, over `completions`, the prompt rendered
  with the student's chat template, the assistant turn opened. The student learns the answer inside its
  own chat template: the prompt so rendered, the answer, and the template's end of turn when the answer
  ended by itself.

The result is the cache the local top-k path writes (see soft_targets), in the student's token ids:

- `input_ids` = student-tokenised prompt + generated token ids, right-padded to task.maxLength;
- at cache position t (which predicts `input_ids[t + 1]`, as the train loop shifts by one):
  - inside the prompt, a one-hot target on the actual next token (value 0, index = next token, the other
    slots very negative), so the soft term there is the cross-entropy on the text;
  - from the last prompt token on, the teacher's top-k logprobs for the generated token that follows
    (candidates the student's tokenizer cannot name are dropped; missing ones are padded with a very
    negative value and a valid index);
  - after them, one-hot targets on what the teacher's logprobs cannot give in the student's ids: the rest
    of a chat answer from the first token the student cannot name (a teacher with another tokenizer still
    teaches its text), and the chat template's end of turn.

The API key comes from the env var KUBEDISTILL_TEACHER_API_KEY (`PipelineEnv`; the operator sets it from
`teacher.endpoint.apiKeySecretRef`) and is sent as a bearer token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.env import PipelineEnv
from kubedistill.errors import InputError
from kubedistill.redaction import redact
from kubedistill_jobs import chats

# A logit whose softmax weight is 0 at any temperature the API allows (≤ 100), and fits float16.
VERY_NEGATIVE = -1.0e4
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHAT_TOP_LOGPROBS = 20  # the chat API's bound on top_logprobs (OpenAI's; vLLM allows more)
Progress = Callable[[int, int], None]


class EndpointError(RuntimeError):
    """The teacher endpoint could not be used (unreachable, or 429/5xx after retries); the message names
    teacher.endpoint.url. A retry may succeed."""

    permanent = False  # decides over the error's chain (reporting.is_transient)


class EndpointRefused(EndpointError, InputError):
    """The endpoint answered and refused (a 4xx other than 429, no logprobs, another format, another
    tokenizer): a retry gets the same answer."""

    permanent = True


@dataclass(frozen=True)
class EndpointConfig:
    url: str
    model: str
    top_k: int
    max_new_tokens: int = 128
    timeout_seconds: float = 60.0
    api_key: str | None = field(default=None, repr=False)
    retries: int = 4
    backoff_seconds: float = 0.5
    api: str = "completions"  # or "chat"
    require_soft_targets: bool = False

    @classmethod
    def from_spec(cls, spec: DistillationJobSpec) -> EndpointConfig:
        endpoint = spec.teacher.endpoint
        assert endpoint is not None
        return cls(url=endpoint.url.rstrip("/"), model=endpoint.model, top_k=spec.distillation.top_k,
                   max_new_tokens=endpoint.max_new_tokens, timeout_seconds=endpoint.timeout_seconds,
                   api_key=PipelineEnv.from_env().teacher_api_key, api=endpoint.api or "completions",
                   require_soft_targets=spec.distillation.require_soft_targets)


class EndpointClient:
    """The completions and chat completions APIs, with retries (exponential backoff) on 429 and 5xx."""

    def __init__(self, config: EndpointConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.sleep = sleep

    def _fail(self, what: str, *, permanent: bool = True, path: str = "completions") -> EndpointError:
        """The error for `what` went wrong; the key is masked in anything the endpoint sent back (a server or proxy
        may echo the request's headers), since the message goes on to logs, status.failure and Events."""
        error = EndpointRefused if permanent else EndpointError
        return error(redact(f"teacher.endpoint.url: {self.config.url}/{path} {what}", self.config.api_key))

    def post(self, body: dict[str, Any], path: str = "completions") -> dict[str, Any]:
        """The first choice of `POST {url}/{path}` with `body` (and the model)."""
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        data = json.dumps({"model": cfg.model, **body}).encode()
        for attempt in range(cfg.retries + 1):
            request = urllib.request.Request(f"{cfg.url}/{path}", data=data, headers=headers, method="POST")
            last = attempt == cfg.retries
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_seconds) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code not in RETRY_STATUSES or last:
                    raise self._fail(f"answered HTTP {error.code}: {detail}", path=path,
                                     permanent=error.code not in RETRY_STATUSES) from None
                delay = _retry_after(error.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if last:
                    reason = getattr(error, "reason", error)
                    raise self._fail(f"cannot be reached ({reason}); check the URL and that the server is up "
                                     f"(timeout {cfg.timeout_seconds:g} s per request)", permanent=False,
                                     path=path) from None
                delay = None
            self.sleep(delay if delay is not None else cfg.backoff_seconds * 2**attempt)
        try:
            answer = json.loads(payload)
            return answer["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._fail(f"did not answer in the {path} format: {payload[:300]!r}", path=path) from None

    def complete(self, prompt: str, max_tokens: int, logprobs: int) -> dict[str, Any]:
        """Greedy generation with per-token top-`logprobs` candidates; the first choice."""
        choice = self.post({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": logprobs,
                            "return_tokens_as_token_ids": True})
        found = choice.get("logprobs") or {}
        if not isinstance(found.get("tokens"), list) or not isinstance(found.get("top_logprobs"), list):
            raise self._fail("answered without logprobs (tokens and top_logprobs); the teacher must be an "
                             "OpenAI-compatible server that returns top-k logprobs, such as vLLM")
        return choice

    def chat(self, messages: list[chats.Message], max_tokens: int, top_logprobs: int) -> dict[str, Any]:
        """Greedy answer to `messages` with per-token top candidates, as a completions choice: `text` (the
        answer), `finish_reason`, `logprobs` with `tokens` and `top_logprobs` ({token: logprob} per token).
        An answer without logprobs (`transformers serve`, for one) is one token of text with no candidates,
        `hard: true`: the student learns its text (one-hot), unless distillation.requireSoftTargets."""
        path = "chat/completions"
        choice = self.post({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "logprobs": True,
                            "top_logprobs": max(1, min(top_logprobs, CHAT_TOP_LOGPROBS))}, path)
        text = str((choice.get("message") or {}).get("content") or "")
        content = (choice.get("logprobs") or {}).get("content")
        if not isinstance(content, list):
            if self.config.require_soft_targets:
                raise EndpointRefused(
                    f"distillation.requireSoftTargets: {self.config.url}/{path} answered without logprobs (hard "
                    "labels only); use an endpoint that returns logprobs, or set requireSoftTargets false to learn "
                    "its answers' text")
            return {"text": text, "finish_reason": choice.get("finish_reason"), "hard": True,
                    "logprobs": {"tokens": [text] if text else [], "top_logprobs": [{}] if text else []}}
        tops = []
        for step in content:
            top = {c["token"]: c["logprob"] for c in step.get("top_logprobs") or [] if "token" in c}
            top.setdefault(str(step.get("token")), step.get("logprob"))
            tops.append(top)
        return {"text": text, "finish_reason": choice.get("finish_reason"),
                "logprobs": {"tokens": [str(step.get("token")) for step in content], "top_logprobs": tops}}

    def echo(self, text: str) -> dict[str, Any] | None:
        """`text` scored token by token (`echo`, no generation), or None when the endpoint refuses to echo
        prompts. An endpoint that cannot be reached raises: that is not an answer."""
        try:
            return self.post({"prompt": text, "max_tokens": 0, "temperature": 0, "logprobs": 1, "echo": True,
                              "return_tokens_as_token_ids": True})
        except EndpointRefused:
            return None

    def prompt_logprobs(self, text: str) -> list[float] | None:
        """The teacher's log-probability of each token of `text` after the first (`echo`), or None when the
        endpoint does not score prompts. An endpoint that cannot be reached raises: that is not an answer."""
        choice = self.echo(text)
        values = ((choice or {}).get("logprobs") or {}).get("token_logprobs")
        if not isinstance(values, list) or len(values) < 2:
            return None
        scored = [v for v in values[1:] if v is not None]
        return [float(v) for v in scored] if len(scored) == len(values) - 1 else None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(30.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def token_id(token: str, tokenizer: Any) -> int | None:
    """The student's id of a token the endpoint named: `token_id:N`, else the token's string (a vocabulary
    entry, or a text that encodes to exactly one token), else None."""
    vocab_size = len(tokenizer)
    if token.startswith("token_id:"):
        try:
            value = int(token.removeprefix("token_id:"))
        except ValueError:
            return None
        return value if 0 <= value < vocab_size else None
    found = tokenizer.convert_tokens_to_ids(token)
    if isinstance(found, int) and 0 <= found < vocab_size and (
            found != tokenizer.unk_token_id or token == tokenizer.unk_token):
        return found
    encoded = tokenizer.encode(token, add_special_tokens=False)
    if len(encoded) != 1 or (encoded[0] == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(encoded[0])


def _candidates(top: dict[str, float] | None, tokenizer: Any, k: int) -> list[tuple[int, float]]:
    """The k most likely candidates as (student id, logprob); names the student cannot map are dropped."""
    best: dict[int, float] = {}
    for name, logprob in (top or {}).items():
        tid = token_id(name, tokenizer)
        if tid is not None and logprob is not None and math.isfinite(float(logprob)):
            best[tid] = max(best.get(tid, -math.inf), float(logprob))
    return sorted(best.items(), key=lambda item: -item[1])[:k]


@dataclass
class Row:
    """One training row in the cache format, and the text it stands for."""

    input_ids: np.ndarray  # (L,) int32
    attention_mask: np.ndarray  # (L,) int8
    topk_values: np.ndarray  # (L, k) float16
    topk_indices: np.ndarray  # (L, k) int32
    text: str
    generated: int  # generated tokens kept
    dropped: int  # candidates the student's tokenizer could not name
    hard: bool = False  # the endpoint gave no logprobs: the answer's text only (one-hot)


def _overlap(ids: Sequence[int], tail: Sequence[int]) -> int:
    """How many of `tail`'s first tokens `ids` already ends with."""
    return next((n for n in range(min(len(ids), len(tail)), 0, -1) if list(ids[-n:]) == list(tail[:n])), 0)


def build_row(prompt_ids: list[int], choice: dict[str, Any] | None, prompt: str, tokenizer: Any, max_length: int,
              k: int, *, tail: Sequence[int] = (), rest_as_text: bool = False) -> Row:
    """Place the prompt and the teacher's generation in one right-padded row (see the module docstring).
    `rest_as_text`: from the first token the student cannot name on, the rest of the answer's text is
    tokenised by the student (one-hot targets) instead of ending the row; `tail` (one-hot) follows an answer
    that ended by itself (`finish_reason: stop`) and was kept whole."""
    prompt_ids = list(prompt_ids)[:max_length]
    logprobs = (choice or {}).get("logprobs") or {}
    tokens, tops = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
    generated: list[int] = []
    dists: list[list[tuple[int, float]]] = []
    dropped, cut = 0, None
    for i, (name, top) in enumerate(zip(tokens, tops, strict=False)):
        if len(prompt_ids) + len(generated) >= max_length:
            break
        tid = token_id(name, tokenizer)
        if tid is None:  # the rest of the generation can no longer be written in the student's ids
            cut = i
            break
        candidates = _candidates(top, tokenizer, k)
        dropped += max(0, min(k, len(top or {})) - len(candidates))
        generated.append(tid)
        dists.append(candidates)
    taught = len(generated)
    extra = tokenizer.encode("".join(map(str, tokens[cut:])), add_special_tokens=False) \
        if cut is not None and rest_as_text else []
    whole, answered = taught == len(tokens) or bool(extra), taught + len(extra)
    if tail and whole and (choice or {}).get("finish_reason") == "stop":
        extra += list(tail)[_overlap(generated + extra, tail):]
    extra = extra[:max(0, max_length - len(prompt_ids) - taught)]
    generated += extra
    dists += [[] for _ in extra]  # one-hot on the token itself
    input_ids, mask, values, indices = place_row(prompt_ids, generated, dists, tokenizer.pad_token_id or 0,
                                                 max_length, k)
    ids = prompt_ids + generated
    text = prompt  # the prompt as given, and the completion as the student's tokenizer writes it
    if generated:
        text += tokenizer.decode(ids)[len(tokenizer.decode(prompt_ids)):]
    if generated and not extra and taught == len(tokens) and isinstance((choice or {}).get("text"), str):
        text = prompt + choice["text"]  # the endpoint's own text, when every generated token was kept
    return Row(input_ids, mask, values, indices, text, min(answered, len(generated)), dropped)


def place_row(prompt_ids: list[int], generated: list[int], dists: list[list[tuple[int, float]]], pad_id: int,
              max_length: int, k: int, prompt_dists: list[list[tuple[int, float]]] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cache row from a prompt and a teacher's answer: `input_ids (L,)` int32 and `attention_mask (L,)`
    int8, right-padded; `topk_values (L, k)` float16 and `topk_indices (L, k)` int32, where position t predicts
    ids[t + 1]: inside the prompt the teacher's candidates `prompt_dists[t]` for prompt token t + 1 where given
    (a local teacher's prefill), a one-hot target otherwise; the teacher's candidates `dists[i]` ((id, logprob)
    pairs, best first; one-hot on the answer's token when empty) for answer token i. `prompt_ids + generated`
    must fit in max_length."""
    ids = list(prompt_ids) + list(generated)
    n, p = len(ids), len(prompt_ids)
    values = np.zeros((max_length, k), dtype=np.float32)
    indices = np.zeros((max_length, k), dtype=np.int32)
    for t in range(n - 1):  # position t predicts ids[t + 1]
        one_hot = [(ids[t + 1], 0.0)]
        given = (prompt_dists[t] if prompt_dists else None) if t + 1 < p else dists[t + 1 - p]
        candidates = given or one_hot
        values[t] = VERY_NEGATIVE
        indices[t] = candidates[0][0]
        for slot, (tid, logprob) in enumerate(candidates[:k]):
            values[t, slot], indices[t, slot] = logprob, tid
    input_ids = np.full(max_length, pad_id, dtype=np.int32)
    input_ids[:n] = ids
    mask = np.zeros(max_length, dtype=np.int8)
    mask[:n] = 1
    return input_ids, mask, values.astype(np.float16), indices


class EndpointPredictor:
    """A Ray Data callable class: up to `concurrency` requests in flight per actor."""

    def __init__(self, config: EndpointConfig, tokenizer: Any, max_length: int, concurrency: int = 8) -> None:
        self.client = EndpointClient(config)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def conversation(self, text: str, chat: str) -> list[chats.Message] | None:
        """What the teacher answers for a row: its messages up to the last user turn, or the text as one user
        turn with the chat API; None for a text to continue."""
        if chat:
            return chats.prompt_messages(json.loads(chat))
        return [{"role": "user", "content": text}] if self.client.config.api == "chat" else None

    def row(self, text: str, chat: str = "") -> tuple[Row, str]:
        """The cache row of one training row, and the prompt the student sees."""
        cfg = self.client.config
        messages = self.conversation(text, chat)
        prompt = text if messages is None else chats.render_prompt(self.tokenizer, messages)
        prompt_ids = self.tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"]
        room = min(cfg.max_new_tokens, self.max_length - len(prompt_ids))
        choice, tail = None, []
        if room > 0 and prompt_ids:
            if messages is not None and cfg.api == "chat":
                choice = self.client.chat(messages, room, cfg.top_k)
            else:
                choice = self.client.complete(prompt, room, cfg.top_k)
        if messages is not None:
            end = chats.turn_end(self.tokenizer, messages)
            tail = self.tokenizer.encode(end, add_special_tokens=False) if end else []
        row = build_row(prompt_ids, choice, prompt, self.tokenizer, self.max_length, cfg.top_k, tail=tail,
                        rest_as_text=messages is not None and cfg.api == "chat")
        if messages is not None and choice is not None and choice.get("finish_reason") == "stop":
            # the answer as the student's template writes a finished assistant turn
            answer = {"role": "assistant", "content": str(choice.get("text") or "")}
            row.text = chats.render(self.tokenizer, [*messages, answer])
        row.hard = bool(choice and choice.get("hard"))
        return row, prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        chat = [str(c) for c in batch["chat"]] if "chat" in batch else [""] * len(texts)
        done = list(self.pool.map(self.row, texts, chat))
        rows = [r for r, _ in done]
        return {
            "idx": batch["idx"],
            "input_ids": np.stack([r.input_ids for r in rows]),
            "attention_mask": np.stack([r.attention_mask for r in rows]),
            "topk_values": np.stack([r.topk_values for r in rows]),
            "topk_indices": np.stack([r.topk_indices for r in rows]),
            "generated": np.asarray([r.generated for r in rows], dtype=np.int32),
            "dropped": np.asarray([r.dropped for r in rows], dtype=np.int32),
            "hard": np.asarray([r.hard for r in rows], dtype=bool),
            "text": np.asarray([r.text for r in rows], dtype=object),
            "prompt": np.asarray([prompt for _, prompt in done], dtype=object),
        }


def run_endpoint(config: EndpointConfig, tokenizer: Any, texts: list[str], max_length: int, *,
                 conversations: list[list[chats.Message] | None] | None = None, progress: Progress | None = None,
                 actors: int = 2, concurrency: int = 8, batch_size: int = 8,
                 journal: Path | None = None) -> dict[str, np.ndarray]:
    """The cache arrays (and `text`, `prompt`, `generated`, `dropped` per row) for `texts`, in their order;
    `conversations[i]`, where given, is row i's messages (then the teacher answers them). `journal`: a folder
    that keeps the answered batches, so that a rerun sends only the rows left (the API key is not part of what
    it matches: a rotated key resumes)."""
    from kubedistill_jobs.batch_journal import BatchJournal, fingerprint
    from kubedistill_jobs.teacher_outputs import map_rows

    chat = [json.dumps(c) if c else "" for c in conversations or [None] * len(texts)]
    rows = {"text": texts, "chat": chat}
    # the cache holds the tokenizer's ids: its vocabulary is part of what the journal must match (not its path: an
    # output folder moved elsewhere resumes)
    vocabulary = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    settings = f"{config!r} max_length={max_length} vocabulary={vocabulary}"
    kept = None if journal is None else BatchJournal(journal, fingerprint(settings, rows))
    return map_rows(EndpointPredictor, {"config": config, "tokenizer": tokenizer, "max_length": max_length,
                                        "concurrency": concurrency},
                    rows, batch_size=batch_size, actors=actors, resources={"num_cpus": 0.25},
                    progress=progress, journal=kept)


def probe(config: EndpointConfig, prompt: str, tokenizer: Any | None = None) -> dict[str, Any]:
    """Short requests before any compute is spent: the endpoint answers, with logprobs, and (where it echoes
    prompts) tokenizes like the student, whose ids its answers are taken as. A chat endpoint's answers are
    mapped to the student's tokens by their text (the rest of an answer the student cannot name token by token
    is learnt as text), so its tokenizer is not compared."""
    client = EndpointClient(dataclasses.replace(config, retries=min(config.retries, 1)))
    found: dict[str, Any] = {"url": config.url, "model": config.model, "api": config.api}
    if config.api == "chat":  # refuses here, before any compute, an endpoint without logprobs that must have them
        found["logprobs"] = not client.chat([{"role": "user", "content": prompt or "Hello"}], 1, config.top_k).get(
            "hard")
        return found
    client.complete(prompt or "Hello", 1, config.top_k)
    if tokenizer is not None:
        found["tokenizer_checked"] = check_tokenizer(client, tokenizer)
    return found


def check_tokenizer(client: EndpointClient, tokenizer: Any, text: str = "Knowledge distillation, 42 times.") -> bool:
    """Whether the endpoint's tokens of `text` (echoed) are the student's; raises EndpointRefused
    when they differ. False when the endpoint does not echo prompts (nothing to compare)."""
    tokens = ((client.echo(text) or {}).get("logprobs") or {}).get("tokens")
    if not isinstance(tokens, list) or not tokens:
        return False
    theirs = [token_id(str(t), tokenizer) for t in tokens]
    ours = tokenizer(text, add_special_tokens=False)["input_ids"]
    if theirs[-len(ours):] != ours:  # the server may put a BOS token first
        raise client._fail(
            f"tokenizes {text!r} as {theirs} and student.uri's tokenizer as {ours}: the endpoint teacher's "
            f"model ({client.config.model}) must use the student's tokenizer, as its token ids train the student")
    return True
