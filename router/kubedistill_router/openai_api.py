"""The OpenAI-compatible protocol for generation: request validation and response shapes.

    POST /v1/chat/completions   {"model", "messages": [{"role", "content"}], ...}
    POST /v1/completions        {"model", "prompt": "text", ...}
    GET  /v1/models             {"object": "list", "data": [{"id", "object": "model", ...}]}

Supported: max_tokens (max_completion_tokens), temperature, top_p, stop, seed, stream (server-sent events,
ending with `data: [DONE]`), stream_options.include_usage, logprobs / top_logprobs (chat), logprobs as a
count (completions), n = 1. Every response carries `kubedistill` (served_by, confidence, ...) and the
X-Kubedistill-Served-By / X-Kubedistill-Confidence headers. Errors are 400s that name the field.

A field the router cannot honour is refused, never answered as if it were unset (the student would ignore it
and an escalated request would reach the teacher with it): penalties, logit_bias, tools, response_format, echo,
best_of, suffix and the like are accepted only at their default values, and an unknown field is refused as the
OpenAI API refuses it. Fields that do not change the answer (user, metadata, ...) are accepted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from kubedistill_router.chat import ROLES
from kubedistill_router.errors import BadRequest, NotFound

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 256  # when a request sets none (capped by the router's max_tokens cap)
SERVED_BY_HEADER = "X-Kubedistill-Served-By"
CONFIDENCE_HEADER = "X-Kubedistill-Confidence"


@dataclass
class GenerationRequest:
    """One validated request, for either endpoint."""

    chat: bool
    model: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # what a remote teacher is sent
    system_added: bool = False  # messages[0] is the system turn the router put first (serving.json system_prompt)


_SHARED = frozenset({"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options",
                     "logprobs", "n"})
# The fields each endpoint reads, as the OpenAI API has them.
HANDLED = {True: _SHARED | {"messages", "max_completion_tokens", "top_logprobs"}, False: _SHARED | {"prompt"}}
# Bookkeeping that does not change the answer (passed on to a remote teacher as sent).
ANSWER_NEUTRAL = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
                            "parallel_tool_calls"})
# Options the router cannot honour: accepted only at these values (what leaving them out means).
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},), "tools": ([],), "functions": ([],),
    "tool_choice": ("none", "auto"), "function_call": ("none", "auto"), "response_format": ({"type": "text"},),
    "modalities": (["text"],), "best_of": (1,), "echo": (False,), "suffix": ("",),
}


def _unsupported_fields(body: dict[str, Any], chat: bool) -> None:
    """BadRequest for the first field that would be ignored: one the endpoint does not know (another endpoint's
    included), or an option at another value than its default."""
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    for name, value in body.items():
        if name in HANDLED[chat] or name in ANSWER_NEUTRAL or value is None:
            continue
        if name not in DEFAULT_ONLY:
            raise BadRequest(f"{name}: unrecognized request argument for {endpoint}; it takes "
                             f"{', '.join(sorted(HANDLED[chat]))} (and {', '.join(sorted(ANSWER_NEUTRAL))}, which "
                             "do not change the answer)")
        if not any(_same(value, default) for default in DEFAULT_ONLY[name]):
            default = orjson.dumps(DEFAULT_ONLY[name][0]).decode()
            raise BadRequest(f"{name}: not supported by this router (only {default}, the default); leave it out")


def _same(value: Any, default: Any) -> bool:
    """Equal as JSON values: `false` is not `0`, `1` is not `true` (Python's == says they are)."""
    return isinstance(value, bool) == isinstance(default, bool) and value == default


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{name}: must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > 4 or not all(isinstance(s, str) and s for s in value):
        raise BadRequest("stop: must be a non-empty string or a list of up to 4 non-empty strings")
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages: must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}]: must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{index}].role: must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text parts can be served by a text model
            texts = []
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise BadRequest(f"messages[{index}].content[{part_index}]: only text parts "
                                     "({\"type\": \"text\", \"text\": ...}) are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{index}].content: must be a string, got {type(content).__name__}")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_request(body: Any, *, chat: bool, model_name: str, max_tokens_cap: int) -> GenerationRequest:
    """A validated request, or BadRequest (400) naming the field, NotFound (404) for another model."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(f"model: required, a string; this router serves {model_name!r}")
    if model != model_name:
        raise NotFound(f"model: {model!r} is not served here; this router serves {model_name!r} (GET /v1/models)")
    _unsupported_fields(body, chat)
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest(f"n: only 1 choice per request is supported, got {n!r}")
    messages = prompt = None
    if chat:
        if "messages" not in body:
            raise BadRequest("messages: required for /v1/chat/completions")
        messages = _messages(body["messages"])
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt: required, a non-empty string (lists of prompts are not supported)")
    cap_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, cap_name, 1, 1 << 30)
    if max_tokens is not None and max_tokens > max_tokens_cap:
        raise BadRequest(f"{cap_name}: {max_tokens} is over this router's cap of {max_tokens_cap}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream: must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options: must be an object")
    if options and not stream:
        raise BadRequest("stream_options: only allowed when stream is true")
    if chat:
        logprobs = body.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise BadRequest("logprobs: must be true or false on /v1/chat/completions")
        top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
        if top and not logprobs:
            raise BadRequest("top_logprobs: needs logprobs: true")
    else:
        count = _integer(body, "logprobs", 0, 5)
        logprobs, top = count is not None, count or 0
    return GenerationRequest(
        chat=chat, model=model, messages=messages, prompt=prompt,
        max_tokens=max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, max_tokens_cap),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0), stop=_stop(body),
        seed=_integer(body, "seed", -(1 << 63), (1 << 63) - 1), stream=stream,
        include_usage=bool(options.get("include_usage", False)), logprobs=logprobs, top_logprobs=top, raw=body)


@dataclass
class TokenOut:
    """One generated token as the model returned it."""

    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Outcome:
    """Who answered a request and how sure the student was (the `kubedistill` extension field)."""

    served_by: str  # student | teacher
    confidence: float | None  # the student's confidence in its draft (None: no draft scored)
    signal: str
    threshold: float | None
    degraded: bool = False
    escalation_reason: str | None = None  # low-confidence, or null

    def extension(self) -> dict[str, Any]:
        out: dict[str, Any] = {"served_by": self.served_by, "confidence": self.confidence, "signal": self.signal,
                               "threshold": self.threshold}
        if self.degraded:
            out["degraded"] = True
        if self.escalation_reason:
            out["escalation_reason"] = self.escalation_reason
        return out

    def headers(self) -> dict[str, str]:
        headers = {SERVED_BY_HEADER: self.served_by}
        if self.confidence is not None:
            headers[CONFIDENCE_HEADER] = f"{self.confidence:.6g}"
        return headers


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(tokens: list[TokenOut], text_of: Any, top: int) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = text_of(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [entry(t.id, t.logprob) | {"top_logprobs": [entry(i, lp) for i, lp in t.top[:top]]}
                        for t in tokens]}


def completion_logprobs(tokens: list[TokenOut], text_of: Any, top: int, offset: int = 0) -> dict[str, Any]:
    """`choices[].logprobs` of a (legacy) completion: tokens, token_logprobs, top_logprobs, text_offset."""
    texts = [text_of(t.id) for t in tokens]
    offsets, position = [], offset
    for text in texts:
        offsets.append(position)
        position += len(text)
    return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text_of(i): lp for i, lp in t.top[:top]} for t in tokens] if top else None,
            "text_offset": offsets}


def response_body(request: GenerationRequest, rid: str, text: str, finish: str, tokens: list[TokenOut],
                  prompt_tokens: int, outcome: Outcome, text_of: Any) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion or text_completion."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    logprobs = None
    if request.chat:
        choice["message"] = {"role": "assistant", "content": text}
        if request.logprobs:
            logprobs = chat_logprobs(tokens, text_of, request.top_logprobs)
    else:
        choice["text"] = text
        if request.logprobs:
            logprobs = completion_logprobs(tokens, text_of, request.top_logprobs)
    choice["logprobs"] = logprobs
    return {"id": rid, "object": "chat.completion" if request.chat else "text_completion", "created": int(time.time()),
            "model": request.model, "choices": [choice], "usage": usage(prompt_tokens, len(tokens)),
            "kubedistill": outcome.extension()}


def chunk(request: GenerationRequest, rid: str, delta: str | None, tokens: list[TokenOut], finish: str | None,
          text_of: Any, *, first: bool = False, outcome: Outcome | None = None) -> dict[str, Any]:
    """One streamed chunk: a text delta (with its tokens' logprobs), or the final one with finish_reason."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if request.chat:
        message: dict[str, Any] = {"role": "assistant"} if first else {}
        if delta is not None:
            message["content"] = delta
        choice["delta"] = message
        choice["logprobs"] = chat_logprobs(tokens, text_of, request.top_logprobs) if request.logprobs and tokens \
            else None
    else:
        choice["text"] = delta or ""
        choice["logprobs"] = completion_logprobs(tokens, text_of, request.top_logprobs) \
            if request.logprobs and tokens else None
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if request.chat else "text_completion",
                            "created": int(time.time()), "model": request.model, "choices": [choice]}
    if outcome is not None:
        body["kubedistill"] = outcome.extension()
    return body


def usage_chunk(request: GenerationRequest, rid: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(value: Any) -> bytes:
    """One server-sent event carrying a JSON value."""
    return b"data: " + orjson.dumps(value) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def models_body(model_name: str, version: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                        "owned_by": "kubedistill", "version": version}]}
