"""Bad requests, a full router, and Triton going away: clear answers, never an HTML 500."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from aiohttp import ClientSession, web
from kubedistill_router.errors import UpstreamError
from kubedistill_router.local.triton import free_port

from .conftest import TEXTS, loopback_server, router_config, running_router

pytestmark = pytest.mark.slow

MALFORMED = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"inputs": ["text"]}', 'missing field "instances"'),
    (b'{"instances": "one text"}', '"instances" must be a list of strings, got a string'),
    (b'{"instances": []}', '"instances" is empty'),
    (b'{"instances": ["ok", 3]}', '"instances"[1] must be a string, got a number'),
    (b'{"instances": ["ok", {"text": "x"}]}', '"instances"[1] must be a string, got an object'),
    (b'{"instances": ["ok", "   "]}', '"instances"[1] is empty'),
    (json.dumps({"instances": ["word"] * 9}).encode(), "more than the limit of 8"),
]


async def test_every_malformed_request_is_a_400_naming_the_problem(triton, model_repository):
    config = router_config(model_repository, triton.grpc_url, mode="student-only", max_instances=8)
    async with running_router(config) as base, ClientSession() as session:
        for body, message in MALFORMED:
            async with session.post(f"{base}/v1/models/news:predict", data=body) as response:
                assert response.status == 400, body
                assert message in (await response.json())["error"], body
        # The router still serves after all of them.
        async with session.post(f"{base}/v1/models/news:predict", json={"instances": ["fine"]}) as response:
            assert response.status == 200


async def test_body_size_limit_and_unknown_model(triton, model_repository):
    config = router_config(model_repository, triton.grpc_url, mode="student-only", max_body_bytes=2048)
    async with running_router(config) as base, ClientSession() as session:
        async with session.post(f"{base}/v1/models/news:predict",
                                json={"instances": ["x" * 4096]}) as response:
            assert response.status == 413
            assert "over the limit of 2048 bytes" in (await response.json())["error"]
        async with session.post(f"{base}/v1/models/other:predict", json={"instances": ["x"]}) as response:
            assert response.status == 404
            assert "serves 'news'" in (await response.json())["error"]
        async with session.get(f"{base}/v1/models/news") as response:
            assert response.status == 200
            assert (await response.json())["ready"] is True
        async with session.get(f"{base}/v1/models/news:predict") as response:  # the predict path, the wrong method
            assert (response.status, response.headers["Allow"]) == (405, "POST")
            assert (await response.json())["error"] == "GET is not allowed on /v1/models/news:predict; use POST"


async def test_full_router_answers_429_with_retry_after(triton, model_repository):
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        texts = (await request.json())["instances"]
        return web.json_response({"predictions": ["tech"] * len(texts)})

    async with loopback_server([web.post("/v1/models/{name}:predict", held)]) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, mode="teacher-only", max_concurrency=1,
                               teacher={"url": teacher_url, "model": "big", "timeoutSeconds": 30})
        async with running_router(config) as base, ClientSession() as session:
            first = asyncio.ensure_future(session.post(f"{base}/v1/models/news:predict", json={"instances": ["a"]}))
            await asyncio.wait_for(arrived.wait(), 20)
            async with session.post(f"{base}/v1/models/news:predict", json={"instances": ["b"]}) as response:
                assert response.status == 429
                assert response.headers["Retry-After"] == "1"
                assert "limit of 1 requests in flight" in (await response.json())["error"]
            release.set()
            async with await first as response:
                assert response.status == 200
                assert (await response.json())["predictions"][0]["served_by"] == "teacher"
            async with session.get(f"{base}/metrics") as response:
                assert "kubedistill_router_rejected_total 1.0" in await response.text()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_triton_down_means_not_ready_and_503(model_repository, protocol):
    config = router_config(model_repository, f"127.0.0.1:{free_port()}", triton_protocol=protocol,
                           mode="student-only", timeout_seconds=2.0)
    async with running_router(config) as base, ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200  # alive: the process itself is fine
        async with session.get(f"{base}/readyz") as response:
            assert response.status == 503
            assert "not ready" in (await response.json())["reason"]
        async with session.get(f"{base}/v1/models/news") as response:
            assert response.status == 503 and (await response.json())["ready"] is False
        async with session.post(f"{base}/v1/models/news:predict", json={"instances": TEXTS[:2]}) as response:
            assert response.status == 503
            assert "Retry-After" in response.headers
            assert "student model is unavailable" in (await response.json())["error"]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instances": ["ok", 123456789012345678901234567890]}', '"instances"[1] must be a string, got a number'),
    (b'{"instances": ["ok", NaN]}', '"instances"[1] must be a string, got a number'),
])
def test_bodies_only_the_json_module_accepts_are_judged_the_same(body, message):
    # orjson refuses these; the standard library's reading of them still decides (here: a 400 naming the item).
    from kubedistill_router.errors import BadRequest
    from kubedistill_router.protocol import parse_instances, parse_json

    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_instances(parse_json(body), 8)
    assert parse_json('{"instances": ["caf\u00e9 \\ud83d\\ude00"]}'.encode()) == {"instances": ["caf\u00e9 \U0001F600"]}


async def test_triton_that_never_answers_is_a_timeout():
    from kubedistill_router.triton import TritonModels

    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    models = TritonModels(f"127.0.0.1:{port}", "grpc", timeout=0.5)
    try:
        with pytest.raises(UpstreamError, match=re.escape("did not answer within 0.5 s")) as raised:
            await models.infer("student", {"input_ids": np.ones((1, 3), dtype=np.int64)}, "logits")
        assert raised.value.reason == "timeout"
        assert not await models.is_ready("student")
    finally:
        await models.close()
        silent.close()


async def test_grpc_and_http_give_the_same_logits(triton, model_repository):
    from kubedistill_router.tokenizer import TextEncoder
    from kubedistill_router.triton import TritonModels

    from kubedistill.artifacts import ServingManifest

    manifest = ServingManifest.read(model_repository)
    encoder = TextEncoder(model_repository / manifest.tokenizer, manifest.student.inputs, manifest.max_length)
    inputs = encoder.encode(TEXTS[:5])
    logits = {}
    for protocol, url in (("grpc", triton.grpc_url), ("http", triton.http_url)):
        models = TritonModels(url, protocol, timeout=10)
        try:
            assert await models.is_ready(manifest.student.name)
            logits[protocol] = await models.infer(manifest.student.name, inputs, manifest.student.output)
            with pytest.raises(UpstreamError, match="nonexistent"):
                await models.infer("nonexistent", inputs, manifest.student.output)
        finally:
            await models.close()
    assert logits["grpc"].shape == (5, len(manifest.labels)) and logits["grpc"].dtype == np.float32
    np.testing.assert_array_equal(logits["grpc"], logits["http"])
