"""Credentials at the router, against a real tritonserver: its own bearer token (router.auth.apiKeySecretRef) and a
remote teacher's key, planted and searched for in everything the router answers and logs."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import ClientSession, web
from kubedistill_router.app import build_app
from kubedistill_router.auth import CHALLENGE

from kubedistill.redaction import MASK
from kubedistill.routerconfig import ROUTER_API_KEY_ENV

from .conftest import TEXTS, loopback_server, router_config, running_router

pytestmark = pytest.mark.slow

TOKEN = "router-token-9d1c7a55e3"
TEACHER_KEY = "sk-teacher-planted-0b6f2e94"


async def call(session: ClientSession, method: str, url: str, token: str | None = None,
               scheme: str = "Bearer", **kwargs) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, dict(response.headers), await response.text()


async def test_model_endpoints_need_the_token_and_probes_stay_open(triton, model_repository, monkeypatch):
    monkeypatch.setenv(ROUTER_API_KEY_ENV, TOKEN)
    config = router_config(model_repository, triton.grpc_url, mode="student-only", require_api_key=True)
    predict = {"json": {"instances": TEXTS[:2]}}
    async with running_router(config) as base, ClientSession() as session:
        url = f"{base}/v1/models/news:predict"
        for token, scheme in ((None, "Bearer"), ("wrong", "Bearer"), (TOKEN[:-1], "Bearer"), (TOKEN + "x", "Bearer"),
                              (TOKEN, "Basic"), ("", "Bearer")):
            status, headers, text = await call(session, "POST", url, token, scheme, **predict)
            assert status == 401, (token, scheme)
            assert headers["WWW-Authenticate"] == CHALLENGE["WWW-Authenticate"]
            assert "router.auth.apiKeySecretRef" in text and TOKEN not in text
        assert (await call(session, "GET", f"{base}/v1/models/news"))[0] == 401
        status, _, text = await call(session, "POST", url, TOKEN, **predict)
        assert status == 200 and len(json.loads(text)["predictions"]) == 2
        assert (await call(session, "POST", url, TOKEN, "bearer", **predict))[0] == 200  # the scheme is case-blind
        assert (await call(session, "GET", f"{base}/v1/models/news", TOKEN))[0] == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # kubelet probes and Prometheus carry no token
            assert (await call(session, "GET", f"{base}{path}"))[0] == 200, path
        _, _, metrics = await call(session, "GET", f"{base}/metrics")
    assert TOKEN not in metrics


def test_a_router_that_requires_a_token_refuses_to_start_without_one(model_repository, monkeypatch):
    monkeypatch.delenv(ROUTER_API_KEY_ENV, raising=False)
    config = router_config(model_repository, "127.0.0.1:1", require_api_key=True)
    with pytest.raises(ValueError, match=rf"router\.auth\.apiKeySecretRef: .*\${ROUTER_API_KEY_ENV}"):
        build_app(config)
    assert "require_api_key: true" in config.to_yaml()  # the config file says a token is needed, not which


async def test_a_teacher_echoing_its_key_leaves_it_nowhere(triton, model_repository, tmp_path, caplog):
    key_file = tmp_path / "api-key"
    key_file.write_text(TEACHER_KEY + "\n")
    seen: list[str] = []

    async def careless(request: web.Request) -> web.Response:  # echoes the request's headers in its errors
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": f"bad key: {request.headers.get('Authorization')}"}, status=401)

    caplog.set_level(logging.DEBUG)
    async with loopback_server([web.post("/v1/models/{name}:predict", careless)]) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, mode="teacher-only",
                               teacher={"url": teacher_url, "model": "big", "timeoutSeconds": 2},
                               teacher_api_key_file=str(key_file))
        async with running_router(config) as base, ClientSession() as session:
            status, _, answer = await call(session, "POST", f"{base}/v1/models/news:predict",
                                           json={"instances": TEXTS[:3]})
            _, _, metrics = await call(session, "GET", f"{base}/metrics")
    assert seen == [f"Bearer {TEACHER_KEY}"]  # sent to the teacher, as it must be
    assert status == 200 and all(p["degraded"] for p in json.loads(answer)["predictions"])  # the student answered
    assert "HTTP 401" in caplog.text and MASK in caplog.text  # the teacher's error is logged, masked
    for where, text in (("answer", answer), ("metrics", metrics), ("log", caplog.text),
                        ("config", config.to_yaml())):
        assert TEACHER_KEY not in text, where
