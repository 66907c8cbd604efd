"""Triton over gRPC or HTTP: one client per process, so connections are reused; every call has a timeout;
failures become UpstreamError.

gRPC (the default) goes straight to Triton's generated service stub: the request protobuf is built in one
step from the tokenized arrays and the output is read from the raw bytes, without tritonclient's per-call
InferInput / InferResult objects; the timeout is the call's gRPC deadline, kept by gRPC's core rather than an
asyncio timer. HTTP goes through tritonclient's asyncio HTTP client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from kubedistill_router.errors import UpstreamError

MAX_MESSAGE_BYTES = 2**31 - 1  # as tritonclient's own gRPC client: large batches of long texts fit
# gRPC waits longer between reconnect attempts the longer a server stays away (1 s, then ×1.6 up to 120 s): after
# Triton was down for 15 s, the channel tried again only 6.6 s after Triton's return, and the router stayed unready
# (503) that long. Triton runs in the same pod: trying again every second at most costs nothing.
RECONNECT_BACKOFF_MS = 1000


class TritonModels:
    """Inference and readiness of the models in one Triton server."""

    def __init__(self, url: str, protocol: str, timeout: float):
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self._client: Any = None  # the gRPC channel or the HTTP client, created lazily inside the running loop

    async def infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        if self.protocol == "grpc":
            return await self._infer_grpc(model, inputs, output)
        return await self._infer_http(model, inputs, output)

    async def is_ready(self, model: str) -> bool:
        try:
            if self.protocol == "grpc":
                from tritonclient.grpc import service_pb2

                response = await self._grpc().ModelReady(service_pb2.ModelReadyRequest(name=model),
                                                         timeout=self.timeout)
                return bool(response.ready)
            return bool(await asyncio.wait_for(self._http().is_model_ready(model), self.timeout))
        except Exception:  # unreachable, timed out or refused: not ready
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # --- gRPC ---------------------------------------------------------------------------------------------

    def _grpc(self) -> Any:
        if self._client is None:
            import grpc
            from tritonclient.grpc import service_pb2, service_pb2_grpc

            self._pb = service_pb2
            self._client = grpc.aio.insecure_channel(self.url, options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)])
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._client)
            self._deadline_exceeded = grpc.StatusCode.DEADLINE_EXCEEDED
        return self._stub

    async def _infer_grpc(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        stub = self._grpc()
        request = self._pb.ModelInferRequest(model_name=model)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype="INT64", shape=array.shape)
            request.raw_input_contents.append(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        request.outputs.add(name=output)
        try:
            response = await stub.ModelInfer(request, timeout=self.timeout)
        except Exception as error:  # grpc.aio.AioRpcError, or a transport failure
            code = getattr(error, "code", None)
            if callable(code) and code() == self._deadline_exceeded:
                raise UpstreamError(f"Triton model {model!r} did not answer within {self.timeout:g} s",
                                    "timeout") from None
            raise UpstreamError(f"Triton model {model!r} at {self.url} failed: {_describe(error)}") from None
        for index, tensor in enumerate(response.outputs):
            if tensor.name == output:
                return _from_raw(model, tensor, response.raw_output_contents, index)
        raise UpstreamError(f"Triton model {model!r} returned no output {output!r}")

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _http(self) -> Any:
        if self._client is None:
            import tritonclient.http.aio as client

            self._module = client
            self._client = client.InferenceServerClient(self.url)
        return self._client

    async def _infer_http(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        client = self._http()
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


def _from_raw(model: str, tensor: Any, raw: Any, index: int) -> np.ndarray:
    """An output tensor of a gRPC response as an array (Triton sends numeric outputs as raw bytes)."""
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(tensor.datatype)
    if dtype is None or dtype is np.object_ or index >= len(raw):
        raise UpstreamError(f"Triton model {model!r}: output {tensor.name!r} ({tensor.datatype}) is not a numeric "
                            "tensor in raw form")
    return np.frombuffer(raw[index], dtype=dtype).reshape(tuple(tensor.shape))


def _describe(error: Exception) -> str:
    details = getattr(error, "details", None)  # gRPC errors
    message = getattr(error, "message", None)  # tritonclient's
    text = details() if callable(details) else message() if callable(message) else str(error)
    return " ".join(str(text).split())[:300] or type(error).__name__
