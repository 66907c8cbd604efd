"""Triton through tritonclient's asyncio clients (gRPC or HTTP): one client per process, so connections
are reused; every call has a timeout; failures become UpstreamError."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from kubedistill_router.errors import UpstreamError


class TritonModels:
    """Inference and readiness of the models in one Triton server."""

    def __init__(self, url: str, protocol: str, timeout: float):
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        if protocol == "grpc":
            import tritonclient.grpc.aio as client
        else:
            import tritonclient.http.aio as client
        self._module = client
        self._client: Any = None

    def _get_client(self) -> Any:
        # Created lazily, inside the running event loop the clients bind to.
        if self._client is None:
            self._client = self._module.InferenceServerClient(self.url)
        return self._client

    async def infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        client = self._get_client()
        tensors = []
        for name, array in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [self._module.InferRequestedOutput(output)]
        try:
            async with asyncio.timeout(self.timeout):  # no extra task per call, unlike wait_for
                result = await client.infer(model, tensors, outputs=outputs)
        except TimeoutError:
            raise UpstreamError(f"Triton model {model!r} did not answer within {self.timeout:g} s", "timeout") \
                from None
        except Exception as error:  # tritonclient raises its own and transport exceptions
            raise UpstreamError(f"Triton model {model!r} at {self.url} failed: {_describe(error)}") from None
        logits = result.as_numpy(output)
        if logits is None:
            raise UpstreamError(f"Triton model {model!r} returned no output {output!r}")
        return logits

    async def is_ready(self, model: str) -> bool:
        try:
            return bool(await asyncio.wait_for(self._get_client().is_model_ready(model), self.timeout))
        except Exception:  # unreachable, timed out or refused: not ready
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _describe(error: Exception) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return " ".join(str(text).split())[:300] or type(error).__name__
