"""Who generates: a Triton generation model (decoupled, one token per response, over gRPC streaming) and a
remote OpenAI-compatible teacher. Failures become UpstreamError; a stream that is left early is cancelled
in Triton (no orphaned generation)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from kubedistill.api.studentdeployment import TeacherEndpointRef
from kubedistill_router.errors import UpstreamError
from kubedistill_router.openai_api import GenerationRequest, TokenOut
from kubedistill_router.triton import _describe


class TritonGenerator:
    """Token streams from the generation models of one Triton server (gRPC)."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout  # for the first token, and between tokens
        self._client: Any = None

    def _grpc(self) -> Any:
        if self._client is None:
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(self.url)
        return self._client

    async def is_ready(self, model: str) -> bool:
        try:
            return bool(await asyncio.wait_for(self._grpc().is_model_ready(model), self.timeout))
        except Exception:  # unreachable, timed out or refused: not ready
            return False

    def inputs(self, model: str, prompt: list[int], request: GenerationRequest) -> list[Any]:
        """The request's tensors for the python-backend generation model (GENERATION_INPUTS)."""
        from tritonclient.grpc.aio import InferInput

        def tensor(name: str, array: np.ndarray, dtype: str) -> Any:
            item = InferInput(name, list(array.shape), dtype)
            item.set_data_from_numpy(array)
            return item

        return [
            tensor("input_ids", np.asarray(prompt, dtype=np.int64), "INT64"),
            tensor("max_tokens", np.array([request.max_tokens], dtype=np.int32), "INT32"),
            tensor("temperature", np.array([request.temperature], dtype=np.float32), "FP32"),
            tensor("top_p", np.array([request.top_p], dtype=np.float32), "FP32"),
            tensor("seed", np.array([-1 if request.seed is None else request.seed % (1 << 31)], dtype=np.int64),
                   "INT64"),
            tensor("top_logprobs", np.array([request.top_logprobs], dtype=np.int32), "INT32"),
        ]

    def read(self, model: str, result: Any, request: GenerationRequest) -> tuple[list[TokenOut], bool]:
        """One response's tokens, and whether it was the last: one token per response, then the model's end
        marker (a negative id)."""
        token = int(result.as_numpy("token_id")[0])
        if token < 0:
            return [], True
        top_ids = result.as_numpy("top_ids")
        top_values = result.as_numpy("top_logprobs_values")
        return [TokenOut(token, float(result.as_numpy("logprob")[0]),
                         [(int(i), float(v)) for i, v in zip(top_ids, top_values, strict=True)])], False

    async def stream(self, model: str, prompt: list[int], request: GenerationRequest) -> AsyncGenerator[TokenOut, None]:
        """The tokens `model` generates for `prompt`, as they come (`inputs` and `read` speak the model's
        tensors). Leaving the loop early (a stop sequence, a failed confidence bound, a client gone) cancels the
        request in Triton."""
        inputs = self.inputs(model, prompt, request)
        done = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs}
            await done.wait()  # keep the stream open until the last response has come

        responses = self._grpc().stream_infer(requests())
        iterator = responses.__aiter__()
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.timeout):
                        result, error = await iterator.__anext__()
                except StopAsyncIteration:
                    raise UpstreamError(f"Triton model {model!r} closed the stream before its last token") from None
                except TimeoutError:
                    raise UpstreamError(f"Triton model {model!r} sent no token within {self.timeout:g} s",
                                        "timeout") from None
                except UpstreamError:
                    raise
                except Exception as exc:  # transport failures
                    raise UpstreamError(f"Triton model {model!r} at {self.url} failed: {_describe(exc)}") from None
                if error is not None:
                    raise UpstreamError(f"Triton model {model!r} at {self.url} failed: {_describe(error)}")
                tokens, last = self.read(model, result, request)
                for token in tokens:
                    yield token
                if last:
                    finished = True
                    return
        finally:
            done.set()
            if not finished:
                responses.cancel()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


@dataclass
class TextAnswer:
    """A remote teacher's answer: text only (its tokens are its own)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class OpenAITeacher:
    """A remote OpenAI-compatible endpoint asked the same request (its own model name, no streaming)."""

    def __init__(self, endpoint: TeacherEndpointRef, api_key: str | None):
        self.endpoint = endpoint
        self.base = endpoint.url.rstrip("/")
        self.api_key = api_key
        self.description = f"openai teacher at {self.base}"
        self._session: aiohttp.ClientSession | None = None

    async def answer(self, request: GenerationRequest) -> TextAnswer:
        body = {k: v for k, v in request.raw.items() if k not in ("stream", "stream_options", "logprobs",
                                                                  "top_logprobs")}
        body["stream"] = False
        if self.endpoint.model:
            body["model"] = self.endpoint.model
        path = "/chat/completions" if request.chat else "/completions"
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        try:
            async with asyncio.timeout(self.endpoint.timeout_seconds):
                async with self._session.post(self.base + path, json=body) as response:
                    text = await response.text()
                    if response.status != 200:
                        raise UpstreamError(f"{self.description} answered HTTP {response.status}: {text[:200]}")
                    doc = json.loads(text)
        except TimeoutError:
            raise UpstreamError(f"{self.description} did not answer within {self.endpoint.timeout_seconds:g} s",
                                "timeout") from None
        except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UpstreamError(f"{self.description} failed: {type(error).__name__}: {error}") from None
        try:
            choice = doc["choices"][0]
            content = choice["message"]["content"] if request.chat else choice["text"]
            usage = doc.get("usage") or {}
            return TextAnswer(str(content or ""), str(choice.get("finish_reason") or "stop"),
                              int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        except (KeyError, IndexError, TypeError, ValueError):
            raise UpstreamError(f"{self.description} answered without choices[0]'s text") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
