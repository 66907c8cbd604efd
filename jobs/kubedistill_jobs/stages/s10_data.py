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
    prompts_cut = 0
    if context.spec.task.prompt is not None:  # each text becomes the prompt the teacher and the student answer
        split, prompts_cut = _prompted(context, split)
    data.write_jsonl(split.train, layout.data / "train.jsonl")
    data.write_jsonl(split.eval, layout.data / "eval.jsonl")
    layout.capture_eval.unlink(missing_ok=True)
    if split.capture is not None:
        data.write_jsonl(split.capture_eval, layout.capture_eval)
        c = split.capture
        log.info("data: dataset.capture: %d records in %d files; %d distinct captured rows make %d of %d training "
                 "rows (%.1f%%); %d held out to compare with the served student", c["records"], c["files"],
                 c["train_distinct"], c["train_rows"], len(split.train), 100 * c["share"], c["eval"])
    context.set_split(split)
    progress(1, 1)
    if split.dropped:
        log.info("data: rows dropped: %s", ", ".join(f"{count} {why}" for why, count in split.dropped.items()))
    max_length = context.spec.task.max_length
    truncated = data.count_truncated(context.tokenizer, [r["text"] for r in split.train + split.eval], max_length)
    if truncated:
        log.info("data: %d texts are longer than task.maxLength (%d tokens) and are cut to it", truncated,
                 max_length)
    if prompts_cut:
        log.info("data: %d texts were cut to fit their prompt and answer in task.maxLength (%d tokens)", prompts_cut,
                 max_length)
    marker = {"train": len(split.train), "eval": len(split.eval), "duplicates": split.duplicates,
              "dropped": split.dropped, "unlabelled": split.unlabelled, "truncated": truncated,
              "capture": split.capture}
    return marker | ({"prompts_cut": prompts_cut} if prompts_cut else {})


def _prompted(context: Context, split: data.Split) -> tuple[data.Split, int]:
    """The split with each text rendered into its prompt (task.prompt), cut to leave room for the answer."""
    from dataclasses import replace

    from kubedistill_jobs import task_prompt

    spec = context.spec
    assert spec.task.prompt is not None
    rows = split.train + split.eval
    budget = spec.task.max_length - task_prompt.answer_tokens(spec)
    texts, cut = task_prompt.render_all(context.tokenizer, spec.task.prompt, [r["text"] for r in rows], budget)
    rendered = [{**row, "text": text} for row, text in zip(rows, texts, strict=True)]
    n_train = len(split.train)
    return replace(split, train=rendered[:n_train], eval=rendered[n_train:]), cut


def summary(marker: dict[str, Any]) -> str:
    notes = [f"{marker['duplicates']} repeated texts dropped"] if marker.get("duplicates") else []
    notes += [f"{count} dropped: {why}" for why, count in (marker.get("dropped") or {}).items()]
    if marker.get("unlabelled"):
        notes.append(f"{marker['unlabelled']} without a label")
    if marker.get("prompts_cut"):
        notes.append(f"{marker['prompts_cut']} cut to fit their prompt and answer")
    if marker.get("truncated"):
        notes.append(f"{marker['truncated']} cut to task.maxLength")
    if marker.get("capture"):
        c = marker["capture"]
        notes.append(f"{c['train_rows']} captured rows ({c['share']:.0%}), {c['eval']} captured held out")
    return f"{marker['train']} train / {marker['eval']} eval rows" + (f" ({'; '.join(notes)})" if notes else "")
