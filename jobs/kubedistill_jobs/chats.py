"""Conversations in the data: a row's messages, the prompt a teacher answers, and the student's chat
template around an answer.

A chat row holds a list of messages: `{"role": "system" | "user" | "assistant", "content": str}` dicts (the
OpenAI format), or plain strings that alternate user and assistant turns (as chatterbot-corpus ships them).
A teacher answers the conversation up to its last user turn: earlier assistant turns are context, and a
reply the data already holds after that turn is dropped, so the teacher answers afresh instead of
continuing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Message = dict[str, str]
# Renders one conversation as training text, e.g. with a chat template.
ChatRenderer = Callable[[list[Message]], str]
ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00kubedistill-answer\x00"  # stands for an answer, to find what a template puts after one


def messages_of(value: Any) -> list[Message] | None:
    """`value` as a list of messages, or None when it is not a conversation (a list of role/content dicts with
    roles from ROLES and string contents, or a list of strings taken as alternating user/assistant turns).
    Empty turns are dropped."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(turn, str) for turn in value):
        turns = [t.strip() for t in value if t.strip()]
        return [{"role": ROLES[1 + i % 2], "content": t} for i, t in enumerate(turns)] or None
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            return None
        if turn["content"].strip():
            messages.append({"role": str(turn["role"]), "content": turn["content"]})
    return messages or None


def prompt_messages(messages: Sequence[Message]) -> list[Message]:
    """The conversation up to and including its last user turn (empty when it has none)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return [dict(m) for m in messages[:last + 1]]


def plain_chat(messages: Sequence[Message]) -> str:
    """A conversation as text when the tokenizer has no chat template."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _template(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> str:
    chat = list(messages)
    if chat and chat[0]["role"] != "system":  # a template's default system prompt is text no model was trained on
        try:
            return str(tokenizer.apply_chat_template([{"role": "system", "content": ""}, *chat], tokenize=False,
                                                     add_generation_prompt=generation_prompt))
        except Exception:  # templates without a system role
            pass
    return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt))


def render(tokenizer: Any, messages: Sequence[Message]) -> str:
    """A whole conversation as training text: the tokenizer's chat template, or plain turns without one."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat(messages)
    return _template(tokenizer, messages, False)


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The text a model continues to answer `messages`: the chat template with the assistant turn opened, or
    plain turns ending in `Assistant:`."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat(messages) + "\nAssistant:"
    return _template(tokenizer, messages, True)


def turn_end(tokenizer: Any, messages: Sequence[Message]) -> str:
    """What the chat template writes after an assistant answer to `messages` (e.g. `<|im_end|>\\n`); the eos
    token without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return str(tokenizer.eos_token or "")
    whole = _template(tokenizer, [*messages, {"role": "assistant", "content": _SENTINEL}], False)
    return whole[whole.rindex(_SENTINEL) + len(_SENTINEL):] if _SENTINEL in whole else ""


def renderer(tokenizer: Any) -> ChatRenderer:
    """`render` bound to a tokenizer."""
    return lambda messages: render(tokenizer, messages)
