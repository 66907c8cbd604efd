"""Teachers the router escalates to: the one colocated in Triton, or a remote endpoint speaking KServe v1,
KServe v2 or an OpenAI-compatible chat API. Each answers a list of texts with a label and a confidence
per text, or raises UpstreamError."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numpy as np

from kubedistill.confidence import Signal, confidence, softmax
from kubedistill.routerconfig import TeacherEndpointRef
from kubedistill_router.batching import Coalescer
from kubedistill_router.errors import UpstreamError


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: float | None


class Teacher(Protocol):
    description: str

    async def classify(self, texts: list[str]) -> list[Answer]: ...

    async def close(self) -> None: ...


def answers_from_probs(probs: np.ndarray, labels: list[str], signal: Signal) -> list[Answer]:
    """argmax label and the configured confidence signal, per row."""
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise UpstreamError(f"expected scores of shape (n, {len(labels)}), got {probs.shape}")
    conf = confidence(probs, signal)
    return [Answer(labels[int(i)], float(c)) for i, c in zip(probs.argmax(axis=1), conf, strict=True)]


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Probabilities as they are; anything else (logits) through a softmax."""
    scores = np.asarray(scores, dtype=np.float64)
    rows_sum_to_one = np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3) and (scores >= 0).all()
    return scores if rows_sum_to_one else softmax(scores)


class ColocatedTeacher:
    """The `teacher` model in the same Triton server: `infer` tokenizes with its own tokenizer and calls it."""

    def __init__(self, infer: Coalescer, description: str, labels: list[str], signal: Signal):
        self.infer = infer
        self.description = description
        self.labels = labels
        self.signal = signal

    async def classify(self, texts: list[str]) -> list[Answer]:
        return answers_from_probs(softmax(await self.infer(texts)), self.labels, self.signal)

    async def close(self) -> None:
        await self.infer.close()


class RemoteTeacher:
    """Shared HTTP plumbing: one session (connection pool) and a timeout on every call."""

    def __init__(self, endpoint: TeacherEndpointRef, labels: list[str], signal: Signal, api_key: str | None):
        self.endpoint = endpoint
        self.labels = labels
        self.signal = signal
        self.api_key = api_key
        self.base = endpoint.url.rstrip("/")
        self.description = f"{endpoint.protocol} teacher at {self.base}"
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout_seconds))
        return self._session

    async def post(self, url: str, body: dict[str, Any]) -> Any:
        try:
            async with asyncio.timeout(self.endpoint.timeout_seconds):
                async with self._get_session().post(url, json=body) as response:
                    text = await response.text()
                    if response.status != 200:
                        raise UpstreamError(f"{self.description} answered HTTP {response.status}: {text[:200]}")
                    return json.loads(text)
        except TimeoutError:
            raise UpstreamError(f"{self.description} did not answer within {self.endpoint.timeout_seconds:g} s",
                                "timeout") from None
        except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UpstreamError(f"{self.description} failed: {type(error).__name__}: {error}") from None

    def answer(self, item: Any) -> Answer:
        """One prediction in any of the shapes classifiers answer with: a label, a class index, a list of
        scores, or an object with `label` (and `confidence`) or `probabilities`/`scores`."""
        if isinstance(item, dict):
            scores = item.get("probabilities", item.get("scores"))
            if isinstance(scores, list):
                return self.answer(scores)
            label = self._label(item.get("label"))
            value = item.get("confidence")
            return Answer(label, float(value) if isinstance(value, int | float) else None)
        if isinstance(item, list) and item and all(isinstance(v, int | float) for v in item):
            return answers_from_probs(as_probabilities(np.array([item])), self.labels, self.signal)[0]
        return Answer(self._label(item), None)

    def _label(self, value: Any) -> str:
        # A label is matched by the name it spells first (labels "1".."5": the answer 5 is "5", not the sixth
        # class), as the data stage does; an integer that names no label is a class index.
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in self.labels:
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.labels):
            return self.labels[value]
        if isinstance(value, str) and (not self.labels or value in self.labels):
            return value
        raise UpstreamError(f"{self.description} answered {value!r}, not one of the labels {self.labels}")

    async def classify(self, texts: list[str]) -> list[Answer]:
        """Each protocol's subclass asks its endpoint."""
        raise NotImplementedError

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class KServeV1Teacher(RemoteTeacher):
    """POST {url}/v1/models/{model}:predict {"instances": [...]} (or {url} itself when no model is set)."""

    async def classify(self, texts: list[str]) -> list[Answer]:
        model = self.endpoint.model
        url = f"{self.base}/v1/models/{model}:predict" if model else self.base
        body = await self.post(url, {"instances": texts})
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(texts):
            raise UpstreamError(f"{self.description} answered no list of {len(texts)} predictions")
        return [self.answer(p) for p in predictions]


class KServeV2Teacher(RemoteTeacher):
    """POST {url}/v2/models/{model}/infer with a BYTES input `text`; the first output holds labels (BYTES)
    or scores (shape [n, classes])."""

    async def classify(self, texts: list[str]) -> list[Answer]:
        model = self.endpoint.model
        url = f"{self.base}/v2/models/{model}/infer" if model else self.base
        body = await self.post(url, {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                                  "data": texts}]})
        try:
            output = body["outputs"][0]
            data, shape = output["data"], output["shape"]
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(f"{self.description} answered no outputs") from None
        if output.get("datatype") == "BYTES":
            answers = [self.answer(label) for label in data]
        else:
            scores = np.asarray(data, dtype=np.float64).reshape(shape)
            answers = answers_from_probs(as_probabilities(scores), self.labels, self.signal)
        if len(answers) != len(texts):
            raise UpstreamError(f"{self.description} answered {len(answers)} items for {len(texts)} texts")
        return answers


class OpenAITeacher(RemoteTeacher):
    """An OpenAI-compatible chat completions endpoint, asked to pick one label per text (temperature 0).
    The confidence is the probability of the answer's first token, when the endpoint returns logprobs."""

    def prompt(self) -> str:
        return ("Classify the user's text into exactly one of these labels: " + ", ".join(self.labels)
                + ". Answer with the label only.")

    async def classify(self, texts: list[str]) -> list[Answer]:
        url = f"{self.base}/chat/completions" if self.base.endswith("/v1") else f"{self.base}/v1/chat/completions"
        return list(await asyncio.gather(*(self._one(url, text) for text in texts)))

    async def _one(self, url: str, text: str) -> Answer:
        body = await self.post(url, {
            "model": self.endpoint.model,
            "messages": [{"role": "system", "content": self.prompt()}, {"role": "user", "content": text}],
            "temperature": 0, "max_tokens": 16, "logprobs": True,
        })
        try:
            choice = body["choices"][0]
            content = str(choice["message"]["content"]).strip().strip(".").strip()
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(f"{self.description} answered no choices") from None
        label = next((lab for lab in self.labels if lab.lower() == content.lower()), None) \
            or next((lab for lab in self.labels if content.lower().startswith(lab.lower())), None)
        if label is None:
            raise UpstreamError(f"{self.description} answered {content[:80]!r}, not one of {self.labels}")
        logprobs = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("logprob")
        return Answer(label, math.exp(logprobs) if isinstance(logprobs, int | float) else None)


REMOTE = {"kserve-v1": KServeV1Teacher, "kserve-v2": KServeV2Teacher, "openai": OpenAITeacher}


def remote_teacher(endpoint: TeacherEndpointRef, labels: list[str], signal: Signal,
                   api_key_file: str | None) -> RemoteTeacher:
    if endpoint.protocol == "openai" and not endpoint.model:
        raise ValueError("router.teacher.model: an openai teacher needs the model name to ask for")
    api_key = None
    if api_key_file:
        path = Path(api_key_file)
        if not path.exists():
            raise ValueError(f"router.teacher.apiKeySecretRef: the key file {path} is not mounted")
        api_key = path.read_text().strip()
    return REMOTE[endpoint.protocol](endpoint, labels, signal, api_key)
