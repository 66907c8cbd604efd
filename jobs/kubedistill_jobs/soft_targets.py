"""The cached teacher outputs (`layout.soft_targets`): computed once, read by every training worker.

Classification: `logits.npy (N, C)` float32 — the full class distribution at any temperature — and
`features.npy (N, H)` (the teacher's last [CLS] state, for hidden-state distillation).
Causal LM: `input_ids.npy (N, L)` and `attention_mask.npy (N, L)` (the exact tokens the teacher saw),
`topk_values.npy (N, L, k)` float16 and `topk_indices.npy (N, L, k)` int32 (~6 bytes per kept logit).
`meta.json` says which, for how many rows, and with which k.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np


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


def read(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {p.stem: np.load(p) for p in folder.glob("*.npy")}
    return arrays, meta


def tokenize_lm(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Right-padded token ids and attention mask `(N, max_length)` for a causal LM."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.int8)}
