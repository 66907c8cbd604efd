"""Read the dataset, check it against the task and split it: `data/train.jsonl`, `data/eval.jsonl`."""

from __future__ import annotations

import logging
from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs import chats, data
from kubedistill_jobs.context import GENERATED_TRAIN, Context, Progress

NAME: Stage = "data"
WEIGHT = 2
UNIT = "step"
READS: tuple[str, ...] = ()  # spec.dataset.uri only
WRITES = ("data",)
log = logging.getLogger(__name__)


def chat_renderer(context: Context) -> chats.ChatRenderer:
    """How a conversation becomes training text: the chat template of the tokenizer a causal LM trains with,
    when it has one."""
    tokenizer = context.tokenizer
    if context.spec.task.type != "causal-lm" or not getattr(tokenizer, "chat_template", None):
        return chats.plain_chat
    return chats.renderer(tokenizer)


def run(context: Context, progress: Progress) -> dict[str, Any]:
    layout = context.layout
    (layout.data / GENERATED_TRAIN).unlink(missing_ok=True)  # an earlier run's generations follow the old split
    split = data.load_split(context.spec, chat_renderer(context))
    data.write_jsonl(split.train, layout.data / "train.jsonl")
    data.write_jsonl(split.eval, layout.data / "eval.jsonl")
    context.set_split(split)
    progress(1, 1)
    if split.dropped:
        log.info("data: rows dropped: %s", ", ".join(f"{count} {why}" for why, count in split.dropped.items()))
    max_length = context.spec.task.max_length
    truncated = data.count_truncated(context.tokenizer, [r["text"] for r in split.train + split.eval], max_length)
    if truncated:
        log.info("data: %d texts are longer than task.maxLength (%d tokens) and are cut to it", truncated,
                 max_length)
    return {"train": len(split.train), "eval": len(split.eval), "duplicates": split.duplicates,
            "dropped": split.dropped, "unlabelled": split.unlabelled, "truncated": truncated}


def summary(marker: dict[str, Any]) -> str:
    notes = [f"{marker['duplicates']} repeated texts dropped"] if marker.get("duplicates") else []
    notes += [f"{count} dropped: {why}" for why, count in (marker.get("dropped") or {}).items()]
    if marker.get("unlabelled"):
        notes.append(f"{marker['unlabelled']} without a label")
    if marker.get("truncated"):
        notes.append(f"{marker['truncated']} cut to task.maxLength")
    return f"{marker['train']} train / {marker['eval']} eval rows" + (f" ({'; '.join(notes)})" if notes else "")
