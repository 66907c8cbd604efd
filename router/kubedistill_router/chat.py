"""Prompts for generation: the student's own chat template (Jinja, rendered as transformers renders it,
in a sandbox) and its tokenizer (`tokenizers`, no transformers in the router), plus incremental decoding.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from kubedistill_router.errors import BadRequest

ROLES = ("system", "user", "assistant", "developer", "tool")


class TemplateError(Exception):
    """The template itself raised (raise_exception): the messages break one of its rules."""


class ChatTokenizer:
    """A model folder's tokenizer.json and special tokens (tokenizer_config.json), and optionally its chat
    template. Token ids are what the Triton generation model takes and returns."""

    def __init__(self, folder: Path, template: Path | None):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # A prompt is its own length: a tokenizer.json saved after a padded batch call carries that padding
        # and truncation, which would fill the prompt with pad tokens or cut its end off.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_id = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self.template_source = template.read_text() if template is not None and template.is_file() else None
        self._template: Any = None
        if self.template_source is not None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
            self._template = env.from_string(self.template_source)

    @property
    def has_template(self) -> bool:
        return self._template is not None

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for `messages`, ending with the assistant's turn opened (add_generation_prompt)."""
        if self._template is None:
            raise BadRequest("messages: this model has no chat template; use /v1/completions with a prompt")
        try:
            return str(self._template.render(messages=messages, add_generation_prompt=True,
                                             bos_token=self.bos_token or "", eos_token=self.eos_token or ""))
        except TemplateError as error:
            raise BadRequest(f"messages: the model's chat template refused them: {error}") from None

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`; the chat template already wrote its special tokens, so none are added."""
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def prompt_text(self, ids: list[int]) -> str:
        """A prompt's ids back as text, special tokens kept (for a model that takes text: vLLM)."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def token_text(self, token_id: int) -> str:
        """One token as text (for logprobs), special tokens included."""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))


def _raise(message: str) -> None:
    raise TemplateError(message)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as an object
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextStream:
    """Decoded text of a growing token sequence, released in pieces that are final: incomplete UTF-8 and
    any tail that could still become a stop sequence are held back. `stopped` once a stop sequence appears
    (the text ends before it). Decoding looks at the last few tokens only (as text-generation servers do),
    so a long answer costs linear time, not quadratic."""

    def __init__(self, tokenizer: ChatTokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        self._prefix = 0  # ids[_prefix:_read] is decoded context for the next piece
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add a token; returns the newly final text (maybe empty)."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # not mid-character
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        if self.stopped:
            return self.flush()
        end = len(self.text) - self.hold
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def flush(self) -> str:
        piece, self.sent = self.text[self.sent:], len(self.text)
        return piece
