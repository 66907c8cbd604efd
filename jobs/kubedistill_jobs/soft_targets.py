"""The cached teacher outputs (`layout.soft_targets`): computed once, read by every training worker.

Classification: `logits.npy (N, C)` float32 — the full class distribution at any temperature — and
`features.npy (N, H)` (the teacher's last [CLS] state, for hidden-state distillation).
Causal LM: `input_ids.npy (N, L)` and `attention_mask.npy (N, L)` (the exact tokens the teacher saw),
`topk_values.npy (N, L, k)` float16 and `topk_indices.npy (N, L, k)` int32 (~6 bytes per kept logit).
`meta.json` says which, for how many rows, and with which k; `"values": "logprobs"` when the top-k values
are the teacher's full-vocabulary log-probabilities at temperature 1 (so the mass outside them is known).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

LOGPROBS = {"values": "logprobs"}  # in meta.json: the top-k values are full-vocabulary log-probabilities


def write(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write atomically: a crash leaves either the old cache or the new one, never half of one."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def exists(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def read_meta(folder: Path) -> dict[str, Any] | None:
    """`meta.json` alone (no arrays loaded), or None when there is no cache."""
    return json.loads((folder / "meta.json").read_text()) if exists(folder) else None


def read(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {p.stem: np.load(p) for p in folder.glob("*.npy")}
    return arrays, meta


def tokenize_lm(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Right-padded token ids and attention mask `(N, max_length)` for a causal LM; each text that ends
    within max_length ends with the tokenizer's end-of-sequence token (see append_eos)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int8)
    eos_id, eos_text = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "eos_token", None)
    ended = [bool(eos_text) and t.rstrip().endswith(eos_text) for t in texts]
    return {"input_ids": ids, "attention_mask": append_eos(ids, mask, eos_id, ended)}


def append_eos(ids: np.ndarray, mask: np.ndarray, eos_id: int | None, ended: list[bool]) -> np.ndarray:
    """Write `eos_id` after the last token of each right-padded row `(N, L)` with room for it, in place, and
    return the mask that counts it. Without it a student never learns to stop. Rows that filled L (cut:
    the text did not end there), rows already ending in EOS, and rows whose text already ends with it
    (`ended`: a chat template's closing token) are left alone; so is everything when there is no EOS."""
    if eos_id is None:
        return mask
    mask = mask.copy()
    lengths = mask.sum(1)
    for row, length in enumerate(lengths):
        length = int(length)
        if length < ids.shape[1] and not ended[row] and (length == 0 or ids[row, length - 1] != eos_id):
            ids[row, length] = eos_id
            mask[row, length] = 1
    return mask


def holds_logprobs(folder: Path) -> bool:
    """Whether the cache's top-k values are full-vocabulary log-probabilities (caches written before say not)."""
    return (read_meta(folder) or {}).get("values") == LOGPROBS["values"]
