"""The OpenAI protocol's validation and the text stream's stop handling, without a server."""

from __future__ import annotations

import pytest
from kubedistill_router.chat import TextStream
from kubedistill_router.errors import BadRequest, NotFound
from kubedistill_router.openai_api import DEFAULT_MAX_TOKENS, parse_request


def parse(body, chat=True, cap=100):
    return parse_request(body, chat=chat, model_name="m", max_tokens_cap=cap)


def test_defaults_and_fields():
    req = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, cap=4096)
    assert req.max_tokens == DEFAULT_MAX_TOKENS and req.temperature == 1.0 and req.top_p == 1.0
    assert req.stop == [] and not req.stream and not req.logprobs
    req = parse({"model": "m", "prompt": "x", "logprobs": 2, "stop": "\n", "max_tokens": 7, "seed": 3}, chat=False)
    assert (req.logprobs, req.top_logprobs, req.stop, req.max_tokens, req.seed) == (True, 2, ["\n"], 7, 3)
    parts = parse({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                                {"type": "text", "text": "b"}]}]})
    assert parts.messages == [{"role": "system", "content": "ab"}]


@pytest.mark.parametrize(("body", "chat", "field"), [
    ({"model": "m"}, True, "messages"),
    ({"model": "m", "messages": []}, True, "messages"),
    ({"model": "m", "prompt": ["a", "b"]}, False, "prompt"),
    ({"model": "m", "prompt": "a", "max_tokens": 101}, False, "max_tokens"),
    ({"model": "m", "prompt": "a", "max_tokens": 0}, False, "max_tokens"),
    ({"model": "m", "prompt": "a", "top_p": 1.5}, False, "top_p"),
    ({"model": "m", "prompt": "a", "stop": ["", "x"]}, False, "stop"),
    ({"model": "m", "prompt": "a", "n": 2}, False, "n"),
    ({"model": "m", "prompt": "a", "stream": "yes"}, False, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "logprobs": True, "top_logprobs": 21}, True,
     "top_logprobs"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, True,
     "messages[0].content[0]"),
    ([], True, "request body"),
    # options the router cannot honour, and unknown fields: refused, never ignored
    ({"model": "m", "prompt": "a", "frequency_penalty": 0.5}, False, "frequency_penalty"),
    ({"model": "m", "prompt": "a", "echo": True}, False, "echo"),
    ({"model": "m", "prompt": "a", "best_of": 3}, False, "best_of"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "logit_bias": {"50256": -100}}, True,
     "logit_bias"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_object"}},
     True, "response_format"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}],
      "tools": [{"type": "function", "function": {"name": "f"}}]}, True, "tools"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "temprature": 0}, True, "temprature"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "prompt": "b"}, True, "prompt"),  # another
    ({"model": "m", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, False, "messages"),  # endpoint's
    ({"model": "m", "prompt": "a", "top_logprobs": 2}, False, "top_logprobs"),
    ({"model": "m", "prompt": "a", "stream_options": {"include_usage": True}}, False, "stream_options"),
    ({"model": "m", "prompt": "a", "echo": 0}, False, "echo"),  # JSON's 0 is not false
    ({"model": "m", "prompt": "a", "best_of": True}, False, "best_of"),
])
def test_bad_requests_name_the_field(body, chat, field):
    with pytest.raises(BadRequest) as error:
        parse(body, chat=chat)
    assert error.value.message.startswith(field)


def test_a_refusal_shows_json_values():
    with pytest.raises(BadRequest) as error:
        parse({"model": "m", "messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json"}})
    assert '{"type":"text"}' in error.value.message


def test_default_values_and_bookkeeping_fields_are_accepted():
    req = parse({"model": "m", "prompt": "a", "frequency_penalty": 0, "presence_penalty": 0.0, "echo": False,
                 "best_of": 1, "logit_bias": {}, "suffix": None, "user": "u-1", "metadata": {"team": "x"}},
                chat=False)
    assert req.prompt == "a" and req.raw["user"] == "u-1"  # passed on to a remote teacher as sent
    parse({"model": "m", "messages": [{"role": "user", "content": "a"}], "tool_choice": "auto"})  # no tools: none


def test_another_model_is_not_found():
    with pytest.raises(NotFound, match="'other' is not served here"):
        parse({"model": "other", "prompt": "a"}, chat=False)


class Letters:
    """A tokenizer whose token i is the i-th letter (enough for TextStream)."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it():
    stream = TextStream(Letters(), ["cd"])
    pieces = [stream.push(i) for i in (0, 1, 2)]  # "abc": "c" may begin "cd"
    assert pieces == ["", "a", "b"] and not stream.stopped
    assert stream.push(3) == "" and stream.stopped and stream.text == "ab"
    free = TextStream(Letters(), [])
    assert [free.push(i) for i in (0, 1)] == ["a", "b"] and free.flush() == ""


def test_the_trained_system_turn_goes_first_and_a_template_without_one_still_renders():
    """GenerationHandler's rule for a chat request without a system turn (serving.json system_prompt): the
    models read it first; a remote teacher is sent it when it says something; a chat template that refuses a
    system role renders the request without it, as training did (chats._template)."""
    from types import SimpleNamespace

    from kubedistill_router.generation import GenerationHandler

    def handler(system_prompt):
        return SimpleNamespace(manifest=SimpleNamespace(system_prompt=system_prompt), context_length=1000)

    asked = parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    told = GenerationHandler._with_system_turn(handler("Be brief."), asked)
    assert told.messages[0] == {"role": "system", "content": "Be brief."} and told.system_added
    assert told.raw["messages"][0] == {"role": "system", "content": "Be brief."}
    assert asked.raw["messages"] == [{"role": "user", "content": "hi"}]  # the parsed request is left as it was
    empty = GenerationHandler._with_system_turn(handler(""), asked)
    assert empty.messages[0] == {"role": "system", "content": ""} and empty.raw is asked.raw  # nothing to send
    own = parse({"model": "m", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]})
    assert GenerationHandler._with_system_turn(handler(""), own) is own
    assert GenerationHandler._with_system_turn(handler(None), asked) is asked  # an export of an earlier release

    class NoSystemRole:  # a template that raises on a system turn (Gemma's)
        def render(self, messages):
            if any(m["role"] == "system" for m in messages):
                raise BadRequest("messages: the model's chat template refused them: System role not supported")
            return "|".join(m["content"] for m in messages)

        def encode(self, text, special=False):
            return [ord(c) for c in text]

    assert GenerationHandler._prompt(handler(""), empty, NoSystemRole()) == [ord("h"), ord("i")]
    with pytest.raises(BadRequest, match="System role"):  # the client's own system turn is not dropped
        GenerationHandler._prompt(handler(""), own, NoSystemRole())
