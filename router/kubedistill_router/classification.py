"""Sequence classification: student first, teacher for the items below the confidence threshold; with
router.tiers, a cascade: each tier answers what the one before it was unsure of, the teacher last.

Modes: `route` (escalate what the student is unsure of), `student-only`, `teacher-only` (the student
answers, marked degraded, when the teacher cannot), and `shadow` (the student answers; a sampled share
is also sent to the teacher in the background to track live agreement).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiohttp import web

from kubedistill.api.studentdeployment import RouterTier, fill_tier_thresholds, tier_order_problem
from kubedistill.artifacts import ServedModel, ServingManifest
from kubedistill.capture import CapturedAnswer, CaptureKind, CaptureRecord
from kubedistill.confidence import escalate, softmax
from kubedistill.routerconfig import RouterConfig
from kubedistill_router.batching import Coalescer
from kubedistill_router.breaker import CircuitBreaker
from kubedistill_router.capture import CaptureSink
from kubedistill_router.contract import check_repository
from kubedistill_router.errors import BadRequest, NotFound, Unavailable, UpstreamError
from kubedistill_router.metrics import RouterMetrics
from kubedistill_router.protocol import SERVED_BY, Prediction, json_body, parse_instances, parse_json, read_body
from kubedistill_router.teachers import Answer, ColocatedTeacher, Teacher, answers_from_probs, remote_teacher
from kubedistill_router.tokenizer import TextEncoder
from kubedistill_router.triton import TritonModels
from kubedistill_router.triton_settings import serving_limits

log = logging.getLogger("kubedistill.router")

SHADOW_MAX_IN_FLIGHT = 16  # shadow work never queues up behind a slow teacher


@dataclass(frozen=True)
class Tier:
    """A model of the cascade between the student and the teacher (router.tiers)."""

    name: str  # served_by of its answers
    threshold: float
    model: Teacher


def resolve_threshold(config: RouterConfig, manifest: ServingManifest) -> float | None:
    """The threshold in use: the router's own, else the export's recommended one (for its signal)."""
    if config.mode not in ("route",):
        return config.threshold
    if config.threshold is not None:
        return config.threshold
    if manifest.recommended_threshold is None:
        raise ValueError("router.threshold: unset, and serving.json has no recommended_threshold; "
                         "set router.threshold (0-1) for mode route")
    if manifest.confidence_signal != config.confidence_signal:
        raise ValueError(f"router.threshold: serving.json recommends {manifest.recommended_threshold} for the "
                         f"{manifest.confidence_signal} signal, not {config.confidence_signal}; set "
                         f"router.threshold or use confidenceSignal {manifest.confidence_signal}")
    return manifest.recommended_threshold


def check_tiers(tiers: list[RouterTier], threshold: float | None, repository: Path) -> None:
    """Tiers whose thresholds fall along the cascade (the student's may come from serving.json, so it is checked
    again here) and whose models are in the repository; ValueError naming the field otherwise."""
    problem = tier_order_problem(tiers, threshold)
    if problem is not None:
        raise ValueError(problem)
    for i, tier in enumerate(tiers):
        if tier.model is not None and not (repository / tier.model / "config.pbtxt").is_file():
            raise ValueError(f"router.tiers[{i}].model: the model repository {repository} has no model "
                             f"{tier.model!r}; add it (taking the student's inputs) or fix the name")


def encode_checked(encoder: TextEncoder, texts: list[str]) -> dict[str, np.ndarray]:
    """The texts as tensors; a text the tokenizer cannot take is a 400 naming it, not a 500 for the call."""
    try:
        return encoder.encode(texts)
    except Exception:
        for text in texts:  # which one: the others are fine alone
            try:
                encoder.encode([text])
            except Exception as error:
                raise BadRequest(f"an instance cannot be tokenized ({type(error).__name__}: {error}): "
                                 f"{text[:60]!r}") from None
        raise


class ClassificationHandler:
    """KServe v1 classification endpoints over one student (and optionally a teacher)."""

    def __init__(self, config: RouterConfig, manifest: ServingManifest, repository: Path, triton: TritonModels,
                 metrics: RouterMetrics, capture: CaptureSink | None = None):
        check_repository(repository)  # a repository that cannot serve fails here, never reports ready
        if not manifest.labels:
            raise ValueError("serving.json: a sequence-classification export needs labels")
        self.config = config
        self.manifest = manifest
        self.labels = manifest.labels
        self.signal = config.confidence_signal
        self.threshold = resolve_threshold(config, manifest)
        tiers = fill_tier_thresholds(config.tiers or [], manifest.cascade_thresholds, config.confidence_signal,
                                     "serving.json")
        if isinstance(tiers, str):
            raise ValueError(tiers)
        cascade = manifest.cascade_thresholds or {}
        if config.threshold is None and "student" in cascade and any(t.threshold is None for t in config.tiers or []):
            self.threshold = cascade["student"]  # recommended together with the tiers' thresholds it filled
        check_tiers(tiers, self.threshold, repository)  # before any connection is opened
        self.triton = triton
        self.metrics = metrics
        self.capture = capture
        self.student = manifest.student
        encoder = TextEncoder(repository / manifest.tokenizer, manifest.student.inputs, manifest.max_length)
        self.student_calls = self._model_calls("student", manifest.student, encoder, repository)
        self.teacher = self._teacher(config, manifest, repository)
        self.tiers = [self._tier(tier, encoder, repository) for tier in tiers]
        self.breaker = CircuitBreaker()
        self._last_teacher_error: BaseException | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    def _teacher(self, config: RouterConfig, manifest: ServingManifest, repository: Path) -> Teacher | None:
        if config.teacher is not None:
            return remote_teacher(config.teacher, self.labels, self.signal, config.teacher_api_key_file)
        if manifest.teacher is not None:
            folder = repository / (manifest.teacher_tokenizer or manifest.tokenizer)
            encoder = TextEncoder(folder, manifest.teacher.inputs, manifest.max_length)
            calls = self._model_calls("teacher", manifest.teacher, encoder, repository)
            return ColocatedTeacher(calls, f"Triton model {manifest.teacher.name!r}", self.labels, self.signal)
        if config.mode != "student-only":
            raise ValueError(f"router.mode {config.mode} needs a teacher: the model repository has none; set "
                             "router.teacher (a remote endpoint) or use mode student-only")
        return None

    def _tier(self, tier: RouterTier, encoder: TextEncoder, repository: Path) -> Tier:
        """A model between the student and the teacher: in this Triton (fed like the student), or remote."""
        assert tier.threshold is not None  # filled from serving.json before
        if tier.endpoint is not None:
            return Tier(tier.name, tier.threshold, remote_teacher(tier.endpoint, self.labels, self.signal, None))
        assert tier.model is not None
        served = self.student.model_copy(update={"name": tier.model})
        calls = self._model_calls(tier.name, served, encoder, repository)
        return Tier(tier.name, tier.threshold, ColocatedTeacher(calls, f"Triton model {tier.model!r}", self.labels,
                                                                self.signal))

    def _model_calls(self, role: str, served: ServedModel, encoder: TextEncoder, repository: Path) -> Coalescer:
        """Tokenize-and-infer calls to one model in Triton, coalesced as the config says."""
        max_batch, instances = serving_limits(repository, served)
        in_flight = None
        if self.config.coalesce:  # by default every instance has a call running and one waiting
            in_flight = self.config.max_calls_in_flight or 2 * instances

        async def infer(texts: list[str]) -> np.ndarray:
            return await self.triton.infer(served.name, encode_checked(encoder, texts), served.output)

        return Coalescer(infer, max_batch, in_flight, self.metrics.call_sizes(role))

    def routes(self) -> list[web.RouteDef]:
        # Model names hold no colon (DNS labels), so `GET …/NAME:predict` is the predict path with the wrong method
        # (405, Allow: POST), not a status request for a model called `NAME:predict`.
        return [web.get("/v1/models/{name:[^{}/:]+}", self.model_status),
                web.post("/v1/models/{name}:predict", self.predict)]

    def describe(self) -> str:
        teacher = self.teacher.description if self.teacher else "none"
        calls = self.student_calls
        coalescing = (f"up to {calls.max_in_flight} calls in flight per model" if calls.max_in_flight else "off")
        return (f"model {self.config.model_name!r} ({self.manifest.model_version}), mode {self.config.mode}, "
                f"signal {self.signal}, threshold {self.threshold}, teacher {teacher}, coalescing {coalescing} "
                f"(batches of up to {calls.max_batch})")

    # --- HTTP -------------------------------------------------------------------------------------------

    def _check_name(self, request: web.Request) -> None:
        name = request.match_info["name"]
        if name != self.config.model_name:
            raise NotFound(f"no model {name!r}; this router serves {self.config.model_name!r}")

    async def model_status(self, request: web.Request) -> web.Response:
        self._check_name(request)
        ready = await self.ready()
        return web.json_response({"name": self.config.model_name, "ready": ready,
                                  "version": self.manifest.model_version}, status=200 if ready else 503)

    async def predict(self, request: web.Request) -> web.Response:
        self._check_name(request)
        texts = parse_instances(parse_json(await read_body(request)), self.config.max_instances)
        predictions = await self.classify(texts)
        served = {p.served_by for p in predictions}
        request[SERVED_BY] = served.pop() if len(served) == 1 else "mixed"
        return json_body({"predictions": [p.to_json() for p in predictions]})

    async def ready(self) -> bool:
        # The student alone decides: without the teacher every item is still answered (degraded).
        return await self.triton.is_ready(self.student.name)

    # --- routing ----------------------------------------------------------------------------------------

    async def classify(self, texts: list[str]) -> list[Prediction]:
        if self.config.mode == "teacher-only":
            answers = await self._ask_teacher(texts)
            if answers is not None:
                return self._record([Prediction(a.label, a.confidence, "teacher") for a in answers])
        probs = await self._ask_student(texts)
        student = answers_from_probs(probs, self.labels, self.signal)
        degraded = self.config.mode == "teacher-only"
        predictions = [Prediction(a.label, a.confidence, "student", degraded) for a in student]
        if self.config.mode == "route":
            assert self.threshold is not None
            below = [int(i) for i in np.flatnonzero(escalate(probs, self.signal, self.threshold))]
            self.metrics.record_routing(len(texts), len(below))
            for tier in self.tiers:  # each answers what the tier before it was unsure of
                if not below:
                    break
                below = await self._climb(tier, texts, below, predictions)
            if below:
                answers = await self._ask_teacher([texts[i] for i in below])
                for j, i in enumerate(below):
                    a = answers[j] if answers is not None else None
                    before = predictions[i]  # the last tier's answer stands, marked degraded
                    predictions[i] = (Prediction(a.label, a.confidence, "teacher") if a is not None
                                      else Prediction(before.label, before.confidence, before.served_by, True))
                if answers is not None and self.capture is not None and self.capture.spec.escalated:
                    for j, i in enumerate(below):  # the served student's answer: what the next student replaces
                        self._capture("escalated", texts[i], student[i], answers[j])
        elif self.config.mode == "shadow":
            self._maybe_shadow(texts, student)
        return self._record(predictions)

    async def _climb(self, tier: Tier, texts: list[str], below: list[int], predictions: list[Prediction]) -> list[int]:
        """Ask `tier` for the items `below` the previous tier's threshold; its answers replace theirs, and the
        items it is unsure of (or cannot answer) go on. A tier that fails passes every item on."""
        start = time.perf_counter()
        try:
            answers = await tier.model.classify([texts[i] for i in below])
        except BadRequest as error:
            log.warning("tier %s refused the request's texts: %s", tier.name, error.message)
            return below
        except Exception as error:  # the next tier (the teacher last) still answers
            reason = error.reason if isinstance(error, UpstreamError) else "error"
            self.metrics.teacher_errors.labels(f"{tier.name}:{reason}").inc()
            log.warning("tier %s failed (%d items): %s: %s", tier.name, len(below), type(error).__name__, error)
            return below
        finally:
            self.metrics.tier_seconds.labels(tier.name).observe(time.perf_counter() - start)
        unsure = []
        for a, i in zip(answers, below, strict=True):
            predictions[i] = Prediction(a.label, a.confidence, tier.name)
            if a.confidence is None or a.confidence < tier.threshold:
                unsure.append(i)
        return unsure

    def _record(self, predictions: list[Prediction]) -> list[Prediction]:
        counts = Counter((p.served_by, p.degraded) for p in predictions)
        for (served_by, degraded), count in counts.items():
            self.metrics.count_instances(served_by, degraded, count)
        return predictions

    async def _ask_student(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        try:
            logits = await self.student_calls(texts)
        except UpstreamError as error:
            raise Unavailable(f"the student model is unavailable: {error}") from None
        finally:
            self.metrics.student_seconds.observe(time.perf_counter() - start)
        return softmax(logits)

    async def _ask_teacher(self, texts: list[str]) -> list[Answer] | None:
        """The teacher's answers, or None when it cannot answer (the caller falls back to the student)."""
        if self.teacher is None:
            return None
        if not self.breaker.allow():
            self.metrics.teacher_errors.labels("circuit-open").inc()
            return None
        start = time.perf_counter()
        try:
            answers = await self.teacher.classify(texts)
        except BadRequest as error:  # the request's own texts, not the teacher: no breaker count
            log.warning("teacher call refused the request's texts: %s", error.message)
            return None
        except Exception as error:  # whatever the teacher did, the student still answers
            if error is not self._last_teacher_error:  # requests that shared a failed call count it once
                self._last_teacher_error = error
                reason = error.reason if isinstance(error, UpstreamError) else "error"
                self.breaker.record_failure()
                self.metrics.teacher_errors.labels(reason).inc()
                log.warning("teacher call failed (%d items): %s: %s", len(texts), type(error).__name__, error)
            return None
        finally:
            self.metrics.teacher_seconds.observe(time.perf_counter() - start)
            self.metrics.circuit_open.set(int(self.breaker.is_open))
        self.breaker.record_success()
        self.metrics.circuit_open.set(0)
        return answers

    def _capture(self, kind: CaptureKind, text: str, student: Answer, teacher: Answer) -> None:
        assert self.capture is not None
        self.capture.offer(CaptureRecord(
            time=time.time(), kind=kind, task="sequence-classification", model=self.config.model_name,
            model_version=self.manifest.model_version, text=text,
            student=CapturedAnswer(label=student.label, confidence=student.confidence),
            teacher=CapturedAnswer(label=teacher.label, confidence=teacher.confidence)))

    def _maybe_shadow(self, texts: list[str], student: list[Answer]) -> None:
        if random.random() >= self.config.shadow_sample_rate:
            return
        if len(self._shadow_tasks) >= SHADOW_MAX_IN_FLIGHT:
            self.metrics.shadow_dropped.inc()
            return
        task = asyncio.get_running_loop().create_task(self._shadow(texts, student))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, texts: list[str], student: list[Answer]) -> None:
        answers = await self._ask_teacher(texts)
        if answers is None:
            self.metrics.shadow_dropped.inc()
            return
        agreed = sum(a.label == s.label for a, s in zip(answers, student, strict=True))
        self.metrics.record_shadow(len(texts), agreed)
        if self.capture is not None and agreed < len(texts):
            rate = self.capture.spec.shadow_disagreement_rate
            for text, mine, theirs in zip(texts, student, answers, strict=True):
                if mine.label != theirs.label and random.random() < rate:
                    self._capture("shadow-disagreement", text, mine, theirs)

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        await self.student_calls.close()
        for tier in self.tiers:
            await tier.model.close()
        if self.teacher is not None:
            await self.teacher.close()
