"""Bad instances against the real router and Triton, with coalescing on: the bad request gets a 400 naming
its instance, no request that shared its Triton call is affected, the router never answers 5xx, and a model
repository that cannot serve stops the router at start-up."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest
from aiohttp import ClientSession
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import TEXTS, router_config, running_router

pytestmark = pytest.mark.slow

LONE_SURROGATE = b'{"instances": ["fine text", "caf\\u00e9 \\ud800 broken"]}'


async def post(session: ClientSession, base: str, body: bytes) -> tuple[int, dict]:
    async with session.post(f"{base}/v1/models/news:predict", data=body,
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json(content_type=None)


def good_bodies() -> list[bytes]:
    return [json.dumps({"instances": [TEXTS[i % len(TEXTS)], TEXTS[(i * 5 + 1) % len(TEXTS)]]}).encode()
            for i in range(24)]


async def alone(session: ClientSession, base: str, bodies: list[bytes]) -> list[list[dict]]:
    """Each good body's predictions, asked one at a time (no other request in its Triton call)."""
    answers = []
    for body in bodies:
        status, answer = await post(session, base, body)
        assert status == 200, answer
        answers.append(answer["predictions"])
    return answers


def same(got: list[dict], want: list[dict]) -> bool:
    return all(g["label"] == w["label"] and g["served_by"] == w["served_by"]
               and abs(g["confidence"] - w["confidence"]) < 1e-3 for g, w in zip(got, want, strict=True))


async def test_a_lone_surrogate_is_a_400_naming_it_and_the_requests_sharing_its_call_are_answered(
        triton, model_repository):
    # one call at a time: every request that arrives while it is out leaves in the next call, together
    config = router_config(model_repository, triton.grpc_url, mode="route", max_calls_in_flight=1)
    async with running_router(config) as base, ClientSession() as session:
        bodies = good_bodies()
        want = await alone(session, base, bodies)
        results = await asyncio.gather(*(post(session, base, b) for b in [*bodies[:12], LONE_SURROGATE,
                                                                         *bodies[12:]]))
        status, answer = results.pop(12)
        assert status == 400
        assert answer["error"] == ('"instances"[1] is not valid Unicode text: it holds a lone surrogate '
                                   "(\\ud800 at character 5); send UTF-8 text")
        assert [s for s, _ in results] == [200] * len(bodies)
        assert all(same(a["predictions"], w) for (_, a), w in zip(results, want, strict=True))


# Bodies as clients send them: any JSON (strings with every code point, lone surrogates included, numbers
# beyond 64 bits, NaN), any bytes, and KServe-shaped bodies whose instances are anything.
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(),
                        st.text(st.characters(exclude_categories=()), max_size=20),
                        st.sampled_from(["", " ", "\ud800", "ok \udfff", "\x00", "\u200b"]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
instances = st.lists(st.one_of(json_value, st.text(st.characters(exclude_categories=()), min_size=1, max_size=40)),
                     max_size=12)
any_char = st.one_of(st.characters(exclude_categories=()), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
texts = st.lists(st.one_of(st.sampled_from(TEXTS), st.text(any_char, min_size=1, max_size=40)), min_size=1,
                 max_size=10)
bodies = st.one_of(
    texts.map(lambda items: json.dumps({"instances": items}).encode()),
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    instances.map(lambda items: json.dumps({"instances": items}).encode()),
    st.dictionaries(st.sampled_from(["instances", "inputs", "parameters"]), json_value, max_size=3)
    .map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.lists(bodies, min_size=1, max_size=6))
@example(bad=[LONE_SURROGATE, b'{"instances": ["\\udfff"]}', b"\xff"])
def test_generated_bodies_never_get_a_5xx_nor_change_another_requests_answer(triton, model_repository, bad):
    async def scenario() -> None:
        config = router_config(model_repository, triton.grpc_url, mode="route", max_calls_in_flight=1,
                               max_instances=8)
        async with running_router(config) as base, ClientSession() as session:
            good = good_bodies()[:6]
            want = await alone(session, base, good)
            results = await asyncio.gather(*(post(session, base, b) for b in [*bad, *good]))
            for body, (status, answer) in zip(bad, results, strict=False):
                assert status in (200, 400, 413), (body, status, answer)
                if status == 200:
                    assert len(answer["predictions"]) == len(json.loads(body)["instances"])
                else:
                    assert answer["error"], body
            assert [s for s, _ in results[len(bad):]] == [200] * len(good)
            assert all(same(a["predictions"], w) for (_, a), w in zip(results[len(bad):], want, strict=True))
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200

    asyncio.run(scenario())


def _broken_copy(model_repository, tmp_path, change) -> str:
    repository = tmp_path / "repository"
    shutil.copytree(model_repository, repository)
    change(repository)
    return str(repository)


def _relabel(repository) -> None:
    manifest = json.loads((repository / "serving.json").read_text())
    manifest["labels"] = [*manifest["labels"], "weather"]
    (repository / "serving.json").write_text(json.dumps(manifest))


def _rename_output(repository) -> None:
    manifest = json.loads((repository / "serving.json").read_text())
    manifest["student"]["output"] = "probabilities"
    (repository / "serving.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("change", "message"), [
    (_relabel, "output 'logits' has 3 classes but serving.json names 4 labels"),
    (_rename_output, "output 'probabilities' that serving.json reads is not declared (declared: ['logits'])"),
    (lambda r: (r / "student" / "tokenizer.json").write_text("{broken"), "tokenizer.json: cannot be loaded"),
    (lambda r: shutil.rmtree(r / "teacher" / "1"), "teacher: no version folder with a model file"),
])
def test_a_repository_that_cannot_serve_stops_the_router_at_start_up(model_repository, tmp_path, change, message):
    from kubedistill_router.fetch import FetchError, fetch

    repository = _broken_copy(model_repository, tmp_path, change)
    config = router_config(repository, "127.0.0.1:1", mode="student-only")
    (tmp_path / "router.yaml").write_text(config.to_yaml())
    done = subprocess.run([sys.executable, "-m", "kubedistill_router", "--config", str(tmp_path / "router.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    with pytest.raises(FetchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        fetch(repository, tmp_path / "fetched")  # the init container refuses it before Triton sees it
