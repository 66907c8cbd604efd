"""Causal-LM serving end to end: a tiny student and teacher exported for generation (ONNX Runtime GenAI in a
decoupled Triton python model), a real tritonserver, the router, and the official `openai` client."""

from __future__ import annotations

import asyncio
import math
import socket

import numpy as np
import openai
import pytest
from aiohttp import ClientSession
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import model_config_pb2

from kubedistill.artifacts import ServingManifest
from kubedistill.confidence import answer_confidence

from .conftest import router_config, running_router, wait_for
from .generation_models import GenaiReference, smollm2_tokenizer, tiny_llama

pytestmark = pytest.mark.slow
MODEL = "tiny-chat"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = ["The weather today is", "Once upon a time", "def add(a, b):", "Paris is"]


@pytest.fixture(scope="module")
def gen_export(tmp_path_factory):
    from kubedistill_jobs.export import write_generation_repository
    from kubedistill_router.local.triton import cache_root

    tokenizer = smollm2_tokenizer(cache_root() / "test-assets")
    root = tmp_path_factory.mktemp("gen")
    student = tiny_llama(root / "student-hf", tokenizer, seed=0, layers=2, hidden=64, sharpen=30.0)
    teacher = tiny_llama(root / "teacher-hf", tokenizer, seed=1, layers=2, hidden=64, sharpen=30.0)
    repo = root / "model_repository"
    manifest = write_generation_repository(repo, max_length=64, student_folder=student, precision="int4",
                                           work=root / "genai", teacher_folder=teacher, model_version="gen-1",
                                           recommended_threshold=0.5)
    return {"repo": repo, "manifest": manifest, "genai": root / "genai"}


@pytest.fixture(scope="module")
def gen_triton(tmp_path_factory, gen_export):
    from kubedistill_router.local.repository import build_local_repository
    from kubedistill_router.local.triton import start_triton

    work = tmp_path_factory.mktemp("gen-triton")
    local = build_local_repository(gen_export["repo"], work / "repository")
    server = start_triton(local, work / "tritonserver.log")
    try:
        server.wait_ready(timeout=540)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def student_ref(gen_export):
    return GenaiReference(gen_export["genai"] / "student")


@pytest.fixture(scope="module")
def chat_tokenizer(gen_export):
    from kubedistill_router.chat import ChatTokenizer

    manifest: ServingManifest = gen_export["manifest"]
    return ChatTokenizer(gen_export["repo"] / manifest.tokenizer, gen_export["repo"] / manifest.chat_template)


def config(gen_export, triton_url: str, **overrides):
    return router_config(gen_export["repo"], triton_url, model_name=MODEL, **overrides)


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


async def scrape(base: str) -> dict[tuple[str, tuple], float]:
    async with ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_export_layout_and_config_parse(gen_export):
    manifest: ServingManifest = gen_export["manifest"]
    assert manifest.task == "causal-lm" and manifest.student.kind == "generation"
    assert manifest.student.precision == "int4" and manifest.teacher.precision == "fp32"
    assert manifest.chat_template == "student/chat_template.jinja"
    assert manifest.confidence_signal == "token-quantile" and manifest.recommended_threshold == 0.5
    for name in ("student", "teacher"):
        config = text_format.Parse((gen_export["repo"] / name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.backend == "python" and config.model_transaction_policy.decoupled
        assert [i.name for i in config.input] == manifest.student.inputs
        assert (gen_export["repo"] / name / "1" / "genai" / "genai_config.json").is_file()


async def test_chat_and_completions_equal_genai_greedy(gen_export, gen_triton, student_ref, chat_tokenizer):
    async with running_router(config(gen_export, gen_triton.grpc_url, mode="student-only")) as base:
        api = client(base)
        models = await api.models.list()
        assert [m.id for m in models.data] == [MODEL]

        prompt_ids = chat_tokenizer.encode(chat_tokenizer.render(MESSAGES))
        want = student_ref.greedy(prompt_ids, 12)
        reply = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                                  logprobs=True, top_logprobs=3)
        assert reply.choices[0].message.content == chat_tokenizer.decode(want.ids)
        assert reply.usage.prompt_tokens == len(prompt_ids) and reply.usage.completion_tokens == len(want.ids)
        got = [c.logprob for c in reply.choices[0].logprobs.content]
        np.testing.assert_allclose(got, want.logprobs, rtol=1e-5, atol=1e-5)
        top = reply.choices[0].logprobs.content[0].top_logprobs
        assert len(top) == 3 and top[0].logprob >= top[1].logprob >= top[2].logprob
        extension = reply.model_extra["kubedistill"]
        assert extension["served_by"] == "student"
        assert extension["confidence"] == pytest.approx(answer_confidence(want.logprobs, "token-quantile"))

        stream = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                                   stream=True, stream_options={"include_usage": True})
        pieces, usage = [], None
        async for event in stream:
            if event.choices:
                pieces.append(event.choices[0].delta.content or "")
            usage = event.usage or usage
        assert "".join(pieces) == chat_tokenizer.decode(want.ids)
        assert usage.completion_tokens == len(want.ids)

        for prompt in PROMPTS:
            ids = chat_tokenizer.encode(prompt, special=True)
            want = student_ref.greedy(ids, 8)
            done = await api.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
            assert done.choices[0].text == chat_tokenizer.decode(want.ids)
            streamed = await api.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                                    stream=True)
            assert "".join([e.choices[0].text async for e in streamed if e.choices]) == done.choices[0].text

        # The router's own time per request (its whole time less the wait on Triton) is recorded, and is a part
        # of the request's time, not all of it.
        async with ClientSession() as session, session.get(f"{base}/metrics") as response:
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        samples = {s.name: s.value for s in families["kubedistill_router_generation_overhead_seconds"].samples}
        answered = 2 + 2 * len(PROMPTS)
        assert samples["kubedistill_router_generation_overhead_seconds_count"] == answered
        assert 0 < samples["kubedistill_router_generation_overhead_seconds_sum"] / answered < 0.5


async def test_escalation_exactly_below_threshold(gen_export, gen_triton, student_ref, chat_tokenizer):
    ids = chat_tokenizer.encode(PROMPTS[0], special=True)
    want = student_ref.greedy(ids, 8)
    conf = answer_confidence(want.logprobs, "token-quantile")
    assert 0 < conf < 1
    for threshold, served_by in ((conf, "student"), (float(np.nextafter(conf, 1.0)), "teacher")):
        cfg = config(gen_export, gen_triton.grpc_url, mode="route", threshold=threshold)
        async with running_router(cfg) as base:
            raw = await client(base).completions.with_raw_response.create(
                model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
            body = raw.parse()
            assert raw.headers["x-kubedistill-served-by"] == served_by
            assert body.model_extra["kubedistill"]["served_by"] == served_by
            if served_by == "student":
                assert body.choices[0].text == chat_tokenizer.decode(want.ids)
                assert float(raw.headers["x-kubedistill-confidence"]) == pytest.approx(conf, rel=1e-5)
            else:
                teacher = GenaiReference(gen_export["genai"] / "teacher").greedy(ids, 8)
                assert body.choices[0].text == chat_tokenizer.decode(teacher.ids)
                assert body.model_extra["kubedistill"]["escalation_reason"] == "low-confidence"


def _async(check):
    async def condition() -> bool:
        return bool(check())

    return condition


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_teacher_down_degrades_to_student(gen_export, gen_triton, student_ref, chat_tokenizer):
    teacher = {"url": f"http://127.0.0.1:{_closed_port()}/v1", "protocol": "openai", "timeoutSeconds": 2}
    cfg = config(gen_export, gen_triton.grpc_url, mode="route", threshold=1.0, teacher=teacher)
    async with running_router(cfg) as base:
        for stream in (False, True):
            raw = await client(base).chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, stream=stream)
            assert raw.status_code == 200 and raw.headers["x-kubedistill-served-by"] == "student"
        reply = await client(base).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                                           temperature=0)
        prompt_ids = chat_tokenizer.encode(chat_tokenizer.render(MESSAGES))
        assert reply.choices[0].message.content == chat_tokenizer.decode(student_ref.greedy(prompt_ids, 6).ids)
        assert reply.model_extra["kubedistill"]["degraded"] is True
        metrics = await scrape(base)
        assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "error"),))] >= 3
        # one first token per answer, streamed or not (not one per token)
        assert metrics[("kubedistill_router_time_to_first_token_seconds_count", ())] == 3


async def test_a_chat_without_a_system_turn_gets_the_one_the_student_was_trained_with(gen_export, gen_triton,
                                                                                    chat_tokenizer, tmp_path):
    """serving.json's system_prompt (a task.prompt job's, empty by default) goes first in a chat request that has
    no system turn: the student reads the prompt it learnt from, not the template's default system prompt
    (SmolLM2's "You are a helpful AI assistant named SmolLM..."). A request's own system turn is kept."""
    import shutil

    repo = tmp_path / "model_repository"  # the same models, serving.json with the task's system turn
    shutil.copytree(gen_export["repo"], repo)
    manifest = ServingManifest.read(repo).model_copy(update={"system_prompt": ""})
    manifest.write(repo)
    empty = [{"role": "system", "content": ""}, *MESSAGES]
    assert len(chat_tokenizer.encode(chat_tokenizer.render(MESSAGES))) > \
        len(chat_tokenizer.encode(chat_tokenizer.render(empty)))  # the template's default is not empty
    own = [{"role": "system", "content": "Answer in French."}, *MESSAGES]
    for folder, sent, rendered in ((repo, MESSAGES, empty), (repo, own, own), (gen_export["repo"], MESSAGES, MESSAGES)):
        async with running_router(router_config(folder, gen_triton.grpc_url, model_name=MODEL,
                                                mode="student-only")) as base:
            reply = await client(base).chat.completions.create(model=MODEL, messages=sent, max_tokens=2,
                                                               temperature=0)
        assert reply.usage.prompt_tokens == len(chat_tokenizer.encode(chat_tokenizer.render(rendered)))


def test_a_tokenizer_saved_after_a_padded_batch_encodes_prompts_to_their_own_length(gen_export, tmp_path):
    """A fast tokenizer keeps the padding and truncation of its last padded batch call, and save_pretrained wrote
    them into tokenizer.json: the export saves without them, and the router ignores them in older outputs."""
    import shutil

    from kubedistill_jobs.models import save_tokenizer
    from kubedistill_router.chat import ChatTokenizer
    from transformers import AutoTokenizer

    folder = gen_export["repo"] / gen_export["manifest"].tokenizer
    text = "one two three four five six seven eight nine ten eleven twelve"
    clean = ChatTokenizer(folder, None).encode(text)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer(["short"], padding="max_length", truncation=True, max_length=len(clean) // 2)
    shutil.copytree(folder, tmp_path / "padded")
    tokenizer.save_pretrained(tmp_path / "padded")  # what a run used to write
    assert ChatTokenizer(tmp_path / "padded", None).encode(text) == clean
    save_tokenizer(tokenizer, tmp_path / "saved")
    saved = (tmp_path / "saved" / "tokenizer.json").read_text()
    assert '"padding": null' in saved and '"truncation": null' in saved


async def test_triton_down_is_503_and_not_ready(gen_export):
    cfg = config(gen_export, f"127.0.0.1:{_closed_port()}", mode="student-only", timeout_seconds=2.0)
    async with running_router(cfg) as base:
        with pytest.raises(openai.InternalServerError) as error:
            await client(base).completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        assert error.value.status_code == 503
        async with ClientSession() as session, session.get(f"{base}/readyz") as response:
            assert response.status == 503


@pytest.mark.parametrize(("body", "field"), [
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 5000}, "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "temperature": 9}, "temperature"),
    ({"model": MODEL, "messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": MESSAGES}, "model"),
])
async def test_bad_requests_name_the_field(gen_export, gen_triton, body, field):
    async with running_router(config(gen_export, gen_triton.grpc_url, mode="student-only")) as base:
        async with ClientSession() as session:
            async with session.post(f"{base}/v1/chat/completions", json=body) as response:
                assert response.status == 400
                assert (await response.json())["error"].startswith(field + ":")
            async with session.post(f"{base}/v1/chat/completions", data=b"{not json") as response:
                assert response.status == 400
        with pytest.raises(openai.NotFoundError):
            await client(base).chat.completions.create(model="other", messages=MESSAGES)


async def test_disconnect_mid_stream_stops_generation(gen_export, gen_triton):
    cfg = config(gen_export, gen_triton.grpc_url, mode="student-only", max_tokens=4096)
    max_tokens = 2000  # the tiny model generates ~1,500 tokens/s: long enough to leave it mid-answer
    async with running_router(cfg) as base:
        async with ClientSession() as session:
            response = await session.post(f"{base}/v1/completions", json={
                "model": MODEL, "prompt": "Once", "max_tokens": max_tokens, "temperature": 0, "stream": True})
            assert response.status == 200
            await response.content.readline()  # the first event: generation is under way
            response.close()  # the client goes away

        async def cancelled() -> bool:
            return (await scrape(base)).get(("kubedistill_router_generation_cancelled_total", ()), 0) == 1

        await wait_for(cancelled)
        # Triton's model saw the cancellation and stopped (it logs how far it got).
        await wait_for(_async(lambda: "generation cancelled after" in gen_triton.log_tail(200_000)))
        before = (await scrape(base))[("kubedistill_router_generated_tokens_total", (("model", "student"),))]
        await asyncio.sleep(0.5)  # let a runaway generation show itself
        after = (await scrape(base))[("kubedistill_router_generated_tokens_total", (("model", "student"),))]
        assert before == after < max_tokens
        # Triton is free again: a new request is answered at once.
        reply = await client(base).completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0)
        assert reply.usage.completion_tokens == 3 or reply.choices[0].finish_reason == "stop"
    assert math.isfinite(before)


def test_kubedistill_serve_on_a_causal_lm_output(gen_export, tmp_path, student_ref, chat_tokenizer):
    import shutil
    import sys

    import yaml
    from kubedistill_processes import read_until, running, terminate
    from kubedistill_router.local.triton import free_port

    output = tmp_path / "output"
    shutil.copytree(gen_export["repo"], output / "model_repository")
    (output / "distillationjob.yaml").write_text(yaml.safe_dump({"metadata": {"name": MODEL}}))
    port = free_port()
    serve = [sys.executable, "-m", "kubedistill.cli", "serve", str(output), "--port", str(port), "--timeout", "540"]
    with running(serve) as process:
        banner = read_until(process, "Ctrl-C stops both.", timeout=600)
        base = f"http://127.0.0.1:{port}"
        assert f"serving '{MODEL}' (version gen-1, mode route, threshold 0.5 (the job's recommendation))" in banner
        assert f"curl -s {base}/v1/chat/completions" in banner and "from openai import OpenAI" in banner
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        reply = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
        assert reply.model_extra["kubedistill"]["served_by"] in ("student", "teacher")
        prompt_ids = chat_tokenizer.encode(chat_tokenizer.render(MESSAGES))
        if reply.model_extra["kubedistill"]["served_by"] == "student":
            assert reply.choices[0].message.content == chat_tokenizer.decode(student_ref.greedy(prompt_ids, 6).ids)
        assert terminate(process, 60) == 143  # SIGTERM, as a pod is stopped


async def test_escalated_generations_are_captured_with_the_teachers_answer(gen_export, gen_triton, tmp_path):
    from kubedistill.capture import read_capture_folder

    folder = tmp_path / "capture"
    cfg = config(gen_export, gen_triton.grpc_url, mode="route", threshold=1.0,  # every draft escalates
                 capture={"uri": f"file://{folder}", "redact": [r"France"]})
    async with running_router(cfg) as base:
        chat = await client(base).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                                          temperature=0)
        completion = await client(base).completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=8,
                                                           temperature=0)
    assert chat.model_extra["kubedistill"]["served_by"] == "teacher"
    records = {("chat" if r.messages else "completion"): r for r in read_capture_folder(folder).records}
    assert set(records) == {"chat", "completion"}
    assert records["chat"].messages == [{"role": "user", "content": "What is the capital of [redacted]?"}]
    assert records["chat"].teacher.text == chat.choices[0].message.content.replace("France", "[redacted]")
    assert records["completion"].text == PROMPTS[1]
    assert records["completion"].teacher.text == completion.choices[0].text
    assert all(r.kind == "escalated" and r.task == "causal-lm" and r.model_version == "gen-1"
               and r.student.text is not None for r in records.values())
