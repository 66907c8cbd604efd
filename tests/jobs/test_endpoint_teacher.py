"""An endpoint teacher (`spec.teacher.endpoint`): a real completions server over a tiny Llama (greedy
generation and top-k logprobs computed by the model), the client, the cache it builds, and the pipeline."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import numpy as np
import pytest
from kubedistill_jobs import endpoint_teacher as et
from kubedistill_jobs.pipeline import Pipeline
from kubedistill_jobs.preflight import PreflightError, check_spec
from kubedistill_jobs.storage import resolve_output

from kubedistill.api.distillationjob import DistillationJob
from kubedistill.artifacts import OutputLayout

from .conftest import FILLER, NEGATIVE, POSITIVE, job_manifest, word_tokenizer

KEY = "sk-planted-e2a91c04"  # searched for in everything the pipeline writes
MAX_LOGPROBS = 5  # like OpenAI's and vLLM's caps: a larger `logprobs` is served as 5


class CompletionsServer:
    """`POST /v1/completions` in the OpenAI legacy format, answered by a tiny Llama (aiohttp, own thread)."""

    def __init__(self) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(1)
        self.tokenizer = word_tokenizer(POSITIVE + NEGATIVE + FILLER)  # the tiny models' tokenizer
        config = LlamaConfig(vocab_size=len(self.tokenizer), hidden_size=48, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, intermediate_size=96,
                             max_position_embeddings=64, pad_token_id=self.tokenizer.pad_token_id,
                             eos_token_id=self.tokenizer.eos_token_id)
        self.model = LlamaForCausalLM(config).eval()
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int] = []  # statuses to answer the next requests with
        self.honour_token_ids = True
        self.with_logprobs = True
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the completions server did not start"
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def _serve(self, ready: threading.Event) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    # ------------------------------------------------------------------ the model's answers

    def logprobs(self, ids: list[int]) -> Any:
        """log p(next token | ids[:t + 1]) for every t: `(len(ids), V)`."""
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, -1)

    def generate(self, prompt_ids: list[int], max_tokens: int, k: int) -> tuple[list[int], list[list[tuple]]]:
        """Greedy tokens and, per step, the top-k (id, logprob) the model gave."""
        ids, steps = list(prompt_ids), []
        for _ in range(max_tokens):
            row = self.logprobs(ids)[-1]
            values, indices = row.topk(k)
            steps.append([(int(i), float(v)) for i, v in zip(indices, values, strict=True)])
            ids.append(int(indices[0]))
            if ids[-1] == self.tokenizer.eos_token_id:
                break
        return ids[len(prompt_ids):], steps

    def _name(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.tokenizer.convert_ids_to_tokens(token_id)

    async def _completions(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        self.requests.append({"body": body, "authorization": request.headers.get("Authorization")})
        if self.failures:
            return web.json_response({"error": {"message": "busy"}}, status=self.failures.pop(0))
        as_ids = bool(body.get("return_tokens_as_token_ids")) and self.honour_token_ids
        k = min(int(body.get("logprobs") or 0), MAX_LOGPROBS)
        prompt_ids = self.tokenizer(body["prompt"])["input_ids"]
        generated, steps = self.generate(prompt_ids, int(body["max_tokens"]), max(k, 1))
        tokens = [self._name(t, as_ids) for t in generated]
        token_logprobs = [s[0][1] for s in steps]
        top = [{self._name(i, as_ids): v for i, v in s} for s in steps]
        if body.get("echo"):
            scored = self.logprobs(prompt_ids)
            tokens = [self._name(t, as_ids) for t in prompt_ids] + tokens
            token_logprobs = [None] + [float(scored[t, prompt_ids[t + 1]]) for t in range(len(prompt_ids) - 1)] \
                + token_logprobs
            top = [None] * len(prompt_ids) + top
        text = (" " + self.tokenizer.decode(generated)) if generated else ""
        choice = {"index": 0, "text": (body["prompt"] if body.get("echo") else "") + text, "finish_reason": "length",
                  "logprobs": {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                               "text_offset": [0] * len(tokens)} if self.with_logprobs and k else None}
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                                  "choices": [choice]})


@pytest.fixture(scope="module")
def server():
    served = CompletionsServer()
    yield served
    served.close()


@pytest.fixture
def fresh(server):
    server.requests.clear()
    server.failures.clear()
    server.honour_token_ids, server.with_logprobs = True, True
    return server


def _config(server: CompletionsServer, **overrides: Any) -> et.EndpointConfig:
    values = {"url": server.url, "model": "tiny", "top_k": 4, "max_new_tokens": 5, "timeout_seconds": 10.0}
    return et.EndpointConfig(**{**values, **overrides})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the client


def test_token_names_map_to_student_ids(server):
    tok = server.tokenizer
    good = tok.convert_tokens_to_ids("good")
    assert et.token_id(f"token_id:{good}", tok) == good
    assert et.token_id("good", tok) == good  # a vocabulary entry
    assert et.token_id(" good", tok) == good  # a text that encodes to exactly one token
    assert et.token_id("good bad", tok) is None  # two tokens
    assert et.token_id("zebra", tok) is None  # unknown: not the [UNK] id
    assert et.token_id(f"token_id:{len(tok)}", tok) is None  # outside the student's vocabulary
    assert et.token_id("[UNK]", tok) == tok.unk_token_id


def test_client_parses_a_completion_and_sends_the_request_asked_for(fresh):
    client = et.EndpointClient(_config(fresh))
    choice = client.complete("the movie was good", 3, 4)
    body = fresh.requests[-1]["body"]
    assert body == {"model": "tiny", "prompt": "the movie was good", "max_tokens": 3, "temperature": 0,
                    "logprobs": 4, "return_tokens_as_token_ids": True}
    generated, steps = fresh.generate(fresh.tokenizer("the movie was good")["input_ids"], 3, 4)
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in generated]
    assert [et._candidates(top, fresh.tokenizer, 4) for top in choice["logprobs"]["top_logprobs"]] == [
        [(i, pytest.approx(v, abs=1e-6)) for i, v in step] for step in steps]


def test_api_key_is_sent_as_a_bearer_token(fresh, monkeypatch, tmp_path):
    from kubedistill.env import PipelineEnv

    key_env = PipelineEnv.env_name("teacher_api_key")  # the variable the operator sets from apiKeySecretRef
    monkeypatch.setenv(key_env, "s3cret")
    spec = DistillationJob.model_validate(_endpoint_manifest(fresh.url, tmp_path, tmp_path, tmp_path / "d.txt")).spec
    config = et.EndpointConfig.from_spec(spec)
    assert "s3cret" not in repr(config)
    et.EndpointClient(config).complete("good day", 1, 2)
    assert fresh.requests[-1]["authorization"] == "Bearer s3cret"
    monkeypatch.delenv(key_env)
    et.EndpointClient(et.EndpointConfig.from_spec(spec)).complete("good day", 1, 2)
    assert fresh.requests[-1]["authorization"] is None


def test_retries_with_backoff_on_429_and_5xx_then_gives_up(fresh):
    slept: list[float] = []
    client = et.EndpointClient(_config(fresh, retries=3), sleep=slept.append)
    fresh.failures[:] = [429, 503]
    assert client.complete("good", 1, 2)["logprobs"]["tokens"]
    assert len(fresh.requests) == 3 and slept == [0.5, 1.0]
    fresh.failures[:] = [502] * 4
    with pytest.raises(et.EndpointError, match=r"teacher\.endpoint\.url: .*HTTP 502"):
        client.complete("good", 1, 2)
    fresh.failures[:] = [400]  # not retried
    fresh.requests.clear()
    with pytest.raises(et.EndpointError, match=r"teacher\.endpoint\.url: .*HTTP 400"):
        client.complete("good", 1, 2)
    assert len(fresh.requests) == 1


def test_errors_name_the_url(fresh):
    fresh.with_logprobs = False
    with pytest.raises(et.EndpointError, match=r"teacher\.endpoint\.url: .* without logprobs"):
        et.EndpointClient(_config(fresh)).complete("good", 1, 2)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(et.EndpointError, match=rf"teacher\.endpoint\.url: {url}/completions cannot be reached"):
        et.EndpointClient(_config(fresh, url=url, retries=1), sleep=lambda s: None).complete("good", 1, 2)


def test_refusals_are_permanent_and_outages_are_not(fresh):
    fresh.with_logprobs = False
    with pytest.raises(et.EndpointError) as refused:
        et.EndpointClient(_config(fresh)).complete("good", 1, 2)
    assert refused.value.permanent
    down = et.EndpointClient(_config(fresh, url=f"http://127.0.0.1:{_closed_port()}/v1", retries=1),
                             sleep=lambda s: None)
    with pytest.raises(et.EndpointError) as unreachable:
        down.complete("good", 1, 2)
    assert not unreachable.value.permanent
    with pytest.raises(et.EndpointError):  # an outage while scoring is an error, not "cannot score prompts"
        down.prompt_logprobs("good day")


def test_a_teacher_that_tokenizes_otherwise_is_refused(fresh):
    client = et.EndpointClient(_config(fresh))
    text = " ".join(POSITIVE[:3] + FILLER[:2])
    assert et.check_tokenizer(client, fresh.tokenizer, text) is True
    assert fresh.requests[-1]["body"]["echo"] is True
    other = word_tokenizer(["0extra", *POSITIVE, *NEGATIVE, *FILLER])  # one more word first: every id moves
    with pytest.raises(et.EndpointError, match=r"must use the student's tokenizer") as refused:
        et.check_tokenizer(client, other, text)
    assert refused.value.permanent
    fresh.with_logprobs = False  # a server that does not echo prompts: nothing to compare, not an error
    assert et.check_tokenizer(client, other, text) is False


def test_prompt_logprobs_from_echo(fresh):
    ids = fresh.tokenizer("the day was very good")["input_ids"]
    scored = et.EndpointClient(_config(fresh)).prompt_logprobs("the day was very good")
    expected = fresh.logprobs(ids)
    assert scored == pytest.approx([float(expected[t, ids[t + 1]]) for t in range(len(ids) - 1)], abs=1e-5)
    assert fresh.requests[-1]["body"]["echo"] is True and fresh.requests[-1]["body"]["max_tokens"] == 0
    fresh.with_logprobs = False
    assert et.EndpointClient(_config(fresh)).prompt_logprobs("good day") is None


# ---------------------------------------------------------------------- the cache rows


def test_cache_alignment_one_hot_prompt_and_teacher_top_k(fresh):
    import torch
    from kubedistill_jobs.losses import soft_loss

    tok, length, k = fresh.tokenizer, 16, 8  # k above the server's 5: missing candidates are padded
    predictor = et.EndpointPredictor(_config(fresh, top_k=k, max_new_tokens=6), tok, length, concurrency=2)
    prompts = ["the movie was very good", "a cold dark day", "good " * 14 + "bad bad"]
    completions = []
    out = predictor({"idx": np.arange(3), "text": np.asarray(prompts, dtype=object)})
    assert out["topk_values"].shape == (3, length, k) and out["topk_values"].dtype == np.float16
    assert out["topk_indices"].dtype == np.int32 and out["input_ids"].shape == (3, length)
    for row, prompt in enumerate(prompts):
        ids, mask = out["input_ids"][row], out["attention_mask"][row].astype(bool)
        values, indices = out["topk_values"][row].astype(np.float32), out["topk_indices"][row]
        prompt_ids = tok(prompt)["input_ids"][:length]
        p, n = len(prompt_ids), int(mask.sum())
        generated, steps = fresh.generate(prompt_ids, min(6, length - p), MAX_LOGPROBS)
        assert list(ids[:p]) == prompt_ids and list(ids[p:n]) == generated  # prompt + greedy generation
        completions.append(" " + tok.decode(generated) if generated else "")
        assert out["generated"][row] == len(generated) and n == p + len(generated)
        assert not mask[n:].any() and (ids[n:] == tok.pad_token_id).all()
        for t in range(p - 1):  # inside the prompt: one-hot on the next token
            assert indices[t, 0] == ids[t + 1] and values[t, 0] == 0
            assert (values[t, 1:] == et.VERY_NEGATIVE).all()
        for t in range(p - 1, n - 1):  # from the last prompt token on: the teacher's top-k for ids[t + 1]
            step = steps[t - (p - 1)]
            assert list(indices[t, :MAX_LOGPROBS]) == [i for i, _ in step]
            assert values[t, :MAX_LOGPROBS] == pytest.approx([v for _, v in step], abs=2e-3)
            assert (values[t, MAX_LOGPROBS:] == et.VERY_NEGATIVE).all() and (indices[t] < len(tok)).all()
        # the train loop's shift: position t of the cache is scored against input_ids[t + 1]
        shifted = mask[1:]
        assert (indices[:-1][shifted][:, 0] == ids[1:][shifted]).all()  # greedy: the top candidate is the token
        # and inside the prompt the soft term is the cross-entropy on the text
        student = torch.randn(length, len(tok))
        positions = torch.arange(max(p - 1, 0))
        soft = soft_loss(student[positions], torch.tensor(values[positions]),
                         teacher_topk_indices=torch.tensor(indices[positions]), temperature=1.0)
        ce = torch.nn.functional.cross_entropy(student[positions], torch.tensor(ids[1:p], dtype=torch.long))
        assert float(soft) == pytest.approx(float(ce), rel=1e-5)
    assert out["generated"][2] == 0 and len(fresh.requests) == 2  # a prompt that fills maxLength asks for nothing
    assert list(out["text"]) == [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]


def test_token_strings_give_the_same_rows_as_token_ids(fresh):
    predictor = et.EndpointPredictor(_config(fresh, top_k=4), fresh.tokenizer, 12, concurrency=1)
    batch = {"idx": np.arange(2), "text": np.asarray(["good movie", "the sad day was"], dtype=object)}
    by_id = predictor(batch)
    fresh.honour_token_ids = False
    by_name = predictor(batch)
    assert "token_id:" not in json.dumps(fresh.requests[-1])
    for key in ("input_ids", "attention_mask", "topk_indices"):
        assert (by_id[key] == by_name[key]).all(), key
    assert np.allclose(by_id["topk_values"], by_name["topk_values"])


def test_unmappable_candidates_are_dropped_and_an_unmappable_token_ends_the_row(server):
    tok = server.tokenizer
    good, bad = tok.convert_tokens_to_ids("good"), tok.convert_tokens_to_ids("bad")
    choice = {"text": " good ???", "logprobs": {
        "tokens": ["good", "???"],
        "top_logprobs": [{"good": -0.1, "zebra": -1.0, "bad": -2.5}, {"???": -0.2, "good": -1.0}]}}
    row = et.build_row(tok("the day")["input_ids"], choice, "the day", tok, 8, 3)
    assert list(row.input_ids[:3]) == [*tok("the day")["input_ids"], good] and row.attention_mask.sum() == 3
    assert row.generated == 1 and row.dropped == 1
    assert list(row.topk_indices[1]) == [good, bad, good]
    assert list(row.topk_values[1].astype(np.float32)) == pytest.approx([-0.1, -2.5, et.VERY_NEGATIVE], abs=1e-2)
    assert row.text == "the day good"


# ---------------------------------------------------------------------- the pipeline


def files_holding(root: Any, secret: str) -> list[str]:
    """Every file under `root` whose bytes contain `secret`."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _endpoint_manifest(url: str, out: Any, student: Any, data: Any, **spec: Any) -> dict[str, Any]:
    manifest = job_manifest(
        out, student, data,
        task={"type": "causal-lm", "maxLength": 14},
        dataset={"labelField": None, "evalFraction": 0.25},
        distillation={"topK": 8, "temperature": 1.0},
        training={"epochs": 1, "batchSize": 8},
        compression={"quantization": "none"},
        student={"uri": str(student)},
        **spec,
    )
    del manifest["spec"]["task"]["labels"]
    manifest["spec"]["teacher"] = {"endpoint": {"url": url, "model": "tiny", "maxNewTokens": 5,
                                                "timeoutSeconds": 20}}
    return manifest


def _lm_data(tmp_path) -> Any:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "movie", "day", "was", "very", "the", "a"]
    path = tmp_path / "lm.txt"
    path.write_text("".join(" ".join(rng.choice(words, 6)) + "\n" for _ in range(40)))
    return path


def _pipeline(manifest: dict) -> Pipeline:
    from .test_pipeline import Recorder

    job = DistillationJob.model_validate(manifest)
    return Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=Recorder())


@pytest.mark.slow
def test_pipeline_distils_evaluates_and_exports_from_an_endpoint(ray_local, tmp_path, tiny_models, fresh,
                                                                  monkeypatch):
    from kubedistill_jobs.cli import print_summary
    from kubedistill_jobs.compress import CompressionResult
    from rich.console import Console
    from transformers import AutoModelForCausalLM

    from kubedistill.report import load_report

    monkeypatch.setenv("KUBEDISTILL_TEACHER_API_KEY", KEY)
    manifest = _endpoint_manifest(fresh.url, tmp_path, tiny_models["llama"], _lm_data(tmp_path))
    result = _pipeline(manifest).run()
    layout = OutputLayout(tmp_path / "out")
    assert list(result.stages) == ["data", "teacher", "soft-targets", "train", "compress", "evaluate", "export"]
    assert result.stages["teacher"]["method"] == "endpoint" and result.stages["teacher"]["url"] == fresh.url
    assert not (layout.teacher / "config.json").exists()  # no teacher weights
    # soft targets: prompt + generation, the cache format of the local top-k path
    values = np.load(layout.soft_targets / "topk_values.npy")
    ids = np.load(layout.soft_targets / "input_ids.npy")
    assert values.shape == (30, 14, 8) and ids.shape == (30, 14)
    prompts = [json.loads(line)["text"] for line in (layout.data / "train.jsonl").read_text().splitlines()]
    generated = [json.loads(line) for line in (layout.data / "train_generated.jsonl").read_text().splitlines()]
    assert [g["prompt"] for g in generated] == prompts
    assert all(g["text"].startswith(g["prompt"]) and len(g["text"]) > len(g["prompt"]) for g in generated)
    assert 30 <= result.stages["soft-targets"]["generated_tokens"] <= 30 * 5
    completions = [r for r in fresh.requests if r["body"].get("max_tokens") == 5]
    assert len(completions) == 30 and {r["authorization"] for r in fresh.requests} == {f"Bearer {KEY}"}
    assert AutoModelForCausalLM.from_pretrained(layout.student).config.vocab_size == len(fresh.tokenizer)
    assert np.isfinite(result.stages["train"]["history"][-1]["eval_perplexity"])
    # compress and evaluate without a teacher graph; the teacher's perplexity scored by the endpoint
    assert CompressionResult.read(layout).teacher_onnx is None and not (layout.onnx / "teacher.onnx").exists()
    eval_texts = [json.loads(line)["text"] for line in (layout.data / "eval.jsonl").read_text().splitlines()]
    logprobs = []
    for text in eval_texts:
        tokens = fresh.tokenizer(text)["input_ids"]
        scored = fresh.logprobs(tokens)
        logprobs += [float(scored[t, tokens[t + 1]]) for t in range(len(tokens) - 1)]
    report = load_report(layout.report_json.read_text())
    assert report.teacher.metrics["perplexity"] == pytest.approx(float(np.exp(-np.mean(logprobs))), rel=1e-4)
    assert report.teacher.params is None and report.teacher.latency_ms is None and report.speedup is None
    assert report.retention == pytest.approx(
        report.teacher.metrics["perplexity"] / report.student_quantized.metrics["perplexity"])
    assert report.student_quantized.latency_ms.p50 > 0 and report.gate.passed
    assert "Teacher: the endpoint" in layout.report_md.read_text()
    assert result.manifest.teacher is None and not (layout.model_repository / "teacher").exists()
    console = Console(record=True, width=200)
    print_summary(console, result, layout.root)
    shown = console.export_text()
    assert f"endpoint {fresh.url} (model tiny)" in shown and "speedup unknown" in shown
    assert KEY not in shown and files_holding(tmp_path, KEY) == []  # nothing the run wrote holds the key

    # a per-token price counts the endpoint's own tokens of each held-out text (those its echo scored)
    for stage in ("evaluate", "export"):
        layout.stage_marker(stage).unlink()
    manifest["spec"]["evaluation"]["economics"] = {"teacherPricePerMillionInputTokens": 2.0,
                                                   "teacherPricePerMillionOutputTokens": 4.0,
                                                   "outputTokensPerRequest": 5}
    priced = _pipeline(manifest).run().report.economics
    from kubedistill_jobs.evaluate import _first_tokens
    from transformers import AutoTokenizer

    student_tokenizer = AutoTokenizer.from_pretrained(layout.student)
    echoed = [r["body"]["prompt"] for r in fresh.requests if r["body"].get("echo")][-len(eval_texts):]
    assert echoed == [_first_tokens(student_tokenizer, text, 14) for text in eval_texts]
    own = float(np.mean([len(fresh.tokenizer(text)["input_ids"]) for text in echoed]))
    assert priced.measured["teacher_input_tokens_per_request"] == pytest.approx(own)
    assert priced.teacher_per_million_requests.value == pytest.approx(own * 2.0 + 5 * 4.0)
    assert not any("student's tokenizer" in note for note in priced.notes)

    # an endpoint that does not score prompts: the teacher's metrics and retention are null, noted in the report
    for stage in ("evaluate", "export"):
        layout.stage_marker(stage).unlink()
    fresh.with_logprobs = False
    again = _pipeline(manifest).run()
    report = again.report
    assert report.teacher.metrics == {} and report.retention is None and report.gate.passed  # no gate set
    assert "did not score prompts" in report.teacher_note
    from kubedistill.report import job_results

    results = job_results(report, "file:///a")
    assert results.retention is None and results.teacher_metric is None and results.speedup is None


def test_unreachable_endpoint_fails_before_training(tmp_path, tiny_models):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    pipeline = _pipeline(_endpoint_manifest(url, tmp_path, tiny_models["llama"], _lm_data(tmp_path)))
    with pytest.raises(et.EndpointError, match=rf"teacher\.endpoint\.url: {url}/completions cannot be reached"):
        pipeline.run()
    assert pipeline.context.display.failed == ["teacher"]  # its progress lines stop with it
    layout = OutputLayout(tmp_path / "out")
    assert layout.stage_marker("data").is_file()
    assert not layout.stage_marker("teacher").exists() and not layout.soft_targets.exists()


def _spec(tmp_path, tiny_models, **overrides: Any) -> Any:
    manifest = _endpoint_manifest("http://teacher.example/v1", tmp_path, tiny_models["llama"], tmp_path / "d.txt")
    for key, value in overrides.items():
        manifest["spec"][key] = value
    return DistillationJob.model_validate(manifest).spec


def test_the_api_refuses_what_an_endpoint_cannot_teach(tmp_path, tiny_models):
    # Spec-only rules live in the models (and their CEL twins in the CRD): refused before any Ray cluster starts.
    # An endpoint classifies only through a prompt (teacher.prompt).
    with pytest.raises(ValueError, match=r"teacher\.endpoint: .*set teacher\.prompt for task\.type"):
        _spec(tmp_path, tiny_models, task={"type": "sequence-classification", "labels": ["a", "b"]})
    architecture = {"architecture": {"numLayers": 1, "hiddenSize": 16, "numAttentionHeads": 2}}
    with pytest.raises(ValueError, match=r"student\.uri"):
        _spec(tmp_path, tiny_models, student=architecture)
    with pytest.raises(ValueError, match=r"distillation\.teacherMode"):
        _spec(tmp_path, tiny_models, distillation={"teacherMode": "online"})
    for loss in ("reverse-kl", "jsd"):  # renormalised over sparse targets: huge (reverse) or flat (jsd) losses
        with pytest.raises(ValueError, match=rf"distillation\.loss: {loss} .*use forward-kl"):
            _spec(tmp_path, tiny_models, distillation={"loss": loss, "topK": 8})
    with pytest.raises(ValueError, match=r"compression\.pruning\.method: .*teacher's weights"):
        _spec(tmp_path, tiny_models, compression={"pruning": {"method": "layers", "keepLayers": [0]}})
    check_spec(_spec(tmp_path, tiny_models), 1)


def test_preflight_checks_top_k_against_the_students_vocabulary(tmp_path, tiny_models):
    from kubedistill_jobs.preflight import check_models

    layout = OutputLayout(tmp_path / "out")
    spec = _spec(tmp_path, tiny_models, distillation={"topK": 20})  # the API's bound for endpoints
    found = check_models(spec, layout)
    assert set(found) == {"student_source", "student_tokenizer"}
    # a student with fewer tokens than topK (here: topK past the API's bound, on a spec that skipped validation)
    wide = spec.model_copy(update={"distillation": spec.distillation.model_copy(update={"top_k": 32})})
    with pytest.raises(PreflightError, match=r"^distillation\.topK: 32 is larger than the student's vocabulary"):
        check_models(wide, layout)
