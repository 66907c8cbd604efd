"""Run the teacher once over the training split and cache its outputs in `soft_targets/`: class logits
(classification) or the top-k logits per token (causal LM); from an endpoint teacher, its generations
(the new training texts) and their top-k logprobs. Nothing to do in online mode."""

from __future__ import annotations

import time
from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs import data, soft_targets
from kubedistill_jobs.context import GENERATED_TRAIN, Context, Progress

NAME: Stage = "soft-targets"
WEIGHT = 10
UNIT = "rows"
READS = ("data", "teacher")
WRITES = ("soft_targets",)


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher

    spec, layout = context.spec, context.layout
    cache = layout.soft_targets
    if spec.distillation.teacher_mode == "online":
        return {"mode": "online", "summary": "online mode: the teacher runs in every training step"}
    if soft_targets.exists(cache):  # written by the teacher stage from the same forward pass
        meta = soft_targets.read(cache)[1]
        progress(meta["rows"], meta["rows"])
        return {"mode": "cached", "rows": meta["rows"],
                "summary": f"{meta['rows']} rows, class distributions (from the teacher stage's pass)"}
    if context.endpoint_teacher:
        return _from_endpoint(context, data.read_jsonl(layout.data / "train.jsonl"), progress)
    train = context.split().train
    texts = [r["text"] for r in train]
    if spec.task.type == "sequence-classification":
        run = TeacherRun(str(layout.teacher), "logits", tuple(spec.task.labels or []), spec.task.max_length)
        out = run_teacher(run, {"text": texts}, progress=progress)
        soft_targets.write(cache, {"logits": out["logits"], "features": out["features"]},
                           {"kind": "logits", "rows": len(train)})
        return {"mode": "cached", "rows": len(train), "summary": f"{len(train)} rows, class distributions"}
    k = spec.distillation.top_k
    tokens = soft_targets.tokenize_lm(context.tokenizer, texts, spec.task.max_length)
    run = TeacherRun(str(layout.teacher), "topk", max_length=spec.task.max_length, top_k=k,
                     vocab_size=len(context.tokenizer))
    rows = {"input_ids": list(tokens["input_ids"]), "attention_mask": list(tokens["attention_mask"])}
    started = time.monotonic()
    out = run_teacher(run, rows, batch_size=8, progress=progress)
    n_tokens = int(tokens["attention_mask"].sum())
    soft_targets.write(cache, {**tokens, **out}, {"kind": "topk", "rows": len(train), "k": k, "tokens": n_tokens})
    rate = n_tokens / max(1e-9, time.monotonic() - started)
    return {"mode": "cached", "rows": len(train), "tokens": n_tokens, "k": k,
            "summary": f"{len(train)} rows, {n_tokens} tokens, top-{k} logits ({rate:.0f} tokens/s)"}


def _from_endpoint(context: Context, rows: list[dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """Sequence-level KD from an endpoint: its generations (a text continued, a conversation answered afresh)
    become the training text, and its top-k logprobs (one-hot targets inside the prompts) the cache, in the
    student's token ids."""
    from kubedistill_jobs import endpoint_teacher

    spec, layout = context.spec, context.layout
    k = spec.distillation.top_k
    config = endpoint_teacher.EndpointConfig.from_spec(spec)
    started = time.monotonic()
    texts, conversations = [r["text"] for r in rows], [r.get("messages") for r in rows]
    out = endpoint_teacher.run_endpoint(config, context.tokenizer, texts, spec.task.max_length,
                                        conversations=conversations, progress=progress)
    arrays = {key: out[key] for key in ("input_ids", "attention_mask", "topk_values", "topk_indices")}
    n_tokens, generated = int(arrays["attention_mask"].sum()), int(out["generated"].sum())
    dropped = int(out["dropped"].sum())
    generated_rows = [{"text": str(text), "prompt": str(prompt)} for text, prompt in zip(out["text"], out["prompt"],
                                                                                        strict=True)]
    data.write_jsonl(generated_rows, layout.data / GENERATED_TRAIN)
    soft_targets.write(layout.soft_targets, arrays,
                       {"kind": "topk", "rows": len(rows), "k": k, "tokens": n_tokens, "source": "endpoint",
                        "api": config.api, "conversations": sum(c is not None for c in conversations),
                        "generated_tokens": generated, "dropped_candidates": dropped})
    context.set_split(None)  # the training texts are now the generations
    rate = generated / max(1e-9, time.monotonic() - started)
    answered, hard = sum(c is not None for c in conversations), int(out["hard"].sum())
    what = f", {answered} conversations answered afresh" if answered else ""
    how = f"top-{k} logprobs" if not hard else (
        "hard-label distillation (no logprobs from the teacher)" if hard == len(rows)
        else f"top-{k} logprobs ({hard} answers without: their text only)")
    return {"mode": "cached", "rows": len(rows), "tokens": n_tokens, "generated_tokens": generated,
            "dropped_candidates": dropped, "k": k, "api": config.api, "conversations": answered,
            "hard_rows": hard, "hard_labels": hard == len(rows) and hard > 0,
            "summary": f"{len(rows)} rows, {generated} generated tokens, {how} from the endpoint "
                       f"({config.api}{what}, {rate:.0f} tokens/s)"}


def summary(marker: dict[str, Any]) -> str:
    return str(marker.get("summary", ""))
