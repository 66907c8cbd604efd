"""Causal-LM serving behind the OpenAI-compatible API: the student drafts, its confidence in its own answer
decides, the teacher answers below the threshold.

Modes:
- `student-only`: the student's tokens stream out as they are generated.
- `route`: the student drafts the whole answer first (nothing is sent yet); its confidence
  (kubedistill.confidence.answer_confidence: a low quantile of its token probabilities by default) is
  compared with the threshold. At or above it, the draft is sent (streamed as chunks if asked); below it,
  the teacher answers and a colocated teacher's tokens stream as they come. The draft stops early once
  the signal can no longer reach the threshold (min-token-probability: one token below it;
  token-quantile: more tokens below it than the quantile allows at max_tokens). Streaming therefore
  starts after the decision: the time to the first token includes the draft.
- `teacher-only`: the teacher answers; the student when it cannot (marked degraded).
- `shadow`: as student-only; a sampled share is also answered by the teacher in the background and the
  two answers' texts are compared (live agreement).
A teacher that fails (error, timeout, circuit open) never fails a request: the student's answer goes out
marked `degraded`. Triton failing for the student is a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from kubedistill.artifacts import ServingManifest
from kubedistill.capture import CapturedAnswer, CaptureKind, CaptureRecord
from kubedistill.confidence import GENERATION_SIGNALS, TOKEN_QUANTILE, Signal, answer_confidence
from kubedistill.routerconfig import RouterConfig
from kubedistill_router.breaker import CircuitBreaker
from kubedistill_router.capture import CaptureSink
from kubedistill_router.chat import ChatTokenizer, TextStream
from kubedistill_router.contract import check_repository
from kubedistill_router.errors import BadRequest, NotFound, Unavailable, UpstreamError
from kubedistill_router.generation_models import OpenAITeacher, TritonGenerator
from kubedistill_router.generation_stream import (
    TRITON_WAIT,
    ClientGone,
    GenerationMetrics,
    StreamEnded,
    Writer,
    peek,
    prepend,
)
from kubedistill_router.metrics import RouterMetrics
from kubedistill_router.openai_api import (
    GenerationRequest,
    Outcome,
    TokenOut,
    models_body,
    parse_request,
)
from kubedistill_router.protocol import SERVED_BY, json_body, parse_json, read_body
from kubedistill_router.vllm_client import VllmGenerator

log = logging.getLogger("kubedistill.router")
SHADOW_MAX_IN_FLIGHT = 4
Generator = TritonGenerator | VllmGenerator


class GenerationHandler:
    """OpenAI-compatible endpoints over a student generation model (and optionally a teacher)."""

    def __init__(self, config: RouterConfig, manifest: ServingManifest, repository: Path, triton: Any,
                 metrics: RouterMetrics, capture: CaptureSink | None = None):
        if manifest.student.kind not in ("generation", "vllm"):
            raise ValueError("serving.json: a causal-lm export needs a generation model for the student "
                             "(kind: generation); re-export the job")
        check_repository(repository)  # a repository that cannot serve fails here, never reports ready
        self.config = config
        self.manifest = manifest
        self.metrics = metrics
        self.capture = capture
        self.gen_metrics = GenerationMetrics(metrics)
        template = repository / manifest.chat_template if manifest.chat_template else None
        self.tokenizer = ChatTokenizer(repository / manifest.tokenizer, template)
        self.signal: Signal = (config.confidence_signal if config.confidence_signal in GENERATION_SIGNALS
                               else manifest.confidence_signal if manifest.confidence_signal in GENERATION_SIGNALS
                               else "token-quantile")
        self.threshold = self._threshold()
        self.context_length = manifest.student.context_length or 2048
        self.remote: OpenAITeacher | None = None
        self.teacher_tokenizer = self.tokenizer
        if config.teacher is not None:
            if config.teacher.protocol != "openai":
                raise ValueError(f"router.teacher.protocol: a causal-lm model escalates to an OpenAI-compatible "
                                 f"endpoint (openai), not {config.teacher.protocol}")
            key = Path(config.teacher_api_key_file).read_text().strip() if config.teacher_api_key_file else None
            self.remote = OpenAITeacher(config.teacher, key)
        elif manifest.teacher is not None and manifest.teacher_tokenizer:
            folder = repository / manifest.teacher_tokenizer
            self.teacher_tokenizer = ChatTokenizer(folder, folder / "chat_template.jinja")
        self.has_teacher = self.remote is not None or manifest.teacher is not None
        if config.mode in ("route", "teacher-only", "shadow") and not self.has_teacher:
            raise ValueError(f"router.mode {config.mode} needs a teacher: the export has none colocated; set "
                             "router.teacher (an OpenAI-compatible endpoint) or use mode student-only")
        self.breaker = CircuitBreaker()
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.generators = self._generators(config, manifest)

    def _generators(self, config: RouterConfig, manifest: ServingManifest) -> dict[str, Generator]:
        """Who streams each model's tokens: our python model, or Triton's vLLM backend (text in)."""
        onnx = TritonGenerator(config.triton_url, config.timeout_seconds)
        decoders: dict[str, Callable[[list[int]], str]] = {manifest.student.name: self.tokenizer.prompt_text}
        if manifest.teacher is not None:
            decoders[manifest.teacher.name] = self.teacher_tokenizer.prompt_text
        vllm = VllmGenerator(config.triton_url, config.timeout_seconds, decoders)
        return {m.name: vllm if m.kind == "vllm" else onnx for m in (manifest.student, manifest.teacher) if m}

    def _threshold(self) -> float | None:
        if self.config.mode != "route":
            return self.config.threshold
        if self.config.threshold is not None:
            return self.config.threshold
        if self.manifest.recommended_threshold is None or self.manifest.confidence_signal != self.signal:
            raise ValueError(f"router.threshold: unset, and serving.json recommends none for the {self.signal} "
                             "signal; set router.threshold (0-1) for mode route")
        return self.manifest.recommended_threshold

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completions),
                web.get("/v1/models", self.models), web.get("/v1/models/{name}", self.model)]

    def describe(self) -> str:
        teacher = self.remote.description if self.remote else "colocated teacher" if self.has_teacher else "none"
        return (f"causal-lm {self.config.model_name!r}, mode {self.config.mode}, signal {self.signal}, threshold "
                f"{self.threshold}, teacher {teacher}")

    async def ready(self) -> bool:
        return await self.generators[self.manifest.student.name].is_ready(self.manifest.student.name)

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        for generator in set(self.generators.values()):
            await generator.close()
        if self.remote is not None:
            await self.remote.close()

    async def models(self, request: web.Request) -> web.Response:
        return json_body(models_body(self.config.model_name, self.manifest.model_version))

    async def model(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.config.model_name:
            raise NotFound(f"model {request.match_info['name']!r} is not served here; this router serves "
                           f"{self.config.model_name!r}")
        return json_body(models_body(self.config.model_name, self.manifest.model_version)["data"][0])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    # --- one request ------------------------------------------------------------------------------------------

    def _with_system_turn(self, req: GenerationRequest) -> GenerationRequest:
        """A chat request without a system turn gets the one the student was trained with (serving.json
        system_prompt; the chat template's default system prompt is text it never read). A remote teacher is
        sent it too when it says something."""
        default = self.manifest.system_prompt
        if not req.chat or default is None or any(m["role"] == "system" for m in req.messages or []):
            return req
        system = {"role": "system", "content": default}
        raw = {**req.raw, "messages": [system, *req.raw["messages"]]} if default else req.raw
        return dataclasses.replace(req, messages=[system, *(req.messages or [])], raw=raw, system_added=True)

    def _prompt(self, req: GenerationRequest, tokenizer: ChatTokenizer) -> list[int]:
        if req.chat:
            messages = req.messages or []
            try:
                text = tokenizer.render(messages)
            except BadRequest:
                if not req.system_added:
                    raise
                text = tokenizer.render(messages[1:])  # a template without a system role, as training rendered it
            ids = tokenizer.encode(text)
        else:
            ids = tokenizer.encode(req.prompt or "", special=True)
        if not ids:
            raise BadRequest("prompt: it has no tokens")
        if len(ids) + req.max_tokens > self.context_length:
            field = "max_tokens" if len(ids) < self.context_length else ("messages" if req.chat else "prompt")
            raise BadRequest(f"{field}: the prompt's {len(ids)} tokens plus max_tokens {req.max_tokens} exceed the "
                             f"model's context of {self.context_length} tokens")
        return ids

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        start = time.perf_counter()
        req = self._with_system_turn(parse_request(parse_json(await read_body(request)), chat=chat,
                                                   model_name=self.config.model_name,
                                                   max_tokens_cap=self.config.max_tokens))
        prompt = self._prompt(req, self.tokenizer)
        writer = Writer(request, req, self.tokenizer, self.gen_metrics, start)
        mode = self.config.mode
        try:
            if mode == "teacher-only":
                outcome = await self._teacher_first(request, req, prompt, writer)
            elif mode == "route":
                outcome = await self._route(request, req, prompt, writer)
            else:
                outcome = await self._student_live(request, req, prompt, writer)
        except ClientGone:
            self.gen_metrics.cancelled.inc()
            request[SERVED_BY] = "none"
            return writer.response or web.Response(status=499)
        except StreamEnded:
            request[SERVED_BY] = "none"
            assert writer.response is not None
            return writer.response
        reason = outcome.escalation_reason or ("degraded" if outcome.degraded else "none")
        self.gen_metrics.overhead.observe(max(0.0, time.perf_counter() - start - request.get(TRITON_WAIT, 0.0)))
        self.gen_metrics.requests.labels(outcome.served_by, reason).inc()
        self.metrics.count_instances(outcome.served_by, outcome.degraded)
        request[SERVED_BY] = outcome.served_by
        assert writer.response is not None
        return writer.response

    def _student(self, request: web.Request, prompt: list[int], req: GenerationRequest) -> AsyncIterator[TokenOut]:
        return self._tokens(request, self.manifest.student.name, "student", prompt, req)

    async def _tokens(self, request: web.Request, model: str, label: str, prompt: list[int],
                      req: GenerationRequest) -> AsyncIterator[TokenOut]:
        """Tokens from Triton, counted and timed; stops (cancelling Triton's request) when the client is gone."""
        last = None
        count = 0
        tokens = self.generators[model].stream(model, prompt, req)
        try:
            while True:
                asked = time.perf_counter()
                try:
                    token = await tokens.__anext__()
                except StopAsyncIteration:
                    return
                finally:  # the wait on Triton, left out of the router's own overhead
                    now = time.perf_counter()
                    request[TRITON_WAIT] = request.get(TRITON_WAIT, 0.0) + now - asked
                if last is not None:
                    self.gen_metrics.inter_token.observe(now - last)
                last = now
                count += 1
                if request.transport is None or request.transport.is_closing():
                    raise ClientGone
                yield token
        finally:
            self.gen_metrics.tokens.labels(label).inc(count)  # once per answer: a token costs no lock
            await tokens.aclose()  # cancels Triton's request when the answer stopped early

    async def _draft(self, request: web.Request, req: GenerationRequest, prompt: list[int],
                     early_stop: bool) -> tuple[list[TokenOut], bool]:
        """The student's whole answer, or (early_stop) as much as it takes to know it fails the threshold;
        returns the tokens and whether the draft was cut short."""
        tokens: list[TokenOut] = []
        text = TextStream(self.tokenizer, req.stop)
        below, allowed = 0, self._allowed_below(req.max_tokens)
        try:
            async for token in self._student(request, prompt, req):
                tokens.append(token)
                text.push(token.id)
                if text.stopped:
                    break
                if early_stop and self.threshold is not None and math.exp(token.logprob) < self.threshold:
                    below += 1
                    if allowed is not None and below > allowed:
                        return tokens, True
        except UpstreamError as error:
            raise Unavailable(f"the student cannot answer: {error}") from None
        return tokens, False

    def _allowed_below(self, max_tokens: int) -> int | None:
        """Tokens below the threshold a draft may hold and still pass, whatever its final length (None: no
        such bound for the signal). With method "lower", the q-quantile of T values is the ⌊q(T−1)⌋-th
        smallest, so more than ⌊q(max_tokens−1)⌋ tokens below the threshold fail for every T ≤ max_tokens."""
        if self.signal == "min-token-probability":
            return 0
        if self.signal == "token-quantile":
            return math.floor(TOKEN_QUANTILE * (max_tokens - 1))
        return None

    async def _route(self, request: web.Request, req: GenerationRequest, prompt: list[int],
                     writer: Writer) -> Outcome:
        tokens, cut = await self._draft(request, req, prompt, early_stop=True)
        confidence = 0.0 if cut else answer_confidence([t.logprob for t in tokens], self.signal)
        assert self.threshold is not None
        if not cut and confidence >= self.threshold:
            outcome = Outcome("student", confidence, self.signal, self.threshold)
            self.metrics.record_routing(1, 0)
            await writer.tokens(self._replay(tokens), len(prompt), outcome, stop=req.stop)
            return outcome
        self.metrics.record_routing(1, 1)
        outcome = Outcome("teacher", None if cut else confidence, self.signal, self.threshold,
                          escalation_reason="low-confidence")
        teacher_text = await self._teacher_answer(request, req, writer, outcome)
        if teacher_text is not None:
            if self.capture is not None and self.capture.spec.escalated:
                draft = self.tokenizer.decode([t.id for t in tokens])
                self._capture("escalated", req, draft, None if cut else confidence, teacher_text)
            return outcome
        if cut:  # the student's answer is needed after all: the whole of it
            tokens, _ = await self._draft(request, req, prompt, early_stop=False)
            confidence = answer_confidence([t.logprob for t in tokens], self.signal)
        fallback = Outcome("student", confidence, self.signal, self.threshold, degraded=True,
                           escalation_reason="low-confidence")
        await writer.tokens(self._replay(tokens), len(prompt), fallback, stop=req.stop)
        return fallback

    async def _teacher_first(self, request: web.Request, req: GenerationRequest, prompt: list[int],
                             writer: Writer) -> Outcome:
        outcome = Outcome("teacher", None, self.signal, self.threshold, escalation_reason="teacher-only")
        if await self._teacher_answer(request, req, writer, outcome) is not None:
            return outcome
        tokens, _ = await self._draft(request, req, prompt, early_stop=False)
        fallback = Outcome("student", answer_confidence([t.logprob for t in tokens], self.signal), self.signal,
                           self.threshold, degraded=True, escalation_reason="teacher-only")
        await writer.tokens(self._replay(tokens), len(prompt), fallback, stop=req.stop)
        return fallback

    async def _teacher_answer(self, request: web.Request, req: GenerationRequest, writer: Writer,
                              outcome: Outcome) -> str | None:
        """The teacher answers through `writer`; returns its text, or None (nothing sent) when it cannot."""
        if not self.breaker.allow():
            self.metrics.teacher_errors.labels("circuit-open").inc()
            return None
        start = time.perf_counter()
        try:
            if self.remote is not None:
                answer = await self.remote.answer(req)
                await writer.text(answer, outcome)
                text = answer.text
            else:
                assert self.manifest.teacher is not None
                teacher_prompt = self._prompt(req, self.teacher_tokenizer)
                stream = self._tokens(request, self.manifest.teacher.name, "teacher", teacher_prompt, req)
                first = await peek(stream)  # a teacher that fails before its first token falls back
                text = await writer.tokens(prepend(first, stream), len(teacher_prompt), outcome, stop=req.stop,
                                           tokenizer=self.teacher_tokenizer)
        except UpstreamError as error:  # before anything was sent (a failure mid-stream ends the stream)
            self.breaker.record_failure()
            self.metrics.teacher_errors.labels(error.reason).inc()
            log.warning("teacher failed, the student answers: %s", error)
            return None
        finally:
            self.metrics.teacher_seconds.observe(time.perf_counter() - start)
        self.breaker.record_success()
        return text

    def _capture(self, kind: CaptureKind, req: GenerationRequest, student_text: str, confidence: float | None,
                 teacher_text: str) -> None:
        assert self.capture is not None
        self.capture.offer(CaptureRecord(
            time=time.time(), kind=kind, task="causal-lm", model=self.config.model_name,
            model_version=self.manifest.model_version, text=None if req.chat else req.prompt,
            messages=req.messages if req.chat else None,
            student=CapturedAnswer(text=student_text, confidence=confidence),
            teacher=CapturedAnswer(text=teacher_text)))

    async def _student_live(self, request: web.Request, req: GenerationRequest, prompt: list[int],
                            writer: Writer) -> Outcome:
        outcome = Outcome("student", None, self.signal, self.threshold)
        collected: list[TokenOut] = []

        async def tokens() -> AsyncIterator[TokenOut]:
            try:
                async for token in self._student(request, prompt, req):
                    collected.append(token)
                    yield token
            except UpstreamError as error:
                raise Unavailable(f"the student cannot answer: {error}") from None

        def finish() -> None:
            outcome.confidence = answer_confidence([t.logprob for t in collected], self.signal)

        stream = tokens()
        first = await peek(stream)  # Triton down: a 503 before anything is sent
        text = await writer.tokens(prepend(first, stream), len(prompt), outcome, stop=req.stop, before_end=finish)
        if self.config.mode == "shadow" and random.random() < self.config.shadow_sample_rate:
            self._shadow(request, req, text, outcome.confidence)
        return outcome

    def _shadow(self, request: web.Request, req: GenerationRequest, student_text: str,
                confidence: float | None) -> None:
        if len(self._shadow_tasks) >= SHADOW_MAX_IN_FLIGHT:
            self.metrics.shadow_dropped.inc()
            return

        async def compare() -> None:
            try:
                if self.remote is not None:
                    teacher_text = (await self.remote.answer(req)).text
                else:
                    assert self.manifest.teacher is not None
                    prompt = self._prompt(req, self.teacher_tokenizer)
                    stream = TextStream(self.teacher_tokenizer, req.stop)
                    teacher = self.manifest.teacher.name
                    async for token in self.generators[teacher].stream(teacher, prompt, req):
                        self.gen_metrics.tokens.labels("teacher").inc()
                        stream.push(token.id)
                        if stream.stopped:
                            break
                    teacher_text = stream.text
            except UpstreamError as error:
                self.metrics.teacher_errors.labels(error.reason).inc()
                self.metrics.shadow_dropped.inc()
                return
            agreed = teacher_text.strip() == student_text.strip()
            self.metrics.record_shadow(1, int(agreed))
            if not agreed and self.capture is not None \
                    and random.random() < self.capture.spec.shadow_disagreement_rate:
                self._capture("shadow-disagreement", req, student_text, confidence, teacher_text)

        task = asyncio.create_task(compare())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    @staticmethod
    async def _replay(tokens: list[TokenOut]) -> AsyncIterator[TokenOut]:
        for token in tokens:
            yield token
