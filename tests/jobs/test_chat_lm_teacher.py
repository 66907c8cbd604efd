"""Sequence-level distillation of a causal LM from a chat dataset, against the project's OpenAI-compatible test
server on loopback (a tiny real Llama with a chat template): the last user turn is answered afresh over
`/v1/chat/completions` and over `/v1/completions`, and the student learns the answer inside its own chat
template; the data stage keeps each conversation's messages."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from kubedistill_jobs import chats, data
from kubedistill_jobs import endpoint_teacher as et

from kubedistill.api.distillationjob import DatasetSpec

from .conftest import write_jsonl
from .test_chat_teacher import Server

# Turns open with [CLS] (user, system) or [SEP] (assistant) and close with [EOS]: tokens the word tokenizer has.
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}[SEP] {% else %}[CLS] {% endif %}"
            "{{ m['content'] }} [EOS] {% endfor %}{% if add_generation_prompt %}[SEP]{% endif %}")
CHAT = [{"role": "user", "content": "the day was good"}, {"role": "assistant", "content": "very good"},
        {"role": "user", "content": "the food was bad"}, {"role": "assistant", "content": "quite bad indeed"}]


@pytest.fixture(scope="module")
def chat_llama(tiny_models, tmp_path_factory):
    """The tiny Llama, its tokenizer given a chat template."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(tiny_models["llama"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def server(chat_llama):
    served = Server(chat_llama)
    yield served
    served.stop()


def _greedy(folder, prompt: str, max_tokens: int, k: int) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """The server's answer by hand: greedy ids from `prompt`, and each step's top-k (id, logprob)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids, answer, steps = tokenizer.encode(prompt, add_special_tokens=False), [], []
    with torch.inference_mode():
        for _ in range(max_tokens):
            logp = torch.log_softmax(model(input_ids=torch.as_tensor([ids + answer])).logits[0, -1].double(), -1)
            values, indices = logp.topk(k)
            steps.append([(int(i), float(v)) for i, v in zip(indices, values, strict=True)])
            answer.append(int(indices[0]))
            if answer[-1] == tokenizer.eos_token_id:
                break
    return answer, steps


def test_messages_are_read_from_a_table_and_conversations_without_a_user_turn_are_dropped(tmp_path):
    rows = [{"messages": CHAT}, {"messages": ["hello", "hi there", "how are you"]},
            {"messages": [{"role": "assistant", "content": "no question asked"}]},
            {"messages": [{"speaker": "x", "text": "y"}]}]
    dataset = DatasetSpec.model_validate({"uri": str(tmp_path), "textField": "messages", "labelField": None})
    found = data.check_rows(rows, dataset, None)
    assert [r["messages"] for r in found.rows] == [CHAT, [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "how are you"}]]
    assert found.rows[0]["text"] == chats.plain_chat(CHAT)
    assert found.dropped == {data.NO_USER_TURN: 1, data.NOT_CHAT: 1}
    assert chats.prompt_messages(CHAT) == CHAT[:3]  # the reply the data holds is not the teacher's prompt


def test_a_chat_row_is_answered_afresh_over_chat_completions(server, chat_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    k, length = 4, 40
    config = et.EndpointConfig(url=server.url, model="tiny", top_k=k, max_new_tokens=6, api="chat")
    predictor = et.EndpointPredictor(config, tokenizer, length, concurrency=1)
    out = predictor({"idx": np.arange(1), "text": np.asarray([chats.render(tokenizer, CHAT)], dtype=object),
                     "chat": np.asarray([json.dumps(CHAT)], dtype=object)})
    assert server.stats()["chats"] == [CHAT[:3]]  # up to the last user turn: the data's reply is not sent
    prompt = chats.render_prompt(tokenizer, CHAT[:3])
    assert prompt.endswith("[CLS] the food was bad [EOS] [SEP]") and "quite" not in prompt
    answer, steps = _greedy(chat_llama, tokenizer.apply_chat_template(CHAT[:3], tokenize=False,
                                                                      add_generation_prompt=True), 6, k)
    eos = tokenizer.eos_token_id
    ended = answer[-1] == eos or len(answer) < 6
    expected = tokenizer(prompt)["input_ids"] + answer + ([eos] if ended and answer[-1] != eos else [])
    ids, mask = out["input_ids"][0], out["attention_mask"][0].astype(bool)
    assert list(ids[mask]) == expected and out["generated"][0] == len(answer)
    p = len(tokenizer(prompt)["input_ids"])
    values, indices = out["topk_values"][0].astype(np.float32), out["topk_indices"][0]
    for j, step in enumerate(steps):  # the answer's soft targets are the teacher's own top-k
        assert list(indices[p - 1 + j]) == [i for i, _ in step]
        assert values[p - 1 + j] == pytest.approx([v for _, v in step], abs=2e-3)
    assert out["prompt"][0] == prompt and out["text"][0].startswith(prompt)


def test_the_end_of_turn_follows_an_answer_that_stopped_and_text_follows_an_unnamed_token(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    good, movie, day, was = tok.convert_tokens_to_ids(["good", "movie", "day", "was"])
    eos, prompt = tok.eos_token_id, tok("the food")["input_ids"]
    top = [{"good": -0.1, "bad": -2.0}, {"movie day": -0.3}, {"was": -0.5}]
    choice = {"finish_reason": "stop", "logprobs": {"tokens": ["good", "movie day", " was"], "top_logprobs": top}}
    row = et.build_row(prompt, choice, "the food", tok, 10, 2, tail=[eos], rest_as_text=True)
    p = len(prompt)
    assert list(row.input_ids[row.attention_mask.astype(bool)]) == [*prompt, good, movie, day, was, eos]
    assert row.generated == 4  # the answer's tokens; the end of turn is the template's
    assert list(row.topk_indices[p - 1]) == [good, tok.convert_tokens_to_ids("bad")]  # the teacher's own
    for t, token in zip(range(p, p + 4), [movie, day, was, eos], strict=True):  # then one-hot on the text
        assert row.topk_indices[t, 0] == token and row.topk_values[t, 0] == 0
        assert row.topk_values[t, 1] == et.VERY_NEGATIVE
    cut = et.build_row(prompt, {**choice, "finish_reason": "length"}, "the food", tok, 10, 2, tail=[eos])
    assert cut.attention_mask.sum() == p + 1  # without rest_as_text the row ends at the unnamed token, no tail


def test_over_completions_a_chat_row_is_rendered_with_the_students_template(server, chat_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    config = et.EndpointConfig(url=server.url, model="tiny", top_k=3, max_new_tokens=4)
    predictor = et.EndpointPredictor(config, tokenizer, 40, concurrency=1)
    plain = "the movie was"
    out = predictor({"idx": np.arange(2), "text": np.asarray([chats.render(tokenizer, CHAT), plain], dtype=object),
                     "chat": np.asarray([json.dumps(CHAT), ""], dtype=object)})
    prompt = chats.render_prompt(tokenizer, CHAT[:3])
    answered = server.stats()["answered"]
    assert set(answered) == {hashlib.sha256(p.encode()).hexdigest() for p in (prompt, plain)}
    assert list(out["prompt"]) == [prompt, plain]  # a plain text is continued, as before


@pytest.mark.slow
def test_the_pipeline_trains_on_the_teachers_answers_in_the_students_template(ray_local, server, chat_llama,
                                                                               tmp_path):
    from kubedistill_jobs.context import GENERATED_TRAIN
    from transformers import AutoTokenizer

    from kubedistill.artifacts import OutputLayout

    from .test_endpoint_teacher import _endpoint_manifest, _pipeline

    rows = [{"messages": [{"role": "user", "content": f"the {w} was {v}"},
                          {"role": "assistant", "content": "old reply"}]}
            for w in ("day", "food", "movie", "weather") for v in ("good", "bad", "fine")]
    manifest = _endpoint_manifest(server.url, tmp_path, chat_llama, write_jsonl(rows, tmp_path / "chats.jsonl"))
    manifest["spec"]["task"]["maxLength"] = 24
    manifest["spec"]["training"]["batchSize"] = 4
    manifest["spec"]["dataset"]["textField"] = "messages"
    manifest["spec"]["teacher"]["endpoint"]["api"] = "chat"
    result = _pipeline(manifest).run(stop_after="soft-targets")
    assert result.stages["soft-targets"]["conversations"] == 9 and result.stages["soft-targets"]["api"] == "chat"
    layout = OutputLayout(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    train = data.read_jsonl(layout.data / "train.jsonl")
    generated = data.read_jsonl(layout.data / GENERATED_TRAIN)
    assert len(server.stats()["chats"]) == 1 + 9  # the probe, then each training row once
    mask = np.load(layout.soft_targets / "attention_mask.npy")
    for row, new, taught in zip(train, generated, mask.sum(1), strict=True):
        assert "old reply" in row["text"] and "old reply" not in new["text"]
        assert new["prompt"] == chats.render_prompt(tokenizer, row["messages"][:1])
        assert new["text"].startswith(new["prompt"]) and taught > len(tokenizer(new["prompt"])["input_ids"])


def test_a_chat_endpoint_without_logprobs_teaches_its_answers_text_unless_soft_targets_are_required(chat_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    served = Server(chat_llama, "--no-logprobs")
    try:
        config = et.EndpointConfig(url=served.url, model="tiny", top_k=3, max_new_tokens=6, api="chat")
        batch = {"idx": np.arange(1), "text": np.asarray(["the day was good"], dtype=object)}  # one user turn
        out = et.EndpointPredictor(config, tokenizer, 40, concurrency=1)(batch)
        assert out["hard"].tolist() == [True]
        prompt = chats.render_prompt(tokenizer, [{"role": "user", "content": "the day was good"}])
        answer = out["text"][0]  # the student's template around the endpoint's answer
        assert answer.startswith(prompt)
        ids = out["input_ids"][0][out["attention_mask"][0].astype(bool)]
        p = len(tokenizer(prompt)["input_ids"])
        assert (out["topk_values"][0][p - 1:len(ids) - 1, 1:] == et.VERY_NEGATIVE).all()  # one-hot: the text only
        assert (out["topk_indices"][0][p - 1:len(ids) - 1, 0] == ids[p:]).all()
        with pytest.raises(et.EndpointRefused, match=r"distillation\.requireSoftTargets"):
            et.probe(et.EndpointConfig(url=served.url, model="tiny", top_k=3, api="chat", require_soft_targets=True),
                     "the day")
        assert et.probe(config, "the day")["logprobs"] is False
    finally:
        served.stop()


@pytest.mark.slow
def test_transformers_serve_answers_without_logprobs_and_still_teaches(chat_llama, tmp_path):
    """`transformers serve` (a server that is not ours) around the same tiny model: it ignores logprobs, so a
    classification teacher gets hard labels and a causal-lm teacher the answers' text."""
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    from kubedistill_jobs import chat_teacher
    from transformers import AutoTokenizer

    from .test_chat_teacher import PROMPT, TEXTS

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["transformers", "serve", str(chat_llama), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:  # until it answers /v1/models
            assert process.poll() is None, "transformers serve exited"
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "transformers serve did not start"
                time.sleep(0.5)
        config = et.EndpointConfig(url=url, model=str(chat_llama), top_k=3, max_new_tokens=4, api="chat")
        tokenizer = AutoTokenizer.from_pretrained(chat_llama)
        out = et.EndpointPredictor(config, tokenizer, 40, concurrency=1)(
            {"idx": np.arange(1), "text": np.asarray([chats.render(tokenizer, CHAT)], dtype=object),
             "chat": np.asarray([json.dumps(CHAT)], dtype=object)})
        assert out["hard"].tolist() == [True] and out["prompt"][0] == chats.render_prompt(tokenizer, CHAT[:3])
        teacher = chat_teacher.ChatTeacher(chat_teacher.ChatConfig(url=url, model=str(chat_llama), max_tokens=4),
                                           PROMPT)
        journal = tmp_path / "journal.jsonl"
        try:
            labelled = chat_teacher.label_texts(teacher, TEXTS[:2], journal)
            assert set(labelled.kinds) <= {"hard", "unmatched"} and labelled.sent == 2
        except chat_teacher.NoAnswerMatched:  # a tiny random model's answers may name no label: refused
            pass
        rows = [json.loads(line) for line in journal.read_text().splitlines()]
        assert len(rows) == 2 and not any(row.get("candidates") for row in rows)  # answered, without logprobs
    finally:
        process.terminate()
        process.wait(timeout=60)
