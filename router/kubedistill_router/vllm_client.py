"""A generation model on Triton's vLLM backend (`triton.backend: vllm`), as a token stream like TritonGenerator's.

The backend takes text, not token ids: the router's prompt ids are decoded back to the prompt text (the chat
template already rendered), and vLLM tokenizes it again with the same tokenizer (a template that starts with
the BOS token may get a second one: vLLM adds special tokens to a text prompt). Each streamed response holds
the new tokens' log-probabilities as JSON (`logprobs`, the sampled token first, then the top ones), from
which the router takes each token's id, its log-probability (the confidence of the draft) and the top-k; the
last response is the one whose `finish_reason` is set. A backend that returns no `logprobs` (Triton images
before the release that added the output) fails the request with an UpstreamError that says so: without
log-probabilities the router cannot judge the draft. Tensors: kubedistill.artifacts.VLLM_INPUTS/OUTPUTS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from kubedistill_router.errors import UpstreamError
from kubedistill_router.generation_models import TritonGenerator
from kubedistill_router.openai_api import GenerationRequest, TokenOut


def sampling_parameters(request: GenerationRequest) -> dict[str, Any]:
    """vLLM SamplingParams for `request`. `logprobs` 0 still returns the sampled token's; stop sequences are the
    router's own (it cancels the stream), so vLLM is not given them."""
    params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                              "top_p": request.top_p, "logprobs": request.top_logprobs}
    if request.seed is not None:
        params["seed"] = request.seed % (1 << 31)
    return params


def parse_logprobs(text: bytes | str, top: int) -> list[TokenOut]:
    """The tokens of one response from its `logprobs` JSON: [{token_id: {logprob, rank, decoded_token}}, ...].

    The sampled token is each entry's first key (vLLM puts it first; JSON keeps the order); the top-k are
    the entries by rank. Raises UpstreamError for anything else (`null`: logprobs were not computed)."""
    try:
        entries = json.loads(text)
        tokens = []
        for entry in entries:
            items = [(int(k), float(v["logprob"]), int(v.get("rank") or 0)) for k, v in entry.items()]
            sampled_id, sampled_logprob, _ = items[0]
            ranked = sorted(items, key=lambda item: item[2])
            tokens.append(TokenOut(sampled_id, sampled_logprob, [(i, lp) for i, lp, _ in ranked[:top]]))
        return tokens
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise UpstreamError(f"the vLLM backend's logprobs output is not the expected JSON ({error}): "
                            f"{str(text)[:120]}") from None


class VllmGenerator(TritonGenerator):
    """Token streams from vLLM-backend models of one Triton server (gRPC). `decoders` gives, per model, the text
    of prompt ids (its own tokenizer's decode)."""

    def __init__(self, url: str, timeout: float, decoders: dict[str, Callable[[list[int]], str]]):
        super().__init__(url, timeout)  # the timeout: for the first token, and between responses
        self.decoders = decoders

    def inputs(self, model: str, prompt: list[int], request: GenerationRequest) -> list[Any]:
        from tritonclient.grpc.aio import InferInput

        def tensor(name: str, value: Any, dtype: str) -> Any:
            array = np.array([value], dtype=np.object_ if dtype == "BYTES" else bool)
            item = InferInput(name, [1], dtype)
            item.set_data_from_numpy(array)
            return item

        text = self.decoders[model](prompt)
        return [
            tensor("text_input", text.encode(), "BYTES"),
            tensor("stream", True, "BOOL"),
            tensor("sampling_parameters", json.dumps(sampling_parameters(request)).encode(), "BYTES"),
            tensor("exclude_input_in_output", True, "BOOL"),
            tensor("return_finish_reason", True, "BOOL"),
            tensor("return_logprobs", True, "BOOL"),
        ]

    def read(self, model: str, result: Any, request: GenerationRequest) -> tuple[list[TokenOut], bool]:
        """One response's tokens (the backend's `logprobs` JSON), and whether it was the last (its
        `finish_reason` is set). Leaving early cancels the request in Triton, which aborts it in vLLM."""
        logprobs = result.as_numpy("logprobs")
        if logprobs is None:
            raise UpstreamError(f"Triton model {model!r} returned no logprobs: its vLLM backend predates "
                                "the `return_logprobs` input; use a newer tritonserver vllm image")
        tokens = list(parse_logprobs(logprobs.reshape(-1)[0], request.top_logprobs))
        reason = result.as_numpy("finish_reason")
        return tokens, reason is not None and _text(reason.reshape(-1)[0]) not in ("", "None")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
