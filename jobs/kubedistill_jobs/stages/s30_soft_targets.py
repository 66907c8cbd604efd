"""Run the teacher once over the training split and cache its outputs in `soft_targets/`: class logits
(classification) or the top-k logits per token (causal LM); from an endpoint teacher, or a local one with
distillation.sequenceLevel, its answers (the new training texts) and their top-k logprobs. Nothing to do in
online mode."""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np

from kubedistill.artifacts import Stage
from kubedistill_jobs import data, soft_targets
from kubedistill_jobs.context import GENERATED_TRAIN, Context, Progress

NAME: Stage = "soft-targets"
WEIGHT = 10
UNIT = "rows"
READS = ("data", "teacher")
WRITES = ("soft_targets", "teacher_outputs")  # a local teacher's answers (sequenceLevel) are recorded


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher

    spec, layout = context.spec, context.layout
    cache = layout.soft_targets
    if context.found.get("cross_tokenizer"):
        return _cross_tokenizer(context, context.found["cross_tokenizer"], progress)
    if spec.distillation.teacher_mode == "online":
        return {"mode": "online", "summary": "online mode: the teacher runs in every training step"}
    if soft_targets.exists(cache):  # written by the teacher stage from the same forward pass
        meta = soft_targets.read(cache)[1]
        progress(meta["rows"], meta["rows"])
        return {"mode": "cached", "rows": meta["rows"],
                "summary": f"{meta['rows']} rows, class distributions (from the teacher stage's pass)"}
    if context.endpoint_teacher:
        return _from_endpoint(context, data.read_jsonl(layout.data / "train.jsonl"), progress)
    if spec.distillation.sequence_level is not None:
        return _from_local_answers(context, context.prompts(), progress)
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
    soft_targets.write(cache, {**tokens, **out},
                       {"kind": "topk", **soft_targets.LOGPROBS, "rows": len(train), "k": k, "tokens": n_tokens})
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
                                        conversations=conversations, progress=progress,
                                        journal=layout.answers_journal)
    arrays = {key: out[key] for key in ("input_ids", "attention_mask", "topk_values", "topk_indices")}
    n_tokens, generated = int(arrays["attention_mask"].sum()), int(out["generated"].sum())
    resumed, generated_now = _resumed(out)
    dropped = int(out["dropped"].sum())
    generated_rows = [{"text": str(text), "prompt": str(prompt)} for text, prompt in zip(out["text"], out["prompt"],
                                                                                        strict=True)]
    data.write_jsonl(generated_rows, layout.data / GENERATED_TRAIN)
    soft_targets.write(layout.soft_targets, arrays,
                       {"kind": "topk", **soft_targets.LOGPROBS, "rows": len(rows), "k": k, "tokens": n_tokens,
                        "source": "endpoint",
                        "api": config.api, "conversations": sum(c is not None for c in conversations),
                        "generated_tokens": generated, "dropped_candidates": dropped})
    shutil.rmtree(layout.answers_journal, ignore_errors=True)  # cached: the stage's marker stands for it now
    context.set_split(None)  # the training texts are now the generations
    rate = generated_now / max(1e-9, time.monotonic() - started)
    answered, hard = sum(c is not None for c in conversations), int(out["hard"].sum())
    what = f", {answered} conversations answered afresh" if answered else ""
    how = f"top-{k} logprobs" if not hard else (
        "hard-label distillation (no logprobs from the teacher)" if hard == len(rows)
        else f"top-{k} logprobs ({hard} answers without: their text only)")
    return {"mode": "cached", "rows": len(rows), "tokens": n_tokens, "generated_tokens": generated,
            "dropped_candidates": dropped, "k": k, "api": config.api, "conversations": answered,
            "hard_rows": hard, "hard_labels": hard == len(rows) and hard > 0, "resumed_rows": resumed,
            "summary": f"{len(rows)} rows, {generated} generated tokens, {how} from the endpoint "
                       f"({config.api}{what}, {rate:.0f} tokens/s{_resumed_note(resumed)})"}


def _from_local_answers(context: Context, prompts: list[str], progress: Progress) -> dict[str, Any]:
    """Sequence-level KD from the local teacher: its answers (n per prompt) become the training texts, its
    top-k log-probabilities on them and on the prompts the cache, as from an endpoint; the
    answers are recorded in teacher_outputs/."""
    from kubedistill_jobs import local_answers, teacher_record

    spec, layout = context.spec, context.layout
    settings = local_answers.AnswerSettings.from_spec(spec, str(layout.teacher), len(context.tokenizer))
    started = time.monotonic()
    out = local_answers.run_answers(settings, prompts, progress=progress, journal=layout.answers_journal)
    seconds = max(1e-9, time.monotonic() - started)
    arrays = {key: out[key] for key in ("input_ids", "attention_mask", "topk_values", "topk_indices")}
    n_tokens, generated = int(arrays["attention_mask"].sum()), int(out["generated"].sum())
    resumed, generated_now = _resumed(out)
    # where each row's answer starts: a completion-only loss starts there, and promptTokenShare draws before it
    arrays["answer_start"] = np.asarray(out["prompt_tokens"], dtype=np.int32)
    answered = [prompt for prompt in prompts for _ in range(settings.n)]
    data.write_jsonl([{"text": str(text), "prompt": prompt} for text, prompt in zip(out["text"], answered,
                                                                                  strict=True)],
                     layout.data / GENERATED_TRAIN)
    rows = len(answered)
    soft_targets.write(layout.soft_targets, arrays,
                       {"kind": "topk", **soft_targets.LOGPROBS, "rows": rows, "k": settings.top_k,
                        "tokens": n_tokens,
                        "source": "teacher answers", "generated_tokens": generated})
    teacher_record.write_answers(layout.teacher_outputs, answered, [str(a) for a in out["answer"]],
                                 out["prompt_tokens"], out["generated"],
                                 {"model": spec.teacher.uri, "sampling": settings.sampling(), "top_k": settings.top_k})
    shutil.rmtree(layout.answers_journal, ignore_errors=True)  # cached and recorded: the marker stands for it now
    context.set_split(None)  # the training texts are now the teacher's answers
    empty = int((out["generated"] == 0).sum())
    return {"mode": "cached", "rows": rows, "prompts": len(prompts), "tokens": n_tokens, "generated_tokens": generated,
            "empty_answers": empty, "k": settings.top_k, "tokens_per_second": round(generated_now / seconds, 1),
            "resumed_rows": resumed,
            "summary": f"{len(prompts)} prompts, {rows} teacher answers ({settings.sampling()['method']}), "
                       f"{generated} generated tokens with top-{settings.top_k} logprobs "
                       f"({generated_now / seconds:.0f} tokens/s{_resumed_note(resumed)})"}


def _resumed(out: dict[str, np.ndarray]) -> tuple[int, int]:
    """(rows an interrupted run had answered, kept in the journal; tokens generated in this run): the rate
    counts this run's tokens alone."""
    journaled = out.get("journaled", np.zeros(len(out["generated"]), dtype=bool))
    return int(journaled.sum()), int(out["generated"][~journaled].sum())


def _resumed_note(resumed: int) -> str:
    return f"; {resumed} rows answered before an interruption, kept" if resumed else ""


def _cross_tokenizer(context: Context, method: str, progress: Progress) -> dict[str, Any]:
    """Another tokenizer than the teacher's (see kubedistill_jobs.cross_tokenizer): the teacher's greedy answers
    to the training prompts become the training texts; `uld` also caches the teacher's sorted top-k token
    probabilities per answer position (`sorted_probs`, `answer_tokens`) and where each answer starts in the
    student's tokens (`answer_start`)."""
    import torch

    from kubedistill_jobs import cross_tokenizer, models

    spec, layout = context.spec, context.layout
    student_tokenizer, teacher_tokenizer = context.found["student_tokenizer"], context.found["teacher_tokenizer"]
    note = cross_tokenizer.describe(method, len(teacher_tokenizer), len(student_tokenizer))
    context.display.message(note)
    model = models.load_saved_model(layout.teacher, spec.task.type)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    prompts = context.prompts()
    started = time.monotonic()
    uld = method == "uld"
    out = cross_tokenizer.teacher_answers(
        model, teacher_tokenizer, prompts, max_length=spec.task.max_length,
        max_new_tokens=spec.distillation.sampling.max_new_tokens, top_k=spec.distillation.top_k if uld else None,
        temperature=spec.distillation.temperature, progress=progress)
    del model
    rows = [{"text": prompt + answer, "prompt": prompt} for prompt, answer in zip(out["prompt"], out["answer"],
                                                                                   strict=True)]
    data.write_jsonl(rows, layout.data / GENERATED_TRAIN)
    context.set_split(None)  # the training texts are now the teacher's answers
    meta: dict[str, Any] = {"kind": method, "rows": len(rows), "cross_tokenizer": method, "note": note,
                            "teacher_vocabulary": len(teacher_tokenizer), "student_vocabulary": len(student_tokenizer)}
    arrays: dict[str, Any] = {}
    if uld:
        arrays = {"sorted_probs": out["sorted_probs"], "answer_tokens": out["answer_tokens"],
                  "answer_start": cross_tokenizer.answer_starts(student_tokenizer, out["prompt"],
                                                                spec.task.max_length)}
        meta.update(k=int(out["sorted_probs"].shape[-1]), tokens=int(out["answer_tokens"].sum()))
    soft_targets.write(layout.soft_targets, arrays, meta)
    seconds = time.monotonic() - started
    return {"mode": "cached", "rows": len(rows), "cross_tokenizer": method, "note": note,
            "summary": f"{len(rows)} teacher answers in {seconds:.0f} s; {note}"}


def summary(marker: dict[str, Any]) -> str:
    return str(marker.get("summary", ""))
