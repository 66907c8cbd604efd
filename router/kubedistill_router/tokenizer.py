"""Tokenize texts into the INT64 tensors a Triton model takes, from the repository's tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Triton input name → field of a tokenizers Encoding.
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TextEncoder:
    """Truncates to `max_length` and pads to the longest text of the batch."""

    def __init__(self, folder: Path, inputs: list[str], max_length: int):
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the model repository has no tokenizer.json (serving.json: tokenizer)")
        unknown = [name for name in inputs if name not in FIELDS]
        if unknown:
            raise ValueError(f"serving.json: inputs {unknown} cannot be filled by a tokenizer; "
                             f"supported: {', '.join(FIELDS)}")
        self.inputs = inputs
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length)
        pad_id, pad_token = _pad(self.tokenizer, folder)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets, which nothing here reads: about a
        # quarter less CPU per text, and a single text is still encoded on the calling thread.
        self._encode_batch = getattr(self.tokenizer, "encode_batch_fast", None)
        self._fields = [(name, FIELDS[name]) for name in inputs]

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self._encode_batch is not None:
            encodings = self._encode_batch(texts)
        else:  # one text skips encode_batch's thread-pool hand-off: the common case costs less
            encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(texts)
        return {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64) for name, field in self._fields}


def _pad(tokenizer: Tokenizer, folder: Path) -> tuple[int, str]:
    """The pad token: the tokenizer's own padding, else tokenizer_config.json's, else [PAD] or id 0."""
    padding = tokenizer.padding
    if padding:
        return int(padding["pad_id"]), str(padding["pad_token"])
    token = None
    config = folder / "tokenizer_config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("pad_token")
        token = value.get("content") if isinstance(value, dict) else value
    for candidate in (token, "[PAD]", "<pad>"):
        found = tokenizer.token_to_id(candidate) if candidate else None
        if candidate and found is not None:
            return int(found), candidate
    return 0, tokenizer.id_to_token(0) or ""
