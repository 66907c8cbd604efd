"""The endpoint classification teacher against a real OpenAI-compatible server process on loopback (the
project's own, around a tiny real model; `transformers serve` refuses logprobs): soft targets against a hand
computation, Retry-After honoured, 401 permanent, hard labels, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from kubedistill_jobs import chat_teacher
from kubedistill_jobs.chat_teacher import ChatConfig, ChatTeacher, SoftTargetsRequired
from kubedistill_jobs.endpoint_teacher import EndpointRefused
from kubedistill_jobs.llm_teacher import LabelPrompt, PromptError

from kubedistill.errors import InputError

SERVER = Path(__file__).with_name("llm_server.py")
PROMPT = LabelPrompt(labels=("neg", "pos"), answers=("bad", "good"), user="the {text} was")
TEXTS = ["the food was lovely", "a cold dark day", "the movie", "very sad weather", "happy bright day"]


class Server:
    def __init__(self, model: Path, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(model), *args], stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = self.process.stdout.readline()
        assert line.startswith("port="), line
        self.url = f"http://127.0.0.1:{line.strip().split('=')[1]}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats") as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def serve(tiny_models):
    started: list[Server] = []

    def start(*args: str) -> Server:
        started.append(Server(tiny_models["llama"], *args))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _teacher(url: str, **overrides) -> ChatTeacher:
    return ChatTeacher(ChatConfig(url=url, model="tiny", backoff_seconds=0.05, **overrides), PROMPT)


def test_soft_targets_are_the_first_token_distribution_renormalised(serve, tiny_models, tmp_path):
    import torch
    from kubedistill_jobs import llm_teacher, models

    server = serve()
    out = chat_teacher.label_texts(_teacher(server.url), TEXTS[:2], tmp_path / "journal.jsonl")
    assert out.kinds == ["soft", "soft"] and out.sent == 2 and (out.prompt_tokens > 0).all()
    model = models.load_causal_teacher(str(tiny_models["llama"]), None).eval()
    tokenizer = models.load_tokenizer(str(tiny_models["llama"]))
    answer_ids = [tokenizer.convert_tokens_to_ids(a) for a in PROMPT.answers]
    for row, text in zip(out.logprobs, TEXTS[:2], strict=True):  # by hand: the model's own next-token softmax
        ids = tokenizer.encode(llm_teacher.render(tokenizer, PROMPT.messages(text)), add_special_tokens=False)
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.as_tensor([ids])).logits[0, -1].double(), -1)
        top = set(logp.topk(chat_teacher.TOP_LOGPROBS).indices.tolist())
        mass = np.asarray([float(logp[i].exp()) if i in top else 0.0 for i in answer_ids])
        np.testing.assert_allclose(np.exp(row), mass / mass.sum(), rtol=1e-4, atol=1e-6)


def test_429_with_retry_after_is_waited_for(serve, tmp_path):
    server = serve("--fail-429", "2", "--retry-after", "1")
    teacher = _teacher(server.url)
    started = time.monotonic()
    out = chat_teacher.label_texts(teacher, TEXTS[:1], tmp_path / "journal.jsonl")
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 waits, not the 0.05 s backoff
    assert server.stats()["requests"] == 3 and teacher.retried == 2 and out.kinds == ["soft"]


def test_401_is_a_permanent_input_error_naming_the_secret(serve, tmp_path):
    server = serve("--api-key", "right")
    with pytest.raises(EndpointRefused, match=r"teacher\.endpoint\.apiKeySecretRef") as refused:
        chat_teacher.label_texts(_teacher(server.url, api_key="wrong"), TEXTS[:1], tmp_path / "journal.jsonl")
    assert isinstance(refused.value, InputError) and "wrong" not in str(refused.value)
    assert server.stats()["requests"] == 1  # not retried
    out = chat_teacher.label_texts(_teacher(server.url, api_key="right"), TEXTS[:1], tmp_path / "ok.jsonl")
    assert out.sent == 1


def test_no_logprobs_teaches_hard_labels_unless_soft_targets_are_required(serve, tmp_path):
    server = serve("--no-logprobs")
    # The tiny model answers "was was ...": an answer that names a label, without logprobs, is a hard label.
    prompt = LabelPrompt(labels=("neg", "pos"), answers=("was", "good"), user="the {text} was")
    teacher = ChatTeacher(ChatConfig(url=server.url, model="tiny", backoff_seconds=0.05), prompt)
    out = chat_teacher.label_texts(teacher, TEXTS, tmp_path / "journal.jsonl")
    assert set(out.kinds) <= {"hard", "unmatched"} and "hard" in out.kinds
    for kind, row in zip(out.kinds, out.logprobs, strict=True):
        if kind == "hard":
            assert sorted(row)[-1] == 0.0 and sorted(row)[0] <= chat_teacher.VERY_NEGATIVE
        else:
            np.testing.assert_allclose(np.exp(row), 0.5)
    with pytest.raises(SoftTargetsRequired, match=r"distillation\.requireSoftTargets"):
        chat_teacher.label_texts(_teacher(server.url, require_soft_targets=True), TEXTS,
                                 tmp_path / "journal.jsonl")


def test_a_prompt_whose_answers_never_name_a_label_is_refused_and_the_answers_are_kept(serve, tmp_path):
    server = serve("--no-logprobs")
    prompt = LabelPrompt(labels=("neg", "pos"), answers=("xylophonic", "quasarlike"), user="the {text} was")
    teacher = ChatTeacher(ChatConfig(url=server.url, model="tiny", backoff_seconds=0.05), prompt)
    journal = tmp_path / "journal.jsonl"
    with pytest.raises(chat_teacher.NoAnswerMatched, match=r"teacher\.prompt: none of the teacher's 5 answers") \
            as refused:
        chat_teacher.label_texts(teacher, TEXTS, journal)
    assert isinstance(refused.value, InputError) and str(journal) in str(refused.value)
    assert len(journal.read_text().splitlines()) == 5  # what the endpoint answered (and was paid for) is kept


def test_answers_are_matched_to_labels_or_counted_as_unmatched():
    assert chat_teacher.match_answer(" Good.", PROMPT.answers) == 1
    assert chat_teacher.match_answer("bad weather", PROMPT.answers) == 0
    assert chat_teacher.match_answer("terrible", PROMPT.answers) is None
    assert chat_teacher.label_distribution({"answer": "terrible"}, PROMPT.answers)[1] == "unmatched"


def test_answers_beginning_alike_are_refused_before_any_request():
    with pytest.raises(PromptError, match=r"teacher\.prompt\.verbalizer"):
        chat_teacher.check_first_characters(["sport", "science", "tech"])
    chat_teacher.check_first_characters(["Sport", "Research", "tech"])


def test_resume_after_a_kill_sends_no_answered_row_again(serve, tmp_path):
    server = serve("--delay", "0.3")
    journal = tmp_path / "journal.jsonl"
    texts = [f"the day was {w}" for w in ("good", "bad", "fine", "cold", "warm", "dark", "sad", "ugly", "happy",
                                          "poor", "lovely", "awful")]
    child = textwrap.dedent(f"""
        from pathlib import Path
        from kubedistill_jobs import chat_teacher
        from kubedistill_jobs.llm_teacher import LabelPrompt
        prompt = LabelPrompt(labels=("neg", "pos"), answers=("bad", "good"), user="the {{text}} was")
        teacher = chat_teacher.ChatTeacher(chat_teacher.ChatConfig(url={server.url!r}, model="tiny",
                                                                   max_concurrency=2), prompt)
        chat_teacher.label_texts(teacher, {texts!r}, Path({str(journal)!r}))
    """)
    process = subprocess.Popen([sys.executable, "-c", child], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while (not journal.is_file() or len(journal.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        assert process.poll() is None, "the labelling process ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    answered_before = {json.loads(line)["index"] for line in journal.read_text().splitlines() if line.strip()}
    assert 4 <= len(answered_before) < len(texts)
    out = chat_teacher.label_texts(_teacher(server.url, max_concurrency=2), texts, journal)
    assert out.sent == len(texts) - len(answered_before) and len(out.kinds) == len(texts)
    counts = server.stats()["answered"]
    import hashlib

    from kubedistill_jobs.llm_teacher import render

    class Plain:
        chat_template = None

    for i, text in enumerate(texts):
        key = hashlib.sha256(render(Plain(), PROMPT.messages(text)).encode()).hexdigest()
        if i in answered_before:
            assert counts[key] == 1, f"row {i} was answered before the kill and sent again"
        else:
            assert 1 <= counts[key] <= 2  # at most once in flight when killed, once after


def _endpoint_job(tmp_path, tiny_models, sentiment_data, url, verbalizer):
    from kubedistill.api.distillationjob import DistillationJob

    from .conftest import job_manifest

    manifest = job_manifest(
        tmp_path, tiny_models["llama"], sentiment_data, student={"uri": str(tiny_models["bert"])},
        teacher={"endpoint": {"url": url, "model": "tiny", "api": "chat", "maxConcurrency": 2,
                              "pricing": {"inputPerMillion": 1000.0, "outputPerMillion": 2000.0}},
                 "prompt": {"user": "the {text} was", "verbalizer": verbalizer}},
        dataset={"uri": str(sentiment_data), "maxSamples": 12, "evalFraction": 0.25},
        training={"epochs": 1, "batchSize": 4})
    del manifest["spec"]["teacher"]["uri"]
    return DistillationJob.model_validate(manifest)


def _run_pipeline(job, stop_after="teacher"):
    from kubedistill_jobs.pipeline import Pipeline
    from kubedistill_jobs.storage import resolve_output

    from .test_pipeline import Recorder

    Pipeline(job, resolve_output(job.spec.output.uri, job.metadata.name), display=Recorder()).run(
        stop_after=stop_after)


def test_the_pipeline_labels_through_the_endpoint_with_usage_and_cost(serve, tmp_path, tiny_models, sentiment_data):
    from kubedistill_jobs import teacher_record

    from kubedistill.artifacts import OutputLayout

    server = serve()
    _run_pipeline(_endpoint_job(tmp_path, tiny_models, sentiment_data, server.url, {"neg": "bad", "pos": "good"}))
    layout = OutputLayout(tmp_path / "out")
    marker = json.loads(layout.stage_marker("teacher").read_text())
    assert marker["rows"] == 12 and marker["sent"] == 12 and not marker["hard_labels"]
    assert marker["prompt_tokens"] > 0 and marker["completion_tokens"] > 0
    expected = (marker["prompt_tokens"] * 1000.0 + marker["completion_tokens"] * 2000.0) / 1e6
    assert marker["cost"] == pytest.approx(expected)
    assert server.stats()["requests"] == 12
    meta, by_hash = teacher_record.read(layout.teacher_outputs)
    assert meta["completion_tokens"] == marker["completion_tokens"] and len(by_hash) == 12
    assert np.load(layout.soft_targets / "logits.npy").shape == (9, 2)


def test_labels_beginning_alike_are_refused_before_any_request(serve, tmp_path, tiny_models, sentiment_data):
    server = serve()
    job = _endpoint_job(tmp_path, tiny_models, sentiment_data, server.url, {"neg": "very bad", "pos": "very good"})
    with pytest.raises(PromptError, match=r"teacher\.prompt\.verbalizer"):
        _run_pipeline(job)
    assert server.stats()["requests"] == 0


def _spans(times: list[float], limit: int) -> list[float]:
    """For each request, the time from it to the request `limit` places later: a window that held more than
    `limit` requests shows as a span shorter than the window."""
    times = sorted(times)
    return [later - first for first, later in zip(times, times[limit:], strict=False)]


@pytest.mark.parametrize("limit", ["requests", "tokens"])
def test_the_rate_limits_hold_at_the_server(serve, tmp_path, limit):
    # a 1.5 s window stands for the minute, so the test takes seconds; arrivals are the server's own clock
    window, texts = 1.5, [f"the day was {w}" for w in ("good", "bad", "fine", "cold", "warm", "dark")]
    per_window = 2
    if limit == "requests":
        limits = {"requests_per_minute": per_window}
    else:  # room for two requests' estimated tokens in a window, not three
        estimate = chat_teacher.estimate_tokens(PROMPT.messages(texts[0]), 4)
        limits = {"tokens_per_minute": per_window * estimate + estimate // 2}
    server = serve()
    teacher = _teacher(server.url, max_tokens=4, max_concurrency=6, rate_window_seconds=window, **limits)
    out = chat_teacher.label_texts(teacher, texts, tmp_path / "journal.jsonl")
    assert out.sent == len(texts)
    arrivals = server.stats()["arrivals"]
    assert len(arrivals) == len(texts)
    slack = 0.3  # the time between the limiter letting a request go and the server reading it
    assert min(_spans(arrivals, per_window)) >= window - slack  # never more than two in one window
    assert max(arrivals) - min(arrivals) >= 2 * window - slack  # six requests, two per window: three windows
    assert min(_spans(arrivals, per_window - 1)) < window / 2  # yet two at once where the window had room
