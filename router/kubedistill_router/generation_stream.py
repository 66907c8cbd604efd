"""Writing a generated answer to the client: server-sent events or one JSON body, usage and the
generation metrics; a client that goes away stops the generation."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from kubedistill_router.chat import ChatTokenizer, TextStream
from kubedistill_router.errors import Unavailable, UpstreamError
from kubedistill_router.generation_models import TextAnswer
from kubedistill_router.metrics import BUCKETS, RouterMetrics
from kubedistill_router.openai_api import (
    DONE,
    GenerationRequest,
    Outcome,
    TokenOut,
    chunk,
    new_id,
    response_body,
    sse,
    usage_chunk,
)
from kubedistill_router.protocol import json_body

log = logging.getLogger("kubedistill.router")
# The router's own share of a request is well under a millisecond when all is well: finer buckets there.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)
# Per request (aiohttp's request storage): seconds spent waiting for Triton's tokens.
TRITON_WAIT: Any = web.RequestKey("triton_wait", float) if hasattr(web, "RequestKey") else "triton_wait"


class ClientGone(Exception):
    """The client closed the connection: stop generating."""


class GenerationMetrics:
    """Generation metrics, in the router's registry."""

    def __init__(self, metrics: RouterMetrics):
        r = metrics.registry
        self.tokens = Counter("kubedistill_router_generated_tokens", "Tokens generated, by model (student, "
                              "teacher; drafts that were not sent count too).", ["model"], registry=r)
        self.ttft = Histogram("kubedistill_router_time_to_first_token_seconds", "From the request to the first "
                              "token sent to the client.", buckets=BUCKETS, registry=r)
        self.inter_token = Histogram("kubedistill_router_inter_token_seconds", "Between two tokens from Triton.",
                                     buckets=BUCKETS, registry=r)
        self.requests = Counter("kubedistill_router_generation_requests", "Generation requests answered, by who "
                                "served them and why (none, low-confidence, teacher-only, degraded).",
                                ["served_by", "reason"], registry=r)
        self.cancelled = Counter("kubedistill_router_generation_cancelled", "Generations cancelled because the "
                                 "client disconnected.", registry=r)
        self.overhead = Histogram("kubedistill_router_generation_overhead_seconds", "Time a generation request "
                                  "spends in the router itself: from its arrival to its answer, less the time spent "
                                  "waiting for Triton's tokens.", buckets=OVERHEAD_BUCKETS, registry=r)


async def peek(stream: AsyncIterator[TokenOut]) -> TokenOut | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def prepend(first: TokenOut | None, rest: AsyncIterator[TokenOut]) -> AsyncIterator[TokenOut]:
    if first is not None:
        yield first
        async for token in rest:
            yield token


class StreamEnded(Exception):
    """A stream that had started failed mid-answer; it was closed with an error event."""


async def ending_cleanly(tokens: AsyncIterator[TokenOut], response: web.StreamResponse | None,
                          writer: Writer) -> AsyncIterator[TokenOut]:
    """`tokens`, except that a failure once a stream has started ends that stream with an error event
    (its status is sent already) instead of reaching the error middleware."""
    try:
        async for token in tokens:
            yield token
    except (UpstreamError, Unavailable) as error:
        if response is None:
            raise
        log.warning("generation failed mid-stream: %s", getattr(error, "message", error))
        await writer.abort(str(getattr(error, "message", error)))
        raise StreamEnded from None


class Writer:
    """Sends one answer as a JSON body or as server-sent events; records time to first token."""

    def __init__(self, request: web.Request, req: GenerationRequest, tokenizer: ChatTokenizer,
                 metrics: GenerationMetrics, start: float):
        self.request = request
        self.req = req
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.start = start
        self.rid = new_id(req.chat)
        self.response: web.StreamResponse | None = None
        self.started = False

    async def _open(self, outcome: Outcome) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               **outcome.headers()})
        await response.prepare(self.request)
        self.response, self.started = response, True
        return response

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        try:
            await response.write(data)
        except (ConnectionError, RuntimeError):  # the client went away
            raise ClientGone from None

    async def tokens(self, tokens: AsyncIterator[TokenOut], prompt_tokens: int, outcome: Outcome, *,
                     stop: list[str], tokenizer: ChatTokenizer | None = None,
                     before_end: Any = None) -> str:
        """Send an answer token by token (stream) or whole; returns its text."""
        tok = tokenizer or self.tokenizer
        text = TextStream(tok, stop)
        sent: list[TokenOut] = []
        pending: list[TokenOut] = []
        response = await self._open(outcome) if self.req.stream else None
        first, timed = True, False  # first: no chunk sent yet; timed: the first token's time recorded
        iterator = tokens.__aiter__()
        try:
            async for token in ending_cleanly(iterator, response, self):
                if not timed:
                    self.metrics.ttft.observe(time.perf_counter() - self.start)
                    timed = True
                piece = text.push(token.id)
                if text.stopped:
                    if response is not None and piece:
                        await self._send(response, sse(chunk(self.req, self.rid, piece, [], None, tok.token_text,
                                                             first=first)))
                        first = False
                    break
                sent.append(token)
                pending.append(token)
                if response is not None and (piece or self.req.logprobs):
                    await self._send(response, sse(chunk(self.req, self.rid, piece, pending, None, tok.token_text,
                                                         first=first)))
                    pending, first = [], False
        finally:
            close = getattr(iterator, "aclose", None)  # an async generator: closing it cancels Triton's request
            if close is not None:
                await close()
        tail = text.flush()
        finish = "stop" if text.stopped or (sent and sent[-1].id == tok.eos_id) or len(sent) < self.req.max_tokens \
            else "length"
        if before_end is not None:
            before_end()
        if response is None:
            body = response_body(self.req, self.rid, text.text, finish, sent, prompt_tokens, outcome, tok.token_text)
            self.response = json_body(body)
            self.response.headers.update(outcome.headers())
            return text.text
        if tail or first:
            await self._send(response, sse(chunk(self.req, self.rid, tail, pending, None, tok.token_text,
                                                 first=first)))
        await self._send(response, sse(chunk(self.req, self.rid, None, [], finish, tok.token_text,
                                             outcome=outcome)))
        if self.req.include_usage:
            await self._send(response, sse(usage_chunk(self.req, self.rid, prompt_tokens, len(sent))))
        await self._send(response, DONE)
        await response.write_eof()
        return text.text

    async def text(self, answer: TextAnswer, outcome: Outcome) -> None:
        """Send a remote teacher's whole answer (one delta when streaming)."""
        self.metrics.ttft.observe(time.perf_counter() - self.start)
        if not self.req.stream:
            body = response_body(self.req, self.rid, answer.text, answer.finish_reason, [], answer.prompt_tokens,
                                 outcome, self.tokenizer.token_text)
            body["usage"]["completion_tokens"] = answer.completion_tokens
            body["usage"]["total_tokens"] = answer.prompt_tokens + answer.completion_tokens
            self.response = json_body(body)
            self.response.headers.update(outcome.headers())
            return
        response = await self._open(outcome)
        text_of = self.tokenizer.token_text
        await self._send(response, sse(chunk(self.req, self.rid, answer.text, [], None, text_of, first=True)))
        await self._send(response, sse(chunk(self.req, self.rid, None, [], answer.finish_reason, text_of,
                                             outcome=outcome)))
        if self.req.include_usage:
            await self._send(response, sse(usage_chunk(self.req, self.rid, answer.prompt_tokens,
                                                       answer.completion_tokens)))
        await self._send(response, DONE)
        await response.write_eof()

    async def abort(self, message: str) -> None:
        """End a stream that cannot finish (an error event, then [DONE])."""
        if self.response is not None:
            await self._send(self.response, sse({"error": {"message": message, "type": "upstream_error"}}))
            await self._send(self.response, DONE)
            await self.response.write_eof()
