"""What a language-model teacher produced, as a dataset (`teacher_outputs/`): written once, reusable by
another job (`distillation.teacherOutputsUri`), so teacher calls are paid for once.

    teacher_outputs/rows.parquet   one row per text (through `datasets`):
        split (train|eval), text_sha256, label (index into labels), answer (the label's answer string),
        logprobs (C, the soft target), raw_logprobs (C, before calibration; null when not calibrated),
        prompt_tokens, completion_tokens
    teacher_outputs/meta.json      model, labels, answers, prompt template (system, user, few-shot) and its
                                   sha256, sampling settings, calibration prior, token totals, source

Rows are matched to a later job's data by the sha256 of their text, so a reuse need not keep row order.

A causal-lm teacher that answers prompts (`distillation.sequenceLevel`) records its answers the same way
(write_answers): one row per answer with split, text_sha256 (of the prompt), answer, prompt_tokens and
completion_tokens; meta.json holds `kind: answers`, the model, the sampling settings and token totals. Its
token-level soft targets are the training cache (`soft_targets/`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.errors import InputError

ROWS = "rows.parquet"
META = "meta.json"


class ReuseError(InputError):
    """Teacher outputs that do not fit this job; the message names distillation.teacherOutputsUri."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TeacherRecord:
    """Per-row outputs of both splits and the run's metadata."""

    split: list[str]
    texts: list[str]
    logprobs: np.ndarray  # (N, C)
    raw_logprobs: np.ndarray | None  # (N, C)
    prompt_tokens: np.ndarray  # (N,)
    completion_tokens: np.ndarray  # (N,)
    meta: dict[str, Any]

    def write(self, folder: Path) -> None:
        """Write atomically (a crash leaves the old record or the new one)."""
        import shutil

        from datasets import Dataset

        answers = self.meta["answers"]
        labels = self.logprobs.argmax(-1) if len(self.logprobs) else np.zeros(0, dtype=np.int64)
        rows = {
            "split": self.split,
            "text_sha256": [text_hash(t) for t in self.texts],
            "label": [int(i) for i in labels],
            "answer": [answers[int(i)] for i in labels],
            "logprobs": self.logprobs.astype(np.float32).tolist(),
            "raw_logprobs": (self.raw_logprobs.astype(np.float32).tolist() if self.raw_logprobs is not None
                             else [None] * len(self.texts)),
            "prompt_tokens": [int(n) for n in self.prompt_tokens],
            "completion_tokens": [int(n) for n in self.completion_tokens],
        }
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        Dataset.from_dict(rows).to_parquet(str(tmp / ROWS))
        totals = {"rows": len(self.texts), "prompt_tokens": int(self.prompt_tokens.sum()),
                  "completion_tokens": int(self.completion_tokens.sum())}
        (tmp / META).write_text(json.dumps({**self.meta, **totals}, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)


def read(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """meta.json and the logprobs `(C,)` of each text, keyed by its sha256."""
    from datasets import Dataset

    if not (folder / META).is_file() or not (folder / ROWS).is_file():
        raise ReuseError(f"distillation.teacherOutputsUri: {folder} holds no {META} and {ROWS}; point it at the "
                         "teacher_outputs/ folder of an earlier job")
    meta = json.loads((folder / META).read_text())
    rows = Dataset.from_parquet(str(folder / ROWS))
    return meta, {h: np.asarray(lp, dtype=np.float64) for h, lp in zip(rows["text_sha256"], rows["logprobs"],
                                                                          strict=True)}


def reuse(folder: Path, texts: list[str], labels: list[str], template_hash: str) -> tuple[np.ndarray, dict]:
    """The recorded `(N, C)` logprobs of `texts`, checked to come from the same labels and prompt."""
    meta, by_hash = read(folder)
    if list(meta.get("labels", [])) != list(labels):
        raise ReuseError(f"distillation.teacherOutputsUri: recorded for labels {meta.get('labels')}, but "
                         f"task.labels is {labels}")
    if meta.get("template_hash") != template_hash:
        raise ReuseError("distillation.teacherOutputsUri: recorded with another prompt (template sha256 "
                         f"{str(meta.get('template_hash'))[:12]}): use the same teacher.prompt, or drop the reuse")
    missing = [t for t in texts if text_hash(t) not in by_hash]
    if missing:
        raise ReuseError(f"distillation.teacherOutputsUri: {len(missing)} of {len(texts)} texts of this job are "
                         f"not in the record (first: {missing[0][:60]!r}); use the same dataset and split")
    return np.stack([by_hash[text_hash(t)] for t in texts]) if texts else np.zeros((0, len(labels))), meta


def write_answers(folder: Path, prompts: list[str], answers: list[str], prompt_tokens: np.ndarray,
                  completion_tokens: np.ndarray, meta: dict[str, Any]) -> None:
    """Record a causal-lm teacher's answers to the training prompts (one row per answer), atomically."""
    import shutil

    from datasets import Dataset

    rows = {"split": ["train"] * len(answers), "text_sha256": [text_hash(p) for p in prompts], "answer": answers,
            "prompt_tokens": [int(n) for n in prompt_tokens], "completion_tokens": [int(n) for n in completion_tokens]}
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    Dataset.from_dict(rows).to_parquet(str(tmp / ROWS))
    totals = {"kind": "answers", "rows": len(answers), "prompt_tokens": int(prompt_tokens.sum()),
              "completion_tokens": int(completion_tokens.sum())}
    (tmp / META).write_text(json.dumps({**meta, **totals}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
